"""What every ``gil`` command shares: the Typer app, option types, default paths, and the helpers
that load a config, resolve a setting's paths, open the tracker and the runner.

Heavy libraries are imported inside the helpers and commands so that ``gil --help`` is instant.
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


def run_app() -> None:
    """Run the command of ``sys.argv``, turning user errors into one line and exit status 2."""
    try:
        app()
    except GilError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


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


def config_of(params: Path, setting: str | None = None):  # noqa: ANN202 - returns gil.config.Config
    from gil.config import load_config

    return load_config(params, setting)


def path_or_default(given: Path | None, default: str, setting: str | None) -> Path:
    """``given``, else ``default`` (relative to the setting's directory when there is a setting)."""
    if given is not None:
        return given
    if setting is None:
        return Path(default)
    from gil.settings import setting_dir

    return setting_dir(setting) / default


StrategyOption = Annotated[str, typer.Option("--strategy", "-s", help="A name under 'strategies' in params.")]
ProcessedOption = Annotated[
    Path | None, typer.Option(help=f"Processed data directory (default: {PROCESSED}).")
]
CheckpointsOption = Annotated[
    Path | None, typer.Option(help="Checkpoints (default: checkpoints/<strategy>).")
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


def with_compute(config, **overrides):  # noqa: ANN001, ANN003, ANN202 - Config -> Config
    """``config`` with the ``compute`` values given on the command line (None: keep params'), validated."""
    from gil.config import config_from_dict

    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return config
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["compute"] = {**raw.get("compute", {}), **given}
    return config_from_dict(raw, Path("the command line"))


@contextlib.contextmanager
def runner_of(config):  # noqa: ANN001, ANN202 - Config -> Iterator[Runner | None]
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
                f"{nodes.index(placement.node_id) + 1}/{len(nodes)} "
                f"({placement.node_ip}, {placement.device}, data from {placement.data})"
            )


def start_workers_early(config, module: str) -> None:  # noqa: ANN001 - Config
    """Start the fork server of this command's seed workers (importing ``module``) before the
    command's own imports, when it will run local workers (see :mod:`gil.train.workers`)."""
    if config.compute.backend == "local" and config.compute.jobs > 1 and len(config.train.seeds) > 1:
        from gil.train.workers import start_worker_server

        start_worker_server(module)


def tracker_of(config):  # noqa: ANN001, ANN202 - Config -> Tracker
    """The configured tracker, checked for reachability before any work (imports MLflow lazily)."""
    if not config.tracking.enabled:
        from gil.tracking.base import NullTracker

        return NullTracker()
    from gil.tracking.mlflow_tracker import open_tracker

    return open_tracker(config.tracking, config.experiment_name())


def inputs_of(config, processed: Path | None, split_dir: Path | None, setting: str | None):  # noqa: ANN001, ANN202
    """Processed data, split, and the tags of every run: lineage, and the setting of a suite run."""
    from gil.data.layout import ProcessedData, Split
    from gil.lineage import lineage_tags
    from gil.settings import SETTING_TAG

    processed, split_dir = (
        path_or_default(processed, PROCESSED, setting),
        path_or_default(split_dir, SPLIT, setting),
    )
    data, split = ProcessedData.load(processed), Split.load(split_dir)
    tags = lineage_tags(config.dataset.path, processed, split_dir)
    if setting is not None:
        tags[SETTING_TAG] = setting
    return data, split, tags


def require_strategy(config, strategy: str) -> None:  # noqa: ANN001
    from gil.config import missing_strategy_hint

    if strategy not in config.strategies:
        raise GilError(missing_strategy_hint(config, strategy))


SeedOption = Annotated[list[int] | None, typer.Option(help="Train only these seeds (default: train.seeds).")]
FreshOption = Annotated[bool, typer.Option(help="Discard existing checkpoints instead of resuming.")]
