"""The real DVC pipeline, end to end, in a temporary git repository on the tiny synthetic data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_pipeline_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_h5ad: Path) -> tuple[Path, dict]:
    """A git + DVC repository holding the project's dvc.yaml (minus the Zeisel stage) and tiny params."""
    repo = tmp_path_factory.mktemp("project")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_SITE_CACHE_DIR": str(repo / ".site-cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    del pipeline["stages"]["zeisel"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    shutil.copy(synthetic_h5ad, repo / "raw.h5ad")
    params = tiny_pipeline_params(repo / "raw.h5ad")
    params["dataset"]["path"] = "raw.h5ad"
    params["tracking"] = {"enabled": True, "uri": f"sqlite:///{repo}/mlruns/mlflow.db", "register_models": False}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "src" / "gil").mkdir(parents=True)
    for part in ("model", "train", "strategies", "metrics"):
        shutil.copytree(ROOT / "src" / "gil" / part, repo / "src" / "gil" / part)
    for part in ("data/batches.py", "evaluate.py", "report.py"):
        (repo / "src" / "gil" / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "src" / "gil" / part, repo / "src" / "gil" / part)
    _run(["git", "init", "-q"], repo, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    _run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(repo.parent / "remote")], repo, env)
    _run([sys.executable, "-m", "dvc", "add", "-q", "raw.h5ad"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "init"], repo, env)
    _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    return repo, env


def test_repro_builds_every_output(project) -> None:
    repo, _ = project
    for name in ("finetune", "replay"):
        metrics = json.loads((repo / "metrics" / f"{name}.json").read_text())
        assert len(metrics["regression"]["matrix"]) == 3
        assert (repo / "checkpoints" / name / "seed_0" / "stage_2.pt").exists()
    assert (repo / "checkpoints" / "base" / "seed_0" / "stage_0.pt").exists()
    assert "| finetune" in (repo / "reports" / "benchmark.md").read_text()
    assert (repo / "plots" / "forgetting_curves.png").stat().st_size > 1000
    board = (repo / "reports" / "leaderboard.csv").read_text()
    assert "finetune" in board and "replay" in board


def test_second_repro_does_nothing_and_metrics_show_lists_strategies(project) -> None:
    repo, env = project
    out = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert "didn't change" in out and "Running stage" not in out
    shown = _run([sys.executable, "-m", "dvc", "metrics", "show"], repo, env)
    assert "metrics/finetune.json" in shown and "metrics/replay.json" in shown


def test_changing_one_strategy_reruns_only_that_strategy(project) -> None:
    repo, env = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["strategies"]["replay"]["buffer_size"] = 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train@replay", "evaluate@replay", "report", "leaderboard"}


def test_push_and_pull_round_trip(project) -> None:
    repo, env = project
    _run([sys.executable, "-m", "dvc", "push", "-q"], repo, env)
    split_file = repo / "data" / "split" / "gene_sets.json"
    original = split_file.read_bytes()
    shutil.rmtree(repo / "data" / "split")
    shutil.rmtree(repo / ".dvc" / "cache")
    _run([sys.executable, "-m", "dvc", "pull", "-q"], repo, env)
    assert split_file.read_bytes() == original
