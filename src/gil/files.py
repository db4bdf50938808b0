"""Atomic writes and deterministic serialisation of outputs.

Why: a crash or a user error must never leave a half-written output that a later stage (or DVC)
mistakes for a complete one. Every output is written under a temporary name in the destination's
directory and renamed into place only when complete; ``os.replace`` is atomic on POSIX.
JSON is written with sorted keys so that identical content has identical bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gil.errors import GilError


@contextlib.contextmanager
def atomic_file(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; move it onto ``dest`` if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary directory next to ``dest``; swap it in for ``dest`` if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dumps_json(payload: Any) -> str:
    """Serialise ``payload`` deterministically (sorted keys, fixed indentation, trailing newline)."""
    return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(dest: Path | str, payload: Any) -> None:
    """Write ``payload`` as deterministic JSON, atomically."""
    with atomic_file(dest) as tmp:
        tmp.write_text(dumps_json(payload))


def write_text(dest: Path | str, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_file(dest) as tmp:
        tmp.write_text(text)


def read_json(path: Path | str) -> Any:
    """Read a JSON file written by :func:`write_json`; a corrupt one is a user error naming the fix."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise GilError(
            f"{path} is not valid JSON ({error.msg}); delete it and rerun the step that writes it"
        ) from None


def finite_or_none(value: Any) -> Any:
    """NaN to None and numpy values to plain Python, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
