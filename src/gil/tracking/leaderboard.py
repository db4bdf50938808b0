"""Rank strategies across seeds from the runs recorded in MLflow.

Why from MLflow rather than from ``metrics/*.json``: the tracking server is the one place where
the runs of every process (DVC stages, sweep trials, other machines) meet. Only current results
count: parent runs (``gil.kind=parent``, not the nested stage runs) that are not superseded and
FINISHED (a failed or still running run has no complete summary).

Each strategy gets the mean and the sample standard deviation (ddof=1; empty with one seed) of
every summary metric over its seeds. Ranking is ascending by ``metric`` (lower is better for
losses and forgetting, the defaults) or descending for accuracy-like metrics; ties are broken
by ``tiebreak``, always ascending (a loss, ``final_mse`` by default). Strategies without the
metric rank last.

The same ranking is published to MLflow's UI as a saved view of the runs page
(:func:`publish_leaderboard_view`): MLflow 3 keeps a shared view as an experiment tag
``mlflow.sharedViewState.<key>`` holding the search facets (filter, sort) and the table state
(columns, group-by) that otherwise live in the browser's storage, and opens it from a URL
``#/experiments/<id>/runs?viewStateShareKey=<key>`` (:func:`leaderboard_url`). Grouped by the
``gil.strategy`` tag with the average, the UI orders the groups by the mean of the sort metric:
the leaderboard. The experiment's ``leaderboard`` run (``gil.kind=leaderboard``, outside that
filter) holds the table as HTML, Markdown and CSV, and the figures.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from gil.config import TrackingConfig
from gil.errors import GilError
from gil.figures import plot_ranking
from gil.files import atomic_file, write_text
from gil.metrics.paired import REFERENCE, format_interval
from gil.settings import SETTING_TAG
from gil.suite import kendall_w, paired_to_reference, rank_overall, rank_per_setting, rank_table, suite_table
from gil.tracking.mlflow_tracker import (
    KIND_PARENT,
    TAG_KIND,
    TAG_SEED,
    TAG_STRATEGY,
    TAG_SUPERSEDED,
)
from gil.tracking.server import check_reachable, is_http, resolve_tracking_uri, ui_address

KIND_LEADERBOARD = "leaderboard"
LEADERBOARD_VIEW = "gil-leaderboard"
_SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow UI's prefix of a saved runs-page view
# MLflow 3.17's UI picks GenAI or model-training pages from this URL parameter (else from the
# sidebar switch saved in the browser, GenAI by default), not from the experiment's kind tag.
_TRAINING_PAGES = "workflowType=machine_learning"
RANKING_PNG = "ranking.png"
PAIRED_COLUMN = f"delta_vs_{REFERENCE}"
"""Mean per-seed ``delta`` difference to the reference; ``_lo``/``_hi``: its 95 % t interval."""
PAIRED_COLUMNS = {PAIRED_COLUMN: "mean", f"{PAIRED_COLUMN}_lo": "low", f"{PAIRED_COLUMN}_hi": "high"}
_NAME_COLUMN = "attributes.`Run Name`"  # the runs table's column ids, as the UI names them
_CURRENT_PARENTS = (
    f"tags.`{TAG_KIND}` = '{KIND_PARENT}' and tags.`{TAG_SUPERSEDED}` = 'false' "
    "and attributes.status = 'FINISHED'"
)


def _search_all(client: MlflowClient, experiment_id: str, condition: str, page_size: int = 1000) -> list[Run]:
    """Every active run matching ``condition``, following MLflow's result pages."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs([experiment_id], condition, max_results=page_size, page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def _experiment_id(client: MlflowClient, uri: str, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        raise GilError(
            f"MLflow experiment {experiment!r} not found at {uri}; run the benchmark first or set "
            "tracking.experiment"
        )
    return found.experiment_id


def fetch_leaderboard(
    uri: str,
    experiment: str,
    metric: str = "forgetting",
    tiebreak: str = "final_mse",
    descending: bool = False,
) -> pd.DataFrame:
    """One row per strategy, ranked: ``rank``, ``strategy``, ``n_seeds``, ``<m>_mean``, ``<m>_std``.

    Metric columns come in the order ``metric``, ``tiebreak``, then the others alphabetically; with a
    ``finetune`` strategy that logged ``delta``, then :data:`PAIRED_COLUMNS` (:func:`add_paired_columns`).
    """
    client = MlflowClient(tracking_uri=uri)
    runs = _search_all(client, _experiment_id(client, uri, experiment), _CURRENT_PARENTS)
    if not runs:
        raise GilError(f"MLflow experiment {experiment!r} has no finished, current strategy runs yet")
    per_run = pd.DataFrame(
        [
            {"strategy": run.data.tags[TAG_STRATEGY], "seed": run.data.tags[TAG_SEED], **run.data.metrics}
            for run in runs
        ]
    )
    # The per-run paired difference is shown once, as the mean with its interval (add_paired_columns).
    metric_names = sorted(set(per_run.columns) - {"strategy", "seed", PAIRED_COLUMN})
    if metric not in metric_names:
        raise GilError(
            f"no run of {experiment!r} has metric {metric!r}; available: {', '.join(metric_names)}"
        )
    ranking = [metric, tiebreak] if tiebreak in metric_names and tiebreak != metric else [metric]
    grouped = per_run.groupby("strategy")
    table = pd.DataFrame({"n_seeds": grouped["seed"].nunique()})
    for name in ranking + [name for name in metric_names if name not in ranking]:
        table[f"{name}_mean"] = grouped[name].mean()
        table[f"{name}_std"] = grouped[name].std(ddof=1)
    add_paired_columns(table, per_run)
    table = table.sort_values(
        [f"{name}_mean" for name in ranking],
        ascending=[not descending, True][: len(ranking)],
        na_position="last",
    ).reset_index()
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def add_paired_columns(table: pd.DataFrame, per_run: pd.DataFrame) -> None:
    """Add :data:`PAIRED_COLUMNS` to ``table`` (indexed by strategy): each strategy's ``delta`` minus
    the reference's on the same seed (the ``gil.seed`` tag), averaged, with its 95 % t interval.

    Why paired: every strategy trains on the reference's seeds from the same base stage, so seed-wise
    differences remove what the seeds share. Nothing is added when there is no reference run with
    ``delta``; the reference's own row and strategies without a common seed stay empty (NaN).
    """
    if "delta" not in per_run.columns or not (per_run["strategy"] == REFERENCE).any():
        return
    paired = paired_to_reference(per_run, "delta")
    for column, field in PAIRED_COLUMNS.items():
        table[column] = [getattr(paired[s], field) if s in paired else math.nan for s in table.index]


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def _paired_cell(row: pd.Series) -> str:
    if row["strategy"] == REFERENCE:
        return "(reference)"
    if math.isnan(row[PAIRED_COLUMN]):
        return "—"
    return format_interval(*(row[column] for column in PAIRED_COLUMNS))


def _display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows with ``mean ± std`` cells (and the paired difference to the reference with its
    interval, when the table has it), shared by the terminal, Markdown and HTML tables."""
    metrics = [column.removesuffix("_mean") for column in table.columns if column.endswith("_mean")]
    paired = [PAIRED_COLUMN] if PAIRED_COLUMN in table.columns else []
    header = ["rank", "strategy", "seeds", *metrics, *paired]
    rows = [
        [str(row["rank"]), str(row["strategy"]), str(row["n_seeds"])]
        + [_cell(row[f"{name}_mean"], row[f"{name}_std"]) for name in metrics]
        + [_paired_cell(row) for _ in paired]
        for _, row in table.iterrows()
    ]
    return header, rows


def format_table(table: pd.DataFrame, markdown: bool = False) -> str:
    """The leaderboard as aligned plain text (terminal) or as a Markdown table."""
    header, rows = _display_rows(table)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        [cell.ljust(width) for cell, width in zip(line, widths, strict=True)] for line in [header, *rows]
    ]
    if markdown:
        lines.insert(1, ["-" * width for width in widths])
        return "\n".join(f"| {' | '.join(line)} |" for line in lines) + "\n"
    return "\n".join("  ".join(line).rstrip() for line in lines) + "\n"


LEARNED_SKILL = 0.1
"""``skill_new`` below this: the new gene sets were barely learned beyond the per-gene means."""


def learning_note(table: pd.DataFrame) -> str:
    """A line naming strategies whose low forgetting may only mean they learned little.

    Forgetting is measured on gene sets the model learned; ``skill_new`` (1 − MSE / per-gene-mean
    MSE on each new set right after its stage) says whether it did. Empty when every strategy
    learned, or when the runs carry no ``skill_new``.
    """
    if "skill_new_mean" not in table.columns:
        return ""
    weak = table.loc[table["skill_new_mean"] < LEARNED_SKILL, "strategy"].tolist()
    if not weak:
        return ""
    return (
        f"Barely learned its new genes (skill_new < {LEARNED_SKILL}): {', '.join(map(str, weak))}; "
        "its forgetting says little.\n"
    )


def leaderboard_view_state(
    metric: str, descending: bool, metric_names: list[str], strategies: list[str]
) -> dict[str, Any]:
    """The runs-page state of the leaderboard, in the format of the MLflow UI's shared views:
    current parent runs, sorted by ``metric``, summary metrics as columns, grouped by strategy
    with the average (group rows show the means, groups ordered by the mean of ``metric``), the
    groups of ``strategies`` collapsed to one row each (a click shows the seeds)."""
    columns = [f"metrics.`{name}`" for name in metric_names]
    return {
        "searchFilter": _CURRENT_PARENTS,
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": not descending,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        # The table's own columns first (checkbox, name, created, duration), then the metrics in
        # ranking order rather than the UI's alphabetical one.
        "columnOrder": ["0", _NAME_COLUMN, "runDateAndNestInfo", "duration", *columns],
        # Wide enough for "Group: replay_distill" and a mean with its "(average)" label.
        "columnWidths": {_NAME_COLUMN: 230, **{column: 190 for column in columns}},
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": TAG_STRATEGY}],
        },
        "groupsExpanded": {f"tag.{TAG_STRATEGY}.{name}": False for name in strategies},
    }


def publish_leaderboard_view(
    client: MlflowClient,
    experiment_id: str,
    metric: str = "forgetting",
    descending: bool = False,
    tiebreak: str = "final_mse",
) -> None:
    """Save the leaderboard view on the experiment (re-published by every ``gil leaderboard``).

    Columns: every summary metric of the current parent runs, ``metric`` and ``tiebreak`` first.
    """
    runs = _search_all(client, experiment_id, _CURRENT_PARENTS)
    names = sorted({name for run in runs for name in run.data.metrics} - {metric, tiebreak})
    strategies = sorted({run.data.tags[TAG_STRATEGY] for run in runs})
    ranking = [metric, tiebreak] if tiebreak != metric else [metric]
    state = leaderboard_view_state(metric, descending, [*ranking, *names], strategies)
    client.set_experiment_tag(experiment_id, _SHARED_VIEW_TAG + LEADERBOARD_VIEW, json.dumps(state))


def has_leaderboard_view(client: MlflowClient, experiment_id: str) -> bool:
    """Whether the experiment already holds the leaderboard view (``gil ui`` keeps its metric)."""
    return _SHARED_VIEW_TAG + LEADERBOARD_VIEW in client.get_experiment(experiment_id).tags


def leaderboard_url(ui_url: str, experiment_id: str) -> str:
    """The MLflow UI link that opens the experiment's runs page as the leaderboard."""
    return (
        f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?viewStateShareKey={LEADERBOARD_VIEW}&{_TRAINING_PAGES}"
    )


def experiment_url(ui_url: str, experiment_id: str) -> str:
    """The MLflow UI link of the experiment, opening on the training runs rather than GenAI pages."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}?{_TRAINING_PAGES}"


def _leaderboard_run_id(client: MlflowClient, experiment_id: str) -> str:
    """The experiment's one leaderboard run, created on first use (re-runs update it in place)."""
    existing = _search_all(client, experiment_id, f"tags.`{TAG_KIND}` = '{KIND_LEADERBOARD}'")
    if existing:
        return existing[0].info.run_id
    return client.create_run(
        experiment_id, run_name="leaderboard", tags={TAG_KIND: KIND_LEADERBOARD}
    ).info.run_id


def _log_leaderboard(
    client: MlflowClient, run_id: str, table: pd.DataFrame, metric: str, files: list[Path]
) -> None:
    """Log the table as HTML (the UI's artifact viewer shows it as a table), the ranking figure,
    and ``files`` (Markdown, CSV, the report's forgetting curves) on the leaderboard run.

    Not ``log_table``: it appends to an existing table, and every run of the leaderboard
    replaces the previous one.
    """
    header, rows = _display_rows(table)
    display = pd.DataFrame(rows, columns=header)
    with tempfile.TemporaryDirectory() as scratch:
        html_path, ranking_path = Path(scratch) / "leaderboard.html", Path(scratch) / RANKING_PNG
        # A whole document with its charset: the UI shows it in an iframe, where "±" needs it.
        html_path.write_text(
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Leaderboard</title></head>'
            f"<body>{display.to_html(index=False, border=0)}</body></html>\n",
            encoding="utf-8",
        )
        plot_ranking(
            table["strategy"].tolist(),
            table[f"{metric}_mean"].tolist(),
            table[f"{metric}_std"].tolist(),
            metric,
            ranking_path,
        )
        for path in (html_path, ranking_path, *files):
            client.log_artifact(run_id, str(path))


def metric_safe(name: str) -> str:
    """``name`` as MLflow accepts in a metric name: a tuned row ``replay@tuned`` becomes ``replay:tuned``."""
    return name.replace("@", ":")


def _log_paired(client: MlflowClient, run_id: str, table: pd.DataFrame) -> None:
    """Log :data:`PAIRED_COLUMNS` on the leaderboard run as ``<column>/<strategy>`` metrics (one per
    strategy compared with the reference; undefined values, e.g. one seed's bounds, left out)."""
    if PAIRED_COLUMN not in table.columns:
        return
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{column}/{metric_safe(row['strategy'])}", float(row[column]), now, 0)
        for _, row in table.iterrows()
        for column in PAIRED_COLUMNS
        if not math.isnan(row[column])
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def log_paired_on_runs(client: MlflowClient, experiment_id: str) -> None:
    """Log ``delta_vs_finetune`` on every current parent run: its ``delta`` minus the reference's
    ``delta`` of the same seed.

    Why on the runs: the UI leaderboard is the runs table grouped by strategy (group rows show the
    average), so the column shows each seed's paired difference and, on the group row, their mean.
    Runs without ``delta`` or without a reference run of their seed get nothing.
    """
    runs = _search_all(client, experiment_id, _CURRENT_PARENTS)
    reference = {
        run.data.tags[TAG_SEED]: run.data.metrics["delta"]
        for run in runs
        if run.data.tags[TAG_STRATEGY] == REFERENCE and "delta" in run.data.metrics
    }
    now = int(time.time() * 1000)
    for run in runs:
        seed = run.data.tags[TAG_SEED]
        if seed in reference and "delta" in run.data.metrics:
            value = run.data.metrics["delta"] - reference[seed]
            client.log_batch(run.info.run_id, metrics=[Metric(PAIRED_COLUMN, value, now, 0)])


def run_leaderboard(
    config: TrackingConfig,
    experiment_default: str,
    metric: str,
    out_dir: Path,
    tiebreak: str = "final_mse",
    descending: bool = False,
    figures: list[Path] | None = None,
) -> str:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` to ``out_dir``, log them (and the table,
    the ranking figure and ``figures`` that exist) on the experiment's ``leaderboard`` run, publish
    the leaderboard view, and return the table as terminal text with the view's UI link."""
    uri = resolve_tracking_uri(config)
    check_reachable(uri)
    experiment = config.experiment or experiment_default
    table = fetch_leaderboard(uri, experiment, metric, tiebreak, descending)
    direction = "higher" if descending else "lower"
    markdown = (
        f"# Leaderboard: {experiment}\n\n"
        f"Ranked by mean `{metric}` over seeds ({direction} is better), ties by `{tiebreak}`; "
        "cells are mean ± sample std. `skill_new`: 1 − MSE / per-gene-mean MSE on each new gene set "
        "right after its stage (was it learned?); `optimizer_steps`: the incremental stages' compute.\n\n"
        + format_table(table, markdown=True)
    )
    if PAIRED_COLUMN in table.columns:
        markdown += (
            f"\n`{PAIRED_COLUMN}`: mean over seeds of (`delta` − `delta` of {REFERENCE}) on the same seed "
            "[95 % t interval, n − 1 degrees of freedom]; resolved when the interval excludes 0.\n"
        )
    note = learning_note(table)
    if note:
        markdown += "\n" + note
    markdown_path, csv_path = out_dir / "leaderboard.md", out_dir / "leaderboard.csv"
    write_text(markdown_path, markdown)
    with atomic_file(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, uri, experiment)
    log_paired_on_runs(client, experiment_id)
    run_id = _leaderboard_run_id(client, experiment_id)
    existing = [path for path in figures or [] if path.is_file()]
    _log_leaderboard(client, run_id, table, metric, [markdown_path, csv_path, *existing])
    _log_paired(client, run_id, table)
    client.set_tag(run_id, "gil.leaderboard.metric", metric)
    client.set_terminated(run_id, "FINISHED")
    publish_leaderboard_view(client, experiment_id, metric, descending, tiebreak)
    link = leaderboard_url(ui_address(uri), experiment_id)
    where = "" if is_http(uri) else " (start it with `gil ui`)"
    return f"{format_table(table)}\nIn the MLflow UI{where}: {link}\n"


# ----------------------------------------------------------------------------------------------------
# The suite: strategies ranked per setting and over settings (gil.suite)


def fetch_suite_runs(uri: str, experiment: str, strategies: Collection[str] | None = None) -> pd.DataFrame:
    """One row per current parent run of the suite: ``setting``, ``strategy``, ``seed``, its metrics.

    Only runs of ``strategies`` (all when None): the suite ranks its own strategies, and a variant
    trained in a setting beside them (an ablation) must not change their ranks or Kendall's W."""
    client = MlflowClient(tracking_uri=uri)
    runs = _search_all(client, _experiment_id(client, uri, experiment), _CURRENT_PARENTS)
    rows = [
        {
            "setting": run.data.tags[SETTING_TAG],
            "strategy": run.data.tags[TAG_STRATEGY],
            "seed": run.data.tags[TAG_SEED],
            **run.data.metrics,
        }
        for run in runs
        if SETTING_TAG in run.data.tags and (strategies is None or run.data.tags[TAG_STRATEGY] in strategies)
    ]
    if not rows:
        of = "" if strategies is None else f" of {', '.join(strategies)}"
        raise GilError(
            f"MLflow experiment {experiment!r} has no finished suite runs{of} (tagged {SETTING_TAG}) yet; "
            "run `dvc repro pipelines/suite/dvc.yaml` first"
        )
    return pd.DataFrame(rows)


def run_suite_leaderboard(
    config: TrackingConfig,
    experiment: str,
    metric: str,
    out_dir: Path,
    strategies: Collection[str] | None = None,
) -> str:
    """Rank the suite's ``strategies`` (all when None) by ``metric`` per setting and overall from
    MLflow; write ``suite_leaderboard.md`` and ``suite_leaderboard.csv`` (the overall ranking) to
    ``out_dir``, log them on the suite experiment's ``leaderboard`` run; return the Markdown."""
    uri = resolve_tracking_uri(config)
    check_reachable(uri)
    per_seed = fetch_suite_runs(uri, experiment, strategies)
    if metric not in per_seed.columns:
        available = ", ".join(sorted(set(per_seed.columns) - {"setting", "strategy", "seed"}))
        raise GilError(f"no suite run of {experiment!r} has metric {metric!r}; available: {available}")
    per_setting = rank_per_setting(per_seed, metric)
    overall = rank_overall(per_setting)
    settings = sorted(per_seed["setting"].unique())
    order = overall["strategy"].tolist()
    markdown = (
        f"# Suite leaderboard: {experiment}\n\n"
        f"`{metric}` per setting (mean ± std over seeds, lower is better); rows ranked by its mean over "
        "settings (avg; spread = sample std over settings), then by mean rank.\n\n"
        + suite_table(per_setting, settings, order)
        + "\nRank per setting:\n\n"
        + rank_table(per_setting, settings, order)
        + f"\nKendall's W over settings: {kendall_w(per_setting):.2f}\n"
    )
    markdown_path, csv_path = out_dir / "suite_leaderboard.md", out_dir / "suite_leaderboard.csv"
    write_text(markdown_path, markdown)
    with atomic_file(csv_path) as tmp:
        overall.to_csv(tmp, index=False, float_format="%.10g")
    client = MlflowClient(tracking_uri=uri)
    run_id = _leaderboard_run_id(client, _experiment_id(client, uri, experiment))
    for path in (markdown_path, csv_path):
        client.log_artifact(run_id, str(path))
    client.set_tag(run_id, "gil.leaderboard.metric", metric)
    client.set_terminated(run_id, "FINISHED")
    return markdown
