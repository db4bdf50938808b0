"""The model registry as a user reads it: names without a doubled prefix, aliases instead of version
numbers, and a training experiment the MLflow UI does not mistake for GenAI.

Real SQLite MLflow stores and real training (no mocks): what could break is MLflow's alias and
registry behaviour and what the trainer hands the tracker.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from _mlflow_helpers import _clean_mlflow, isolated_mlflow, sqlite_uri, tiny_model  # noqa: F401 - fixtures
from factories import make_config, make_processed, make_split
from mlflow.tracking import MlflowClient

from gil.data.batches import BatchBuilder
from gil.data.vocab import Vocabulary
from gil.tracking.mlflow_tracker import MlflowTracker
from gil.train.checkpoint import load_checkpoint, stage_path
from gil.train.loop import load_stage_model, train_strategy

LAST_STAGE = 2  # make_split's default: base stage 0, then stages 1 and 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """finetune trained for seeds 1 and 0 (in that order) into experiment ``gil-test`` (training:
    the tests below are marked slow)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data = make_processed(n_cells=120, n_genes=30)
    split = make_split(data, genes_per_stage=5)
    config = make_config()
    with isolated_mlflow():
        tracker = MlflowTracker(uri, "gil-test")
        for seed in (1, 0):
            train_strategy(config, "finetune", data, split, root / "ckpt", seeds=[seed], tracker=tracker)
        yield uri, data, split, root


@pytest.mark.slow
def test_registered_name_is_dataset_and_strategy(trained) -> None:
    uri, *_ = trained
    names = {model.name for model in MlflowClient(uri).search_registered_models()}
    assert names == {"gil-test-finetune"}


@pytest.mark.slow
def test_aliases_name_seed_and_stage_and_final_is_the_lowest_seed(trained) -> None:
    uri, *_ = trained
    client = MlflowClient(uri)
    model = client.get_registered_model("gil-test-finetune")
    by_alias = {
        alias: (client.get_model_version("gil-test-finetune", version).tags["seed"],
                client.get_model_version("gil-test-finetune", version).tags["stage"])
        for alias, version in model.aliases.items()
    }  # fmt: skip
    expected = {f"seed{s}-stage{k}": (str(s), str(k)) for s in (0, 1) for k in range(LAST_STAGE + 1)}
    expected |= {"seed0-final": ("0", "2"), "seed1-final": ("1", "2"), "final": ("0", "2")}
    assert by_alias == expected


@pytest.mark.slow
def test_loading_final_reproduces_the_checkpoint_predictions(trained) -> None:
    uri, data, split, root = trained
    mlflow.set_tracking_uri(uri)
    logged = mlflow.pytorch.load_model("models:/gil-test-finetune@final", map_location="cpu").eval()
    reference = load_stage_model(load_checkpoint(stage_path(root / "ckpt" / "seed_0", LAST_STAGE))).eval()
    builder = BatchBuilder(data, Vocabulary.from_split(split), split.cell_stages, 32)
    batch = builder.evaluation_batch(np.arange(20), LAST_STAGE, seed=1, mask_fraction=0.4, max_seq=32)
    with torch.no_grad():
        expected = reference(batch.genes, batch.values, batch.padding).mlm
        actual = logged(batch.genes, batch.values, batch.padding).mlm
    assert torch.equal(expected, actual)


@pytest.mark.slow
def test_run_description_tells_how_to_load_its_model(trained) -> None:
    uri, *_ = trained
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gil-test")
    (parent,) = client.search_runs(
        [experiment.experiment_id], "tags.`gil.kind` = 'parent' and tags.`gil.seed` = '1'"
    )
    note = parent.data.tags["mlflow.note.content"]
    assert 'mlflow.pytorch.load_model("models:/gil-test-finetune@seed1-final")' in note


def test_a_rerun_of_a_higher_seed_leaves_final_on_the_lowest(sqlite_uri: str) -> None:  # noqa: F811
    tracker = MlflowTracker(sqlite_uri, "final-alias")
    versions = {}
    for seed in (0, 1):
        with tracker:
            tracker.begin_run("ewc", seed, {"lr": 0.1}, {}, resume=False)
            tracker.log_stage_model(0, tiny_model(seed), ["Gad1"])
            tracker.end_run()
        final = tracker.client.get_model_version_by_alias("gil-final-alias-ewc", "final")
        versions[seed] = final.tags["seed"]
    assert versions == {0: "0", 1: "0"}


def test_experiments_are_marked_as_model_training(sqlite_uri: str) -> None:  # noqa: F811
    client = MlflowClient(sqlite_uri)
    old = client.create_experiment("made-before-the-tag")  # an experiment from an older gil
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    MlflowTracker(sqlite_uri, "made-before-the-tag")
    new = MlflowTracker(sqlite_uri, "made-now").experiment_id
    for experiment_id in (old, new):
        tags = client.get_experiment(experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
