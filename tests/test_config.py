"""Config validation: wrong keys and values fail before any work, naming the key."""

from __future__ import annotations

import pytest

from gil.config import config_from_dict, load_config, run_params
from gil.errors import GilError


def _raw(**sections) -> dict:
    return {"dataset": {"path": "x.h5ad"}, **sections}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(train={"lr": -1}), r"train\.lr: .*greater than 0 \(got -1\)"),
        (_raw(train={"learning_rate": 0.1}), r"train\.learning_rate: unknown key"),
        (_raw(model={"preset": "huge"}), r"model\.preset"),
        (_raw(split={"eval_fraction": 1.5}), r"split\.eval_fraction"),
        (_raw(evaluate={"probe": {"folds": 1}}), r"evaluate\.probe\.folds"),
        (_raw(split={"genes": {"method": "file"}}), r"split\.genes.*file"),
        (_raw(benchmark=["missing"]), r"benchmark.*missing"),
        (_raw(strategies={"reference": {"kind": "finetune"}}), r"'reference' is reserved"),
        ({"train": {}}, r"dataset: required key is missing"),
        (_raw(train={"seeds": []}), r"train\.seeds"),
    ],
)
def test_invalid_params_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(GilError, match=message):
        config_from_dict(raw)


def test_model_size_conflict_is_reported(tmp_path) -> None:
    config = config_from_dict(_raw(model={"preset": "tiny", "d_model": 15}))
    with pytest.raises(GilError, match="not divisible"):
        config.model.resolved()


def test_bad_yaml_and_missing_file(tmp_path) -> None:
    with pytest.raises(GilError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(GilError, match="not valid YAML at line"):
        load_config(bad)


def test_default_params_file_is_valid() -> None:
    config = load_config("params.yaml")
    assert set(config.benchmark) <= set(config.strategies)
    assert config.model.resolved()["d_model"] % config.model.resolved()["n_heads"] == 0


def test_run_params_depend_only_on_the_strategy_own_entry() -> None:
    a = config_from_dict(
        _raw(strategies={"x": {"kind": "finetune"}, "y": {"kind": "replay", "buffer_size": 5}})
    )
    b = config_from_dict(
        _raw(strategies={"x": {"kind": "finetune"}, "y": {"kind": "replay", "buffer_size": 9}})
    )
    assert run_params(a, "x") == run_params(b, "x")
    assert run_params(a, "y") != run_params(b, "y")
    assert run_params(a, "x")["model.d_model"] == 64  # resolved from the preset
