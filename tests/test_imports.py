"""Import boundaries: the core never pulls in MLflow, Ray or tiledbsoma (architecture rule)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gil

CORE = [
    "gil",
    "gil.config",
    "gil.data.prepare",
    "gil.data.source",
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


# Each check imports some modules in a fresh interpreter and lists what got loaded. All of them start
# at once (one module fixture): each spends seconds importing torch, MLflow or Ray, and in parallel the
# whole file costs about the slowest one.
CHECKS = {
    "core": CORE,
    "tracker": ["gil.tracking.mlflow_tracker"],
    "sweep": ["gil.sweep.runner"],
    "cluster": ["gil.cluster.runner"],
    "cluster_only": ["gil.cluster.runner", "gil.cluster.session"],
    "cli_and_config": ["gil.cli", "gil.config", "gil.strategies"],
    "run_readers": ["gil.tracking.leaderboard"],  # what `gil leaderboard` imports
}
# Checks that do not build the strategy registry (it imports the model, hence torch).
WITHOUT_REGISTRY = {"run_readers"}


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """Per check, every module loaded after importing its modules and building the strategy registry."""
    registry = "from gil.strategies import registry; registry(); "
    code = "import sys; import {}; {}print(' '.join(sorted(sys.modules)))"
    sources = {
        name: code.format(", ".join(modules), "" if name in WITHOUT_REGISTRY else registry)
        for name, modules in CHECKS.items()
    }
    processes = {
        name: subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, text=True)
        for name, source in sources.items()
    }
    results = {}
    for name, process in processes.items():
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"importing {CHECKS[name]} failed"
        results[name] = set(out.split())
    return results


def _top_level(modules: set[str]) -> set[str]:
    return {module.split(".")[0] for module in modules}


def _imported_names(path: Path) -> set[str]:
    """Every module a source file imports, at the top or lazily: ``import a.b`` gives ``a.b``,
    ``from a import b`` gives ``a`` and ``a.b``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module or ""} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _package_sources() -> dict[Path, set[str]]:
    """Each module of the ``gil`` package (path relative to it) and the names it imports."""
    root = Path(gil.__file__).parent
    return {path.relative_to(root): _imported_names(path) for path in root.rglob("*.py")}


def test_core_imports_neither_mlflow_nor_ray(loaded) -> None:
    top = _top_level(loaded["core"])
    assert "gil" in top and "torch" in top
    assert "mlflow" not in top and "ray" not in top


def test_only_tracking_and_sweep_modules_import_them(loaded) -> None:
    assert "mlflow" in _top_level(loaded["tracker"])
    assert "ray" in _top_level(loaded["sweep"])
    assert "ray" in _top_level(loaded["cluster"])
    assert "mlflow" not in _top_level(loaded["cluster_only"])


def test_reading_runs_loads_mlflow_but_not_torch(loaded) -> None:
    """`gil leaderboard` only reads runs: torch (~1.5 s of a command's imports) stays unloaded; the
    tracker imports it when it logs a model."""
    top = _top_level(loaded["run_readers"])
    assert "mlflow" in top and "torch" not in top


def test_only_the_sweep_and_cluster_packages_import_ray() -> None:
    """Read from the source: no module outside gil/sweep and gil/cluster imports Ray, even lazily."""
    importers = {
        path.parts[0]
        for path, names in _package_sources().items()
        if any(name == "ray" or name.startswith("ray.") for name in names)
    }
    assert importers == {"sweep", "cluster"}


def test_tiledbsoma_is_imported_lazily_only(loaded) -> None:
    """tiledbsoma (and cellxgene_census) are optional: no module imports them at its top level, so the
    core and the CLI load without them (gil/data/soma.py imports them when a SOMA source is opened)."""
    root = Path(gil.__file__).parent
    at_top = {
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(
            name.split(".")[0] in ("tiledbsoma", "cellxgene_census")
            for name in [getattr(node, "module", None) or "", *(alias.name for alias in node.names)]
        )
    }
    assert at_top == set()
    assert "tiledbsoma" in _package_sources()[Path("data/soma.py")]
    assert "tiledbsoma" not in _top_level(loaded["core"] | loaded["cli_and_config"])


def test_the_strategy_registry_does_not_import_the_config() -> None:
    """``gil.config`` uses the registry to validate entries; the registry must not import it back."""
    imported = _package_sources()[Path("strategies/__init__.py")]
    assert "gil.strategies.base" in imported and "gil.config" not in imported


def test_nothing_in_the_package_imports_the_documentation_generator(loaded) -> None:
    """``gil.docgen`` reads the CLI and the config for the docs build; the code never depends on it."""
    importers = {str(path) for path, names in _package_sources().items() if "gil.docgen" in names}
    assert importers == set()
    assert "gil.docgen" not in loaded["cli_and_config"]
