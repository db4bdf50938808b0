"""Lineage tags: which code and which data a run came from.

Why: a number in the MLflow UI is only trustworthy if it can be traced to a git commit and to the
exact bytes of the input data and split. DVC already hashes those (``dvc.lock``); when the pipeline
has not been run through DVC, the hashes are computed here the same way for files (md5).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml


def git_commit(cwd: Path | str = ".") -> str:
    """The current commit (with ``-dirty`` when the work tree has changes), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _dvc_lock_hashes(lock_path: Path) -> dict[str, str]:
    """``path -> md5`` of every stage output recorded in ``dvc.lock``."""
    if not lock_path.is_file():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    hashes = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs", []) + stage.get("deps", []):
            if "md5" in out:
                hashes[str(Path(out["path"]))] = out["md5"]
    return hashes


def file_md5(path: Path) -> str:
    """md5 of a file, read in blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lineage_tags(
    data_path: Path, processed_dir: Path, split_dir: Path, lock_path: Path = Path("dvc.lock")
) -> dict[str, str]:
    """Tags naming the commit and the DVC hashes of the raw data, processed data and split."""
    recorded = _dvc_lock_hashes(lock_path)
    tags = {"git.commit": git_commit()}
    for name, path in (("data", data_path), ("processed", processed_dir), ("split", split_dir)):
        md5 = recorded.get(str(Path(path)))
        if md5 is None and Path(path).is_file():
            md5 = file_md5(Path(path))
        tags[f"dvc.{name}.md5"] = md5 or "untracked"
        tags[f"dvc.{name}.path"] = str(path)
    return tags
