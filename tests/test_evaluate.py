"""Evaluation: the regression matrix moves in the expected direction, probes use fixed splits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from factories import make_config, make_processed, make_split

from gil.data.batches import BatchBuilder
from gil.data.layout import EVAL_STAGE
from gil.data.vocab import Vocabulary
from gil.evaluate import evaluate_strategy
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
