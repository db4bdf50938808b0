"""Which device a worker trains on: one of ``compute.devices`` locally, the GPU Ray assigned on a cluster.

Why a module of its own: the choice is made in three places (local worker processes, Ray tasks,
their tests) and must be the same everywhere; it imports no Ray (a Ray task passes in what its
runtime context reports), so the mapping is testable without a cluster or a GPU.

The device never changes a result's identity: ``train.device`` is left out of checkpoint
fingerprints, and the driver, which alone writes to MLflow, keeps its own config.
"""

from __future__ import annotations

from gil.config import Config
from gil.errors import GilError


def spread_devices(devices: list[str] | None, count: int) -> list[str | None]:
    """The device of each of ``count`` jobs: ``devices`` in turn (seed ``i`` on ``devices[i % n]``).

    ``None`` (no ``compute.devices``): every job uses ``train.device``.
    """
    return [devices[index % len(devices)] if devices else None for index in range(count)]


def device_of_assignment(gpu_ids: list[str], visible_devices: str | None) -> str:
    """The torch device of the GPUs Ray assigned to a task; ``cpu`` when it was assigned none.

    Ray sets ``CUDA_VISIBLE_DEVICES`` of a GPU task to the ids it assigned, so torch numbers those
    from 0: the device is the first assigned id's position in that list (``cuda:0`` is then the
    assigned GPU, not the node's first one). Where Ray leaves the variable alone
    (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``) every GPU is visible and the id is the index.
    A task without a GPU trains on the CPU even on a GPU node: its GPU was not reserved for it.
    """
    if not gpu_ids:
        return "cpu"
    first = str(gpu_ids[0])
    if visible_devices is None:
        return f"cuda:{int(first)}"
    visible = [entry.strip() for entry in visible_devices.split(",") if entry.strip()]
    if first not in visible:
        raise GilError(
            f"Ray assigned GPU {first} but CUDA_VISIBLE_DEVICES is {visible_devices!r}; do not set "
            "CUDA_VISIBLE_DEVICES for Ray workers (Ray sets it per task)"
        )
    return f"cuda:{visible.index(first)}"


def on_device(config: Config, device: str | None) -> Config:
    """``config`` training and evaluating on ``device`` (``None``: unchanged)."""
    if device is None:
        return config
    return config.model_copy(update={"train": config.train.model_copy(update={"device": device})})
