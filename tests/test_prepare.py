"""``gil prepare``: output equals a plain dense computation; QC, transform, chunking, determinism."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from gil.config import config_from_dict
from gil.data.layout import ProcessedData
from gil.data.prepare import run_prepare
from gil.data.synthetic import synthetic_counts
from gil.errors import GilError

MIN_GENES, MIN_CELLS = 12, 5


@pytest.fixture(scope="module")
def qc_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic counts where QC has work: 4 near-empty cells and 3 rarely expressed genes."""
    adata = synthetic_counts(n_cells=120, n_genes=40, seed=5)
    counts = adata.X.toarray()
    counts[[3, 50, 51, 119], 8:] = 0  # at most 8 expressed genes: below MIN_GENES
    counts[:, 30:33] = 0
    counts[[0, 1, 2, 3, 4, 6], 30] = 7  # 6 cells, one of them (3) removed by cell QC: 5 left, kept
    counts[[0, 1, 2, 3, 4], 31] = 2  # 5 cells, one removed: 4 left, below MIN_CELLS
    counts[[7], 32] = 1
    adata.X = sp.csr_matrix(counts)
    path = tmp_path_factory.mktemp("qc") / "qc.h5ad"
    adata.write_h5ad(path)
    return path


def _params(tiny_params: dict, path: Path, **prepare: object) -> dict:
    tiny_params["dataset"]["path"] = str(path)
    tiny_params["prepare"].update(
        {"min_genes_per_cell": MIN_GENES, "min_cells_per_gene": MIN_CELLS, **prepare}
    )
    return tiny_params


def _dense(data: ProcessedData) -> np.ndarray:
    return sp.csr_matrix(
        (data.values, data.indices, data.indptr), shape=(data.n_cells, data.n_genes)
    ).toarray()


def _expected(
    path: Path, normalize_total: float | None
) -> tuple[ad.AnnData, np.ndarray, np.ndarray, np.ndarray]:
    """The straightforward in-memory computation: (adata, cell mask, gene mask, values)."""
    adata = ad.read_h5ad(path)
    counts = adata.X.toarray().astype(np.float64)
    cells = (counts > 0).sum(axis=1) >= MIN_GENES
    genes = (counts[cells] > 0).sum(axis=0) >= MIN_CELLS
    kept = counts[cells][:, genes]
    if normalize_total is not None:
        kept = kept / kept.sum(axis=1, keepdims=True) * normalize_total
    return adata, cells, genes, np.log1p(kept).astype(np.float32)


@pytest.mark.parametrize("normalize_total", [None, 1e4])
def test_prepare_equals_dense_computation(
    normalize_total: float | None, qc_h5ad: Path, tiny_params: dict, tmp_path: Path
) -> None:
    config = config_from_dict(_params(tiny_params, qc_h5ad, normalize_total=normalize_total))
    run_prepare(config, tmp_path / "processed")
    data = ProcessedData.load(tmp_path / "processed", cell_names=True)
    adata, cells, genes, expected = _expected(qc_h5ad, normalize_total)

    assert (
        data.indptr.dtype == np.int64 and data.indices.dtype == np.int32 and data.values.dtype == np.float32
    )
    assert all(
        np.all(np.diff(data.indices[a:b]) > 0) for a, b in zip(data.indptr[:-1], data.indptr[1:], strict=True)
    )
    if normalize_total is None:
        assert np.array_equal(_dense(data), expected)
    else:
        np.testing.assert_allclose(_dense(data), expected, rtol=1e-6)
        np.testing.assert_allclose(
            np.expm1(_dense(data).astype(np.float64)).sum(axis=1), normalize_total, rtol=1e-5
        )

    kept_counts = adata.X.toarray()[cells][:, genes]
    assert data.cells["cell"].tolist() == adata.obs_names[cells].tolist()
    assert data.cells["n_genes"].astype(int).tolist() == (kept_counts > 0).sum(axis=1).tolist()
    assert data.cells["cell_type"].tolist() == adata.obs["cell_type"][cells].astype(str).tolist()
    assert data.cells["group"].tolist() == adata.obs["group"][cells].astype(str).tolist()
    assert list(data.cells.columns) == ["cell", "n_genes", "cell_type", "group"]
    assert data.gene_names == adata.var_names[genes].tolist()
    assert data.genes["n_cells"].tolist() == (kept_counts > 0).sum(axis=0).tolist()
    assert data.genes["total"].tolist() == kept_counts.sum(axis=0).astype(np.int64).tolist()


def test_qc_removes_the_planted_cells_and_genes(qc_h5ad: Path, tiny_params: dict, tmp_path: Path) -> None:
    run_prepare(config_from_dict(_params(tiny_params, qc_h5ad)), tmp_path / "processed")
    data = ProcessedData.load(tmp_path / "processed", cell_names=True)
    assert not {"cell0003", "cell0050", "cell0051", "cell0119"} & set(data.cells["cell"])
    assert data.n_cells == 116
    assert "gene0030" in data.gene_names and not {"gene0031", "gene0032"} & set(data.gene_names)
    assert data.n_genes == 38
    assert data.summary["cells_before"] == 120 and data.summary["cells_after"] == 116
    assert data.summary["genes_before"] == 40 and data.summary["genes_after"] == 38
    assert data.summary["nnz"] == len(data.values)
    assert data.summary["value_type"] == "integer counts"
    assert data.summary["normalized"] is False and data.summary["transform"] == "log1p"
    assert data.summary["input"] == str(qc_h5ad)


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_chunk_size_and_reruns_give_identical_bytes(
    qc_h5ad: Path, tiny_params: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for i, chunk_size in enumerate([7, 1000, 7]):
        params = _params(tiny_params, qc_h5ad, chunk_size=chunk_size, normalize_total=100.0)
        run_prepare(config_from_dict(params), tmp_path / f"out{i}")
        outputs.append(_files(tmp_path / f"out{i}"))
    assert outputs[0] == outputs[1] == outputs[2]
    assert set(outputs[0]) == {
        "indptr.npy",
        "indices.npy",
        "values.npy",
        "genes.tsv",
        "cells.tsv",
        "prepare.json",
    }
    assert json.loads(outputs[0]["prepare.json"])["normalize_total"] == 100.0
    assert capsys.readouterr().out.splitlines()[0].startswith("prepared 116/120 cells x 38/40 genes")


def test_counts_layer_and_gene_column(tiny_params: dict, tmp_path: Path) -> None:
    """Counts in a layer (X log-transformed) and names in a var column give the same matrix."""
    adata = synthetic_counts(n_cells=60, n_genes=30, seed=7)
    plain = tmp_path / "plain.h5ad"
    adata.write_h5ad(plain)
    adata.layers["raw"] = adata.X.copy()
    adata.X = adata.X.log1p()
    adata.var["symbol"] = [f"Sym{j}" for j in range(30)]
    adata.var_names = [f"id{j}" for j in range(30)]
    layered = tmp_path / "layered.h5ad"
    adata.write_h5ad(layered)

    run_prepare(config_from_dict(_params(tiny_params, plain, min_genes_per_cell=1)), tmp_path / "a")
    params = _params(tiny_params, layered, min_genes_per_cell=1)
    params["dataset"].update({"counts_layer": "raw", "gene_column": "symbol"})
    run_prepare(config_from_dict(params), tmp_path / "b")
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    for name in ("indptr.npy", "indices.npy", "values.npy", "cells.tsv"):
        assert first[name] == second[name]
    assert ProcessedData.load(tmp_path / "b").gene_names[:2] == ["Sym0", "Sym1"]
    assert json.loads(second["prepare.json"])["matrix"] == "layer 'raw'"


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        ({"min_genes_per_cell": 1000}, "lower prepare.min_genes_per_cell"),
        ({"min_genes_per_cell": 0, "min_cells_per_gene": 10_000}, "lower prepare.min_cells_per_gene"),
    ],
)
def test_qc_that_removes_everything_is_a_user_error(
    prepare: dict, message: str, tiny_params: dict, tmp_path: Path
) -> None:
    tiny_params["prepare"].update(prepare)
    with pytest.raises(GilError, match=message):
        run_prepare(config_from_dict(tiny_params), tmp_path / "processed")
    assert list(tmp_path.iterdir()) == []


def test_label_column_clashing_with_cells_table_is_rejected(tiny_params: dict, tmp_path: Path) -> None:
    tiny_params["dataset"]["label_columns"] = ["n_genes"]
    with pytest.raises(GilError, match="clash"):
        run_prepare(config_from_dict(tiny_params), tmp_path / "processed")


def test_prepare_cli_prints_summary(
    tiny_params: dict, write_params: Callable, run_cli: Callable, tmp_path: Path
) -> None:
    result = run_cli("prepare", "--params", write_params(tiny_params), "--out", tmp_path / "processed")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("prepared 300/300 cells x 60/60 genes")
    assert ProcessedData.load(tmp_path / "processed").n_cells == 300


def test_prepare_without_label_columns(synthetic_h5ad: Path, tiny_params: dict, tmp_path: Path) -> None:
    tiny_params["dataset"]["label_columns"] = []
    run_prepare(config_from_dict(tiny_params), tmp_path / "processed")
    cells = ProcessedData.load(tmp_path / "processed", cell_names=True).cells
    assert list(cells.columns) == ["cell", "n_genes"] and len(cells) > 0


def test_loaded_cells_hold_labels_as_categories_and_names_only_on_request(
    qc_h5ad: Path, tiny_params: dict, tmp_path: Path
) -> None:
    """Per-cell strings cost ~60 MiB a column at 10^6 cells in every process (issue 27): labels load
    as categories with the file's values, the names only when asked for."""
    run_prepare(config_from_dict(_params(tiny_params, qc_h5ad)), tmp_path / "processed")
    path = tmp_path / "processed/cells.tsv"
    on_disk = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    on_disk.loc[:2, "group"] = ["NA", "", "null"]  # labels pandas would read as missing by default
    on_disk.to_csv(path, sep="\t", index=False, lineterminator="\n")
    lean = ProcessedData.load(tmp_path / "processed").cells
    assert list(lean.columns) == ["n_genes", "cell_type", "group"]
    assert all(isinstance(lean[c].dtype, pd.CategoricalDtype) for c in ("cell_type", "group"))
    assert lean["n_genes"].dtype == np.int64
    assert lean["n_genes"].tolist() == on_disk["n_genes"].astype(int).tolist()
    for column in ("cell_type", "group"):
        assert lean[column].to_numpy(dtype=str).tolist() == on_disk[column].tolist()
    named = ProcessedData.load(tmp_path / "processed", cell_names=True).cells
    assert named["cell"].tolist() == on_disk["cell"].tolist()
