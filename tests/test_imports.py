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
    "gil.settings",
    "gil.suite",
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


def test_the_strategy_registry_does_not_import_the_config() -> None:
    """``gil.config`` uses the registry to validate entries; the registry must not import it back."""
    import ast
    from pathlib import Path

    import gil.strategies

    tree = ast.parse(Path(gil.strategies.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert "gil.strategies.base" in imported and "gil.config" not in imported
