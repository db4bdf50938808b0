"""Probes: the input selection, stratified folds, C chosen on validation, paired Δ and its error."""

from __future__ import annotations

import numpy as np
import pytest
from factories import make_processed, make_split

from gil.data.batches import BatchBuilder
from gil.data.layout import EVAL_STAGE
from gil.data.vocab import CLS, Vocabulary
from gil.metrics.probes import _best_c_predictions, fold_of_cells, input_expression, paired_delta


@pytest.fixture(scope="module")
def builder() -> BatchBuilder:
    data = make_processed(n_cells=80, n_genes=40, density=0.6)
    split = make_split(data, n_stages=2, genes_per_stage=6)
    return BatchBuilder(data, Vocabulary.from_split(split), split.cell_stages, max_seq=32)


def test_probe_batch_takes_the_most_expressed_known_genes(builder: BatchBuilder) -> None:
    rows = np.flatnonzero(builder.cell_stages == EVAL_STAGE)[:10]
    max_seq = 5
    batch = builder.probe_batch(rows, known_stage=1, max_seq=max_seq)
    assert not bool(batch.masked.any())
    assert bool((batch.genes[:, 0] == CLS).all())
    lengths, columns, values = builder.rows.read(rows)
    starts = np.cumsum(lengths) - lengths
    for i in range(len(rows)):
        cell_columns = columns[starts[i] : starts[i] + lengths[i]]
        cell_values = values[starts[i] : starts[i] + lengths[i]]
        tokens = builder.token_of_column[cell_columns]
        known = builder.set_of_token[tokens] <= 1
        expected_top = np.sort(cell_values[known])[::-1][:max_seq]
        real = ~batch.padding[i]
        real[0] = False
        got = batch.values[i][real].numpy()
        assert np.allclose(np.sort(got)[::-1], expected_top)
        assert bool((batch.gene_sets[i][real] <= 1).all())
    again = builder.probe_batch(rows, known_stage=1, max_seq=max_seq)
    assert bool((again.genes == batch.genes).all()) and bool((again.values == batch.values).all())


def test_the_own_genes_input_holds_every_expressed_gene_of_that_set_and_nothing_else(
    builder: BatchBuilder,
) -> None:
    rows = np.flatnonzero(builder.cell_stages == EVAL_STAGE)[:10]
    batch = builder.probe_batch(rows, known_stage=2, max_seq=32, only_set=1)
    lengths, columns, values = builder.rows.read(rows)
    sets = builder.set_of_token[builder.token_of_column[columns]]
    starts = np.cumsum(lengths) - lengths
    for i in range(len(rows)):
        own = slice(starts[i], starts[i] + lengths[i])
        expected = np.sort(values[own][sets[own] == 1])
        real = ~batch.padding[i]
        real[0] = False
        assert bool((batch.gene_sets[i][real] == 1).all())
        np.testing.assert_allclose(np.sort(batch.values[i][real].numpy()), expected)
    with pytest.raises(ValueError, match="not known"):
        builder.probe_batch(rows, known_stage=1, max_seq=32, only_set=2)


def test_input_expression_is_the_probe_input_as_a_matrix(builder: BatchBuilder) -> None:
    rows = np.flatnonzero(builder.cell_stages == EVAL_STAGE)[:6]
    n_base = int((builder.set_of_token == 0).sum())
    first_gene = int(np.argmax(builder.set_of_token >= 0))
    for probe_input in ("top_expressed", "sampled"):
        # batches of 2: three batches, so each must land at its own offset
        matrix = input_expression(builder, rows, 0, 3, 2, 5, probe_input)
        expected = np.zeros((6, n_base), dtype=np.float32)
        for start in (0, 2, 4):
            part = rows[start : start + 2]
            if probe_input == "top_expressed":
                batch = builder.probe_batch(part, 0, 5)
            else:  # the evaluation's fixed gene sample for seed + offset, nothing masked
                batch = builder.evaluation_batch(part, 0, 3 + start, 0.0, 5)
                assert not bool(batch.masked.any())
            for i in range(len(part)):
                for gene, value, pad in zip(batch.genes[i], batch.values[i], batch.padding[i], strict=True):
                    if not pad and int(gene) >= first_gene:
                        expected[start + i, int(gene) - first_gene] = float(value)
        np.testing.assert_array_equal(matrix, expected)
        assert matrix.dtype == np.float32 and (matrix != 0).sum() > 6


def test_folds_are_stratified_and_deterministic() -> None:
    targets = np.array([0] * 10 + [1] * 5 + [2] * 2)
    fold = fold_of_cells(targets, 5, seed=3)
    for label in (0, 1):
        assert (
            np.bincount(fold[targets == label], minlength=5).tolist()
            == [len(targets[targets == label]) // 5] * 5
        )
    assert len(set(fold[targets == 2].tolist())) == 2  # a rare class is spread, not piled into fold 0
    assert np.array_equal(fold, fold_of_cells(targets, 5, seed=3))


def test_c_is_chosen_on_the_validation_cells_not_the_test_cells() -> None:
    rng = np.random.default_rng(0)
    x_train = np.vstack([rng.normal(-2, 0.3, (30, 1)), rng.normal(2, 0.3, (10, 1))])
    y_train = np.array([0] * 30 + [1] * 10)
    x_test = np.array([[2.0], [2.5]])
    # validation cells that only the strongly regularised probe (always class 0) gets right
    x_val, y_val = np.array([[2.0], [2.2]]), np.array([0, 0])
    predictions = _best_c_predictions(x_train, y_train, x_val, y_val, x_test, [1e-6, 100.0], 0)
    assert predictions.tolist() == [0, 0]
    # validation cells that favour the weakly regularised probe
    x_val, y_val = np.array([[2.0], [-2.0]]), np.array([1, 0])
    predictions = _best_c_predictions(x_train, y_train, x_val, y_val, x_test, [1e-6, 100.0], 0)
    assert predictions.tolist() == [1, 1]


def test_paired_delta_and_its_standard_error() -> None:
    before = np.array([1, 1, 1, 0, 1, 0], dtype=bool)
    after = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    delta, se = paired_delta(after, before)
    differences = np.array([0, -1, 0, 0, -1, 1], dtype=float)
    assert delta == pytest.approx(-1 / 6)
    assert se == pytest.approx(differences.std(ddof=1) / np.sqrt(6))
    assert paired_delta(before, after)[0] == pytest.approx(1 / 6)
    two = paired_delta(np.array([1, 0], dtype=bool), np.array([0, 0], dtype=bool))
    assert two == pytest.approx((0.5, 0.5))  # differences (1, 0): std 0.707 / sqrt(2)


def test_cross_validation_does_not_select_on_the_test_fold() -> None:
    """On pure-noise features a probe must score chance. Choosing C among 25 values on the test fold
    (the optimistic protocol) lifts this to 0.57; choosing it on the validation fold does not."""
    from gil.metrics.probes import cross_validated_probe

    accuracies = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        noise, labels = rng.normal(size=(120, 40)), np.repeat([0, 1], 60)
        accuracies.append(
            cross_validated_probe(noise, labels, 5, list(np.logspace(-4, 4, 25)), 5, 0).accuracy
        )
    assert np.mean(accuracies) < 0.53


def test_a_probe_reports_its_binomial_error_macro_f1_and_knn_on_separable_classes() -> None:
    from gil.metrics.probes import cross_validated_probe

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    features = np.eye(3)[labels] * 5 + rng.normal(scale=0.1, size=(60, 3))
    result = cross_validated_probe(features, labels, 5, [0.01, 1.0], 5, 0)
    assert result.accuracy == 1.0 and result.correct.all() and result.correct.shape == (60,)
    assert result.accuracy_se == 0.0 and result.macro_f1 == 1.0 and result.knn_accuracy == 1.0
    noisy = cross_validated_probe(rng.normal(size=(60, 3)), labels, 5, [1.0], 5, 0)
    a = noisy.accuracy
    assert noisy.accuracy_se == pytest.approx(np.sqrt(a * (1 - a) / 60)) and 0 < a < 1
    assert 0 <= noisy.macro_f1 <= 1 and noisy.macro_f1 != pytest.approx(a)
