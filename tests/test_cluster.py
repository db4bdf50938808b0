"""The Ray compute backend: the benchmark grid as Ray tasks on a real 2-node cluster, device choice.

No mocks: the slow tests start a real Ray cluster of two raylets on this machine
(``ray.cluster_utils.Cluster``, as Ray's own tests do; stopped by its own ``shutdown``, never
``ray stop``), with a fake GPU resource on the head, train and evaluate the tiny grid through it
with a real SQLite MLflow store, and compare every output with the local backend's.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from _ray_cluster import RayNodes, ray_cluster, wait_for_nodes  # noqa: E402
from factories import make_config, make_processed, make_split  # noqa: E402

from gil.config import Config  # noqa: E402
from gil.data.layout import ProcessedData  # noqa: E402
from gil.errors import GilError  # noqa: E402
from gil.train.checkpoint import load_checkpoint, stage_path  # noqa: E402
from gil.train.devices import device_of_assignment, on_device, spread_devices  # noqa: E402
from gil.train.parallel import seed_jobs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {"seeds": [0, 1], "epochs_per_stage": 2, "batch_size": 16, "lr": 0.003, "warmup_steps": 2}
GRID = ("finetune", "replay")
TIMING = {"seconds", "cells_per_second"}  # wall-clock measurements: the only fields that may differ


def _config(**compute: object) -> Config:
    return make_config(train={**TRAIN, "device": "cpu", "threads": 1}, compute=compute)


# --- settings and device choice (fast) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        ({"address": "http://10.0.0.5"}, r"compute.address: not a Ray address; use local, auto or HOST:PORT"),
        ({"backend": "slurm"}, r"compute.backend: Input should be 'local' or 'ray'"),
        ({"devices": ["gpu1"]}, r"\['gpu1'\] are not devices; use cpu or cuda:<index>"),
        ({"devices": ["cuda:0", "cuda:1"]}, r"jobs \(1\) is less than the number of devices \(2\)"),
        ({"gpus_per_job": -1}, r"compute.gpus_per_job: Input should be greater than or equal to 0"),
    ],
)
def test_bad_compute_settings_fail_naming_the_key(compute: dict, message: str) -> None:
    with pytest.raises(GilError, match=message):
        _config(**compute)


def test_compute_settings_are_no_dvc_dependency_and_no_run_identity() -> None:
    """``compute`` must not change results, so no stage depends on it and runs do not record it."""
    from gil.config import run_params

    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for stage in pipeline["stages"].values():
        assert not any(str(key).startswith("compute") for key in stage.get("do", stage).get("params", []))
    local, ray = _config(), _config(backend="ray", gpus_per_job=0.5, address="auto")
    assert run_params(local, "replay") == run_params(ray, "replay")
    assert not any(key.startswith("compute") for key in run_params(ray, "replay"))


@pytest.mark.parametrize(
    ("gpu_ids", "visible", "device"),
    [
        ([], None, "cpu"),  # no GPU assigned: the CPU, even on a GPU node
        ([], "", "cpu"),
        (["3"], "3", "cuda:0"),  # Ray narrowed CUDA_VISIBLE_DEVICES to the task's GPU
        (["3", "5"], "3,5", "cuda:0"),
        (["5"], "3,5", "cuda:1"),
        (["2"], None, "cuda:2"),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: every GPU visible
    ],
)
def test_the_gpu_ray_assigns_becomes_the_torch_device(
    gpu_ids: list[str], visible: str | None, device: str
) -> None:
    assert device_of_assignment(gpu_ids, visible) == device


def test_an_assigned_gpu_that_is_not_visible_is_refused() -> None:
    with pytest.raises(GilError, match="Ray assigned GPU 1 but CUDA_VISIBLE_DEVICES is '0'"):
        device_of_assignment(["1"], "0")


def test_local_workers_take_the_devices_in_turn() -> None:
    config = _config(jobs=3, devices=["cuda:0", "cuda:1"])
    data = make_processed(n_cells=40, n_genes=20)
    jobs = seed_jobs(
        config,
        [0, 1, 2],
        data,
        strategy_name="finetune",
        split=make_split(data, genes_per_stage=4),
        checkpoints=Path("x"),
    )
    assert [job.device for job in jobs] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [job.worker_config().train.device for job in jobs] == ["cuda:0", "cuda:1", "cuda:0"]
    assert spread_devices(None, 2) == [None, None]
    assert on_device(config, None) is config


# --- a real 2-node cluster (slow) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProcessedData, object]:
    directory = tmp_path_factory.mktemp("data") / "processed"
    make_processed(n_cells=120, n_genes=30).write(directory)
    data = ProcessedData.load(directory)
    return data, make_split(data, genes_per_stage=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNodes]:
    """Two nodes on this machine joined by this process: a head with 1 CPU and 2 fake GPUs, a
    second node with 1 CPU (``ray start`` processes, token auth, stopped by PID)."""
    import ray

    from gil.cluster.session import ray_session

    ray.shutdown()
    logs = tmp_path_factory.mktemp("ray-logs")
    head = ["--num-cpus", "1", "--num-gpus", "2"]
    with ray_cluster(logs, head, [["--num-cpus", "1", "--resources", '{"second_node": 1}']]) as nodes:
        with ray_session(nodes.address):
            wait_for_nodes(2)
            yield nodes


@pytest.mark.slow
def test_a_gpu_task_trains_on_the_gpu_ray_assigned_it(cluster: RayNodes) -> None:
    """Two concurrent 1-GPU tasks get different GPUs; each picks the device of its own GPU."""
    import ray

    from gil.cluster.runner import task_device

    @ray.remote(num_cpus=0, num_gpus=1)
    def where() -> tuple[list[str], str | None, str]:
        time.sleep(0.5)  # both hold their GPU at once
        gpus = ray.get_runtime_context().get_accelerator_ids()["GPU"]
        return gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), task_device()

    narrowed = ray.get([where.remote() for _ in range(2)])
    assert sorted(gpus[0] for gpus, _, _ in narrowed) == ["0", "1"]
    assert all(visible == gpus[0] and device == "cuda:0" for gpus, visible, device in narrowed)
    noset = where.options(runtime_env={"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}})
    seen = ray.get([noset.remote() for _ in range(2)])
    assert sorted(device for _, _, device in seen) == ["cuda:0", "cuda:1"]

    @ray.remote(num_cpus=1)
    def cpu_task() -> str:
        return task_device()

    assert ray.get(cpu_task.remote()) == "cpu"  # no GPU asked for: none used, on a GPU node too


def _train_and_evaluate(config: Config, data, split, root: Path, tracker, runner) -> dict[str, dict]:  # noqa: ANN001
    from gil.evaluate import evaluate_strategy
    from gil.train.loop import train_base, train_strategies

    train_base(config, data, split, root / "base", progress=False, runner=runner)
    train_strategies(
        config,
        {name: root / name for name in GRID},
        data,
        split,
        tracker=tracker,
        progress=False,
        base_dir=root / "base",
        runner=runner,
        fresh=True,
    )
    return {
        name: evaluate_strategy(config, name, data, split, root / name, tracker=tracker, runner=runner)
        for name in GRID
    }


def _payloads(root: Path, name: str, seed: int, n_stages: int) -> list[dict]:
    return [load_checkpoint(stage_path(root / name / f"seed_{seed}", stage)) for stage in range(n_stages)]


def _same(x: object, y: object) -> bool:
    """Exactly equal nested checkpoint values: tensors bit for bit, containers element by element."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple):
        return type(x) is type(y) and len(x) == len(y) and all(map(_same, x, y))
    return x == y


def _same_payload(a: dict, b: dict) -> bool:
    """Two checkpoints with the same content apart from their wall-clock timings."""
    return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a.keys() - TIMING)


def _layout(uri: str) -> dict:
    """The MLflow record of a benchmark, without run ids and timings: what must not depend on the backend."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gil-test")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [run for run in runs if run.info.status != "FINISHED"]
    by_id = {run.info.run_id: run for run in runs}
    layout = {}
    for run in runs:
        tags = run.data.tags
        parent = by_id.get(tags.get("mlflow.parentRunId"))
        key = (tags["gil.kind"], tags["gil.strategy"], tags["gil.seed"], tags.get("gil.stage"))
        history = {
            name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
            for name in run.data.metrics
            if name not in {"cells_per_second", "stage_seconds"}
        }
        layout[key] = (parent.data.tags["gil.strategy"] if parent else None, run.data.params, history)
    models = {
        model.name: sorted(
            (v.tags["seed"], v.tags["stage"]) for v in client.search_model_versions(f"name='{model.name}'")
        )
        for model in client.search_registered_models()
    }
    return {"runs": layout, "models": models}


@pytest.mark.slow
def test_the_grid_on_two_nodes_gives_the_local_results(cluster: RayNodes, on_disk, tmp_path: Path) -> None:
    """2 strategies x 2 seeds (+ base, + evaluation) as Ray tasks on both nodes: the same
    checkpoints, the same metrics files byte for byte, the same MLflow runs, curves and models."""
    from _mlflow_helpers import isolated_mlflow

    from gil.cluster.runner import RayRunner
    from gil.files import dumps_json
    from gil.tracking.mlflow_tracker import MlflowTracker

    data, split = on_disk
    documents, uris = {}, {}
    runners = {
        "ray": RayRunner(_config(backend="ray").compute),  # data through the object store
        "shared": RayRunner(_config(backend="ray", data="shared_path").compute),  # read where it lies
    }
    for backend, run in (("local", None), *runners.items()):
        uris[backend] = f"sqlite:///{tmp_path / backend / 'mlflow.db'}"
        with isolated_mlflow():
            tracker = MlflowTracker(uris[backend], "gil-test")
            documents[backend] = _train_and_evaluate(
                _config(backend="local" if run is None else "ray"),
                data,
                split,
                tmp_path / backend,
                tracker,
                run,
            )
    for runner in runners.values():
        nodes = {placement.node_id for placement in runner.placements}
        assert len(nodes) == 2, "the tasks must have run on both nodes"
        assert len(runner.placements) == 2 + 4 + 4  # base, grid, evaluation
        assert {p.device for p in runner.placements} == {"cpu"}
    assert {p.data for p in runners["ray"].placements} == {"object store"}
    assert {p.data for p in runners["shared"].placements} == {str(data.source.resolve())}
    local_layout = _layout(uris["local"])
    for backend in runners:
        for name in GRID:
            assert dumps_json(documents["local"][name]) == dumps_json(documents[backend][name])
            for seed in (0, 1):
                local = _payloads(tmp_path / "local", name, seed, 3)
                remote = _payloads(tmp_path / backend, name, seed, 3)
                assert all(_same_payload(a, b) for a, b in zip(local, remote, strict=True))
        for seed in (0, 1):
            assert _same_payload(*(_payloads(tmp_path / b, "base", seed, 1)[0] for b in ("local", backend)))
        ray_layout = _layout(uris[backend])
        assert len([key for key in ray_layout["runs"] if key[0] == "parent"]) == 4
        assert len([key for key in ray_layout["runs"] if key[0] == "stage"]) == 12
        assert local_layout == ray_layout


def test_tasks_read_large_data_where_it_lies_and_small_data_through_the_object_store(on_disk) -> None:
    from gil.cluster.runner import _shared_data, data_mode

    data, _ = on_disk
    size_gib = sum(p.stat().st_size for p in data.source.glob("*.npy")) / 2**30
    assert data_mode(_config(backend="ray").compute, data.source) == "object_store"
    below = _config(backend="ray", shared_data_above_gib=size_gib * 0.9).compute
    above = _config(backend="ray", shared_data_above_gib=size_gib * 1.1).compute
    assert data_mode(below, data.source) == "shared_path"
    assert data_mode(above, data.source) == "object_store"
    assert data_mode(
        _config(backend="ray", data="object_store", shared_data_above_gib=1e-9).compute, data.source
    ) == ("object_store")
    assert data_mode(_config(backend="ray", data="shared_path").compute, data.source) == "shared_path"
    assert data_mode(below, None) == "object_store"  # built in memory: it has no path
    with pytest.raises(GilError, match="shared_path needs processed data loaded from a directory"):
        data_mode(_config(backend="ray", data="shared_path").compute, None)
    with pytest.raises(GilError, match=r"is not visible on node .*set compute.data: object_store"):
        _shared_data(data.source.parent / "elsewhere")
    assert _shared_data(data.source) == data.source


def _watch_and_kill(nodes: RayNodes, scratch: Path) -> tuple[threading.Thread, list[int], dict[Path, set]]:
    """Once some task has checkpointed stage 1 in its scratch directory, SIGKILL the workers
    running tasks (a crash from outside: the production code has no fault hook); then watch
    every stage-1 file that existed at the kill until its directory goes, noting each version
    of it (inode, mtime) seen. A retry that resumes leaves one version; one that trains again
    from scratch writes a new one."""
    killed: list[int] = []
    versions: dict[Path, set] = {}

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            finished = list(scratch.glob("gil-ray/*/*/*/run/seed_*/stage_1.pt"))
            if finished:
                versions.update({path: set() for path in finished})
                for pid in nodes.task_workers("_run_task"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.01)
        while any(path.parent.exists() for path in versions) and time.monotonic() < deadline:
            for path, seen in versions.items():
                try:
                    status = path.stat()
                    seen.add((status.st_ino, status.st_mtime_ns))
                except FileNotFoundError:
                    continue
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed, versions


@pytest.mark.slow
def test_a_task_whose_worker_dies_mid_stage_resumes_and_the_grid_completes(
    cluster: RayNodes, on_disk, tmp_path: Path
) -> None:
    from _mlflow_helpers import isolated_mlflow

    from gil.cluster.runner import RayRunner
    from gil.tracking.mlflow_tracker import MlflowTracker
    from gil.train.loop import train_strategies

    data, split = on_disk
    train = {**TRAIN, "epochs_per_stage": 12, "device": "cpu", "threads": 1}  # stages long enough to kill in
    scratch = tmp_path / "scratch"
    uris = {}
    for backend in ("local", "ray"):
        config = make_config(train=train, compute={"backend": backend, "scratch_path": str(scratch)})
        runner = RayRunner(config.compute) if backend == "ray" else None
        if runner is not None:
            watcher, killed, versions = _watch_and_kill(cluster, scratch)
        uris[backend] = f"sqlite:///{tmp_path / backend / 'mlflow.db'}"
        with isolated_mlflow():
            tracker = MlflowTracker(uris[backend], "gil-test", register_models=False)
            train_strategies(
                config,
                {"finetune": tmp_path / backend / "finetune"},
                data,
                split,
                tracker=tracker,
                progress=False,
                runner=runner,
                fresh=True,
            )
    watcher.join(timeout=60)
    assert killed, "no task worker was killed"
    assert versions and all(len(seen) == 1 for seen in versions.values()), (
        f"a retried task trained a finished stage again: {versions}"
    )
    for seed in (0, 1):
        local = _payloads(tmp_path / "local", "finetune", seed, 3)
        remote = _payloads(tmp_path / "ray", "finetune", seed, 3)
        assert all(_same_payload(a, b) for a, b in zip(local, remote, strict=True))
    assert _layout(uris["local"]) == _layout(uris["ray"])
    assert not list(scratch.glob("gil-ray/*")), "finished tasks leave no scratch directory"


@pytest.mark.slow
def test_a_seed_that_fails_names_itself_and_the_other_seeds_are_recorded(
    cluster: RayNodes, on_disk, tmp_path: Path
) -> None:
    from _mlflow_helpers import isolated_mlflow
    from mlflow.tracking import MlflowClient

    from gil.cluster.runner import RayRunner
    from gil.tracking.mlflow_tracker import MlflowTracker
    from gil.train.loop import train_base, train_strategy

    data, split = on_disk
    config = _config(backend="ray")
    # seed 1 has no base checkpoint to import, so its task fails; seed 0 trains
    train_base(
        make_config(train={**TRAIN, "seeds": [0], "device": "cpu", "threads": 1}),
        data,
        split,
        tmp_path / "base",
        progress=False,
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with isolated_mlflow():
        tracker = MlflowTracker(uri, "gil-test", register_models=False)
        with pytest.raises(
            GilError, match=r"^finetune seed 1: checkpoint .*seed_1/stage_0.pt not found"
        ) as failure:
            train_strategy(
                config,
                "finetune",
                data,
                split,
                tmp_path / "out",
                tracker=tracker,
                progress=False,
                base_dir=tmp_path / "base",
                runner=RayRunner(config.compute),
            )
    assert "\n" not in str(failure.value)
    assert stage_path(tmp_path / "out" / "seed_0", 2).exists()
    assert not (tmp_path / "out" / "seed_1").exists()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("gil-test").experiment_id])
    parents = [run for run in runs if run.data.tags["gil.kind"] == "parent"]
    assert [(run.data.tags["gil.seed"], run.info.status) for run in parents] == [("0", "FINISHED")]


# --- the command line -----------------------------------------------------------------------------


def test_train_evaluate_and_train_base_take_backend_and_address(run_cli) -> None:  # noqa: ANN001
    for command in ("train", "train-base", "evaluate"):
        result = run_cli(command, "--help")
        assert result.code == 0 and "--backend" in result.stdout and "--address" in result.stdout


def test_bad_backend_options_fail_in_one_line(run_cli, tiny_project) -> None:  # noqa: ANN001
    params, processed, split = tiny_project
    common = ["-p", params, "--processed", processed, "--split", split]
    bad_address = run_cli("train", "-s", "finetune", *common, "--backend", "ray", "--address", "nowhere")
    assert bad_address.code == 2
    assert bad_address.stderr.strip() == (
        "error: the command line: compute.address: not a Ray address; use local, auto or HOST:PORT "
        "(e.g. 10.0.0.5:6379) (got 'nowhere')"
    )
    two_outs = run_cli("train", "-s", "finetune", "-s", "replay", *common, "--out", "somewhere")
    assert two_outs.code == 2 and "leave it out when training several strategies" in two_outs.stderr
    assert "Traceback" not in bad_address.stderr + two_outs.stderr


@pytest.mark.slow
def test_an_interrupted_grid_leaves_no_partial_output_and_a_rerun_completes(
    cluster: RayNodes, tiny_project, tmp_path: Path
) -> None:
    """Ctrl-C in `gil train -s finetune -s replay --backend ray` once the first runs are written:
    no half-written checkpoint, no MLflow run left RUNNING; the same command then finishes the grid."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    params_file, processed, split = tiny_project
    params = yaml.safe_load(params_file.read_text())
    params["train"] |= {"seeds": [0, 1], "epochs_per_stage": 8, "threads": 1}
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    params["tracking"] = {"enabled": True, "uri": uri, "register_models": False}
    scratch = tmp_path / "scratch"  # cancelled tasks leave theirs behind: not in /tmp
    params["compute"] = {"backend": "ray", "address": cluster.address, "scratch_path": str(scratch)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "gil.cli", "train", "-s", "finetune", "-s", "replay"]
    command += ["--processed", str(processed), "--split", str(split)]
    env = {**os.environ, "TQDM_DISABLE": "1", "RAY_AUTH_MODE": "token"}
    env.pop("MLFLOW_TRACKING_URI", None)
    checkpoints = tmp_path / "checkpoints"

    driver = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as in a terminal (a test runner started in the background may ignore SIGINT)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while not list(checkpoints.glob("*/seed_*/stage_2.pt")):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[1][-3000:]
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]  # typer turns Ctrl-C into a quiet exit 130
    assert not [path for path in checkpoints.rglob("*") if path.name.startswith(".")], (
        "a temporary file was left"
    )
    for run_dir in checkpoints.glob("*/seed_*"):  # complete files of stages 0..k only
        names = sorted(path.name for path in run_dir.iterdir())
        assert names == [f"stage_{stage}.pt" for stage in range(len(names))]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gil-synthetic").experiment_id
    assert not [run for run in client.search_runs([experiment]) if run.info.status == "RUNNING"]
    done_before = len(list(checkpoints.glob("*/seed_*/stage_2.pt")))
    assert 1 <= done_before < 4, "the interrupt came too late to test anything"

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in ("finetune", "replay"):
        for seed in (0, 1):
            assert stage_path(checkpoints / name / f"seed_{seed}", 2).exists()
    runs = client.search_runs([experiment])
    parents = [
        run
        for run in runs
        if run.data.tags["gil.kind"] == "parent" and run.data.tags["gil.superseded"] == "false"
    ]
    assert sorted((run.data.tags["gil.strategy"], run.data.tags["gil.seed"]) for run in parents) == [
        ("finetune", "0"),
        ("finetune", "1"),
        ("replay", "0"),
        ("replay", "1"),
    ]
    assert all(run.info.status == "FINISHED" for run in parents)
    assert not [run for run in runs if run.info.status == "RUNNING"]
    assert "ran on node" in rerun.stdout


@pytest.mark.slow
def test_a_cuda_run_without_gpus_per_job_is_refused_before_any_task(cluster: RayNodes, on_disk) -> None:
    from gil.cluster.runner import RayRunner

    data, split = on_disk
    config = make_config(train={**TRAIN, "device": "cuda"}, compute={"backend": "ray"})
    jobs = seed_jobs(config, [0], data, strategy_name="finetune", split=split, checkpoints=Path("unused"))
    with pytest.raises(GilError, match=r"train.device is 'cuda' but compute.gpus_per_job is 0"):
        next(RayRunner(config.compute)(len, jobs, "finetune", False))
