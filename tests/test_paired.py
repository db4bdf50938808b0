"""Paired differences to the reference strategy: the t interval by hand, pairing by seed, edge cases."""

from __future__ import annotations

import math

import pytest

from gil.metrics import PairedDifference, differences_to_reference, paired_difference
from gil.metrics.paired import Quantity, format_difference, paired_quantities

# With 2 degrees of freedom the t quantile has a closed form, t_p = (2p − 1) / √(2p(1 − p)) = 4.3026527...
T_975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
NAN = float("nan")
T_975_3 = 3.182446305284263  # scipy.stats.t.ppf(0.975, 3); printed t tables: 3.182


def test_three_seeds_by_hand() -> None:
    # diffs 0.1, 0.2, 0.3: mean 0.2, sd 0.1, half-width t(0.975, 2) · 0.1 / √3 = 0.248414...
    result = paired_difference({"0": 1.1, "1": 1.2, "2": 1.3}, {"0": 1.0, "1": 1.0, "2": 1.0})
    half = T_975_2 * 0.1 / math.sqrt(3)
    assert half == pytest.approx(0.2484138)
    assert result.n == 3
    assert result.mean == pytest.approx(0.2)
    assert (result.low, result.high) == pytest.approx((0.2 - half, 0.2 + half))
    assert result.verdict() == "unresolved"  # [-0.048, 0.448] holds 0
    assert format_difference(result) == "+0.200 [\u22120.048, +0.448]"


def test_two_seeds_have_an_interval_with_one_degree_of_freedom() -> None:
    # diffs 0.1, 0.3: mean 0.2, sd 0.1·√2, half-width t(0.975, 1) · 0.1·√2 / √2 = 0.1 · tan(0.475 π)
    result = paired_difference({"0": 1.1, "1": 1.3}, {"0": 1.0, "1": 1.0})
    half = 0.1 * math.tan(0.475 * math.pi)  # t with 1 degree of freedom is Cauchy: 12.7062...
    assert result.n == 2
    assert (result.mean, result.low, result.high) == pytest.approx((0.2, 0.2 - half, 0.2 + half))


def test_four_seeds_resolved_lower_and_higher() -> None:
    # diffs -0.1, -0.2, -0.3, -0.2: mean -0.2, sd √(0.02 / 3), t(0.975, 3)
    reference = {str(s): 0.5 for s in range(4)}
    lower = paired_difference({"0": 0.4, "1": 0.3, "2": 0.2, "3": 0.3}, reference)
    half = T_975_3 * math.sqrt(0.02 / 3) / 2
    assert (lower.mean, lower.low, lower.high) == pytest.approx((-0.2, -0.2 - half, -0.2 + half))
    assert lower.verdict() == "resolved: lower than finetune"
    higher = paired_difference(reference, {"0": 0.4, "1": 0.3, "2": 0.2, "3": 0.3})
    assert higher.verdict("ref") == "resolved: higher than ref"
    assert (higher.low, higher.high) == pytest.approx((0.2 - half, 0.2 + half))


def test_pairing_is_by_seed_not_by_position() -> None:
    strategy = {"0": 0.30, "1": 0.52, "2": 0.71}
    reference = {"0": 0.20, "1": 0.40, "2": 0.60}  # diffs 0.10, 0.12, 0.11: tight
    paired = paired_difference(strategy, reference)
    assert paired.mean == pytest.approx(0.11) and paired.verdict() == "resolved: higher than finetune"
    # The same values listed in another order give the same result: keys, not positions, match.
    assert paired_difference(dict(reversed(strategy.items())), reference) == paired
    # Values moved to other seeds pair differently: same means, much wider interval.
    shuffled = {"0": 0.52, "1": 0.71, "2": 0.30}
    moved = paired_difference(shuffled, reference)
    assert moved.mean == pytest.approx(paired.mean)
    assert moved.high - moved.low > 10 * (paired.high - paired.low)
    assert moved.verdict() == "unresolved"


def test_unmatched_and_missing_seeds_are_ignored() -> None:
    result = paired_difference(
        {"0": 1.1, "1": 1.2, "2": 1.3, "7": 9.0, "3": None, "4": float("nan")},
        {"0": 1.0, "1": 1.0, "2": 1.0, "8": -9.0, "3": 1.0, "4": 1.0, "5": 1.0},
    )
    assert result.n == 3 and result.mean == pytest.approx(0.2)


def test_one_seed_has_no_interval_and_none_has_nothing() -> None:
    one = paired_difference({"0": 0.5, "1": 0.7}, {"0": 0.2})
    assert one.n == 1 and one.mean == pytest.approx(0.3)
    assert math.isnan(one.low) and math.isnan(one.high)
    assert one.verdict() == "unresolved"
    assert format_difference(one) == "+0.300 [–, –]"
    assert one.as_dict() == {
        "mean": pytest.approx(0.3),
        "low": None,
        "high": None,
        "n": 1,
        "verdict": "unresolved",
    }
    none = paired_difference({"0": 0.5}, {"1": 0.5})
    assert none.n == 0 and math.isnan(none.mean)
    assert format_difference(none) == "–" and format_difference(None) == "–"


def test_identical_inputs_give_exactly_zero_and_are_unresolved() -> None:
    values = {"0": 0.123, "1": 0.456, "2": 0.789}
    result = paired_difference(values, dict(values))
    assert result == PairedDifference(0.0, 0.0, 0.0, 3)
    assert result.verdict() == "unresolved"
    assert format_difference(result) == "+0.000 [+0.000, +0.000]"


def test_differences_to_reference_and_quantities_from_per_seed_summaries() -> None:
    assert differences_to_reference({"a": {"0": 1.0}}, "finetune") == {}  # no reference, no comparison
    per_seed = {
        "finetune": {
            "0": {"regression": {"delta": 0.3}, "probe": {"delta": -0.1}},
            "1": {"regression": {"delta": 0.5}},
        },
        "replay": {
            "0": {"regression": {"delta": 0.1}, "probe": {"delta": 0.0}},
            "1": {"regression": {"delta": 0.2}},
        },
        "other": {"9": {"regression": {"delta": 0.1}}},  # no common seed: no entry
    }
    quantities = (
        Quantity("delta", "Δ", ("regression", "delta")),
        Quantity("probe_delta", "probe Δ", ("probe", "delta")),
        Quantity("own", "own-gene probe Δ", ("probe", "own", "delta")),  # absent everywhere: no entry
    )
    result = paired_quantities(per_seed, "finetune", quantities)
    assert set(result) == {"delta", "probe_delta"}
    assert set(result["delta"]) == {"replay"}
    assert result["delta"]["replay"].mean == pytest.approx(-0.25)  # (−0.2 − 0.3) / 2
    probe = result["probe_delta"]["replay"]
    assert probe.n == 1 and probe.mean == pytest.approx(0.1)  # seed 1 has no probe Δ


def test_every_quantity_is_read_from_a_real_per_seed_summary() -> None:
    """The paths of PAIRED_QUANTITIES against what ``gil evaluate`` writes under ``per_seed.<seed>``."""
    from test_evaluate_summary import PROBES, REFERENCE, TASKS, _seed_evaluation

    from gil.files import finite_or_none
    from gil.metrics.paired import PAIRED_QUANTITIES

    mse = [[1.0, NAN, NAN], [1.2, 2.0, NAN], [1.5, 2.5, 3.0]]
    summary = finite_or_none(_seed_evaluation(mse, PROBES, [0, 5, 5]).summary(TASKS, REFERENCE))
    values = {q.name: q.per_seed({"0": summary}).get("0") for q in PAIRED_QUANTITIES}
    assert values == pytest.approx(
        {
            "delta": 0.5,  # R[2][1] − R[1][1]
            "final_mse": (1.5 + 2.5 + 3.0) / 3,
            "new_gene_mse": (2.0 + 3.0) / 2,  # plasticity: each new set right after its stage
            "probe_delta": (-0.75 - 0.25) / 2,  # tasks early and middle (late has no Δ)
            "own_genes_probe_delta": -0.5,  # only middle has an own-genes Δ
        }
    )
