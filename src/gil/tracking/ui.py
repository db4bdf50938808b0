"""``gil ui``: the MLflow UI on the project's store, with the link that opens it as the leaderboard.

Why links rather than the UI's front page: MLflow 3.17's UI opens an experiment on its GenAI pages
(traces, sessions) unless the URL or the browser's saved sidebar switch says "model training", and
a runs table shows no metric until columns are picked. The links printed here carry
``workflowType=machine_learning`` and the experiment's saved leaderboard view
(:mod:`gil.tracking.leaderboard`), so the first page a user sees is the ranked training runs.
"""

from __future__ import annotations

import signal
import sys
import webbrowser

from mlflow.tracking import MlflowClient

from gil.config import TrackingConfig
from gil.tracking.leaderboard import (
    experiment_url,
    has_leaderboard_view,
    leaderboard_url,
    publish_leaderboard_view,
)
from gil.tracking.server import (
    LOCAL_HOST,
    UI_PORT,
    default_backend_uri,
    prepared_sqlite_uri,
    sqlite_artifact_root,
    start_local_server,
    stop_server,
)


def experiment_links(url: str, experiment: str) -> dict[str, str]:
    """The leaderboard and experiment links on the UI at ``url`` (empty before the first run).

    Publishes the default leaderboard view (by ``forgetting``) when ``gil leaderboard`` has not
    saved one yet, so the link never names a missing view.
    """
    client = MlflowClient(tracking_uri=url)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    if not has_leaderboard_view(client, found.experiment_id):
        publish_leaderboard_view(client, found.experiment_id)
    return {
        "Leaderboard": leaderboard_url(url, found.experiment_id),
        f"Experiment {experiment}": experiment_url(url, found.experiment_id),
    }


def run_ui(
    config: TrackingConfig,
    experiment: str,
    host: str = LOCAL_HOST,
    port: int = UI_PORT,
    open_browser: bool = False,
) -> None:
    """Serve the project's SQLite store with the MLflow UI until Ctrl-C or SIGTERM; print (and
    with ``open_browser`` open) the leaderboard link.

    Serves ``tracking.uri`` when it is a SQLite store, else the default store under ``mlruns/``.
    Runs then log either directly to the SQLite file or through this server (``tracking.uri:
    http://127.0.0.1:5000``), which is what concurrent sweep trials need.
    """
    configured = config.uri if config.uri and config.uri.startswith("sqlite:///") else None
    uri = prepared_sqlite_uri(configured or default_backend_uri())
    artifact_root = sqlite_artifact_root(uri)
    assert artifact_root is not None  # a SQLite URI by construction
    process, url = start_local_server(uri, artifact_root, host=host, port=port)
    # The server has its own process group: stop it on SIGTERM too, not only on Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        links = experiment_links(url, experiment)
        print(f"MLflow UI at {url} (store {uri}); log through it with tracking.uri: {url}. Ctrl-C stops it.")
        for label, link in links.items():
            print(f"{label}: {link}")
        if not links:
            print(f"experiment {experiment!r} has no runs yet: run the pipeline (`make run`), then reload")
        sys.stdout.flush()  # a pipe (a test, a log) sees the links before the server exits
        if open_browser:
            webbrowser.open(next(iter(links.values()), url))
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(process)
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
