"""Benchmark report: figures and a paper-style Markdown table from per-strategy metrics files.

Input: the ``metrics/<strategy>.json`` files written by the evaluate step. Each holds a results matrix
``regression.matrix`` (mean over seeds; ``null`` above the diagonal: gene set not learned yet), its
``matrix_std``, summary metrics as ``<name>_mean`` / ``<name>_std`` over seeds, and optional linear-probe
accuracies per task (``probe.tasks.<task>.accuracy`` after stages ``0..n``). Losses are masked-value MSE,
lower is better; the sign conventions are those of :mod:`gil.metrics.continual`.

Figures are drawn on explicit Agg canvases (no pyplot, no global backend switch), so reporting works
headless and leaves an interactive session's backend alone; matplotlib is imported only when drawing.
Every output is written atomically, PNGs without a version stamp so identical inputs give identical bytes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from gil.errors import GilError
from gil.files import atomic_file, write_json, write_text
from gil.metrics.continual import as_results_matrix, intransigence, mean_std
from gil.metrics.paired import (
    CONFIDENCE,
    PAIRED_QUANTITIES,
    REFERENCE,
    PairedDifference,
    format_difference,
    paired_quantities,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Metrics = Mapping[str, Any]

FORGETTING_CURVES_PNG = "forgetting_curves.png"
PROBE_ACCURACY_PNG = "probe_accuracy.png"
PAIRED_JSON = "paired.json"

_BASELINE_KINDS = frozenset({"finetune"})  # listed first: what every method is compared against
_REFERENCE_KINDS = frozenset({"joint"})  # listed last: the upper bound, not a continual method
_STRATEGY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MISSING = "–"

LEGEND = "\n".join(
    [
        "Values are mean ± std over seeds (sample std); – = not available. Losses are masked-value MSE,",
        "lower is better. Signs:",
        "",
        "- Δ = loss on T_j after the last stage − loss right after stage j, averaged over T_1..T_{n-1}"
        " (the paper's Δ; larger = more forgetting).",
        "- Forgetting = final loss − best earlier loss, averaged over B, T_1..T_{n-1}"
        " (larger = more forgetting).",
        "- BWT = loss right after learning − final loss, over the same gene sets (negative = forgetting).",
        "- Final MSE = mean loss over all gene sets after the last stage.",
        "- Plasticity = loss on T_k right after stage k, averaged over k (lower = learns new genes better).",
        "- Skill = 1 − MSE / MSE of the per-gene-mean predictor on the same positions (higher = better;"
        " 0 = no better than predicting each gene's training mean). New-set skill: each T_k right after"
        " stage k, averaged; final skill: every gene set after the last stage, averaged.",
        "- Steps = optimizer steps of the incremental stages (the compute a strategy spent).",
        "- Probe Δ = cross-validated linear-probe accuracy after the last stage − accuracy when the task's"
        " genes were learned, averaged over tasks (negative = forgetting); ± is the std over seeds, se the"
        " standard error over the probe cells (paired: the same cells at both stages).",
    ]
)


# ----------------------------------------------------------------------------------------------------
# Input validation and access


def _check_metrics(metrics: Any, source: str) -> None:
    """Raise :class:`GilError` naming ``source`` unless ``metrics`` has the structure this module reads."""
    if not isinstance(metrics, Mapping):
        raise GilError(f"{source}: expected a JSON object with keys 'strategy', 'gene_sets', 'regression'")
    name = metrics.get("strategy")
    if not isinstance(name, str) or not _STRATEGY_NAME.fullmatch(name):
        raise GilError(f"{source}: 'strategy' must be a name of letters, digits, '_', '.', '-'; got {name!r}")
    gene_sets = metrics.get("gene_sets")
    if (
        not isinstance(gene_sets, list)
        or len(gene_sets) < 2
        or not all(isinstance(g, str) for g in gene_sets)
    ):
        raise GilError(f"{source}: 'gene_sets' must list at least two gene set names (B, T1, ...)")
    regression = metrics.get("regression")
    if not isinstance(regression, Mapping) or "matrix" not in regression:
        raise GilError(f"{source}: missing 'regression.matrix' (the results matrix R)")
    for key in ("matrix", "matrix_std"):
        if key == "matrix" or regression.get(key) is not None:
            try:
                matrix = as_results_matrix(regression[key], name=f"regression.{key}")
            except ValueError as error:
                raise GilError(f"{source}: {error}") from None
            if matrix.shape[0] != len(gene_sets):
                raise GilError(
                    f"{source}: regression.{key} is {matrix.shape[0]}x{matrix.shape[1]} but there are "
                    f"{len(gene_sets)} gene sets"
                )
    for task, result in _probe_tasks(metrics, source).items():
        accuracy = result.get("accuracy") if isinstance(result, Mapping) else None
        learned_at = result.get("learned_at") if isinstance(result, Mapping) else None
        if not isinstance(accuracy, list) or len(accuracy) != len(gene_sets):
            raise GilError(f"{source}: probe.tasks.{task}.accuracy must list one value per stage")
        if (
            isinstance(learned_at, bool)
            or not isinstance(learned_at, int)
            or not 0 <= learned_at < len(gene_sets)
        ):
            raise GilError(f"{source}: probe.tasks.{task}.learned_at must be a stage index")


def _probe_tasks(metrics: Metrics, source: str) -> Mapping[str, Any]:
    """The probe results by task; empty when the metrics have no probe section."""
    probe = metrics.get("probe")
    tasks = probe.get("tasks") if isinstance(probe, Mapping) else None
    if probe is not None and not isinstance(tasks, Mapping):
        raise GilError(f"{source}: 'probe' must be null or an object with a 'tasks' object")
    return tasks or {}


def _checked(metrics_by_strategy: Mapping[str, Metrics]) -> list[str]:
    """Validate every strategy's metrics and their common gene sets; return names in report order."""
    if not metrics_by_strategy:
        raise GilError("no strategy metrics to report; run the evaluate step first")
    for name, metrics in metrics_by_strategy.items():
        _check_metrics(metrics, f"metrics of {name!r}")
    gene_sets = {tuple(metrics["gene_sets"]) for metrics in metrics_by_strategy.values()}
    if len(gene_sets) > 1:
        raise GilError(
            f"strategies were evaluated on different gene sets {sorted(gene_sets)}; "
            "report only metrics from the same split"
        )
    return report_order(metrics_by_strategy)


def report_order(metrics_by_strategy: Mapping[str, Metrics]) -> list[str]:
    """Baseline first, then the other methods by increasing Δ (least forgetting first), the joint oracle
    last; ties and undefined Δ by name. Mirrors the paper's Baseline / methods / Oracle layout."""

    def key(name: str) -> tuple[int, float, str]:
        metrics = metrics_by_strategy[name]
        kind = metrics.get("kind")
        group = 0 if kind in _BASELINE_KINDS else 2 if kind in _REFERENCE_KINDS else 1
        delta_mean, _ = _stat(metrics["regression"], "delta")
        return group, math.inf if delta_mean is None or group != 1 else delta_mean, name

    return sorted(metrics_by_strategy, key=key)


def _matrix(metrics: Metrics, key: str = "matrix") -> NDArray[np.float64] | None:
    """``regression.<key>`` as a float array with NaN for null, or None when absent."""
    values = metrics["regression"].get(key)
    return None if values is None else np.array(values, dtype=float)


def _vector(values: Sequence[float | None] | None) -> NDArray[np.float64] | None:
    return None if values is None else np.array(values, dtype=float)


def _number(value: Any) -> float | None:
    """A finite float, or None for null / NaN / non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _stat(section: Mapping[str, Any], name: str) -> tuple[float | None, float | None]:
    """``(<name>_mean, <name>_std)`` of a metrics section, falling back to ``<name>`` for the mean."""
    mean = _number(section.get(f"{name}_mean", section.get(name)))
    return mean, _number(section.get(f"{name}_std"))


def format_stat(mean: float | None, std: float | None = None) -> str:
    """``0.123 ± 0.010``; just the mean when there is no std; ``–`` when there is no mean."""
    if mean is None:
        return _MISSING
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _gene_mean_mse(metrics: Metrics) -> NDArray[np.float64] | None:
    """The per-gene-mean predictor's loss per gene set (``reference.gene_mean_mse``), if present."""
    reference = metrics.get("reference")
    return _vector(reference.get("gene_mean_mse")) if isinstance(reference, Mapping) else None


def _probe_reference(metrics: Metrics) -> Mapping[str, Any]:
    """Per task: majority rate and raw-expression probe accuracies (``reference.probe``), or empty."""
    reference = metrics.get("reference")
    return reference.get("probe", {}) if isinstance(reference, Mapping) else {}


def _stage_labels(n_rows: int) -> list[str]:
    return ["0 (base)", *(str(stage) for stage in range(1, n_rows))]


# ----------------------------------------------------------------------------------------------------
# Figures


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
    _check_metrics(metrics, "metrics given to plot_results_matrix")
    import matplotlib

    values = _matrix(metrics)
    stds = _matrix(metrics, "matrix_std")
    gene_sets = metrics["gene_sets"]
    row_labels = _stage_labels(len(gene_sets))
    baseline = _gene_mean_mse(metrics)
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
        std = None if stds is None else _number(stds[row, col])
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
    names = _checked(metrics_by_strategy)
    gene_sets = metrics_by_strategy[names[0]]["gene_sets"]
    n_old = len(gene_sets) - 1  # the last gene set has a single point: nothing to forget yet
    colors = strategy_colors(names)
    figure, panels = new_figure(n_old, (4.0, 3.2), legend_width=2.0)
    for gene_set_index, axes in enumerate(panels):
        stages = np.arange(gene_set_index, len(gene_sets))
        for name in names:
            values = _matrix(metrics_by_strategy[name])
            stds = _matrix(metrics_by_strategy[name], "matrix_std")
            axes.errorbar(
                stages,
                values[stages, gene_set_index],
                yerr=None if stds is None else stds[stages, gene_set_index],
                marker="o",
                capsize=3,
                color=colors[name],
                label=name,
            )
        baseline = _gene_mean_mse(metrics_by_strategy[names[0]])
        if baseline is not None:
            axes.axhline(baseline[gene_set_index], color="grey", linestyle="--", label="gene-mean predictor")
        axes.set_xticks(stages, [_stage_labels(len(gene_sets))[stage] for stage in stages])
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
    names = _checked(metrics_by_strategy)
    tasks: dict[str, int] = {}
    for name in names:
        for task, result in _probe_tasks(metrics_by_strategy[name], name).items():
            tasks.setdefault(task, result["learned_at"])
    colors = strategy_colors(names)
    stage_labels = _stage_labels(len(metrics_by_strategy[names[0]]["gene_sets"]))
    figure, panels = new_figure(max(len(tasks), 1), (4.5, 3.2), legend_width=2.2)
    if not tasks:
        panels[0].text(0.5, 0.5, "no probe results in the metrics", ha="center", va="center")
        panels[0].set_axis_off()
    ordered_tasks = sorted(tasks.items(), key=lambda item: (item[1], item[0]))
    # Without tasks the single panel holds the note above and the loop is empty.
    for (task, learned_at), axes in zip(ordered_tasks, panels, strict=False):
        for name in names:
            result = _probe_tasks(metrics_by_strategy[name], name).get(task)
            if result is None:
                continue
            accuracy = _vector(result["accuracy"])
            axes.errorbar(
                np.arange(accuracy.size),
                accuracy,
                yerr=_vector(result.get("accuracy_std")),
                marker="o",
                capsize=3,
                color=colors[name],
                label=name,
            )
        reference = _probe_reference(metrics_by_strategy[names[0]]).get(task)
        if reference is not None:
            axes.axhline(reference["majority_rate"], color="black", linestyle="--", label="majority class")
            axes.plot(
                range(len(stage_labels)),
                reference["raw_accuracy"],
                color="grey",
                linestyle=":",
                marker="s",
                label="raw-expression probe",
            )
        axes.set_xticks(range(len(stage_labels)), stage_labels)
        axes.axvline(learned_at, color="grey", linestyle=":", linewidth=1)
        axes.set_title(f"{task} (genes learned at stage {learned_at})")
        axes.set_xlabel("after stage")
        axes.set_ylabel("probe accuracy")
    if tasks:
        _outside_legend(figure, panels[0])
    save_png(figure, path)


# ----------------------------------------------------------------------------------------------------
# Table and report


def benchmark_table(metrics_by_strategy: Mapping[str, Metrics]) -> str:
    """Paper-style Markdown table, one row per strategy in report order, followed by a legend.

    Columns: Δ, forgetting, BWT, final MSE, plasticity (new-gene MSE), the first incremental gene set's
    loss right after learning it → after the last stage, and the probe Δ; each ``mean ± std`` over seeds.
    """
    names = _checked(metrics_by_strategy)
    gene_sets = metrics_by_strategy[names[0]]["gene_sets"]
    last = len(gene_sets) - 1
    columns = [
        ("Δ (mean ± std)", "delta"),
        ("forgetting", "forgetting"),
        ("BWT", "bwt"),
        ("final MSE", "final_mse"),
        ("plasticity (new-gene MSE)", "plasticity"),
        ("new-set skill", "skill_new"),
        ("final skill", "skill_final"),
        ("intransigence vs joint", "intransigence"),
    ]
    header = [
        "strategy",
        *(title for title, _ in columns),
        f"{gene_sets[1]}: after stage 1 → after stage {last}",
        "steps",
        "probe Δ (± std; se)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        metrics = metrics_by_strategy[name]
        regression = metrics["regression"]
        matrix = _matrix(metrics)
        probe = metrics.get("probe") if isinstance(metrics.get("probe"), Mapping) else {}
        cells = [
            name,
            *(format_stat(*_stat(regression, key)) for _, key in columns),
            f"{format_stat(matrix[1, 1])} → {format_stat(matrix[last, 1])}",
            _steps(metrics),
            _probe_delta(probe),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + LEGEND + "\n"


def _probe_delta(probe: Mapping[str, Any]) -> str:
    """``mean ± std over seeds; se <standard error over the probe cells>`` (the se when known)."""
    se = _number(probe.get("delta_se"))
    text = format_stat(*_stat(probe, "delta"))
    return text if se is None or text == _MISSING else f"{text}; se {se:.3f}"


def _steps(metrics: Metrics) -> str:
    compute = metrics.get("compute")
    steps = _number(compute.get("optimizer_steps_incremental")) if isinstance(compute, Mapping) else None
    return _MISSING if steps is None else f"{steps:.0f}"


def reference_table(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    """Was each gene set learned? Skill right after its stage and after the last one, per strategy.

    With the per-gene-mean predictor's loss per gene set as the first line: the reader sees whether a
    set was learned before asking whether it was forgotten. Empty without reference points.
    """
    baseline = _gene_mean_mse(metrics_by_strategy[names[0]])
    if baseline is None:
        return ""
    gene_sets = metrics_by_strategy[names[0]]["gene_sets"]
    last = len(gene_sets) - 1
    header = ["strategy", *(f"{g}: skill when learned → final" for g in gene_sets)]
    lines = [
        "Per-gene-mean predictor MSE: "
        + ", ".join(f"{g} {b:.3f}" for g, b in zip(gene_sets, baseline, strict=True)),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name in names:
        skill = _matrix(metrics_by_strategy[name], "skill")
        if skill is None:
            continue
        cells = [f"{format_stat(skill[j, j])} → {format_stat(skill[last, j])}" for j in range(len(gene_sets))]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def probe_table(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    """Probe accuracy per task after every stage, with the majority rate and raw-expression probe."""
    references = _probe_reference(metrics_by_strategy[names[0]])
    tasks = sorted({task for name in names for task in _probe_tasks(metrics_by_strategy[name], name)})
    if not tasks:
        return ""
    n_stages = len(metrics_by_strategy[names[0]]["gene_sets"])
    header = ["task", "row", *(f"after {label}" for label in _stage_labels(n_stages)), "Δ ± se"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    def row(task: str, label: str, result: Mapping[str, Any]) -> str:
        stds = result.get("accuracy_std") or [None] * n_stages
        accuracy = [format_stat(_number(a), _number(s)) for a, s in zip(result["accuracy"], stds, strict=True)]
        delta = format_stat(_number(result.get("delta")), _number(result.get("delta_se")))
        return "| " + " | ".join([task, label, *accuracy, delta if "delta" in result else ""]) + " |"

    for task in tasks:
        reference = references.get(task)
        if reference is not None:
            majority = format_stat(_number(reference["majority_rate"]))
            lines.append("| " + " | ".join([task, "majority class", *[majority] * n_stages, ""]) + " |")
            lines.append(row(task, "raw-expression probe", {"accuracy": reference["raw_accuracy"]}))
            if reference.get("own_genes_raw_accuracy"):
                own_raw = {"accuracy": reference["own_genes_raw_accuracy"]}
                lines.append(row(task, f"raw-expression probe, {OWN_GENES_LABEL}", own_raw))
        for name in names:
            result = _probe_tasks(metrics_by_strategy[name], name).get(task)
            if result is None:
                continue
            lines.append(row(task, name, result))
            if isinstance(result.get("own_genes"), Mapping):
                lines.append(row(task, f"{name}, {OWN_GENES_LABEL}", result["own_genes"]))
    return "\n".join(lines) + "\n"


OWN_GENES_LABEL = "task genes only"
PROBE_NOTE = (
    "Rows without a note feed each cell's most expressed known genes (mostly base genes, never"
    f" forgotten); rows marked '{OWN_GENES_LABEL}' feed only the genes of the task's own gene set (from"
    " the stage that learns them), so they can only succeed through what the model knows of those genes."
)


PAIRED_TITLE = "Paired differences to fine-tuning (95 % t interval over seeds)"

PAIRED_LEGEND = (
    f"Each cell: mean over seeds of (strategy − {REFERENCE}) on the same seed [95 % t interval,"
    " mean ± t(0.975, n − 1) · sd / √n over the n seeds both ran]; – = not available (no interval with"
    " one seed). Resolved = the interval excludes 0. Δ, final MSE, new-gene MSE (plasticity) are losses:"
    f" negative = lower than {REFERENCE}; probe Δs: positive = less probe forgetting than {REFERENCE}."
)


def paired_differences(metrics_by_strategy: Mapping[str, Metrics]) -> dict[str, dict[str, PairedDifference]]:
    """Per quantity of :data:`gil.metrics.paired.PAIRED_QUANTITIES`: every strategy against
    ``finetune`` seed by seed (``per_seed`` of the metrics); empty without a ``finetune`` run."""
    return paired_quantities({name: m.get("per_seed") or {} for name, m in metrics_by_strategy.items()})


def paired_table(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    """The paired-differences section: one row per strategy but ``finetune`` (in ``names`` order),
    one column per quantity any strategy has, the number of paired seeds and the verdict on Δ."""
    if REFERENCE not in metrics_by_strategy:
        return f"No `{REFERENCE}` run among the strategies: nothing to pair the others with.\n"
    paired = paired_differences(metrics_by_strategy)
    quantities = [quantity for quantity in PAIRED_QUANTITIES if quantity.name in paired]
    reference_seeds = (metrics_by_strategy[REFERENCE].get("per_seed") or {}).keys()
    header = ["strategy", "paired seeds", *(quantity.title for quantity in quantities), "verdict on Δ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        if name == REFERENCE:
            continue
        seeds = len((metrics_by_strategy[name].get("per_seed") or {}).keys() & reference_seeds)
        delta = paired.get("delta", {}).get(name)
        cells = [format_difference(paired[quantity.name].get(name)) for quantity in quantities]
        verdict = _MISSING if delta is None else delta.verdict()
        lines.append("| " + " | ".join([name, str(seeds), *cells, verdict]) + " |")
    return "\n".join(lines) + "\n\n" + PAIRED_LEGEND + "\n"


def paired_document(metrics_by_strategy: Mapping[str, Metrics]) -> dict[str, Any]:
    """The numbers of :func:`paired_table`, machine-readable (``reports/paired.json``): per strategy
    and quantity ``mean``, ``low``, ``high``, ``n`` and ``verdict`` (null for undefined values)."""
    strategies: dict[str, dict[str, Any]] = {}
    for quantity, differences in paired_differences(metrics_by_strategy).items():
        for name, difference in differences.items():
            strategies.setdefault(name, {})[quantity] = difference.as_dict()
    return {
        "reference": REFERENCE,
        "reference_present": REFERENCE in metrics_by_strategy,
        "confidence": CONFIDENCE,
        "interval": "mean ± t(0.5 + confidence / 2, n − 1) · sd / √n of the per-seed differences",
        "quantities": {q.name: {"title": q.title, "per_seed": ".".join(q.path)} for q in PAIRED_QUANTITIES},
        "strategies": strategies,
    }


def with_intransigence(metrics_by_strategy: Mapping[str, Metrics]) -> dict[str, dict[str, Any]]:
    """Copies of the metrics with ``intransigence`` filled in against the joint run, seed by seed.

    The joint oracle is the strategy whose ``kind`` is ``joint``; each strategy's seed ``s`` is
    compared with the joint run's seed ``s`` (see :func:`gil.metrics.intransigence`). Without a joint
    run, or without common seeds, the values stay as they are (null).
    """
    joint = next((m for m in metrics_by_strategy.values() if m.get("kind") == "joint"), None)
    result = {name: copy.deepcopy(dict(metrics)) for name, metrics in metrics_by_strategy.items()}
    if joint is None:
        return result
    joint_seeds = joint.get("per_seed") or {}
    for metrics in result.values():
        per_seed = metrics.get("per_seed") or {}
        values = [
            intransigence(run["regression"]["matrix"], joint_seeds[seed]["regression"]["matrix"])
            for seed, run in per_seed.items()
            if seed in joint_seeds
        ]
        if values:
            mean, std = mean_std(values)
            metrics["regression"].update(intransigence=mean, intransigence_mean=mean, intransigence_std=std)
    return result


def _read_json(path: Path, what: str) -> Any:
    """A JSON document written by an earlier step, or a one-line :class:`GilError` naming the fix."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GilError(f"{path}: {what} file not found; run the step that writes it first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GilError(f"{path}: not a readable JSON {what} file ({error})") from None


def load_metrics(metrics_paths: Sequence[Path | str]) -> dict[str, dict[str, Any]]:
    """Read and validate metrics JSON files; return them by strategy name."""
    if not metrics_paths:
        raise GilError("no metrics files found; run the evaluate step to write metrics/<strategy>.json")
    metrics_by_strategy: dict[str, dict[str, Any]] = {}
    for path in map(Path, metrics_paths):
        metrics = _read_json(path, "metrics")
        _check_metrics(metrics, str(path))
        if metrics["strategy"] in metrics_by_strategy:
            raise GilError(f"{path}: strategy {metrics['strategy']!r} appears in more than one metrics file")
        metrics_by_strategy[metrics["strategy"]] = metrics
    _checked(metrics_by_strategy)
    return metrics_by_strategy


def controls_table(controls: Metrics) -> str:
    """The positive and negative controls (``gil controls``) beside the intact run they start from."""
    sets = ", ".join(controls["forgotten_sets"])
    probes = controls.get("probe") or {}
    header = ["row", f"Δ on {sets}"]
    for task, result in probes.items():
        majority = format_stat(_number(result.get("majority_rate")))
        header += [f"{task} probe, {OWN_GENES_LABEL} (majority {majority})", f"{task} probe Δ"]
    rows = {
        f"{controls['strategy']}, final model": ("delta_intact", "intact_accuracy", None),
        f"positive control: rows of {sets} redrawn": ("delta_positive", "positive_accuracy", "positive_delta"),
        "negative control: the same model twice": ("delta_negative", "intact_accuracy", "negative_delta"),
    }
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, (delta, accuracy, probe_delta) in rows.items():
        cells = [label, format_stat(*_stat(controls, delta))]
        for result in probes.values():
            cells.append(format_stat(*_stat(result, accuracy)))
            cells.append(format_stat(*_stat(result, probe_delta)) if probe_delta else _MISSING)
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Δ of the intact model is the run's own forgetting (its stage-1 loss is the reference of every"
        " row); the positive control is what complete forgetting of those genes looks like at this scale,"
        " the negative control what no forgetting looks like (exactly 0: the evaluation is deterministic)."
        " Probe Δ: accuracy of the row's model − the intact final model's, on the same cells."
    )
    return "\n".join([*lines, "", note]) + "\n"


def _compute_lines(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    """Optimizer steps and cells processed per stage of every strategy (mean over seeds)."""
    lines = []
    for name in names:
        compute = metrics_by_strategy[name].get("compute")
        if not isinstance(compute, Mapping):
            continue
        steps = ", ".join(f"{v:.0f}" for v in compute["optimizer_steps"])
        cells = ", ".join(f"{v:.0f}" for v in compute["cells_processed"])
        lines.append(f"- **{name}**: optimizer steps per stage {steps}; cells processed per stage {cells}")
    if not lines:
        return ""
    note = (
        "Stage 0 is the shared base stage. Replay's epochs have as many steps as fine-tuning's (its batches"
        " mix buffer and current cells); the joint oracle trains at stage k on every cell of stages 0..k"
        " from the previous stage's weights, so it spends more steps: read its numbers as an upper bound"
        " at a larger budget."
    )
    return "\n".join([*lines, "", note]) + "\n"


def _seed_counts(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    counts = {name: len(metrics_by_strategy[name].get("per_seed") or {}) for name in names}
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} per strategy"
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _report_markdown(
    metrics_by_strategy: Mapping[str, Metrics],
    figures: Mapping[str, str],
    names: Sequence[str],
    controls: Metrics | None = None,
) -> str:
    """The report text; ``figures`` maps a caption to a link relative to the report."""
    gene_sets = metrics_by_strategy[names[0]]["gene_sets"]
    evaluations = sorted({str(m["evaluation"]) for m in metrics_by_strategy.values() if m.get("evaluation")})
    lines = [
        "# Gene-incremental learning benchmark",
        "",
        "## Settings",
        "",
        f"- Gene sets: {', '.join(gene_sets)} ({gene_sets[0]} = base genes, learned at stage 0; "
        f"{len(gene_sets) - 1} incremental stages)",
        "- Strategies: " + ", ".join(f"{n} ({metrics_by_strategy[n].get('kind', '?')})" for n in names),
        f"- Seeds: {_seed_counts(metrics_by_strategy, names)}",
        *(f"- Evaluation: {evaluation}" for evaluation in evaluations),
        "",
        "## Results",
        "",
        benchmark_table(metrics_by_strategy),
        f"## {PAIRED_TITLE}",
        "",
        paired_table(metrics_by_strategy, names),
    ]
    learned = reference_table(metrics_by_strategy, names)
    if learned:
        lines += ["## Was each gene set learned? (skill against the per-gene-mean predictor)", "", learned]
    probes = probe_table(metrics_by_strategy, names)
    if probes:
        lines += ["## Probes (cross-validated accuracy, mean ± std over seeds)", "", PROBE_NOTE, "", probes]
    if controls is not None:
        lines += ["## Controls: what complete forgetting and no forgetting look like", "", controls_table(controls)]
    compute = _compute_lines(metrics_by_strategy, names)
    if compute:
        lines += ["## Compute per strategy", "", compute]
    headlines = [(n, metrics_by_strategy[n].get("headline")) for n in names]
    if any(headline for _, headline in headlines):
        lines += ["## Headlines", "", *(f"- **{n}**: {h}" for n, h in headlines if h), ""]
    lines += ["## Figures", ""]
    for caption, link in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({link})", ""]
    return "\n".join(lines)


def run_report(
    metrics_paths: Sequence[Path | str],
    out_md: Path | str,
    plots_dir: Path | str,
    out_paired: Path | str | None = None,
    controls: Path | str | None = None,
) -> None:
    """Load the metrics files; write one heatmap per strategy (``R_<strategy>.png``), the forgetting
    curves and probe accuracy figures into ``plots_dir``, the Markdown report linking them to
    ``out_md``, and the paired differences to ``finetune`` to ``out_paired`` (default: ``paired.json``
    beside the report). ``controls``: the document of ``gil controls``, shown when given. Raises
    :class:`GilError` when no file is given or one is missing or malformed."""
    metrics_by_strategy = with_intransigence(load_metrics(metrics_paths))
    names = report_order(metrics_by_strategy)
    out_md, plots_dir = Path(out_md), Path(plots_dir)
    out_paired = out_md.parent / PAIRED_JSON if out_paired is None else Path(out_paired)
    figures: dict[str, str] = {}

    def link(file_name: str) -> str:
        return Path(os.path.relpath(plots_dir / file_name, out_md.parent)).as_posix()

    for name in names:
        plot_results_matrix(metrics_by_strategy[name], plots_dir / f"R_{name}.png")
        figures[f"Results matrix: {name}"] = link(f"R_{name}.png")
    plot_forgetting_curves(metrics_by_strategy, plots_dir / FORGETTING_CURVES_PNG)
    figures["Forgetting curves"] = link(FORGETTING_CURVES_PNG)
    plot_probe_accuracy(metrics_by_strategy, plots_dir / PROBE_ACCURACY_PNG)
    figures["Probe accuracy"] = link(PROBE_ACCURACY_PNG)
    write_json(out_paired, paired_document(metrics_by_strategy))
    controls_document = _read_json(Path(controls), "controls") if controls is not None else None
    write_text(out_md, _report_markdown(metrics_by_strategy, figures, names, controls_document))
