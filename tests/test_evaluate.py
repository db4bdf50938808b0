"""Evaluation: the regression matrix moves in the expected direction, probes use fixed splits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from factories import make_config, make_processed, make_split

from gil.data.batches import BatchBuilder
from gil.data.layout import EVAL_STAGE, Task
from gil.data.vocab import Vocabulary
from gil.evaluate import evaluate_strategy
from gil.metrics.probes import ProbeResult
from gil.metrics.regression import regression_row
from gil.train.loop import build_model, train_strategy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_processed(n_cells=200, n_genes=40)
    split = make_split(data)
    config = make_config(
        train={
            "seeds": [0, 1],
            "epochs_per_stage": 8,
            "batch_size": 16,
            "lr": 0.003,
            "warmup_steps": 2,
            "device": "cpu",
        }
    )
    out = tmp_path_factory.mktemp("ckpt")
    train_strategy(config, "finetune", data, split, out, progress=False)
    return config, data, split, out


def test_trained_model_beats_untrained_on_every_gene_set(trained) -> None:
    config, data, split, out = trained
    document = evaluate_strategy(config, "finetune", data, split, out)
    vocab = Vocabulary.from_split(split)
    builder = BatchBuilder(data, vocab, split.cell_stages, 32)
    untrained = build_model(config, vocab, 0)
    untrained.grow_vocabulary(vocab.size)
    row = regression_row(untrained, builder, split.cells_of_stage(EVAL_STAGE), 2, [7], 32, 0.4, 32)
    final = document["per_seed"]["0"]["regression"]["matrix"][2]
    assert all(trained_mse < untrained_mse for trained_mse, untrained_mse in zip(final, row.mse, strict=True))


def test_metrics_document_shape_nulls_and_seed_aggregation(trained) -> None:
    config, data, split, out = trained
    document = evaluate_strategy(config, "finetune", data, split, out)
    json.dumps(document, allow_nan=False)  # no NaN leaks into the JSON
    matrix = document["regression"]["matrix"]
    assert len(matrix) == 3 and matrix[0][1] is None and matrix[0][2] is None and matrix[1][2] is None
    seeds = [document["per_seed"][s]["regression"]["delta"] for s in ("0", "1")]
    assert document["regression"]["delta_mean"] == pytest.approx(np.mean(seeds))
    assert document["regression"]["delta_std"] == pytest.approx(np.std(seeds, ddof=1))
    r = np.array(document["per_seed"]["0"]["regression"]["matrix"], dtype=float)
    assert document["per_seed"]["0"]["regression"]["delta"] == pytest.approx(r[2, 1] - r[1, 1])
    task = document["probe"]["tasks"]["kind"]
    assert len(task["accuracy"]) == 3 and all(0 <= a <= 1 for a in task["accuracy"])
    assert not math.isnan(document["probe"]["delta"])


def test_evaluation_is_deterministic(trained) -> None:
    config, data, split, out = trained
    assert evaluate_strategy(config, "finetune", data, split, out) == evaluate_strategy(
        config, "finetune", data, split, out
    )


def test_probe_cells_are_the_same_at_every_stage(trained, monkeypatch) -> None:
    """Every stage's probe is cross-validated over exactly the same cells (the task's cells)."""
    import gil.scoring as scoring_module

    config, data, split, out = trained
    seen: list[tuple] = []
    original = scoring_module.cell_embeddings

    def recording(model, builder, rows, stage, *args, **kwargs):
        seen.append((stage, tuple(rows)))
        return original(model, builder, rows, stage, *args, **kwargs)

    monkeypatch.setattr(scoring_module, "cell_embeddings", recording)
    evaluate_strategy(config, "finetune", data, split, out)
    rows_by_stage = {stage: rows for stage, rows in seen}
    assert set(rows_by_stage) == {0, 1, 2}
    assert len({rows for rows in rows_by_stage.values()}) == 1
    task = split.tasks[0]
    assert rows_by_stage[0] == tuple(task.cells)


def test_skill_compute_and_probe_delta_follow_their_definitions(trained) -> None:
    config, data, split, out = trained
    document = evaluate_strategy(config, "finetune", data, split, out)
    baseline = np.array(document["reference"]["gene_mean_mse"])
    for seed in ("0", "1"):
        run = document["per_seed"][seed]
        matrix = np.array(run["regression"]["matrix"], dtype=float)
        skill = np.array(run["regression"]["skill"], dtype=float)
        np.testing.assert_allclose(skill, 1 - matrix / baseline[None, :])
        assert run["regression"]["skill_new"] == pytest.approx(np.mean([skill[1, 1], skill[2, 2]]))
        assert run["regression"]["skill_final"] == pytest.approx(skill[2].mean())
        task = run["probe"]["tasks"]["kind"]
        assert task["learned_at"] == 1
        assert task["delta"] == pytest.approx(task["accuracy"][2] - task["accuracy"][1])
        steps = run["compute"]["optimizer_steps"]
        assert run["compute"]["optimizer_steps_incremental"] == steps[1] + steps[2] > 0
    assert document["regression"]["skill_new_mean"] == pytest.approx(
        np.mean([document["per_seed"][s]["regression"]["skill_new"] for s in ("0", "1")])
    )


def test_a_task_learned_at_the_last_stage_has_no_probe_delta(trained) -> None:
    import dataclasses

    config, data, split, out = trained
    late = dataclasses.replace(split, tasks=[dataclasses.replace(split.tasks[0], learned_at=2)])
    document = evaluate_strategy(config, "finetune", data, late, out)
    assert document["per_seed"]["0"]["probe"]["tasks"]["kind"]["delta"] is None
    assert document["per_seed"]["0"]["probe"]["delta"] is None and document["probe"]["delta"] is None


def test_each_row_of_r_comes_from_its_own_stage_checkpoint(trained) -> None:
    """Row k scored independently from ``stage_k.pt``; rows differ, so a row taken from another
    stage's checkpoint (e.g. the final one) cannot pass."""
    from gil.scoring import EvaluationInputs
    from gil.train.checkpoint import load_checkpoint, stage_path
    from gil.train.loop import load_stage_model

    config, data, split, out = trained
    document = evaluate_strategy(config, "finetune", data, split, out)
    inputs = EvaluationInputs(config, data, split)
    for seed in ("0", "1"):
        matrix = np.array(document["per_seed"][seed]["regression"]["matrix"], dtype=float)
        for stage in range(3):
            model = load_stage_model(load_checkpoint(stage_path(out / f"seed_{seed}", stage)))
            np.testing.assert_allclose(matrix[stage, : stage + 1], inputs.regression(model, stage).mse)
        assert matrix[0, 0] != pytest.approx(matrix[2, 0], rel=1e-3)
    per_seed = [np.array(document["per_seed"][s]["regression"]["matrix"], dtype=float) for s in ("0", "1")]
    assert not np.allclose(per_seed[0][2], per_seed[1][2])  # seeds differ: the mean is not one seed
    np.testing.assert_allclose(
        np.array(document["regression"]["matrix"], dtype=float)[2], (per_seed[0][2] + per_seed[1][2]) / 2
    )


def _probe(correct: list[int]) -> ProbeResult:
    hits = np.array(correct, dtype=bool)
    return ProbeResult(float(hits.mean()), 0.0, float(hits.mean()) / 2, 0.5, hits)


def _task(name: str, learned_at: int) -> Task:
    return Task(name, name, learned_at, ["a", "b"], np.arange(4), np.array([0, 1, 0, 1]))


def _seed_evaluation(mse: list[list[float]], probes: dict[str, list[list[int]]], steps: list[int]):
    from gil.evaluate import SeedEvaluation

    matrix = np.array(mse, dtype=float)
    return SeedEvaluation(
        mse=matrix,
        mse_per_gene=matrix * 2,
        pearson=1 - matrix,
        embedding_cosine=np.full((3, 3), 0.5),
        seen_mse=[0.0, 0.0, 0.0],
        probes={name: [_probe(c) for c in per_stage] for name, per_stage in probes.items()},
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


def test_a_seed_summary_pins_skill_probe_deltas_and_compute() -> None:
    evaluation = _seed_evaluation([[1, NAN, NAN], [1.5, 2, NAN], [1.8, 3, 4]], PROBES, [10, 20, 30])
    summary = evaluation.summary(TASKS, REFERENCE)
    regression = summary["regression"]
    np.testing.assert_allclose(regression["skill"][2], [1 - 1.8 / 2, 1 - 3 / 4, 1 - 4 / 8])
    assert regression["delta"] == pytest.approx(3 - 2)  # two-stage Δ: forgetting of T1
    assert regression["skill_new"] == pytest.approx(np.mean([1 - 2 / 4, 1 - 4 / 8]))
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
    from gil.evaluate import _aggregate

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
    early = document["probe"]["tasks"]["early"]
    np.testing.assert_allclose(early["accuracy"], [0.5, 0.375, 0.625])
    assert early["delta_mean"] == pytest.approx((-0.75 + 1.0) / 2)  # seed 1: 0 → 1 from stage 0
    assert document["compute"]["optimizer_steps"] == [10, 30, 40]
    assert document["compute"]["optimizer_steps_incremental"] == 70


def test_mlflow_summary_metrics_equal_the_metrics_document(trained, tmp_path) -> None:
    """What the UI and ``gil leaderboard`` rank is exactly what ``metrics/<strategy>.json`` says."""
    from _mlflow_helpers import isolated_mlflow

    from gil.tracking.mlflow_tracker import MlflowTracker

    config, data, split, out = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with isolated_mlflow():
        tracker = MlflowTracker(uri, "summaries")
        document = evaluate_strategy(config, "finetune", data, split, out, tracker=tracker)
        runs = tracker.client.search_runs([tracker.experiment_id], "tags.`gil.kind` = 'parent'")
    assert len(runs) == 2
    for run in runs:
        seed = document["per_seed"][run.data.tags["gil.seed"]]
        expected = {name: seed["regression"][name] for name in ("delta", "forgetting", "bwt", "final_mse")}
        expected |= {
            "skill_new": seed["regression"]["skill_new"],
            "probe_delta": seed["probe"]["delta"],
            "optimizer_steps": seed["compute"]["optimizer_steps_incremental"],
        }
        assert {name: run.data.metrics[name] for name in expected} == pytest.approx(expected)
