"""Reading and checking ``.h5ad`` files, and the checks every matrix source shares.

Why: user data arrives in every shape (counts in ``X`` or a layer, log-transformed or not, gene names
in ``var_names`` or a column). This module turns each mismatch into a :class:`GilError` naming the
problem and the fix, and reads large matrices in row chunks from a backed file so memory does not
grow with the number of cells.

The file is opened with ``h5py`` and its parts are read with ``anndata.io.read_elem`` (obs, var) and
``anndata.io.sparse_dataset`` (the matrix), rather than ``anndata.read_h5ad(backed="r")``: in anndata
0.12 backed mode keeps only ``X`` on disk and loads every layer into memory, which defeats chunked
reading of a counts layer.

The checks (:class:`ValueStats`, :func:`gene_names`, :func:`label_table`, :class:`ContentHash`) take
any :class:`gil.data.source.MatrixSource`: an ``.h5ad`` here, a SOMA experiment in
:mod:`gil.data.soma`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from gil.errors import GilError
from gil.files import atomic_file

if TYPE_CHECKING:
    from gil.data.source import MatrixSource

# Non-integer data whose maximum is below this is almost surely log1p-transformed (log1p of a
# count of 5e8 is 20); normalised but unlogged data (CPM, TPM) has far larger values.
LOG_MAX = 20.0
MAX_LABEL_VALUES = 200
COUNTS_FIX = "set dataset.counts_layer to a layer of raw counts"


def write_h5ad_atomic(adata, dest: Path | str) -> None:  # noqa: ANN001 - anndata is imported lazily
    """Write ``adata`` to ``dest`` atomically (anndata writes HDF5 without timestamps: same bytes)."""
    with atomic_file(dest) as tmp:
        adata.write_h5ad(tmp)


def examples(values: Any, limit: int = 3) -> str:
    """A short, quoted list of the first ``limit`` items, for error messages."""
    items = [str(v) for v in values]
    shown = ", ".join(repr(v) for v in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def canonical(chunk: sp.spmatrix) -> sp.csr_matrix:
    """``chunk`` as canonical CSR (sorted indices, duplicates summed, no stored zeros): what every
    source's ``chunks`` yields, so the checks and the processed arrays do not depend on the source."""
    chunk = sp.csr_matrix(chunk)
    chunk.sum_duplicates()
    chunk.eliminate_zeros()
    return chunk


@dataclass
class H5adMatrix:
    """An open ``.h5ad``: its obs/var tables in memory and one matrix (``X`` or a layer) on disk."""

    path: Path
    where: str
    obs: pd.DataFrame
    var: pd.DataFrame
    matrix: Any
    counts_layer: str | None = None
    counts_fix: ClassVar[str] = COUNTS_FIX

    @property
    def n_cells(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    @property
    def obs_columns(self) -> list[str]:
        return [str(column) for column in self.obs.columns]

    def identity(self) -> dict:
        """What was read, for ``prepare.json``."""
        return {"kind": "h5ad", "path": str(self.path), "counts_layer": self.counts_layer}

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(first_row, chunk)`` for consecutive row blocks, as canonical CSR (sorted, no zeros).

        A matrix stored as CSC is read correctly but each chunk then touches the whole matrix: store
        large inputs as CSR.
        """
        for start in range(0, self.n_cells, chunk_size):
            yield start, canonical(self.matrix[start : start + chunk_size])


def _open_hdf5(path: Path) -> Any:
    """Open ``path`` with h5py, read-only, after checking it exists and looks like an AnnData file."""
    import h5py

    if not path.exists():
        raise GilError(f"{path} not found; check the path (dataset.path in params.yaml)")
    if not path.is_file():
        raise GilError(f"{path} is not a file; give the path of an .h5ad file")
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise GilError(
            f"{path} is not an .h5ad file (not readable as HDF5); write the data with AnnData.write_h5ad"
        ) from None
    missing = [key for key in ("obs", "var") if key not in handle]
    if missing:
        handle.close()
        raise GilError(
            f"{path} is HDF5 but not an .h5ad (no '{missing[0]}'); write the data with AnnData.write_h5ad"
        )
    return handle


def _read_table(handle: Any, key: str, path: Path) -> pd.DataFrame:
    from anndata.io import read_elem

    try:
        return read_elem(handle[key])
    except Exception as error:  # noqa: BLE001 - any decoding failure means the same thing to the user
        raise GilError(
            f"{path}: cannot read '{key}' ({type(error).__name__}); re-write the file with anndata>=0.8"
        ) from None


def _layer_names(handle: Any) -> list[str]:
    return sorted(handle["layers"].keys()) if "layers" in handle else []


def _matrix_element(handle: Any, layer: str | None, path: Path) -> tuple[str, Any]:
    """Return a description (``X`` or ``layer 'name'``) and a row-sliceable view of the matrix."""
    import h5py
    from anndata.io import sparse_dataset

    layers = _layer_names(handle)
    if layer is None:
        if "X" not in handle:
            raise GilError(f"{path} has no X matrix; set dataset.counts_layer to one of the layers {layers}")
        where, element = "X", handle["X"]
    else:
        if layer not in layers:
            raise GilError(
                f"{path}: counts_layer {layer!r} not found (layers: {layers or 'none'}); "
                "set dataset.counts_layer to one of them, or null to use X"
            )
        where, element = f"layer {layer!r}", handle["layers"][layer]
    if isinstance(element, h5py.Dataset) and element.ndim == 2:
        return where, element
    encoding = element.attrs.get("encoding-type", "")
    if encoding in ("csr_matrix", "csc_matrix"):
        return where, sparse_dataset(element)
    raise GilError(
        f"{path}: {where} is not a 2-d dense or sparse matrix ({encoding or 'unknown'}); re-write it"
    )


@contextlib.contextmanager
def open_h5ad(path: Path | str, layer: str | None = None) -> Iterator[H5adMatrix]:
    """Open ``path`` read-only and yield its obs, var and matrix (``X``, or ``layer``); close after use."""
    path = Path(path)
    handle = _open_hdf5(path)
    with handle:
        obs = _read_table(handle, "obs", path)
        var = _read_table(handle, "var", path)
        where, matrix = _matrix_element(handle, layer, path)
        source = H5adMatrix(path=path, where=where, obs=obs, var=var, matrix=matrix, counts_layer=layer)
        if source.n_cells == 0 or source.n_genes == 0:
            raise GilError(
                f"{path}: {where} is empty ({source.n_cells} cells x {source.n_genes} genes); "
                "give a file with data"
            )
        yield source


@dataclass
class ValueStats:
    """Running checks on a matrix's values, chunk by chunk: NaN and negatives fail at once.

    ``fix`` is the source's way to name a matrix of raw counts instead (a setting of params.yaml).
    """

    path: Path | str
    where: str
    fix: str = COUNTS_FIX
    maximum: float = 0.0
    nnz: int = 0
    non_integer: float | None = None

    def update(self, first_row: int, chunk: sp.csr_matrix) -> None:
        """Check ``chunk`` (rows from ``first_row``) and fold its values into the running stats."""
        data = chunk.data
        if data.size == 0:
            return
        bad = ~np.isfinite(data)
        if bad.any():
            row = first_row + _row_of(chunk, int(np.argmax(bad)))
            raise GilError(
                f"{self.path}: {self.where} contains NaN or infinite values (first in row {row}); "
                f"fix them, or {self.fix}"
            )
        if data.min() < 0:
            row = first_row + _row_of(chunk, int(np.argmin(data)))
            raise GilError(
                f"{self.path}: {self.where} has negative values (e.g. {data.min():g} in row {row}; "
                f"scaled data?); {self.fix}"
            )
        self.maximum = max(self.maximum, float(data.max()))
        self.nnz += int(data.size)
        if self.non_integer is None and np.issubdtype(data.dtype, np.floating):
            fractional = data != np.round(data)
            if fractional.any():
                self.non_integer = float(data[np.argmax(fractional)])

    @property
    def value_type(self) -> str:
        """``integer counts``, ``looks log-transformed`` or ``non-integer``."""
        if self.non_integer is None:
            return "integer counts"
        return "looks log-transformed" if self.maximum < LOG_MAX else "non-integer"

    def require_counts(self) -> None:
        """Raise unless every value seen is an integer count (what ``gil prepare`` needs)."""
        if self.value_type == "looks log-transformed":
            raise GilError(
                f"{self.path}: {self.where} looks log-transformed (non-integer values such as "
                f"{self.non_integer:.4g}, max {self.maximum:.4g}); {self.fix}"
            )
        if self.value_type == "non-integer":
            raise GilError(
                f"{self.path}: {self.where} has non-integer values (e.g. {self.non_integer:.4g}) but raw "
                f"counts are expected; {self.fix}"
            )


def _row_of(chunk: sp.csr_matrix, position: int) -> int:
    """The row (within ``chunk``) holding stored value number ``position``."""
    return int(np.searchsorted(chunk.indptr, position, side="right") - 1)


class ContentHash:
    """sha256 of what a source gave: its matrix, fed chunk by chunk, then the gene and cell names.

    Why: ``prepare.json`` records it, so that two reads (an ``.h5ad`` and a SOMA experiment, or one
    slice of the Census read twice) can be told equal or not without the raw data. The matrix part
    hashes row lengths, column indices and values (as float64) in three separate streams, so it
    depends neither on the chunk size nor on the stored value type.
    """

    def __init__(self) -> None:
        self._streams = [hashlib.sha256() for _ in range(3)]

    def update(self, chunk: sp.csr_matrix) -> None:
        """Fold the next rows (canonical CSR) into the hash."""
        parts = ((np.diff(chunk.indptr), "<i8"), (chunk.indices, "<i8"), (chunk.data, "<f8"))
        for stream, (array, dtype) in zip(self._streams, parts, strict=True):
            stream.update(np.ascontiguousarray(array, dtype=dtype).tobytes())

    def hexdigest(self, genes: Any, cells: Any) -> str:
        """The hash of the rows seen so far with the ``genes`` and ``cells`` names."""
        total = hashlib.sha256()
        for stream in self._streams:
            total.update(stream.digest())
        for names in (genes, cells):
            total.update("\n".join(map(str, names)).encode() + b"\0")
        return total.hexdigest()


def scan_values(source: MatrixSource, chunk_size: int) -> ValueStats:
    """Read the whole matrix once, in chunks, and return its value statistics."""
    stats = ValueStats(source.path, source.where, source.counts_fix)
    for first_row, chunk in source.chunks(chunk_size):
        stats.update(first_row, chunk)
    return stats


def gene_names(source: MatrixSource, gene_column: str | None) -> np.ndarray:
    """Gene names from ``var_names`` or ``var[gene_column]``; they must be unique.

    A source without ``var_names`` (a SOMA experiment: its var has columns only) needs ``gene_column``.
    """
    columns = list(source.var.columns)
    if gene_column is None and source.var_names is None:
        raise GilError(
            f"{source.path}: a SOMA experiment has no var_names; set dataset.gene_column to the var column "
            f"of gene names (columns: {columns or 'none'}; CELLxGENE Census: feature_name)"
        )
    if gene_column is None:
        names, origin = source.var_names.astype(str), "var_names"
    elif gene_column not in columns:
        fallback = ", or null to use var_names" if source.var_names is not None else ""
        raise GilError(
            f"{source.path}: gene_column {gene_column!r} is not a var column "
            f"(columns: {columns or 'none'}); set dataset.gene_column to one of them{fallback}"
        )
    else:
        names, origin = source.var[gene_column].astype(str), f"var[{gene_column!r}]"
    problem = _duplicate_names(pd.Index(names), origin)
    if problem:
        raise GilError(f"{source.path}: {problem}")
    return np.asarray(names, dtype=str)


def _duplicate_names(names: pd.Index, origin: str) -> str | None:
    """A description of the duplicated ``names`` and the fix, or ``None`` if they are unique."""
    duplicated = names[names.duplicated()].unique()
    if not len(duplicated):
        return None
    return (
        f"{len(duplicated)} duplicate gene names in {origin} (e.g. {examples(duplicated)}); "
        "make them unique or set dataset.gene_column to a column of unique names"
    )


def label_table(source: MatrixSource, columns: list[str]) -> pd.DataFrame:
    """The obs ``columns`` as strings (missing values become ``""``), in file row order."""
    missing = [column for column in columns if column not in source.obs_columns]
    if missing:
        raise GilError(
            f"{source.path}: label column(s) {missing} not in obs "
            f"(columns: {source.obs_columns[:20]}); fix dataset.label_columns"
        )
    return pd.DataFrame(
        {column: source.obs[column].astype("string").fillna("").to_numpy(dtype=str) for column in columns},
        index=pd.RangeIndex(source.n_cells),  # keeps the row count when there are no label columns
    )


def label_candidates(obs: pd.DataFrame) -> dict[str, pd.Series]:
    """Categorical/string obs columns with 2..``MAX_LABEL_VALUES`` distinct values, with value counts."""
    found = {}
    for column in obs.columns:
        series = obs[column]
        if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(series.dtype):
            counts = series.astype("string").value_counts(dropna=True)
            if 2 <= len(counts) <= MAX_LABEL_VALUES:
                found[str(column)] = counts
    return found


def describe_labels(obs: pd.DataFrame) -> list[str]:
    """``gil validate``'s lines on the obs columns that could be labels, with their value counts."""
    candidates = label_candidates(obs)
    if not candidates:
        return [f"candidate label columns: none (no categorical column with 2..{MAX_LABEL_VALUES} values)"]
    lines = ["candidate label columns:"]
    for column, counts in candidates.items():
        shown = ", ".join(f"{value} {count}" for value, count in counts.head(8).items())
        more = f", ... ({len(counts) - 8} more)" if len(counts) > 8 else ""
        lines.append(f"  {column} ({len(counts)} values): {shown}{more}")
    return lines


def _describe_genes(source: H5adMatrix) -> str:
    problem = _duplicate_names(source.var.index.astype(str), "var_names")
    if problem:
        return f"gene names: problem: {problem}"
    return f"gene names: var_names, unique (e.g. {examples(source.var.index[:3])})"


def describe_values(source: MatrixSource, chunk_size: int) -> str:
    """One line on ``source``'s matrix, read whole in chunks: value type, maximum, density, and the
    setting to change when it does not hold counts."""
    stats = scan_values(source, chunk_size)
    density = stats.nnz / (source.n_cells * source.n_genes)
    fix = f" (gil prepare needs counts: {source.counts_fix})" if stats.value_type != "integer counts" else ""
    return f"{source.where}: {stats.value_type}, max {stats.maximum:g}, {density:.1%} non-zero{fix}"


def _describe_values(path: Path, layer: str | None, chunk_size: int) -> str:
    with open_h5ad(path, layer) as source:
        return describe_values(source, chunk_size)


def describe_h5ad(path: Path | str, chunk_size: int = 2000) -> str:
    """A multi-line summary of an ``.h5ad`` for ``gil validate``; raises :class:`GilError` if unusable.

    Unusable means: missing, unreadable, empty, or holding NaN or negative values. Problems that a
    params setting can work around (log-transformed ``X``, duplicate ``var_names``) are reported in
    the summary with the setting to change; whether ``gil prepare`` accepts the file under given
    params is :func:`gil.data.prepare.refusal`'s verdict (``gil validate`` prints both).
    """
    path = Path(path)
    with _open_hdf5(path) as handle:
        matrices: list[str | None] = ([None] if "X" in handle else []) + _layer_names(handle)
    if not matrices:
        raise GilError(f"{path} has no X matrix and no layers; give a file with data")
    with open_h5ad(path, matrices[0]) as source:
        lines = [f"{path}: {source.n_cells} cells x {source.n_genes} genes", _describe_genes(source)]
        obs = source.obs
    lines += [_describe_values(path, matrix, chunk_size) for matrix in matrices]
    if matrices[-1] is None:
        lines.append("layers: none")
    return "\n".join(lines + describe_labels(obs))
