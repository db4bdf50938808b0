"""Reference points: the per-gene-mean predictor on a hand-built matrix, skill, the reference document."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from factories import make_config, make_processed, make_split

from gil.data.batches import BatchBuilder
from gil.data.layout import EVAL_STAGE, ProcessedData, Split
from gil.data.vocab import Vocabulary
from gil.errors import GilError
from gil.metrics import final_skill, new_set_skill, skill
from gil.metrics.gene_mean import GeneMeanPredictor, gene_means
from gil.metrics.regression import regression_row
from gil.reference import check_reference, compute_reference

# Genes g0, g1 (B), g2 (T1), g3 (T2). Rows: a stage-0, a stage-1, a stage-2 and a held-out cell.
_VALUES = np.array(
    [
        [1.0, 0.0, 5.0, 0.0],  # stage 0: g2 is not shown to a stage-0 cell
        [3.0, 0.0, 2.0, 0.0],  # stage 1
        [0.0, 4.0, 9.0, 6.0],  # stage 2: g2 is not shown to a stage-2 cell
        [5.0, 4.0, 3.0, 10.0],  # held out: never part of the means
    ],
    dtype=np.float32,
)


def _hand_built() -> tuple[ProcessedData, Split]:
    rows, cols = np.nonzero(_VALUES)
    data = ProcessedData(
        indptr=np.concatenate([[0], np.cumsum((_VALUES != 0).sum(axis=1))]).astype(np.int64),
        indices=cols.astype(np.int32),
        values=_VALUES[rows, cols],
        genes=pd.DataFrame({"gene": ["g0", "g1", "g2", "g3"], "n_cells": [3, 2, 4, 2], "total": [0.0] * 4}),
        cells=pd.DataFrame({"cell": ["a", "b", "c", "d"], "n_genes": [2, 2, 3, 4]}),
    )
    split = Split(
        method="test",
        gene_sets=[("B", ["g0", "g1"]), ("T1", ["g2"]), ("T2", ["g3"])],
        cell_stages=np.array([0, 1, 2, EVAL_STAGE], dtype=np.int16),
        tasks=[],
    )
    return data, split


def test_gene_means_use_only_what_training_showed() -> None:
    data, split = _hand_built()
    builder = BatchBuilder(data, Vocabulary.from_split(split), split.cell_stages, max_seq=8)
    means = gene_means(builder, np.array([0, 1, 2]))
    # tokens: <pad>, <cls>, g0, g1, g2, g3
    assert means.tolist() == pytest.approx([0.0, 0.0, 2.0, 4.0, 2.0, 6.0])


def test_gene_means_read_in_chunks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import gil.metrics.gene_mean as gene_mean

    data, split = _hand_built()
    builder = BatchBuilder(data, Vocabulary.from_split(split), split.cell_stages, max_seq=8)
    monkeypatch.setattr(gene_mean, "_CHUNK_ROWS", 1)  # one row per chunk: sums must accumulate
    assert gene_means(builder, np.array([2, 0, 1])).tolist() == pytest.approx([0.0, 0.0, 2.0, 4.0, 2.0, 6.0])
    # only the stage-0 cell: g1..g3 never shown, their means 0 over the whole vocabulary
    assert gene_means(builder, np.array([0])).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_the_gene_mean_predictor_predicts_each_gene_mean_everywhere() -> None:
    predictor = GeneMeanPredictor(np.array([0.0, 0.0, 2.0, 4.0]))
    genes = torch.tensor([[1, 2, 3, 0], [1, 3, 0, 0]])
    output = predictor(genes, torch.zeros(2, 4), genes == 0)
    expected = torch.tensor([[0.0, 2.0, 4.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    assert torch.equal(output.mlm, expected) and torch.equal(output.mvc, expected)
    assert output.mlm.dtype == torch.float32 and torch.equal(output.cell, torch.zeros(2, 1))


def test_gene_mean_predictor_scores_the_positions_of_each_gene_set() -> None:
    data, split = _hand_built()
    builder = BatchBuilder(data, Vocabulary.from_split(split), split.cell_stages, max_seq=8)
    predictor = GeneMeanPredictor(gene_means(builder, np.array([0, 1, 2])))
    row = regression_row(predictor, builder, np.array([3]), 2, [0], 4, 0.999999, 8)
    # held-out cell: g0 5 vs 2, g1 4 vs 4 | g2 3 vs 2 | g3 10 vs 6
    assert row.mse == pytest.approx([(9.0 + 0.0) / 2, 1.0, 16.0])
    assert row.n_positions == [2, 1, 1]
    # Pearson of predictions (2, 4) with targets (5, 4): −1; one position per set: undefined
    assert row.pearson[0] == pytest.approx(-1.0) and np.isnan(row.pearson[1:]).all()


def test_pearson_from_running_sums_matches_numpy() -> None:
    from gil.metrics.regression import _pearson

    p, t = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 5.0, 9.0])
    sums = (len(p), p.sum(), t.sum(), (p * p).sum(), (t * t).sum(), (p * t).sum())
    assert _pearson(*sums) == pytest.approx(np.corrcoef(p, t)[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined is decided, not divided by zero
        assert np.isnan(_pearson(3, 3.0, 6.0, 3.0, 14.0, 6.0))  # constant predictions: undefined


def test_skill_against_a_hand_computed_matrix() -> None:
    results = [[0.2, None, None], [0.3, 0.4, None], [0.5, 0.6, 0.3]]
    baseline = [0.5, 0.8, 0.6]
    expected = np.array([[0.6, np.nan, np.nan], [0.4, 0.5, np.nan], [0.0, 0.25, 0.5]])
    np.testing.assert_allclose(skill(results, baseline), expected)
    assert new_set_skill(results, baseline) == pytest.approx((0.5 + 0.5) / 2)
    assert final_skill(results, baseline) == pytest.approx((0.0 + 0.25 + 0.5) / 3)
    with pytest.raises(ValueError, match="baseline"):
        skill(results, [0.5, 0.8])
    with pytest.raises(ValueError, match="baseline"):
        skill(results, [0.5, 0.0, 0.6])


def test_reference_document_and_its_settings_check() -> None:
    data = make_processed(n_cells=200, n_genes=40)
    split = make_split(data)
    config = make_config()
    document = compute_reference(config, data, split)
    assert len(document["gene_mean_mse"]) == 3 and all(v > 0 for v in document["gene_mean_mse"])
    task = document["probe"]["kind"]
    assert task["majority_rate"] == pytest.approx(split.tasks[0].majority_rate)
    assert len(task["raw_accuracy"]) == 3
    # the synthetic label shifts every value: raw expression beats the majority class
    assert all(accuracy > task["majority_rate"] for accuracy in task["raw_accuracy"])
    check_reference(document, split, config)
    other = make_config(evaluate={"seed": 99})
    with pytest.raises(GilError, match="rerun `gil reference`"):
        check_reference(document, split, other)
