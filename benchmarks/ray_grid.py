"""Wall time of the benchmark's training with the local backend against Ray, and Ray's cost per task.

Why: ``compute.backend: ray`` is worth it on a cluster or a multi-GPU machine; on one machine it
should cost little more than the local worker processes. This measures, on this machine and the
project's data and params:

1. ``local``: ``gil train-base`` then ``gil train`` of every strategy of ``benchmark``, one after
   another as ``dvc repro`` runs them, each training its seeds in ``compute.jobs`` processes.
2. ``ray``: the same commands as Ray tasks, each command starting its own local Ray as a `gil`
   command does (its start-up is also reported apart), ``cpus_per_job`` = cores / ``compute.jobs``
   so that as many jobs run at once as local processes.
3. ``ray grid``: the base, then every (strategy, seed) submitted at once (``gil train -s A -s B``).
4. Per-task overhead: jobs that do no training (the data shipped, the job's checkpoints shipped,
   the scratch directory written) run one at a time on a warm worker; and ``(ray - local) / tasks``.

Tracking is off (MLflow is the driver's either way). The checkpoints of both backends are checked
to be the same. Run after ``dvc repro split`` (or pass --processed/--split)::

    .venv/bin/python benchmarks/ray_grid.py [--epochs 2] [--params params.yaml]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from gil.config import Config, load_config  # noqa: E402
from gil.data.layout import ProcessedData, Split  # noqa: E402
from gil.train.checkpoint import load_checkpoint, stage_path  # noqa: E402
from gil.train.loop import train_base, train_strategies  # noqa: E402
from gil.train.parallel import SeedJob  # noqa: E402


def _config(params: Path, epochs: int, **compute: Any) -> Config:
    config = load_config(params)
    train = config.train.model_copy(update={"epochs_per_stage": epochs, "base_epochs": None})
    tracking = config.tracking.model_copy(update={"enabled": False})
    return config.model_copy(
        update={"train": train, "tracking": tracking, "compute": config.compute.model_copy(update=compute)}
    )


def _timed(action) -> float:  # noqa: ANN001
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _train(config: Config, data: ProcessedData, split: Split, out: Path, grid: bool) -> float:
    """Seconds for the base stage then every strategy (one by one, or all at once with ``grid``),
    each command with its own Ray session as under ``dvc repro`` (with the ray backend)."""
    names = config.benchmark
    commands = [None, names] if grid else [None, *([name] for name in names)]

    def command(strategies: list[str] | None) -> None:
        with _backend(config) as runner:
            common = {"progress": False, "fresh": True, "runner": runner}
            if strategies is None:
                train_base(config, data, split, out / "base", **common)
            else:
                checkpoints = {name: out / name for name in strategies}
                train_strategies(config, checkpoints, data, split, base_dir=out / "base", **common)

    return _timed(lambda: [command(strategies) for strategies in commands])


@contextlib.contextmanager
def _backend(config: Config) -> Iterator[Any]:
    """No runner (local processes), or a fresh local Ray and its runner (as one `gil` command)."""
    if config.compute.backend == "local":
        yield None
        return
    from gil.cluster.runner import RayRunner
    from gil.cluster.session import ray_session

    with ray_session("local"):
        yield RayRunner(config.compute)


def _idle(job: SeedJob) -> None:
    """A job that trains nothing (its inputs still travel both ways)."""
    job.load_data()


def _same_checkpoints(a: Path, b: Path, config: Config, n_stages: int) -> bool:
    for name in config.benchmark:
        for seed in config.train.seeds:
            for stage in range(n_stages + 1):
                x = load_checkpoint(stage_path(a / name / f"seed_{seed}", stage))["model"]
                y = load_checkpoint(stage_path(b / name / f"seed_{seed}", stage))["model"]
                if not all(torch.equal(x[k], y[k]) for k in x):
                    return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage (params.yaml: 15)")
    parser.add_argument("--idle-jobs", type=int, default=6)
    args = parser.parse_args()

    from gil.cluster.runner import RayRunner
    from gil.cluster.session import ray_session

    cores = os.cpu_count() or 1
    local = _config(args.params, args.epochs, backend="local")
    jobs = local.compute.jobs
    remote = _config(args.params, args.epochs, backend="ray", cpus_per_job=cores / jobs)
    data, split = ProcessedData.load(args.processed), Split.load(args.split)
    n_tasks = len(local.train.seeds) * (1 + len(local.benchmark))
    with tempfile.TemporaryDirectory(prefix="gil-ray-bench-") as tmp:
        root = Path(tmp)
        seconds = {
            "local": _train(local, data, split, root / "local", grid=False),
            "ray": _train(remote, data, split, root / "ray", grid=False),
            "ray grid": _train(remote, data, split, root / "grid", grid=True),
        }
        started = time.perf_counter()
        with ray_session("local"):
            seconds["ray start"] = time.perf_counter() - started
            idle = _config(args.params, args.epochs, backend="ray", cpus_per_job=cores)  # one at a time
            seeds = local.train.seeds
            idle_jobs = [  # each ships its seed's finished stages (and gets nothing back)
                SeedJob(
                    idle, "finetune", seeds[i % len(seeds)], args.processed, split, root / "ray" / "finetune"
                )
                for i in range(args.idle_jobs + 1)
            ]
            runner = RayRunner(idle.compute)
            list(runner(_idle, idle_jobs[:1], "warm-up", False))  # a worker process started
            seconds["idle tasks"] = _timed(lambda: list(runner(_idle, idle_jobs[1:], "idle", False)))
        same = _same_checkpoints(root / "local", root / "ray", local, split.n_stages) and _same_checkpoints(
            root / "local", root / "grid", local, split.n_stages
        )
    per_idle = seconds["idle tasks"] / args.idle_jobs
    overhead = (seconds["ray"] - seconds["local"]) / n_tasks
    rows = [
        (f"local (compute.jobs {jobs}), stage by stage", seconds["local"]),
        ("ray, stage by stage (as dvc repro)", seconds["ray"]),
        ("ray, base then the whole grid at once", seconds["ray grid"]),
        ("  of which: ray start, per command", seconds["ray start"]),
    ]
    print(
        f"{n_tasks} training tasks ({len(local.train.seeds)} seeds x base + "
        f"{len(local.benchmark)} strategies), "
        f"{args.epochs} epochs per stage, {cores} cores; every command starts its own local Ray"
    )
    for label, value in rows:
        print(f"  {label:<40} {value:8.1f} s")
    print(
        f"  Ray overhead per task: {per_idle:.2f} s for a task that trains nothing (one at a time, its "
        f"checkpoints shipped); (ray - local) / tasks = {overhead:+.2f} s of wall time"
    )
    print(f"  checkpoints identical to the local backend's: {same}")
    print(
        json.dumps(
            {
                "epochs": args.epochs,
                "tasks": n_tasks,
                "cores": cores,
                "jobs": jobs,
                **{k.replace(" ", "_"): round(v, 2) for k, v in seconds.items()},
                "idle_task_s": round(per_idle, 3),
                "overhead_per_task_s": round(overhead, 3),
                "identical": same,
            }
        )
    )


if __name__ == "__main__":
    main()
