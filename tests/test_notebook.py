"""The analysis notebook, executed end to end on a tiny project built with the real DVC pipeline.

The notebook reads what ``dvc repro`` leaves in MLflow (parent runs, stage runs, the leaderboard), so
the test uses the finished tiny benchmark that ``dvc_project`` (conftest.py) builds with the real
pipeline, runs ``notebooks/forgetting_analysis.ipynb`` with ``GIL_PARAMS`` pointing at its params,
and checks that every cell ran and that it drew figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "forgetting_analysis.ipynb"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_benchmark(dvc_project: tuple[Path, dict]) -> Path:
    """The finished tiny benchmark (see ``dvc_project`` in conftest.py); returns the repo."""
    return dvc_project[0]


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
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tiny_benchmark)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 3, "expected forgetting curves, R heatmaps and the leaderboard chart"
    text = "\n".join(
        str(output.get("data", {}).get("text/plain", "")) + output.get("text", "") for output in outputs
    )
    assert "finetune" in text and "replay" in text
