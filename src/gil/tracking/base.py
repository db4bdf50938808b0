"""The interface between the training/evaluation core and an experiment tracker.

Why: the core (data, model, strategies, metrics) must not import MLflow. Training and evaluation
call these methods; :class:`NullTracker` does nothing (tracking disabled, tests of the core), and
:mod:`gil.tracking.mlflow_tracker` records everything in MLflow.

Run identity: one parent run per (strategy name, seed, config hash). Training opens it with
``resume=False`` (a fresh run; older runs with the same identity are marked superseded); evaluation,
a separate process, reopens it with ``resume=True``. One nested child run per stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # annotations only: readers of runs (gil leaderboard) never load torch
    import torch


class Tracker(Protocol):
    """What the core reports while it trains and evaluates."""

    def begin_run(
        self, strategy: str, seed: int, params: dict[str, Any], tags: dict[str, str], resume: bool
    ) -> None:
        """Open the parent run of (strategy, seed); ``params`` is the flattened resolved config."""

    def begin_stage(self, stage: int) -> None:
        """Open (or reopen) the nested child run of ``stage``."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log metrics on the open stage run (or the parent run when no stage is open)."""

    def log_stage_model(self, stage: int, model: torch.nn.Module, vocabulary: list[str]) -> None:
        """Log the stage's model (with its gene vocabulary) and register it as a model version."""

    def end_stage(self) -> None:
        """Close the open stage run."""

    def log_summary(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        """Log summary metrics and artifact files on the parent run."""

    def log_dataset(
        self, name: str, source_path: Path | str, digest: str, n_cells: int, n_genes: int
    ) -> None:
        """Record the input dataset (metadata and a content digest, not the data) on the parent run."""

    def end_run(self, status: Literal["FINISHED", "FAILED"] = "FINISHED") -> None:
        """Close the parent run with ``status``."""


class NullTracker:
    """A tracker that records nothing (tracking disabled)."""

    def begin_run(self, strategy, seed, params, tags, resume) -> None:  # noqa: ANN001
        pass

    def begin_stage(self, stage: int) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_stage_model(self, stage: int, model: torch.nn.Module, vocabulary: list[str]) -> None:
        pass

    def end_stage(self) -> None:
        pass

    def log_summary(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        pass

    def log_dataset(
        self, name: str, source_path: Path | str, digest: str, n_cells: int, n_genes: int
    ) -> None:
        pass

    def end_run(self, status: Literal["FINISHED", "FAILED"] = "FINISHED") -> None:
        pass
