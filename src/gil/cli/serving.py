"""``gil serve``: run gil commands in forks of one process that imported the heavy libraries once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gil.cli.common import app, run_app


@app.command()
def serve(
    socket: Annotated[
        Path,
        typer.Option(
            "--socket", help="Unix socket to listen on (created owner-only; removed when the server stops)."
        ),
    ],
) -> None:
    """Serve gil commands: a gil started with GIL_COMMAND_SERVER=SOCKET runs in a fork of this process.

    Each command then skips the 5–7 s of imports a fresh process pays (torch, MLflow, scikit-learn),
    which is most of a stage's time on small data: `make run` and the test suite start one. Commands
    whose import-time environment (OMP_*, TQDM_*, PYTHON*, ...) differs, or that come after gil's
    source changed, run as fresh processes. Stop it with Ctrl-C or SIGTERM.
    """
    from gil.command_server import serve as serve_commands
    from gil.errors import GilError

    if not hasattr(os, "fork"):
        raise GilError(
            "gil serve forks a process per command, which this system cannot (Linux and macOS can)"
        )
    if socket.exists():
        raise GilError(
            f"{socket} already exists: another server may use it; remove it or choose another path"
        )
    if not socket.parent.is_dir():
        raise GilError(f"{socket.parent} is not a directory; create it or choose another --socket")
    serve_commands(socket, run_app)
