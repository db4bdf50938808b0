"""Training several seeds at once, each in its own process.

Why processes: on a CPU the small models of the benchmark use two threads poorly (their kernels are
short, so the threads spend much of a step waiting for each other): three one-thread processes on
two cores train about 1.3x more cells per second than one two-thread process. Each worker runs with
``train.threads`` threads, as a sequential run does, so the results are bit-identical whatever
``compute.jobs`` is.

Workers only train and write checkpoints; they never touch the tracker. The parent records each
seed once that seed is done (see :meth:`gil.train.loop.StageTrainer.log_trained_stages`), so one
process writes to MLflow and a failed seed leaves no run behind.

A *runner* runs ``work(job)`` for a list of jobs and yields ``(job, result)`` as jobs finish, then
raises the first failure: :func:`run_seeds_in_processes` here, or Ray tasks on a cluster
(:class:`gil.cluster.runner.RayRunner`), chosen by the command line (the core imports no Ray).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gil.config import Config
from gil.data.layout import ProcessedData, Split
from gil.train.checkpoint import completed_stages, stage_path
from gil.train.devices import on_device, spread_devices
from gil.train.workers import worker_context

# Where a job's files go when they are shipped to another machine (see SeedJob.inputs).
SHIPPED_RUN, SHIPPED_BASE = "run", "base"


@dataclass(frozen=True)
class SeedJob:
    """Everything a worker needs for one seed of one strategy (picklable)."""

    config: Config
    strategy_name: str | None  # None: the shared base stage
    seed: int
    data: ProcessedData | Path  # the directory when the data was loaded from one (no array copies)
    split: Split
    checkpoints: Path  # the strategy's directory, holding seed_<seed>/
    base_dir: Path | None = None
    fresh: bool = False
    device: str | None = None  # None: train.device

    @property
    def run_dir(self) -> Path:
        return self.checkpoints / f"seed_{self.seed}"

    def load_data(self) -> ProcessedData:
        return ProcessedData.load(self.data) if isinstance(self.data, Path) else self.data

    def worker_config(self) -> Config:
        """The config the worker runs with: on the job's device when it has one."""
        return on_device(self.config, self.device)

    def inputs(self) -> dict[str, Path]:
        """The checkpoint files the job reads, by the relative name they get on another machine:
        the seed's finished stages (to resume; none when ``fresh``) and its base stage."""
        files = {}
        if not self.fresh:
            for stage in completed_stages(self.run_dir):
                files[f"{SHIPPED_RUN}/seed_{self.seed}/stage_{stage}.pt"] = stage_path(self.run_dir, stage)
        if self.base_dir is not None:
            base = stage_path(self.base_dir / f"seed_{self.seed}", 0)
            if base.is_file():  # a missing one fails in the worker, like a local run
                files[f"{SHIPPED_BASE}/seed_{self.seed}/stage_0.pt"] = base
        return files

    def moved_to(self, root: Path) -> SeedJob:
        """This job reading and writing its checkpoints under ``root`` (laid out as :meth:`inputs`).

        Never ``fresh`` there: stale stages were not shipped, and a retried task must keep the
        stages an earlier attempt finished under ``root``.
        """
        base = root / SHIPPED_BASE if self.base_dir is not None else None
        return replace(self, checkpoints=root / SHIPPED_RUN, base_dir=base, fresh=False)


def seed_jobs(config: Config, seeds: list[int], data: ProcessedData, **fields: Any) -> list[SeedJob]:
    """One job per seed, on ``compute.devices`` in turn; workers map the data's files when it was
    loaded from a directory."""
    shared = data.source if data.source is not None else data
    devices = spread_devices(config.compute.devices, len(seeds))
    return [
        SeedJob(config, seed=seed, data=shared, device=device, **fields)
        for seed, device in zip(seeds, devices, strict=True)
    ]


Work = Callable[[SeedJob], Any]
Runner = Callable[[Work, list[SeedJob], str, bool], Iterator[tuple[SeedJob, Any]]]


def run_seeds_in_processes(
    work: Work, jobs: list[SeedJob], label: str, progress: bool
) -> Iterator[tuple[SeedJob, Any]]:
    """Run ``work(job)`` for every job in ``compute.jobs`` worker processes; yield ``(job, result)``
    as jobs finish. The first error is raised once the other jobs have finished and been yielded,
    so no finished work is lost.

    Workers are forked from a server process that imported ``work``'s module
    (:mod:`gil.train.workers`), never from this one: a fork of a process whose OpenMP pool is
    running can deadlock.
    """
    processes = min(jobs[0].config.compute.jobs, len(jobs))
    bar = tqdm(
        total=len(jobs),
        desc=f"{label}: {len(jobs)} jobs in {processes} processes",
        unit="job",
        disable=None if progress else True,
    )
    failure: BaseException | None = None
    target = work.func if isinstance(work, partial) else work
    context = worker_context(target.__module__)
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures: dict[Future, SeedJob] = {pool.submit(work, job): job for job in jobs}
        for future in as_completed(futures):
            bar.update()
            error = future.exception()
            if error is not None:
                failure = failure or error
                continue
            yield futures[future], future.result()
    bar.close()
    if failure is not None:
        raise failure
