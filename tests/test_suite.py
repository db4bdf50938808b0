"""The suite of settings: resolving a setting, ranking across settings, and the real suite pipeline."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    ROOT,
    _run_checked,
    init_project,
    stages_repro_would_run,
    tiny_pipeline_params,
    tracked_to,
)

from gil.config import config_from_dict, run_params
from gil.errors import GilError
from gil.settings import merged, resolve_setting
from gil.suite import kendall_w, rank_overall, rank_per_setting

# ---------------------------------------------------------------------------------------------------
# Resolving a setting


def _with_settings(params: dict) -> dict:
    params = {**params, "strategies": {"finetune": {"kind": "finetune"}, "joint": {"kind": "joint"}}}
    params["benchmark"] = ["finetune", "joint"]
    params["suite"] = {"strategies": ["finetune"], "train": {"epochs_per_stage": 7}}
    params["settings"] = {
        "plain": {"desc": "as the benchmark"},
        "three": {"split": {"seed": 5, "genes": {"n_stages": 3}}},
        "one_task": {"split": {"tasks": [params["split"]["tasks"][1]]}},
    }
    return params


def test_merged_merges_mappings_and_replaces_lists_and_values() -> None:
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 2}
    assert merged(base, {"a": {"c": [3], "d": {"g": 2}}, "f": 9}) == {
        "a": {"b": 1, "c": [3], "d": {"e": 1, "g": 2}},
        "f": 9,
    }
    assert base["a"]["c"] == [1, 2]  # the base is not modified


def test_a_setting_overrides_split_and_train_and_goes_to_the_suite_experiment(tiny_params) -> None:
    params = _with_settings(tiny_params)
    base = config_from_dict(params)
    three = config_from_dict(params, setting="three")
    assert (three.split.seed, three.split.genes.n_stages) == (5, 3)
    assert three.split.genes.stage_fraction == base.split.genes.stage_fraction  # merged, not replaced
    assert three.split.tasks == base.split.tasks
    assert three.train.epochs_per_stage == 7 and three.train.batch_size == base.train.batch_size
    assert three.benchmark == ["finetune"]
    assert three.experiment_name() == "gil-synthetic-suite" == base.suite_experiment_name()
    assert base.experiment_name() == "gil-synthetic"
    one_task = config_from_dict(params, setting="one_task")
    assert [task.name for task in one_task.split.tasks] == ["group1"]  # a list replaces the base list
    plain = config_from_dict(params, setting="plain")
    assert plain.split == base.split
    # Settings are not part of a run's identity: adding one leaves the benchmark's runs as they are.
    assert run_params(base, "finetune") == run_params(
        config_from_dict(
            tiny_params | {"strategies": params["strategies"], "benchmark": params["benchmark"]}
        ),
        "finetune",
    )


def test_bad_settings_are_refused_naming_the_key(tiny_params) -> None:
    params = _with_settings(tiny_params)
    with pytest.raises(GilError, match=r"unknown setting 'nope'.*plain, three, one_task"):
        config_from_dict(params, setting="nope")
    params["settings"]["three"]["split"]["genes"]["methd"] = "random"
    with pytest.raises(GilError, match=r"\(setting three\): split\.genes\.methd: unknown key"):
        config_from_dict(params)  # every setting is checked, whichever one is asked for
    params = _with_settings(tiny_params)
    params["settings"]["plain"]["dataset"] = {"path": "other.h5ad"}
    with pytest.raises(GilError, match=r"settings\.plain: a suite runs on one dataset.*remove dataset\.path"):
        config_from_dict(params)
    params = _with_settings(tiny_params)
    params["suite"]["strategies"] = ["nope"]
    with pytest.raises(GilError, match=r"suite\.strategies: \['nope'\] are not entries"):
        config_from_dict(params)


def test_cli_setting_paths_and_unknown_setting(
    tiny_params, write_params, run_cli, tmp_path, monkeypatch
) -> None:
    """``--setting`` puts a command's default paths under suite/<setting>/; an unknown setting is one
    line and exit 2, writing nothing."""
    monkeypatch.chdir(tmp_path)
    params = write_params(_with_settings(tiny_params))
    result = run_cli("split", "-p", params, "--setting", "nope")
    assert result.code == 2 and result.stderr.count("\n") == 1 and "unknown setting 'nope'" in result.stderr
    assert not (tmp_path / "suite").exists()
    assert run_cli("prepare", "-p", params, "--setting", "three").code == 0
    assert run_cli("split", "-p", params, "--setting", "three").code == 0
    gene_sets = json.loads((tmp_path / "suite" / "three" / "data" / "split" / "gene_sets.json").read_text())
    assert [s["name"] for s in gene_sets["sets"]] == [
        "B",
        "T1",
        "T2",
        "T3",
    ]  # the setting's three stages, in its own directory


def test_a_setting_reports_its_suite_strategies_and_no_tuned_row(tiny_params) -> None:
    """Tuned rows were tuned on the benchmark's split: a setting neither trains nor reports them."""
    params = _with_settings(tiny_params)
    params["strategies"] = {"finetune": {"kind": "finetune"}}
    params["benchmark"] = ["finetune"]
    params["suite"] = {"strategies": ["finetune"]}
    params["tuned"] = {"path": None, "rows": ["finetune"]}
    assert config_from_dict(params).report_rows == ["finetune", "finetune@tuned"]
    assert config_from_dict(params, setting="three").report_rows == ["finetune"]


def test_resolve_setting_leaves_the_raw_params_unchanged(tiny_params) -> None:
    params = _with_settings(tiny_params)
    before = json.dumps(params, sort_keys=True)
    resolve_setting(params, "three")
    assert json.dumps(params, sort_keys=True) == before


# ---------------------------------------------------------------------------------------------------
# Ranking across settings, against hand-computed values

PER_SEED = pd.DataFrame(
    [
        # setting, strategy, seed, delta
        ("s1", "a", "0", 0.30),
        ("s1", "a", "1", 0.10),  # mean 0.20
        ("s1", "b", "0", 0.05),
        ("s1", "b", "1", 0.15),  # mean 0.10
        ("s1", "c", "0", 0.40),
        ("s1", "c", "1", 0.40),  # mean 0.40
        ("s2", "a", "0", 0.50),
        ("s2", "a", "1", 0.70),  # mean 0.60
        ("s2", "b", "0", 0.00),
        ("s2", "b", "1", 0.20),  # mean 0.10
        ("s2", "c", "0", 0.20),
        ("s2", "c", "1", 0.20),  # mean 0.20
        ("s3", "a", "0", 0.10),
        ("s3", "a", "1", 0.10),  # mean 0.10
        ("s3", "b", "0", 0.10),
        ("s3", "b", "1", 0.10),  # mean 0.10 (tie with a)
        ("s3", "c", "0", 0.30),
        ("s3", "c", "1", None),  # mean 0.30 (one seed)
    ],
    columns=["setting", "strategy", "seed", "delta"],
)


def test_rank_per_setting_by_hand() -> None:
    table = rank_per_setting(PER_SEED).set_index(["setting", "strategy"])
    assert table.loc[("s1", "a"), "mean"] == pytest.approx(0.20)
    assert table.loc[("s1", "a"), "std"] == pytest.approx(math.sqrt(0.02))  # (0.1² + 0.1²) / (2 − 1)
    assert table.loc[("s3", "c"), "n_seeds"] == 1 and math.isnan(table.loc[("s3", "c"), "std"])
    ranks = {key: value for key, value in table["rank"].items()}
    assert ranks == {
        ("s1", "a"): 2,
        ("s1", "b"): 1,
        ("s1", "c"): 3,
        ("s2", "a"): 3,
        ("s2", "b"): 1,
        ("s2", "c"): 2,
        ("s3", "a"): 1.5,
        ("s3", "b"): 1.5,
        ("s3", "c"): 3,  # a tie shares the average rank
    }
    descending = rank_per_setting(PER_SEED, ascending=False).set_index(["setting", "strategy"])["rank"]
    assert descending[("s1", "c")] == 1 and descending[("s1", "b")] == 3


def test_rank_overall_by_hand() -> None:
    overall = rank_overall(rank_per_setting(PER_SEED)).set_index("strategy")
    # b: settings' means 0.1, 0.1, 0.1; c: 0.4, 0.2, 0.3; a: 0.2, 0.6, 0.1
    assert overall.loc["b", "mean"] == pytest.approx(0.1) and overall.loc["b", "spread"] == pytest.approx(0)
    assert overall.loc["a", "mean"] == pytest.approx(0.3) and overall.loc["c", "mean"] == pytest.approx(0.3)
    assert overall.loc["a", "spread"] == pytest.approx(math.sqrt(((0.1) ** 2 + 0.3**2 + 0.2**2) / 2))
    assert overall.loc["a", "mean_rank"] == pytest.approx((2 + 3 + 1.5) / 3)
    assert overall.loc["c", "mean_rank"] == pytest.approx((3 + 2 + 3) / 3)
    # a and c tie on the mean over settings: the lower mean rank (a, 2.17 < 2.67) goes first.
    assert overall["rank"].to_dict() == {"b": 1, "a": 2, "c": 3}


def test_equal_means_over_settings_are_ordered_by_mean_rank() -> None:
    per_seed = pd.DataFrame(
        [("s1", "x", "0", 0.5), ("s1", "y", "0", 0.0), ("s1", "z", "0", 0.1)]
        + [("s2", "x", "0", 0.0), ("s2", "y", "0", 0.5), ("s2", "z", "0", 0.6)],
        columns=["setting", "strategy", "seed", "delta"],
    )
    overall = rank_overall(rank_per_setting(per_seed))
    # x and y both average 0.25 (exactly); mean ranks x (3 + 1) / 2 = 2, y (1 + 2) / 2 = 1.5: y first.
    assert overall["strategy"].tolist() == ["y", "x", "z"]
    assert overall["mean_rank"].tolist() == [1.5, 2.0, 2.5]


def test_kendall_w_by_hand() -> None:
    per_setting = rank_per_setting(PER_SEED)
    # rank sums: a 2+3+1.5 = 6.5, b 1+1+1.5 = 3.5, c 3+2+3 = 8; mean 6; S = 0.25 + 6.25 + 4 = 10.5
    assert kendall_w(per_setting) == pytest.approx(12 * 10.5 / (3**2 * (3**3 - 3)))
    same = pd.concat([PER_SEED[PER_SEED.setting == "s1"].assign(setting=name) for name in ("x", "y")])
    assert kendall_w(rank_per_setting(same)) == pytest.approx(1.0)
    assert math.isnan(kendall_w(rank_per_setting(PER_SEED[PER_SEED.setting == "s1"])))


# ---------------------------------------------------------------------------------------------------
# Paired Δ differences to finetune per setting, against hand-computed values

PAIRED_SEEDS = pd.DataFrame(
    [
        # setting, strategy, seed, delta
        ("s1", "finetune", "0", 0.30),
        ("s1", "finetune", "1", 0.50),
        ("s1", "finetune", "2", 0.40),
        ("s1", "replay", "2", 0.15),  # listed out of seed order: pairs by seed, not by row
        ("s1", "replay", "0", 0.10),
        ("s1", "replay", "1", 0.20),  # diffs −0.20, −0.30, −0.25: mean −0.25, sd 0.05
        ("s2", "finetune", "0", 0.20),
        ("s2", "finetune", "1", 0.20),
        ("s2", "replay", "0", 0.10),
        ("s2", "replay", "1", 0.30),  # diffs −0.10, +0.10: mean 0, sd √0.02
        ("s2", "replay", "5", 9.00),  # no finetune seed 5: ignored
    ],
    columns=["setting", "strategy", "seed", "delta"],
)


def test_paired_delta_per_setting_by_hand() -> None:
    from gil.suite import paired_per_setting, paired_table

    paired = paired_per_setting(PAIRED_SEEDS)
    assert set(paired) == {("s1", "replay"), ("s2", "replay")}
    s1, s2 = paired["s1", "replay"], paired["s2", "replay"]
    half_s1 = 0.95 / math.sqrt(2 * 0.975 * 0.025) * 0.05 / math.sqrt(3)  # t(0.975, 2) · sd / √n, closed form
    assert (s1.mean, s1.low, s1.high, s1.n) == pytest.approx((-0.25, -0.25 - half_s1, -0.25 + half_s1, 3))
    half_s2 = math.tan(0.475 * math.pi) * math.sqrt(0.02) / math.sqrt(2)  # t(0.975, 1) = tan(0.475π) = 12.706
    assert (s2.mean, s2.low, s2.high, s2.n) == pytest.approx((0.0, -half_s2, half_s2, 2), abs=1e-12)
    assert paired_table(paired, ["s1", "s2"], ["finetune", "replay"]).splitlines() == [
        "| strategy | s1 | s2 | resolved (interval excludes 0) |",
        "|---|---|---|---|",
        "| replay | −0.250 [−0.374, −0.126] | +0.000 [−1.271, +1.271] | lower in 1, higher in 0 of 2 |",
    ]


def test_suite_report_has_the_paired_section_and_json() -> None:
    from gil.suite import suite_markdown

    def document(strategy: str) -> dict:
        return {"strategy": strategy, "gene_sets": ["B", "T1", "T2"], "regression": {"delta_per_set": [0.1]}}

    suite = {setting: {s: document(s) for s in ("finetune", "replay")} for setting in ("s1", "s2")}
    per_seed = PAIRED_SEEDS.assign(forgetting=0.0, final_mse=1.0, skill_new=0.5, probe_delta=0.0)
    settings = {"s1": "one", "s2": "two"}
    markdown, summary = suite_markdown(settings, suite, per_seed, ["finetune", "replay"], "f.png")
    section = markdown.split(
        "## Paired Δ difference to finetune per setting (95 % t interval over seeds)\n\n"
    )
    assert "| replay | −0.250 [−0.374, −0.126] | +0.000 [−1.271, +1.271] |" in section[1].split("##")[0]
    assert summary["paired_reference"] == "finetune"
    assert [(r["setting"], r["strategy"], r["n"], r["verdict"]) for r in summary["paired_delta"]] == [
        ("s1", "replay", 3, "resolved: lower than finetune"),
        ("s2", "replay", 2, "unresolved"),
    ]
    replay_only = per_seed[per_seed.strategy == "replay"]
    suite_replay = {setting: {"replay": document("replay")} for setting in ("s1", "s2")}
    markdown, summary = suite_markdown(settings, suite_replay, replay_only, ["replay"], "f.png")
    assert "No `finetune` run among the suite's strategies: nothing to pair the others with." in markdown
    assert summary["paired_delta"] == []


# ---------------------------------------------------------------------------------------------------
# The suite pipeline, end to end, through real DVC and MLflow


def _suite_params(h5ad: Path, repo: Path) -> dict:
    params = tiny_pipeline_params(h5ad)
    params["train"]["seeds"] = [0, 1]
    # Seeds one after the other in each command: on the test machine's cores, busy with the other
    # test worker, a fork server importing torch and gil again per command is pure cost (~3 s each);
    # seeds in worker processes are tested in test_parallel.py and test_workers.py.
    params["compute"] = {**params.get("compute", {}), "jobs": 1}
    params["suite"] = {"strategies": ["finetune", "replay"], "train": {"epochs_per_stage": 2}}
    params["settings"] = {
        "two": {"desc": "two stages"},
        "three": {"desc": "three stages", "split": {"seed": 1, "genes": {"n_stages": 3}}},
    }
    params["tracking"] = tracked_to(repo)
    return params


@pytest.fixture(scope="module")
def suite_project(
    tmp_path_factory: pytest.TempPathFactory, synthetic_h5ad: Path, command_server: Path
) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("suite")
    pipeline = yaml.safe_load((ROOT / "pipelines" / "suite" / "dvc.yaml").read_text())
    params = _suite_params(synthetic_h5ad, repo)
    env = init_project(repo, synthetic_h5ad, "pipelines/suite/dvc.yaml", pipeline, params, command_server)
    _run_checked([sys.executable, "-m", "dvc", "repro", "pipelines/suite/dvc.yaml"], repo, env)
    return repo, env


def _hand_ranking(repo: Path) -> tuple[dict, dict]:
    """Per-setting means of Δ over seeds and the overall means, from the metrics files by hand."""
    means = {}
    for setting in ("two", "three"):
        for strategy in ("finetune", "replay"):
            document = json.loads((repo / "suite" / setting / "metrics" / f"{strategy}.json").read_text())
            assert document["setting"] == setting
            deltas = [seed["regression"]["delta"] for seed in document["per_seed"].values()]
            assert len(deltas) == 2
            means[setting, strategy] = sum(deltas) / 2
    overall = {s: (means["two", s] + means["three", s]) / 2 for s in ("finetune", "replay")}
    return means, overall


@pytest.mark.slow
def test_suite_pipeline_ranks_as_computed_by_hand(suite_project) -> None:
    repo, _ = suite_project
    three = json.loads((repo / "suite" / "three" / "metrics" / "replay.json").read_text())
    assert len(three["regression"]["matrix"]) == 4 and len(three["regression"]["delta_per_set"]) == 2
    assert three["regression"]["delta"] == pytest.approx(sum(three["regression"]["delta_per_set"]) / 2)
    means, overall = _hand_ranking(repo)
    summary = json.loads((repo / "reports" / "suite.json").read_text())
    for row in summary["per_setting"]:
        assert row["mean"] == pytest.approx(means[row["setting"], row["strategy"]])
        other = "replay" if row["strategy"] == "finetune" else "finetune"
        assert row["rank"] == (
            1 if means[row["setting"], row["strategy"]] < means[row["setting"], other] else 2
        )
    expected_order = sorted(overall, key=overall.get)
    assert [row["strategy"] for row in summary["overall"]] == expected_order
    assert [row["mean"] for row in summary["overall"]] == pytest.approx([overall[s] for s in expected_order])
    report = (repo / "reports" / "suite.md").read_text()
    assert "| strategy | two | three | avg ± spread | mean rank |" in report
    assert f"{means['three', 'replay']:.3f}" in report and "T1 " in report  # per-set Δ of the 3-stage setting
    assert (repo / "reports" / "suite_forgetting.png").stat().st_size > 1000
    assert "| finetune" in (repo / "suite" / "two" / "reports" / "benchmark.md").read_text()
    # The MLflow leaderboard ranks the same runs the same way.
    board = pd.read_csv(repo / "reports" / "suite_leaderboard.csv")
    assert board["strategy"].tolist() == expected_order
    assert board["mean"].tolist() == pytest.approx([overall[s] for s in expected_order])


@pytest.mark.slow
def test_suite_runs_are_tagged_by_setting_in_their_own_experiment(suite_project) -> None:
    from mlflow.tracking import MlflowClient

    repo, _ = suite_project
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("gil-synthetic-suite")
    runs = client.search_runs([experiment.experiment_id], "tags.`gil.kind` = 'parent'")
    keys = sorted(
        (r.data.tags["gil.setting"], r.data.tags["gil.strategy"], r.data.tags["gil.seed"]) for r in runs
    )
    assert keys == sorted(
        (s, t, d) for s in ("two", "three") for t in ("finetune", "replay") for d in ("0", "1")
    )
    assert all(r.info.status == "FINISHED" and "delta" in r.data.metrics for r in runs)
    three = [r for r in runs if r.data.tags["gil.setting"] == "three"]
    assert all({"delta_T1", "delta_T2"} <= set(r.data.metrics) for r in three)
    assert client.get_experiment_by_name("gil-synthetic") is None  # the benchmark's experiment is untouched


@pytest.mark.slow
def test_changing_one_setting_reruns_only_that_setting(suite_project, tmp_path: Path) -> None:
    """A setting's values are dependencies of its own stages only. Judged on what ``dvc repro`` would
    run (a real rerun of the setting's 12 stages took a minute of the suite and adds nothing: the
    fixture already ran each of them)."""
    import shutil

    repo, env = suite_project
    copy = tmp_path / "suite"
    shutil.copytree(repo, copy, symlinks=True, ignore=shutil.ignore_patterns("mlruns"))
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["tracking"] = tracked_to(copy)
    params["settings"]["three"]["split"]["seed"] = 2
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**env, "DVC_SITE_CACHE_DIR": str(copy / ".site-cache")}
    ran = stages_repro_would_run(copy, env, "pipelines/suite/dvc.yaml")
    assert not any("two" in name for name in ran)
    assert {"split@three", "train@three-finetune", "evaluate@three-replay", "compare", "leaderboard"} <= ran
