"""Seeds trained in worker processes (``compute.jobs``): same checkpoints, same MLflow record."""

from __future__ import annotations

import mlflow
import pytest
import torch
from _mlflow_helpers import isolated_mlflow
from factories import make_config, make_processed, make_split
from mlflow.tracking import MlflowClient

from gil.data.layout import ProcessedData
from gil.errors import GilError
from gil.evaluate import evaluate_strategy
from gil.tracking.mlflow_tracker import MlflowTracker
from gil.train.checkpoint import load_checkpoint, stage_path
from gil.train.loop import train_base, train_strategy

pytestmark = pytest.mark.slow

TRAIN = {"seeds": [0, 1], "epochs_per_stage": 2, "batch_size": 16, "lr": 0.003, "warmup_steps": 2}


def _config(jobs: int):  # noqa: ANN202
    return make_config(train={**TRAIN, "device": "cpu", "threads": 1}, compute={"jobs": jobs})


def _weights(root, seed: int, stage: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(stage_path(root / f"seed_{seed}", stage))["model"]


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """Tiny data written to a directory, so workers map the files (as `gil train` does)."""
    directory = tmp_path_factory.mktemp("data") / "processed"
    make_processed(n_cells=120, n_genes=30).write(directory)
    data = ProcessedData.load(directory)
    return data, make_split(data, genes_per_stage=5)


def test_parallel_seeds_give_the_sequential_checkpoints_and_runs(tmp_path, on_disk) -> None:
    data, split = on_disk
    train_base(_config(1), data, split, tmp_path / "base_seq", progress=False)
    train_base(_config(2), data, split, tmp_path / "base_par", progress=False)
    with isolated_mlflow():
        tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "gil-parallel")
        for jobs, out in ((1, "seq"), (2, "par")):
            results = train_strategy(
                _config(jobs),
                "replay",
                data,
                split,
                tmp_path / out,
                tracker=tracker,
                progress=False,
                base_dir=tmp_path / f"base_{out}",
            )
            assert sorted(results) == [0, 1] and [r.stage for r in results[1]] == [0, 1, 2]
        document = evaluate_strategy(_config(2), "replay", data, split, tmp_path / "par", tracker=tracker)
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("gil-parallel").experiment_id])
        mlflow.set_tracking_uri(None)
    for seed in (0, 1):
        assert torch.equal(
            _weights(tmp_path / "base_seq", seed, 0)["gene_embedding.weight"],
            _weights(tmp_path / "base_par", seed, 0)["gene_embedding.weight"],
        )
        for stage in range(3):
            sequential, parallel = (
                _weights(tmp_path / "seq", seed, stage),
                _weights(tmp_path / "par", seed, stage),
            )
            assert all(torch.equal(sequential[key], parallel[key]) for key in sequential)
    assert list(document["per_seed"]) == ["0", "1"]
    # the second (parallel) training superseded the first: one live parent per seed, 3 stages each
    live = [r for r in runs if r.data.tags.get("gil.superseded") == "false"]
    parents = [r for r in live if r.data.tags["gil.kind"] == "parent"]
    assert sorted(r.data.tags["gil.seed"] for r in parents) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in parents)
    for parent in parents:
        stages = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["gil.stage"] for r in stages) == ["0", "1", "2"]
        stage1 = next(r for r in stages if r.data.tags["gil.stage"] == "1")
        assert [m.step for m in client.get_metric_history(stage1.info.run_id, "task_loss")] == [0, 1]
        assert "cells_per_second" in stage1.data.metrics and "mse_T1" in stage1.data.metrics
        assert "delta" in parent.data.metrics


def test_a_failing_seed_fails_the_command_and_the_others_still_finish(tmp_path, on_disk) -> None:
    data, split = on_disk
    config = _config(2)
    # seed 1 has no base checkpoint to import, so its worker fails; seed 0 trains
    train_base(
        make_config(train={**TRAIN, "seeds": [0], "device": "cpu", "threads": 1}),
        data,
        split,
        tmp_path / "base",
        progress=False,
    )
    with pytest.raises(GilError, match="seed_1"):
        train_strategy(
            config, "finetune", data, split, tmp_path / "out", progress=False, base_dir=tmp_path / "base"
        )
    assert stage_path(tmp_path / "out" / "seed_0", 2).exists()
    assert not stage_path(tmp_path / "out" / "seed_1", 0).exists()
