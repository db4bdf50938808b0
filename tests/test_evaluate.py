"""Evaluation: the regression matrix moves in the expected direction, probes use fixed splits."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from _mutmut import train_checkpoints
from conftest import new_sqlite_store
from factories import make_config, make_processed, make_split

from gil.data.batches import BatchBuilder
from gil.data.layout import EVAL_STAGE, VALIDATION_STAGE
from gil.data.vocab import Vocabulary
from gil.evaluate import PROBE_KEYS, evaluate_strategy
from gil.metrics.regression import regression_row
from gil.train.loop import build_model, train_strategy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_processed(n_cells=200, n_genes=40)
    split = make_split(data)
    config = make_config(
        train={
            "seeds": [0, 1],
            "epochs_per_stage": 3,
            "batch_size": 16,
            "lr": 0.003,
            "warmup_steps": 2,
            "device": "cpu",
        },
        # probes are tested in test_probes.py; here one C and 3 folds keep evaluation quick
        evaluate={"seed": 7, "repeats": 1, "batch_size": 32, "probe": {"folds": 3, "c_grid": [1.0]}},
    )
    out = tmp_path_factory.mktemp("ckpt")
    train_checkpoints(config, "finetune", data, split, out)  # trained once per mutmut run
    return config, data, split, out


@pytest.fixture(scope="module")
def document(trained) -> dict:
    """The metrics document of the trained run (read-only: tests that need a fresh one evaluate)."""
    config, data, split, out = trained
    return evaluate_strategy(config, "finetune", data, split, out)


def test_metrics_document_shape_nulls_and_seed_aggregation(trained, document) -> None:
    """First user of the shared document (mutation testing attributes the fixture's work to it)."""
    from gil.files import finite_or_none
    from gil.reference import compute_reference

    config, data, split, _ = trained
    json.dumps(document, allow_nan=False)  # no NaN leaks into the JSON
    assert {k: document[k] for k in ("strategy", "kind", "gene_sets")} == {
        "strategy": "finetune",
        "kind": "finetune",
        "gene_sets": ["B", "T1", "T2"],
    }
    assert (
        document["headline"].startswith("pooled masked-value MSE")
        and "fixed evaluation seed" in document["evaluation"]
    )
    assert document["reference"] == finite_or_none(compute_reference(config, data, split))
    assert list(document["per_seed"]) == ["0", "1"] and document["probe"]["tasks"]["kind"]["learned_at"] == 1
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


def test_trained_model_beats_untrained_on_every_gene_set(trained, document) -> None:
    config, data, split, out = trained
    vocab = Vocabulary.from_split(split)
    builder = BatchBuilder(data, vocab, split.cell_stages, 32)
    untrained = build_model(config, vocab, 0)
    untrained.grow_vocabulary(vocab.size)
    row = regression_row(untrained, builder, split.cells_of_stage(EVAL_STAGE), 2, [7], 32, 0.4, 32)
    final = document["per_seed"]["0"]["regression"]["matrix"][2]
    assert all(trained_mse < untrained_mse for trained_mse, untrained_mse in zip(final, row.mse, strict=True))


def test_evaluation_is_deterministic(trained, document) -> None:
    config, data, split, out = trained
    assert evaluate_strategy(config, "finetune", data, split, out) == document


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


def test_skill_compute_and_probe_delta_follow_their_definitions(document) -> None:
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


def test_each_row_of_r_comes_from_its_own_stage_checkpoint(trained, document) -> None:
    """Row k scored independently from ``stage_k.pt``; rows differ, so a row taken from another
    stage's checkpoint (e.g. the final one) cannot pass."""
    from gil.scoring import EvaluationInputs
    from gil.train.checkpoint import load_checkpoint, stage_path
    from gil.train.loop import load_stage_model

    config, data, split, out = trained
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


def test_mlflow_summary_metrics_equal_the_metrics_document(trained, tmp_path, mlflow_store_template) -> None:
    """What the UI and ``gil leaderboard`` rank is exactly what ``metrics/<strategy>.json`` says; a
    second evaluation reopens the same parent runs; a failure while recording marks the run FAILED."""
    import json

    from _mlflow_helpers import isolated_mlflow

    from gil.tracking.mlflow_tracker import MlflowTracker

    class FailingSummary(MlflowTracker):
        def log_summary(self, metrics, artifacts):  # noqa: ANN001 - a fault injected by the test
            raise OSError("disk full")

    config, data, split, out = trained
    uri = new_sqlite_store(mlflow_store_template, tmp_path)
    with isolated_mlflow():
        tracker = MlflowTracker(uri, "summaries")
        for _ in range(2):
            document = evaluate_strategy(
                config, "finetune", data, split, out, tracker=tracker, tags={"t": "v"}
            )
        runs = tracker.client.search_runs([tracker.experiment_id], "tags.`gil.kind` = 'parent'")
        assert len(runs) == 2  # reopened, not superseded by new ones
        for run in runs:
            seed = run.data.tags["gil.seed"]
            per_seed = document["per_seed"][seed]
            regression = per_seed["regression"]
            expected = {name: regression[name] for name in ("delta", "base_delta", "bwt", "forgetting")}
            expected |= {name: regression[name] for name in ("final_mse", "plasticity", "skill_new")}
            expected |= {
                "skill_final": regression["skill_final"],
                "probe_delta": per_seed["probe"]["delta"],
                "probe_delta_se": per_seed["probe"]["delta_se"],
                "probe_own_delta": per_seed["probe"]["own_genes"]["delta"],
                "probe_own_delta_se": per_seed["probe"]["own_genes"]["delta_se"],
                "optimizer_steps": per_seed["compute"]["optimizer_steps_incremental"],
                "cells_processed": per_seed["compute"]["cells_processed_incremental"],
            }
            assert run.data.metrics == pytest.approx(expected)
            assert run.info.run_name == f"finetune · seed {seed}" and run.info.status == "FINISHED"
            assert run.data.tags["t"] == "v"
            local = tracker.client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
            logged = json.loads(Path(local).read_text())
            assert logged["strategy"] == "finetune" and logged["regression"]["matrix"] == regression["matrix"]
            # The same names on every parent run: MLflow's run comparison shows them side by side.
            names = {item.path for item in tracker.client.list_artifacts(run.info.run_id)}
            assert {"metrics.json", "R.png", "forgetting.png"} <= names
        failing = FailingSummary(uri, "summaries")
        with pytest.raises(OSError, match="disk full"):
            evaluate_strategy(config, "finetune", data, split, out, tracker=failing)
        (failed,) = tracker.client.search_runs(
            [tracker.experiment_id], "tags.`gil.kind` = 'parent' and attributes.status = 'FAILED'"
        )
        assert failed.data.tags["gil.seed"] == "0"  # seed 0 failed; seed 1 was never started


def test_each_stage_run_records_its_own_row_reference_and_probe(trained, document) -> None:
    """The per-stage MLflow metrics of a seed, value by value, against the row of R they come from."""
    from gil.evaluate import Evaluator
    from gil.scoring import EvaluationInputs
    from gil.train.checkpoint import load_checkpoint, stage_path
    from gil.train.loop import load_stage_model, record_of

    config, data, split, out = trained
    reference = document["reference"]
    evaluation = Evaluator(config, "finetune", data, split, out).evaluate_seed(1, reference)
    inputs = EvaluationInputs(config, data, split)
    baseline = reference["gene_mean_mse"]
    for stage in range(3):
        payload = load_checkpoint(stage_path(out / "seed_1", stage))
        row = inputs.regression(load_stage_model(payload), stage)
        known = split.set_names[: stage + 1]
        expected = {f"mse_{name}": row.mse[j] for j, name in enumerate(known)}
        expected |= {f"pearson_{name}": row.pearson[j] for j, name in enumerate(known)}
        expected |= {f"baseline_mse_{name}": baseline[j] for j, name in enumerate(known)}
        expected |= {f"skill_{name}": 1 - row.mse[j] / baseline[j] for j, name in enumerate(known)}
        expected["mse_seen"] = row.seen_mse
        probe = evaluation.probes["kind"][stage]
        expected |= {f"probe_kind_{key}": getattr(probe, key) for key in PROBE_KEYS}
        own = evaluation.own_probes["kind"][stage]
        assert (own is None) == (stage < 1)  # the task's genes are learned at stage 1
        if own is not None:
            expected |= {f"probe_kind_own_{key}": getattr(own, key) for key in PROBE_KEYS}
        assert evaluation.stage_metrics[stage] == pytest.approx(expected)
        np.testing.assert_allclose(evaluation.mse_per_gene[stage, : stage + 1], row.mse_per_gene)
        np.testing.assert_allclose(evaluation.pearson[stage, : stage + 1], row.pearson)
        assert evaluation.seen_mse[stage] == pytest.approx(row.seen_mse)
        np.testing.assert_allclose(
            evaluation.embedding_cosine[stage, : stage + 1], record_of(payload).embedding_cosine
        )
        assert np.isnan(evaluation.mse_per_gene[stage, stage + 1 :]).all()


def test_missing_or_stale_checkpoints_are_refused_before_anything_is_tracked(
    trained, tmp_path, mlflow_store_template
) -> None:
    import shutil

    from _mlflow_helpers import isolated_mlflow

    from gil.errors import GilError
    from gil.tracking.mlflow_tracker import MlflowTracker

    config, data, split, out = trained
    partial = tmp_path / "ckpt"
    shutil.copytree(out, partial)
    (partial / "seed_1" / "stage_2.pt").unlink()  # seed 0 complete, seed 1 not
    uri = new_sqlite_store(mlflow_store_template, tmp_path)
    with isolated_mlflow():
        tracker = MlflowTracker(uri, "refused")
        with pytest.raises(GilError, match=r"seed_1/stage_2.pt not found"):
            evaluate_strategy(config, "finetune", data, split, partial, tracker=tracker)
        assert tracker.client.search_runs([tracker.experiment_id]) == []
    other = config.model_copy(update={"train": config.train.model_copy(update={"lr": 0.0042})})
    with pytest.raises(GilError, match="made with a different config"):
        evaluate_strategy(other, "finetune", data, split, out)


def test_the_own_genes_probe_reads_the_tasks_genes_and_nothing_else(trained) -> None:
    """Changing every other gene's values of the task's cells moves the usual probe, not this one."""
    import dataclasses

    from gil.evaluate import Evaluator
    from gil.train.checkpoint import load_checkpoint, stage_path
    from gil.train.loop import load_stage_model

    config, data, split, out = trained
    task = split.tasks[0]
    own_set = np.isin(data.gene_names, split.gene_sets[task.learned_at][1])
    in_task = np.repeat(np.isin(np.arange(data.n_cells), task.cells), np.diff(data.indptr))
    values = data.values.copy()
    values[in_task & ~own_set[data.indices]] *= 0.2
    altered = dataclasses.replace(data, values=values)
    model = load_stage_model(load_checkpoint(stage_path(out / "seed_0", 2)))
    scores = {}
    for name, source in (("same", data), ("altered", altered)):
        evaluator = Evaluator(config, "finetune", source, split, out)
        own = evaluator.own_genes_probe(model, task, 2)
        usual = evaluator.inputs.embeddings(model, task, 2)
        scores[name] = (own.correct, evaluator.inputs.embeddings(model, task, 2, task.learned_at), usual)
    assert np.array_equal(scores["same"][0], scores["altered"][0])
    np.testing.assert_array_equal(scores["same"][1], scores["altered"][1])
    assert not np.allclose(scores["same"][2], scores["altered"][2])


def _scaled(data, rows: np.ndarray):  # noqa: ANN001, ANN202
    """``data`` with the values of ``rows`` tripled (an in-memory copy)."""
    values = np.array(data.values)
    for row in rows:
        values[data.indptr[row] : data.indptr[row + 1]] *= 3.0
    return dataclasses.replace(data, values=values, source=None)


def test_the_evaluation_never_reads_validation_cells(trained, tmp_path: Path) -> None:
    """What reports must not depend on the cells that select: tripling the validation cells'
    values leaves the whole document unchanged; tripling the test cells' (the positive control
    that the perturbation is visible) changes it."""
    config, data, split, _ = trained
    config = config.model_copy(update={"train": config.train.model_copy(update={"seeds": [0]})})
    stages = split.cell_stages.copy()
    validation = np.flatnonzero(stages == 2)[:12]
    stages[validation] = VALIDATION_STAGE
    held_out = dataclasses.replace(split, cell_stages=stages)
    train_strategy(config, "finetune", data, held_out, tmp_path, progress=False)
    baseline = evaluate_strategy(config, "finetune", data, held_out, tmp_path)
    assert baseline["scored_on"] == {"cells": "test", "n_cells": int((stages == EVAL_STAGE).sum())}
    assert evaluate_strategy(config, "finetune", _scaled(data, validation), held_out, tmp_path) == baseline
    test_cells = held_out.cells_of_stage(EVAL_STAGE)
    assert evaluate_strategy(config, "finetune", _scaled(data, test_cells), held_out, tmp_path) != baseline


def test_checkpoints_of_another_config_are_refused_up_front_and_by_each_seed(trained) -> None:
    """``check_checkpoints`` refuses stale checkpoints before anything is tracked; a seed scored in
    a worker process (no such check before it) refuses them at every load as well."""
    from gil.errors import GilError
    from gil.evaluate import Evaluator

    config, data, split, out = trained
    other = config.model_copy(update={"train": config.train.model_copy(update={"lr": 0.001})})
    evaluator = Evaluator(other, "finetune", data, split, out)
    with pytest.raises(GilError, match="different config"):
        evaluator.check_checkpoints()
    with pytest.raises(GilError, match="different config"):
        evaluator.evaluate_seed(0, {})
    Evaluator(config, "finetune", data, split, out).check_checkpoints()  # its own config passes


def test_who_scores_the_seeds() -> None:
    """A given runner always; worker processes only for several jobs and several seeds; else here."""
    from gil.evaluate import seed_runner
    from gil.train.parallel import run_seeds_in_processes

    def config(jobs: int, seeds: list[int]):
        return make_config(train={"seeds": seeds}, compute={"jobs": jobs})

    def given(work, jobs, label, progress):  # noqa: ANN001, ANN202 - a gil Runner
        yield from ()

    assert seed_runner(config(2, [0, 1]), None) is run_seeds_in_processes
    assert seed_runner(config(3, [0, 1, 2]), None) is run_seeds_in_processes
    assert seed_runner(config(1, [0, 1]), None) is None
    assert seed_runner(config(2, [0]), None) is None
    for jobs, seeds in ((1, [0]), (2, [0, 1]), (1, [0, 1])):
        assert seed_runner(config(jobs, seeds), given) is given
