"""Fault injection: a kill during a checkpoint write, and a tracking server that goes away mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import gil_train_command
from mlflow.tracking import MlflowClient

from gil.tracking.server import start_local_server, stop_server
from gil.train.checkpoint import completed_stages, stage_path

pytestmark = pytest.mark.slow

WRITER = """
import sys, torch
from pathlib import Path
from gil.train.checkpoint import save_checkpoint
save_checkpoint(Path(sys.argv[1]), {"model": {"w": torch.ones(60_000_000)}})
"""


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_during_a_checkpoint_write_leaves_no_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "stage_1.pt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    _wait_for(lambda: any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert not target.exists(), "a half-written checkpoint must never appear under its final name"
    assert completed_stages(tmp_path) == []


def _params(base: Path, uri: str, out: Path) -> Path:
    raw = yaml.safe_load(base.read_text())
    raw["train"]["epochs_per_stage"] = 25
    raw["tracking"] = {"uri": uri, "register_models": False}
    out.write_text(yaml.safe_dump(raw))
    return out


def test_tracking_server_lost_mid_run_fails_clearly_and_a_rerun_completes(
    tmp_path: Path, tiny_project
) -> None:
    base_params, processed, split = tiny_project
    store = tmp_path / "store"
    store.mkdir()
    backend = f"sqlite:///{store / 'mlflow.db'}"
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    def train(uri: str) -> subprocess.Popen:
        params = _params(base_params, uri, tmp_path / "params.yaml")
        command = gil_train_command(params, processed, split, tmp_path / "ckpt")
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    server, url = start_local_server(backend, store / "artifacts")
    victim = train(url)
    _wait_for(lambda: stage_path(tmp_path / "ckpt" / "seed_0", 0).exists())
    stop_server(server)
    _, stderr = victim.communicate(timeout=300)
    assert victim.returncode == 2, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "MLflow tracking at" in lines[0] and "rerun" in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not stage_path(tmp_path / "ckpt" / "seed_0", 2).exists()

    server, url = start_local_server(backend, store / "artifacts")
    try:
        rerun = train(url)
        _, stderr = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, stderr[-2000:]
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("gil-synthetic").experiment_id])
    finally:
        stop_server(server)
    parents = [r for r in runs if r.data.tags.get("gil.kind") == "parent"]
    current = [r for r in parents if r.data.tags.get("gil.superseded") == "false"]
    assert len(current) == 1 and current[0].info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"], "no run may be left looking alive"
    assert stage_path(tmp_path / "ckpt" / "seed_0", 2).exists()
