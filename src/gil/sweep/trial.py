"""One sweep trial, as it runs in a Ray worker: train every stage, score and report after each.

The trial trains the strategy with the sampled hyperparameters (training seed ``train.seeds[0]``)
and scores the model right after each stage on the split's *validation* cells, never on the test
cells the benchmark reports on (a choice made on the test cells would make the reported numbers
optimistic), so row ``s`` of the validation results matrix is known after stage ``s``. It reports
the objective of the partial matrix after every stage (``training_iteration = stage + 1``) with a
Ray checkpoint holding the stage checkpoint and the rows so far: a crashed trial is retried from its
last finished stage.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from gil.config import Config
from gil.data.layout import ProcessedData, Split
from gil.sweep.space import Objective, apply_to_strategy
from gil.tracking.base import NullTracker

if TYPE_CHECKING:
    from gil.scoring import EvaluationInputs

_ROWS_FILE = "rows.json"


@dataclass(frozen=True)
class TrialTracking:
    """Where trials log: the tracking URI they can reach and the sweep's parent run."""

    uri: str
    experiment_id: str
    parent_run_id: str


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides the data (sent once through Ray's object store)."""

    config: Config
    strategy: str
    objective: Objective
    tracking: TrialTracking | None
    threads: int
    # The shared base stage of seed train.seeds[0] (the file's bytes: nodes need no shared path), or
    # None: each trial trains its own base stage, with the sampled train.* values.
    base_checkpoint: bytes | None = None


class _LastEpoch(NullTracker):
    """Keeps the trainer's latest epoch losses and stage timings (reported with each stage)."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.latest.update({f"train_{name}": float(value) for name, value in metrics.items()})


def _restore_rows(run_dir: Path) -> list[list[float]]:
    """Resume a retried or resumed trial from its Ray checkpoint: stage checkpoint and rows so far."""
    from gil.train.checkpoint import stage_path

    checkpoint = tune.get_checkpoint()
    run_dir.mkdir(parents=True)
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as directory:
        rows = json.loads((Path(directory) / _ROWS_FILE).read_text())
        stage_file = stage_path(run_dir, len(rows) - 1)
        shutil.copy2(Path(directory) / stage_file.name, stage_file)
    return rows


def selection_inputs(config: Config, data: ProcessedData, split: Split) -> EvaluationInputs:
    """What a trial is scored on: the validation cells, never the test cells the benchmark reports."""
    from gil.scoring import EvaluationInputs

    return EvaluationInputs(config, data, split, cells="validation")


def _train_and_report(
    params: dict[str, Any], setup: TrialSetup, data: ProcessedData, split: Split, scratch: Path, run: Any
) -> None:
    from gil.model import GeneTransformer
    from gil.train.checkpoint import stage_path
    from gil.train.loop import StageTrainer

    config = apply_to_strategy(setup.config, setup.strategy, params)
    seed = config.train.seeds[0]
    run_dir = scratch / "run"
    rows = _restore_rows(run_dir)
    last_epoch = _LastEpoch()
    base_dir = None
    if setup.base_checkpoint is not None:
        base_dir = scratch / "base"
        base_file = stage_path(base_dir / f"seed_{seed}", 0)
        base_file.parent.mkdir(parents=True)
        base_file.write_bytes(setup.base_checkpoint)
    trainer = StageTrainer(
        config,
        setup.strategy,
        seed,
        data,
        split,
        run_dir,
        tracker=last_epoch,
        progress=False,
        base_dir=base_dir,
    )
    evaluation = selection_inputs(config, data, split)

    def report_stage(stage: int, model: GeneTransformer) -> None:
        row = evaluation.regression(model, stage)
        rows.append(row.mse)
        metrics = {
            "stage": float(stage),
            **setup.objective.stage_metrics(rows),
            **last_epoch.latest,
            "mse_seen": row.seen_mse,
        }
        # row.mse covers the gene sets learned so far (0..stage), set_names all of them
        metrics |= {f"mse_{name}": value for name, value in zip(split.set_names, row.mse, strict=False)}
        metrics = {name: value for name, value in metrics.items() if math.isfinite(value)}
        if run is not None:
            run.log_stage(stage, metrics)
        snapshot = scratch / f"report_{stage}"
        snapshot.mkdir()
        shutil.copy2(stage_path(run_dir, stage), snapshot)
        (snapshot / _ROWS_FILE).write_text(json.dumps(rows))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(snapshot))
        shutil.rmtree(snapshot)

    trainer.run(fresh=False, on_stage_end=report_stage)


def run_trial(params: dict[str, Any], setup: TrialSetup, data: ProcessedData, split: Split) -> None:
    """One trial: train every stage with ``params`` applied, report after each stage.

    The MLflow child run is closed FAILED on an exception (Ray may retry the trial, which reopens
    it). A trial stopped by the scheduler exits through ``SystemExit`` inside ``tune.report`` or is
    killed; the driver sets those runs' final status.
    """
    import torch

    torch.set_num_threads(setup.threads)
    run = None
    if setup.tracking is not None:
        from gil.tracking.sweep_runs import TrialRun

        context = tune.get_context()
        tracking = setup.tracking
        run = TrialRun.open(
            tracking.uri,
            tracking.experiment_id,
            tracking.parent_run_id,
            context.get_trial_id(),
            context.get_trial_name(),
            params,
        )
    try:
        with tempfile.TemporaryDirectory(prefix="gil-trial-") as scratch:
            _train_and_report(params, setup, data, split, Path(scratch), run)
    except Exception:
        if run is not None:
            run.end("FAILED")
        raise
    if run is not None:
        run.end("FINISHED")
