"""Distributed hyperparameter sweeps: Ray Tune runs trials, Optuna's TPE proposes them, ASHA stops bad ones.

The driver: starts or joins Ray, sets up the search (Optuna's TPE in Ray Tune, ASHA on the stage
index), opens the sweep's MLflow parent run and writes the report. A trial is
:mod:`gil.sweep.trial`; what the sweep found (records, best trial, Pareto set) is
:mod:`gil.sweep.selection`. An interrupted sweep resumed with ``Tuner.restore`` repeats no stage
whose checkpoint Ray had registered (only a stage interrupted between its report and that
registration runs again; such a trial is not counted complete in the interrupted sweep's summary).

Decisions (why):

* **Data transport: Ray's object store.** The driver loads the processed data and the split once
  and hands them to trials with ``tune.with_parameters``: nodes of a cluster need no shared
  filesystem for the data, a missing data directory fails before Ray starts, and trials on one
  node share one read-only copy. Trials only need ``gil`` installed (the same environment on every
  node). The Ray storage path (``sweep.storage_path``, default ``ray_results/`` in the project,
  made absolute) must be shared by all nodes of a multi-node cluster (NFS), as Ray requires for
  checkpoints.
* **Search: ``OptunaSearch`` (seeded TPE, ``constant_liar=True``) in a ``ConcurrencyLimiter``.**
  A trial stopped before its last stage (by ASHA or the time budget) is told to Optuna as
  *pruned*, not complete: its partial score is not comparable with full runs (less time to forget),
  and TPE ranks pruned trials by their intermediate values instead.
* **Scheduler: ASHA on the stage index** with a grace period of at least 2 stages (covering the
  first incremental stage), so a configuration is not kept for learning the base genes fast only
  to forget them later. ``objective.kind: pareto`` (forgetting vs plasticity) is multi-objective:
  no ASHA (it is single-objective), every trial runs to the end, the result is the Pareto set.
* **Tracking** (see :mod:`gil.tracking.sweep_runs`): one parent run per sweep, one child per trial,
  logged with ``MlflowClient`` from the trials. For a SQLite store with concurrent trials the sweep
  serves the store with a local ``mlflow server`` on 127.0.0.1 (SQLite with concurrent writers
  loses writes to "database is locked") and stops it at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from gil.cluster.session import ray_session
from gil.config import Config, flatten
from gil.data.layout import ProcessedData, Split
from gil.errors import GilError
from gil.sweep.selection import summarize_sweep, trial_records
from gil.sweep.space import (
    Distribution,
    SweepConfig,
    load_sweep_config,
    optuna_space,
    strategy_space,
    write_params_file,
)
from gil.sweep.trial import TrialSetup, TrialTracking, run_trial

# --- search ---------------------------------------------------------------------------------------


class _StageAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a trial stopped before its last stage was pruned."""

    def __init__(self, *args: Any, last_stage: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_stage = last_stage

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None and result.get("stage", -1) < self._last_stage:
            result = None  # OptunaSearch records a trial without a final value as PRUNED
        super().on_trial_complete(trial_id, result, error)


def _tune_config(
    sweep: SweepConfig,
    space: dict[str, Distribution],
    n_stages: int,
    num_samples: int,
    max_concurrent: int,
    time_budget_s: float | None,
) -> tune.TuneConfig:
    import optuna

    objective = sweep.objective
    metrics = objective.metrics
    searcher = _StageAwareOptunaSearch(
        space=optuna_space(space),
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode="min" if len(metrics) == 1 else ["min"] * len(metrics),
        sampler=optuna.samplers.TPESampler(seed=sweep.seed, constant_liar=True),
        last_stage=n_stages,
    )
    if objective.kind == "weighted" and sweep.scheduler == "asha":
        max_t = n_stages + 1  # training_iteration after the last stage
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric="score",
            mode="min",
            max_t=max_t,
            grace_period=min(sweep.grace_stages, max_t),
            reduction_factor=sweep.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=max_concurrent),
        scheduler=scheduler,
        num_samples=num_samples,
        time_budget_s=time_budget_s,
        reuse_actors=True,
    )  # saves a process start and the imports per trial


# --- the driver -----------------------------------------------------------------------------------


def _gpus_per_trial(requested: float | None, max_concurrent: int) -> float:
    """GPUs per trial: as requested, else a share of the cluster's GPUs (none when it has none)."""
    import ray

    available = float(ray.cluster_resources().get("GPU", 0.0))
    if requested is None:
        return min(1.0, available / max_concurrent) if available else 0.0
    if requested > 0 and not available:
        raise GilError(f"--gpus-per-trial {requested} but the Ray cluster has no GPU; pass 0")
    return requested


@dataclass
class _SweepTracking:
    """The sweep's MLflow side, as seen by the driver."""

    trials: TrialTracking
    parent: Any  # gil.tracking.sweep_runs.SweepParentRun (mlflow is imported lazily)


@contextlib.contextmanager
def _sweep_tracking(
    config: Config, strategy: str, sweep_name: str, params: dict[str, Any], max_concurrent: int
) -> Iterator[_SweepTracking | None]:
    """Open the sweep's parent run (serving a SQLite store when trials write concurrently).

    An exception marks the parent FAILED (KILLED on Ctrl-C); the server is stopped in every case.
    The caller ends the parent on success.
    """
    if not config.tracking.enabled:
        yield None
        return
    from gil.tracking.server import (
        check_reachable,
        resolve_tracking_uri,
        sqlite_artifact_root,
        start_local_server,
        stop_server,
    )
    from gil.tracking.sweep_runs import SweepParentRun, ensure_experiment

    uri = resolve_tracking_uri(config.tracking)
    try:
        check_reachable(uri)
    except GilError as error:
        if config.tracking.on_unreachable == "fail":
            raise
        warnings.warn(f"{error}; tracking is disabled for this sweep", stacklevel=3)
        yield None
        return
    experiment_id = ensure_experiment(uri, config.experiment_name())
    root = sqlite_artifact_root(uri)
    server = None
    if root is not None and max_concurrent > 1:
        server, uri = start_local_server(uri, root)
    try:
        parent = SweepParentRun.open(uri, experiment_id, sweep_name, strategy, params)
        try:
            yield _SweepTracking(TrialTracking(uri, experiment_id, parent.run_id), parent)
        except BaseException as error:
            parent.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            raise
    finally:
        if server is not None:
            stop_server(server)


def _experiment_name(storage: Path, strategy: str, resume: bool) -> str:
    """A new ``<strategy>-<timestamp>`` name, or the latest restorable one when resuming."""
    if not resume:
        return f"{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidates = sorted(
        (path for path in storage.glob(f"{strategy}-*") if tune.Tuner.can_restore(path)),
        key=lambda path: path.name,
    )
    if not candidates:
        raise GilError(f"no sweep of {strategy!r} to resume under {storage}; run without --resume")
    return candidates[-1].name


def run_sweep(
    config: Config,
    strategy: str,
    processed_dir: Path | str,
    split_dir: Path | str,
    *,
    address: str = "local",
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    time_budget_s: float | None = None,
    resume: bool = False,
    storage_path: Path | str | None = None,
    write_best_params: bool = False,
    params_path: Path | str = Path("params.yaml"),
    report_dir: Path | str = Path("reports/sweeps"),
    base_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Sweep the hyperparameters of ``strategy`` (``sweep.spaces.<strategy>``); return the summary.

    Options left None come from the ``sweep:`` section. The summary (also written atomically to
    ``<report_dir>/<strategy>.json`` unless the sweep was interrupted) holds every trial, the best
    complete trial (lowest score; with ``pareto`` the Pareto point with the lowest score) and, for
    ``pareto``, the Pareto set. ``write_best_params`` writes the best values into ``params_path``,
    keeping the rest of the file and its comments. ``resume`` continues the latest sweep of this
    strategy under the storage path: finished trials are kept, unfinished and errored ones resume
    from their last finished stage, and missing samples are drawn. ``base_dir`` (the pipeline's
    ``checkpoints/base``): every trial starts stage 1 from that shared base stage, as the
    benchmark's rows do, and the sampled ``train.*`` values apply to stages 1..n only.
    """
    from gil.files import write_json

    sweep = load_sweep_config(config, params_path)
    space = strategy_space(config, sweep, strategy, params_path)
    num_samples = num_samples or sweep.num_samples
    max_concurrent = max_concurrent or sweep.max_concurrent
    cpus = cpus_per_trial or sweep.cpus_per_trial
    time_budget_s = time_budget_s or sweep.time_budget_s
    storage = Path(storage_path or sweep.storage_path).resolve()
    data, split = ProcessedData.load(processed_dir), Split.load(split_dir)
    split.held_out_rows("validation")  # trials select on validation cells: fail before Ray starts
    base_checkpoint = _base_checkpoint(config, space, strategy, base_dir)
    n_stages = split.n_stages
    sweep_name = _experiment_name(storage, strategy, resume)
    started = time.monotonic()
    parent_params = {
        "strategy": strategy,
        "num_samples": num_samples,
        "max_concurrent": max_concurrent,
        "scored_on": "validation cells",
        "base": str(base_dir) if base_dir is not None else "trained by each trial",
        **flatten({"objective": sweep.objective.model_dump()}),
        **{f"space.{key}": d.model_dump(mode="json") for key, d in space.items()},
    }
    with (
        ray_session(address),
        _sweep_tracking(config, strategy, sweep_name, parent_params, max_concurrent) as tracking,
    ):
        resources = {
            "cpu": cpus,
            "gpu": _gpus_per_trial(
                sweep.gpus_per_trial if gpus_per_trial is None else gpus_per_trial, max_concurrent
            ),
        }
        setup = TrialSetup(
            config,
            strategy,
            sweep.objective,
            tracking.trials if tracking else None,
            max(1, round(cpus)),
            base_checkpoint,
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, setup=setup, data=data, split=split), resources
        )
        experiment_path = storage / sweep_name
        if resume:
            tuner = tune.Tuner.restore(str(experiment_path), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=_tune_config(sweep, space, n_stages, num_samples, max_concurrent, time_budget_s),
                run_config=tune.RunConfig(
                    name=sweep_name,
                    storage_path=str(storage),
                    failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=1,
                ),
            )
        results = tuner.fit()
        unfinished = len(results) - results.num_terminated - results.num_errors
        interrupted = unfinished > 0 or (time_budget_s is None and len(results) < num_samples)
        child_runs = {}
        if tracking is not None:
            from gil.tracking.sweep_runs import TAG_TRIAL_ID

            child_runs = {run.data.tags[TAG_TRIAL_ID]: run.info.run_id for run in tracking.parent.children()}
        records = trial_records(results, n_stages, interrupted, child_runs)
        summary = summarize_sweep(
            strategy,
            sweep,
            sweep_name,
            experiment_path,
            records,
            interrupted,
            tracking.parent.run_id if tracking else None,
        )
        summary |= {
            "budget": sweep_budget(sweep, num_samples, time_budget_s),
            "scored_on": "validation",
            "base": str(base_dir) if base_dir is not None else None,
            "wall_s": round(time.monotonic() - started, 1),
        }
        if tracking is not None:
            _finish_tracking(tracking, records, summary, Path(report_dir) / f"{strategy}.json")
        elif not interrupted:
            write_json(Path(report_dir) / f"{strategy}.json", summary)
    if write_best_params and summary["best"] is not None and not interrupted:
        write_params_file(Path(params_path), summary["best"]["params"])
    return summary


def _base_checkpoint(
    config: Config, space: dict[str, Distribution], strategy: str, base_dir: Path | str | None
) -> bytes | None:
    """The shared base stage trials start from (seed ``train.seeds[0]``), read once by the driver."""
    if base_dir is None:
        return None
    from gil.train.checkpoint import stage_path

    shared = [key for key in space if key.startswith("model.")]
    if shared:
        raise GilError(
            f"sweep.spaces.{strategy}: {shared} change the model, so trials cannot start from the shared "
            "base stage; drop --base or those keys"
        )
    path = stage_path(Path(base_dir) / f"seed_{config.train.seeds[0]}", 0)
    if not path.is_file():
        raise GilError(f"{path} not found; run `gil train-base --out {base_dir}` (or `dvc repro base`) first")
    return path.read_bytes()


def sweep_budget(sweep: SweepConfig, num_samples: int, time_budget_s: float | None) -> dict[str, Any]:
    """What makes two sweeps' searches equal: trials, scheduler, objective and sampler seed."""
    return {
        "num_samples": num_samples,
        "time_budget_s": time_budget_s,
        "scheduler": sweep.scheduler,
        "grace_stages": sweep.grace_stages,
        "reduction_factor": sweep.reduction_factor,
        "objective": sweep.objective.model_dump(),
        "seed": sweep.seed,
    }


def _finish_tracking(
    tracking: _SweepTracking, records: list[dict[str, Any]], summary: dict[str, Any], report: Path
) -> None:
    """Final child statuses, the best trial on the parent, the report file; close the parent."""
    from gil.files import write_json
    from gil.tracking.sweep_runs import TrialOutcome

    parent = tracking.parent
    parent.reconcile([TrialOutcome(r["trial_id"], r["status"], r["stopped_early"]) for r in records])
    if summary["interrupted"]:
        parent.end("KILLED")
        return
    write_json(report, summary)
    best = summary["best"]
    if best is not None:
        parent.log_best(best["trial_id"], best["params"], best["metrics"], report)
    parent.end("FINISHED")


def sweep_command(
    config: Config,
    strategy: str,
    params_path: Path,
    address: str,
    num_samples: int | None,
    max_concurrent: int | None,
    cpus_per_trial: float | None,
    gpus_per_trial: float | None,
    time_budget_s: float | None,
    resume: bool,
    write_best: bool,
    processed_dir: Path = Path("data/processed"),
    split_dir: Path = Path("data/split"),
    base_dir: Path | None = None,
    report_dir: Path = Path("reports/sweeps"),
) -> str:
    """Run ``gil sweep`` and return the text to print: the best trial, or how to resume."""
    summary = run_sweep(
        config,
        strategy,
        processed_dir,
        split_dir,
        address=address,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        time_budget_s=time_budget_s,
        resume=resume,
        write_best_params=write_best,
        params_path=params_path,
        base_dir=base_dir,
        report_dir=report_dir,
    )
    counts = (
        f"{summary['n_trials']} trials: {summary['n_complete']} complete, "
        f"{summary['n_stopped_early']} stopped early, {summary['n_failed']} failed"
    )
    if summary["interrupted"]:
        return f"sweep {summary['sweep_name']} interrupted ({counts}); continue it with --resume"
    best = summary["best"]
    if best is None:
        return f"sweep {summary['sweep_name']}: no trial completed every stage ({counts})"
    values = ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in best["params"].items()
    )
    metrics = best["metrics"]
    lines = [
        f"sweep {summary['sweep_name']} ({counts})",
        f"best {best['trial_id']}: {values}",
        f"  score {metrics['score']:.4f}, forgetting {metrics['forgetting']:.4f}, "
        f"final MSE {metrics['final_mse']:.4f}, plasticity {metrics['plasticity']:.4f}",
        f"report: {report_dir / f'{strategy}.json'}",
    ]
    if summary["pareto"] is not None:
        lines.append(f"Pareto set (forgetting vs plasticity): {len(summary['pareto'])} trials")
    if write_best:
        lines.append(f"wrote the best values into {params_path}")
    return "\n".join(lines)
