"""The bad-input suite: every command, every kind of malformed input or config.

Each case must end with exit status 2, exactly one ``error:`` line on stderr that names the problem
(and the fix), no traceback, and must leave every output file and every MLflow run exactly as they
were before (both are snapshotted around each case).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import tiny_pipeline_params
from mlflow.tracking import MlflowClient
from test_data_io import BAD_FILES

Case = Callable[[Path, Path], list]  # (workspace, tmp_path) -> CLI arguments


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, synthetic_h5ad: Path) -> Path:
    """A project with processed data, a split, a trained and evaluated strategy and tracked runs."""
    from gil.config import config_from_dict
    from gil.data.layout import ProcessedData, Split
    from gil.data.prepare import run_prepare
    from gil.data.split import run_split
    from gil.evaluate import evaluate_strategy
    from gil.files import write_json
    from gil.tracking.mlflow_tracker import open_tracker
    from gil.train.loop import train_strategy

    root = tmp_path_factory.mktemp("workspace")
    params = tiny_pipeline_params(synthetic_h5ad)
    params["tracking"] = {"uri": f"sqlite:///{root}/mlruns/mlflow.db", "register_models": False}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = config_from_dict(params)
    run_prepare(config, root / "processed")
    run_split(config, root / "processed", root / "split")
    data, split = ProcessedData.load(root / "processed"), Split.load(root / "split")
    tracker = open_tracker(config.tracking, "gil-synthetic")
    train_strategy(config, "finetune", data, split, root / "ckpt", tracker=tracker, progress=False)
    write_json(
        root / "metrics.json", evaluate_strategy(config, "finetune", data, split, root / "ckpt", tracker)
    )
    import mlflow

    mlflow.set_tracking_uri(None)
    return root


def _snapshot(root: Path) -> tuple[dict, list]:
    files = {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "mlruns" not in path.parts
    }
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = sorted(
        (r.info.run_id, r.info.status, r.info.end_time, tuple(sorted(r.data.metrics.items())))
        for r in client.search_runs(experiments)
    )
    return files, runs


def _params(workspace: Path, tmp_path: Path, change: Callable[[dict], None]) -> Path:
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    change(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _set(dotted: str, value: object) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value

    return change


def _bad_h5ad(name: str) -> Case:
    def case(ws: Path, tmp: Path) -> list:
        path = tmp / f"{name}.h5ad"
        if BAD_FILES[name][0] is not None:
            BAD_FILES[name][0](path)
        params = _params(ws, tmp, _set("dataset.path", str(path)))
        return ["prepare", "-p", params, "--out", ws / "processed"]

    return case


def _with_params(change: Callable[[dict], None], *command: str) -> Case:
    def case(ws: Path, tmp: Path) -> list:
        params = _params(ws, tmp, change)
        paths = {"PROCESSED": ws / "processed", "SPLIT": ws / "split", "CKPT": ws / "ckpt"}
        return [paths.get(arg, arg) for arg in command] + ["-p", params]

    return case


def _train(change: Callable[[dict], None], strategy: str = "finetune") -> Case:
    return _with_params(
        change, "train", "-s", strategy, "--processed", "PROCESSED", "--split", "SPLIT", "--out", "CKPT"
    )


def _split(change: Callable[[dict], None]) -> Case:
    return _with_params(change, "split", "--processed", "PROCESSED", "--out", "SPLIT")


def _gene_file(ws: Path, tmp: Path) -> list:
    genes = tmp / "genes.yaml"
    genes.write_text(yaml.safe_dump({"T1": ["gene0001", "NOT_A_GENE"], "T2": ["gene0002"]}))
    params = _params(ws, tmp, _set("split.genes", {"method": "file", "file": str(genes)}))
    return ["split", "-p", params, "--processed", ws / "processed", "--out", ws / "split"]


def _corrupt_checkpoint(ws: Path, tmp: Path) -> list:
    ckpt = tmp / "ckpt" / "seed_0"
    ckpt.mkdir(parents=True)
    (ckpt / "stage_0.pt").write_bytes(b"\x80\x04garbage")
    return [
        "train",
        "-s",
        "finetune",
        "-p",
        ws / "params.yaml",
        "--processed",
        ws / "processed",
        "--split",
        ws / "split",
        "--out",
        tmp / "ckpt",
    ]


def _text(content: str) -> Case:
    def case(ws: Path, tmp: Path) -> list:
        path = tmp / "params.yaml"
        path.write_text(content)
        return ["split", "-p", path, "--processed", ws / "processed", "--out", ws / "split"]

    return case


CASES: dict[str, tuple[Case, list[str]]] = {
    # data files (gil validate / gil prepare)
    "validate_missing_file": (lambda ws, tmp: ["validate", tmp / "nope.h5ad"], ["not found"]),
    "validate_text_file": (lambda ws, tmp: ["validate", _written(tmp / "x.h5ad", "a,b\n")], ["not an .h5ad"]),
    **{
        f"prepare_{name}": (_bad_h5ad(name), BAD_FILES[name][1][:1])
        for name in (
            "missing",
            "hdf5_not_h5ad",
            "empty",
            "nan",
            "negative",
            "log",
            "non_integer",
            "duplicates",
        )
    },
    "prepare_missing_layer": (
        _with_params(_set("dataset.counts_layer", "raw"), "prepare", "--out", "PROCESSED"),
        ["counts_layer 'raw'"],
    ),
    "prepare_missing_label_column": (
        _with_params(_set("dataset.label_columns", ["tissue"]), "prepare", "--out", "PROCESSED"),
        ["'tissue'"],
    ),
    # gene lists and task definitions (gil split)
    "split_unknown_gene_in_list": (_gene_file, ["NOT_A_GENE"]),
    "split_task_unknown_column": (
        _split(
            _set("split.tasks", [{"name": "t", "label": "cell_type", "column": "organ", "values": ["x"]}])
        ),
        ["organ"],
    ),
    "split_task_unknown_values": (
        _split(
            _set("split.tasks", [{"name": "t", "label": "cell_type", "column": "group", "values": ["nope"]}])
        ),
        ["nope"],
    ),
    "split_empty_stage": (
        _split(_set("split.genes", {"method": "random", "n_stages": 2, "stage_fraction": 0.001})),
        ["0 genes"],
    ),
    # params values and types
    "params_unknown_key": (_split(_set("split.sed", 3)), ["split.sed", "unknown key"]),
    "params_wrong_type": (_train(_set("train.lr", "fast")), ["train.lr"]),
    "params_out_of_range": (_split(_set("split.eval_fraction", 1.5)), ["split.eval_fraction"]),
    "params_bad_yaml": (_text("split: [oops\n"), ["not valid YAML"]),
    "params_not_a_mapping": (_text("- just\n- a list\n"), ["mapping"]),
    "params_heads_mismatch": (_train(_set("model.d_model", 15)), ["not divisible"]),
    # strategies and strategy params
    "strategy_unknown_kind": (
        _train(_set("strategies.finetune", {"kind": "magic"})),
        ["unknown strategy 'magic'"],
    ),
    "strategy_bad_param": (_train(_set("strategies.replay.mix", 1.5), "replay"), ["strategies.replay.mix"]),
    "strategy_unknown_param": (
        _train(_set("strategies.distill.lamda", 1.0), "distill"),
        ["strategies.distill.lamda"],
    ),
    "strategy_unknown_balance_label": (
        _train(_set("strategies.replay.balance_label", "tissue"), "replay"),
        ["balance_label 'tissue'"],
    ),
    "train_unknown_strategy_name": (_train(lambda raw: None, "nosuch"), ["unknown strategy 'nosuch'"]),
    # tuned rows and their file
    "train_tuned_row_before_tuning": (_train(lambda raw: None, "finetune@tuned"), ["run `gil tune`"]),
    "params_hand_made_tuned_name": (
        _train(_set("strategies.finetune@tuned", {"kind": "finetune"})),
        ["reserved for the tuned params file"],
    ),
    "strategy_bad_train_override": (
        _train(_set("strategies.finetune.train", {"lr": "fast"})),
        ["strategies.finetune.train.lr"],
    ),
    "tune_without_sweeps": (
        lambda ws, tmp: [
            "tune",
            "-p",
            ws / "params.yaml",
            "--collect-only",
            "--reports",
            tmp / "x",
            "--out",
            tmp / "t",
        ],
        ["not found; run `gil sweep"],
    ),
    "params_no_training_cells_left": (
        _split(_set("split.validation_fraction", 0.8)),
        ["leave no training cells"],
    ),
    # checkpoints
    "checkpoint_other_config": (_train(_set("train.lr", 0.05)), ["different config"]),
    "checkpoint_corrupt": (_corrupt_checkpoint, ["unreadable"]),
    "evaluate_missing_checkpoints": (
        lambda ws, tmp: [
            "evaluate",
            "-s",
            "finetune",
            "-p",
            ws / "params.yaml",
            "--processed",
            ws / "processed",
            "--split",
            ws / "split",
            "--checkpoints",
            tmp / "none",
            "--out",
            ws / "m.json",
        ],
        ["not found"],
    ),
    "evaluate_other_strategy_checkpoints": (
        _with_params(
            lambda raw: None,
            "evaluate",
            "-s",
            "replay",
            "--processed",
            "PROCESSED",
            "--split",
            "SPLIT",
            "--checkpoints",
            "CKPT",
        ),
        ["different config"],
    ),
    "controls_missing_checkpoints": (
        _with_params(
            lambda raw: None,
            "controls",
            "--processed",
            "PROCESSED",
            "--split",
            "SPLIT",
            "--checkpoints",
            "NONE",
            "--out",
            "CKPT",
        ),
        ["not found"],
    ),
    "controls_unknown_strategy": (
        _with_params(lambda raw: None, "controls", "-s", "nosuch", "--out", "CKPT"),
        ["unknown strategy 'nosuch'"],
    ),
    # tracking URIs
    "tracking_unreachable_server": (_train(_set("tracking.uri", "http://127.0.0.1:9")), ["unreachable"]),
    "tracking_unsupported_uri": (_train(_set("tracking.uri", "ftp://example/x")), ["tracking.uri"]),
    "leaderboard_unknown_metric": (
        _with_params(lambda raw: None, "leaderboard", "--metric", "nope", "--out", "CKPT"),
        ["nope"],
    ),
    "leaderboard_tracking_disabled": (
        _with_params(_set("tracking.enabled", False), "leaderboard", "--out", "CKPT"),
        ["tracking is disabled"],
    ),
    # reports
    "report_missing_metrics": (
        lambda ws, tmp: ["report", tmp / "none.json", "--out", ws / "r.md"],
        ["not found"],
    ),
}


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_suite_is_broad() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_cleanly_and_changes_nothing(
    name: str, workspace: Path, tmp_path: Path, run_cli
) -> None:
    make_args, words = CASES[name]
    args = make_args(workspace, tmp_path)
    before = _snapshot(workspace)
    result = run_cli(*args)
    assert result.code == 2, (result.code, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert _snapshot(workspace) == before
