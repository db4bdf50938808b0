"""``gil train``, ``train-base``, ``bench``: training runs and throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gil.cli.common import (
    DEFAULT_PARAMS,
    PROCESSED,
    SPLIT,
    AddressOption,
    BackendOption,
    FreshOption,
    JobsOption,
    ParamsOption,
    ProcessedOption,
    SeedOption,
    SettingOption,
    SplitOption,
    app,
    config_of,
    inputs_of,
    path_or_default,
    require_strategy,
    runner_of,
    start_workers_early,
    tracker_of,
    with_compute,
)
from gil.errors import GilError


@app.command()
def train(
    strategy: Annotated[
        list[str],
        typer.Option(
            "--strategy",
            "-s",
            help="A name under 'strategies' in params; repeat it to train several strategies at once "
            "(with --backend ray their seeds all run concurrently).",
        ),
    ],
    params: ParamsOption = DEFAULT_PARAMS,
    processed: ProcessedOption = None,
    split_dir: SplitOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Checkpoint directory (default: checkpoints/<strategy>; one strategy only)."),
    ] = None,
    seed: SeedOption = None,
    fresh: FreshOption = False,
    base: Annotated[
        Path | None,
        typer.Option(
            help="Import stage 0 from this shared base run "
            "(written by `gil train-base`) instead of training it."
        ),
    ] = None,
    jobs: JobsOption = None,
    backend: BackendOption = None,
    address: AddressOption = None,
    setting: SettingOption = None,
) -> None:
    """Train stages 0..n of one strategy or several, for every seed (resumes automatically)."""
    config = with_compute(config_of(params, setting), jobs=jobs, backend=backend, address=address)
    start_workers_early(config, "gil.train.loop")
    from gil.train.loop import train_strategies

    for name in strategy:
        require_strategy(config, name)
    if out is not None and len(strategy) > 1:
        raise GilError("--out names one strategy's directory; leave it out when training several strategies")
    tracker = tracker_of(config)
    data, split, tags = inputs_of(config, processed, split_dir, setting)
    checkpoints = {
        name: path_or_default(out, f"checkpoints/{name}", setting) for name in dict.fromkeys(strategy)
    }
    with runner_of(config) as runner:
        grid = train_strategies(
            config,
            checkpoints,
            data,
            split,
            seeds=seed,
            tracker=tracker,
            tags=tags,
            fresh=fresh,
            base_dir=base,
            runner=runner,
        )
    for name, results in grid.items():
        _print_speeds(name, results)


def _print_speeds(name: str, results: dict) -> None:  # noqa: ANN001
    for run_seed, records in results.items():
        speeds = ", ".join(
            f"stage {r.stage}: {r.cells_per_second:.0f} cells/s, {r.seconds:.1f} s" for r in records
        )
        typer.echo(f"{name} seed {run_seed}: {speeds or 'already complete'}")


@app.command("train-base")
def train_base_command(
    params: ParamsOption = DEFAULT_PARAMS,
    processed: ProcessedOption = None,
    split_dir: SplitOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint directory (default: checkpoints/base).")
    ] = None,
    seed: SeedOption = None,
    fresh: FreshOption = False,
    jobs: JobsOption = None,
    backend: BackendOption = None,
    address: AddressOption = None,
    setting: SettingOption = None,
) -> None:
    """Train the strategy-independent base stage once per seed, to be shared by every strategy.

    With model.init from scgpt, stage 0 is the pretrained model (adapted for train.base_epochs, default 0).
    """
    config = with_compute(config_of(params, setting), jobs=jobs, backend=backend, address=address)
    start_workers_early(config, "gil.train.loop")
    from gil.data.layout import ProcessedData, Split
    from gil.train.loop import train_base

    data = ProcessedData.load(path_or_default(processed, PROCESSED, setting))
    split = Split.load(path_or_default(split_dir, SPLIT, setting))
    out = path_or_default(out, "checkpoints/base", setting)
    with runner_of(config) as runner:
        results = train_base(config, data, split, out, seeds=seed, fresh=fresh, runner=runner)
    _print_speeds("base", results)


@app.command()
def bench(
    preset: Annotated[
        str, typer.Option(help="Model preset: bench (the paper-code anchor), cpu, paper, tiny.")
    ] = "bench",
    steps: Annotated[int, typer.Option(help="Training steps measured.")] = 120,
    processed: ProcessedOption = Path("data/processed"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
    scaling: Annotated[
        bool, typer.Option(help="Peak RSS of prepare and training at 50k vs 200k cells.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Also print one JSON object as the last line.")
    ] = False,
) -> None:
    """Training/evaluation throughput, counted GFLOP per cell, fraction of matmul peak, memory scaling."""
    from gil.bench import run_bench

    typer.echo(run_bench(preset, json_out, scaling, steps, processed, device, threads))
