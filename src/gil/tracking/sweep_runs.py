"""MLflow runs of a hyperparameter sweep: one parent run per sweep, one nested child run per trial.

Why not :class:`gil.tracking.mlflow_tracker.MlflowTracker`: that tracker uses MLflow's fluent API
(one active run per process), while sweep trials run in Ray worker processes, several at a time,
and are retried or resumed in fresh processes. Everything here goes through ``MlflowClient`` with
explicit run ids, so a trial can log from any process or node that reaches the tracking URI.

Run identity:

* parent: tags ``gil.kind=sweep``, ``gil.strategy``, ``gil.sweep.name`` (the Ray experiment name).
  Resuming the sweep reopens the parent with that name instead of creating another.
* child: tags ``mlflow.parentRunId``, ``gil.kind=trial``, ``gil.sweep.trial_id`` (the Ray trial id).
  A retried or resumed trial reopens its child (status back to RUNNING) instead of creating a
  second one; a failed attempt is marked FAILED by the trial before Ray retries it. The driver
  sets every child's final status from Ray's trial states at the end (:meth:`SweepParentRun.reconcile`),
  because a trial stopped early by the scheduler is killed without a chance to close its run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlflow.entities import Metric, Param, Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from gil.tracking.mlflow_tracker import TAG_KIND, TAG_STRATEGY, _ensure_experiment, _param_value

TAG_SWEEP_NAME = "gil.sweep.name"
TAG_TRIAL_ID = "gil.sweep.trial_id"
TAG_STOPPED_EARLY = "gil.sweep.stopped_early"
TAG_BEST_TRIAL = "gil.sweep.best_trial_id"
STAGE_METRIC = "stage"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"


def _search(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> list[Run]:
    condition = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return list(client.search_runs([experiment_id], condition, order_by=["attributes.start_time DESC"]))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    client.log_batch(run_id, params=[Param(key, _param_value(value)) for key, value in params.items()])


def _log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    stamp = _now_ms()
    client.log_batch(
        run_id, metrics=[Metric(key, float(value), stamp, step) for key, value in metrics.items()]
    )


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, created if missing.

    Call it with the SQLite URI before a local server is started on that store, so that the
    experiment's artifacts go next to the database like every other gil run.
    """
    return _ensure_experiment(MlflowClient(tracking_uri=uri), name, uri)


@dataclass(frozen=True)
class TrialOutcome:
    """What Ray says about one trial at the end of the sweep."""

    trial_id: str
    status: Literal["FINISHED", "FAILED", "KILLED"]
    stopped_early: bool


@dataclass
class SweepParentRun:
    """The parent run of one sweep."""

    client: MlflowClient
    experiment_id: str
    run_id: str

    @classmethod
    def open(
        cls, uri: str, experiment_id: str, sweep_name: str, strategy: str, params: dict[str, Any]
    ) -> SweepParentRun:
        """Reopen the parent of ``sweep_name`` (a resumed sweep) or create it with ``params``."""
        client = MlflowClient(tracking_uri=uri)
        existing = _search(client, experiment_id, {TAG_KIND: KIND_SWEEP, TAG_SWEEP_NAME: sweep_name})
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return cls(client, experiment_id, run_id)
        run = client.create_run(
            experiment_id,
            run_name=f"sweep {strategy} · {sweep_name}",
            tags={TAG_KIND: KIND_SWEEP, TAG_STRATEGY: strategy, TAG_SWEEP_NAME: sweep_name},
        )
        _log_params(client, run.info.run_id, params)
        return cls(client, experiment_id, run.info.run_id)

    def children(self) -> list[Run]:
        """The trial runs of this sweep."""
        return _search(
            self.client, self.experiment_id, {MLFLOW_PARENT_RUN_ID: self.run_id, TAG_KIND: KIND_TRIAL}
        )

    def reconcile(self, outcomes: list[TrialOutcome]) -> None:
        """Set every child's final status (and early-stop tag) from Ray's view of its trial."""
        by_trial = {outcome.trial_id: outcome for outcome in outcomes}
        for child in self.children():
            outcome = by_trial.get(child.data.tags.get(TAG_TRIAL_ID, ""))
            if outcome is None:
                continue
            self.client.set_tag(child.info.run_id, TAG_STOPPED_EARLY, str(outcome.stopped_early).lower())
            if child.info.status != outcome.status:
                self.client.set_terminated(child.info.run_id, outcome.status)

    def log_best(
        self, trial_id: str, params: dict[str, Any], metrics: dict[str, float], report: Path
    ) -> None:
        """The best trial's values (params ``best.<key>``, metrics ``best_<name>``) and the report file."""
        self.client.set_tag(self.run_id, TAG_BEST_TRIAL, trial_id)
        _log_params(self.client, self.run_id, {f"best.{key}": value for key, value in params.items()})
        _log_metrics(self.client, self.run_id, {f"best_{key}": value for key, value in metrics.items()})
        self.client.log_artifact(self.run_id, str(report))

    def end(self, status: Literal["FINISHED", "FAILED", "KILLED"]) -> None:
        self.client.set_terminated(self.run_id, status)


@dataclass
class TrialRun:
    """The child run of one Ray trial, written from the trial's own process.

    ``logged_stages``: stages whose metrics the run already holds. An attempt that died after
    logging a stage but before Ray saved that stage's checkpoint redoes the stage when it is
    retried or resumed; training is deterministic given (seed, stage), so the redone stage's
    metrics are not logged a second time.
    """

    client: MlflowClient
    run_id: str
    logged_stages: set[int] = field(default_factory=set)

    @classmethod
    def open(
        cls,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        trial_id: str,
        name: str,
        params: dict[str, Any],
    ) -> TrialRun:
        """Reopen the child of ``trial_id`` (a retried or resumed trial) or create it."""
        client = MlflowClient(tracking_uri=uri)
        existing = _search(
            client, experiment_id, {MLFLOW_PARENT_RUN_ID: parent_run_id, TAG_TRIAL_ID: trial_id}
        )
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            logged = {metric.step for metric in client.get_metric_history(run_id, STAGE_METRIC)}
            return cls(client, run_id, logged)
        run = client.create_run(
            experiment_id,
            run_name=name,
            tags={MLFLOW_PARENT_RUN_ID: parent_run_id, TAG_KIND: KIND_TRIAL, TAG_TRIAL_ID: trial_id},
        )
        _log_params(client, run.info.run_id, params)
        return cls(client, run.info.run_id)

    def log_stage(self, stage: int, metrics: dict[str, float]) -> None:
        """Metrics after ``stage`` (MLflow step = stage), once per stage."""
        if stage in self.logged_stages:
            return
        _log_metrics(self.client, self.run_id, {**metrics, STAGE_METRIC: stage}, step=stage)
        self.logged_stages.add(stage)

    def end(self, status: Literal["FINISHED", "FAILED"]) -> None:
        self.client.set_terminated(self.run_id, status)
