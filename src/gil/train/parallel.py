"""Training several seeds at once, each in its own process.

Why processes: on a CPU the small models of the benchmark use two threads poorly (their kernels are
short, so the threads spend much of a step waiting for each other): three one-thread processes on
two cores train about 1.3-1.4x more cells per second than one two-thread process. Each worker
trains with ``train.threads`` threads, as a sequential run does, so the checkpoints are bit-identical
whatever ``compute.jobs`` is.

Workers only train and write checkpoints; they never touch the tracker. The parent records each seed
from its checkpoints once that seed is done (see :meth:`StageTrainer.log_trained_stages`), so one
process writes to MLflow and a failed seed leaves no run behind.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from gil.config import Config
from gil.data.layout import ProcessedData, Split


@dataclass(frozen=True)
class SeedJob:
    """Everything a worker needs to train one seed (picklable)."""

    config: Config
    strategy_name: str | None
    seed: int
    data: ProcessedData | Path  # the directory when the data was loaded from one (no array copies)
    split: Split
    run_dir: Path
    base_dir: Path | None
    fresh: bool


def _train_seed(job: SeedJob) -> list:
    """Worker entry point: train one seed's remaining stages; returns its stage records."""
    from gil.train.loop import StageTrainer, use_threads

    use_threads(job.config)
    data = ProcessedData.load(job.data) if isinstance(job.data, Path) else job.data
    trainer = StageTrainer(
        job.config,
        job.strategy_name,
        job.seed,
        data,
        job.split,
        job.run_dir,
        progress=False,
        base_dir=job.base_dir,
    )
    return trainer.run(fresh=job.fresh)


def data_for_workers(data: ProcessedData) -> ProcessedData | Path:
    """The directory of ``data`` when it has one (each worker maps the files), else the arrays."""
    return data.source if data.source is not None else data


def train_in_processes(jobs: list[SeedJob], processes: int) -> Iterator[tuple[int, list | BaseException]]:
    """Train ``jobs`` in at most ``processes`` worker processes; yield ``(seed, records or error)``
    in the order the seeds finish.

    Workers are spawned, not forked: a fork of a process whose OpenMP pool is running can deadlock.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=context) as pool:
        futures: dict[Future, int] = {pool.submit(_train_seed, job): job.seed for job in jobs}
        for future in as_completed(futures):
            error = future.exception()
            yield futures[future], error if error is not None else future.result()
