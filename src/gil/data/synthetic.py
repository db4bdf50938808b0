"""A seeded generator of small synthetic count matrices with known structure.

Why: tests need data whose right answers are known in advance (which genes mark which cell type,
which values are integer counts) and that builds in milliseconds without network access. It is never
a default dataset: the project's default is the real Zeisel data (:mod:`gil.data.zeisel`).

Structure: ``n_types`` cell types, grouped in contiguous blocks into ``n_groups`` coarse groups. Every
gene has a baseline mean; the ``n_markers`` marker genes of type ``t`` (genes ``t*n_markers`` ...) have
their mean multiplied by ``fold`` in cells of type ``t``. Counts are negative binomial around
``library_factor * mean``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_counts(
    n_cells: int = 300,
    n_genes: int = 60,
    n_types: int = 4,
    seed: int = 0,
    *,
    n_groups: int = 2,
    n_markers: int = 5,
    fold: float = 10.0,
    mean_range: tuple[float, float] = (0.5, 2.0),
    dispersion: float = 5.0,
):  # noqa: ANN201 - returns anndata.AnnData (imported lazily)
    """Return an ``AnnData`` of negative-binomial counts (float32 CSR) with labels and markers.

    ``obs`` has ``cell_type`` (``type0``...) and ``group`` (``group0``...); ``var`` has ``marker_of``
    (the type a gene marks, or ``""``). Gene names are ``gene0000``...; cell names ``cell0000``...
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    if n_types * n_markers > n_genes:
        raise ValueError(f"{n_types} types x {n_markers} markers need at least that many genes")
    if not 1 <= n_groups <= n_types:
        raise ValueError("n_groups must be between 1 and n_types")
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, size=n_cells)
    gene_means = rng.uniform(*mean_range, size=n_genes)
    means = np.tile(gene_means, (n_cells, 1))
    marker_type = np.full(n_genes, -1)
    marker_type[: n_types * n_markers] = np.repeat(np.arange(n_types), n_markers)
    means[marker_type[None, :] == types[:, None]] *= fold
    library = rng.lognormal(0.0, 0.3, size=(n_cells, 1))
    mu = library * means
    counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mu)).astype(np.float32)

    type_names = np.array([f"type{t}" for t in range(n_types)])
    group_of_type = np.array([f"group{t * n_groups // n_types}" for t in range(n_types)])
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(type_names[types]),
            "group": pd.Categorical(group_of_type[types]),
        },
        index=[f"cell{i:04d}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"marker_of": np.where(marker_type >= 0, type_names[np.maximum(marker_type, 0)], "")},
        index=[f"gene{j:04d}" for j in range(n_genes)],
    )
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)


def write_synthetic_h5ad(path: Path | str, **kwargs: object) -> Path:
    """Write :func:`synthetic_counts` (``kwargs`` passed on) to ``path`` atomically; return the path."""
    from gil.data.io import write_h5ad_atomic

    path = Path(path)
    write_h5ad_atomic(synthetic_counts(**kwargs), path)  # type: ignore[arg-type]
    return path
