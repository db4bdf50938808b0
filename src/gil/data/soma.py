"""A TileDB-SOMA experiment (or the CELLxGENE Census) as the raw data, read in chunks of cells.

Why: at CELLxGENE scale the data is a SOMA experiment, queried by an obs filter, not an ``.h5ad``;
exporting a slice to an ``.h5ad`` first would hold it in memory. :class:`SomaMatrix` gives
``gil prepare`` and ``gil validate`` the interface of :class:`gil.data.io.H5adMatrix`
(:class:`gil.data.source.MatrixSource`): the selected cells' obs columns and the var table in
memory, the X layer read from storage one block of cells at a time (never whole).

Rows are the cells the obs filter selects, in ``soma_joinid`` order (the row order of the AnnData
that ``tiledbsoma.io.from_anndata`` wrote), renumbered 0..n_cells-1; columns are var's rows in
``soma_joinid`` order. A cell's name is its ``obs_id`` (the AnnData obs index that
``from_anndata`` writes), else its ``soma_joinid``. A SOMA var table has no index of names, so
``dataset.gene_column`` names the column of gene names (Census: ``feature_name``).

``tiledbsoma`` is imported here only, and this module only when a SOMA source is opened; the
Census route imports ``cellxgene_census`` (not a dependency: it reads over the network).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from gil.config import SomaConfig
from gil.data.io import canonical, describe_labels, describe_values, examples
from gil.errors import GilError

SOMA_COUNTS_FIX = "set dataset.soma.layer to an X layer of raw counts"
JOINID = "soma_joinid"
CELL_NAME = "obs_id"


def _tiledbsoma() -> Any:
    try:
        import tiledbsoma
    except ImportError:
        raise GilError(
            "reading a SOMA experiment needs the tiledbsoma package; pip install 'gil[soma]' "
            "(tiledbsoma==2.3.0)"
        ) from None
    return tiledbsoma


@dataclass
class SomaMatrix:
    """The selected cells of an open SOMA experiment: obs columns and var in memory, X on storage."""

    path: str
    where: str
    obs: pd.DataFrame
    var: pd.DataFrame
    obs_columns: list[str]
    settings: SomaConfig
    layer: Any  # tiledbsoma.SparseNDArray
    layers: list[str]  # every X layer of the measurement
    obs_joinids: np.ndarray  # row i is the cell with soma_joinid obs_joinids[i] (ascending)
    var_joinids: np.ndarray  # column j is the gene with soma_joinid var_joinids[j] (ascending)
    counts_fix: ClassVar[str] = SOMA_COUNTS_FIX
    var_names: ClassVar[None] = None

    @property
    def n_cells(self) -> int:
        return len(self.obs_joinids)

    @property
    def n_genes(self) -> int:
        return len(self.var_joinids)

    def identity(self) -> dict:
        """What was read, for ``prepare.json`` (the URI is None for the Census)."""
        uri = None if self.settings.census_version is not None else self.path
        return {"kind": "soma", "uri": uri, **self.settings.model_dump()}

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(first_row, chunk)`` for consecutive blocks of cells, as canonical CSR."""
        for start in range(0, self.n_cells, chunk_size):
            joinids = self.obs_joinids[start : start + chunk_size]
            table = self.layer.read(coords=(joinids,)).tables().concat()
            rows = np.searchsorted(joinids, table["soma_dim_0"].to_numpy())
            columns = np.searchsorted(self.var_joinids, table["soma_dim_1"].to_numpy())
            values = table["soma_data"].to_numpy()
            counts = sp.coo_matrix((values, (rows, columns)), shape=(len(joinids), self.n_genes))
            yield start, canonical(counts)


def _first_line(error: BaseException) -> str:
    """A tiledbsoma error's message without the C++ traceback it may carry."""
    return str(error).strip().splitlines()[0].removeprefix("SOMAError: ").strip("'")


def _open_uri(uri: str) -> Any:
    soma = _tiledbsoma()
    if "://" not in uri and not Path(uri).exists():
        raise GilError(f"{uri} not found; check the SOMA experiment's URI (dataset.path in params.yaml)")
    try:
        return soma.Experiment.open(uri)
    except soma.SOMAError as error:
        raise GilError(
            f"{uri} is not a SOMA experiment ({_first_line(error)}); give the URI of one (the directory "
            "tiledbsoma.io.from_anndata wrote), or an .h5ad file with dataset.soma: null"
        ) from None


@contextlib.contextmanager
def _census_experiment(settings: SomaConfig) -> Iterator[Any]:
    """The Census release's experiment for ``settings.organism`` (opened over the network)."""
    try:
        import cellxgene_census
    except ImportError:
        raise GilError(
            "dataset.soma.census_version: reading the CELLxGENE Census needs the cellxgene-census "
            "package; pip install cellxgene-census==1.18.0"
        ) from None
    name = f"CELLxGENE Census {settings.census_version}"
    try:
        census = cellxgene_census.open_soma(census_version=settings.census_version)
    except Exception as error:  # noqa: BLE001 - a network or version error; either way the user's fix
        raise GilError(
            f"cannot open {name} ({_first_line(error)}); check dataset.soma.census_version and the network"
        ) from None
    with census:
        organisms = list(census["census_data"].keys())
        if settings.organism not in organisms:
            raise GilError(
                f"{name} has no organism {settings.organism!r} (organisms: {organisms}); "
                "set dataset.soma.organism to one of them"
            )
        yield census["census_data"][settings.organism]


@contextlib.contextmanager
def _experiment(uri: str, settings: SomaConfig) -> Iterator[tuple[str, Any]]:
    """``(name for messages, open experiment)`` of a URI, or of the Census when ``census_version``."""
    if settings.census_version is None:
        with _open_uri(uri) as experiment:
            yield uri, experiment
    else:
        with _census_experiment(settings) as experiment:
            yield f"CELLxGENE Census {settings.census_version} ({settings.organism})", experiment


def _layer(experiment: Any, name: str, settings: SomaConfig) -> tuple[Any, Any, list[str]]:
    """``(measurement, X layer, every X layer's name)`` of ``settings``, checked to exist and be sparse."""
    measurements = list(experiment.ms.keys())
    if settings.measurement not in measurements:
        raise GilError(
            f"{name}: no measurement {settings.measurement!r} (measurements: {measurements or 'none'}); "
            "set dataset.soma.measurement to one of them"
        )
    measurement = experiment.ms[settings.measurement]
    layers = list(measurement.X.keys()) if "X" in measurement else []
    if settings.layer not in layers:
        raise GilError(
            f"{name}: measurement {settings.measurement!r} has no X layer {settings.layer!r} "
            f"(layers: {layers or 'none'}); set dataset.soma.layer to the layer of raw counts"
        )
    layer = measurement.X[settings.layer]
    if not layer.is_sparse:
        raise GilError(f"{name}: X layer {settings.layer!r} is dense; write the counts as a sparse layer")
    return measurement, layer, layers


def _selected_obs(
    experiment: Any, name: str, settings: SomaConfig, available: list[str], columns: list[str] | None
) -> pd.DataFrame:
    """The cells ``settings.obs_filter`` selects, in ``soma_joinid`` order, with ``soma_joinid`` and
    those of ``columns`` that are ``available`` (None: all); index = cell names."""
    wanted = available if columns is None else [column for column in columns if column in available]
    names = [CELL_NAME] if CELL_NAME in available else []
    read = [JOINID, *dict.fromkeys(names + wanted)]
    try:
        table = experiment.obs.read(value_filter=settings.obs_filter, column_names=read).concat()
    except _tiledbsoma().SOMAError as error:
        raise GilError(
            f"{name}: obs_filter {settings.obs_filter!r} is not a valid obs filter ({_first_line(error)}); "
            f"fix dataset.soma.obs_filter (obs columns: {available[:20]})"
        ) from None
    obs = table.to_pandas().sort_values(JOINID, kind="stable")
    cell_names = obs[CELL_NAME] if names else obs[JOINID]
    obs.index = pd.Index(cell_names.astype(str).to_numpy(), name=None)
    return obs[[JOINID, *wanted]]


@contextlib.contextmanager
def open_soma(uri: str, settings: SomaConfig, obs_columns: list[str] | None = None) -> Iterator[SomaMatrix]:
    """Open the experiment at ``uri`` (or the Census) read-only and yield the cells ``settings`` select.

    Only the ``obs_columns`` (None: all) of obs are read, besides the cell names. Raises
    :class:`GilError` naming the fix when the source, measurement or layer is missing, the filter is
    invalid or selects no cell.
    """
    with _experiment(uri, settings) as (name, experiment):
        measurement, layer, layers = _layer(experiment, name, settings)
        available = [column for column in experiment.obs.schema.names if column != JOINID]
        obs = _selected_obs(experiment, name, settings, available, obs_columns)
        if obs.empty:
            problem = (
                f"obs_filter {settings.obs_filter!r} matches no cell; fix dataset.soma.obs_filter"
                if settings.obs_filter is not None
                else "obs is empty; give an experiment with cells"
            )
            raise GilError(f"{name}: {problem}")
        var = measurement.var.read().concat().to_pandas().sort_values(JOINID, kind="stable")
        if var.empty:
            raise GilError(f"{name}: measurement {settings.measurement!r} has no genes (var is empty)")
        yield SomaMatrix(
            path=name,
            where=f"X layer {settings.layer!r} of measurement {settings.measurement!r}",
            obs=obs.drop(columns=JOINID),
            var=var.drop(columns=JOINID).reset_index(drop=True),
            obs_columns=available,
            settings=settings,
            layer=layer,
            layers=layers,
            obs_joinids=obs[JOINID].to_numpy(dtype=np.int64),
            var_joinids=var[JOINID].to_numpy(dtype=np.int64),
        )


def _describe_gene_columns(var: pd.DataFrame) -> str:
    """Which var columns could be ``dataset.gene_column`` (text columns of unique values)."""
    unique = [
        f"{column} (e.g. {examples(var[column][:3])})"
        for column in var.columns
        if not pd.api.types.is_numeric_dtype(var[column]) and var[column].is_unique
    ]
    found = "; ".join(unique) if unique else "none with unique names"
    return f"gene names: no var_names in a SOMA experiment; set dataset.gene_column to a var column: {found}"


def describe_soma(uri: str, settings: SomaConfig, chunk_size: int = 2000) -> str:
    """A multi-line summary of the SOMA source for ``gil validate``: cells after the filter, genes,
    gene-name candidates, the values of ``settings.layer`` (the layer read; the others are listed, not
    scanned: a Census layer is large) and candidate label columns."""
    with open_soma(uri, settings) as source:
        selected = f"obs_filter {settings.obs_filter!r}" if settings.obs_filter is not None else "all cells"
        stored = source.layer.schema.field("soma_data").type
        lines = [
            f"{source.path}: {source.n_cells} cells ({selected}) x {source.n_genes} genes",
            _describe_gene_columns(source.var),
            describe_values(source, chunk_size),
            f"X layers of measurement {settings.measurement!r}: {', '.join(source.layers)} "
            f"(values stored as {stored})",
        ]
        return "\n".join(lines + describe_labels(source.obs))
