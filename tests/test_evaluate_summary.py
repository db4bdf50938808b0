"""The evaluation's arithmetic on hand-built stage results: skill, probe Δ per task (from the stage the
task was learned), their combination, compute totals, and the mean over seeds. No model: fast, and
first in the mutation-testing selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gil.data.layout import Task
from gil.evaluate import SeedEvaluation, _aggregate
from gil.metrics.probes import ProbeResult


def _probe(correct: list[int]) -> ProbeResult:
    hits = np.array(correct, dtype=bool)
    return ProbeResult(float(hits.mean()), 0.0, float(hits.mean()) / 2, 0.5, hits)


def _task(name: str, learned_at: int) -> Task:
    return Task(name, name, learned_at, ["a", "b"], np.arange(4), np.array([0, 1, 0, 1]))


def _seed_evaluation(mse: list[list[float]], probes: dict[str, list[list[int]]], steps: list[int]):
    matrix = np.array(mse, dtype=float)
    return SeedEvaluation(
        mse=matrix,
        mse_per_gene=matrix * 2,
        pearson=1 - matrix,
        embedding_cosine=np.full((3, 3), 0.5),
        seen_mse=[0.0, 0.0, 0.0],
        probes={name: [_probe(c) for c in per_stage] for name, per_stage in probes.items()},
        own_probes={
            name: [None if c is None else _probe(c) for c in per_stage] for name, per_stage in OWN.items()
        },
        optimizer_steps=steps,
        cells_processed=[s * 10 for s in steps],
        stage_metrics=[],
    )


NAN = float("nan")
REFERENCE = {"gene_mean_mse": [2.0, 4.0, 8.0]}
TASKS = [_task("early", 0), _task("middle", 1), _task("late", 2)]
PROBES = {
    "early": [[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]],  # Δ vs stage 0: 0.25 − 1 = −0.75
    "middle": [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 1]],  # Δ vs stage 1 (not 0): 0.75 − 1 = −0.25
    "late": [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]],  # learned at the last stage: no Δ
}

# The probe on each task's own genes: none before its stage, none for a task tied to no stage.
OWN = {
    "early": [None, None, None],
    "middle": [None, [1, 1, 1, 1], [0, 0, 1, 1]],  # Δ vs stage 1: 0.5 − 1 = −0.5
    "late": [None, None, [1, 0, 1, 0]],
}


def test_the_own_genes_probe_delta_runs_from_the_tasks_stage_and_is_nan_without_one() -> None:
    evaluation = _seed_evaluation([[1, NAN, NAN], [1.5, 2, NAN], [1.8, 3, 6]], PROBES, [10, 20, 30])
    summary = evaluation.summary(TASKS, REFERENCE)
    tasks = summary["probe"]["tasks"]
    middle = tasks["middle"]["own_genes"]
    assert middle["delta"] == pytest.approx(-0.5) and middle["delta_se"] == pytest.approx(
        np.std([-1, -1, 0, 0], ddof=1) / 2
    )
    assert math.isnan(middle["accuracy"][0]) and middle["accuracy"][1:] == [1.0, 0.5]
    assert math.isnan(tasks["early"]["own_genes"]["delta"]) and math.isnan(
        tasks["late"]["own_genes"]["delta"]
    )
    assert summary["probe"]["own_genes"]["delta"] == pytest.approx(-0.5)  # the only task with a Δ
    assert summary["probe"]["delta"] == pytest.approx(-0.5)  # the usual probe's Δ is its own
    document = _aggregate({"0": summary, "1": summary})
    own = document["probe"]["tasks"]["middle"]["own_genes"]
    assert own["delta_mean"] == pytest.approx(-0.5) and own["accuracy"][2] == pytest.approx(0.5)
    assert document["probe"]["own_genes"]["delta_mean"] == pytest.approx(-0.5)


def test_a_seed_summary_pins_skill_probe_deltas_and_compute() -> None:
    evaluation = _seed_evaluation([[1, NAN, NAN], [1.5, 2, NAN], [1.8, 3, 6]], PROBES, [10, 20, 30])
    summary = evaluation.summary(TASKS, REFERENCE)
    regression = summary["regression"]
    np.testing.assert_allclose(regression["skill"][2], [1 - 1.8 / 2, 1 - 3 / 4, 1 - 6 / 8])
    assert regression["delta"] == pytest.approx(3 - 2)  # two-stage Δ: forgetting of T1
    assert regression["skill_new"] == pytest.approx(np.mean([1 - 2 / 4, 1 - 6 / 8]))  # T1 and T2
    assert regression["skill_final"] == pytest.approx(np.mean([1 - 1.8 / 2, 1 - 3 / 4, 1 - 6 / 8]))
    tasks = summary["probe"]["tasks"]
    assert tasks["early"]["delta"] == pytest.approx(-0.75)
    assert tasks["middle"]["delta"] == pytest.approx(-0.25) and tasks["middle"]["learned_at"] == 1
    assert tasks["middle"]["delta_se"] == pytest.approx(0.25)  # differences (0, 0, −1, 0)
    assert math.isnan(tasks["late"]["delta"])
    assert tasks["early"]["accuracy"] == [1.0, 0.75, 0.25]
    assert summary["probe"]["delta"] == pytest.approx(-0.5)  # mean over tasks with a Δ
    early_se = np.std([0, -1, -1, -1], ddof=1) / 2
    assert summary["probe"]["delta_se"] == pytest.approx(math.hypot(early_se, 0.25) / 2)
    assert summary["compute"]["optimizer_steps_incremental"] == 50
    assert summary["compute"]["cells_processed_incremental"] == 500


def test_the_document_is_the_mean_over_seeds_not_one_seed() -> None:
    seeds = {
        "0": _seed_evaluation([[1, NAN, NAN], [1, 2, NAN], [1, 3, 4]], PROBES, [10, 20, 30]),
        "1": _seed_evaluation(
            [[3, NAN, NAN], [3, 4, NAN], [3, 7, 6]], {**PROBES, "early": PROBES["late"]}, [10, 40, 50]
        ),
    }
    per_seed = {seed: evaluation.summary(TASKS, REFERENCE) for seed, evaluation in seeds.items()}
    document = _aggregate(per_seed)
    regression = document["regression"]
    np.testing.assert_allclose(regression["matrix"], [[2, NAN, NAN], [2, 3, NAN], [2, 5, 5]])
    np.testing.assert_allclose(regression["matrix_std"][2], [np.sqrt(2), np.sqrt(8), np.sqrt(2)])
    np.testing.assert_allclose(regression["pearson"][2], [-1, -4, -4])
    assert regression["delta"] == regression["delta_mean"] == pytest.approx((1 + 3) / 2)
    assert regression["delta_std"] == pytest.approx(np.std([1, 3], ddof=1))
    assert regression["delta_per_set_std"] == pytest.approx([np.std([1, 3], ddof=1)])  # T1 only
    assert per_seed["1"]["regression"]["seen_mse"] == [0.0, 0.0, 0.0]
    early = document["probe"]["tasks"]["early"]
    np.testing.assert_allclose(early["accuracy"], [0.5, 0.375, 0.625])
    assert early["delta_mean"] == pytest.approx((-0.75 + 1.0) / 2)  # seed 1: 0 → 1 from stage 0
    assert early["learned_at"] == 0 and early["delta_std"] == pytest.approx(np.std([-0.75, 1.0], ddof=1))
    np.testing.assert_allclose(regression["skill"][2], [1 - 2 / 2, 1 - 5 / 4, 1 - 5 / 8])
    skill_seeds = [[0.5, 0.25, 0.5], [-0.5, -0.75, 0.25]]  # 1 − R[2] / b for each seed
    np.testing.assert_allclose(regression["skill_std"][2], np.std(skill_seeds, axis=0, ddof=1))
    own = document["probe"]["tasks"]["middle"]["own_genes"]  # the same own-genes probes in both seeds
    np.testing.assert_allclose(own["accuracy"], [np.nan, 1.0, 0.5])
    np.testing.assert_allclose(own["accuracy_std"], [np.nan, 0.0, 0.0])
    assert document["embedding_cosine"] == pytest.approx(np.full((3, 3), 0.5))
    assert document["compute"]["optimizer_steps"] == [10, 30, 40]
    assert document["compute"]["cells_processed"] == [100, 300, 400]
    assert document["compute"]["optimizer_steps_incremental"] == 70


def test_one_seed_has_zero_spread_where_defined_and_none_above_the_diagonal() -> None:
    one = {
        "0": _seed_evaluation([[1, NAN, NAN], [1, 2, NAN], [1, 3, 4]], PROBES, [1, 2, 3]).summary(
            TASKS, REFERENCE
        )
    }
    regression = _aggregate(one)["regression"]
    std = np.asarray(regression["matrix_std"])
    assert (std[np.tril_indices(3)] == 0).all() and np.isnan(std[np.triu_indices(3, 1)]).all()
    np.testing.assert_allclose(regression["matrix"][2], [1, 3, 4])


def test_summary_metrics_by_hand() -> None:
    """The parent run's metrics: the summary names, Δ per gene set named T1.. when there are several,
    the probes' deltas and the incremental compute; None and NaN left out, integers as floats."""
    from gil.evaluate import summary_metrics

    regression = dict.fromkeys(("delta", "base_delta", "bwt", "forgetting", "final_mse"), 0.5)
    regression |= {"plasticity": None, "skill_new": math.nan, "skill_final": 0.25}
    regression["delta_per_set"] = [0.1, 0.2]
    summary = {
        "regression": regression,
        "probe": {"delta": 0.03, "delta_se": 0.01, "own_genes": {"delta": None, "delta_se": math.nan}},
        "compute": {"optimizer_steps_incremental": 70, "cells_processed_incremental": 400},
    }
    metrics = summary_metrics(summary)
    assert metrics == {
        "delta": 0.5,
        "base_delta": 0.5,
        "bwt": 0.5,
        "forgetting": 0.5,
        "final_mse": 0.5,
        "skill_final": 0.25,
        "delta_T1": 0.1,
        "delta_T2": 0.2,
        "probe_delta": 0.03,
        "probe_delta_se": 0.01,
        "optimizer_steps": 70.0,
        "cells_processed": 400.0,
    }
    assert all(type(value) is float for value in metrics.values())
    regression["delta_per_set"] = [0.1]  # one set: Δ is its Δ, no per-set names
    assert "delta_T1" not in summary_metrics(summary)
