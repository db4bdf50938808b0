"""Continual-learning metrics against results matrices computed by hand.

Each expected value has its arithmetic next to it. The matrices are chosen so that the usual bugs give a
different number: reading row n-1 instead of the last row, flipping a sign, taking the forgetting minimum
over the final row too, or using the diagonal instead of the best earlier loss.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from gil.metrics import (
    METRIC_NAMES,
    accuracy_delta,
    backward_transfer,
    base_delta,
    delta,
    delta_per_set,
    final_loss,
    forgetting,
    intransigence,
    mean_std,
    plasticity,
    plasticity_per_stage,
    summarize,
)

NAN = math.nan

# Two incremental stages (3x3 with the base stage). B improves at stage 1 (0.50 -> 0.45), so the best
# earlier loss on B (0.45) differs from the loss right after learning it (0.50).
R2 = [
    [0.50, None, None],
    [0.45, 0.40, None],
    [0.55, 0.56, 0.38],
]
R2_JOINT = [
    [0.50, None, None],
    [0.46, 0.35, None],
    [0.44, 0.37, 0.36],
]

# Three incremental stages (4x4). T2 improves at the last stage (0.42 -> 0.40), so its forgetting is
# negative and including the final row in the minimum would change the result.
R3 = np.array(
    [
        [0.60, NAN, NAN, NAN],
        [0.62, 0.50, NAN, NAN],
        [0.58, 0.45, 0.42, NAN],
        [0.66, 0.57, 0.40, 0.30],
    ]
)
R3_JOINT = np.array(
    [
        [0.60, NAN, NAN, NAN],
        [0.59, 0.48, NAN, NAN],
        [0.57, 0.47, 0.40, NAN],
        [0.56, 0.46, 0.39, 0.31],
    ]
)

# One incremental stage (2x2): no stage gene set before the last, so Δ is undefined.
R1 = [[0.5, None], [0.7, 0.3]]


@pytest.mark.parametrize(
    ("function", "matrix", "expected"),
    [
        # Δ = R[2][1] - R[1][1] = 0.56 - 0.40 = 0.16   (row n-1 would give 0.40 - 0.40 = 0)
        (delta, R2, 0.16),
        # Δ = mean(R[3][1] - R[1][1], R[3][2] - R[2][2]) = mean(0.07, -0.02) = 0.025
        #   (row n-1 would give mean(0.45 - 0.50, 0.42 - 0.42) = -0.025)
        (delta, R3, 0.025),
        # base Δ = R[n][0] - R[0][0]
        (base_delta, R2, 0.05),  # 0.55 - 0.50
        (base_delta, R3, 0.06),  # 0.66 - 0.60
        (base_delta, R1, 0.2),  # 0.7 - 0.5
        # BWT = mean_j (R[j][j] - R[n][j]), j = 0..n-1
        (backward_transfer, R2, -0.105),  # mean(0.50 - 0.55, 0.40 - 0.56) = mean(-0.05, -0.16)
        (backward_transfer, R3, -0.11 / 3),  # mean(0.60-0.66, 0.50-0.57, 0.42-0.40) = (-0.06-0.07+0.02)/3
        (backward_transfer, R1, -0.2),  # 0.5 - 0.7
        # F = mean_j (R[n][j] - min_{l=j..n-1} R[l][j])
        (forgetting, R2, 0.13),  # mean(0.55 - min(0.50, 0.45), 0.56 - 0.40) = mean(0.10, 0.16)
        # mean(0.66 - min(0.60, 0.62, 0.58), 0.57 - min(0.50, 0.45), 0.40 - 0.42) = (0.08+0.12-0.02)/3
        (forgetting, R3, 0.06),
        (forgetting, R1, 0.2),  # 0.7 - 0.5
        # final = mean of the last row
        (final_loss, R2, 1.49 / 3),  # (0.55 + 0.56 + 0.38) / 3
        (final_loss, R3, 0.4825),  # (0.66 + 0.57 + 0.40 + 0.30) / 4
        (final_loss, R1, 0.5),  # (0.7 + 0.3) / 2
        # plasticity = mean_k R[k][k], k = 1..n
        (plasticity, R2, 0.39),  # (0.40 + 0.38) / 2
        (plasticity, R3, 1.22 / 3),  # (0.50 + 0.42 + 0.30) / 3
        (plasticity, R1, 0.3),
    ],
)
def test_matrix_metric_by_hand(function, matrix, expected) -> None:
    assert function(matrix) == pytest.approx(expected, abs=1e-12)


def test_delta_is_nan_with_one_incremental_stage() -> None:
    assert math.isnan(delta(R1))
    assert delta_per_set(R1).size == 0


def test_delta_per_set_by_hand() -> None:
    # R[n][j] - R[j][j] for j = 1..n-1: T1 0.57 - 0.50, T2 0.40 - 0.42 (the oldest set is forgotten most)
    np.testing.assert_allclose(delta_per_set(R3), [0.07, -0.02], atol=1e-12)
    np.testing.assert_allclose(delta_per_set(R2), [0.16], atol=1e-12)


def test_plasticity_per_stage_is_the_diagonal_after_the_base_stage() -> None:
    np.testing.assert_allclose(plasticity_per_stage(R2), [0.40, 0.38])
    np.testing.assert_allclose(plasticity_per_stage(R3), [0.50, 0.42, 0.30])


@pytest.mark.parametrize(
    ("matrix", "joint", "expected"),
    [
        (R2, R2_JOINT, 0.035),  # mean(0.40 - 0.35, 0.38 - 0.36) = mean(0.05, 0.02)
        (R3, R3_JOINT, 0.01),  # mean(0.50 - 0.48, 0.42 - 0.40, 0.30 - 0.31) = (0.02 + 0.02 - 0.01) / 3
    ],
)
def test_intransigence_by_hand(matrix, joint, expected) -> None:
    assert intransigence(matrix, joint) == pytest.approx(expected, abs=1e-12)


def test_intransigence_needs_matching_shapes() -> None:
    with pytest.raises(ValueError, match="R_joint has shape"):
        intransigence(R3, R2_JOINT)


def test_forgetting_is_at_least_minus_bwt() -> None:
    # The best earlier loss is never above the loss right after learning, so F >= -BWT.
    for matrix in (R1, R2, R3):
        assert forgetting(matrix) >= -backward_transfer(matrix) - 1e-12


def test_summarize_names_and_values() -> None:
    summary = summarize(R3, R3_JOINT)
    assert tuple(summary) == METRIC_NAMES
    assert summary == pytest.approx(
        {
            "delta": 0.025,
            "base_delta": 0.06,
            "bwt": -0.11 / 3,
            "forgetting": 0.06,
            "final_mse": 0.4825,
            "plasticity": 1.22 / 3,
            "intransigence": 0.01,
        },
        abs=1e-12,
    )
    assert all(type(value) is float for value in summary.values())


def test_summarize_without_joint_and_one_stage_gives_nan_for_undefined() -> None:
    summary = summarize(R1)
    assert math.isnan(summary["intransigence"])
    assert math.isnan(summary["delta"])
    assert summary["forgetting"] == pytest.approx(0.2)


def test_inputs_are_not_mutated() -> None:
    as_list = copy.deepcopy(R2)
    as_array = R3.copy()
    summarize(as_list, R2_JOINT)
    summarize(as_array, R3_JOINT)
    plasticity_per_stage(as_array)[0] = 99.0  # the returned vector is a copy, not a view
    assert as_list == R2
    np.testing.assert_array_equal(as_array, R3)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0.5, None, None], [0.4, 0.3, None]], "square"),
        ([[0.5]], "at least one incremental stage"),
        (
            [[0.5, None], [0.4, None]],
            r"^R\[1\]\[1\] is nan: entries on and below the diagonal \(gene sets learned by that stage\) "
            r"must be finite$",
        ),
        (
            [[0.5, 0.1], [0.4, 0.3]],
            r"^R\[0\]\[1\] is 0.1: entries above the diagonal \(gene sets not learned yet\) "
            r"must be NaN/None$",
        ),
        ([[0.5, None], [0.4]], "not a numeric matrix"),
        ([[0.5, None], [math.inf, 0.3]], r"R\[1\]\[0\]"),
    ],
)
def test_invalid_matrices_raise(matrix, message) -> None:
    with pytest.raises(ValueError, match=message):
        summarize(matrix)


def test_accuracy_delta_by_hand() -> None:
    accuracies = [0.80, 0.90, 0.85]
    assert accuracy_delta(accuracies, 1) == pytest.approx(-0.05)  # A[2] - A[1] = 0.85 - 0.90
    assert accuracy_delta(accuracies, 0) == pytest.approx(0.05)  # 0.85 - 0.80
    assert accuracy_delta(accuracies, 2) == 0.0
    assert accuracy_delta([None, 0.7, 0.6], np.int64(1)) == pytest.approx(-0.1)  # 0.6 - 0.7


@pytest.mark.parametrize(
    ("accuracies", "learned_at", "message"),
    [
        ([0.8, 0.9], 2, "outside stages 0..1"),
        ([0.8, 0.9], True, "integer"),
        ([0.8, 0.9], 1.0, "integer"),
        ([0.8, None], 0, r"accuracies\[1\]"),
        ([[0.8, 0.9]], 0, "vector"),
    ],
)
def test_accuracy_delta_rejects_bad_input(accuracies, learned_at, message) -> None:
    with pytest.raises(ValueError, match=message):
        accuracy_delta(accuracies, learned_at)


def test_mean_std_over_seeds() -> None:
    # mean 0.2; deviations -0.1, 0, 0.1 -> sum of squares 0.02 / (3 - 1) = 0.01 -> std 0.1
    assert mean_std([0.1, 0.2, 0.3]) == pytest.approx((0.2, 0.1))
    # NaN ignored: mean 0.2; (0.01 + 0.01) / (2 - 1) = 0.02 -> std sqrt(0.02)
    assert mean_std([0.1, NAN, 0.3]) == pytest.approx((0.2, math.sqrt(0.02)))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([None, 0.4]) == (0.4, 0.0)
    assert all(math.isnan(value) for value in mean_std([NAN]))
    assert all(math.isnan(value) for value in mean_std([]))
    with pytest.raises(ValueError, match=r"^values: expected a vector over seeds, got shape \(1, 2\)$"):
        mean_std([[0.1, 0.2]])


def test_a_single_stage_probe_has_zero_delta_and_a_bad_oracle_matrix_is_named() -> None:
    assert accuracy_delta([0.7], 0) == 0.0  # one stage: learned and last are the same
    with pytest.raises(ValueError, match=r"^R_joint\[0\]\[1\] is 0.5: entries above the diagonal"):
        intransigence(R2, [[0.5, 0.5, None], [0.4, 0.4, None], [0.3, 0.3, 0.3]])
