"""Where runs are recorded, and a local MLflow tracking server for the UI and for concurrent writers.

Why a module of its own: resolving the store, checking that a server answers and starting one are
needed by training (fail in the first second, not after an hour of training), by ``gil ui``, by
sweeps (several concurrent trials must write through one server: SQLite with concurrent writers
fails with "database is locked") and by tests. None of it needs the ``mlflow`` package itself, so
this module does not import it: reachability checks stay fast (``gil ui``, which also prints
MLflow links, is :mod:`gil.tracking.ui`).

Store layout: without ``tracking.uri`` and without ``MLFLOW_TRACKING_URI`` runs go to
``sqlite:///<abs>/mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` (the plain
``./mlruns`` file store is deprecated in MLflow 3). For any SQLite store the artifacts live in an
``artifacts`` directory next to the database file, never in MLflow's default ``./mlartifacts``.
Servers bind 127.0.0.1 unless another host is passed explicitly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from gil.config import TrackingConfig
from gil.errors import GilError

DEFAULT_STORE_DIR = Path("mlruns")
LOCAL_HOST = "127.0.0.1"
UI_PORT = 5000
_SQLITE_PREFIX = "sqlite:///"


def default_backend_uri(store_dir: Path = DEFAULT_STORE_DIR) -> str:
    """The project's default SQLite store, as an absolute URI (independent of later ``chdir``)."""
    return f"{_SQLITE_PREFIX}{(store_dir / 'mlflow.db').resolve()}"


def resolve_tracking_uri(config: TrackingConfig) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else the default SQLite store under ``mlruns/``.

    SQLite URIs come back absolute and their directory exists.
    """
    uri = config.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_backend_uri()
    return prepared_sqlite_uri(uri) if uri.startswith(_SQLITE_PREFIX) else uri


def prepared_sqlite_uri(uri: str) -> str:
    """``uri`` made absolute (Ray trials and DVC stages may run elsewhere), its directory created."""
    database = sqlite_database(uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    return f"{_SQLITE_PREFIX}{database}"


def sqlite_database(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI (absolute, or relative to the working directory)."""
    return Path(uri[len(_SQLITE_PREFIX) :]).resolve()


def sqlite_artifact_root(uri: str) -> Path | None:
    """Where artifacts of a SQLite store go (``artifacts/`` next to the database); None otherwise."""
    if not uri.startswith(_SQLITE_PREFIX):
        return None
    return sqlite_database(uri).parent / "artifacts"


def is_http(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (HTTP or HTTPS) rather than a local store."""
    return urlparse(uri).scheme in ("http", "https")


def ui_address(uri: str) -> str:
    """Where the MLflow UI of the store ``uri`` is: the tracking server itself, or for a local
    store the address ``gil ui`` serves it on by default."""
    return uri.rstrip("/") if is_http(uri) else f"http://{LOCAL_HOST}:{UI_PORT}"


def _health_ok(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Raise :class:`GilError` if ``uri`` is an HTTP tracking server that does not answer.

    Why: without this check a training run would fail (or hang in MLflow's retries) only at its
    first logging call. Non-HTTP stores (SQLite) are local files and need no check.
    """
    if is_http(uri) and not _health_ok(uri, timeout):
        raise GilError(
            f"MLflow tracking server at {uri} is unreachable; start it with `gil ui` or set "
            "tracking.enabled: false / tracking.on_unreachable: disable in params.yaml"
        )


def free_port(host: str = LOCAL_HOST) -> int:
    """A port on ``host`` that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def start_local_server(
    backend_uri: str,
    artifact_root: Path,
    host: str = LOCAL_HOST,
    port: int | None = None,
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mlflow server`` on ``backend_uri``; return the process and its URL once it answers.

    The server runs in its own process group (so :func:`stop_server` stops it and its workers by
    PID, never by name), with one worker (enough for a few concurrent writers, and SQLite prefers
    one writing process) and proxied artifacts stored under ``artifact_root``. ``port`` None picks
    a free port.
    """
    port = free_port(host) if port is None else port
    if _port_in_use(host, port):
        raise GilError(f"port {port} on {host} is already in use; pass another --port")
    artifact_root.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifact_root.resolve()),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    # MLflow 3's job runner (8 extra processes, for GenAI scorers and trace roll-ups gil does not
    # use) roughly doubles start time and memory on a small machine.
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, env=environment)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while not _health_ok(url, timeout=1.0):
        if process.poll() is not None:
            raise GilError(f"mlflow server exited with status {process.returncode}; see its output above")
        if time.monotonic() > deadline:
            stop_server(process)
            raise GilError(f"mlflow server at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)
    return process, url


def stop_server(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a server started by :func:`start_local_server`: SIGTERM its process group, then SIGKILL."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
