"""Synthetic raw counts at CELLxGENE scale (10^5-10^6 cells), generated and written in chunks of cells.

Why: the scale benchmark (``benchmarks/scale.py``) needs data with realistic sparsity and enough
structure for every step to mean something (importance splits, probe tasks), at sizes whose matrix
never fits in memory at once. Each chunk is generated, written and dropped; memory holds one chunk.

The model is read sampling: a cell of type ``t`` draws a library of ``reads`` reads (lognormal
around ``reads_per_cell``) from a gene distribution, and a gene's count is how often it was drawn
(multinomial, as UMI counts). Gene popularity is lognormal (heavy-tailed, as real expression), so
counts are overdispersed; each type's ``n_markers`` marker genes are ``fold`` times as popular in its
cells. The defaults give ~1,150 expressed genes per cell out of 20,000. Types fall into two groups
(``group`` A: the first half of the types, B: the rest), the two probe tasks of the scale params.
Deterministic given ``seed`` and ``chunk_cells``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from gil.files import atomic_file

TYPE_SHARES = np.array([0.3, 0.2, 0.15, 0.15, 0.1, 0.1])


@dataclass(frozen=True)
class ScaleSpec:
    """What to generate: sizes, structure and the random seed."""

    n_cells: int
    n_genes: int = 20_000
    reads_per_cell: int = 1_400
    n_markers: int = 100
    fold: float = 20.0
    seed: int = 0
    chunk_cells: int = 2_000

    @property
    def n_types(self) -> int:
        return len(TYPE_SHARES)

    def gene_names(self) -> list[str]:
        return [f"gene{j:05d}" for j in range(self.n_genes)]


def _type_cdfs(spec: ScaleSpec, rng: np.random.Generator) -> np.ndarray:
    """Cumulative gene distributions, one row per cell type (popularity times marker folds)."""
    weights = np.tile(rng.lognormal(0.0, 1.5, spec.n_genes), (spec.n_types, 1))
    for cell_type in range(spec.n_types):
        weights[cell_type, cell_type * spec.n_markers : (cell_type + 1) * spec.n_markers] *= spec.fold
    cdfs = np.cumsum(weights, axis=1)
    return cdfs / cdfs[:, -1:]


def _count_chunk(
    types: np.ndarray, cdfs: np.ndarray, spec: ScaleSpec, rng: np.random.Generator
) -> sp.csr_matrix:
    """Canonical CSR counts of one chunk: each cell's reads drawn, sorted and run-length counted."""
    n_cells, n_genes = len(types), spec.n_genes
    reads = np.minimum(rng.lognormal(0.0, 0.3, n_cells) * spec.reads_per_cell, 2.5 * spec.reads_per_cell)
    reads = np.maximum(reads.astype(np.int64), 1)
    width = int(reads.max())
    draws = np.empty((n_cells, width), dtype=np.int32)
    uniforms = rng.random((n_cells, width))
    for cell_type in range(spec.n_types):
        members = types == cell_type
        draws[members] = np.searchsorted(cdfs[cell_type], uniforms[members])
    draws[np.arange(width)[None, :] >= reads[:, None]] = n_genes  # past a cell's library: unused
    draws.sort(axis=1)
    starts = np.ones_like(draws, dtype=bool)
    starts[:, 1:] = draws[:, 1:] != draws[:, :-1]
    starts &= draws < n_genes
    flat = np.flatnonzero(starts)
    row = flat // width
    same_row_next = np.append(row[1:] == row[:-1], False)
    ends = np.where(same_row_next, np.append(flat[1:], 0), row * width + reads[row])
    indptr = np.concatenate([[0], np.cumsum(starts.sum(axis=1))]).astype(np.int64)
    counts = (ends - flat).astype(np.float32)
    return sp.csr_matrix((counts, draws.ravel()[flat], indptr), shape=(n_cells, n_genes))


def cell_types(spec: ScaleSpec) -> np.ndarray:
    """Every cell's type index, drawn up front (obs is written before the matrix)."""
    return np.random.default_rng([spec.seed, 1]).choice(spec.n_types, size=spec.n_cells, p=TYPE_SHARES)


def obs_table(spec: ScaleSpec) -> pd.DataFrame:
    """``cell_type`` (``type0``..), ``group`` (A/B) and ``batch`` (a column for obs filters)."""
    types = cell_types(spec)
    half = spec.n_types // 2
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
            "group": pd.Categorical(np.where(types < half, "A", "B")),
            "batch": pd.Categorical(np.where(np.arange(spec.n_cells) % 2 == 0, "even", "odd")),
        },
        index=pd.Index([f"cell{i:07d}" for i in range(spec.n_cells)], name="obs_id"),
    )


def count_chunks(spec: ScaleSpec) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(first_row, counts)`` chunk by chunk."""
    rng = np.random.default_rng([spec.seed, 2])
    cdfs = _type_cdfs(spec, rng)
    types = cell_types(spec)
    for start in range(0, spec.n_cells, spec.chunk_cells):
        yield start, _count_chunk(types[start : start + spec.chunk_cells], cdfs, spec, rng)


class _SomaWriter:
    """A SOMA experiment (measurement ``RNA``, X layer ``raw``) written chunk by chunk.

    The layout is what ``tiledbsoma.io.from_anndata`` writes (obs with ``obs_id``, var with
    ``var_id``), plus var ``feature_name`` as in CELLxGENE Census.
    """

    def __init__(self, spec: ScaleSpec, uri: Path):
        import pyarrow as pa
        import tiledbsoma as soma

        self.pa = pa
        obs = obs_table(spec)
        obs_arrow = pa.table(
            {
                "soma_joinid": pa.array(np.arange(spec.n_cells), pa.int64()),
                "obs_id": pa.array(obs.index.astype(str)),
                **{column: pa.array(obs[column].astype(str)) for column in obs.columns},
            }
        )
        names = pa.array(spec.gene_names())
        var_arrow = pa.table(
            {
                "soma_joinid": pa.array(np.arange(spec.n_genes), pa.int64()),
                "var_id": names,
                "feature_name": names,
            }
        )
        self.experiment = soma.Experiment.create(str(uri))
        self.experiment.add_new_dataframe(
            "obs", schema=obs_arrow.schema, domain=[(0, spec.n_cells - 1)]
        ).write(obs_arrow)
        rna = self.experiment.add_new_collection("ms").add_new_collection("RNA", soma.Measurement)
        rna.add_new_dataframe("var", schema=var_arrow.schema, domain=[(0, spec.n_genes - 1)]).write(var_arrow)
        self.layer = rna.add_new_collection("X").add_new_sparse_ndarray(
            "raw", type=pa.float32(), shape=(spec.n_cells, spec.n_genes)
        )

    def append(self, start: int, counts: sp.csr_matrix) -> None:
        coo = counts.tocoo()
        self.layer.write(
            self.pa.table(
                {
                    "soma_dim_0": self.pa.array(coo.row.astype(np.int64) + start),
                    "soma_dim_1": self.pa.array(coo.col.astype(np.int64)),
                    "soma_data": self.pa.array(coo.data.astype(np.float32)),
                }
            )
        )

    def close(self) -> None:
        self.experiment.close()


def write_scale_data(spec: ScaleSpec, path: Path, soma_uri: Path | None = None) -> int:
    """Write the data as an ``.h5ad`` (CSR ``X``, atomically) and, with ``soma_uri``, as a SOMA
    experiment too, from one pass of generated chunks; return the number of stored values."""
    import h5py
    from anndata.io import sparse_dataset, write_elem

    nnz = 0
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as handle:
        write_elem(handle, "obs", obs_table(spec))
        write_elem(handle, "var", pd.DataFrame(index=pd.Index(spec.gene_names(), name="gene")))
        soma = _SomaWriter(spec, soma_uri) if soma_uri is not None else None
        try:
            for start, counts in count_chunks(spec):
                if start == 0:
                    write_elem(handle, "X", counts)
                else:
                    sparse_dataset(handle["X"]).append(counts)
                if soma is not None:
                    soma.append(start, counts)
                nnz += counts.nnz
        finally:
            if soma is not None:
                soma.close()
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
    return nnz
