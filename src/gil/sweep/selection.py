"""What a finished (or interrupted) sweep found: one record per trial, the best trial, the Pareto set.

Pure functions of Ray's results (read through their attributes only), so the selection rules are
tested on hand-built records without running Ray.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gil.sweep.space import SweepConfig

_KEPT_METRICS = (
    "stage",
    "score",
    "forgetting",
    "final_mse",
    "plasticity",
    "delta",
    "bwt",
    "base_delta",
    "time_total_s",
)  # the last is Ray's: seconds the trial has run
_KEPT_PREFIXES = ("mse_", "train_")


def _checkpointed_stage(result: Any) -> float | None:
    """The last stage whose Ray checkpoint the driver registered (what a resumed trial restarts from).

    A trial reports a stage and its checkpoint together, but the driver writes the result first and
    registers the checkpoint a moment later: a sweep interrupted in between has the final stage's
    metrics but will repeat that stage on ``--resume``, so it is not complete yet.
    """
    stages = [metrics.get("stage") for _, metrics in result.best_checkpoints or []]
    return max((stage for stage in stages if stage is not None), default=None)


def trial_records(
    results: Iterable[Any], n_stages: int, interrupted: bool, child_runs: dict[str, str]
) -> list[dict[str, Any]]:
    """One record per trial: sampled params, last reported metrics, final status."""
    records = []
    for result in results:
        metrics = result.metrics or {}
        complete = metrics.get("stage") == n_stages and _checkpointed_stage(result) == n_stages
        if result.error is not None:
            status = "FAILED"
        else:
            status = "FINISHED" if complete or not interrupted else "KILLED"
        trial_id = metrics.get("trial_id") or Path(result.path).name
        records.append(
            {
                "trial_id": trial_id,
                "params": dict(result.config or {}),
                "metrics": {
                    k: v for k, v in metrics.items() if k.startswith(_KEPT_PREFIXES) or k in _KEPT_METRICS
                },
                "status": status,
                "stopped_early": status == "FINISHED" and not complete,
                "complete": complete,
                "mlflow_run_id": child_runs.get(trial_id),
            }
        )
    return records


def pareto_front(records: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """The complete trials that no other complete trial beats on every metric (all minimised)."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        worse_nowhere = all(a["metrics"][m] <= b["metrics"][m] for m in metrics)
        return worse_nowhere and any(a["metrics"][m] < b["metrics"][m] for m in metrics)

    return [r for r in records if not any(dominates(other, r) for other in records if other is not r)]


def summarize_sweep(
    strategy: str,
    sweep: SweepConfig,
    sweep_name: str,
    experiment_path: Path,
    records: list[dict[str, Any]],
    interrupted: bool,
    parent_run_id: str | None,
) -> dict[str, Any]:
    """The sweep's report: counts, every trial, the best complete trial and (pareto) the Pareto set.

    The best trial is the complete one with the lowest score; under ``objective.kind: pareto`` it is
    the Pareto point with the lowest score.
    """
    complete = [r for r in records if r["complete"] and r["status"] == "FINISHED"]
    objective = sweep.objective
    pareto = pareto_front(complete, objective.metrics) if objective.kind == "pareto" else None
    candidates = pareto if pareto is not None else complete
    best = min(candidates, key=lambda r: r["metrics"]["score"]) if candidates else None
    return {
        "strategy": strategy,
        "sweep_name": sweep_name,
        "experiment_path": str(experiment_path),
        "objective": objective.model_dump(),
        "interrupted": interrupted,
        "n_trials": len(records),
        "n_complete": len(complete),
        "n_stopped_early": sum(r["stopped_early"] for r in records),
        "n_failed": sum(r["status"] == "FAILED" for r in records),
        "best": best,
        "pareto": pareto,
        "trials": sorted(records, key=lambda r: r["trial_id"]),
        "mlflow_parent_run_id": parent_run_id,
    }
