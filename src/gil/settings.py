"""Settings of a suite: named variants of the benchmark's data split, run side by side.

Why: one split decides a whole leaderboard, and a strategy that wins on one order of tasks may lose
on another. A suite (``pipelines/suite/dvc.yaml``) runs every setting of ``params.yaml``'s
``settings`` section with the strategies and training overrides of its ``suite`` section, each
setting in its own directory (:func:`setting_dir`) and its own runs in one MLflow experiment, tagged
``gil.setting``.

A setting is resolved on the raw params mapping, before validation: its ``dataset``, ``prepare`` and
``split`` mappings are merged into the base sections (mappings merge key by key; lists and values
replace), ``suite.train`` into ``train``, ``suite.strategies`` replaces ``benchmark`` (and no tuned
row is reported: ``tuned.rows`` is emptied), and the runs go
to the suite's experiment. The merged mapping is then validated as a whole config, so a bad override
is reported with its full key like any other.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

SETTING_TAG = "gil.setting"
"""MLflow tag naming the setting of every run of a suite."""

SUITE_ROOT = Path("suite")
OVERRIDABLE_SECTIONS = ("dataset", "prepare", "split")


def merged(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: mappings key by key (recursively), anything else replaced."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    result = copy.deepcopy(base)
    for key, value in override.items():
        result[key] = merged(base.get(key), value)
    return result


def suite_experiment(raw: dict[str, Any]) -> str:
    """The suite's MLflow experiment: ``suite.experiment``, else the benchmark's name + ``-suite``.

    Its own experiment keeps the benchmark's leaderboard (one split) apart from the suite's runs.
    """
    suite = raw.get("suite") or {}
    if suite.get("experiment"):
        return str(suite["experiment"])
    tracking = raw.get("tracking") or {}
    dataset = raw.get("dataset") or {}
    base = tracking.get("experiment") or f"gil-{dataset.get('name', 'dataset')}"
    return f"{base}-suite"


def resolve_setting(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """The raw params of setting ``name`` (which must be an entry of ``raw['settings']``)."""
    entry = raw["settings"][name] or {}
    suite = raw.get("suite") or {}
    resolved = copy.deepcopy(raw)
    for section in OVERRIDABLE_SECTIONS:
        if entry.get(section):
            resolved[section] = merged(raw.get(section) or {}, entry[section])
    resolved["train"] = merged(raw.get("train") or {}, suite.get("train") or {})
    if suite.get("strategies"):
        resolved["benchmark"] = list(suite["strategies"])
    # The suite trains no tuned rows (they were tuned on the benchmark's split, not the setting's).
    resolved["tuned"] = {**(raw.get("tuned") or {}), "rows": []}
    resolved["tracking"] = {**(raw.get("tracking") or {}), "experiment": suite_experiment(raw)}
    return resolved


def setting_dir(name: str, root: Path = SUITE_ROOT) -> Path:
    """Where a setting's data, checkpoints and metrics live: ``suite/<name>``."""
    return root / name
