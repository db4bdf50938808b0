"""The ``gil`` command line: each command parses its arguments, loads the config and calls one function.

The commands live in modules by role (:mod:`gil.cli.data`, :mod:`gil.cli.training`,
:mod:`gil.cli.results`, :mod:`gil.cli.serving`), on the one Typer app of :mod:`gil.cli.common`.
User errors (:class:`gil.errors.GilError`) print as one line on stderr and exit with status 2.
"""

from __future__ import annotations

import sys

from gil.cli import data, results, serving, training, tuning  # noqa: F401 - importing registers the commands
from gil.cli.common import app, run_app
from gil.command_server import run_served

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: hand the command to the ``gil serve`` that ``GIL_COMMAND_SERVER`` names
    (:mod:`gil.command_server`), or run it here when there is none."""
    served = run_served(sys.argv)
    if served is not None:
        sys.exit(served)
    run_app()
