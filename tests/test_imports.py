"""Import boundaries: the core never pulls in MLflow or Ray (architecture rule)."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "gil",
    "gil.config",
    "gil.data.prepare",
    "gil.data.split",
    "gil.data.batches",
    "gil.model",
    "gil.strategies",
    "gil.train.loop",
    "gil.evaluate",
    "gil.metrics",
    "gil.report",
    "gil.sweep.space",
    "gil.sweep.selection",
    "gil.tracking.base",
]


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        f"import sys; import {', '.join(modules)}; from gil.strategies import registry; registry(); "
        "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_imports_neither_mlflow_nor_ray() -> None:
    loaded = _loaded_after_import(CORE)
    assert "gil" in loaded
    assert "mlflow" not in loaded and "ray" not in loaded


def test_only_tracking_and_sweep_modules_import_them() -> None:
    assert "mlflow" in _loaded_after_import(["gil.tracking.mlflow_tracker"])
    assert "ray" in _loaded_after_import(["gil.sweep.runner"])
