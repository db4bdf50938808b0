"""Tuned rows: per-strategy ``train`` overrides, the tuned params file, and ``gil tune --collect-only``.

The sweeps themselves (real Ray) are in ``test_sweep.py``; here the protocol around them: a tuned
value changes its own row only, the shared base stage stays shared, and the tuned file refuses
sweeps that did not have the same budget or did not select on validation cells.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gil.config import config_from_dict, load_config, run_params
from gil.errors import GilError

REPLAY = {"kind": "replay", "buffer_size": 20, "mix": 0.25}


def _params(tiny_params: dict, **strategies: dict) -> dict:
    return {**tiny_params, "strategies": {"finetune": {"kind": "finetune"}, **strategies}}


def test_train_overrides_change_their_strategy_only(tiny_params: dict) -> None:
    config = config_from_dict(_params(tiny_params, fast={"kind": "finetune", "train": {"lr": 0.01}}))
    assert config.for_strategy("fast").train.lr == 0.01
    assert config.train.lr == config.for_strategy("finetune").train.lr != 0.01
    assert config.for_strategy("fast").train.epochs_per_stage == config.train.epochs_per_stage
    assert run_params(config, "fast")["train.lr"] == 0.01
    assert run_params(config, "finetune")["train.lr"] == config.train.lr


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"lrr": 0.01}, r"strategies\.fast\.train\.lrr: Extra inputs are not permitted"),
        ({"lr": -1}, r"strategies\.fast\.train\.lr: Input should be greater than 0"),
    ],
)
def test_bad_train_overrides_fail_naming_the_key(tiny_params: dict, train: dict, message: str) -> None:
    with pytest.raises(GilError, match=message):
        config_from_dict(_params(tiny_params, fast={"kind": "finetune", "train": train}))


def _tuned_file(tmp_path: Path, entries: dict) -> Path:
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump({"strategies": entries}))
    return path


def test_the_tuned_file_adds_its_entries_and_reserves_their_names(tiny_params: dict, tmp_path: Path) -> None:
    path = _tuned_file(tmp_path, {"finetune@tuned": {"kind": "finetune", "train": {"lr": 0.002}}})
    params = {**_params(tiny_params), "tuned": {"path": str(path), "rows": ["finetune"]}}
    config = config_from_dict(params)
    assert config.for_strategy("finetune@tuned").train.lr == 0.002
    assert config.report_rows == ["finetune@tuned"]  # the benchmark list of tiny_params is empty
    # re-validating a config from its own dump (as sweeps do) keeps the entries, also where the
    # tuned file cannot be read (a Ray worker's working directory is not the project's)
    dump = config.model_dump(mode="json")
    assert config_from_dict(dump).strategies == config.strategies
    unreadable = {**dump, "tuned": {**dump["tuned"], "path": str(tmp_path / "elsewhere.yaml")}}
    assert config_from_dict(unreadable).strategies == config.strategies
    hand_made = tmp_path / "params.yaml"
    hand_made.write_text(yaml.safe_dump(_params(tiny_params, **{"replay@tuned": REPLAY})))
    with pytest.raises(GilError, match=r"names ending in '@tuned' are reserved for the tuned params file"):
        load_config(hand_made)
    path.write_text(yaml.safe_dump({"strategies": {"finetune": {"kind": "finetune"}}}))
    with pytest.raises(GilError, match=r"tuned.yaml: expected a 'strategies' mapping of NAME@tuned entries"):
        config_from_dict(params)


def test_a_missing_tuned_row_says_to_run_gil_tune(tiny_params: dict, tmp_path: Path) -> None:
    from gil.cli.common import require_strategy

    params = {**_params(tiny_params), "tuned": {"path": str(tmp_path / "absent.yaml"), "rows": []}}
    config = config_from_dict(params)
    with pytest.raises(GilError, match=r"no tuned values for 'finetune' in .*absent.yaml; run `gil tune`"):
        require_strategy(config, "finetune@tuned")


def _summary(name: str, best_params: dict | None, **changes: object) -> dict:
    best = None
    if best_params is not None:
        best = {"trial_id": f"{name}_1", "params": best_params, "metrics": {"score": 0.5}}
    return {
        "strategy": name,
        "sweep_name": f"{name}-1",
        "interrupted": False,
        "n_trials": 4,
        "n_complete": 3,
        "n_stopped_early": 1,
        "n_failed": 0,
        "best": best,
        "budget": {"num_samples": 4, "scheduler": "asha", "seed": 0},
        "scored_on": "validation",
        "base": "checkpoints/base",
        "wall_s": 12.5,
        **changes,
    }


def _collect(tiny_params: dict, tmp_path: Path, summaries: dict[str, dict]) -> Path:
    from gil.sweep.tuned import collect_tuned

    reports = tmp_path / "sweeps"
    reports.mkdir(exist_ok=True)
    for name, summary in summaries.items():
        (reports / f"{name}.json").write_text(json.dumps(summary))
    config = config_from_dict(_params(tiny_params, replay=REPLAY))
    out = tmp_path / "tuned.yaml"
    collect_tuned(config, list(summaries), out, reports)
    return out


def test_collected_winners_become_entries_with_train_values_as_overrides(
    tiny_params: dict, tmp_path: Path
) -> None:
    out = _collect(
        tiny_params,
        tmp_path,
        {
            "finetune": _summary("finetune", {"train.lr": 0.002, "train.epochs_per_stage": 7}),
            "replay": _summary("replay", {"train.lr": 0.0005, "strategies.replay.mix": 0.4}),
        },
    )
    document = yaml.safe_load(out.read_text())
    assert document["strategies"] == {
        "finetune@tuned": {"kind": "finetune", "train": {"lr": 0.002, "epochs_per_stage": 7}},
        "replay@tuned": {**REPLAY, "mix": 0.4, "train": {"lr": 0.0005}},
    }
    assert document["budget"] == {"num_samples": 4, "scheduler": "asha", "seed": 0}
    assert document["sweeps"]["replay"]["best_trial"] == "replay_1"
    assert out.read_text().startswith("# Tuned strategies: written by `gil tune`")


@pytest.mark.parametrize(
    ("replay", "message"),
    [
        (_summary("replay", {"train.lr": 0.001}, budget={"num_samples": 8}), "ran with different budgets"),
        (_summary("replay", {"train.lr": 0.001}, scored_on=None), "not a finished sweep scored on"),
        (_summary("replay", {"train.lr": 0.001}, interrupted=True), "not a finished sweep scored on"),
        (_summary("replay", None), "has no trial that finished every stage"),
    ],
)
def test_collect_refuses_sweeps_of_another_protocol(
    tiny_params: dict, tmp_path: Path, replay: dict, message: str
) -> None:
    finetune = _summary("finetune", {"train.lr": 0.002})
    with pytest.raises(GilError, match=message):
        _collect(tiny_params, tmp_path, {"finetune": finetune, "replay": replay})
    assert not (tmp_path / "tuned.yaml").exists()  # nothing half-written


def test_a_tuned_row_starts_from_the_shared_base_and_trains_with_its_own_values(
    tiny_params: dict, tiny_processed: Path, tiny_split: Path, tmp_path: Path
) -> None:
    """The base stage is imported unchanged (its fingerprint checked against the global ``train``),
    and stage 1 trains with the row's learning rate, so its weights differ from the default row's."""
    from gil.data.layout import ProcessedData, Split
    from gil.train.checkpoint import stage_path
    from gil.train.loop import train_base, train_strategies

    params = _params(tiny_params, fast={"kind": "finetune", "train": {"lr": 0.02}})
    config = config_from_dict(params)
    data, split = ProcessedData.load(tiny_processed), Split.load(tiny_split)
    base = tmp_path / "base"
    train_base(config, data, split, base, progress=False)
    runs = {"finetune": tmp_path / "finetune", "fast": tmp_path / "fast"}
    train_strategies(config, runs, data, split, base_dir=base, progress=False)

    def weights(directory: Path, stage: int) -> dict:
        return torch.load(stage_path(directory / "seed_0", stage), weights_only=True)["model"]

    base_weights = weights(base, 0)
    for run in runs.values():
        assert all(torch.equal(base_weights[key], value) for key, value in weights(run, 0).items())
    default, fast = weights(runs["finetune"], 1), weights(runs["fast"], 1)
    assert any(not torch.equal(default[key], fast[key]) for key in default)
