"""The benchmark's figures: results-matrix heatmaps, forgetting curves, probe accuracy, rankings.

Figures are drawn on explicit Agg canvases (no pyplot, no global backend switch), so reporting works
headless and leaves an interactive session's backend alone; matplotlib is imported only when drawing.
PNGs are written atomically and without a version stamp, so identical inputs give identical bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gil.files import atomic_file
from gil.metrics_files import (
    Metrics,
    check_metrics,
    checked_names,
    format_stat,
    gene_mean_mse_of,
    matrix_of,
    number_or_none,
    probe_reference_of,
    probe_tasks,
    stage_labels,
    vector_of,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORGETTING_CURVES_PNG = "forgetting_curves.png"
PROBE_ACCURACY_PNG = "probe_accuracy.png"


def new_figure(
    n_panels: int, panel_size: tuple[float, float], legend_width: float = 0.0
) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` side-by-side axes on its own Agg canvas (plus room for a legend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(panel_size[0] * n_panels + legend_width, panel_size[1]), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(1, n_panels, squeeze=False)[0])


def save_png(figure: Figure, path: Path | str) -> None:
    """Write ``figure`` as a PNG atomically, without the matplotlib version stamp."""
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, metadata={"Software": None})


def _outside_legend(figure: Figure, axes: Axes) -> None:
    """One legend for the figure, right of the panels, so it never hides a line."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, title="strategy", fontsize=8, loc="outside right upper")


def strategy_colors(names: Sequence[str]) -> dict[str, str]:
    """One fixed colour per strategy, so a strategy looks the same in every panel."""
    return {name: f"C{index % 10}" for index, name in enumerate(names)}


def plot_results_matrix(metrics: Metrics, path: Path | str) -> None:
    """Heatmap of the results matrix ``R`` (rows: after stage; columns: gene set), annotated with
    ``mean ± std`` over seeds; cells of gene sets not learned yet are blank."""
    check_metrics(metrics, "metrics given to plot_results_matrix")
    import matplotlib

    values = matrix_of(metrics)
    stds = matrix_of(metrics, "matrix_std")
    gene_sets = metrics["gene_sets"]
    row_labels = stage_labels(len(gene_sets))
    baseline = gene_mean_mse_of(metrics)
    if baseline is not None:  # the per-gene-mean predictor as a last row, to read R against
        values = np.vstack([values, baseline])
        stds = None if stds is None else np.vstack([stds, np.full(len(gene_sets), np.nan)])
        row_labels = [*row_labels, "gene-mean\npredictor"]
    figure, (axes,) = new_figure(1, (1.3 * len(gene_sets) + 2.5, 1.0 * len(row_labels) + 1.5))
    colormap = matplotlib.colormaps["viridis_r"].with_extremes(bad="white")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colormap)
    figure.colorbar(image, ax=axes, label="masked-value MSE (lower is better)")
    for (row, col), value in np.ndenumerate(values):
        if np.isnan(value):
            continue
        std = None if stds is None else number_or_none(stds[row, col])
        text_color = "white" if image.norm(value) > 0.5 else "black"
        label = format_stat(value) if std is None else f"{value:.3f}\n± {std:.3f}"
        axes.text(col, row, label, ha="center", va="center", color=text_color, fontsize=8)
    axes.set_xticks(range(len(gene_sets)), gene_sets)
    axes.set_yticks(range(len(row_labels)), row_labels)
    if baseline is not None:
        axes.axhline(len(gene_sets) - 0.5, color="black", linewidth=2)
    axes.set_xlabel("gene set")
    axes.set_ylabel("after stage")
    axes.set_title(f"{metrics['strategy']}: results matrix R")
    save_png(figure, path)


def plot_forgetting_curves(metrics_by_strategy: Mapping[str, Metrics], path: Path | str) -> None:
    """Loss on each old gene set (B, T1..T_{n-1}) after every stage since it was learned: one panel per
    gene set, one line per strategy, error bars = std over seeds. Rising lines are forgetting."""
    names = checked_names(metrics_by_strategy)
    gene_sets = metrics_by_strategy[names[0]]["gene_sets"]
    n_old = len(gene_sets) - 1  # the last gene set has a single point: nothing to forget yet
    colors = strategy_colors(names)
    figure, panels = new_figure(n_old, (4.0, 3.2), legend_width=2.0)
    for gene_set_index, axes in enumerate(panels):
        stages = np.arange(gene_set_index, len(gene_sets))
        for name in names:
            values = matrix_of(metrics_by_strategy[name])
            stds = matrix_of(metrics_by_strategy[name], "matrix_std")
            axes.errorbar(
                stages,
                values[stages, gene_set_index],
                yerr=None if stds is None else stds[stages, gene_set_index],
                marker="o",
                capsize=3,
                color=colors[name],
                label=name,
            )
        baseline = gene_mean_mse_of(metrics_by_strategy[names[0]])
        if baseline is not None:
            axes.axhline(baseline[gene_set_index], color="grey", linestyle="--", label="gene-mean predictor")
        axes.set_xticks(stages, [stage_labels(len(gene_sets))[stage] for stage in stages])
        axes.set_title(f"{gene_sets[gene_set_index]} (learned at stage {gene_set_index})")
        axes.set_xlabel("after stage")
        axes.set_ylabel(f"MSE on {gene_sets[gene_set_index]}")
    _outside_legend(figure, panels[-1])
    save_png(figure, path)


def plot_ranking(
    names: Sequence[str], means: Sequence[float], stds: Sequence[float], metric: str, path: Path | str
) -> None:
    """Horizontal bars of ``metric`` (mean ± std over seeds) per strategy, best at the top: the
    leaderboard at a glance, for the leaderboard run in MLflow."""
    figure, (axes,) = new_figure(1, (6.0, 0.5 * len(names) + 1.5))
    positions = np.arange(len(names))
    errors = [0.0 if math.isnan(std) else std for std in stds]
    axes.barh(positions, means, xerr=errors, capsize=3, color=list(strategy_colors(names).values()))
    axes.set_yticks(positions, [f"{rank}. {name}" for rank, name in enumerate(names, start=1)])
    axes.invert_yaxis()
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel(f"{metric} (mean ± std over seeds)")
    axes.set_title(f"Leaderboard by {metric}")
    save_png(figure, path)


def plot_probe_accuracy(metrics_by_strategy: Mapping[str, Metrics], path: Path | str) -> None:
    """Linear-probe accuracy after every stage: one panel per task, one line per strategy, error bars =
    std over seeds, a dotted line at the stage that learned the task's genes. Without probe results the
    figure says so, so the report's file set does not depend on the settings."""
    names = checked_names(metrics_by_strategy)
    tasks: dict[str, int] = {}
    for name in names:
        for task, result in probe_tasks(metrics_by_strategy[name], name).items():
            tasks.setdefault(task, result["learned_at"])
    colors = strategy_colors(names)
    labels = stage_labels(len(metrics_by_strategy[names[0]]["gene_sets"]))
    figure, panels = new_figure(max(len(tasks), 1), (4.5, 3.2), legend_width=2.2)
    if not tasks:
        panels[0].text(0.5, 0.5, "no probe results in the metrics", ha="center", va="center")
        panels[0].set_axis_off()
    ordered_tasks = sorted(tasks.items(), key=lambda item: (item[1], item[0]))
    # Without tasks the single panel holds the note above and the loop is empty.
    for (task, learned_at), axes in zip(ordered_tasks, panels, strict=False):
        for name in names:
            result = probe_tasks(metrics_by_strategy[name], name).get(task)
            if result is None:
                continue
            accuracy = vector_of(result["accuracy"])
            axes.errorbar(
                np.arange(accuracy.size),
                accuracy,
                yerr=vector_of(result.get("accuracy_std")),
                marker="o",
                capsize=3,
                color=colors[name],
                label=name,
            )
        reference = probe_reference_of(metrics_by_strategy[names[0]]).get(task)
        if reference is not None:
            axes.axhline(reference["majority_rate"], color="black", linestyle="--", label="majority class")
            axes.plot(
                range(len(labels)),
                reference["raw_accuracy"],
                color="grey",
                linestyle=":",
                marker="s",
                label="raw-expression probe",
            )
        axes.set_xticks(range(len(labels)), labels)
        axes.axvline(learned_at, color="grey", linestyle=":", linewidth=1)
        axes.set_title(f"{task} (genes learned at stage {learned_at})")
        axes.set_xlabel("after stage")
        axes.set_ylabel("probe accuracy")
    if tasks:
        _outside_legend(figure, panels[0])
    save_png(figure, path)
