"""Comparing strategies across the settings of a suite: per-setting and overall rankings, the table.

Why a separate summary: one split decides a benchmark's ranking; the paper ranks methods by Δ
averaged over several settings (its "avg" column). Here every setting ranks its strategies by the
mean over seeds of a metric (Δ by default; rank 1 = least forgetting; ties share the average rank),
and the overall ranking orders strategies by the mean over settings of those setting means, with
their spread (sample std over settings) and mean rank next to it. Kendall's W (coefficient of
concordance) says how stable the ranking is: 1 = every setting ranks the strategies the same way,
0 = no agreement.

The same functions rank the metrics files (``gil report --suite``) and the MLflow runs
(``gil leaderboard --suite``): both build a table of one row per (setting, strategy, seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gil.errors import GilError
from gil.figures import new_figure, save_png, strategy_colors
from gil.files import write_json, write_text
from gil.metrics.paired import REFERENCE, PairedDifference, differences_to_reference, format_difference
from gil.metrics_files import format_stat, load_metrics, report_order
from gil.settings import setting_dir

SUITE_METRICS = ("delta", "forgetting", "final_mse", "skill_new", "probe_delta")
"""Per-seed values gathered from each setting's metrics files (lower is better but for skill)."""

SUITE_FIGURE = "suite_forgetting.png"


def per_seed_rows(setting: str, metrics_by_strategy: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (strategy, seed) of one setting, with :data:`SUITE_METRICS` (None when absent)."""
    rows = []
    for strategy, metrics in metrics_by_strategy.items():
        for seed, summary in (metrics.get("per_seed") or {}).items():
            regression, probe = summary.get("regression", {}), summary.get("probe", {})
            values = {name: regression.get(name) for name in SUITE_METRICS if name != "probe_delta"}
            rows.append(
                {
                    "setting": setting,
                    "strategy": strategy,
                    "seed": str(seed),
                    **values,
                    "probe_delta": probe.get("delta"),
                }
            )
    return rows


def _as_float(table: pd.DataFrame, metric: str) -> pd.Series:
    return pd.to_numeric(table[metric], errors="coerce").astype(float)


def rank_per_setting(per_seed: pd.DataFrame, metric: str = "delta", ascending: bool = True) -> pd.DataFrame:
    """Per setting and strategy: ``n_seeds``, ``mean``, ``std`` (sample, over seeds) and ``rank``.

    Rank 1 has the lowest mean within its setting (the highest with ``ascending`` false: skill,
    accuracy); equal means share the average of their ranks; a strategy without a value in a setting
    gets no rank there.
    """
    values = per_seed.assign(value=_as_float(per_seed, metric))
    grouped = values.groupby(["setting", "strategy"], sort=False)["value"]
    table = pd.DataFrame(
        {"n_seeds": grouped.count(), "mean": grouped.mean(), "std": grouped.std(ddof=1)}
    ).reset_index()
    table["rank"] = table.groupby("setting", sort=False)["mean"].rank(method="average", ascending=ascending)
    return table


def rank_overall(per_setting: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: ``mean`` over settings of the setting means (the paper's avg), ``spread`` (sample
    std over settings), ``mean_rank``, ``n_settings``; ordered by ``mean`` then ``mean_rank``, with
    ``rank`` 1..k in that order."""
    grouped = per_setting.groupby("strategy", sort=False)
    table = pd.DataFrame(
        {
            "n_settings": grouped["mean"].count(),
            "mean": grouped["mean"].mean(),
            "spread": grouped["mean"].std(ddof=1),
            "mean_rank": grouped["rank"].mean(),
        }
    ).reset_index()
    table = table.sort_values(["mean", "mean_rank", "strategy"], na_position="last").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def kendall_w(per_setting: pd.DataFrame) -> float:
    """Kendall's coefficient of concordance of the settings' rankings (no tie correction).

    ``W = 12 S / (m² (n³ − n))`` with ``m`` settings, ``n`` strategies ranked in every setting and ``S``
    the sum of squared deviations of the strategies' rank sums from their mean. NaN with fewer than two
    settings or strategies.
    """
    ranks = per_setting.pivot(index="strategy", columns="setting", values="rank").dropna()
    n, m = ranks.shape
    if n < 2 or m < 2:
        return math.nan
    sums = ranks.sum(axis=1).to_numpy()
    spread = float(((sums - sums.mean()) ** 2).sum())
    return 12.0 * spread / (m**2 * (n**3 - n))


def paired_to_reference(
    per_seed: pd.DataFrame, metric: str = "delta", reference: str = REFERENCE
) -> dict[str, PairedDifference]:
    """Rows ``strategy, seed, <metric>`` of one setting (or one experiment): every strategy's mean
    difference to ``reference`` seed by seed, with its 95 % t interval (:mod:`gil.metrics.paired`)."""
    values = {
        str(strategy): dict(zip(group["seed"].astype(str), group[metric], strict=True))
        for strategy, group in per_seed.groupby("strategy", sort=False)
    }
    return differences_to_reference(values, reference)


def paired_per_setting(
    per_seed: pd.DataFrame, metric: str = "delta"
) -> dict[tuple[str, str], PairedDifference]:
    """:func:`paired_to_reference` in every setting, keyed by ``(setting, strategy)``."""
    return {
        (str(setting), strategy): difference
        for setting, rows in per_seed.groupby("setting", sort=False)
        for strategy, difference in paired_to_reference(rows, metric).items()
    }


def paired_table(
    paired: Mapping[tuple[str, str], PairedDifference], settings: Sequence[str], order: Sequence[str]
) -> str:
    """Strategies (but the reference) as rows, settings as columns, each cell the paired Δ difference
    ``+0.012 [−0.004, +0.028]``; the last column counts the settings where it is resolved."""
    header = ["strategy", *settings, "resolved (interval excludes 0)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy in order:
        if strategy == REFERENCE:
            continue
        found = [paired.get((setting, strategy)) for setting in settings]
        directions = [difference.direction for difference in found if difference is not None]
        lower, higher = directions.count("lower"), directions.count("higher")
        cells = [*map(format_difference, found), f"lower in {lower}, higher in {higher} of {len(settings)}"]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# The report from metrics files


def load_suite(settings: Sequence[str], strategies: Sequence[str], root: Path) -> dict[str, dict[str, Any]]:
    """Every setting's metrics files (``<root>/<setting>/metrics/<strategy>.json``), by setting."""
    if not settings:
        raise GilError("params have no 'settings'; add the suite's settings (see README, suite section)")
    return {
        setting: load_metrics(
            [setting_dir(setting, root) / "metrics" / f"{strategy}.json" for strategy in strategies]
        )
        for setting in settings
    }


def _cell(mean: float, std: float) -> str:
    """``mean ± std`` as the benchmark report writes it (NaN, e.g. one seed's std, left out)."""
    return format_stat(*(None if math.isnan(value) else float(value) for value in (mean, std)))


def suite_table(per_setting: pd.DataFrame, settings: Sequence[str], order: Sequence[str]) -> str:
    """The paper-style Markdown table: strategies as rows (in ``order``), settings as columns
    (mean ± std over seeds), then the mean over settings ± its spread and the mean rank."""
    cells = {(row.setting, row.strategy): _cell(row.mean, row.std) for row in per_setting.itertuples()}
    overall = rank_overall(per_setting).set_index("strategy")
    header = ["strategy", *settings, "avg ± spread", "mean rank"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy in order:
        values = [cells.get((setting, strategy), "–") for setting in settings]
        summary = overall.loc[strategy]
        values += [_cell(summary["mean"], summary["spread"]), f"{summary['mean_rank']:.2f}"]
        lines.append(f"| {strategy} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def rank_table(per_setting: pd.DataFrame, settings: Sequence[str], order: Sequence[str]) -> str:
    """Each setting's rank of every strategy (1 = least forgetting)."""
    ranks = {(row.setting, row.strategy): row.rank for row in per_setting.itertuples()}
    header = ["strategy", *settings]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy in order:
        values = [ranks.get((setting, strategy), math.nan) for setting in settings]
        lines.append(
            f"| {strategy} | " + " | ".join("–" if math.isnan(v) else f"{v:g}" for v in values) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_suite(
    per_setting: pd.DataFrame, strategies: Sequence[str], settings: Sequence[str], path: Path
) -> None:
    """Grouped bars: Δ (mean ± std over seeds) per setting, one bar per strategy."""
    figure, (axes,) = new_figure(1, (1.6 * len(settings) + 2.5, 3.6), legend_width=2.0)
    colors = strategy_colors(strategies)
    width = 0.8 / max(len(strategies), 1)
    indexed = per_setting.set_index(["setting", "strategy"])
    for k, strategy in enumerate(strategies):
        means = [indexed["mean"].get((s, strategy), math.nan) for s in settings]
        stds = [indexed["std"].get((s, strategy), math.nan) for s in settings]
        positions = np.arange(len(settings)) + (k - (len(strategies) - 1) / 2) * width
        errors = [0.0 if math.isnan(v) else v for v in stds]
        axes.bar(positions, means, width, yerr=errors, capsize=2, color=colors[strategy], label=strategy)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(np.arange(len(settings)), list(settings))
    axes.set_ylabel("Δ (mean ± std over seeds)")
    axes.set_title("Forgetting per setting (larger = more forgetting)")
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, title="strategy", fontsize=8, loc="outside right upper")
    save_png(figure, path)


def _setting_lines(settings: Mapping[str, str], suite: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per setting: its description, gene sets and seeds."""
    lines = []
    for name, desc in settings.items():
        first = next(iter(suite[name].values()))
        sets = ", ".join(first["gene_sets"])
        seeds = len(first.get("per_seed") or {})
        lines.append(f"- **{name}**: {desc or '(no description)'}; gene sets {sets}; {seeds} seeds")
    return lines


def _per_set_lines(suite: Mapping[str, Mapping[str, Any]], strategies: Sequence[str]) -> list[str]:
    """Δ of every earlier gene set in the settings with more than two stages (mean over seeds)."""
    lines = []
    for setting, metrics_by_strategy in suite.items():
        for strategy in strategies:
            regression = metrics_by_strategy[strategy]["regression"]
            per_set = regression.get("delta_per_set") or []
            if len(per_set) > 1:
                values = ", ".join(f"T{j} {v:.3f}" for j, v in enumerate(per_set, 1) if v is not None)
                lines.append(f"- {setting}, {strategy}: {values}")
    return lines


def _paired_lines(
    paired: Mapping[tuple[str, str], PairedDifference],
    settings: Sequence[str],
    order: Sequence[str],
    strategies: Sequence[str],
) -> list[str]:
    """The paired section's body, or one line when the suite has no reference run to pair with."""
    if REFERENCE not in strategies:
        return [f"No `{REFERENCE}` run among the suite's strategies: nothing to pair the others with.", ""]
    return [
        f"Each cell: mean over seeds of (Δ of the strategy − Δ of {REFERENCE}) on the same seed [95 % t"
        " interval, n − 1 degrees of freedom]; negative = less forgetting than"
        f" {REFERENCE}. Resolved = the interval excludes 0.",
        "",
        paired_table(paired, settings, order),
    ]


def suite_markdown(
    settings: Mapping[str, str],
    suite: Mapping[str, Mapping[str, Any]],
    per_seed: pd.DataFrame,
    strategies: Sequence[str],
    figure_link: str,
) -> tuple[str, dict[str, Any]]:
    """The suite report and its machine-readable summary (rankings by Δ, Kendall's W)."""
    names = list(settings)
    per_setting = rank_per_setting(per_seed, "delta")
    overall = rank_overall(per_setting)
    concordance = kendall_w(per_setting)
    order = overall["strategy"].tolist()
    skill = rank_per_setting(per_seed, "skill_new", ascending=False)
    probe = rank_per_setting(per_seed, "probe_delta", ascending=False)
    paired = paired_per_setting(per_seed, "delta")
    lines = [
        "# Strategies across settings",
        "",
        "## Settings",
        "",
        *_setting_lines(settings, suite),
        "",
        "## Forgetting Δ per setting (mean ± std over seeds; lower = less forgetting)",
        "",
        "Rows in overall order: by the mean over settings of each setting's mean Δ (the paper's avg"
        " column); spread = sample std of the setting means over settings.",
        "",
        suite_table(per_setting, names, order),
        "## Rank per setting (1 = least forgetting)",
        "",
        rank_table(per_setting, names, order),
        f"Kendall's W over settings: {concordance:.2f} (1 = the same ranking in every setting, 0 = none).",
        "",
        f"## Paired Δ difference to {REFERENCE} per setting (95 % t interval over seeds)",
        "",
        *_paired_lines(paired, names, order, strategies),
        "## Was each new gene set learned? (skill_new: 1 − MSE / per-gene-mean MSE; higher = better, rank 1"
        " = highest)",
        "",
        suite_table(skill, names, order),
        "## Probe Δ per setting (accuracy after the last stage − when learned; negative = forgetting, rank 1"
        " = highest)",
        "",
        suite_table(probe, names, order),
    ]
    per_set = _per_set_lines(suite, strategies)
    if per_set:
        lines += ["## Δ per earlier gene set (settings with more than two stages)", "", *per_set, ""]
    lines += ["## Figure", "", f"![Forgetting per setting]({figure_link})", ""]
    summary = {
        "metric": "delta",
        "settings": names,
        "kendall_w": concordance if math.isfinite(concordance) else None,
        "overall": _records(overall),
        "per_setting": _records(per_setting),
        "paired_reference": REFERENCE,
        "paired_delta": [
            {"setting": setting, "strategy": strategy, **difference.as_dict()}
            for (setting, strategy), difference in paired.items()
        ],
    }
    return "\n".join(lines), summary


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with NaN as None (JSON has no NaN)."""
    return [
        {
            key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in row.items()
        }
        for row in table.to_dict(orient="records")
    ]


def run_suite_report(
    settings: Mapping[str, str], strategies: Sequence[str], root: Path, out_md: Path
) -> dict[str, Any]:
    """Write ``out_md``, its JSON summary (same name, ``.json``) and the figure beside it; return the
    summary."""
    suite = load_suite(list(settings), strategies, root)
    ordered = report_order(next(iter(suite.values())))
    per_seed = pd.DataFrame([row for name in settings for row in per_seed_rows(name, suite[name])])
    figure = out_md.parent / SUITE_FIGURE
    markdown, summary = suite_markdown(settings, suite, per_seed, ordered, SUITE_FIGURE)
    plot_suite(rank_per_setting(per_seed, "delta"), ordered, list(settings), figure)
    write_text(out_md, markdown)
    write_json(out_md.with_suffix(".json"), summary)
    return summary
