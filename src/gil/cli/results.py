"""``gil reference``, ``evaluate``, ``controls``, ``report``, ``leaderboard``, ``ui``: scoring the
checkpoints and showing the results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gil.cli.common import (
    CONTROLS,
    DEFAULT_PARAMS,
    PROCESSED,
    REFERENCE,
    SPLIT,
    AddressOption,
    BackendOption,
    CheckpointsOption,
    ParamsOption,
    ProcessedOption,
    SettingOption,
    SplitOption,
    StrategyOption,
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
def reference(
    params: ParamsOption = DEFAULT_PARAMS,
    processed: ProcessedOption = None,
    split_dir: SplitOption = None,
    out: Annotated[
        Path | None, typer.Option(help=f"Where to write the reference points (default: {REFERENCE}).")
    ] = None,
    setting: SettingOption = None,
) -> None:
    """Reference points: per-gene-mean predictor loss per gene set, majority and raw-expression probes."""
    from gil.data.layout import ProcessedData, Split
    from gil.files import write_json
    from gil.reference import compute_reference

    config = config_of(params, setting)
    data = ProcessedData.load(path_or_default(processed, PROCESSED, setting))
    document = compute_reference(config, data, Split.load(path_or_default(split_dir, SPLIT, setting)))
    out = path_or_default(out, REFERENCE, setting)
    write_json(out, document)
    mse = ", ".join(f"{v:.3f}" for v in document["gene_mean_mse"])
    typer.echo(f"per-gene-mean predictor MSE per gene set: {mse} -> {out}")
    for name, task in document["probe"].items():
        raw = ", ".join(f"{v:.2f}" for v in task["raw_accuracy"])
        typer.echo(f"task {name}: majority {task['majority_rate']:.2f}, raw-expression probe per stage {raw}")


@app.command()
def evaluate(
    strategy: StrategyOption,
    params: ParamsOption = DEFAULT_PARAMS,
    processed: ProcessedOption = None,
    split_dir: SplitOption = None,
    checkpoints: CheckpointsOption = None,
    reference_file: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help=f"Reference points file (`gil reference`, default: {REFERENCE}); computed here if absent.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Metrics file (default: metrics/<strategy>.json).")] = None,
    backend: BackendOption = None,
    address: AddressOption = None,
    setting: SettingOption = None,
) -> None:
    """Score every stage's checkpoint: results matrix R, continual-learning metrics, probes."""
    config = with_compute(config_of(params, setting), backend=backend, address=address)
    start_workers_early(config, "gil.evaluate")
    from gil.evaluate import evaluate_strategy
    from gil.files import read_json, write_json

    require_strategy(config, strategy)
    reference_file = path_or_default(reference_file, REFERENCE, setting)
    # Absent (a run outside the pipeline): evaluate_strategy computes the same points itself.
    reference_document = read_json(reference_file) if reference_file.is_file() else None
    tracker = tracker_of(config)
    data, split, tags = inputs_of(config, processed, split_dir, setting)
    with runner_of(config) as runner:
        document = evaluate_strategy(
            config,
            strategy,
            data,
            split,
            path_or_default(checkpoints, f"checkpoints/{strategy}", setting),
            tracker=tracker,
            tags=tags,
            reference=reference_document,
            runner=runner,
        )
    if setting is not None:
        document = {"setting": setting, **document}
    out = path_or_default(out, f"metrics/{strategy}.json", setting)
    write_json(out, document)
    regression = document["regression"]
    typer.echo(
        f"{strategy}: delta {regression['delta']}, forgetting {regression['forgetting']}, "
        f"final MSE {regression['final_mse']} -> {out}"
    )


@app.command()
def controls(
    strategy: Annotated[
        str, typer.Option("--strategy", "-s", help="The run whose final checkpoints are controlled.")
    ] = "finetune",
    params: ParamsOption = DEFAULT_PARAMS,
    processed: ProcessedOption = None,
    split_dir: SplitOption = None,
    checkpoints: CheckpointsOption = None,
    out: Annotated[Path | None, typer.Option(help="Output (default: metrics/controls.json).")] = None,
    setting: SettingOption = None,
) -> None:
    """Positive and negative controls: does the evaluation see complete forgetting, and exactly none?"""
    config = config_of(params, setting)
    start_workers_early(config, "gil.controls")
    from gil.controls import POSITIVE_CONTROLS, run_controls
    from gil.data.layout import ProcessedData, Split
    from gil.files import write_json

    require_strategy(config, strategy)
    data = ProcessedData.load(path_or_default(processed, PROCESSED, setting))
    split = Split.load(path_or_default(split_dir, SPLIT, setting))
    if split.n_stages < 2:
        raise GilError("controls need at least 2 incremental stages (a gene set learned before the last)")
    document = run_controls(
        config, strategy, data, split, path_or_default(checkpoints, f"checkpoints/{strategy}", setting)
    )
    out = path_or_default(out, CONTROLS, setting)
    write_json(out, document)
    positive = " / ".join(f"{document[f'delta_{name}']:.3f}" for name in POSITIVE_CONTROLS)
    typer.echo(
        f"{strategy}: delta {document['delta_intact']:.3f}; positive controls (rows of "
        f"{', '.join(document['forgotten_sets'])} {' / '.join(POSITIVE_CONTROLS)}) {positive}; "
        f"negative control {document['delta_negative']} -> {out}"
    )


@app.command()
def report(
    metrics: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Metrics files (default: metrics/<name>.json of 'benchmark', then of the tuned rows)."
        ),
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS,
    out: Annotated[
        Path | None,
        typer.Option(help="Markdown report (default: reports/benchmark.md, or reports/suite.md)."),
    ] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Directory for the PNG figures (default: plots).")
    ] = None,
    setting: SettingOption = None,
    suite: Annotated[
        bool,
        typer.Option(
            "--suite",
            help="Compare the strategies of every setting (suite/<setting>/metrics/): ranks per setting "
            "and overall, Kendall's W; writes reports/suite.md, .json and its figure.",
        ),
    ] = False,
) -> None:
    """Write the paper-style benchmark table and figures from the strategies' metrics files."""
    config = config_of(params, setting)
    if suite:
        from gil.settings import SUITE_ROOT
        from gil.suite import run_suite_report

        out = out or Path("reports/suite.md")
        settings = {name: entry.desc for name, entry in config.settings.items()}
        summary = run_suite_report(settings, config.suite.strategies or config.benchmark, SUITE_ROOT, out)
        order = ", ".join(row["strategy"] for row in summary["overall"])
        typer.echo(f"overall order by mean delta over settings: {order}; wrote {out}")
        return
    from gil.report import run_report

    if not metrics:
        metrics = [path_or_default(None, f"metrics/{name}.json", setting) for name in config.report_rows]
    out, plots = (
        path_or_default(out, "reports/benchmark.md", setting),
        path_or_default(plots, "plots", setting),
    )
    controls_file = path_or_default(None, CONTROLS, setting)
    run_report(metrics, out, plots, controls=controls_file if controls_file.is_file() else None)
    typer.echo(f"wrote {out} and figures in {plots}/")


@app.command()
def leaderboard(
    params: ParamsOption = DEFAULT_PARAMS,
    metric: Annotated[
        str | None, typer.Option(help="Metric to rank by (default: forgetting; delta with --suite).")
    ] = None,
    tiebreak: Annotated[str, typer.Option(help="Second ranking metric.")] = "final_mse",
    descending: Annotated[bool, typer.Option(help="Higher is better (accuracy-like metrics).")] = False,
    out: Annotated[Path, typer.Option(help="Directory for leaderboard.md and .csv.")] = Path("reports"),
    plots: Annotated[
        Path, typer.Option(help="The report's figures; its forgetting curves go on the leaderboard run.")
    ] = Path("plots"),
    skip_if_disabled: Annotated[
        bool,
        typer.Option(
            help="With tracking.enabled false, write a placeholder instead of failing (for the DVC pipeline)."
        ),
    ] = False,
    suite: Annotated[
        bool,
        typer.Option(
            "--suite",
            help="Rank the suite's strategies per setting and overall (mean over settings, mean rank); "
            "writes suite_leaderboard.md and .csv.",
        ),
    ] = False,
) -> None:
    """Rank strategies from the tracking server (mean ± std over seeds) and print the table."""
    config = config_of(params)
    names = ("suite_leaderboard", "reports/suite.md") if suite else ("leaderboard", "reports/benchmark.md")
    if not config.tracking.enabled:
        if not skip_if_disabled:
            raise GilError(
                "tracking is disabled (tracking.enabled: false) and the leaderboard is read from "
                f"MLflow; enable tracking, or read {names[1]}"
            )
        from gil.files import write_text

        note = f"Tracking is disabled (tracking.enabled: false): no leaderboard. See {names[1]}.\n"
        write_text(out / f"{names[0]}.md", note)
        write_text(out / f"{names[0]}.csv", "")
        typer.echo(note.strip())
        return
    if suite:
        from gil.tracking.leaderboard import run_suite_leaderboard

        experiment = config.suite_experiment_name()
        strategies = config.suite.strategies or config.benchmark
        typer.echo(run_suite_leaderboard(config.tracking, experiment, metric or "delta", out, strategies))
        return
    from gil.figures import FORGETTING_CURVES_PNG
    from gil.tracking.leaderboard import run_leaderboard

    typer.echo(
        run_leaderboard(
            config.tracking,
            config.experiment_name(),
            metric or "forgetting",
            out,
            tiebreak,
            descending,
            figures=[plots / FORGETTING_CURVES_PNG],
        )
    )


@app.command()
def ui(
    params: ParamsOption = DEFAULT_PARAMS,
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but 127.0.0.1 exposes the UI.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the leaderboard in the default web browser.")
    ] = False,
) -> None:
    """Start the MLflow UI on the project's store and print the leaderboard link (Ctrl-C stops it)."""
    from gil.tracking.ui import run_ui

    config = config_of(params)
    experiment = config.experiment_name()
    run_ui(config.tracking, experiment, host, port, open_browser)
