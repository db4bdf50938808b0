"""``gil sweep`` and ``gil tune``: hyperparameter search of one strategy, and of all with one budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gil.cli.common import (
    DEFAULT_PARAMS,
    ParamsOption,
    ProcessedOption,
    SplitOption,
    StrategyOption,
    app,
    config_of,
    require_strategy,
)

AddressArg = Annotated[
    str, typer.Option(help="'local' (Ray on this machine), 'auto' or HOST:PORT of a running cluster.")
]
BaseOption = Annotated[
    Path | None,
    typer.Option(
        "--base",
        help="Shared base stage (checkpoints/base): trials start stage 1 from it, as benchmark rows do.",
    ),
]
NumSamplesOption = Annotated[int | None, typer.Option(help="Trials (default: sweep.num_samples).")]
ConcurrentOption = Annotated[
    int | None, typer.Option(help="Concurrent trials (default: sweep.max_concurrent).")
]
CpusOption = Annotated[float | None, typer.Option(help="CPUs per trial, fractions allowed.")]
GpusOption = Annotated[
    float | None,
    typer.Option(help="GPUs per trial (default: a share of the cluster's GPUs, none if it has none)."),
]


@app.command()
def sweep(
    strategy: StrategyOption,
    params: ParamsOption = DEFAULT_PARAMS,
    processed: ProcessedOption = Path("data/processed"),
    split_dir: SplitOption = Path("data/split"),
    address: AddressArg = "local",
    num_samples: NumSamplesOption = None,
    max_concurrent: ConcurrentOption = None,
    cpus_per_trial: CpusOption = None,
    gpus_per_trial: GpusOption = None,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", help="Seconds for the whole sweep.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the latest interrupted sweep of this strategy.")
    ] = False,
    write_best: Annotated[
        bool, typer.Option("--write-best/--no-write-best", help="Write the best values into the params file.")
    ] = False,
    base: BaseOption = None,
) -> None:
    """Hyperparameter sweep of one strategy (Ray Tune + Optuna TPE + ASHA) on validation cells."""
    from gil.sweep.runner import sweep_command

    config = config_of(params)
    require_strategy(config, strategy)
    typer.echo(
        sweep_command(
            config,
            strategy,
            params,
            address,
            num_samples,
            max_concurrent,
            cpus_per_trial,
            gpus_per_trial,
            time_budget,
            resume,
            write_best,
            processed,
            split_dir,
            base,
        )
    )


@app.command()
def tune(
    strategy: Annotated[
        list[str] | None, typer.Option("--strategy", "-s", help="Tune these (default: the benchmark list).")
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS,
    processed: ProcessedOption = Path("data/processed"),
    split_dir: SplitOption = Path("data/split"),
    address: AddressArg = "local",
    base: BaseOption = Path("checkpoints/base"),
    collect_only: Annotated[
        bool, typer.Option(help="Only write the tuned file from the existing reports/sweeps/*.json.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Tuned params file (default: tuned.path).")] = None,
    reports: Annotated[Path, typer.Option(help="Where the sweeps' reports are.")] = Path("reports/sweeps"),
) -> None:
    """Sweep every strategy with the same budget; write the winners as NAME@tuned to the tuned file."""
    from gil.sweep.tuned import collect_tuned

    config = config_of(params)
    names = strategy or config.benchmark
    for name in names:
        require_strategy(config, name)
    out = out or config.tuned.path or Path("tuned.yaml")
    if not collect_only:
        from gil.sweep.runner import sweep_command

        for name in names:
            # The sweep section's own budget for every strategy: no per-strategy overrides here.
            summary = sweep_command(
                config,
                name,
                params,
                address,
                num_samples=None,
                max_concurrent=None,
                cpus_per_trial=None,
                gpus_per_trial=None,
                time_budget_s=None,
                resume=False,
                write_best=False,
                processed_dir=processed,
                split_dir=split_dir,
                base_dir=base,
                report_dir=reports,
            )
            typer.echo(summary)
    typer.echo(collect_tuned(config, names, out, reports))
