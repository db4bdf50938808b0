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
    "gil.train.parallel",
    "gil.train.devices",
    "gil.evaluate",
    "gil.metrics",
    "gil.report",
    "gil.settings",
    "gil.suite",
    "gil.sweep.space",
    "gil.sweep.selection",
    "gil.cluster",
    "gil.tracking.base",
    "gil.docgen",
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
    assert "ray" in _loaded_after_import(["gil.cluster.runner"])
    assert "mlflow" not in _loaded_after_import(["gil.cluster.runner", "gil.cluster.session"])


def test_only_the_sweep_and_cluster_packages_import_ray() -> None:
    """Read from the source: no module outside gil/sweep and gil/cluster imports Ray, even lazily."""
    import ast
    from pathlib import Path

    import gil

    root = Path(gil.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name == "ray" or name.startswith("ray.") for name in names):
                importers.add(path.relative_to(root).parts[0])
    assert importers == {"sweep", "cluster"}


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


def test_nothing_in_the_package_imports_the_documentation_generator() -> None:
    """``gil.docgen`` reads the CLI and the config for the docs build; the code never depends on it."""
    import ast
    from pathlib import Path

    import gil

    root = Path(gil.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names += [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            if any(name == "gil.docgen" for name in names):
                importers.add(str(path.relative_to(root)))
    assert importers == set()
    assert "gil.docgen" not in _loaded_modules_after_import(["gil.cli", "gil.config", "gil.strategies"])


def _loaded_modules_after_import(modules: list[str]) -> set[str]:
    code = f"import sys; import {', '.join(modules)}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())
