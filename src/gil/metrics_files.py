"""The metrics documents of ``gil evaluate`` as the report, its figures and the suite read them:
loading, validation, the order strategies are listed in, and access to their values.

Why a module of its own: the report (:mod:`gil.report`), its figures (:mod:`gil.figures`) and the
suite (:mod:`gil.suite`) read the same documents and must refuse the same malformed ones.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gil.errors import GilError
from gil.metrics.continual import as_results_matrix

Metrics = Mapping[str, Any]

_BASELINE_KINDS = frozenset({"finetune"})  # listed first: what every method is compared against
_REFERENCE_KINDS = frozenset({"joint"})  # listed last: the upper bound, not a continual method
_STRATEGY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(@tuned)?")  # file-name safe; a tuned row's suffix
MISSING = "–"


def check_metrics(metrics: Any, source: str) -> None:
    """Raise :class:`GilError` naming ``source`` unless ``metrics`` has the structure this module reads."""
    if not isinstance(metrics, Mapping):
        raise GilError(f"{source}: expected a JSON object with keys 'strategy', 'gene_sets', 'regression'")
    name = metrics.get("strategy")
    if not isinstance(name, str) or not _STRATEGY_NAME.fullmatch(name):
        raise GilError(
            f"{source}: 'strategy' must be letters, digits, '_', '.', '-' (+ '@tuned'); got {name!r}"
        )
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
    for task, result in probe_tasks(metrics, source).items():
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


def probe_tasks(metrics: Metrics, source: str) -> Mapping[str, Any]:
    """The probe results by task; empty when the metrics have no probe section."""
    probe = metrics.get("probe")
    tasks = probe.get("tasks") if isinstance(probe, Mapping) else None
    if probe is not None and not isinstance(tasks, Mapping):
        raise GilError(f"{source}: 'probe' must be null or an object with a 'tasks' object")
    return tasks or {}


def checked_names(metrics_by_strategy: Mapping[str, Metrics]) -> list[str]:
    """Validate every strategy's metrics and their common gene sets; return names in report order."""
    if not metrics_by_strategy:
        raise GilError("no strategy metrics to report; run the evaluate step first")
    for name, metrics in metrics_by_strategy.items():
        check_metrics(metrics, f"metrics of {name!r}")
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
        delta_mean, _ = stat_of(metrics["regression"], "delta")
        return group, math.inf if delta_mean is None or group != 1 else delta_mean, name

    return sorted(metrics_by_strategy, key=key)


def matrix_of(metrics: Metrics, key: str = "matrix") -> NDArray[np.float64] | None:
    """``regression.<key>`` as a float array with NaN for null, or None when absent."""
    values = metrics["regression"].get(key)
    return None if values is None else np.array(values, dtype=float)


def vector_of(values: Sequence[float | None] | None) -> NDArray[np.float64] | None:
    return None if values is None else np.array(values, dtype=float)


def number_or_none(value: Any) -> float | None:
    """A finite float, or None for null / NaN / non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def stat_of(section: Mapping[str, Any], name: str) -> tuple[float | None, float | None]:
    """``(<name>_mean, <name>_std)`` of a metrics section, falling back to ``<name>`` for the mean."""
    mean = number_or_none(section.get(f"{name}_mean", section.get(name)))
    return mean, number_or_none(section.get(f"{name}_std"))


def format_stat(mean: float | None, std: float | None = None) -> str:
    """``0.123 ± 0.010``; just the mean when there is no std; ``–`` when there is no mean."""
    if mean is None:
        return MISSING
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def gene_mean_mse_of(metrics: Metrics) -> NDArray[np.float64] | None:
    """The per-gene-mean predictor's loss per gene set (``reference.gene_mean_mse``), if present."""
    reference = metrics.get("reference")
    return vector_of(reference.get("gene_mean_mse")) if isinstance(reference, Mapping) else None


def probe_reference_of(metrics: Metrics) -> Mapping[str, Any]:
    """Per task: majority rate and raw-expression probe accuracies (``reference.probe``), or empty."""
    reference = metrics.get("reference")
    return reference.get("probe", {}) if isinstance(reference, Mapping) else {}


def stage_labels(n_rows: int) -> list[str]:
    return ["0 (base)", *(str(stage) for stage in range(1, n_rows))]


def read_json_document(path: Path, what: str) -> Any:
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
        metrics = read_json_document(path, "metrics")
        check_metrics(metrics, str(path))
        if metrics["strategy"] in metrics_by_strategy:
            raise GilError(f"{path}: strategy {metrics['strategy']!r} appears in more than one metrics file")
        metrics_by_strategy[metrics["strategy"]] = metrics
    checked_names(metrics_by_strategy)
    return metrics_by_strategy
