"""A TileDB-SOMA experiment as the dataset: the same processed arrays as the ``.h5ad`` it was written
from, obs filters, ``gil validate``, every bad input, and the default pipeline through ``dvc repro``.

The experiments are real ones, written by ``tiledbsoma.io.from_anndata`` (no mocks); the Zeisel one
takes seconds to write, so it is written once per module. The CELLxGENE Census route needs network:
only its missing-package message is tested.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
import tiledbsoma
import tiledbsoma.io
import yaml
from conftest import _run_checked, build_tiny_project
from test_data_io import _assert_one_line_error

from gil.config import config_from_dict
from gil.data.prepare import run_prepare
from gil.data.synthetic import synthetic_counts

PROCESSED_ARRAYS = ["indptr.npy", "indices.npy", "values.npy", "genes.tsv", "cells.tsv"]
LABELS = ["cell_class", "cell_subclass"]
GLIA = "cell_class in ['microglia', 'astrocytes_ependymal'] and cell_subclass != '(none)'"


def _write_soma(adata: ad.AnnData, uri: Path) -> Path:
    tiledbsoma.io.from_anndata(str(uri), adata, measurement_name="RNA", X_layer_name="raw")
    return uri


@pytest.fixture(scope="module")
def zeisel_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded Zeisel data as the ``gil zeisel`` stage writes it. Read-only."""
    from gil.data.zeisel import write_zeisel_h5ad

    path = tmp_path_factory.mktemp("zeisel") / "zeisel.h5ad"
    write_zeisel_h5ad(path)
    return path


@pytest.fixture(scope="module")
def zeisel_soma(zeisel_h5ad: Path) -> Path:
    """The same data as a SOMA experiment (measurement RNA, X layer raw). Read-only."""
    return _write_soma(ad.read_h5ad(zeisel_h5ad), zeisel_h5ad.parent / "zeisel.soma")


def _dataset(path: Path, **soma: object) -> dict:
    """The ``dataset`` section for ``path``: with ``soma`` settings a SOMA experiment, else an .h5ad."""
    dataset = {"name": "zeisel", "path": str(path), "label_columns": LABELS}
    if path.suffix == ".soma":
        dataset.update(gene_column="var_id", soma=dict(soma))  # from_anndata names the var index var_id
    return dataset


def _prepare(tiny_params: dict, dataset: dict, out: Path, **prepare: object) -> dict[str, bytes]:
    """``gil prepare`` of ``dataset`` into ``out``; returns every output file's bytes."""
    params = {**tiny_params, "dataset": dataset, "prepare": {**tiny_params["prepare"], **prepare}}
    run_prepare(config_from_dict(params), out)
    return {path.name: path.read_bytes() for path in out.iterdir()}


def test_prepare_from_soma_equals_prepare_from_the_h5ad(
    zeisel_h5ad: Path, zeisel_soma: Path, tiny_params: dict, tmp_path: Path
) -> None:
    """Byte for byte, whatever the chunk size on either side; prepare.json records both sources and
    the same content hash."""
    qc = {"min_genes_per_cell": 200, "min_cells_per_gene": 3}
    from_h5ad = _prepare(tiny_params, _dataset(zeisel_h5ad), tmp_path / "h5ad", chunk_size=2000, **qc)
    from_soma = _prepare(tiny_params, _dataset(zeisel_soma), tmp_path / "soma", chunk_size=700, **qc)
    for name in PROCESSED_ARRAYS:
        assert from_soma[name] == from_h5ad[name], name
    h5ad_summary, soma_summary = (json.loads(files["prepare.json"]) for files in (from_h5ad, from_soma))
    assert h5ad_summary["source"] == {"kind": "h5ad", "path": str(zeisel_h5ad), "counts_layer": None}
    assert soma_summary["source"] == {
        "kind": "soma",
        "uri": str(zeisel_soma),
        "measurement": "RNA",
        "layer": "raw",
        "obs_filter": None,
        "census_version": None,
        "organism": "homo_sapiens",
    }
    assert soma_summary["content_sha256"] == h5ad_summary["content_sha256"]
    assert len(soma_summary["content_sha256"]) == 64
    assert soma_summary["cells_before"] == 3005 and soma_summary["genes_before"] == 4000


def test_an_obs_filter_selects_the_cells_pandas_selects(
    zeisel_h5ad: Path, zeisel_soma: Path, tiny_params: dict, tmp_path: Path
) -> None:
    """The filtered experiment gives the cells (names, labels, order) of the same selection in pandas,
    and the arrays of an .h5ad holding just those cells."""
    adata = ad.read_h5ad(zeisel_h5ad)
    selected = adata.obs["cell_class"].isin(["microglia", "astrocytes_ependymal"]) & (
        adata.obs["cell_subclass"] != "(none)"
    )
    subset = tmp_path / "subset.h5ad"
    adata[selected.to_numpy()].copy().write_h5ad(subset)
    qc = {"min_genes_per_cell": 0, "min_cells_per_gene": 3}  # every selected cell is kept

    filtered = _prepare(tiny_params, _dataset(zeisel_soma, obs_filter=GLIA), tmp_path / "soma", **qc)
    cells = pd.read_csv(tmp_path / "soma" / "cells.tsv", sep="\t")
    expected = adata.obs[selected]
    assert 0 < len(cells) < adata.n_obs
    assert cells["cell"].tolist() == expected.index.tolist()
    for label in LABELS:
        assert cells[label].tolist() == expected[label].astype(str).tolist()
    from_subset = _prepare(tiny_params, _dataset(subset), tmp_path / "subset", **qc)
    for name in PROCESSED_ARRAYS:
        assert filtered[name] == from_subset[name], name
    assert json.loads(filtered["prepare.json"])["source"]["obs_filter"] == GLIA


def test_validate_describes_the_experiment_and_accepts_it(
    zeisel_soma: Path, tiny_params: dict, write_params: Callable, run_cli: Callable
) -> None:
    params = write_params(
        {**tiny_params, "dataset": _dataset(zeisel_soma, obs_filter="cell_class == 'microglia'")}
    )
    result = run_cli("validate", zeisel_soma, "--params", params)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{zeisel_soma}: 98 cells (obs_filter \"cell_class == 'microglia'\") x 4000 genes"
    assert "set dataset.gene_column to a var column: var_id (e.g. 'g0000'" in lines[1]
    assert lines[2].startswith("X layer 'raw' of measurement 'RNA': integer counts, max ")
    assert lines[3] == "X layers of measurement 'RNA': raw (values stored as float)"
    assert "  cell_subclass (" in result.stdout  # a candidate label column of the microglia
    assert lines[-1] == f"ok: gil prepare accepts this file with the settings in {params}"


def test_validate_without_params_names_the_missing_gene_column(
    zeisel_soma: Path, run_cli: Callable, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A SOMA experiment is read with dataset.soma's defaults; it has no var_names, so the verdict
    asks for dataset.gene_column, after the whole summary."""
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    result = run_cli("validate", zeisel_soma)
    assert result.code == 2
    assert result.stdout.startswith(f"{zeisel_soma}: 3005 cells (all cells) x 4000 genes")
    assert "candidate label columns:\n  cell_class (7 values)" in result.stdout
    _assert_one_line_error(
        result.stderr, ["would refuse this file with default dataset settings", "no var_names", "gene_column"]
    )


@pytest.fixture(scope="module")
def odd_experiments(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small experiments that prepare must refuse: non-integer counts, duplicate gene names."""
    root = tmp_path_factory.mktemp("odd")
    non_integer = synthetic_counts(n_cells=40, n_genes=24)
    non_integer.X.data = non_integer.X.data * 1000.5
    duplicates = synthetic_counts(n_cells=40, n_genes=24)
    duplicates.var["symbol"] = ["G1", "G1"] + [f"g{j}" for j in range(22)]
    return {
        name: _write_soma(adata, root / f"{name}.soma")
        for name, adata in (("non_integer", non_integer), ("duplicates", duplicates))
    }


def _empty_dir(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


# name: (change of the dataset section, given (zeisel_h5ad, odd_experiments, tmp_path); message parts)
BAD_INPUTS: dict[str, tuple[Callable[[dict, Path, dict, Path], None], list[str]]] = {
    "wrong_uri": (
        lambda d, h5ad, odd, tmp: d.update(path=str(tmp / "absent.soma")),
        ["absent.soma not found", "dataset.path"],
    ),
    "not_an_experiment": (
        lambda d, h5ad, odd, tmp: d.update(path=str(_empty_dir(tmp))),
        ["is not a SOMA experiment", "tiledbsoma.io.from_anndata"],
    ),
    "an_h5ad_as_soma": (
        lambda d, h5ad, odd, tmp: d.update(path=str(h5ad)),
        ["zeisel.h5ad is not a SOMA experiment", "dataset.soma: null"],
    ),
    "measurement": (
        lambda d, h5ad, odd, tmp: d["soma"].update(measurement="ATAC"),
        ["no measurement 'ATAC'", "measurements: ['RNA']", "set dataset.soma.measurement"],
    ),
    "layer": (
        lambda d, h5ad, odd, tmp: d["soma"].update(layer="counts"),
        ["no X layer 'counts'", "layers: ['raw']", "set dataset.soma.layer"],
    ),
    "filter_matching_no_cell": (
        lambda d, h5ad, odd, tmp: d["soma"].update(obs_filter="cell_class == 'hepatocytes'"),
        ["obs_filter \"cell_class == 'hepatocytes'\" matches no cell", "fix dataset.soma.obs_filter"],
    ),
    "filter_syntax": (
        lambda d, h5ad, odd, tmp: d["soma"].update(obs_filter="cell_class =="),
        ["not a valid obs filter", "Could not parse", "fix dataset.soma.obs_filter"],
    ),
    "filter_unknown_column": (
        lambda d, h5ad, odd, tmp: d["soma"].update(obs_filter="tissue == 'brain'"),
        ["not a valid obs filter", "Column tissue does not exist", "obs columns: ['obs_id', 'cell_class'"],
    ),
    "non_integer": (
        lambda d, h5ad, odd, tmp: d.update(path=str(odd["non_integer"]), label_columns=[]),
        ["X layer 'raw' of measurement 'RNA' has non-integer values", "set dataset.soma.layer"],
    ),
    "duplicate_genes": (
        lambda d, h5ad, odd, tmp: d.update(
            path=str(odd["duplicates"]), gene_column="symbol", label_columns=[]
        ),
        ["1 duplicate gene names in var['symbol']", "'G1'", "dataset.gene_column"],
    ),
    "no_gene_column": (
        lambda d, h5ad, odd, tmp: d.update(gene_column=None),
        ["no var_names", "set dataset.gene_column", "columns: ['var_id']", "feature_name"],
    ),
    "missing_gene_column": (
        lambda d, h5ad, odd, tmp: d.update(gene_column="feature_name"),
        ["gene_column 'feature_name' is not a var column", "columns: ['var_id']"],
    ),
    "missing_label_column": (
        lambda d, h5ad, odd, tmp: d.update(label_columns=["cell_class", "tissue"]),
        ["label column(s) ['tissue'] not in obs", "fix dataset.label_columns"],
    ),
    "counts_layer": (
        lambda d, h5ad, odd, tmp: d.update(counts_layer="raw"),
        ["dataset: counts_layer is an .h5ad setting", "dataset.soma.layer", "counts_layer: null"],
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_soma_input_is_one_line_naming_the_fix_and_writes_nothing(
    name: str,
    zeisel_h5ad: Path,
    zeisel_soma: Path,
    odd_experiments: dict[str, Path],
    tiny_params: dict,
    tmp_path: Path,
    write_params: Callable,
    run_cli: Callable,
) -> None:
    change, keywords = BAD_INPUTS[name]
    dataset = _dataset(zeisel_soma)
    change(dataset, zeisel_h5ad, odd_experiments, tmp_path)
    out = tmp_path / "out" / "processed"
    result = run_cli("prepare", "--params", write_params({**tiny_params, "dataset": dataset}), "--out", out)
    assert result.code == 2
    _assert_one_line_error(result.stderr, keywords)
    assert not out.parent.exists()


def test_the_census_route_names_the_package_it_needs(
    tiny_params: dict, tmp_path: Path, write_params: Callable, run_cli: Callable
) -> None:
    if importlib.util.find_spec("cellxgene_census") is not None:
        pytest.skip("cellxgene-census is installed: the Census would be opened over the network")
    dataset = {"path": "census", "gene_column": "feature_name", "soma": {"census_version": "2025-01-30"}}
    out = tmp_path / "processed"
    result = run_cli("prepare", "--params", write_params({**tiny_params, "dataset": dataset}), "--out", out)
    assert result.code == 2
    _assert_one_line_error(result.stderr, ["CELLxGENE Census", "pip install cellxgene-census==1.18.0"])
    assert not out.exists()


def _zeisel_on_soma(params: dict, repo: Path) -> None:
    """The tiny pipeline params, on the Zeisel experiment: its labels and tasks, one epoch, one strategy."""
    params["dataset"] = _dataset(Path("raw.soma"))  # init_project copies the experiment there
    params["prepare"] = {"min_genes_per_cell": 200, "min_cells_per_gene": 3}
    params["split"] = {
        "seed": 0,
        "eval_fraction": 0.2,
        "base_fraction": 0.5,
        "genes": {"method": "importance", "top_n": 30},
        "tasks": [
            {
                "name": "neurons",
                "label": "cell_class",
                "column": "cell_class",
                "values": ["interneurons", "pyramidal SS", "pyramidal CA1"],
            },
            {
                "name": "glia",
                "label": "cell_class",
                "column": "cell_class",
                "values": ["oligodendrocytes", "astrocytes_ependymal", "microglia"],
            },
        ],
    }
    params["train"] = {**params["train"], "epochs_per_stage": 1, "warmup_steps": 0}
    params["benchmark"] = ["finetune"]
    params["tracking"] = {"enabled": False}


@pytest.mark.slow
def test_the_default_pipeline_runs_on_a_soma_experiment(
    zeisel_h5ad: Path, zeisel_soma: Path, tmp_path: Path, command_server: Path
) -> None:
    """``dvc repro`` of dvc.yaml (the experiment a DVC-tracked directory, its settings in params): the
    metrics come out, prepare's arrays equal the .h5ad route's, and a new obs filter makes prepare stale."""
    repo = tmp_path / "project"
    repo.mkdir()
    env = build_tiny_project(repo, zeisel_soma, _zeisel_on_soma, command_server)
    assert json.loads((repo / "metrics" / "finetune.json").read_text())["strategy"] == "finetune"
    assert (repo / "metrics" / "reference.json").is_file() and (repo / "reports" / "benchmark.md").is_file()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    from_h5ad = _prepare(params, _dataset(zeisel_h5ad), tmp_path / "h5ad")
    for name in PROCESSED_ARRAYS:
        assert (repo / "data" / "processed" / name).read_bytes() == from_h5ad[name], name

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (dep,) = [dep for dep in lock["stages"]["prepare"]["deps"] if dep["path"] == "raw.soma"]
    assert dep["md5"].endswith(".dir") and dep["nfiles"] > 10  # DVC hashed the experiment's directory
    dvc = [sys.executable, "-m", "dvc"]
    assert "up to date" in _run_checked([*dvc, "status", "prepare"], repo, env)
    params["dataset"]["soma"]["obs_filter"] = GLIA
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run_checked([*dvc, "status", "prepare"], repo, env)
    assert "prepare:" in status and "dataset" in status
