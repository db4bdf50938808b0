"""Training and evaluation through a real MLflow server: the run layout seen from the UI's side."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from _mlflow_helpers import isolated_mlflow, running_server
from factories import make_config, make_processed, make_split
from mlflow.tracking import MlflowClient

from gil.data.batches import BatchBuilder
from gil.data.vocab import Vocabulary
from gil.evaluate import evaluate_strategy
from gil.tracking.mlflow_tracker import MlflowTracker, registered_model_name
from gil.train.checkpoint import load_checkpoint, stage_path
from gil.train.loop import load_stage_model, train_strategy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    data = make_processed(n_cells=120, n_genes=30)
    split = make_split(data, genes_per_stage=5)
    config = make_config()
    with isolated_mlflow(), running_server(root) as url:
        tracker = MlflowTracker(url, "gil-test")
        tags = {"git.commit": "abc", "dvc.data.md5": "d41d8cd98f00b204e9800998ecf8427e"}
        train_strategy(
            config, "replay", data, split, root / "ckpt", tracker=tracker, tags=tags, progress=False
        )
        evaluate_strategy(config, "replay", data, split, root / "ckpt", tracker=tracker, tags=tags)
        yield url, data, split, config, root
        mlflow.set_tracking_uri(None)


def test_parent_and_stage_runs_hold_curves_rows_and_summaries(tracked_run) -> None:
    url, *_ = tracked_run
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("gil-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("gil.kind") == "parent"]
    stages = [r for r in runs if r.data.tags.get("gil.kind") == "stage"]
    assert len(parents) == 1 and len(stages) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "replay · seed 0"
    assert {"delta", "forgetting", "bwt", "final_mse", "probe_delta"} <= set(parent.data.metrics)
    assert parent.data.params["strategy.buffer_size"] == "20"
    assert parent.data.tags["git.commit"] == "abc"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"metrics.json", "R.png", "forgetting.png"} <= artifacts
    stage2 = next(r for r in stages if r.data.tags["gil.stage"] == "2")
    assert {"mse_B", "mse_T1", "mse_T2", "probe_kind_accuracy"} <= set(stage2.data.metrics)
    history = client.get_metric_history(stage2.info.run_id, "task_loss")
    assert [m.step for m in history] == [0, 1]  # one point per epoch
    assert len(client.get_run(parent.info.run_id).inputs.dataset_inputs) == 1


def test_registered_stage_models_reproduce_the_checkpoint_predictions(tracked_run) -> None:
    url, data, split, config, root = tracked_run
    client = MlflowClient(url)
    versions = client.search_model_versions(f"name='{registered_model_name('gil-test', 'replay')}'")
    assert sorted(v.tags["stage"] for v in versions) == ["0", "1", "2"]
    stage2 = next(v for v in versions if v.tags["stage"] == "2")
    logged = mlflow.pytorch.load_model(f"models:/{stage2.name}/{stage2.version}", map_location="cpu").eval()
    reference = load_stage_model(load_checkpoint(stage_path(root / "ckpt" / "seed_0", 2)))
    builder = BatchBuilder(data, Vocabulary.from_split(split), split.cell_stages, 32)
    batch = builder.evaluation_batch(np.arange(20), 2, seed=1, mask_fraction=0.4, max_seq=32)
    with torch.no_grad():
        expected = reference(batch.genes, batch.values, batch.padding).mlm
        actual = logged(batch.genes, batch.values, batch.padding).mlm
    assert torch.equal(expected, actual)
