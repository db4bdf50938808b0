"""The leaderboard over real MLflow runs, through a tracking server and on a SQLite file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from _mlflow_helpers import (  # noqa: F401 - fixtures are registered by import
    _clean_mlflow,
    isolated_mlflow,
    record_run,
    server_url,
    sqlite_uri,
)
from mlflow import MlflowClient

from gil.config import TrackingConfig
from gil.errors import GilError
from gil.tracking.leaderboard import fetch_leaderboard, run_leaderboard
from gil.tracking.mlflow_tracker import MlflowTracker

# Per strategy and seed: (forgetting, final_mse). "replay" forgets less on both seeds.
SUMMARIES = {
    ("naive", 0): (0.50, 1.0),
    ("naive", 1): (0.70, 1.2),
    ("replay", 0): (0.10, 1.4),
    ("replay", 1): (0.20, 1.6),
}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("http", marks=pytest.mark.slow)])
def benchmark(request: pytest.FixtureRequest) -> TrackingConfig:
    """An experiment holding the runs of :data:`SUMMARIES`, plus runs that must not count."""
    uri = request.getfixturevalue("sqlite_uri" if request.param == "sqlite" else "server_url")
    config = TrackingConfig(uri=uri, experiment=f"bench-{request.param}")
    with isolated_mlflow():
        tracker = MlflowTracker(uri, config.experiment)
        record_run(tracker, "naive", 0, {"forgetting": 0.0, "final_mse": 0.0})  # superseded below
        for (strategy, seed), (forgetting, final_mse) in SUMMARIES.items():
            record_run(tracker, strategy, seed, {"forgetting": forgetting, "final_mse": final_mse})
        with pytest.raises(RuntimeError), tracker:  # a failed run, excluded
            tracker.begin_run("ewc", 0, {}, {}, resume=False)
            tracker.log_summary({"forgetting": 0.0}, [])
            raise RuntimeError
    return config


def test_better_strategy_ranks_first_with_mean_and_std(benchmark: TrackingConfig) -> None:
    table = fetch_leaderboard(benchmark.uri, benchmark.experiment)
    assert list(table["strategy"]) == ["replay", "naive"]
    assert list(table["rank"]) == [1, 2]
    assert list(table["n_seeds"]) == [2, 2]
    replay = table.iloc[0]
    assert replay["forgetting_mean"] == pytest.approx(0.15)
    assert replay["forgetting_std"] == pytest.approx(0.0707107, rel=1e-5)  # sample std of 0.1, 0.2
    assert replay["final_mse_mean"] == pytest.approx(1.5)
    naive = table.iloc[1]  # its superseded seed-0 run (0.0, 0.0) must not count
    assert naive["forgetting_mean"] == pytest.approx(0.6) and naive["final_mse_mean"] == pytest.approx(1.1)
    assert list(table.columns[3:7]) == [
        "forgetting_mean",
        "forgetting_std",
        "final_mse_mean",
        "final_mse_std",
    ]
    descending = fetch_leaderboard(benchmark.uri, benchmark.experiment, metric="final_mse", descending=True)
    assert list(descending["strategy"]) == ["replay", "naive"]
    by_mse = fetch_leaderboard(benchmark.uri, benchmark.experiment, metric="final_mse")
    assert list(by_mse["strategy"]) == ["naive", "replay"]


def test_run_leaderboard_writes_files_and_one_leaderboard_run(
    benchmark: TrackingConfig, tmp_path: Path
) -> None:
    for _ in range(2):
        text = run_leaderboard(benchmark, "unused", "forgetting", tmp_path)
    assert text.splitlines()[0].split() == ["rank", "strategy", "seeds", "forgetting", "final_mse"]
    assert text.splitlines()[1].split()[:5] == ["1", "replay", "2", "0.15", "±"]
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "| 1    | replay   | 2     | 0.15 ± 0.071" in markdown
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(csv["strategy"]) == ["replay", "naive"]
    tracker = MlflowTracker(benchmark.uri, benchmark.experiment)
    (board,) = tracker.client.search_runs([tracker.experiment_id], "tags.`gil.kind` = 'leaderboard'")
    assert board.info.run_name == "leaderboard"
    assert board.info.status == "FINISHED"
    artifacts = {item.path for item in tracker.client.list_artifacts(board.info.run_id)}
    assert artifacts == {"leaderboard.md", "leaderboard.csv", "leaderboard.html", "ranking.png"}
    assert board.data.tags["gil.leaderboard.metric"] == "forgetting"
    html = Path(tracker.client.download_artifacts(board.info.run_id, "leaderboard.html", str(tmp_path)))
    page = html.read_text(encoding="utf-8")
    assert page.startswith('<!DOCTYPE html><html><head><meta charset="utf-8"><title>Leaderboard</title>')
    assert page.index("<td>replay</td>") < page.index("<td>naive</td>") and "0.15 ± 0.071" in page
    # the table as displayed: its own header, no index column, no border attribute
    assert (
        '<table class="dataframe">\n  <thead>\n    <tr style="text-align: right;">\n      <th>rank</th>\n'
        in page
    )
    assert markdown.startswith(
        f"# Leaderboard: {benchmark.experiment}\n\nRanked by mean `forgetting` over seeds (lower is better), "
        "ties by `final_mse`; cells are mean ± sample std."
    )
    link = text.splitlines()[-1]
    experiment_id = tracker.experiment_id
    if benchmark.uri.startswith("sqlite"):
        assert link == (
            "In the MLflow UI (start it with `gil ui`): http://127.0.0.1:5000/#/experiments/"
            f"{experiment_id}/runs?viewStateShareKey=gil-leaderboard&workflowType=machine_learning"
        )
    view = json.loads(
        tracker.client.get_experiment(experiment_id).tags["mlflow.sharedViewState.gil-leaderboard"]
    )
    columns = ["metrics.`forgetting`", "metrics.`final_mse`"]
    assert view == {
        "searchFilter": "tags.`gil.kind` = 'parent' and tags.`gil.superseded` = 'false' "
        "and attributes.status = 'FINISHED'",
        "orderByKey": "metrics.`forgetting`",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": ["0", "attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns],
        "columnWidths": {"attributes.`Run Name`": 230, columns[0]: 190, columns[1]: 190},
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": "gil.strategy"}],
        },
        "groupsExpanded": {"tag.gil.strategy.naive": False, "tag.gil.strategy.replay": False},
    }
    descending = run_leaderboard(
        benchmark, "unused", "final_mse", tmp_path, tiebreak="final_mse", descending=True
    )
    view = json.loads(
        tracker.client.get_experiment(experiment_id).tags["mlflow.sharedViewState.gil-leaderboard"]
    )
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`final_mse`", False)
    assert view["selectedColumns"] == ["metrics.`final_mse`", "metrics.`forgetting`"]
    assert "(higher is better)" in (tmp_path / "leaderboard.md").read_text() and descending


def test_ui_links_open_training_pages() -> None:
    from gil.tracking.leaderboard import experiment_url, leaderboard_url

    assert leaderboard_url("http://h:1/", "7") == (
        "http://h:1/#/experiments/7/runs?viewStateShareKey=gil-leaderboard&workflowType=machine_learning"
    )
    assert experiment_url("http://h:1/", "7") == "http://h:1/#/experiments/7?workflowType=machine_learning"
    # only slashes are trimmed from the address
    assert experiment_url("http://h:1/BOX/", "7").startswith("http://h:1/BOX/#/experiments/7?")
    assert leaderboard_url("http://h:1/BOX/", "7").startswith("http://h:1/BOX/#/experiments/7/runs?")


def test_a_tuned_rows_name_is_made_metric_safe() -> None:
    from gil.tracking.leaderboard import metric_safe

    assert metric_safe("replay@tuned") == "replay:tuned" and metric_safe("replay") == "replay"


def test_the_ui_view_is_published_with_the_default_ranking_and_found_again(sqlite_uri: str) -> None:
    """What ``gil ui`` publishes when the experiment has no view yet: forgetting, lower first,
    ties by final MSE."""
    from gil.tracking.leaderboard import has_leaderboard_view, publish_leaderboard_view

    _record_deltas(sqlite_uri, "viewless", {"replay": {0: 0.1}})
    client = MlflowClient(tracking_uri=sqlite_uri)
    experiment_id = client.get_experiment_by_name("viewless").experiment_id
    assert not has_leaderboard_view(client, experiment_id)
    publish_leaderboard_view(client, experiment_id)
    assert has_leaderboard_view(client, experiment_id)
    view = json.loads(client.get_experiment(experiment_id).tags["mlflow.sharedViewState.gil-leaderboard"])
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`forgetting`", True)
    assert view["selectedColumns"][:3] == ["metrics.`forgetting`", "metrics.`final_mse`", "metrics.`delta`"]


def test_ties_are_broken_by_final_mse_ascending_and_a_missing_metric_ranks_last(sqlite_uri: str) -> None:
    tracker = MlflowTracker(sqlite_uri, "ties")
    record_run(tracker, "unscored", 0, {"final_mse": 0.5})  # no forgetting: last either way
    record_run(tracker, "a", 0, {"forgetting": 0.1, "final_mse": 2.0})
    record_run(tracker, "b", 0, {"forgetting": 0.1, "final_mse": 1.0})
    record_run(tracker, "c", 0, {"forgetting": 0.3, "final_mse": 3.0})
    table = fetch_leaderboard(sqlite_uri, "ties")
    assert list(table["strategy"]) == ["b", "a", "c", "unscored"]
    assert list(table["rank"]) == [1, 2, 3, 4]
    assert table["forgetting_std"].isna().all()  # one seed: no spread to report
    descending = fetch_leaderboard(sqlite_uri, "ties", descending=True)
    assert list(descending["strategy"]) == ["c", "b", "a", "unscored"]  # the tiebreak stays ascending


def test_clear_errors(sqlite_uri: str) -> None:
    with pytest.raises(GilError, match="experiment 'missing' not found"):
        fetch_leaderboard(sqlite_uri, "missing")
    tracker = MlflowTracker(sqlite_uri, "unfinished")
    tracker.begin_run("naive", 0, {}, {}, resume=False)
    tracker.end_run("FAILED")
    with pytest.raises(GilError, match="no finished"):
        fetch_leaderboard(sqlite_uri, "unfinished")
    record_run(tracker, "naive", 1, {"final_mse": 1.0})
    with pytest.raises(
        GilError, match="no run of 'unfinished' has metric 'forgetting'; available: final_mse"
    ):
        fetch_leaderboard(sqlite_uri, "unfinished")


def test_learning_note_names_strategies_that_barely_learned_their_new_genes() -> None:
    import pandas as pd

    from gil.tracking.leaderboard import learning_note

    table = pd.DataFrame(
        {
            "strategy": ["finetune", "distill_50", "replay", "ewc_big"],
            "skill_new_mean": [0.5, 0.05, 0.1, -0.2],
        }
    )
    assert learning_note(table) == (
        "Barely learned its new genes (skill_new < 0.1): distill_50, ewc_big; its forgetting says little.\n"
    )
    assert learning_note(table.drop(index=[1, 3])) == ""
    assert learning_note(table.drop(columns="skill_new_mean")) == ""


def test_table_text_in_the_terminal_and_in_markdown() -> None:
    from gil.tracking.leaderboard import format_table

    table = pd.DataFrame(
        {
            "rank": [1, 2],
            "strategy": ["replay", "finetune"],
            "n_seeds": [3, 1],
            "forgetting_mean": [0.123456, float("nan")],
            "forgetting_std": [0.0312, float("nan")],
            "final_mse_mean": [1.5, 2.0],
            "final_mse_std": [0.25, float("nan")],
        }
    )
    assert format_table(table) == (
        "rank  strategy  seeds  forgetting      final_mse\n"
        "1     replay    3      0.1235 ± 0.031  1.5 ± 0.25\n"
        "2     finetune  1      —               2\n"
    )
    assert format_table(table, markdown=True) == (
        "| rank | strategy | seeds | forgetting     | final_mse  |\n"
        "| ---- | -------- | ----- | -------------- | ---------- |\n"
        "| 1    | replay   | 3     | 0.1235 ± 0.031 | 1.5 ± 0.25 |\n"
        "| 2    | finetune | 1     | —              | 2          |\n"
    )


def test_an_unreachable_server_is_named_before_any_work(tmp_path: Path) -> None:
    from gil.tracking.server import free_port

    config = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", experiment="x")
    with pytest.raises(GilError, match="unreachable"):
        run_leaderboard(config, "x", "forgetting", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_page_of_runs_is_read(sqlite_uri: str) -> None:
    from gil.tracking.leaderboard import _CURRENT_PARENTS, _search_all

    class CountingClient(MlflowClient):
        """The real client; a page loop that never ends fails at once instead of filling memory."""

        pages = 0

        def search_runs(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            CountingClient.pages += 1
            assert CountingClient.pages <= 3, "5 runs in pages of 2 are 3 pages"
            return super().search_runs(*args, **kwargs)

    tracker = MlflowTracker(sqlite_uri, "pages")
    for seed in range(5):
        record_run(tracker, "a", seed, {"forgetting": 0.1 * seed})
    client = CountingClient(tracking_uri=sqlite_uri)
    runs = _search_all(client, tracker.experiment_id, _CURRENT_PARENTS, page_size=2)
    assert sorted(run.data.tags["gil.seed"] for run in runs) == ["0", "1", "2", "3", "4"]
    assert CountingClient.pages == 3


def test_rank_first_other_metrics_kept_and_an_absent_or_same_tiebreak_ignored(sqlite_uri: str) -> None:
    tracker = MlflowTracker(sqlite_uri, "columns")
    record_run(tracker, "a", 0, {"forgetting": 0.2, "probe_delta": -0.1, "final_mse": 1.0})
    record_run(tracker, "b", 0, {"forgetting": 0.1, "probe_delta": 0.0, "final_mse": 2.0})
    table = fetch_leaderboard(sqlite_uri, "columns", tiebreak="not_logged")
    assert list(table.columns) == [
        "rank",
        "strategy",
        "n_seeds",
        "forgetting_mean",
        "forgetting_std",
        "final_mse_mean",
        "final_mse_std",
        "probe_delta_mean",
        "probe_delta_std",
    ]
    assert list(table["strategy"]) == ["b", "a"]
    same = fetch_leaderboard(sqlite_uri, "columns", metric="final_mse", tiebreak="final_mse")
    assert list(same.columns[3:5]) == ["final_mse_mean", "final_mse_std"] and same.columns.is_unique


def test_a_deleted_experiment_and_a_missing_metric_are_named(sqlite_uri: str) -> None:
    tracker = MlflowTracker(sqlite_uri, "gone")
    record_run(tracker, "a", 0, {"final_mse": 1.0, "probe_delta": 0.0})
    with pytest.raises(GilError, match="available: final_mse, probe_delta$"):
        fetch_leaderboard(sqlite_uri, "gone")
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(
        GilError,
        match=rf"^MLflow experiment 'gone' not found at {sqlite_uri}; run the benchmark first or set "
        "tracking.experiment$",
    ):
        fetch_leaderboard(sqlite_uri, "gone")


def _record_deltas(uri: str, experiment: str, deltas: dict[str, dict[int, float]]) -> None:
    tracker = MlflowTracker(uri, experiment)
    for strategy, by_seed in deltas.items():
        for seed, value in by_seed.items():
            record_run(tracker, strategy, seed, {"delta": value, "final_mse": 1.0})


def test_delta_vs_finetune_is_paired_by_seed_with_a_t_interval(sqlite_uri: str, tmp_path: Path) -> None:
    finetune = {0: 0.30, 1: 0.50, 2: 0.40}
    # Recorded out of seed order; diffs −0.20, −0.30, −0.25: mean −0.25, sd 0.05, n 3.
    replay = {2: 0.15, 0: 0.10, 1: 0.20}
    _record_deltas(sqlite_uri, "paired", {"finetune": finetune, "replay": replay, "ewc": {1: 0.4}})
    table = fetch_leaderboard(sqlite_uri, "paired", metric="delta").set_index("strategy")
    half = 0.95 / (2 * 0.975 * 0.025) ** 0.5 * 0.05 / 3**0.5  # t(0.975, 2) · sd / √n (closed form)
    assert table.loc[
        "replay", ["delta_vs_finetune", "delta_vs_finetune_lo", "delta_vs_finetune_hi"]
    ].tolist() == (pytest.approx([-0.25, -0.25 - half, -0.25 + half]))
    assert table.loc["ewc", "delta_vs_finetune"] == pytest.approx(-0.1)  # one paired seed: no interval
    assert table.loc[["ewc", "finetune"], ["delta_vs_finetune_lo", "delta_vs_finetune_hi"]].isna().all().all()
    assert pd.isna(table.loc["finetune", "delta_vs_finetune"])

    # The same values on other seeds: same unpaired means, another paired interval.
    _record_deltas(sqlite_uri, "shuffled", {"finetune": finetune, "replay": {0: 0.15, 1: 0.10, 2: 0.20}})
    shuffled = fetch_leaderboard(sqlite_uri, "shuffled", metric="delta").set_index("strategy")
    assert shuffled.loc["replay", "delta_mean"] == pytest.approx(table.loc["replay", "delta_mean"])
    assert shuffled.loc["replay", "delta_vs_finetune"] == pytest.approx(-0.25)
    assert shuffled.loc["replay", "delta_vs_finetune_hi"] > 0 > table.loc["replay", "delta_vs_finetune_hi"]

    text = run_leaderboard(TrackingConfig(uri=sqlite_uri, experiment="paired"), "unused", "delta", tmp_path)
    assert text.splitlines()[0].split()[-1] == "delta_vs_finetune"
    lines = {line.split()[1]: line for line in text.splitlines()[1:4]}
    assert lines["replay"].endswith("−0.250 [−0.374, −0.126]")
    assert lines["ewc"].endswith("−0.100 [–, –]") and lines["finetune"].endswith("(reference)")
    assert "`delta_vs_finetune`: mean over seeds of" in (tmp_path / "leaderboard.md").read_text()
    csv = pd.read_csv(tmp_path / "leaderboard.csv").set_index("strategy")
    assert csv.loc["replay", "delta_vs_finetune_lo"] == pytest.approx(-0.25 - half)
    tracker = MlflowTracker(sqlite_uri, "paired")
    (board,) = tracker.client.search_runs([tracker.experiment_id], "tags.`gil.kind` = 'leaderboard'")
    (point,) = tracker.client.get_metric_history(board.info.run_id, "delta_vs_finetune/replay")
    assert point.step == 0  # one value per leaderboard run, at step 0 like the other summaries
    assert board.data.metrics == pytest.approx(
        {
            "delta_vs_finetune/replay": -0.25,
            "delta_vs_finetune_lo/replay": -0.25 - half,
            "delta_vs_finetune_hi/replay": -0.25 + half,
            "delta_vs_finetune/ewc": -0.1,
        }
    )
    # Every parent run carries its own seed's difference (the UI's grouped runs table shows them).
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`gil.kind` = 'parent'")
    logged = {(r.data.tags["gil.strategy"], r.data.tags["gil.seed"]): r.data.metrics for r in parents}
    assert logged["replay", "2"]["delta_vs_finetune"] == pytest.approx(0.15 - 0.40)
    assert logged["ewc", "1"]["delta_vs_finetune"] == pytest.approx(0.4 - 0.5)
    assert logged["finetune", "0"]["delta_vs_finetune"] == 0.0
    again = fetch_leaderboard(sqlite_uri, "paired", metric="delta").set_index("strategy")
    assert "delta_vs_finetune_mean" not in again.columns  # shown once, with its interval
    assert again.loc["replay", "delta_vs_finetune"] == pytest.approx(-0.25)


def test_no_paired_columns_without_a_finetune_run_with_delta(sqlite_uri: str) -> None:
    _record_deltas(sqlite_uri, "unpaired", {"replay": {0: 0.1, 1: 0.2}, "ewc": {0: 0.3, 1: 0.2}})
    table = fetch_leaderboard(sqlite_uri, "unpaired", metric="delta")
    assert not any(column.startswith("delta_vs_") for column in table.columns)


def test_the_suite_leaderboard_ranks_the_suites_strategies_only(sqlite_uri: str, tmp_path: Path) -> None:
    """A variant trained in a setting beside the suite's strategies (an ablation) changes no rank."""
    from gil.settings import SETTING_TAG
    from gil.tracking.leaderboard import fetch_suite_runs, run_suite_leaderboard

    runs = [("a", "finetune", 0.3), ("a", "replay", 0.1), ("a", "extra", 0.0), ("b", "finetune", 0.4)]
    runs += [("b", "replay", 0.5), ("b", "extra", 0.0)]
    with isolated_mlflow():
        tracker = MlflowTracker(sqlite_uri, "suite-only")
        for setting, strategy, delta in runs:
            tracker.begin_run(strategy, 0, {"lr": 0.001}, {SETTING_TAG: setting}, resume=False)
            tracker.log_summary({"delta": delta}, [])
            tracker.end_run()
        tracker.begin_run("finetune", 1, {"lr": 0.001}, {SETTING_TAG: "a"}, resume=False)
        tracker.log_summary({"delta": 99.0}, [])
        tracker.end_run("FAILED")  # never finished: not a result
    assert set(fetch_suite_runs(sqlite_uri, "suite-only")["strategy"]) == {"finetune", "replay", "extra"}
    assert 99.0 not in set(fetch_suite_runs(sqlite_uri, "suite-only")["delta"])
    suite = fetch_suite_runs(sqlite_uri, "suite-only", ["finetune", "replay"])
    assert sorted(zip(suite["setting"], suite["strategy"], strict=True)) == [
        ("a", "finetune"),
        ("a", "replay"),
        ("b", "finetune"),
        ("b", "replay"),
    ]
    config = TrackingConfig(uri=sqlite_uri, experiment="suite-only")
    markdown = run_suite_leaderboard(config, "suite-only", "delta", tmp_path, ["finetune", "replay"])
    board = pd.read_csv(tmp_path / "suite_leaderboard.csv")
    # Means over settings: finetune 0.35, replay 0.30 ("extra", 0.0, would have ranked first).
    assert board["strategy"].tolist() == ["replay", "finetune"]
    assert board["mean"].tolist() == pytest.approx([0.30, 0.35])
    # By hand: spreads are the sample std over the two settings (0.1, 0.5 -> 0.283; 0.3, 0.4 -> 0.071);
    # each strategy is first in one setting (mean rank 1.5), and opposite rankings give W = 0.
    assert markdown == (
        "# Suite leaderboard: suite-only\n\n"
        "`delta` per setting (mean ± std over seeds, lower is better); rows ranked by its mean over "
        "settings (avg; spread = sample std over settings), then by mean rank.\n\n"
        "| strategy | a | b | avg ± spread | mean rank |\n|---|---|---|---|---|\n"
        "| replay | 0.100 | 0.500 | 0.300 ± 0.283 | 1.50 |\n"
        "| finetune | 0.300 | 0.400 | 0.350 ± 0.071 | 1.50 |\n"
        "\nRank per setting:\n\n"
        "| strategy | a | b |\n|---|---|---|\n| replay | 1 | 2 |\n| finetune | 2 | 1 |\n"
        "\nKendall's W over settings: 0.00\n"
    )
    assert (tmp_path / "suite_leaderboard.md").read_text() == markdown
    client = MlflowTracker(sqlite_uri, "suite-only").client
    (board_run,) = client.search_runs(
        [client.get_experiment_by_name("suite-only").experiment_id], "tags.`gil.kind` = 'leaderboard'"
    )
    assert board_run.info.status == "FINISHED"
    assert board_run.data.tags["gil.leaderboard.metric"] == "delta"
    artifacts = {item.path for item in client.list_artifacts(board_run.info.run_id)}
    assert artifacts == {"suite_leaderboard.md", "suite_leaderboard.csv"}
    unknown = r"no suite run of 'suite-only' has metric 'forgetting'; available: delta$"
    with pytest.raises(GilError, match=unknown):
        run_suite_leaderboard(config, "suite-only", "forgetting", tmp_path, ["finetune", "replay"])
    ewc = (
        "MLflow experiment 'suite-only' has no finished suite runs of ewc, extra2 (tagged gil.setting) yet; "
    )
    with pytest.raises(GilError, match=re.escape(ewc + "run `dvc repro pipelines/suite/dvc.yaml` first")):
        fetch_suite_runs(sqlite_uri, "suite-only", ["ewc", "extra2"])
    MlflowClient(tracking_uri=sqlite_uri).create_experiment("suite-empty")
    empty = "MLflow experiment 'suite-empty' has no finished suite runs (tagged gil.setting) yet; run `dvc"
    with pytest.raises(GilError, match=re.escape(empty)):
        fetch_suite_runs(sqlite_uri, "suite-empty")
    with pytest.raises(GilError, match=re.escape(f"MLflow experiment 'nowhere' not found at {sqlite_uri};")):
        fetch_suite_runs(sqlite_uri, "nowhere")
