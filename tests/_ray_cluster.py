"""Real Ray clusters for tests: ``ray start`` processes with their own temp dir, stopped by PID.

Never ``ray stop`` (it stops every Ray process on the machine, other people's too). Token
authentication as in production (``RAY_AUTH_MODE=token``), with the test session's own token
(``RAY_AUTH_TOKEN_PATH``, set in ``conftest.py``), never the user's ``~/.ray/auth_token``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _bound_address(address_file: Path) -> str | None:
    """The head's ``HOST:PORT`` once it has written it and listens there."""
    text = address_file.read_text().strip() if address_file.exists() else ""
    return text if text and _port_open(int(text.rsplit(":", 1)[1])) else None


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the process group of ``process`` (``ray start`` and what it started)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    ray_bin = Path(sys.executable).with_name("ray")
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    with log.open("wb") as output:
        return subprocess.Popen(
            [str(ray_bin), "start", *args, *common],
            env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


@dataclass(frozen=True)
class RayNodes:
    """A running test cluster: the head's address and the sessions of its nodes' processes."""

    address: str
    sessions: tuple[int, ...]  # the session ids of its `ray start` processes (start_new_session)

    def task_workers(self, function: str) -> list[int]:
        """PIDs of this cluster's workers now running a task of ``function`` (its process title)."""
        title = f"ray::{function}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if (
                    entry.name.isdigit()
                    and (entry / "cmdline").read_bytes().startswith(title)
                    and os.getsid(int(entry.name)) in self.sessions
                ):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids


@contextlib.contextmanager
def ray_cluster(
    logs: Path, head: list[str], workers: list[list[str]] = (), timeout: float = 90
) -> Iterator[RayNodes]:
    """A head (``ray start --head`` plus ``head`` options) and one node per entry of ``workers``;
    yields them once the head listens (the caller waits for the nodes it needs:
    :func:`wait_for_nodes`). ``--port 0``: Ray binds a free port itself and writes the address
    into its temp dir (``ray_current_cluster``)."""
    temp_dir = tempfile.mkdtemp(prefix="gil-ray-", dir="/tmp")  # Unix socket paths: at most 107 bytes
    processes = [
        _ray_start(
            ["--head", "--port", "0", "--temp-dir", temp_dir, "--include-dashboard=false", *head],
            logs / "ray-head.log",
        )
    ]
    try:
        deadline = time.monotonic() + timeout
        address_file = Path(temp_dir) / "ray_current_cluster"
        while (address := _bound_address(address_file)) is None:
            assert processes[0].poll() is None and time.monotonic() < deadline, (
                logs / "ray-head.log"
            ).read_text()
            time.sleep(0.5)
        for index, options in enumerate(workers):
            processes.append(_ray_start(["--address", address, *options], logs / f"ray-node-{index}.log"))
        yield RayNodes(address, tuple(process.pid for process in processes))
    finally:
        for process in reversed(processes):
            stop_group(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_nodes(count: int, timeout: float = 90) -> None:
    """Wait until the connected Ray cluster has ``count`` live nodes."""
    import ray

    deadline = time.monotonic() + timeout
    while sum(node["Alive"] for node in ray.nodes()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} Ray nodes joined"
        time.sleep(0.5)
