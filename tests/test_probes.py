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
    # a tie on validation (both right) goes to the smaller C: the stronger regularisation
    x_val, y_val = np.array([[-2.0]]), np.array([0])
    predictions = _best_c_predictions(x_train, y_train, x_val, y_val, x_test, [100.0, 1e-6], 0)
    assert predictions.tolist() == [0, 0]


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


def test_the_default_probe_input_is_the_top_expressed_genes_and_one_set_can_be_asked_for(
    builder: BatchBuilder,
) -> None:
    rows = np.flatnonzero(builder.cell_stages == EVAL_STAGE)[:6]
    top = input_expression(builder, rows, 1, 3, 4, 5, "top_expressed")
    assert np.array_equal(input_expression(builder, rows, 1, 3, 4, 5), top)
    assert not np.array_equal(input_expression(builder, rows, 1, 3, 4, 5, "sampled"), top)
    # one set's genes, whatever the input mode: exactly the own-genes probe batch, nothing else
    own = input_expression(builder, rows, 2, 3, 6, 32, "sampled", only_set=1)
    batch = builder.probe_batch(rows, 2, 32, only_set=1)
    first_gene = int(np.argmax(builder.set_of_token >= 0))
    expected = np.zeros_like(own)
    for i in range(len(rows)):
        for gene, value, pad in zip(batch.genes[i], batch.values[i], batch.padding[i], strict=True):
            if not pad and int(gene) >= first_gene:
                expected[i, int(gene) - first_gene] = float(value)
    np.testing.assert_array_equal(own, expected)
    set_one = builder.set_of_token[np.flatnonzero(own.any(axis=0)) + first_gene]
    assert set(set_one.tolist()) == {1}


def test_each_class_is_dealt_on_from_where_the_previous_class_stopped() -> None:
    """Classes are dealt in label order (0, 1, 2), each starting at the fold after the last cell of
    the one before: 7 cells from fold 0, 4 from fold 7 % 5 = 2, 3 from fold 11 % 5 = 1."""
    targets = np.array([2] * 3 + [0] * 7 + [1] * 4)
    fold = fold_of_cells(targets, 5, seed=1)
    assert sorted(fold[targets == 0].tolist()) == [0, 0, 1, 1, 2, 3, 4]
    assert sorted(fold[targets == 1].tolist()) == [0, 2, 3, 4]
    assert sorted(fold[targets == 2].tolist()) == [1, 2, 3]


def test_a_probe_fit_that_does_not_converge_warns_nobody() -> None:
    """Badly scaled features stop lbfgs at its iteration limit; the probe silences exactly that
    warning (it would drown every evaluation's log), and nothing else goes wrong."""
    import warnings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 20))
    x[:, 0] *= 1e4
    y = rng.integers(0, 3, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictions = _best_c_predictions(x, y, x[:10], y[:10], x[:5], [1e4], 0)
    assert predictions.shape == (5,) and set(predictions.tolist()) <= {0, 1, 2}


def test_cross_validation_picks_c_by_the_validation_labels() -> None:
    """Separable but unbalanced classes: the strongest regularisation predicts the majority class
    (accuracy 40/60); C chosen by validation accuracy separates them all."""
    from gil.metrics.probes import cross_validated_probe

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], [40, 20])
    features = labels[:, None] * 4.0 + rng.normal(scale=0.3, size=(60, 2))
    assert cross_validated_probe(features, labels, 5, [1e-8], 5, 0).accuracy == pytest.approx(40 / 60)
    assert cross_validated_probe(features, labels, 5, [1e-8, 1.0], 5, 0).accuracy == 1.0
