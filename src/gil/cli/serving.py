"""``gil serve``: run gil commands in forks of one process that imported the heavy libraries once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from gil.cli.common import app, run_app


@app.command(context_settings={"allow_interspersed_args": False})
def serve(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="Run this command with GIL_COMMAND_SERVER set, serve while it runs, exit with its status."
        ),
    ] = None,
    socket: Annotated[
        Path | None,
        typer.Option(
            "--socket",
            help="Unix socket to listen on, created owner-only and removed when the server stops "
            "(default with a COMMAND: one in a new temporary folder).",
        ),
    ] = None,
    log: Annotated[
        Path | None, typer.Option("--log", help="Append the server's log here (default: stderr).")
    ] = None,
) -> None:
    """Serve gil commands: a gil started with GIL_COMMAND_SERVER=SOCKET runs in a fork of this process.

    Each command then skips the 5–7 s of imports a fresh process pays (torch, MLflow, scikit-learn),
    most of a stage's time on small data. `gil serve -- dvc repro` serves the pipeline's stages
    (`make run` does). Commands whose import-time environment (OMP_*, TQDM_*, PYTHON*, ...)
    differs, or that come after gil's source changed, run as fresh processes. Without a COMMAND,
    stop it with Ctrl-C or SIGTERM.
    """
    import tempfile

    from gil.command_server import serve as serve_commands
    from gil.errors import GilError

    if not hasattr(os, "fork"):
        raise GilError(
            "gil serve forks a process per command, which this system cannot (Linux and macOS can)"
        )
    if command and shutil.which(command[0]) is None:
        raise GilError(
            f"command not found: {command[0]}; give a program on PATH, e.g. gil serve -- dvc repro"
        )
    if socket is None:
        if not command:
            raise GilError("give --socket PATH (or a COMMAND to serve, e.g. gil serve -- dvc repro)")
        socket = Path(tempfile.mkdtemp(prefix="gil-serve-")) / "gil.sock"
    if log is not None and not log.parent.is_dir():
        raise GilError(f"--log {log}: {log.parent} is not a directory; create it or choose another path")
    if socket.exists():
        raise GilError(
            f"{socket} already exists: another server may use it; remove it or choose another path"
        )
    if not socket.parent.is_dir():
        raise GilError(f"{socket.parent} is not a directory; create it or choose another --socket")
    raise typer.Exit(serve_commands(socket, run_app, log, command or None))
