"""Reading the non-zeros of a few cells (one batch) of the processed CSR matrix.

Why not the memory map: every page a memory-mapped read touches stays in the process's resident set
until the mapping goes away, and the kernel maps the neighbouring pages of each fault with it. A
training run that draws random cells therefore ends up with most of ``indices.npy`` and
``values.npy`` resident, so its memory grows with the dataset. :class:`RowFiles` copies just the
rows of a batch into fresh arrays with ``os.preadv``: the page cache still keeps the file warm, but
those pages are the kernel's to reclaim, and the process holds one batch of non-zeros at a time.
:class:`RowArrays` reads arrays already in memory (built in a test, or sent to a Ray worker).
Both return the same arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gil.data.layout import ProcessedData
from gil.errors import GilError

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _data_offset(path: Path, dtype: np.dtype) -> int:
    """Byte offset of the data of a C-ordered 1-D ``.npy`` file of ``dtype``, checked."""
    with path.open("rb") as handle:
        reader = _HEADER_READERS.get(np.lib.format.read_magic(handle))
        shape, fortran_order, stored = reader(handle) if reader else ((), True, None)
        if len(shape) != 1 or fortran_order or np.dtype(stored) != dtype:
            raise GilError(f"{path}: expected a 1-D {dtype} array; re-run `gil prepare`")
        return handle.tell()


class RowArrays:
    """Selected rows of a CSR matrix held in (or memory-mapped into) arrays."""

    def __init__(self, data: ProcessedData):
        self.data = data

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lengths, columns, values)`` of ``rows``, in the given order, non-zeros concatenated."""
        starts = self.data.indptr[rows]
        lengths = self.data.indptr[rows + 1] - starts
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = np.repeat(starts, lengths) + offsets
        return lengths, np.asarray(self.data.indices[flat]), np.asarray(self.data.values[flat], np.float32)


class _ArrayFile(NamedTuple):
    descriptor: int
    offset: int  # bytes before the data (the .npy header)
    dtype: np.dtype
    path: Path


class RowFiles:
    """Positioned reads of selected rows from ``indices.npy`` and ``values.npy`` of a directory."""

    def __init__(self, directory: Path, indptr: np.ndarray):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self._sources: list[_ArrayFile] = []
        for name, dtype in (("indices.npy", np.dtype(np.int32)), ("values.npy", np.dtype(np.float32))):
            offset = _data_offset(directory / name, dtype)
            self._sources.append(
                _ArrayFile(os.open(directory / name, os.O_RDONLY), offset, dtype, directory / name)
            )

    def __del__(self) -> None:
        for source in getattr(self, "_sources", []):
            os.close(source.descriptor)

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lengths, columns, values)`` of ``rows``, in the given order, non-zeros concatenated."""
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        columns, values = (self._read(source, starts, lengths) for source in self._sources)
        return lengths, columns, values

    @staticmethod
    def _read(source: _ArrayFile, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        out = np.empty(int(lengths.sum()), dtype=source.dtype)
        buffer = memoryview(out).cast("B")
        size = source.dtype.itemsize
        position = 0
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            wanted = length * size
            got = os.preadv(
                source.descriptor, [buffer[position : position + wanted]], source.offset + start * size
            )
            if got != wanted:
                raise GilError(f"{source.path} ends early (truncated); re-run `gil prepare`")
            position += wanted
        return out


def row_reader(data: ProcessedData) -> RowArrays | RowFiles:
    """Positioned reads from the files when ``data`` was loaded from a directory, else its arrays."""
    if data.source is not None and hasattr(os, "preadv"):
        return RowFiles(data.source, data.indptr)
    return RowArrays(data)
