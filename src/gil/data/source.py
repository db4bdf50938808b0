"""The dataset's raw matrix behind one interface: an ``.h5ad`` file or a TileDB-SOMA experiment.

Why: ``gil prepare`` and ``gil validate`` check and stream any source the same way (row chunks of
canonical CSR, obs and var tables), so the processed arrays cannot depend on where the counts came
from. ``dataset.soma`` chooses the kind; the SOMA reader (and ``tiledbsoma``) is imported only when a
SOMA source is opened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pandas as pd
import scipy.sparse as sp
from pydantic import ValidationError

from gil.config import DatasetConfig
from gil.errors import GilError


class MatrixSource(Protocol):
    """An open source of raw counts: cells are rows, genes columns, in the order of ``obs``/``var``."""

    @property
    def path(self) -> Path | str:
        """The file or URI, as error messages name it."""

    @property
    def where(self) -> str:
        """The matrix read (``X``, ``layer 'counts'``, a SOMA X layer), as messages name it."""

    @property
    def counts_fix(self) -> str:
        """The params setting that names a matrix of raw counts instead."""

    @property
    def obs(self) -> pd.DataFrame:
        """The cells: index = cell names, columns = the obs columns read."""

    @property
    def obs_columns(self) -> list[str]:
        """Every obs column the source has (read or not)."""

    @property
    def var(self) -> pd.DataFrame:
        """The genes' var table."""

    @property
    def var_names(self) -> pd.Index | None:
        """The var index of gene names, or None where there is none (SOMA: use a var column)."""

    @property
    def n_cells(self) -> int: ...

    @property
    def n_genes(self) -> int: ...

    def identity(self) -> dict:
        """The source's kind and settings, as ``prepare.json`` records them."""

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(first_row, rows)`` for consecutive blocks of cells, canonical CSR in var order."""


@contextlib.contextmanager
def open_source(dataset: DatasetConfig) -> Iterator[MatrixSource]:
    """Open ``dataset``'s source read-only; close it after use.

    Of a SOMA experiment's obs only the label columns (and the cell names) are read; an ``.h5ad``'s
    obs is read whole.
    """
    if dataset.soma is None:
        from gil.data.io import open_h5ad

        with open_h5ad(dataset.path, dataset.counts_layer) as source:
            yield source
    else:
        from gil.data.soma import open_soma

        with open_soma(dataset.path, dataset.soma, dataset.label_columns) as source:
            yield source


def is_soma_uri(path: str) -> bool:
    """Whether ``path`` names a SOMA experiment rather than an ``.h5ad``: a directory or a URI."""
    return "://" in path or Path(path).is_dir()


def dataset_to_validate(path: str, dataset: DatasetConfig | None) -> DatasetConfig:
    """The dataset settings ``gil validate PATH`` checks under: ``dataset``'s (the defaults when None)
    with ``PATH`` as the source.

    ``PATH`` says its kind: a directory or URI is a SOMA experiment (read with ``dataset.soma``, else
    its defaults), a file an ``.h5ad``; the Census (``dataset.soma.census_version``) has no path.
    """
    settings = dataset.model_dump() if dataset is not None else {}
    soma = settings.get("soma")
    census = soma is not None and soma["census_version"] is not None
    if census or is_soma_uri(path):
        soma = soma or {}
    else:
        soma = None
    try:
        return DatasetConfig.model_validate({**settings, "path": path, "soma": soma})
    except ValidationError as error:
        message = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise GilError(f"dataset: {message}") from None


def describe(dataset: DatasetConfig, chunk_size: int = 2000) -> str:
    """``gil validate``'s multi-line summary of ``dataset``'s source; raises :class:`GilError` if unusable."""
    if dataset.soma is None:
        from gil.data.io import describe_h5ad

        return describe_h5ad(dataset.path, chunk_size)
    from gil.data.soma import describe_soma

    return describe_soma(dataset.path, dataset.soma, chunk_size)
