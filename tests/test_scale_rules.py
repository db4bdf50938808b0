"""What keeps whole-dataset passes flat at 10^6 cells: capped evaluation cells, streamed gene sums,
and the synthetic data of the scale benchmark."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from factories import make_config, make_processed, make_split

from gil.data.io import open_h5ad, scan_values
from gil.data.layout import ProcessedData
from gil.data.split import weighted_gene_sums
from gil.data.synthetic_scale import ScaleSpec, count_chunks, obs_table, write_scale_data
from gil.reference import compute_reference
from gil.scoring import EvaluationInputs, capped_task, sample_positions


def _config(max_cells: int | None, probe_cells: int | None):
    evaluate = make_config().evaluate.model_dump()
    evaluate |= {"max_cells": max_cells, "probe": {**evaluate["probe"], "max_cells": probe_cells}}
    return make_config(evaluate=evaluate)


@pytest.fixture(scope="module")
def data_and_split():
    data = make_processed(n_cells=200, n_genes=40)
    return data, make_split(data)


def test_sample_positions_are_a_sorted_seeded_subset_or_everything() -> None:
    sample = sample_positions(100, 30, seed=5)
    assert len(sample) == 30 and len(set(sample.tolist())) == 30
    assert (np.diff(sample) > 0).all() and sample.min() >= 0 and sample.max() < 100
    assert np.array_equal(sample, sample_positions(100, 30, seed=5))
    assert not np.array_equal(sample, sample_positions(100, 30, seed=6))
    assert np.array_equal(sample_positions(30, 30, seed=5), np.arange(30))
    assert np.array_equal(sample_positions(30, None, seed=5), np.arange(30))


def test_capped_task_keeps_each_cell_with_its_own_target(data_and_split) -> None:
    _, split = data_and_split
    task = split.tasks[0]
    capped = capped_task(task, 12, seed=3)
    assert len(capped.cells) == 12 and set(capped.cells) <= set(task.cells)
    target_of = dict(zip(task.cells.tolist(), task.targets.tolist(), strict=True))
    assert capped.targets.tolist() == [target_of[cell] for cell in capped.cells.tolist()]
    assert capped_task(task, len(task.cells), seed=3) is task


def test_evaluation_scores_a_seeded_sample_of_the_held_out_cells(data_and_split) -> None:
    data, split = data_and_split
    held_out, task = split.held_out_rows("test"), split.tasks[0]
    assert len(held_out) == 40 and len(task.cells) == 40
    uncapped = EvaluationInputs(_config(None, None), data, split)
    assert np.array_equal(uncapped.eval_rows, held_out) and uncapped.tasks[0] is task
    capped = EvaluationInputs(_config(15, 11), data, split)
    assert len(capped.eval_rows) == 15 and set(capped.eval_rows) <= set(held_out)
    assert len(capped.tasks[0].cells) == 11
    again = EvaluationInputs(_config(15, 11), data, split)
    assert np.array_equal(capped.eval_rows, again.eval_rows)
    assert np.array_equal(capped.tasks[0].cells, again.tasks[0].cells)
    # the regression row and the reference are computed on the sample
    reference = compute_reference(_config(15, 11), data, split)
    assert reference["probe"]["kind"]["cells"] == 11
    assert reference["settings"]["evaluate"]["max_cells"] == 15
    assert reference["positions"] != compute_reference(_config(None, None), data, split)["positions"]


def test_the_default_caps_leave_a_benchmark_sized_split_alone(data_and_split) -> None:
    data, split = data_and_split
    inputs = EvaluationInputs(make_config(), data, split)
    assert np.array_equal(inputs.eval_rows, split.held_out_rows("test")) and inputs.tasks == split.tasks


@pytest.mark.parametrize("chunk_rows", [7, 64, 1000])
def test_weighted_gene_sums_from_files_and_arrays_equal_the_dense_product(
    tmp_path: Path, chunk_rows: int
) -> None:
    data = make_processed(n_cells=150, n_genes=30)
    data.write(tmp_path / "processed")
    loaded = ProcessedData.load(tmp_path / "processed")
    dense = sp.csr_matrix((data.values, data.indices, data.indptr), shape=(150, 30)).toarray()
    weights = np.random.default_rng(0).random((2, 150))
    expected = weights @ dense.astype(np.float64)
    for source in (data, loaded):
        assert np.allclose(weighted_gene_sums(source, weights, chunk_rows), expected, rtol=1e-12, atol=1e-9)


def test_scale_data_has_realistic_sparsity_markers_and_integer_counts(tmp_path: Path) -> None:
    spec = ScaleSpec(n_cells=1_500, n_genes=4_000, reads_per_cell=500, n_markers=50, chunk_cells=400)
    path = tmp_path / "scale.h5ad"
    nnz = write_scale_data(spec, path)
    with open_h5ad(path) as source:
        assert (source.n_cells, source.n_genes) == (1_500, 4_000)
        assert scan_values(source, 500).value_type == "integer counts"
        counts = sp.vstack([chunk for _, chunk in source.chunks(500)]).tocsr()
        obs = source.obs
    assert counts.nnz == nnz
    genes_per_cell = np.diff(counts.indptr)
    assert 250 < genes_per_cell.mean() < 500  # sparse: a few hundred of 4,000 genes, never all
    # each cell's counts add up to its library of reads
    assert counts.sum(axis=1).min() >= 1
    # type t's marker genes are more expressed in type t's cells than in the others
    types = obs["cell_type"].astype(str).to_numpy()
    markers = counts[:, :50].toarray()  # genes 0..49 mark type0
    assert markers[types == "type0"].mean() > 5 * markers[types != "type0"].mean()
    assert set(obs["group"].astype(str)) == {"A", "B"}
    assert (obs["group"].astype(str)[types == "type5"] == "B").all()
    # deterministic: the same seed gives the same matrix, chunk by chunk
    first = next(count_chunks(spec))[1]
    assert (first != counts[:400]).nnz == 0
    expected_obs = obs_table(spec)
    assert obs.index.tolist() == expected_obs.index.tolist()
    assert obs["cell_type"].astype(str).tolist() == expected_obs["cell_type"].astype(str).tolist()
    with h5py.File(path) as handle:
        assert handle["X"].attrs["encoding-type"] == "csr_matrix"


def test_scale_data_as_soma_prepares_to_the_same_arrays_as_the_h5ad(tmp_path: Path) -> None:
    from gil.config import config_from_dict
    from gil.data.prepare import run_prepare

    spec = ScaleSpec(n_cells=600, n_genes=1_000, reads_per_cell=300, n_markers=20, chunk_cells=250)
    write_scale_data(spec, tmp_path / "raw.h5ad", tmp_path / "raw.soma")
    datasets = {
        "h5ad": {"path": str(tmp_path / "raw.h5ad")},
        "soma": {"path": str(tmp_path / "raw.soma"), "gene_column": "feature_name", "soma": {}},
    }
    written = {}
    for kind, dataset in datasets.items():
        config = config_from_dict(
            {
                "dataset": {"name": "scale", "label_columns": ["cell_type", "group"], **dataset},
                "prepare": {"min_genes_per_cell": 10, "chunk_size": 170},
                "tracking": {"enabled": False},
            }
        )
        run_prepare(config, tmp_path / kind)
        written[kind] = {
            name: (tmp_path / kind / name).read_bytes()
            for name in ("indptr.npy", "indices.npy", "values.npy", "genes.tsv", "cells.tsv")
        }
    assert written["h5ad"] == written["soma"]
    assert b"type5" in written["soma"]["cells.tsv"]


def test_the_content_hash_changes_with_a_value_a_column_or_a_row_length() -> None:
    from gil.data.io import ContentHash

    def digest(matrix: sp.csr_matrix) -> str:
        content = ContentHash()
        content.update(matrix)
        return content.hexdigest(["g0", "g1", "g2"], ["c0", "c1"])

    base = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))
    changed_value = sp.csr_matrix(np.array([[1.0, 0.0, 5.0], [0.0, 3.0, 0.0]]))
    changed_column = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 0.0]]))
    digests = {digest(base), digest(changed_value), digest(changed_column)}
    assert len(digests) == 3 and digest(base) == digest(base.copy())
