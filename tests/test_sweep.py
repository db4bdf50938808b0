"""Sweeps: the ``sweep:`` schema, the partial-matrix objective, and real Ray sweeps on tiny data.

No mocks: the slow tests run a real local Ray (``ray.init(num_cpus=2)``, never ``ray stop``), a
real SQLite tracking store served by the ``mlflow server`` that the sweep starts itself, and a
real ``ray start --head`` cluster stopped by the PID of its process group.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from gil.config import Config, config_from_dict  # noqa: E402
from gil.errors import GilError  # noqa: E402
from gil.sweep.space import (  # noqa: E402
    Objective,
    apply_params,
    load_sweep_config,
    strategy_space,
    write_params_file,
)

SPACE = {"train.lr": {"loguniform": [1e-4, 3e-3]}, "strategies.replay.mix": {"uniform": [0.1, 0.5]}}
N_STAGES = 2  # the tiny split: base stage + 2 incremental stages


def _config(tiny_params: dict, tmp_path: Path, tracking: bool = True, **sweep: object) -> Config:
    params = dict(tiny_params)
    params["strategies"] = {"replay": {"kind": "replay", "buffer_size": 20, "mix": 0.25}}
    params["evaluate"] = {"seed": 7, "repeats": 1, "batch_size": 64}
    params["tracking"] = (
        {
            "enabled": True,
            "uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            "experiment": "sweep-test",
            "register_models": False,
        }
        if tracking
        else {"enabled": False}
    )
    params["sweep"] = {
        "seed": 0,
        "num_samples": 4,
        "max_concurrent": 2,
        "max_failures": 2,
        "spaces": {"replay": SPACE},
        **sweep,
    }
    return config_from_dict(params)


# --- schema and objective (fast) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lrr": {"uniform": [0.1, 0.2]}}, r"'train.lrr'.*no such config key 'train.lrr'"),
        ({"train.lr": {"loguniform": [0.0, 0.1]}}, r"'train.lr'.*needs low > 0"),
        ({"train.lr": {"uniform": [0.2, 0.1]}}, r"'train.lr'.*needs finite low < high"),
        ({"train.lr": {"normal": [0.1, 0.2]}}, r"'train.lr'.*expected one of"),
        ({"train.epochs_per_stage": {"int": [1.5, 4]}}, r"bounds must be integers"),
        (
            {"strategies.replay.mixx": {"uniform": [0.1, 0.2]}},
            r"'mixx' is not a parameter of strategy 'replay'",
        ),
        ({"strategies.distill.lam": {"uniform": [0.1, 0.2]}}, r"expected strategies.replay.<parameter>"),
        (
            {"strategies.replay.mix": {"uniform": [0.1, 1.5]}},
            r"'strategies.replay.mix'.*value 1.5 is not accepted",
        ),
        ({"split.seed": {"int": [0, 3]}}, r"only keys under train, model, strategies"),
        ({"train": {"uniform": [0.1, 0.2]}}, r"'train'.*not a single value"),
        ({}, r"sweep.spaces.replay: no search space"),
    ],
)
def test_bad_sweep_spaces_fail_naming_the_key(
    tiny_params: dict, tmp_path: Path, space: dict, message: str
) -> None:
    config = _config(tiny_params, tmp_path, spaces={"replay": space})
    with pytest.raises(GilError, match=message):
        strategy_space(config, load_sweep_config(config), "replay")


def test_bad_sweep_settings_fail_naming_the_key(tiny_params: dict, tmp_path: Path) -> None:
    with pytest.raises(GilError, match=r"sweep.grace_stages: Input should be greater than or equal to 2"):
        load_sweep_config(_config(tiny_params, tmp_path, grace_stages=1))
    with pytest.raises(GilError, match=r"sweep.objective.kind"):
        load_sweep_config(_config(tiny_params, tmp_path, objective={"kind": "best"}))


def test_sampled_values_are_applied_and_validated(tiny_params: dict, tmp_path: Path) -> None:
    config = _config(tiny_params, tmp_path)
    applied = apply_params(config, {"train.lr": 0.002, "strategies.replay.mix": 0.4})
    assert applied.train.lr == 0.002 and applied.strategies["replay"].params()["mix"] == 0.4
    assert config.train.lr != 0.002  # the original is unchanged
    with pytest.raises(GilError, match="strategies.replay.mix"):
        apply_params(config, {"strategies.replay.mix": 2.0})


def test_objective_of_partial_results_matrices() -> None:
    objective = Objective(forgetting_weight=2.0, final_mse_weight=1.0)
    base = objective.stage_metrics([[1.0]])
    assert base == {"forgetting": 0.0, "final_mse": 1.0, "plasticity": 1.0, "score": 1.0}
    two = objective.stage_metrics([[1.0], [1.5, 2.0]])
    # forgetting = R[1][0] - R[0][0] = 0.5; final = mean(1.5, 2.0); plasticity = R[1][1]
    assert two["forgetting"] == pytest.approx(0.5) and two["final_mse"] == pytest.approx(1.75)
    assert two["plasticity"] == pytest.approx(2.0) and two["score"] == pytest.approx(2 * 0.5 + 1.75)
    assert "delta" not in two  # undefined before the second incremental stage
    three = objective.stage_metrics([[1.0], [1.5, 2.0], [1.2, 2.5, 3.0]])
    # forgetting = mean(1.2 - 1.0, 2.5 - 2.0); delta = R[2][1] - R[1][1]
    assert three["forgetting"] == pytest.approx(0.35) and three["delta"] == pytest.approx(0.5)
    assert Objective(kind="pareto").metrics == ["forgetting", "plasticity"]


def _record(trial_id: str, score: float, forgetting: float, plasticity: float, **state: object) -> dict:
    record = {
        "trial_id": trial_id,
        "params": {"train.lr": score / 1000},
        "metrics": {"score": score, "forgetting": forgetting, "plasticity": plasticity, "stage": 2.0},
        "status": "FINISHED",
        "stopped_early": False,
        "complete": True,
        "mlflow_run_id": None,
    }
    return record | state


# (score, forgetting, plasticity): "a" dominates "b"; "c" and "d" trade one metric for the other;
# "stopped" and "failed" would win on score but are not complete.
TRIALS = [
    _record("a", 3.0, 0.1, 1.0),
    _record("b", 1.5, 0.2, 1.1),
    _record("c", 2.0, 0.05, 2.0),
    _record("d", 4.0, 0.3, 0.5),
    _record("stopped", 0.5, 0.0, 0.1, complete=False, stopped_early=True),
    _record("failed", 0.1, 0.0, 0.1, status="FAILED", complete=False),
]


def test_trial_records_from_ray_results(tmp_path: Path) -> None:
    """Status, completeness, kept metrics and MLflow ids of each trial, from real ``tune.Result``s."""
    from ray import tune

    from gil.sweep.selection import trial_records

    checkpoint = tune.Checkpoint.from_directory(str(tmp_path))
    metrics = {"stage": 2.0, "score": 0.5, "mse_B": 0.2, "train_loss": 0.3, "config": {"train.lr": 0.001}}
    metrics["pid"] = 7  # Ray's own keys (pid, config, ...) are not kept

    def result(name: str, stage: float, error: Exception | None = None, saved: bool = True, **extra):
        return tune.Result(
            metrics={**metrics, "stage": stage, **extra},
            checkpoint=checkpoint if saved else None,
            error=error,
            path=str(tmp_path / name),
            best_checkpoints=[(checkpoint, {"stage": stage})] if saved else [],
        )

    results = [
        result("trial_done", 2.0, trial_id="done"),
        result("trial_stopped", 1.0, trial_id="stopped"),
        result("trial_crashed", 1.0, error=RuntimeError("x"), trial_id="crashed"),
        result("unnamed", 2.0, saved=False),  # no trial_id reported, no checkpoint registered
    ]
    records = trial_records(results, 2, interrupted=False, child_runs={"done": "run-1"})
    by_id = {r["trial_id"]: r for r in records}
    assert list(by_id) == ["done", "stopped", "crashed", "unnamed"]
    done = by_id["done"]
    assert done == {
        "trial_id": "done",
        "params": {"train.lr": 0.001},
        "metrics": {"stage": 2.0, "score": 0.5, "mse_B": 0.2, "train_loss": 0.3},
        "status": "FINISHED",
        "stopped_early": False,
        "complete": True,
        "mlflow_run_id": "run-1",
    }
    assert (by_id["stopped"]["status"], by_id["stopped"]["stopped_early"]) == ("FINISHED", True)
    crashed = by_id["crashed"]
    assert (crashed["status"], crashed["stopped_early"], crashed["complete"]) == ("FAILED", False, False)
    assert by_id["unnamed"]["complete"] is False and by_id["unnamed"]["mlflow_run_id"] is None
    interrupted = trial_records(results, 2, interrupted=True, child_runs={})
    assert [r["status"] for r in interrupted] == ["FINISHED", "KILLED", "FAILED", "KILLED"]


def test_the_best_trial_is_the_complete_one_with_the_lowest_score(tiny_params: dict, tmp_path: Path) -> None:
    from gil.sweep.selection import summarize_sweep

    sweep = load_sweep_config(_config(tiny_params, tmp_path))
    summary = summarize_sweep("replay", sweep, "replay-1", tmp_path, list(reversed(TRIALS)), False, "run1")
    assert summary["best"]["trial_id"] == "b" and summary["pareto"] is None
    assert (summary["n_trials"], summary["n_complete"], summary["n_stopped_early"], summary["n_failed"]) == (
        6,
        4,
        1,
        1,
    )
    assert [t["trial_id"] for t in summary["trials"]] == ["a", "b", "c", "d", "failed", "stopped"]
    assert summary["mlflow_parent_run_id"] == "run1"
    assert {k: summary[k] for k in ("strategy", "sweep_name", "experiment_path", "interrupted")} == {
        "strategy": "replay",
        "sweep_name": "replay-1",
        "experiment_path": str(tmp_path),
        "interrupted": False,
    }
    assert summary["objective"] == sweep.objective.model_dump()
    nothing = summarize_sweep("replay", sweep, "replay-1", tmp_path, TRIALS[4:], True, None)
    assert nothing["best"] is None and nothing["n_complete"] == 0 and nothing["interrupted"] is True


def test_the_pareto_set_is_every_non_dominated_complete_trial(tiny_params: dict, tmp_path: Path) -> None:
    from gil.sweep.selection import pareto_front, summarize_sweep

    assert [r["trial_id"] for r in pareto_front(TRIALS[:4], ["forgetting", "plasticity"])] == ["a", "c", "d"]
    weakly_beaten = _record("e", 1.0, 0.1, 1.2)  # "a" is as good on forgetting, better on plasticity
    assert "e" not in [
        r["trial_id"] for r in pareto_front([*TRIALS[:4], weakly_beaten], ["forgetting", "plasticity"])
    ]
    tie = [_record("x", 1.0, 0.1, 1.0), _record("y", 2.0, 0.1, 1.0)]  # equal: neither dominates
    assert len(pareto_front(tie, ["forgetting", "plasticity"])) == 2
    sweep = load_sweep_config(_config(tiny_params, tmp_path, objective={"kind": "pareto"}))
    summary = summarize_sweep("replay", sweep, "replay-1", tmp_path, TRIALS, False, None)
    assert [r["trial_id"] for r in summary["pareto"]] == ["a", "c", "d"]
    assert summary["best"]["trial_id"] == "c"  # the Pareto point with the lowest score, not "b"


def test_optuna_learns_pruned_for_a_trial_stopped_before_its_last_stage(
    tiny_params: dict, tmp_path: Path
) -> None:
    import optuna

    from gil.sweep.runner import _tune_config

    sweep = load_sweep_config(_config(tiny_params, tmp_path))
    tune_config = _tune_config(sweep, {"train.lr": sweep.spaces["replay"]["train.lr"]}, N_STAGES, 4, 2, None)
    assert tune_config.scheduler._mode == "min" and tune_config.scheduler._metric == "score"
    searcher = tune_config.search_alg.searcher
    assert (searcher.metric, searcher.mode) == ("score", "min")
    for trial_id, stage, score in (("early", 1.0, 0.1), ("full", 2.0, 0.7), ("better", 2.0, 0.3)):
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"stage": stage, "score": score, "training_iteration": 1})
    trials = searcher._ot_study.trials
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.COMPLETE,
    ]
    assert searcher._ot_study.best_value == pytest.approx(0.3)  # minimised


PARAMS_YAML = """\
# top comment
dataset:
  name: zeisel
  counts_layer: null        # null: counts are in X
split:
  tasks:                    # a sequence, indented like the project's params.yaml
    - name: neurons
      values: [interneurons, pyramidal SS]
train:
  seeds: [0, 1, 2]
  lr: 0.001
strategies:
  replay: {kind: replay, buffer_size: 200, policy: balanced, mix: 0.25}
  ewc: {kind: ewc, lam: 100.0}
sweep:
  spaces:
    replay: {"train.lr": {loguniform: [1e-4, 3e-3]}}
"""


def test_best_params_written_back_keep_the_rest_of_params_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_YAML)
    values = {"train.lr": 0.00042, "strategies.replay.mix": 0.3, "strategies.ewc.fisher_batches": 4}
    write_params_file(path, values)
    before, after = PARAMS_YAML.splitlines(), path.read_text().splitlines()
    assert len(after) == len(before)
    changed = [new.strip() for old, new in zip(before, after, strict=True) if old != new]
    assert changed == [
        "lr: 0.00042",
        "replay: {kind: replay, buffer_size: 200, policy: balanced, mix: 0.3}",
        "ewc: {kind: ewc, lam: 100.0, fisher_batches: 4}",
    ]


def test_a_trial_whose_last_checkpoint_is_not_registered_is_not_complete(tmp_path: Path) -> None:
    """Interrupted between reporting its last stage and Ray registering that stage's checkpoint, a
    trial repeats the stage on resume: it must not be counted (or picked as best) as complete."""
    from ray import tune

    from gil.sweep.selection import trial_records

    def result(name: str, reported: float, checkpointed: float) -> tune.Result:
        checkpoint = tune.Checkpoint.from_directory(str(tmp_path))
        return tune.Result(
            metrics={"stage": reported, "score": 1.0, "trial_id": name},
            checkpoint=checkpoint,
            error=None,
            path=str(tmp_path / name),
            best_checkpoints=[(checkpoint, {"stage": checkpointed})],
        )

    results = [result("saved", N_STAGES, N_STAGES), result("unsaved", N_STAGES, N_STAGES - 1)]
    records = {r["trial_id"]: r for r in trial_records(results, N_STAGES, interrupted=True, child_runs={})}
    assert (records["saved"]["complete"], records["saved"]["status"]) == (True, "FINISHED")
    assert (records["unsaved"]["complete"], records["unsaved"]["status"]) == (False, "KILLED")


# --- real sweeps (slow) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _ray_teardown() -> Iterator[None]:
    import ray

    yield
    ray.shutdown()


@pytest.fixture
def local_ray(_ray_teardown: None) -> None:
    """A local 2-CPU Ray session shared by the sweeps of this module (run_sweep reuses it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")


def _sweep(config: Config, dirs: tuple[Path, Path], tmp_path: Path, **options: object) -> dict:
    from gil.sweep.runner import run_sweep

    return run_sweep(
        config,
        "replay",
        dirs[0],
        dirs[1],
        storage_path=tmp_path / "ray_results",
        params_path=tmp_path / "params.yaml",
        report_dir=tmp_path / "reports",
        **options,
    )


@pytest.fixture
def dirs(tiny_processed: Path, tiny_split: Path) -> tuple[Path, Path]:
    return tiny_processed, tiny_split


def _mlflow_runs(config: Config) -> tuple[object, list, list]:
    """The sweep parents and trial children in the test's SQLite store (read directly)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id], "", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("gil.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("gil.kind") == "trial"]
    assert len(runs) == len(parents) + len(children)
    return client, parents, children


def _assert_one_child_per_trial(config: Config, summary: dict) -> tuple[object, object, list]:
    """One parent; one FINISHED child per Ray trial under it, with its params and per-stage metrics."""
    client, parents, children = _mlflow_runs(config)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.info.run_id == summary["mlflow_parent_run_id"]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    by_trial = {c.data.tags["gil.sweep.trial_id"]: c for c in children}
    assert len(by_trial) == len(children) == summary["n_trials"]  # no duplicate, no orphan
    for trial in summary["trials"]:
        child = by_trial[trial["trial_id"]]
        assert child.info.run_id == trial["mlflow_run_id"] and child.info.status == "FINISHED"
        assert {k: float(v) for k, v in child.data.params.items()} == pytest.approx(trial["params"])
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "score")]
        assert steps == list(range(int(trial["metrics"]["stage"]) + 1))  # each stage once
        assert child.data.metrics["score"] == pytest.approx(trial["metrics"]["score"])
        assert child.data.tags["gil.sweep.stopped_early"] == str(trial["stopped_early"]).lower()
    return client, parent, children


def _kill_a_trial_after_stage_one(storage: Path) -> tuple[threading.Thread, list[int]]:
    """SIGKILL one Ray trial worker once some trial has reported stage 1 (a crash from outside:
    the production code has no fault hook). Returns the watcher and the list of killed PIDs."""
    killed: list[int] = []

    def workers() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def watch() -> None:
        # generous: on a loaded machine trials run several times slower, and a watcher that gives up
        # lets the sweep finish unharmed
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not killed:
            if any('"stage": 1.0' in p.read_text() for p in storage.glob("*/*/result.json")):
                for pid in workers()[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def _with_tripled_values(processed: Path, rows: object, out: Path) -> Path:
    """A copy of ``processed`` whose ``rows`` have their values tripled."""
    import dataclasses

    import numpy as np

    from gil.data.layout import ProcessedData

    data = ProcessedData.load(processed, mmap=False)
    values = np.array(data.values)
    for row in rows:
        values[data.indptr[row] : data.indptr[row + 1]] *= 3.0
    dataclasses.replace(data, values=values).write(out)
    return out


@pytest.mark.slow
def test_trials_select_on_validation_cells_and_never_read_test_cells(
    local_ray: None, dirs: tuple[Path, Path], tiny_params: dict, tmp_path: Path
) -> None:
    """The leak test: with the test cells' values tripled, every trial's sampled values, scores and
    the chosen trial are bit-identical; with the validation cells' values tripled the scores move
    (the positive control: the trials do read what they select on). Trials start from a shared
    base stage here, which also checks that a sampled ``train.lr`` leaves the base import valid."""
    from gil.data.layout import EVAL_STAGE, VALIDATION_STAGE, ProcessedData, Split
    from gil.train.loop import train_base

    config = _config(tiny_params, tmp_path, tracking=False, num_samples=1, scheduler="fifo")
    split = Split.load(dirs[1])
    base = tmp_path / "base"
    train_base(config, ProcessedData.load(dirs[0]), split, base, progress=False)

    def outcome(processed: Path, name: str) -> tuple[list, dict]:
        summary = _sweep(config, (processed, dirs[1]), tmp_path / name, base_dir=base)
        assert summary["n_complete"] == 1 and summary["scored_on"] == "validation"
        scores = [
            (t["params"], {k: v for k, v in t["metrics"].items() if not k.startswith(("train_", "time_"))})
            for t in summary["trials"]
        ]
        return scores, summary["best"]["params"]

    original = outcome(dirs[0], "original")
    test_cells = split.cells_of_stage(EVAL_STAGE)
    assert outcome(_with_tripled_values(dirs[0], test_cells, tmp_path / "test_x3"), "test_x3") == original
    validation = split.cells_of_stage(VALIDATION_STAGE)
    changed = outcome(_with_tripled_values(dirs[0], validation, tmp_path / "val_x3"), "val_x3")
    assert [params for params, _ in changed[0]] == [params for params, _ in original[0]]  # same draws
    assert [scores for _, scores in changed[0]] != [scores for _, scores in original[0]]


def test_trials_score_the_validation_cells(tiny_params: dict, tiny_processed: Path, tiny_split: Path) -> None:
    """The fast half of the leak test above: the rows a trial scores are the validation cells."""
    import numpy as np

    from gil.data.layout import VALIDATION_STAGE, ProcessedData, Split
    from gil.sweep.trial import selection_inputs

    split = Split.load(tiny_split)
    inputs = selection_inputs(config_from_dict(tiny_params), ProcessedData.load(tiny_processed), split)
    expected = split.cells_of_stage(VALIDATION_STAGE)
    assert len(expected) and np.array_equal(inputs.eval_rows, expected)


@pytest.mark.parametrize(
    ("space", "base", "message"),
    [
        (SPACE, "absent", r"absent/seed_0/stage_0.pt not found; run `gil train-base --out .*absent`"),
        (
            {"model.d_model": {"choice": [16, 32]}},
            "absent",
            r"\['model.d_model'\] change the model, so trials",
        ),
    ],
)
def test_a_sweep_from_a_shared_base_needs_one_it_can_start_from(
    tiny_params: dict, dirs: tuple[Path, Path], tmp_path: Path, space: dict, base: str, message: str
) -> None:
    from gil.sweep.runner import run_sweep

    config = _config(tiny_params, tmp_path, spaces={"replay": space})
    with pytest.raises(GilError, match=message):
        run_sweep(config, "replay", *dirs, storage_path=tmp_path / "ray", base_dir=tmp_path / base)
    assert not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_gil_tune_sweeps_every_strategy_with_one_budget_and_writes_the_tuned_file(
    local_ray: None, dirs: tuple[Path, Path], tiny_params: dict, tmp_path: Path, run_cli
) -> None:
    """``gil tune`` end to end: one sweep per benchmark strategy from the shared base, then the
    tuned file whose entries carry each sweep's best values (``train.*`` as the entry's overrides)."""
    import json

    import yaml

    from gil.data.layout import ProcessedData, Split
    from gil.train.loop import train_base

    lr = {"train.lr": {"loguniform": [1e-4, 3e-3]}}
    params = {
        **tiny_params,
        "strategies": {"finetune": {"kind": "finetune"}, "replay": {"kind": "replay", "buffer_size": 20}},
        "benchmark": ["finetune", "replay"],
        "evaluate": {"seed": 7, "repeats": 1, "batch_size": 64},
        "tracking": {"enabled": False},
        "sweep": {
            "num_samples": 1,
            "max_concurrent": 1,
            "scheduler": "fifo",
            "storage_path": str(tmp_path / "ray_results"),
            "spaces": {"finetune": lr, "replay": SPACE},
        },
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    base = tmp_path / "base"
    train_base(
        config_from_dict(params), ProcessedData.load(dirs[0]), Split.load(dirs[1]), base, progress=False
    )
    out, reports = tmp_path / "tuned.yaml", tmp_path / "reports"
    result = run_cli(
        "tune", "-p", params_file, "--processed", dirs[0], "--split", dirs[1], "--base", base,
        "--reports", reports, "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.stderr[-2000:]
    document = yaml.safe_load(out.read_text())
    best = {
        name: json.loads((reports / f"{name}.json").read_text())["best"]["params"]
        for name in ("finetune", "replay")
    }
    assert document["strategies"] == {
        "finetune@tuned": {"kind": "finetune", "train": {"lr": best["finetune"]["train.lr"]}},
        "replay@tuned": {
            **config_from_dict(params).strategies["replay"].model_dump(mode="json"),
            "mix": best["replay"]["strategies.replay.mix"],
            "train": {"lr": best["replay"]["train.lr"]},
        },
    }
    assert document["budget"]["num_samples"] == 1 and set(document["sweeps"]) == {"finetune", "replay"}


def test_a_sweep_without_validation_cells_fails_before_ray_starts(
    tiny_params: dict, tiny_processed: Path, tmp_path: Path
) -> None:
    from gil.data.split import run_split
    from gil.sweep.runner import run_sweep

    tiny_params["split"]["validation_fraction"] = 0.0
    run_split(config_from_dict(tiny_params), tiny_processed, tmp_path / "split")
    config = _config(tiny_params, tmp_path)
    with pytest.raises(GilError, match=r"the split has no validation cells; set split.validation_fraction"):
        run_sweep(config, "replay", tiny_processed, tmp_path / "split", storage_path=tmp_path / "ray")
    assert not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_sweep_tracks_every_trial_and_retries_a_crashing_one(
    local_ray: None, dirs: tuple[Path, Path], tiny_params: dict, tmp_path: Path
) -> None:
    watcher, killed = _kill_a_trial_after_stage_one(tmp_path / "ray_results")
    config = _config(tiny_params, tmp_path)
    summary = _sweep(config, dirs, tmp_path)
    watcher.join()

    assert len(killed) == 1  # one trial's worker was killed after stage 1 ...
    assert (
        summary["n_trials"] == 4 and summary["n_failed"] == 0 and not summary["interrupted"]
    )  # ... and recovered
    client, parent, _ = _assert_one_child_per_trial(config, summary)
    best = summary["best"]
    assert best["complete"] and best["metrics"]["stage"] == N_STAGES
    complete = [t for t in summary["trials"] if t["complete"]]
    assert best["metrics"]["score"] == min(t["metrics"]["score"] for t in complete)
    report = (tmp_path / "reports" / "replay.json").read_text()
    import json

    assert json.loads(report)["best"] == best
    assert parent.data.tags["gil.sweep.best_trial_id"] == best["trial_id"]
    assert float(parent.data.params["best.train.lr"]) == pytest.approx(best["params"]["train.lr"])
    assert parent.data.metrics["best_score"] == pytest.approx(best["metrics"]["score"])
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["replay.json"]


def _interrupt_after(storage: Path, finished: int) -> threading.Thread:
    """SIGUSR1 to this process (Ray Tune's graceful stop, like Ctrl-C) once ``finished`` trials are done."""

    def watch() -> None:
        # generous: on a loaded machine (CI's 2 cores shared) 2 trials took over 2 minutes, and a
        # watcher that gives up lets the sweep finish uninterrupted
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = [
                p for p in storage.glob("*/*/result.json") if f'"stage": {float(N_STAGES)}' in p.read_text()
            ]
            if len(done) >= finished:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_repeating_finished_trials(
    local_ray: None, dirs: tuple[Path, Path], tiny_params: dict, tmp_path: Path
) -> None:
    # 6 trials, 2 at a time: when 2 have finished, trials that have not started yet are still left
    # (with 4, a fast machine could finish the sweep before the interruption lands)
    config = _config(tiny_params, tmp_path, scheduler="fifo", num_samples=6)
    storage = tmp_path / "ray_results"
    watcher = _interrupt_after(storage, finished=2)
    first = _sweep(config, dirs, tmp_path)
    watcher.join()
    assert first["interrupted"] and not (tmp_path / "reports" / "replay.json").exists()
    finished = {t["trial_id"]: t for t in first["trials"] if t["complete"]}
    # the signal can land after a trial reported its last stage but before Ray registered that
    # stage's checkpoint: such a trial is not complete (it repeats the stage on resume), so >= 1
    assert 1 <= len(finished) < 6
    results = {p.parent.name: p.read_text() for p in storage.glob("*/*/result.json")}

    summary = _sweep(config, dirs, tmp_path, resume=True)
    assert not summary["interrupted"] and summary["n_trials"] == 6 and summary["n_complete"] == 6
    assert summary["sweep_name"] == first["sweep_name"]
    for trial_id, trial in finished.items():  # kept, not rerun
        assert next(t for t in summary["trials"] if t["trial_id"] == trial_id)["metrics"] == trial["metrics"]
    for name, text in results.items():
        if any(name.startswith(f"_trial_{trial_id}") or trial_id in name for trial_id in finished):
            assert next(storage.glob(f"*/{name}/result.json")).read_text() == text
    _assert_one_child_per_trial(config, summary)


@pytest.mark.slow
def test_pareto_sweep_returns_the_non_dominated_trials(
    local_ray: None, dirs: tuple[Path, Path], tiny_params: dict, tmp_path: Path
) -> None:
    config = _config(tiny_params, tmp_path, tracking=False, num_samples=3, objective={"kind": "pareto"})
    summary = _sweep(config, dirs, tmp_path)
    assert summary["n_complete"] == 3 and summary["n_stopped_early"] == 0  # no ASHA
    front = summary["pareto"]
    assert front and summary["best"] in front
    for point in front:
        for other in summary["trials"]:
            assert not (
                other["metrics"]["forgetting"] < point["metrics"]["forgetting"]
                and other["metrics"]["plasticity"] < point["metrics"]["plasticity"]
            )
    assert not (tmp_path / "mlruns").exists()  # tracking disabled: no MLflow at all


@pytest.mark.slow
def test_sweep_on_a_ray_cluster(dirs: tuple[Path, Path], tiny_params: dict, tmp_path: Path) -> None:
    """A head started with ``ray start`` (own temp dir, token auth), joined by address, stopped by PID."""
    import ray
    from _ray_cluster import ray_cluster

    ray.shutdown()  # leave the module's local session: this test joins a cluster
    with ray_cluster(tmp_path, ["--num-cpus", "2"]) as nodes:
        config = _config(tiny_params, tmp_path, tracking=False, num_samples=2, scheduler="fifo")
        summary = _sweep(config, dirs, tmp_path, address=nodes.address)
        assert summary["n_complete"] == 2 and math.isfinite(summary["best"]["metrics"]["score"])
        assert not ray.is_initialized()  # run_sweep left the cluster
