"""Shared fixtures: a tiny synthetic dataset, params for it, its processed data and split, and a CLI runner.

Why: every test module needs small, fast, known data; building it once per session keeps the suite fast.
Fixtures that return paths to shared files are read-only by convention: copy before modifying.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gil.command_server import ENV_VAR

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def _session_ray_token() -> None:
    """Every Ray process of the test session (local ``ray.init``, ``ray start`` heads and nodes, the
    driver joining them) authenticates with one token made for this session, in a file of its own.

    Why: Ray 2.60 turns token authentication on by default and otherwise reads or writes
    ``~/.ray/auth_token``; tests must pass with an empty ``HOME`` and whatever ``RAY_AUTH_MODE`` the
    caller's environment holds, and must never touch the user's ``~/.ray``. Set before Ray is
    imported (this module loads first), inherited by every subprocess.
    """
    import secrets
    import tempfile

    token_file = Path(tempfile.mkdtemp(prefix="gil-test-ray-token-")) / "auth_token"
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.pop("RAY_AUTH_TOKEN", None)


_session_ray_token()

# The environment as the session starts. Libraries change os.environ as tests run them in-process
# (ray.init sets PYTHONBREAKPOINT, torch's compiler TORCHINDUCTOR_CACHE_DIR): subprocesses that must
# not depend on which tests ran before, such as the DVC projects' stages, start from this.
SESSION_ENVIRONMENT = dict(os.environ)

SYNTHETIC = {"n_cells": 300, "n_genes": 60, "n_types": 4, "seed": 0, "n_groups": 2, "n_markers": 5}


def _tiny_params(h5ad: Path) -> dict:
    """Params for the synthetic data: small QC thresholds, random gene split, one task per group."""
    return {
        "dataset": {"name": "synthetic", "path": str(h5ad), "label_columns": ["cell_type", "group"]},
        "prepare": {"min_genes_per_cell": 5, "min_cells_per_gene": 3, "chunk_size": 64},
        "split": {
            "seed": 0,
            "eval_fraction": 0.3,
            "base_fraction": 0.5,
            "genes": {"method": "random", "n_stages": 2, "stage_fraction": 0.1, "top_n": 10},
            "tasks": [
                {"name": "group0", "label": "cell_type", "column": "group", "values": ["group0"]},
                {"name": "group1", "label": "cell_type", "column": "group", "values": ["group1"]},
            ],
        },
        "model": {"preset": "tiny", "init": {"from": "random"}},  # dvc.yaml's prepare/split need the key
        "train": {"seeds": [0], "epochs_per_stage": 1, "batch_size": 16, "warmup_steps": 0},
        "strategies": {},
        "benchmark": [],
        "tracking": {"enabled": False},
    }


@pytest.fixture(scope="session")
def synthetic_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-cell x 60-gene synthetic count file (4 types in 2 groups, 5 markers per type). Read-only."""
    from gil.data.synthetic import write_synthetic_h5ad

    return write_synthetic_h5ad(tmp_path_factory.mktemp("synthetic") / "synthetic.h5ad", **SYNTHETIC)


@pytest.fixture
def tiny_params(synthetic_h5ad: Path) -> dict:
    """A fresh params dict for :func:`gil.config.config_from_dict`, pointing at ``synthetic_h5ad``."""
    return _tiny_params(synthetic_h5ad)


@pytest.fixture(scope="session")
def tiny_processed(synthetic_h5ad: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gil prepare`` output of the synthetic data under the tiny params. Read-only."""
    from gil.config import config_from_dict
    from gil.data.prepare import run_prepare

    out = tmp_path_factory.mktemp("tiny") / "processed"
    run_prepare(config_from_dict(_tiny_params(synthetic_h5ad)), out)
    return out


@pytest.fixture(scope="session")
def tiny_split(synthetic_h5ad: Path, tiny_processed: Path) -> Path:
    """``gil split`` output (random genes, 2 stages, 2 tasks) of ``tiny_processed``. Read-only."""
    from gil.config import config_from_dict
    from gil.data.split import run_split

    out = tiny_processed.parent / "split"
    run_split(config_from_dict(_tiny_params(synthetic_h5ad)), tiny_processed, out)
    return out


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``gil ARGS...`` in-process through :func:`gil.cli.main` (the console entry point).

    In-process because a fresh interpreter costs seconds of imports per call; tests that need the
    real process boundary use ``subprocess`` with ``[sys.executable, "-m", "gil.cli", ...]``.
    """
    from gil.cli import main

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["gil", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def write_params(tmp_path: Path) -> Callable[[dict], Path]:
    """Write a params dict as YAML under ``tmp_path`` and return its path."""
    import yaml

    def write(params: dict, name: str = "params.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    return write


TINY_STRATEGIES = {
    "finetune": {"kind": "finetune"},
    "joint": {"kind": "joint"},
    "replay": {"kind": "replay", "buffer_size": 20, "mix": 0.25},
    "distill": {"kind": "distill", "lam": 1.0},
    "ewc": {"kind": "ewc", "lam": 10.0, "fisher_batches": 2},
    "replay_distill": {"kind": "replay_distill", "buffer_size": 20, "mix": 0.25, "lam": 1.0},
}


def tiny_pipeline_params(h5ad: Path) -> dict:
    """The tiny params with every strategy, a short benchmark and enough epochs to learn something."""
    params = _tiny_params(h5ad)
    params["strategies"] = dict(TINY_STRATEGIES)
    params["benchmark"] = ["finetune", "replay"]
    params["train"] = {
        "seeds": [0],
        "epochs_per_stage": 3,
        "batch_size": 16,
        "warmup_steps": 2,
        "device": "cpu",
    }
    # One C and 3 folds keep the probes quick (their protocol is pinned in test_probes.py).
    params["evaluate"] = {"seed": 3, "repeats": 1, "batch_size": 32, "probe": {"folds": 3, "c_grid": [1.0]}}
    params["tuned"] = {"path": None, "rows": []}  # dvc.yaml's tuned stages need the key
    return params


@pytest.fixture(scope="session")
def tiny_project(synthetic_h5ad: Path, tiny_processed: Path, tiny_split: Path) -> tuple[Path, Path, Path]:
    """(params file with every strategy, processed dir, split dir) for end-to-end tests. Read-only."""
    import yaml

    params = tiny_processed.parent / "params_pipeline.yaml"
    params.write_text(yaml.safe_dump(tiny_pipeline_params(synthetic_h5ad), sort_keys=False))
    return params, tiny_processed, tiny_split


ROOT = Path(__file__).resolve().parents[1]


def _run_checked(args: list[str], cwd: Path, env: dict) -> str:
    import subprocess

    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_repro_would_run(repo: Path, env: dict, pipeline: str = "dvc.yaml") -> set[str]:
    """The stages ``dvc repro`` would run, without running them: those DVC finds changed (``repro
    --dry``) and every stage downstream of them in ``dvc dag`` (a rerun rewrites its outputs, which are
    their inputs). Names without the ``dvc.yaml:`` prefix.

    For tests of which stages a change makes stale, in seconds instead of a minute of retraining
    that the fixtures already ran once. It is what a real ``dvc repro`` runs at most: a real one
    skips a downstream stage whose inputs came out of the rerun unchanged."""
    dry = _run_checked([sys.executable, "-m", "dvc", "repro", "--dry", pipeline], repo, env)
    changed = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    dot = _run_checked([sys.executable, "-m", "dvc", "dag", "--dot", pipeline], repo, env)
    edges = [
        line.strip().rstrip(";").replace('"', "").split(" -> ") for line in dot.splitlines() if "->" in line
    ]
    would_run, frontier = set(changed), list(changed)
    while frontier:
        stage = frontier.pop()
        for upstream, downstream in edges:
            if upstream == stage and downstream not in would_run:
                would_run.add(downstream)
                frontier.append(downstream)
    return {name.split(":")[-1] for name in would_run}


def project_environment() -> dict[str, str]:
    """The environment the tests' DVC projects run in (and their command server starts in)."""
    env = {
        **SESSION_ENVIRONMENT,
        "DVC_NO_ANALYTICS": "1",
        "TQDM_DISABLE": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{SESSION_ENVIRONMENT['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop(ENV_VAR, None)
    return env


@pytest.fixture(scope="session")
def command_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``gil serve`` for this session's (this xdist worker's) DVC projects: their stages run in
    forks of it instead of fresh processes that import torch and MLflow again, ~5 s each
    (``benchmarks/README.md``; what a fork shares with a fresh process: ``gil.command_server``).
    Stages run fresh where it declines; its log (``serve.log`` beside the socket, copied to pytest's
    temporary directory at the end) says why."""
    import shutil
    import subprocess
    import tempfile
    import time

    folder = Path(tempfile.mkdtemp(prefix="gil-serve-"))  # short: a socket path has ~100 characters
    socket, log = folder / "gil.sock", folder / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(  # its own session: no signal to this worker's group reaches it
            [sys.executable, "-m", "gil.cli", "serve", "--socket", str(socket)],
            env=project_environment(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while not socket.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert socket.exists(), f"gil serve did not start:\n{log.read_text()}"
    yield socket
    running = server.poll() is None
    server.terminate()
    server.wait(timeout=60)
    kept = Path(shutil.copy(log, tmp_path_factory.mktemp("command-server")))  # with pytest's temp dirs
    shutil.rmtree(folder)
    assert running, f"gil serve ended during the session (exit {server.returncode}):\n{kept.read_text()}"


def init_project(
    repo: Path,
    data: Path,
    pipeline_file: str,
    pipeline: dict,
    params: dict,
    command_server: Path | None = None,
) -> dict:
    """A new git + DVC repo ``repo`` holding ``pipeline`` (at ``pipeline_file``), ``params`` (with
    ``data``, an .h5ad or a SOMA experiment's directory, copied to ``raw.h5ad`` or ``raw.soma`` and
    tracked by DVC), copies of the project's source files the pipeline depends on and a local DVC
    remote beside the repo; committed. Returns the environment to run in: with ``command_server``,
    its ``gil`` commands run there."""
    import shutil

    import yaml

    env = {**project_environment(), "DVC_SITE_CACHE_DIR": str(repo / ".site-cache")}
    if command_server is not None:
        env[ENV_VAR] = str(command_server)
    (repo / pipeline_file).parent.mkdir(parents=True, exist_ok=True)
    (repo / pipeline_file).write_text(yaml.safe_dump(pipeline, sort_keys=False))
    raw = "raw.soma" if data.is_dir() else "raw.h5ad"
    (shutil.copytree if data.is_dir() else shutil.copy)(data, repo / raw)
    (repo / "params.yaml").write_text(
        yaml.safe_dump({**params, "dataset": {**params["dataset"], "path": raw}}, sort_keys=False)
    )
    for source in _source_deps(pipeline):  # the pipeline depends on these files of the project
        target = repo / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, dirs_exist_ok=True)
        else:
            shutil.copy(ROOT / source, target)
    dvc = [sys.executable, "-m", "dvc"]
    _run_checked(["git", "init", "-q"], repo, env)
    _run_checked([*dvc, "init", "-q"], repo, env)
    _run_checked([*dvc, "remote", "add", "-d", "local", str(repo.parent / "remote")], repo, env)
    _run_checked([*dvc, "add", "-q", raw], repo, env)
    _run_checked(["git", "add", "-A"], repo, env)
    _run_checked(["git", "commit", "-qm", "init"], repo, env)
    return env


@pytest.fixture(scope="session")
def mlflow_store_template(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with MLflow's tables, made once per MLflow version and kept in
    pytest's cache. Why: MLflow creates the tables of a new store by running its migrations (1-3 s
    here), and the suite and each mutant of ``make mutants`` create many stores; a copy of this
    file is the same store in milliseconds (see :func:`new_sqlite_store`)."""
    import subprocess
    from importlib.metadata import version

    name = f"mlflow-store-{version('mlflow')}"
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider: made per session
    folder = cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name)
    template = folder / "mlflow.db"
    if not template.exists():
        scratch = template.with_name(f"creating-{os.getpid()}.db")
        create = (
            "from mlflow.tracking import MlflowClient; MlflowClient(tracking_uri={!r}).search_experiments()"
        )
        subprocess.run(  # made in its own folder: the copies set the one path that depends on it
            [sys.executable, "-c", create.format(f"sqlite:///{scratch}")],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        os.replace(scratch, template)  # atomic: xdist workers may race to make it
    return template


def new_sqlite_store(template: Path, directory: Path) -> str:
    """A new MLflow SQLite store at ``directory/mlflow.db``, copied from ``template``; its URI.

    The copy equals a store MLflow would create here except for one path: the default experiment's
    artifact location, which MLflow sets from the working directory; it is set as MLflow would."""
    import shutil
    import sqlite3

    database = directory / "mlflow.db"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, database)
    with sqlite3.connect(database) as connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(Path.cwd() / "mlruns" / "0"),),
        )
    connection.close()
    return f"sqlite:///{database}"


def tracked_to(repo: Path) -> dict:
    """Tracking into ``repo/mlruns/mlflow.db`` without the model registry (faster)."""
    return {"enabled": True, "uri": f"sqlite:///{repo}/mlruns/mlflow.db", "register_models": False}


def build_tiny_project(
    repo: Path,
    data: Path,
    customise: Callable[[dict, Path], None] | None = None,
    command_server: Path | None = None,
) -> dict:
    """Run the project's pipeline (minus the Zeisel stage) on ``data`` (an .h5ad or a SOMA experiment)
    in a new repo (:func:`init_project`) with tiny params and tracking to ``repo/mlruns/mlflow.db``.
    ``customise(params, repo)`` may change the params and add files before the first commit. Returns
    the environment it ran with."""
    import yaml

    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    del pipeline["stages"]["zeisel"]
    params = {**tiny_pipeline_params(data), "tracking": tracked_to(repo)}
    if customise is not None:
        customise(params, repo)
    env = init_project(repo, data, "dvc.yaml", pipeline, params, command_server)
    _run_checked([sys.executable, "-m", "dvc", "repro"], repo, env)
    return env


def _source_deps(pipeline: dict) -> set[str]:
    """The dependencies of ``pipeline``'s stages that are files of the project, not stage outputs."""
    deps = set()
    for stage in pipeline["stages"].values():
        for dep in stage.get("do", stage).get("deps", []):
            if dep.startswith("src/") or dep == "gene_lists":
                deps.add(dep)
    return deps


@pytest.fixture(scope="session")
def dvc_project(
    tmp_path_factory: pytest.TempPathFactory, synthetic_h5ad: Path, command_server: Path
) -> tuple[Path, dict]:
    """A finished tiny benchmark (finetune and replay, one seed) built by real ``dvc repro``.

    Shared by the pipeline and notebook tests to run the pipeline once. Read-only: a test that
    changes a project works on a copy (``own_project`` in ``test_pipeline.py``).
    """
    repo = tmp_path_factory.mktemp("project")
    return repo, build_tiny_project(repo, synthetic_h5ad, with_tuned_finetune, command_server)


TUNED_FINETUNE_LR = 0.01


def with_tuned_finetune(params: dict, repo: Path) -> None:
    """A tuned file as `gil tune` writes it, with a tuned row of fine-tuning in the benchmark."""
    import yaml

    entry = {"kind": "finetune", "train": {"lr": TUNED_FINETUNE_LR}}
    (repo / "tuned.yaml").write_text(yaml.safe_dump({"strategies": {"finetune@tuned": entry}}))
    params["tuned"] = {"path": "tuned.yaml", "rows": ["finetune"]}


def gil_train_command(
    params: Path, processed: Path, split: Path, out: Path, strategy: str = "replay"
) -> list[str]:
    """``gil train`` as a separate process (for tests that kill it or its tracking server)."""
    return [
        sys.executable,
        "-m",
        "gil.cli",
        "train",
        "-s",
        strategy,
        "-p",
        str(params),
        "--processed",
        str(processed),
        "--split",
        str(split),
        "--out",
        str(out),
    ]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - xdist's types
    """``--dist loadfile`` with the heaviest files first (see ``_scheduling.py``)."""
    if config.getoption("dist") != "loadfile":
        return None
    from _scheduling import HeaviestFilesFirst

    return HeaviestFilesFirst(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """Under ``make mutants`` a test's cost includes its fixtures' setup (see ``_mutmut.py``)."""
    from _mutmut import register_if_mutmut_collects_stats

    register_if_mutmut_collects_stats(config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``make mutants``, a mutant's own module's tests first (see ``_mutmut.py``)."""
    from _mutmut import own_tests_first

    own_tests_first(items)
