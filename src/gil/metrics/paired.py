"""Paired differences to a reference strategy over seeds, with a two-sided t interval.

Why paired: every strategy is trained on the same seeds as the reference (``finetune``): the same
split, the same shared base stage per seed, the same evaluation. Seed ``s`` of a strategy and seed
``s`` of the reference therefore share everything a seed decides before stage 1, and the difference
seed by seed removes that shared variation, which comparing ``mean ± std`` of each strategy keeps.
So seeds are matched by name, never by position, and a seed missing (or non-finite) on either side
is left out.

For ``n`` matched seeds with differences ``d_s = strategy_s − reference_s``: the mean ``d̄``, the
sample sd ``s`` (``ddof=1``) and the interval ``d̄ ± t_{0.975, n−1} · s / √n`` (95 %, ``n − 1``
degrees of freedom; NaN bounds when ``n < 2``). A difference is *resolved* only when its interval
excludes 0. Pure numpy/scipy (no torch, no MLflow), so reports and the leaderboard share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

REFERENCE = "finetune"
"""The strategy every other one is compared with: no protection against forgetting."""

CONFIDENCE = 0.95

_MINUS = "\u2212"  # a typographic minus, so signed columns line up with the plus sign


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``strategy − reference`` over ``n`` matched seeds and its t interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def direction(self) -> str | None:
        """``lower`` / ``higher`` when the interval lies wholly below / above 0, else None (also
        without an interval: NaN bounds compare False)."""
        if self.high < 0:
            return "lower"
        if self.low > 0:
            return "higher"
        return None

    def verdict(self, reference: str = REFERENCE) -> str:
        """``resolved: lower than <reference>`` / ``resolved: higher than ...`` when the interval
        excludes 0, else ``unresolved`` (also with fewer than two seeds: no interval at all)."""
        direction = self.direction
        return "unresolved" if direction is None else f"resolved: {direction} than {reference}"

    def as_dict(self, reference: str = REFERENCE) -> dict[str, Any]:
        """JSON-ready fields (NaN as None) with the verdict."""
        return {
            "mean": _or_none(self.mean),
            "low": _or_none(self.low),
            "high": _or_none(self.high),
            "n": self.n,
            "verdict": self.verdict(reference),
        }


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _finite(value: Any) -> float | None:
    """A finite float, or None for null / NaN / infinities / non-numbers (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def t_quantile(probability: float, dof: int) -> float:
    """Student's t quantile; scipy is imported here, not with :mod:`gil.metrics` (import time)."""
    from scipy.stats import t

    return float(t.ppf(probability, dof))


def paired_difference(
    values: Mapping[str, Any], reference: Mapping[str, Any], confidence: float = CONFIDENCE
) -> PairedDifference:
    """The mean paired difference ``values − reference`` over the seeds finite in both, and its
    two-sided ``confidence`` t interval with ``n − 1`` degrees of freedom.

    ``values`` and ``reference`` map a seed (its name, e.g. ``"0"``) to that seed's value. With no
    matched seed every field is NaN (``n = 0``); with one the bounds are NaN.
    """
    seeds = sorted(seed for seed in values.keys() & reference.keys())
    pairs = [(_finite(values[seed]), _finite(reference[seed])) for seed in seeds]
    diffs = np.array([a - b for a, b in pairs if a is not None and b is not None], dtype=float)
    n = int(diffs.size)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)
    mean = float(diffs.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n)
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(diffs.std(ddof=1)) / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n)


def differences_to_reference(
    values_by_strategy: Mapping[str, Mapping[str, Any]], reference: str = REFERENCE
) -> dict[str, PairedDifference]:
    """Every strategy but ``reference`` against it, seed by seed; strategies without a matched
    seed are left out. Empty when ``reference`` is absent."""
    if reference not in values_by_strategy:
        return {}
    base = values_by_strategy[reference]
    result = {}
    for name, values in values_by_strategy.items():
        if name != reference:
            difference = paired_difference(values, base)
            if difference.n:
                result[name] = difference
    return result


def format_signed(value: float) -> str:
    """``+0.012`` / ``−0.004`` (typographic minus); ``–`` for NaN. A value that rounds to zero is
    ``+0.000``: a sign below the printed precision (e.g. a rounding residue) means nothing."""
    if math.isnan(value):
        return "–"
    return f"{round(value, 3) + 0.0:+.3f}".replace("-", _MINUS)  # + 0.0 turns −0.0 into 0.0


def format_interval(mean: float, low: float, high: float) -> str:
    """``+0.012 [−0.004, +0.028]``; ``+0.012 [–, –]`` without bounds (one seed)."""
    return f"{format_signed(mean)} [{format_signed(low)}, {format_signed(high)}]"


def format_difference(difference: PairedDifference | None) -> str:
    """:func:`format_interval` of a paired difference; ``–`` when there is none (no matched seed)."""
    if difference is None or difference.n == 0:
        return "–"
    return format_interval(difference.mean, difference.low, difference.high)


# ----------------------------------------------------------------------------------------------------
# The quantities compared in the reports, read from a strategy's per-seed summaries


@dataclass(frozen=True)
class Quantity:
    """A per-seed value to compare: its key in ``paired.json``, its column title, and where it sits in
    a per-seed summary of ``metrics/<strategy>.json`` (``per_seed.<seed>``)."""

    name: str
    title: str
    path: tuple[str, ...]

    def per_seed(self, per_seed: Mapping[str, Any]) -> dict[str, Any]:
        """``seed -> value`` over ``per_seed`` summaries; seeds where the path is missing are left out."""
        result = {}
        for seed, summary in per_seed.items():
            value: Any = summary
            for key in self.path:
                value = value.get(key) if isinstance(value, Mapping) else None
            if value is not None:
                result[str(seed)] = value
        return result


PAIRED_QUANTITIES = (
    Quantity("delta", "Δ", ("regression", "delta")),
    Quantity("final_mse", "final MSE", ("regression", "final_mse")),
    # plasticity = mean over k of R[k][k]: the loss on each new gene set right after its stage.
    Quantity("new_gene_mse", "new-gene MSE", ("regression", "plasticity")),
    Quantity("probe_delta", "probe Δ", ("probe", "delta")),
    # The probe on each task's own gene set alone (evaluate.OWN_GENES), mean Δ over tasks.
    Quantity("own_genes_probe_delta", "own-gene probe Δ", ("probe", "own_genes", "delta")),
)
"""What the report compares with the reference, in column order; extend here (a missing key gives
no value, never an error)."""


def paired_quantities(
    per_seed_by_strategy: Mapping[str, Mapping[str, Any]],
    reference: str = REFERENCE,
    quantities: tuple[Quantity, ...] = PAIRED_QUANTITIES,
) -> dict[str, dict[str, PairedDifference]]:
    """Per quantity name: every strategy's paired difference to ``reference`` (see
    :func:`differences_to_reference`); a quantity no strategy can be compared on is left out."""
    result = {}
    for quantity in quantities:
        values = {name: quantity.per_seed(per_seed) for name, per_seed in per_seed_by_strategy.items()}
        differences = differences_to_reference(values, reference)
        if differences:
            result[quantity.name] = differences
    return result
