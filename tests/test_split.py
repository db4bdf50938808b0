"""``gil split``: every gene method, cell stages, probe tasks, determinism, and user errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gil.config import config_from_dict
from gil.data.layout import EVAL_STAGE, VALIDATION_STAGE, ProcessedData, Split
from gil.data.split import assign_by_rank, run_split, stratified_parts
from gil.errors import GilError

MARKERS = {f"type{t}": [f"gene{j:04d}" for j in range(5 * t, 5 * t + 5)] for t in range(4)}


def _split(params: dict, processed: Path, out: Path) -> Split:
    run_split(config_from_dict(params), processed, out)
    return Split.load(out)


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _assert_partitions(split: Split, data: ProcessedData) -> None:
    """Gene sets are disjoint and cover the genes in processed order; cells and probes are consistent."""
    listed = [gene for _, genes in split.gene_sets for gene in genes]
    assert sorted(listed) == sorted(data.gene_names) and len(listed) == data.n_genes
    order = {gene: i for i, gene in enumerate(data.gene_names)}
    for _, genes in split.gene_sets:
        assert genes and [order[g] for g in genes] == sorted(order[g] for g in genes)
    assert split.set_names == ["B"] + [f"T{k}" for k in range(1, split.n_stages + 1)]
    assert split.cell_stages.dtype == np.int16 and len(split.cell_stages) == data.n_cells
    assert set(np.unique(split.cell_stages)) == set(range(VALIDATION_STAGE, split.n_stages + 1))
    for task in split.tasks:
        probe = task.cells
        assert len(set(probe.tolist())) == len(probe)
        assert (split.cell_stages[probe] == EVAL_STAGE).all()
        labels = data.cells[task.label].to_numpy()[probe]
        assert task.classes == sorted(set(labels))
        assert [task.classes[i] for i in task.targets] == labels.tolist()


def test_random_split(tiny_params: dict, tiny_processed: Path, tiny_split: Path) -> None:
    data, split = ProcessedData.load(tiny_processed), Split.load(tiny_split)
    _assert_partitions(split, data)
    assert split.method == "random"
    assert [len(genes) for _, genes in split.gene_sets] == [48, 6, 6]  # round(0.1 * 60) per stage
    counts = {k: int((split.cell_stages == k).sum()) for k in (-1, -2, 0, 1, 2)}
    assert 80 <= counts[-1] <= 100  # 30% test cells, rounded within each stratum
    assert 20 <= counts[-2] <= 40  # 10% validation cells
    assert abs(counts[0] - (300 - counts[-1] - counts[-2]) / 2) <= 1 and abs(counts[1] - counts[2]) <= 1
    assert [task.learned_at for task in split.tasks] == [0, 0]
    summary = split.summary
    assert summary["gene_sets"] == {"B": 48, "T1": 6, "T2": 6}
    names = {-1: "eval", -2: "validation"}
    assert summary["cell_stages"] == {names.get(k, str(k)): n for k, n in counts.items()}
    assert all(summary["checks"].values()) and summary["seed"] == 0
    assert "B 48, T1 6, T2 6" in (tiny_split / "summary.txt").read_text()


def test_validation_cells_come_out_of_the_training_cells_and_leave_the_test_cells_alone(
    tiny_params: dict, tiny_processed: Path, tmp_path: Path
) -> None:
    """Adding validation cells must not move a test cell (reported numbers keep their cells), must
    draw them stratified like the test cells, and ``validation_fraction`` 0 must give no such cells."""
    data = ProcessedData.load(tiny_processed)
    splits = {}
    for fraction in (0.0, 0.1, 0.2):
        tiny_params["split"]["validation_fraction"] = fraction
        splits[fraction] = _split(tiny_params, tiny_processed, tmp_path / str(fraction)).cell_stages
    assert not (splits[0.0] == VALIDATION_STAGE).any()
    for fraction in (0.1, 0.2):
        stages = splits[fraction]
        assert ((stages == EVAL_STAGE) == (splits[0.0] == EVAL_STAGE)).all()
        validation = stages == VALIDATION_STAGE
        assert (splits[0.0][validation] >= 0).all()  # taken from what were training cells
        types = data.cells["cell_type"].to_numpy()
        for cell_type in np.unique(types):  # stratified: each type's share is the fraction, rounded
            members = types == cell_type
            assert abs(validation[members].sum() - fraction * members.sum()) <= 1
    assert (splits[0.2] == VALIDATION_STAGE).sum() > (splits[0.1] == VALIDATION_STAGE).sum()


def test_validation_and_test_fractions_must_leave_training_cells(tiny_params: dict) -> None:
    tiny_params["split"].update(eval_fraction=0.6, validation_fraction=0.4)
    with pytest.raises(GilError, match=r"split: .*leave no training cells; keep their sum below 1"):
        config_from_dict(tiny_params)


def test_probe_tasks_hold_every_labelled_held_out_cell_of_their_group(
    tiny_processed: Path, tiny_split: Path
) -> None:
    data, split = ProcessedData.load(tiny_processed), Split.load(tiny_split)
    groups = data.cells["group"].to_numpy()
    for task, group in zip(split.tasks, ["group0", "group1"], strict=True):
        expected = np.flatnonzero((groups == group) & (split.cell_stages == EVAL_STAGE))
        assert task.cells.tolist() == expected.tolist()
        assert len(task.classes) == 2
        counts = np.bincount(task.targets)
        assert task.majority_rate == pytest.approx(counts.max() / counts.sum())


@pytest.mark.parametrize("score", ["expression", "differential"])
def test_importance_picks_each_tasks_marker_genes(
    score: str, tiny_params: dict, tiny_processed: Path, tmp_path: Path
) -> None:
    tiny_params["split"]["genes"].update({"method": "importance", "top_n": 10, "score": score})
    split = _split(tiny_params, tiny_processed, tmp_path / "split")
    _assert_partitions(split, ProcessedData.load(tiny_processed))
    assert split.gene_sets[1] == ("T1", MARKERS["type0"] + MARKERS["type1"])
    assert split.gene_sets[2] == ("T2", MARKERS["type2"] + MARKERS["type3"])
    assert [task.learned_at for task in split.tasks] == [1, 2]
    assert split.summary["method_details"]["score"] == score
    assert "ranking it higher" in (tmp_path / "split" / "summary.txt").read_text()


def test_rank_rule_gives_shared_genes_to_the_higher_rank() -> None:
    scores = np.array(
        [
            [9.0, 8.0, 7.0, 1.0, 0.0, 5.0],  # task 1 ranks: g0 g1 g2 g5 g3 g4
            [1.0, 9.0, 7.0, 8.0, 2.0, 0.0],  # task 2 ranks: g1 g3 g2 g4 g0 g5
        ]
    )
    stage, shared = assign_by_rank(scores, top_n=3)
    # g0 only task 1; g1 rank 1 in task 1 vs 0 in task 2 -> 2; g2 rank 2 in both -> earlier task 1;
    # g3 only task 2; g4, g5 in no top list -> base.
    assert stage.tolist() == [1, 2, 1, 2, 0, 0]
    assert shared == 2


def test_rank_rule_ignores_genes_with_no_positive_score() -> None:
    stage, _ = assign_by_rank(np.array([[3.0, 0.0, -1.0, 0.0]]), top_n=3)
    assert stage.tolist() == [1, 0, 0, 0]


def test_stratified_parts_follow_the_fractions_in_every_group() -> None:
    keys = np.repeat([0, 1, 2], [50, 30, 1])
    parts = stratified_parts(keys, (0.6, 0.2, 0.2), np.random.default_rng(0))
    assert np.bincount(parts[keys == 0]).tolist() == [30, 10, 10]
    assert np.bincount(parts[keys == 1]).tolist() == [18, 6, 6]
    assert parts[keys == 2].tolist() == [0]
    again = stratified_parts(keys, (0.6, 0.2, 0.2), np.random.default_rng(0))
    assert np.array_equal(parts, again)


@pytest.mark.parametrize("kind", ["yaml", "csv"])
def test_file_split(kind: str, tiny_params: dict, tiny_processed: Path, tmp_path: Path) -> None:
    path = tmp_path / f"genes.{kind}"
    if kind == "yaml":
        path.write_text("T2: [gene0040, gene0003]\nT1: [gene0010, gene0001, gene0059]\n")
    else:
        path.write_text("gene,stage\ngene0059,T1\ngene0001,T1\ngene0010,1\ngene0040,T2\ngene0003,T2\n")
    tiny_params["split"]["genes"].update({"method": "file", "file": str(path)})
    split = _split(tiny_params, tiny_processed, tmp_path / "split")
    _assert_partitions(split, ProcessedData.load(tiny_processed))
    assert split.gene_sets[1:] == [
        ("T1", ["gene0001", "gene0010", "gene0059"]),
        ("T2", ["gene0003", "gene0040"]),
    ]
    assert len(split.gene_sets[0][1]) == 55


def test_same_seed_same_bytes_other_seed_differs(
    tiny_params: dict, tiny_processed: Path, tmp_path: Path
) -> None:
    _split(tiny_params, tiny_processed, tmp_path / "a")
    _split(tiny_params, tiny_processed, tmp_path / "b")
    tiny_params["split"]["seed"] = 1
    _split(tiny_params, tiny_processed, tmp_path / "c")
    first, again, other = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert first == again
    assert set(first) == {"gene_sets.json", "cell_stages.npy", "tasks.json", "summary.json", "summary.txt"}
    for name in ("gene_sets.json", "cell_stages.npy", "tasks.json"):
        assert first[name] != other[name]


def test_gene_method_does_not_reshuffle_cells(
    tiny_params: dict, tiny_processed: Path, tmp_path: Path
) -> None:
    random_split = _split(tiny_params, tiny_processed, tmp_path / "a")
    tiny_params["split"]["genes"]["method"] = "importance"
    importance_split = _split(tiny_params, tiny_processed, tmp_path / "b")
    assert np.array_equal(random_split.cell_stages, importance_split.cell_stages)


def _unknown_genes_file(tmp_path: Path) -> dict:
    path = tmp_path / "genes.yaml"
    path.write_text("T1: [gene0001, GAPDH, Actb]\n")
    return {"method": "file", "file": str(path)}


def _overlap_file(tmp_path: Path) -> dict:
    path = tmp_path / "genes.csv"
    path.write_text("gene,stage\ngene0001,T1\ngene0002,T2\ngene0001,T2\n")
    return {"method": "file", "file": str(path)}


def _gap_file(tmp_path: Path) -> dict:
    path = tmp_path / "genes.yaml"
    path.write_text("T1: [gene0001]\nT3: [gene0002]\n")
    return {"method": "file", "file": str(path)}


def _bad_yaml_file(tmp_path: Path) -> dict:
    path = tmp_path / "genes.yaml"
    path.write_text("T1: [gene0001\n")
    return {"method": "file", "file": str(path)}


def _task(eval_fraction: float = 0.3, **change: object) -> Callable[[dict, Path], None]:
    def apply(params: dict, _: Path) -> None:
        params["split"]["eval_fraction"] = eval_fraction
        params["split"]["tasks"][0].update(change)

    return apply


def _genes(change: dict | Callable[[Path], dict]) -> Callable[[dict, Path], None]:
    def apply(params: dict, tmp_path: Path) -> None:
        params["split"]["genes"].update(change(tmp_path) if callable(change) else change)

    return apply


BAD_SPLITS: dict[str, tuple[Callable[[dict, Path], None], list[str]]] = {
    "unknown_column": (_task(column="tissue"), ["column 'tissue'", "label_columns", "gil prepare"]),
    "unknown_label": (_task(label="subtype"), ["column 'subtype'"]),
    "unknown_values": (_task(values=["group0", "groupX"]), ["values ['groupX']", "group1"]),
    "single_class": (_task(label="group"), ["'group0'", "several classes"]),
    "too_few_cells": (_task(0.05, column="cell_type", values=["type0"], label="group"), ["held-out cells"]),
    "missing_file": (_genes({"method": "file", "file": "nowhere.yaml"}), ["nowhere.yaml not found"]),
    "unknown_genes": (_genes(_unknown_genes_file), ["2 genes are not in the processed data", "'GAPDH'"]),
    "overlapping_stages": (_genes(_overlap_file), ["'gene0001'", "several stages"]),
    "stage_gap": (_genes(_gap_file), ["T1..Tn", "T3"]),
    "bad_yaml": (_genes(_bad_yaml_file), ["cannot parse"]),
    "empty_base": (_genes({"stage_fraction": 0.5}), ["gene set B is empty"]),
    "importance_empty_base": (_genes({"method": "importance", "top_n": 60}), ["gene set B is empty"]),
    "empty_stage": (
        lambda p, _: p["split"].update({"base_fraction": 0.999}),
        ["stage 1 would have no cells"],
    ),
    "no_tasks_for_importance": (
        lambda p, _: p["split"].update({"tasks": [], "genes": {"method": "importance"}}),
        ["needs split.tasks"],
    ),
    "differential_all_cells": (
        lambda p, _: p["split"].update(
            {
                "tasks": [{"name": "all", "label": "group"}],
                "genes": {"method": "importance", "score": "differential"},
            }
        ),
        ["differential", "leave out some cells"],
    ),
}


@pytest.mark.parametrize("name", list(BAD_SPLITS))
def test_bad_split_is_a_user_error_and_writes_nothing(
    name: str, tiny_params: dict, tiny_processed: Path, tmp_path: Path
) -> None:
    change, keywords = BAD_SPLITS[name]
    change(tiny_params, tmp_path)
    out = tmp_path / "out" / "split"
    with pytest.raises(GilError) as error:
        run_split(config_from_dict(tiny_params), tiny_processed, out)
    message = str(error.value)
    assert "\n" not in message
    for keyword in keywords:
        assert keyword in message, (keyword, message)
    assert not out.parent.exists()


def test_split_cli(
    tiny_params: dict, tiny_processed: Path, write_params: Callable, run_cli: Callable, tmp_path: Path
) -> None:
    params = write_params(tiny_params)
    result = run_cli("split", "--params", params, "--processed", tiny_processed, "--out", tmp_path / "split")
    assert result.code == 0, result.stderr
    assert result.stdout == (tmp_path / "split" / "summary.txt").read_text() + "\n"
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["gene_sets"]["T1"] == 6

    tiny_params["split"]["tasks"][0]["column"] = "tissue"
    args = [
        "split",
        "--params",
        write_params(tiny_params),
        "--processed",
        tiny_processed,
        "--out",
        tmp_path / "x",
    ]
    failed = run_cli(*args)
    assert failed.code == 2 and "Traceback" not in failed.stderr
    assert (
        failed.stderr.startswith("error: split.tasks[group0]: column 'tissue'")
        and failed.stderr.count("\n") == 1
    )
    assert not (tmp_path / "x").exists()

    missing = run_cli("split", "--params", params, "--processed", tmp_path / "nope", "--out", tmp_path / "x")
    assert missing.code == 2 and "run `gil prepare`" in missing.stderr


def test_split_warns_when_the_gene_list_is_outside_the_tracked_directory(
    tiny_params: dict, tiny_processed: Path, tmp_path: Path, run_cli, write_params, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gene_lists").mkdir()
    for location in ("gene_lists/stages.yaml", "elsewhere.yaml"):
        (tmp_path / location).write_text("T1: [gene0010, gene0001]\nT2: [gene0040]\n")
        tiny_params["split"]["genes"].update({"method": "file", "file": location})
        result = run_cli(
            "split", "-p", write_params(tiny_params), "--processed", tiny_processed, "--out", "split"
        )
        assert result.code == 0 and "T1 2" in result.stdout
        warned = "elsewhere.yaml is outside gene_lists/" in result.stderr
        assert warned == (location == "elsewhere.yaml"), result.stderr
