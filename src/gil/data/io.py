"""Reading and checking ``.h5ad`` files.

Why: user data arrives in every shape (counts in ``X`` or a layer, log-transformed or not, gene names
in ``var_names`` or a column). This module turns each mismatch into a :class:`GilError` naming the
problem and the fix, and reads large matrices in row chunks from a backed file so memory does not
grow with the number of cells.
"""

from __future__ import annotations

from pathlib import Path

from gil.errors import GilError
from gil.files import atomic_file


def write_h5ad_atomic(adata, dest: Path | str) -> None:  # noqa: ANN001 - anndata is imported lazily
    """Write ``adata`` to ``dest`` atomically (anndata writes HDF5 without timestamps: same bytes)."""
    with atomic_file(dest) as tmp:
        adata.write_h5ad(tmp)
