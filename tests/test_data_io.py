"""The synthetic generator, ``describe_h5ad``, the chunked reader, and every bad input through the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from gil.data.io import describe_h5ad, open_h5ad
from gil.data.synthetic import synthetic_counts

# ------------------------------------------------------------------------------------------ generator


def test_synthetic_is_seeded() -> None:
    first, again, other = synthetic_counts(seed=3), synthetic_counts(seed=3), synthetic_counts(seed=4)
    assert (first.X != again.X).nnz == 0
    assert (first.X != other.X).nnz > 0
    assert first.obs.equals(again.obs)


def test_synthetic_has_integer_counts_labels_and_markers() -> None:
    adata = synthetic_counts(n_cells=400, n_genes=50, n_types=4, n_groups=2, n_markers=5, seed=1)
    counts = adata.X.toarray()
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    assert adata.shape == (400, 50)
    assert np.array_equal(counts, np.rint(counts)) and counts.min() >= 0
    assert list(adata.var_names[:2]) == ["gene0000", "gene0001"]
    assert sorted(adata.obs["cell_type"].unique()) == ["type0", "type1", "type2", "type3"]
    groups = adata.obs.groupby("cell_type", observed=True)["group"].first()
    assert groups.to_dict() == {"type0": "group0", "type1": "group0", "type2": "group1", "type3": "group1"}
    for t in range(4):
        markers = adata.var["marker_of"].to_numpy() == f"type{t}"
        assert np.flatnonzero(markers).tolist() == list(range(5 * t, 5 * t + 5))
        in_type = adata.obs["cell_type"].to_numpy() == f"type{t}"
        assert counts[in_type][:, markers].mean() > 4 * counts[~in_type][:, markers].mean()


# ------------------------------------------------------------------------------------------- describe


def _write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def test_describe_counts_file(synthetic_h5ad: Path) -> None:
    text = describe_h5ad(synthetic_h5ad)
    assert "300 cells x 60 genes" in text
    assert "X: integer counts" in text
    assert "layers: none" in text
    assert "cell_type (4 values)" in text and "group (2 values)" in text
    assert "marker_of" not in text  # a var column, not a label


def test_describe_log_x_with_counts_layer(tmp_path: Path) -> None:
    adata = synthetic_counts(n_cells=50, n_genes=30, seed=0)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()
    text = describe_h5ad(_write(adata, tmp_path / "log.h5ad"))
    assert "X: looks log-transformed" in text and "set dataset.counts_layer" in text
    assert "layer 'counts': integer counts" in text


def test_describe_reports_duplicate_gene_names(tmp_path: Path) -> None:
    adata = synthetic_counts(n_cells=50, n_genes=30, seed=0)
    adata.var_names = ["gene0000"] * 2 + list(adata.var_names[2:])
    text = describe_h5ad(_write(adata, tmp_path / "dup.h5ad"))
    assert "duplicate gene names" in text and "'gene0000'" in text and "gene_column" in text


# -------------------------------------------------------------------------------------- chunked reads


def _stored(kind: str, tmp_path: Path) -> tuple[Path, str | None, np.ndarray]:
    """A file whose matrix is stored as ``kind``; returns (path, layer, dense matrix)."""
    adata = synthetic_counts(n_cells=53, n_genes=20, n_types=2, n_markers=3, seed=2)
    dense = adata.X.toarray()
    layer = None
    if kind == "csc":
        adata.X = sp.csc_matrix(dense)
    elif kind == "dense":
        adata.X = dense
    elif kind == "layer":
        adata.layers["counts"] = adata.X.copy()
        adata.X = adata.X.log1p()
        layer = "counts"
    return _write(adata, tmp_path / f"{kind}.h5ad"), layer, dense


@pytest.mark.parametrize("kind", ["csr", "csc", "dense", "layer"])
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_chunks_reassemble_the_matrix(kind: str, chunk_size: int, tmp_path: Path) -> None:
    path, layer, dense = _stored(kind, tmp_path)
    with open_h5ad(path, layer) as source:
        parts = list(source.chunks(chunk_size))
    assert [start for start, _ in parts] == list(range(0, 53, chunk_size))
    for _, chunk in parts:
        assert isinstance(chunk, sp.csr_matrix) and chunk.shape[0] <= chunk_size
        assert chunk.has_sorted_indices and (chunk.data != 0).all()
    assert np.array_equal(sp.vstack([chunk for _, chunk in parts]).toarray(), dense)


# --------------------------------------------------------------------------------------- bad inputs


def _counts(n_cells: int = 40) -> ad.AnnData:
    return synthetic_counts(n_cells=n_cells, n_genes=60, seed=0)


def _with_x(transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        adata = _counts()
        adata.X = sp.csr_matrix(transform(adata.X.toarray()))
        adata.write_h5ad(path)

    return write


def _set_first(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(counts: np.ndarray) -> np.ndarray:
        counts[3, 4] = value
        return counts

    return change


def _duplicate_genes(path: Path) -> None:
    adata = _counts()
    adata.var_names = ["gene0000", "gene0001", "gene0001", "gene0000"] + list(adata.var_names[4:])
    adata.write_h5ad(path)


def _hdf5_not_h5ad(path: Path) -> None:
    with h5py.File(path, "w") as handle:
        handle["matrix"] = np.ones((3, 3))


def _empty(path: Path) -> None:
    var = pd.DataFrame(index=[f"gene{j:04d}" for j in range(60)])
    ad.AnnData(X=sp.csr_matrix((0, 60), dtype=np.float32), var=var).write_h5ad(path)


BAD_FILES: dict[str, tuple[Callable[[Path], None] | None, list[str]]] = {
    "missing": (None, ["not found", "dataset.path"]),
    "text": (lambda path: path.write_text("cell,gene\n"), ["not an .h5ad", "HDF5"]),
    "hdf5_not_h5ad": (_hdf5_not_h5ad, ["not an .h5ad", "no 'obs'"]),
    "empty": (_empty, ["empty", "0 cells"]),
    "nan": (_with_x(_set_first(np.nan)), ["NaN", "row 3"]),
    "negative": (_with_x(_set_first(-2.0)), ["negative", "row 3"]),
    "log": (_with_x(np.log1p), ["looks log-transformed", "set dataset.counts_layer"]),
    "non_integer": (_with_x(lambda x: x * 1000.5), ["non-integer", "set dataset.counts_layer"]),
    "duplicates": (_duplicate_genes, ["2 duplicate gene names", "'gene0001', 'gene0000'", "gene_column"]),
}
UNUSABLE = ["missing", "text", "hdf5_not_h5ad", "empty", "nan", "negative"]
BAD_PARAMS: dict[str, tuple[dict, list[str]]] = {
    "counts_layer": ({"counts_layer": "raw"}, ["counts_layer 'raw' not found", "layers: none"]),
    "gene_column": ({"gene_column": "symbol"}, ["gene_column 'symbol'", "not a var column"]),
    "label_column": (
        {"label_columns": ["cell_type", "tissue"]},
        ["label column", "'tissue'", "label_columns"],
    ),
}


def _bad_file(name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.h5ad"
    writer = BAD_FILES[name][0]
    if writer is not None:
        writer(path)
    return path


def _assert_one_line_error(stderr: str, keywords: list[str]) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for keyword in keywords:
        assert keyword in lines[0], (keyword, lines[0])


@pytest.mark.parametrize("name", UNUSABLE)
def test_validate_rejects_unusable_file(name: str, tmp_path: Path, run_cli: Callable) -> None:
    result = run_cli("validate", _bad_file(name, tmp_path))
    assert result.code == 2 and result.stdout == ""
    _assert_one_line_error(result.stderr, BAD_FILES[name][1])


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_prepare_rejects_bad_file(
    name: str, tmp_path: Path, tiny_params: dict, write_params: Callable, run_cli: Callable
) -> None:
    tiny_params["dataset"]["path"] = str(_bad_file(name, tmp_path))
    out = tmp_path / "out" / "processed"
    result = run_cli("prepare", "--params", write_params(tiny_params), "--out", out)
    assert result.code == 2
    _assert_one_line_error(result.stderr, BAD_FILES[name][1])
    assert not out.parent.exists()


@pytest.mark.parametrize("name", list(BAD_PARAMS))
def test_prepare_rejects_bad_dataset_params(
    name: str, tmp_path: Path, tiny_params: dict, write_params: Callable, run_cli: Callable
) -> None:
    change, keywords = BAD_PARAMS[name]
    tiny_params["dataset"].update(change)
    out = tmp_path / "out" / "processed"
    result = run_cli("prepare", "--params", write_params(tiny_params), "--out", out)
    assert result.code == 2
    _assert_one_line_error(result.stderr, keywords)
    assert not out.parent.exists()


def test_failed_prepare_leaves_existing_output_unchanged(
    tmp_path: Path, tiny_params: dict, tiny_processed: Path, write_params: Callable, run_cli: Callable
) -> None:
    out = tmp_path / "processed"
    assert run_cli("prepare", "--params", write_params(tiny_params), "--out", out).code == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    tiny_params["dataset"]["path"] = str(_bad_file("log", tmp_path))
    result = run_cli("prepare", "--params", write_params(tiny_params), "--out", out)
    assert result.code == 2
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["log.h5ad", "params.yaml", "processed"]


@pytest.mark.parametrize(
    ("command", "bad", "keywords"),
    [("validate", "missing", ["not found"]), ("prepare", "log", ["looks log-transformed", "counts_layer"])],
)
def test_real_process_exits_2_with_one_line(
    command: str, bad: str, keywords: list[str], tmp_path: Path, tiny_params: dict, write_params: Callable
) -> None:
    """The console entry point in a fresh interpreter: exit status 2, one line, no traceback."""
    path = _bad_file(bad, tmp_path)
    tiny_params["dataset"]["path"] = str(path)
    args = (
        [path] if command == "validate" else ["--params", write_params(tiny_params), "--out", tmp_path / "o"]
    )
    done = subprocess.run(
        [sys.executable, "-m", "gil.cli", command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    _assert_one_line_error(done.stderr, keywords)
    assert not (tmp_path / "o").exists()
