"""Shared pieces of the MLflow tests: a real tracking server, a clean MLflow state, recorded runs.

No mocks: the tests run against a real ``mlflow server`` (HTTP, proxied artifacts) and a real
SQLite store, because MLflow's behaviour (filters on missing tags, artifact locations, model
registration) is exactly what could break.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import new_sqlite_store

from gil.tracking.mlflow_tracker import MlflowTracker
from gil.tracking.server import start_local_server, stop_server

STAGES = 2


@contextlib.contextmanager
def running_server(root: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free 127.0.0.1 port over a SQLite store in ``root``."""
    process, url = start_local_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")
    try:
        yield url
    finally:
        stop_server(process)


@contextlib.contextmanager
def isolated_mlflow() -> Iterator[None]:
    """No ``MLFLOW_TRACKING_URI`` inside, and no MLflow global state left behind afterwards.

    ``mlflow.set_tracking_uri`` (called by the tracker) also exports ``MLFLOW_TRACKING_URI``; the
    ``setenv`` first makes monkeypatch restore the variable's original state on exit.
    """
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        try:
            yield
        finally:
            while mlflow.active_run() is not None:  # only after a failed test
                mlflow.end_run("FAILED")
            mlflow.set_tracking_uri(None)


def record_run(
    tracker: MlflowTracker,
    strategy: str,
    seed: int,
    summary: dict[str, float],
    params: dict[str, object] | None = None,
) -> str:
    """Record a complete (strategy, seed) run as training and evaluation would; return its id."""
    tracker.begin_run(strategy, seed, params or {"lr": 0.001}, {"git_commit": "abc123"}, resume=False)
    for stage in range(STAGES):
        tracker.begin_stage(stage)
        tracker.log_metrics({"loss": 1.0 / (stage + 1)}, step=0)
        tracker.end_stage()
    tracker.log_summary(summary, [])
    run_id = tracker.parent_run_id
    tracker.end_run()
    return run_id


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A small module whose outputs identify its weights."""
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3)


@pytest.fixture(autouse=True)
def _clean_mlflow() -> Iterator[None]:
    """Autouse in the modules that import it: no MLflow state leaks between tests."""
    with isolated_mlflow():
        yield


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` per test module."""
    with running_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> str:
    """One SQLite store per module; tests use their own experiments."""
    return new_sqlite_store(mlflow_store_template, tmp_path_factory.mktemp("mlflow-sqlite"))
