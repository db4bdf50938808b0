"""Per-stage checkpoints: written atomically, loaded with ``weights_only=True``, checked for fit.

Why: a killed run must never leave a checkpoint that looks complete but is not (the file appears
under its final name only once fully written and synced), a checkpoint must never execute code when
loaded (no pickled objects: tensors and plain values only), and a checkpoint made under another
config or vocabulary must be refused with a clear message instead of silently resumed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from gil.errors import GilError
from gil.files import atomic_file

FORMAT_VERSION = 1
_STAGE_FILE = re.compile(r"^stage_(\d+)\.pt$")


def fingerprint(payload: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable description of what a checkpoint depends on."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_path(run_dir: Path, stage: int) -> Path:
    return run_dir / f"stage_{stage}.pt"


def completed_stages(run_dir: Path) -> list[int]:
    """Stages that have a checkpoint in ``run_dir``, ascending (temporary files are ignored)."""
    if not run_dir.is_dir():
        return []
    found = (_STAGE_FILE.match(path.name) for path in run_dir.iterdir())
    return sorted(int(match.group(1)) for match in found if match)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Save atomically: the file exists under ``path`` only when complete."""
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT_VERSION, **payload}, tmp)


def load_checkpoint(
    path: Path, expected_fingerprint: str | None = None, mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint safely; refuse corrupt ones and ones made under a different config.

    ``mmap`` maps the tensors instead of reading them: a cheap check that a checkpoint is usable.
    """
    if not path.is_file():
        raise GilError(f"checkpoint {path} not found; train first (`gil train` or `dvc repro`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise GilError(
            f"checkpoint {path} is unreadable or not a gil checkpoint ({type(error).__name__}); "
            "delete it and train again"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise GilError(f"checkpoint {path} is not a gil checkpoint of format {FORMAT_VERSION}; delete it")
    if expected_fingerprint is not None and payload.get("fingerprint") != expected_fingerprint:
        raise GilError(
            f"checkpoint {path} was made with a different config, split or vocabulary; "
            f"delete {path.parent} or rerun with --fresh"
        )
    return payload
