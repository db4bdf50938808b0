"""Benchmark report: a paper-style Markdown report with its figures from per-strategy metrics files.

Input: the ``metrics/<strategy>.json`` files written by the evaluate step (read and checked by
:mod:`gil.metrics_files`). Each holds a results matrix ``regression.matrix`` (mean over seeds; ``null``
above the diagonal: gene set not learned yet), its ``matrix_std``, summary metrics as ``<name>_mean`` /
``<name>_std`` over seeds, probe accuracies per task, and every seed's numbers under ``per_seed``.
Losses are masked-value MSE, lower is better; the sign conventions are those of
:mod:`gil.metrics.continual`. Figures come from :mod:`gil.figures`; every output is written atomically.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gil.figures import (
    FORGETTING_CURVES_PNG,
    PROBE_ACCURACY_PNG,
    plot_forgetting_curves,
    plot_probe_accuracy,
    plot_results_matrix,
)
from gil.files import write_json, write_text
from gil.metrics.continual import intransigence, mean_std
from gil.metrics.paired import (
    CONFIDENCE,
    PAIRED_QUANTITIES,
    REFERENCE,
    PairedDifference,
    format_difference,
    paired_quantities,
)
from gil.metrics_files import (
    MISSING,
    Metrics,
    checked_names,
    format_stat,
    gene_mean_mse_of,
    load_metrics,
    matrix_of,
    number_or_none,
    probe_reference_of,
    probe_tasks,
    read_json_document,
    report_order,
    stage_labels,
    stat_of,
)
from gil.tuned_report import tuned_document, tuned_section

PAIRED_SUFFIX = "_paired.json"  # beside the report: reports/benchmark.md -> reports/benchmark_paired.json


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
# Table and report


def benchmark_table(metrics_by_strategy: Mapping[str, Metrics]) -> str:
    """Paper-style Markdown table, one row per strategy in report order, followed by a legend.

    Columns: Δ, forgetting, BWT, final MSE, plasticity (new-gene MSE), the first incremental gene set's
    loss right after learning it → after the last stage, and the probe Δ; each ``mean ± std`` over seeds.
    """
    names = checked_names(metrics_by_strategy)
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
        matrix = matrix_of(metrics)
        probe = metrics.get("probe") if isinstance(metrics.get("probe"), Mapping) else {}
        cells = [
            name,
            *(format_stat(*stat_of(regression, key)) for _, key in columns),
            f"{format_stat(matrix[1, 1])} → {format_stat(matrix[last, 1])}",
            _steps(metrics),
            _probe_delta(probe),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + LEGEND + "\n"


def _probe_delta(probe: Mapping[str, Any]) -> str:
    """``mean ± std over seeds; se <standard error over the probe cells>`` (the se when known)."""
    se = number_or_none(probe.get("delta_se"))
    text = format_stat(*stat_of(probe, "delta"))
    return text if se is None or text == MISSING else f"{text}; se {se:.3f}"


def _steps(metrics: Metrics) -> str:
    compute = metrics.get("compute")
    steps = (
        number_or_none(compute.get("optimizer_steps_incremental")) if isinstance(compute, Mapping) else None
    )
    return MISSING if steps is None else f"{steps:.0f}"


def reference_table(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    """Was each gene set learned? Skill right after its stage and after the last one, per strategy.

    With the per-gene-mean predictor's loss per gene set as the first line: the reader sees whether a
    set was learned before asking whether it was forgotten. Empty without reference points.
    """
    baseline = gene_mean_mse_of(metrics_by_strategy[names[0]])
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
        skill = matrix_of(metrics_by_strategy[name], "skill")
        if skill is None:
            continue
        cells = [f"{format_stat(skill[j, j])} → {format_stat(skill[last, j])}" for j in range(len(gene_sets))]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def probe_table(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    """Probe accuracy per task after every stage, with the majority rate and raw-expression probe."""
    references = probe_reference_of(metrics_by_strategy[names[0]])
    tasks = sorted({task for name in names for task in probe_tasks(metrics_by_strategy[name], name)})
    if not tasks:
        return ""
    n_stages = len(metrics_by_strategy[names[0]]["gene_sets"])
    header = ["task", "row", *(f"after {label}" for label in stage_labels(n_stages)), "Δ ± se"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(task: str, label: str, result: Mapping[str, Any]) -> str:
        stds = result.get("accuracy_std") or [None] * n_stages
        accuracy = [
            format_stat(number_or_none(a), number_or_none(s))
            for a, s in zip(result["accuracy"], stds, strict=True)
        ]
        delta = format_stat(number_or_none(result.get("delta")), number_or_none(result.get("delta_se")))
        return "| " + " | ".join([task, label, *accuracy, delta if "delta" in result else ""]) + " |"

    for task in tasks:
        reference = references.get(task)
        if reference is not None:
            majority = format_stat(number_or_none(reference["majority_rate"]))
            lines.append("| " + " | ".join([task, "majority class", *[majority] * n_stages, ""]) + " |")
            lines.append(row(task, "raw-expression probe", {"accuracy": reference["raw_accuracy"]}))
            if reference.get("own_genes_raw_accuracy"):
                own_raw = {"accuracy": reference["own_genes_raw_accuracy"]}
                lines.append(row(task, f"raw-expression probe, {OWN_GENES_LABEL}", own_raw))
        for name in names:
            result = probe_tasks(metrics_by_strategy[name], name).get(task)
            if result is None:
                continue
            lines.append(row(task, name, result))
            if isinstance(result.get("own_genes"), Mapping):
                lines.append(row(task, f"{name}, {OWN_GENES_LABEL}", result["own_genes"]))
    return "\n".join(lines) + "\n"


JUDGEABLE_MARGIN = 0.15  # the own-genes probe must beat the majority rate by this much to judge forgetting


def probe_judgement(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    """Whether each task's own-genes probe, at the stage that learns its genes, learned enough (majority +
    :data:`JUDGEABLE_MARGIN`) for its later drop to measure forgetting; read on the first strategy
    (fine-tuning in report order: every strategy shares it up to that stage's end)."""
    first = names[0]
    references = probe_reference_of(metrics_by_strategy[first])
    lines = []
    for task, result in probe_tasks(metrics_by_strategy[first], first).items():
        own, reference = result.get("own_genes"), references.get(task)
        if (
            not isinstance(own, Mapping)
            or reference is None
            or result["learned_at"] >= len(own["accuracy"]) - 1
        ):
            continue
        accuracy = number_or_none(own["accuracy"][result["learned_at"]])
        majority = number_or_none(reference.get("majority_rate"))
        if accuracy is None or majority is None:
            continue
        verdict = (
            "judgeable: the probe learned the task from these genes (but see the controls: a retrained probe"
            " also decodes redrawn rows)"
            if accuracy >= majority + JUDGEABLE_MARGIN
            else f"**cannot be judged at this scale**: the probe is less than {JUDGEABLE_MARGIN} above the"
            " majority rate when the genes are learned, so a drop would be within what it never knew"
        )
        lines.append(
            f"- {task}: {first}'s probe on {OWN_GENES_LABEL} after stage {result['learned_at']}:"
            f" {accuracy:.3f} (majority {majority:.3f}): {verdict}."
        )
    return "\n".join(lines) + ("\n" if lines else "")


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


TUNED_TITLE = "Tuned against default (paired over seeds, same test cells)"
TUNED_NOTE = (
    "Each `NAME@tuned` row is its strategy with the values `gil tune` chose: every strategy searched"
    " with the same budget (trials, scheduler, objective, sampler seed), from the shared base stage,"
    " selected on the split's validation cells, never on the test cells reported here. tuned − default"
    " is the paired difference of Δ over seeds with its 95 % t interval (negative: tuning reduced Δ)."
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
        verdict = MISSING if delta is None else delta.verdict()
        lines.append("| " + " | ".join([name, str(seeds), *cells, verdict]) + " |")
    return "\n".join(lines) + "\n\n" + PAIRED_LEGEND + "\n"


def paired_document(metrics_by_strategy: Mapping[str, Metrics]) -> dict[str, Any]:
    """The numbers of :func:`paired_table`, machine-readable (``reports/benchmark_paired.json``): per strategy
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
        "tuned_vs_default": tuned_document(metrics_by_strategy, report_order(metrics_by_strategy)),
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


CONTROL_ROWS = {  # controls.json's row names, and how the report labels them ({sets}: the forgotten sets)
    "intact": "{strategy}, final model",
    "redrawn": "positive control: rows of {sets} redrawn",
    "collapsed": "positive control: rows of {sets} collapsed to their mean",
    "erased": "positive control: rows of {sets} erased (all one fresh random row)",
    "negative": "negative control: the same model twice",
}


def controls_table(controls: Metrics) -> str:
    """The positive and negative controls (``gil controls``) beside the intact run they start from."""
    sets = ", ".join(controls["forgotten_sets"])
    probes = controls.get("probe") or {}
    header = ["row", f"Δ on {sets}"]
    for task, result in probes.items():
        majority = format_stat(number_or_none(result.get("majority_rate")))
        header += [f"{task} probe, {OWN_GENES_LABEL} (majority {majority})", f"{task} probe Δ vs final model"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, label in CONTROL_ROWS.items():
        if f"delta_{name}" not in controls:
            continue
        cells = [
            label.format(strategy=controls["strategy"], sets=sets),
            format_stat(*stat_of(controls, f"delta_{name}")),
        ]
        for result in probes.values():
            cells.append(format_stat(*stat_of(result, f"{name}_accuracy")))
            cells.append(MISSING if name == "intact" else format_stat(*stat_of(result, f"{name}_delta")))
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Δ: loss after the last stage − loss right after the set's own stage (the negative control: the"
        " same model's two scorings, every set). The positive controls show what complete forgetting looks"
        " like at this scale: redrawn rows give the genes new random identities, collapsed rows remove"
        " them and keep the average gene, erased rows remove both what the model knew of each gene and"
        " which gene it is; the negative control what no forgetting looks like (exactly 0: the evaluation"
        " is deterministic). Probe Δ: the row's accuracy − the intact final model's, on the same cells. A"
        " retrained probe decodes any consistent code, redrawn rows included: only a drop under the"
        " collapse or the erasure shows that the probe can see identities that are gone."
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
    tuned = tuned_section(metrics_by_strategy, names)
    if tuned:
        lines += [f"## {TUNED_TITLE}", "", TUNED_NOTE, "", tuned]
    learned = reference_table(metrics_by_strategy, names)
    if learned:
        lines += ["## Was each gene set learned? (skill against the per-gene-mean predictor)", "", learned]
    probes = probe_table(metrics_by_strategy, names)
    if probes:
        lines += ["## Probes (cross-validated accuracy, mean ± std over seeds)", "", PROBE_NOTE, "", probes]
        judgement = probe_judgement(metrics_by_strategy, names)
        if judgement:
            lines += [judgement]
    if controls is not None:
        lines += [
            "## Controls: what complete forgetting and no forgetting look like",
            "",
            controls_table(controls),
        ]
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
    ``out_md``, and the paired differences to ``finetune`` to ``out_paired`` (default:
    ``<report stem>_paired.json`` beside the report). ``controls``: the document of ``gil controls``,
    shown when given. Raises :class:`GilError` when no file is given or one is missing or malformed."""
    metrics_by_strategy = with_intransigence(load_metrics(metrics_paths))
    names = report_order(metrics_by_strategy)
    out_md, plots_dir = Path(out_md), Path(plots_dir)
    out_paired = out_md.with_name(out_md.stem + PAIRED_SUFFIX) if out_paired is None else Path(out_paired)
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
    controls_document = read_json_document(Path(controls), "controls") if controls is not None else None
    write_text(out_md, _report_markdown(metrics_by_strategy, figures, names, controls_document))
