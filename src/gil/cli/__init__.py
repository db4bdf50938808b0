"""The ``gil`` command line: each command parses its arguments, loads the config and calls one function.

The commands live in modules by role (:mod:`gil.cli.data`, :mod:`gil.cli.training`,
:mod:`gil.cli.results`), on the one Typer app of :mod:`gil.cli.common`. User errors
(:class:`gil.errors.GilError`) print as one line on stderr and exit with status 2.
"""

from __future__ import annotations

import sys

import typer

from gil.cli import data, results, training, tuning  # noqa: F401 - importing registers the commands
from gil.cli.common import app
from gil.errors import GilError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit status 2."""
    try:
        app()
    except GilError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
