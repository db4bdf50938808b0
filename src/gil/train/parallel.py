"""Training several seeds at once, each in its own process.

Why processes: on a CPU the small models of the benchmark use two threads poorly (their kernels are
short, so the threads spend much of a step waiting for each other): three one-thread processes on
two cores train about 1.3x more cells per second than one two-thread process. Each worker runs with
``train.threads`` threads, as a sequential run does, so the results are bit-identical whatever
``compute.jobs`` is.

Workers only train and write checkpoints; they never touch the tracker. The parent records each
seed once that seed is done (see :meth:`gil.train.loop.StageTrainer.log_trained_stages`), so one
process writes to MLflow and a failed seed leaves no run behind.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gil.config import Config
from gil.data.layout import ProcessedData, Split


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

    def load_data(self) -> ProcessedData:
        return ProcessedData.load(self.data) if isinstance(self.data, Path) else self.data


def seed_jobs(config: Config, seeds: list[int], data: ProcessedData, **fields: Any) -> list[SeedJob]:
    """One job per seed; workers map the data's files when it was loaded from a directory."""
    shared = data.source if data.source is not None else data
    return [SeedJob(config, seed=seed, data=shared, **fields) for seed in seeds]


def run_seeds_in_processes(
    work: Callable[[SeedJob], Any], jobs: list[SeedJob], label: str, progress: bool
) -> Iterator[tuple[int, Any]]:
    """Run ``work(job)`` for every job in ``compute.jobs`` spawned processes; yield ``(seed, result)``
    as seeds finish. The first error is raised once the other seeds have finished and been yielded,
    so no finished work is lost.

    Spawned, not forked: a fork of a process whose OpenMP pool is running can deadlock.
    """
    processes = min(jobs[0].config.compute.jobs, len(jobs))
    bar = tqdm(
        total=len(jobs),
        desc=f"{label}: {len(jobs)} seeds in {processes} processes",
        unit="seed",
        disable=None if progress else True,
    )
    failure: BaseException | None = None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures: dict[Future, int] = {pool.submit(work, job): job.seed for job in jobs}
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
