"""The analysis notebook, executed end to end on a tiny project built with the real DVC pipeline.

Why a pipeline of its own: the notebook reads what ``dvc repro`` leaves in MLflow (parent runs, stage
runs, the leaderboard), so the test needs a finished benchmark. It builds one like ``test_pipeline.py``
does (a temporary git + DVC repository, the project's ``dvc.yaml`` minus the Zeisel stage, tiny params,
tracking to a SQLite store inside the repository), then runs ``notebooks/forgetting_analysis.ipynb``
with the ``GIL_PARAMS`` environment variable pointing at the tiny params, and checks that every cell
ran and that it drew figures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_pipeline_params

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "forgetting_analysis.ipynb"
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict) -> None:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def build_tiny_project(repo: Path, h5ad: Path) -> dict:
    """Run the project's pipeline (minus the Zeisel stage) on ``h5ad`` in a new git + DVC repo ``repo``.

    Returns the environment the commands ran with. Tracking goes to ``repo/mlruns/mlflow.db``.
    """
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_SITE_CACHE_DIR": str(repo / ".site-cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    del pipeline["stages"]["zeisel"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    shutil.copy(h5ad, repo / "raw.h5ad")
    params = tiny_pipeline_params(repo / "raw.h5ad")
    params["dataset"]["path"] = "raw.h5ad"
    params["tracking"] = {"enabled": True, "uri": f"sqlite:///{repo}/mlruns/mlflow.db", "register_models": False}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # dvc.yaml lists source directories as dependencies: give the pipeline copies of them.
    for part in ("model", "train", "strategies", "metrics"):
        shutil.copytree(ROOT / "src" / "gil" / part, repo / "src" / "gil" / part)
    for part in ("data/batches.py", "evaluate.py", "report.py"):
        (repo / "src" / "gil" / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "src" / "gil" / part, repo / "src" / "gil" / part)
    _run(["git", "init", "-q"], repo, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    _run([sys.executable, "-m", "dvc", "add", "-q", "raw.h5ad"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "init"], repo, env)
    _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    return env


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory, synthetic_h5ad: Path) -> Path:
    """A finished tiny benchmark (strategies finetune and replay, one seed); returns the repo."""
    repo = tmp_path_factory.mktemp("notebook_project")
    build_tiny_project(repo, synthetic_h5ad)
    return repo


def test_notebook_is_committed_without_outputs() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "clear the notebook's outputs"


def test_notebook_runs_and_draws_figures(tiny_benchmark: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("GIL_PARAMS", str(tiny_benchmark / "params.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebook's inline backend draws PNG outputs
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(tiny_benchmark)}})
    client.execute()  # raises CellExecutionError naming the failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 3, "expected forgetting curves, R heatmaps and the leaderboard chart"
    text = "\n".join(str(output.get("data", {}).get("text/plain", "")) + output.get("text", "")
                     for output in outputs)
    assert "finetune" in text and "replay" in text
