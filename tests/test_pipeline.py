"""The real DVC pipeline, end to end, in a temporary git repository on the tiny synthetic data."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TUNED_FINETUNE_LR, _run_checked, stages_repro_would_run

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict) -> str:
    return _run_checked(args, cwd, env)


@pytest.fixture(scope="module")
def project(dvc_project: tuple[Path, dict]) -> tuple[Path, dict]:
    """The shared finished benchmark, for tests that only read it (or rerun it as a no-op)."""
    return dvc_project


@pytest.fixture
def own_project(dvc_project: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    """A private copy of the finished benchmark for a test that changes it, so no state leaks
    into other tests whatever their order. Its tracking store is its own (empty) one."""
    repo, env = dvc_project
    copy = tmp_path / "project"
    shutil.copytree(repo, copy, symlinks=True, ignore=shutil.ignore_patterns("mlruns"))
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["tracking"]["uri"] = f"sqlite:///{copy}/mlruns/mlflow.db"
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return copy, {**env, "DVC_SITE_CACHE_DIR": str(copy / ".site-cache")}


def test_repro_builds_every_output(project, command_server: Path) -> None:
    repo, _ = project
    # Every stage ran in the session's `gil serve`: none had to start a fresh interpreter.
    log = command_server.with_name("serve.log").read_text()
    assert "ran 'gil train --strategy replay --base checkpoints/base --fresh'" in log
    assert not re.search(
        r"declined 'gil (prepare|split|reference|train|evaluate|controls|report|leaderboard)", log
    )
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


def test_changing_one_strategy_reruns_only_that_strategy(own_project) -> None:
    repo, env = own_project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["strategies"]["replay"]["buffer_size"] = 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    would_run = stages_repro_would_run(repo, env)
    assert would_run == {"train@replay", "evaluate@replay", "report", "leaderboard"}


def test_editing_a_gene_list_reruns_the_split(own_project) -> None:
    repo, env = own_project
    (repo / "gene_lists" / "stages.yaml").write_text("T1: [gene0001]\n")
    status = _run([sys.executable, "-m", "dvc", "status", "split"], repo, env)
    assert "split:" in status and "modified:" in status and "gene_lists" in status
    (repo / "gene_lists" / "stages.yaml").unlink()
    assert "up to date" in _run([sys.executable, "-m", "dvc", "status", "split"], repo, env)


def test_push_and_pull_round_trip(own_project) -> None:
    repo, env = own_project
    _run([sys.executable, "-m", "dvc", "push", "-q"], repo, env)
    split_file = repo / "data" / "split" / "gene_sets.json"
    original = split_file.read_bytes()
    shutil.rmtree(repo / "data" / "split")
    shutil.rmtree(repo / ".dvc" / "cache")
    _run([sys.executable, "-m", "dvc", "pull", "-q"], repo, env)
    assert split_file.read_bytes() == original


def test_the_ray_backend_changes_no_dependency_and_no_result(own_project) -> None:
    """compute.backend: ray is not a DVC dependency (nothing is stale), and retraining a strategy
    through Ray (a local Ray started by each command) gives the same metrics file, byte for byte."""
    repo, env = own_project
    before = (repo / "metrics" / "finetune.json").read_bytes()
    controls_before = (repo / "metrics" / "controls.json").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["compute"] = {"backend": "ray", "address": "local"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run([sys.executable, "-m", "dvc", "status"], repo, env)
    stale = {line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace()}
    assert stale == {"leaderboard"} and "compute" not in status  # (own_project moved the tracking store)
    _run([sys.executable, "-m", "dvc", "repro", "-f", "-s", "train@finetune"], repo, env)
    out = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # the new checkpoints' bytes differ (wall-clock timings), the metrics and the controls do not
    assert ran == {"evaluate@finetune", "controls", "leaderboard"}
    assert (repo / "metrics" / "finetune.json").read_bytes() == before
    assert (repo / "metrics" / "controls.json").read_bytes() == controls_before


def test_a_tuned_row_starts_from_the_shared_base_and_is_reported_beside_its_default(project) -> None:
    repo, _ = project
    default, tuned = (
        json.loads((repo / "metrics" / f"{name}.json").read_text()) for name in ("finetune", "finetune@tuned")
    )
    assert tuned["strategy"] == "finetune@tuned" and tuned["kind"] == "finetune"
    assert tuned["scored_on"]["cells"] == "test" == default["scored_on"]["cells"]
    matrix, default_matrix = tuned["regression"]["matrix"], default["regression"]["matrix"]
    assert matrix[0] == default_matrix[0]  # the same base stage, scored on the same cells
    assert matrix[1] != default_matrix[1]  # stage 1 trained with the tuned learning rate
    assert "| finetune@tuned" in (repo / "reports" / "benchmark.md").read_text()
    assert "finetune@tuned" in (repo / "reports" / "leaderboard.csv").read_text()


def test_a_changed_tuned_value_reruns_that_row_only(own_project) -> None:
    repo, env = own_project
    tuned = yaml.safe_load((repo / "tuned.yaml").read_text())
    tuned["strategies"]["finetune@tuned"]["train"]["lr"] = 0.002
    (repo / "tuned.yaml").write_text(yaml.safe_dump(tuned))
    status = _run([sys.executable, "-m", "dvc", "status"], repo, env)
    assert "train_tuned@finetune" in status
    assert "train@finetune:" not in status and "base:" not in status


def test_the_sweep_pipeline_tunes_every_strategy_and_the_default_pipeline_reports_the_winners(
    own_project,
) -> None:
    """``dvc repro pipelines/sweep/dvc.yaml`` on the finished tiny benchmark: one sweep per benchmark
    strategy from its base stage, ``reports/tuned.yaml`` with both winners, and the default pipeline
    untouched; promoted to ``tuned.yaml`` (``make tune``), ``dvc repro`` retrains the tuned row whose
    values changed and nothing of the default rows, and never the sweeps, even with their reports
    gone (a fresh clone: reports/ is not in git)."""
    repo, env = own_project
    shutil.copytree(ROOT / "src" / "gil" / "sweep", repo / "src" / "gil" / "sweep", dirs_exist_ok=True)
    (repo / "pipelines" / "sweep").mkdir(parents=True)
    shutil.copy(ROOT / "pipelines" / "sweep" / "dvc.yaml", repo / "pipelines" / "sweep" / "dvc.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    lr = {"train.lr": {"loguniform": [1e-4, 3e-3]}}
    params["sweep"] = {
        "num_samples": 1,
        "max_concurrent": 1,
        "scheduler": "fifo",
        "storage_path": str(repo / "ray_results"),
        "spaces": {"finetune": lr, "replay": {**lr, "strategies.replay.mix": {"uniform": [0.1, 0.5]}}},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    hand_written = (repo / "tuned.yaml").read_text()
    _run([sys.executable, "-m", "dvc", "repro", "pipelines/sweep/dvc.yaml"], repo, env)
    tuned = yaml.safe_load((repo / "reports" / "tuned.yaml").read_text())
    assert set(tuned["strategies"]) == {"finetune@tuned", "replay@tuned"}
    assert tuned["budget"]["num_samples"] == 1 and tuned["sweeps"]["replay"]["base"] == "checkpoints/base"
    assert tuned["strategies"]["finetune@tuned"]["train"]["lr"] != TUNED_FINETUNE_LR
    assert (repo / "tuned.yaml").read_text() == hand_written  # promoted only on request
    dry = _run([sys.executable, "-m", "dvc", "repro", "--dry"], repo, env)
    # Only the leaderboard would run: this copy tracks to a store of its own (a changed param).
    assert [line for line in dry.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'leaderboard':"
    ]

    shutil.copy(repo / "reports" / "tuned.yaml", repo / "tuned.yaml")  # what `make tune` does
    shutil.rmtree(repo / "reports" / "sweeps")
    would_run = stages_repro_would_run(repo, env)
    assert {"train_tuned@finetune", "evaluate_tuned@finetune", "report"} <= would_run
    assert not any(name.startswith(("train@", "base", "sweep", "tuned")) for name in would_run), would_run
