"""Training and evaluation jobs as Ray tasks: one task per (strategy, seed), results as a local run's.

:class:`RayRunner` is a runner of :mod:`gil.train.parallel` (``compute.backend: ray``): the core
hands it the same jobs and work functions it gives to local worker processes, and records what
comes back exactly as it records a local worker's result. Decisions (why):

* **Data through Ray's object store, or read where it lies.** By default the driver puts the
  processed data and the split once per command; every task on a node maps the same read-only
  copy, so nodes need ``gil`` installed, not the data, and no shared filesystem. At CELLxGENE
  scale that copy (~8 GB of values and indices at 10^6 cells) outgrows the object store and is
  sent to every node, so with ``compute.data: shared_path`` (or ``auto`` above
  ``compute.shared_data_above_gib``) tasks get the processed directory's absolute path instead and
  read their batches from it with positioned reads (:mod:`gil.data.rows`): every node must see
  that path (a shared filesystem), and a node that does not fails its task in one line.
* **Checkpoints travel as bytes.** A task takes its input checkpoints with it (the seed's finished
  stages when resuming, its base stage) and returns the stages it wrote; the driver writes them
  atomically into its own output directories, so ``dvc repro`` on the head owns every output and
  the bytes are the worker's, unchanged.
* **Retries resume.** A task keeps its stages in a scratch directory
  (``<compute.scratch_path or the node's temp dir>/gil-ray/<command>/<job>``) until the driver has
  them. When its worker or node dies, Ray retries it (``compute.max_retries``; system failures
  only: an error raised by the job would only happen again) and the retry resumes after the
  stages its first attempt finished there: on the same node, or on any node when
  ``scratch_path`` is shared by all. Training is deterministic given (seed, stage), so a resumed
  run's checkpoints are those of an uninterrupted one.
* **GPUs.** A task asks for ``compute.gpus_per_job`` (fractions share a GPU) and trains on the one
  Ray assigned it (:func:`gil.train.devices.device_of_assignment`), never on a GPU it did not get.
* **Failures.** Other jobs run on; finished ones are yielded (and recorded) before the first
  failure is raised, as one line naming the job. Closing the runner's generator early (Ctrl-C,
  a tracking error) cancels the tasks still running.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError
from tqdm import tqdm

from gil.config import ComputeConfig
from gil.errors import GilError
from gil.files import atomic_file
from gil.train.checkpoint import completed_stages, stage_path
from gil.train.devices import device_of_assignment
from gil.train.parallel import SHIPPED_RUN, SeedJob, Work


@dataclass(frozen=True)
class Placement:
    """Where one job ran: the Ray node and the torch device it trained on."""

    label: str
    strategy: str | None
    seed: int
    node_id: str
    node_ip: str
    device: str
    data: str  # "object store", or the shared path the task read the processed data from


@dataclass(frozen=True)
class _TaskResult:
    result: Any
    outputs: dict[str, bytes]  # stage checkpoints written, by their path under the run directory
    placement: Placement


def task_device() -> str:
    """The device of the running Ray task: its assigned GPU, else the CPU."""
    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return device_of_assignment(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))


@ray.remote
def _run_task(
    work: Work, job: SeedJob, files: dict[str, bytes], scratch: str | None, key: str, label: str
) -> _TaskResult:
    """One job in a Ray worker: unpack its checkpoints under a scratch directory, run, return the new ones."""
    root = Path(scratch or tempfile.gettempdir()) / "gil-ray" / key
    device = task_device()
    try:
        for name, payload in files.items():
            target = root / name
            if not target.exists():  # a retry keeps what its first attempt had
                with atomic_file(target) as tmp:
                    tmp.write_bytes(payload)
        data = _shared_data(job.data) if isinstance(job.data, Path) else ray.get(job.data)
        local = replace(job.moved_to(root), data=data, split=ray.get(job.split), device=device)
        result = work(local)
        run = root / SHIPPED_RUN
        outputs = {
            str(path.relative_to(run)): path.read_bytes()
            for path in sorted(run.glob("seed_*/stage_*.pt"))
            if f"{SHIPPED_RUN}/{path.relative_to(run)}" not in files
        }
    finally:
        _remove_scratch(root)
    context = ray.get_runtime_context()
    placement = Placement(
        label,
        job.strategy_name,
        job.seed,
        context.get_node_id(),
        ray.util.get_node_ip_address(),
        device,
        str(job.data) if isinstance(job.data, Path) else "object store",
    )
    return _TaskResult(result, outputs, placement)


def _shared_data(directory: Path) -> Path:
    """The processed directory a task reads in place; one line if this node does not see it."""
    if not (directory / "indptr.npy").is_file():
        raise GilError(
            f"compute.data shared_path: {directory} is not visible on node {ray.util.get_node_ip_address()}; "
            "put the processed data on a filesystem every node mounts at that path, or set compute.data: "
            "object_store"
        )
    return directory


PROCESSED_ARRAYS = ("indptr.npy", "indices.npy", "values.npy")


def data_mode(compute: ComputeConfig, directory: Path | None) -> str:
    """``object_store`` or ``shared_path``: how tasks get processed data loaded from ``directory``.

    ``auto`` reads it in place once its arrays exceed ``compute.shared_data_above_gib``; data built
    in memory (no directory) can only travel through the object store.
    """
    if compute.data == "shared_path" and directory is None:
        raise GilError(
            "compute.data shared_path needs processed data loaded from a directory; use object_store"
        )
    if compute.data != "auto" or directory is None:
        return compute.data if directory is not None else "object_store"
    size = sum((directory / name).stat().st_size for name in PROCESSED_ARRAYS)
    return "shared_path" if size > compute.shared_data_above_gib * 2**30 else "object_store"


def _remove_scratch(root: Path) -> None:
    """Remove a task's scratch directory, and its command's directories once they are empty."""
    shutil.rmtree(root, ignore_errors=True)
    for parent in (root.parent, root.parent.parent):  # <command>/<call>, then <command>
        try:
            parent.rmdir()
        except OSError:  # another task of the command still works there
            return


@dataclass
class RayRunner:
    """Runs jobs as Ray tasks on the connected cluster (open a :func:`gil.cluster.session.ray_session` first).

    ``placements`` lists where every finished job ran (printed by the CLI, checked by the tests).
    """

    compute: ComputeConfig
    placements: list[Placement] = field(default_factory=list)
    command: str = field(default_factory=lambda: uuid.uuid4().hex[:12], init=False)  # names scratch dirs
    _shared: dict[Any, tuple[Any, ray.ObjectRef]] = field(default_factory=dict, init=False)
    _calls: int = field(default=0, init=False)
    _announced: set[Path] = field(default_factory=set, init=False)

    def _data(self, data: Any) -> ray.ObjectRef | Path:
        """What a task gets for the processed data: an object-store reference, or the shared path."""
        directory = data if isinstance(data, Path) else data.source
        if data_mode(self.compute, directory) == "object_store":
            return self._put(data)
        shared = directory.resolve()
        if shared not in self._announced:
            self._announced.add(shared)
            size = sum((shared / name).stat().st_size for name in PROCESSED_ARRAYS) / 2**30
            print(
                f"Ray tasks read the processed data ({size:.2f} GiB) from {shared} (compute.data "
                f"{self.compute.data}): every node must see this path",
                file=sys.stderr,
            )
        return shared

    def _put(self, value: Any) -> ray.ObjectRef:
        """``value`` in the object store, once per command (data loaded from a path is put by path)."""
        key = str(value) if isinstance(value, Path) else id(value)
        if key not in self._shared:
            from gil.data.layout import ProcessedData

            loaded = ProcessedData.load(value) if isinstance(value, Path) else value
            self._shared[key] = (value, ray.put(loaded))  # the value is kept so its id stays unique
        return self._shared[key][1]

    def _check_resources(self, jobs: list[SeedJob]) -> None:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if self.compute.gpus_per_job > 0 and not gpus:
            raise GilError(
                f"compute.gpus_per_job is {self.compute.gpus_per_job} but the Ray cluster has no GPU; "
                "set it to 0"
            )
        device = jobs[0].config.train.device
        if device.startswith("cuda") and self.compute.gpus_per_job == 0:
            raise GilError(
                f"train.device is {device!r} but compute.gpus_per_job is 0, so Ray assigns the tasks no GPU; "
                "set compute.gpus_per_job (e.g. 1) or train.device: auto"
            )

    def __call__(
        self, work: Work, jobs: list[SeedJob], label: str, progress: bool
    ) -> Iterator[tuple[SeedJob, Any]]:
        """Submit every job at once; yield ``(job, result)`` as they finish, their checkpoints written."""
        self._check_resources(jobs)
        self._calls += 1
        task = _run_task.options(
            num_cpus=self.compute.cpus_per_job,
            num_gpus=self.compute.gpus_per_job,
            max_retries=self.compute.max_retries,
            retry_exceptions=False,
        )
        pending: dict[ray.ObjectRef, SeedJob] = {}
        for job in jobs:
            shipped = replace(job, data=self._data(job.data), split=self._put(job.split))
            files = {name: path.read_bytes() for name, path in job.inputs().items()}
            key = f"{self.command}/{self._calls}/{job.strategy_name or 'base'}-seed{job.seed}"
            pending[task.remote(work, shipped, files, self.compute.scratch_path, key, label)] = job
        bar = tqdm(
            total=len(jobs),
            desc=f"{label}: {len(jobs)} Ray tasks",
            unit="job",
            disable=None if progress else True,
        )
        failure: BaseException | None = None
        try:
            while pending:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready)
                bar.update()
                try:
                    outcome: _TaskResult = ray.get(ready)
                except RayError as error:
                    failure = failure or _job_error(error, label, job, self.compute.max_retries)
                    continue
                _write_outputs(job, outcome.outputs)
                self.placements.append(outcome.placement)
                yield job, outcome.result
        finally:
            bar.close()
            for ref in pending:  # closed early (Ctrl-C, a failure while recording): stop the rest
                ray.cancel(ref, force=True)
        if failure is not None:
            raise failure


def _write_outputs(job: SeedJob, outputs: dict[str, bytes]) -> None:
    """Write a finished job's stage checkpoints atomically, in stage order, into its run directory."""
    if job.fresh:  # as a local fresh run: the stages of an earlier run go
        for stage in completed_stages(job.run_dir):
            stage_path(job.run_dir, stage).unlink()
    for name in sorted(outputs, key=_stage_of):
        with atomic_file(job.checkpoints / name) as tmp:
            tmp.write_bytes(outputs[name])


def _stage_of(name: str) -> int:
    """The stage of a ``seed_<s>/stage_<k>.pt`` name (to write stages in order)."""
    return int(Path(name).stem.removeprefix("stage_"))


def _job_error(error: RayError, label: str, job: SeedJob, retries: int) -> BaseException:
    """One line naming the job for a user error or a lost worker; a bug keeps its traceback."""
    who = f"{label} seed {job.seed}"
    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, GilError):
            return GilError(f"{who}: {cause}")
        return error
    return GilError(
        f"{who} failed on the Ray cluster after {retries} retries ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else 'no detail'}); the other jobs' results are "
        "written: rerun the command to continue"
    )
