"""User errors of the training-side commands: one line, exit status 2, nothing overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from gil.train.checkpoint import stage_path


def _train(run_cli, params: Path, processed: Path, split: Path, out: Path, strategy: str = "finetune"):
    return run_cli(
        "train", "-s", strategy, "-p", params, "--processed", processed, "--split", split, "--out", out
    )


def _assert_user_error(result, *words: str) -> None:
    assert result.code == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_help_on_every_command(run_cli) -> None:
    from gil.cli import app

    names = [command.name or command.callback.__name__ for command in app.registered_commands]
    assert {"prepare", "split", "train", "train-base", "evaluate", "report", "leaderboard", "ui"} <= set(
        names
    )
    for name in names:
        result = run_cli(name, "--help")
        assert result.code == 0 and "Usage" in result.stdout, name


def test_unknown_strategy(run_cli, tiny_project, tmp_path) -> None:
    params, processed, split = tiny_project
    result = _train(run_cli, params, processed, split, tmp_path / "out", strategy="nosuch")
    _assert_user_error(result, "unknown strategy 'nosuch'", "finetune")
    assert not (tmp_path / "out").exists()


def test_missing_processed_data(run_cli, tiny_project, tmp_path) -> None:
    params, _, split = tiny_project
    result = _train(run_cli, params, tmp_path / "nowhere", split, tmp_path / "out")
    _assert_user_error(result, "nowhere", "gil prepare")


def test_invalid_strategy_params_before_any_work(run_cli, tiny_project, tmp_path) -> None:
    params, processed, split = tiny_project
    raw = yaml.safe_load(params.read_text())
    raw["strategies"]["replay"]["mix"] = 1.5
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = _train(run_cli, bad, processed, split, tmp_path / "out", strategy="replay")
    _assert_user_error(result, "strategies.replay.mix")
    assert not (tmp_path / "out").exists()


def test_checkpoint_from_another_config_is_refused_and_kept(run_cli, tiny_project, tmp_path) -> None:
    params, processed, split = tiny_project
    assert _train(run_cli, params, processed, split, tmp_path / "out").code == 0
    checkpoint = stage_path(tmp_path / "out" / "seed_0", 2)
    before = checkpoint.read_bytes()
    raw = yaml.safe_load(params.read_text())
    raw["train"]["lr"] = 0.01
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    result = _train(run_cli, other, processed, split, tmp_path / "out")
    _assert_user_error(result, "different config", "--fresh")
    assert checkpoint.read_bytes() == before


def test_evaluate_without_checkpoints_names_the_fix(run_cli, tiny_project, tmp_path) -> None:
    params, processed, split = tiny_project
    result = run_cli(
        "evaluate",
        "-s",
        "finetune",
        "-p",
        params,
        "--processed",
        processed,
        "--split",
        split,
        "--checkpoints",
        tmp_path / "none",
        "--out",
        tmp_path / "m.json",
    )
    _assert_user_error(result, "not found", "train")
    assert not (tmp_path / "m.json").exists()


def test_checkpoint_with_another_vocabulary_is_refused(run_cli, tiny_project, tmp_path) -> None:
    params, processed, split = tiny_project
    assert _train(run_cli, params, processed, split, tmp_path / "out").code == 0
    other_split = tmp_path / "split"
    shutil.copytree(split, other_split)
    raw = yaml.safe_load(params.read_text())
    raw["split"]["seed"] = 99
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    assert run_cli("split", "-p", other, "--processed", processed, "--out", other_split).code == 0
    result = run_cli(
        "evaluate",
        "-s",
        "finetune",
        "-p",
        params,
        "--processed",
        processed,
        "--split",
        other_split,
        "--checkpoints",
        tmp_path / "out",
        "--out",
        tmp_path / "m.json",
    )
    _assert_user_error(result, "different config, split or vocabulary")


def test_reference_command_and_a_corrupt_reference_file(run_cli, tiny_project, tmp_path) -> None:
    import json

    params, processed, split = tiny_project
    out = tmp_path / "reference.json"
    result = run_cli("reference", "-p", params, "--processed", processed, "--split", split, "--out", out)
    assert result.code == 0 and "per-gene-mean predictor MSE per gene set" in result.stdout
    document = json.loads(out.read_text())
    assert len(document["gene_mean_mse"]) == 3 and set(document["probe"]) == {"group0", "group1"}
    out.write_text("{not json")
    result = run_cli(
        "evaluate", "-s", "finetune", "-p", params, "--processed", processed, "--split", split,
        "--checkpoints", tmp_path / "none", "--reference", out, "--out", tmp_path / "m.json",
    )  # fmt: skip
    _assert_user_error(result, "reference.json is not valid JSON", "rerun")
    assert not (tmp_path / "m.json").exists()
