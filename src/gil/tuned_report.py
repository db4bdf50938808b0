"""The report's "tuned against default" section: how much of a strategy's rank is its knobs.

A tuned row ``NAME@tuned`` (``gil tune``: the same search budget for every strategy, selected on
validation cells) is paired with its default row ``NAME`` seed by seed on the same test cells, and
the strategies are ranked by mean Δ twice, once at their defaults and once tuned, so a reader sees
whether equal tuning changes the order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gil.config import TUNED_SUFFIX
from gil.metrics.paired import (
    PAIRED_QUANTITIES,
    REFERENCE,
    PairedDifference,
    format_difference,
    paired_difference,
)
from gil.metrics_files import MISSING, Metrics, format_stat, stat_of

_DELTA = next(quantity for quantity in PAIRED_QUANTITIES if quantity.name == "delta")


def tuned_pairs(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> list[tuple[str, str]]:
    """``(default, tuned)`` row names, in report order, for every tuned row whose default is reported."""
    return [
        (name.removesuffix(TUNED_SUFFIX), name)
        for name in names
        if name.endswith(TUNED_SUFFIX) and name.removesuffix(TUNED_SUFFIX) in metrics_by_strategy
    ]


TUNED_REFERENCE = f"{REFERENCE}{TUNED_SUFFIX}"


def _delta_differences(
    metrics_by_strategy: Mapping[str, Metrics], pairs: Sequence[tuple[str, str]]
) -> dict[str, PairedDifference]:
    """Per ``(reference, row)`` pair: ``row``'s Δ minus ``reference``'s, seed by seed."""
    per_seed = {name: _DELTA.per_seed(m.get("per_seed") or {}) for name, m in metrics_by_strategy.items()}
    return {row: paired_difference(per_seed[row], per_seed[reference]) for reference, row in pairs}


def tuned_differences(
    metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]
) -> dict[str, PairedDifference]:
    """Per tuned row: its Δ minus its default row's Δ, seed by seed (negative: tuning reduced Δ)."""
    return _delta_differences(metrics_by_strategy, tuned_pairs(metrics_by_strategy, names))


def against_tuned_reference(
    metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]
) -> dict[str, PairedDifference]:
    """Per tuned row: its Δ minus tuned fine-tuning's (the comparison at equal tuning); empty
    without a ``finetune@tuned`` row."""
    if TUNED_REFERENCE not in metrics_by_strategy:
        return {}
    rows = [row for _, row in tuned_pairs(metrics_by_strategy, names) if row != TUNED_REFERENCE]
    return _delta_differences(metrics_by_strategy, [(TUNED_REFERENCE, row) for row in rows])


def _ranking(metrics_by_strategy: Mapping[str, Metrics], rows: Sequence[str]) -> list[str]:
    """``rows`` from the lowest mean Δ (least forgetting) up; rows without one go last."""

    def key(name: str) -> float:
        mean, _ = stat_of(metrics_by_strategy[name]["regression"], "delta")
        return float("inf") if mean is None else mean

    return sorted(rows, key=key)


def tuned_section(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> str:
    """The Markdown section (empty when no tuned row is reported)."""
    pairs = tuned_pairs(metrics_by_strategy, names)
    if not pairs:
        return ""
    differences = tuned_differences(metrics_by_strategy, names)
    at_equal_tuning = against_tuned_reference(metrics_by_strategy, names)
    defaults = _ranking(metrics_by_strategy, [default for default, _ in pairs])
    tuned = _ranking(metrics_by_strategy, [row for _, row in pairs])
    header = [
        "strategy",
        "Δ default",
        "Δ tuned",
        "tuned − default (95 % CI)",
        "verdict",
        f"tuned − {TUNED_REFERENCE} (95 % CI)",
        "verdict at equal tuning",
        "rank: default → tuned",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for default, row in pairs:
        difference = differences[row]
        cells = [
            default,
            format_stat(*stat_of(metrics_by_strategy[default]["regression"], "delta")),
            format_stat(*stat_of(metrics_by_strategy[row]["regression"], "delta")),
            format_difference(difference),
            difference.verdict(default) if difference.n else MISSING,
            *_reference_cells(at_equal_tuning, row),
            f"{defaults.index(default) + 1} → {tuned.index(row) + 1}",  # at defaults → tuned
        ]
        lines.append("| " + " | ".join(cells) + " |")
    order = [row.removesuffix(TUNED_SUFFIX) for row in tuned]
    verdict = "the same order" if order == defaults else "a different order"
    lines += [
        "",
        f"Ranking by mean Δ (least forgetting first): at defaults {' < '.join(defaults)}; tuned "
        f"{' < '.join(order)}: {verdict}. Ranks are of the means; the paired intervals (against "
        f"the default row, against {TUNED_REFERENCE}) say which gaps the seeds resolve.",
        "",
    ]
    return "\n".join(lines)


def _reference_cells(differences: Mapping[str, PairedDifference], row: str) -> list[str]:
    if row == TUNED_REFERENCE:
        return ["(reference)", MISSING]
    difference = differences.get(row)
    if difference is None or not difference.n:
        return [MISSING, MISSING]
    return [format_difference(difference), difference.verdict(TUNED_REFERENCE)]


def tuned_document(metrics_by_strategy: Mapping[str, Metrics], names: Sequence[str]) -> dict[str, Any]:
    """The section's numbers for ``benchmark_paired.json``: per tuned row, Δ(tuned) − Δ(default)."""
    differences = tuned_differences(metrics_by_strategy, names)
    at_equal_tuning = against_tuned_reference(metrics_by_strategy, names)
    return {
        row: {
            **difference.as_dict(row.removesuffix(TUNED_SUFFIX)),
            **(
                {"vs_tuned_reference": at_equal_tuning[row].as_dict(TUNED_REFERENCE)}
                if row in at_equal_tuning
                else {}
            ),
        }
        for row, difference in differences.items()
    }
