"""The MLflow tracker against a real SQLite store and a real ``mlflow server`` (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from _mlflow_helpers import (  # noqa: F401 - fixtures are registered by import
    STAGES,
    _clean_mlflow,
    isolated_mlflow,
    record_run,
    server_url,
    sqlite_uri,
    tiny_model,
)

from gil.config import TrackingConfig
from gil.errors import GilError
from gil.tracking.base import NullTracker
from gil.tracking.mlflow_tracker import MlflowTracker, config_hash, open_tracker, registered_model_name
from gil.tracking.server import check_reachable, free_port, resolve_tracking_uri


@pytest.fixture(params=["sqlite", pytest.param("http", marks=pytest.mark.slow)])
def store_uri(request: pytest.FixtureRequest) -> str:
    """Each layout test runs on a SQLite file and through a tracking server."""
    return request.getfixturevalue("sqlite_uri" if request.param == "sqlite" else "server_url")


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> str:
    """A fresh experiment per test, so tests sharing a store do not see each other's runs."""
    return f"gil-test {request.node.name}"


def _runs(tracker: MlflowTracker, kind: str) -> list[mlflow.entities.Run]:
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`gil.kind` = '{kind}'")


def test_resolve_tracking_uri_prefers_config_then_env_then_local_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert (tmp_path / "mlruns").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(TrackingConfig()) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri(TrackingConfig(uri="sqlite:///rel/db.sqlite")) == (
        f"sqlite:///{tmp_path / 'rel' / 'db.sqlite'}"
    )


def test_unreachable_server_fails_fast_or_disables_tracking() -> None:
    uri = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    with pytest.raises(GilError, match="unreachable; start it with `gil ui`"):
        check_reachable(uri)
    with pytest.raises(GilError, match="unreachable"):
        open_tracker(TrackingConfig(uri=uri), "bench")
    with pytest.warns(UserWarning, match="tracking is disabled"):
        assert isinstance(open_tracker(TrackingConfig(uri=uri, on_unreachable="disable"), "x"), NullTracker)
    assert isinstance(open_tracker(TrackingConfig(uri=uri, enabled=False), "x"), NullTracker)


def test_sqlite_artifacts_go_next_to_the_database(sqlite_uri: str, experiment: str) -> None:
    tracker = open_tracker(TrackingConfig(uri=sqlite_uri, experiment=experiment), "unused")
    assert isinstance(tracker, MlflowTracker)
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    database_dir = Path(sqlite_uri.removeprefix("sqlite:///")).parent
    assert location.startswith((database_dir / "artifacts").as_uri())


def test_run_layout(store_uri: str, experiment: str, tmp_path: Path) -> None:
    tracker = MlflowTracker(store_uri, experiment)
    params = {f"train.p{i:03d}": i for i in range(150)} | {"long": "x" * 7000, "seeds": [0, 1]}
    summary_file = tmp_path / "summary.json"
    summary_file.write_text("{}")
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "forgetting.png").write_bytes(b"png")
    with tracker:
        tracker.begin_run("replay", 0, params, {"git_commit": "abc123"}, resume=False)
        tracker.log_dataset("zeisel", tmp_path / "cells.parquet", "0" * 40, n_cells=300, n_genes=40)
        tracker.begin_stage(0)
        for step in range(3):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        tracker.end_stage()
        tracker.log_summary({"forgetting": 0.25, "final_mse": 1.5}, [summary_file, figures])

    (parent,) = _runs(tracker, "parent")
    assert parent.info.run_name == "replay · seed 0"
    assert parent.info.status == "FINISHED"
    assert {
        key: parent.data.tags[key] for key in ("gil.strategy", "gil.seed", "gil.superseded", "git_commit")
    } == {
        "gil.strategy": "replay",
        "gil.seed": "0",
        "gil.superseded": "false",
        "git_commit": "abc123",
    }
    assert parent.data.tags["gil.config_hash"] == config_hash(params)
    assert len(parent.data.params) == len(params)
    assert parent.data.params["train.p149"] == "149"
    assert parent.data.params["seeds"] == "[0, 1]"
    assert len(parent.data.params["long"]) == 6000
    assert parent.data.metrics == {"forgetting": 0.25, "final_mse": 1.5}
    artifacts = {item.path for item in tracker.client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"summary.json", "figures"}
    assert [item.path for item in tracker.client.list_artifacts(parent.info.run_id, "figures")] == [
        "figures/forgetting.png"
    ]
    (dataset_input,) = parent.inputs.dataset_inputs
    assert dataset_input.dataset.name == "zeisel"
    assert dataset_input.dataset.digest == "0" * 36
    assert json.loads(dataset_input.dataset.profile) == {"num_rows": 300, "num_genes": 40}

    (stage,) = _runs(tracker, "stage")
    assert stage.info.run_name == "replay · seed 0 · stage 0"
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert stage.data.tags["gil.stage"] == "0"
    history = tracker.client.get_metric_history(stage.info.run_id, "loss")
    assert [(metric.step, metric.value) for metric in history] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]


def test_stage_models_are_registered_and_load_back(store_uri: str, experiment: str) -> None:
    tracker = MlflowTracker(store_uri, experiment)
    models = {stage: tiny_model(seed=stage) for stage in range(STAGES)}
    vocabulary = ["Gad1", "Snap25", "Mbp"]
    with tracker:
        tracker.begin_run("ewc", 3, {"lr": 0.1}, {}, resume=False)
        for stage, model in models.items():
            tracker.begin_stage(stage)
            tracker.log_stage_model(stage, model, vocabulary[: stage + 2])
            tracker.end_stage()

    name = registered_model_name(experiment, "ewc")
    versions = sorted(tracker.client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert [(v.tags["stage"], v.tags["seed"]) for v in versions] == [("0", "3"), ("1", "3")]
    probe = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    for stage, version in enumerate(versions):
        loaded = mlflow.pytorch.load_model(f"models:/{name}/{version.version}")
        torch.testing.assert_close(loaded(probe), models[stage](probe))
        vocabulary_file = mlflow.artifacts.download_artifacts(
            f"models:/{name}/{version.version}/extra_files/vocabulary.json"
        )
        assert json.loads(Path(vocabulary_file).read_text()) == vocabulary[: stage + 2]


def test_models_are_only_logged_without_registration(sqlite_uri: str, experiment: str) -> None:
    tracker = MlflowTracker(sqlite_uri, experiment, register_models=False)
    with tracker:
        tracker.begin_run("naive", 0, {}, {}, resume=False)
        tracker.log_stage_model(0, tiny_model(), ["Gad1"])  # opens the stage run itself
    (stage,) = _runs(tracker, "stage")
    assert stage.data.tags["gil.stage"] == "0"
    assert [item.path for item in tracker.client.list_artifacts(stage.info.run_id)] == ["vocabulary.json"]
    name = registered_model_name(experiment, "naive")
    assert tracker.client.search_model_versions(f"name = '{name}'") == []


def _current_parents(tracker: MlflowTracker) -> set[str]:
    return {
        run.info.run_id
        for run in tracker.client.search_runs([tracker.experiment_id], "tags.`gil.superseded` != 'true'")
        if run.data.tags["gil.kind"] == "parent"
    }


def test_rerun_supersedes_and_resume_reopens(sqlite_uri: str, experiment: str) -> None:
    tracker = MlflowTracker(sqlite_uri, experiment)
    first = record_run(tracker, "replay", 0, {"forgetting": 0.3})
    second = record_run(tracker, "replay", 0, {"forgetting": 0.2})
    assert _current_parents(tracker) == {second}
    assert tracker.client.get_run(first).data.tags["gil.superseded"] == "true"

    evaluation = MlflowTracker(sqlite_uri, experiment)  # as a later process would
    evaluation.begin_run("replay", 0, {"lr": 0.001}, {"eval_commit": "def456"}, resume=True)
    assert evaluation.parent_run_id == second
    evaluation.begin_stage(1)
    evaluation.log_metrics({"eval_mse": 0.7}, step=1)
    evaluation.end_run()
    reopened = tracker.client.get_run(second)
    assert reopened.info.status == "FINISHED"
    assert reopened.data.tags["eval_commit"] == "def456"
    stages = tracker.client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{second}'")
    assert len(stages) == STAGES
    assert {run.data.tags["gil.stage"]: "eval_mse" in run.data.metrics for run in stages} == {
        "0": False,
        "1": True,
    }


def test_a_run_of_another_config_supersedes_its_slot_only(sqlite_uri: str, experiment: str) -> None:
    """The latest finished run of a (strategy, seed) is its current result, whatever its config: a
    leaderboard must not average an old config's runs with the new ones. Other seeds and strategies
    keep theirs; resuming with the old config no longer finds a current run."""
    tracker = MlflowTracker(sqlite_uri, experiment)
    old = record_run(tracker, "replay", 0, {"forgetting": 0.2})
    old_seed = record_run(tracker, "replay", 1, {"forgetting": 0.2})
    other_strategy = record_run(tracker, "ewc", 0, {"forgetting": 0.2})
    new = record_run(tracker, "replay", 0, {"forgetting": 0.1}, params={"lr": 0.5})
    assert _current_parents(tracker) == {new, old_seed, other_strategy}
    assert tracker.client.get_run(old).data.tags["gil.superseded"] == "true"


def test_settings_of_a_suite_are_separate_identities_and_models(sqlite_uri: str, experiment: str) -> None:
    """Two settings may share every param (e.g. one differs only in its data): neither run supersedes
    the other, resuming finds each setting's own run, and their models do not share aliases."""
    tracker = MlflowTracker(sqlite_uri, experiment)
    runs = {}
    for setting in ("reverse", "long"):
        tracker.begin_run("replay", 0, {"lr": 0.001}, {"gil.setting": setting}, resume=False)
        tracker.begin_stage(0)
        tracker.log_stage_model(0, tiny_model(seed=len(setting)), ["Gad1", "Mbp"])
        runs[setting] = tracker.parent_run_id
        tracker.end_run()
    for setting, run_id in runs.items():
        assert tracker.client.get_run(run_id).data.tags["gil.superseded"] == "false"
        tracker.begin_run("replay", 0, {"lr": 0.001}, {"gil.setting": setting}, resume=True)
        assert tracker.parent_run_id == run_id
        tracker.end_run()
        name = registered_model_name(experiment, "replay", setting)
        assert name.endswith(f"-{setting}-replay") and name != registered_model_name(experiment, "replay")
        version = tracker.client.get_model_version_by_alias(name, "seed0-stage0")
        assert (
            tracker.client.get_run(version.run_id).data.tags["mlflow.parentRunId"] == run_id
        )  # its stage run


def test_a_failed_rerun_leaves_the_last_good_run_current(sqlite_uri: str, experiment: str) -> None:
    tracker = MlflowTracker(sqlite_uri, experiment)
    good = record_run(tracker, "ewc", 0, {"forgetting": 0.3})
    tracker.begin_run("ewc", 0, {"lr": 0.001}, {}, resume=False)
    failed = tracker.parent_run_id
    tracker.end_run("FAILED")
    assert tracker.client.get_run(good).data.tags["gil.superseded"] == "false"
    assert tracker.client.get_run(failed).info.status == "FAILED"
    retried = record_run(tracker, "ewc", 0, {"forgetting": 0.25})
    assert tracker.client.get_run(good).data.tags["gil.superseded"] == "true"
    assert tracker.client.get_run(failed).data.tags["gil.superseded"] == "true"
    assert tracker.client.get_run(retried).data.tags["gil.superseded"] == "false"


def test_resume_without_an_earlier_run_creates_one(sqlite_uri: str, experiment: str) -> None:
    tracker = MlflowTracker(sqlite_uri, experiment)
    with tracker:
        tracker.begin_run("der", 1, {"lr": 0.001}, {}, resume=True)
    (parent,) = _runs(tracker, "parent")
    assert parent.info.run_name == "der · seed 1"


@pytest.mark.parametrize(("error", "status"), [(ValueError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_exception_inside_the_tracker_marks_runs_failed(
    sqlite_uri: str, experiment: str, error: type[BaseException], status: str
) -> None:
    tracker = MlflowTracker(sqlite_uri, experiment)
    with pytest.raises(error), tracker:
        tracker.begin_run("replay", 0, {}, {}, resume=False)
        tracker.begin_stage(0)
        raise error
    assert mlflow.active_run() is None
    runs = _runs(tracker, "parent") + _runs(tracker, "stage")
    assert {run.data.tags["gil.kind"]: run.info.status for run in runs} == {"parent": status, "stage": status}


def test_a_store_copied_from_the_template_is_the_store_mlflow_creates(
    mlflow_store_template: Path, tmp_path: Path
) -> None:
    """The tests' stores are copies of one made by MLflow (conftest.new_sqlite_store): the same
    tables, migration and default experiment as a store MLflow creates in their place. (Two stores
    MLflow creates in two processes list the constraints of a table in different orders: hash
    order; so each statement is compared as its set of lines.)"""
    import sqlite3

    from conftest import new_sqlite_store
    from mlflow.tracking import MlflowClient

    copied = new_sqlite_store(mlflow_store_template, tmp_path / "copied")
    fresh = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    (tmp_path / "fresh").mkdir()
    MlflowClient(tracking_uri=fresh).search_experiments()

    def contents(uri: str) -> tuple:
        with sqlite3.connect(uri.removeprefix("sqlite:///")) as connection:
            schema = sorted(
                (kind, name, sorted((sql or "").replace(",", "").splitlines()))
                for kind, name, sql in connection.execute("SELECT type, name, sql FROM sqlite_master")
            )
            migration = connection.execute("SELECT version_num FROM alembic_version").fetchall()
            experiments = connection.execute(
                "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
            ).fetchall()
        connection.close()
        return schema, migration, experiments

    assert contents(copied) == contents(fresh)
    assert contents(copied)[2] == [(0, "Default", str(Path.cwd() / "mlruns" / "0"), "active")]
    assert MlflowClient(tracking_uri=copied).create_experiment("x") == "1"  # usable, numbering as new
