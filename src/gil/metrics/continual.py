"""Continual-learning metrics over a gene-wise results matrix.

Conventions (shared by every function here):

- ``R`` has shape ``(n + 1, n + 1)``: row ``i`` is the evaluation *after stage i* (stage 0 is the base
  stage, stages ``1..n`` are incremental); column ``j`` is gene set ``j`` (column 0 is the base genes
  ``B``, column ``j >= 1`` is ``T_j``, learned at stage ``j``). Entries with ``j > i`` are NaN (``None``
  in lists, as JSON ``null``): the gene set is not learned yet.
- Entries are LOSSES (masked-value MSE): lower is better. Every forgetting-type metric is signed so that
  *larger = more forgetting / worse*, except :func:`backward_transfer`, which keeps Lopez-Paz & Ranzato's
  sign (negative = forgetting), and :func:`accuracy_delta`, which is about accuracies (higher = better).
- ``n >= 1`` is required (at least one incremental stage); a metric that needs more stages than that
  returns NaN instead of raising, so a summary of a short run is still complete.

All functions are pure: they accept nested lists or arrays, copy them, validate the shape and NaN pattern
(raising :class:`ValueError` with a message naming the problem) and return plain ``float`` values or new
arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

METRIC_NAMES = ("delta", "base_delta", "bwt", "forgetting", "final_mse", "plasticity", "intransigence")
"""The keys of :func:`summarize`, in a stable order."""


def as_results_matrix(results: ArrayLike, name: str = "R") -> NDArray[np.float64]:
    """Return a validated float copy of a results matrix (``None`` becomes NaN).

    Raises :class:`ValueError` naming ``name`` and the first offending entry unless the matrix is square,
    at least 2x2, finite on and below the diagonal and NaN above it.
    """
    try:
        matrix = np.array(results, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: not a numeric matrix ({error})") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name}: expected a square (n+1)x(n+1) matrix, got shape {matrix.shape}")
    if matrix.shape[0] < 2:
        raise ValueError(f"{name}: needs the base stage and at least one incremental stage (2x2 or larger)")
    lower = np.tril(np.ones(matrix.shape, dtype=bool))
    if not np.isfinite(matrix[lower]).all():
        rows, cols = np.nonzero(lower & ~np.isfinite(matrix))
        raise ValueError(
            f"{name}[{rows[0]}][{cols[0]}] is {matrix[rows[0], cols[0]]}: entries on and below the "
            "diagonal (gene sets learned by that stage) must be finite"
        )
    if not np.isnan(matrix[~lower]).all():
        rows, cols = np.nonzero(~lower & ~np.isnan(matrix))
        raise ValueError(
            f"{name}[{rows[0]}][{cols[0]}] is {matrix[rows[0], cols[0]]}: entries above the diagonal "
            "(gene sets not learned yet) must be NaN/None"
        )
    return matrix


def _n_stages(matrix: NDArray[np.float64]) -> int:
    """Number of incremental stages ``n`` of a validated ``(n+1)x(n+1)`` matrix."""
    return matrix.shape[0] - 1


def delta_per_set(results: ArrayLike) -> NDArray[np.float64]:
    """The forgetting of each earlier stage gene set: ``[R[n][j] - R[j][j] for j = 1..n-1]``.

    With more than two stages the paper's Δ averages these; a reader also wants to see whether the
    oldest set is forgotten most. Empty when ``n < 2``.
    """
    matrix = as_results_matrix(results)
    n = _n_stages(matrix)
    return matrix[n, 1:n] - np.diagonal(matrix)[1:n]


def delta(results: ArrayLike) -> float:
    """The paper's forgetting Δ on the stage gene sets other than the last.

    ``Δ = mean_{j=1..n-1} (R[n][j] - R[j][j])`` (the mean of :func:`delta_per_set`): loss on ``T_j``
    after the last stage minus loss on ``T_j`` right after stage ``j``. Larger = more forgetting;
    negative = the loss kept improving. ``T_n`` is excluded (it was just learned) and so is ``B``
    (see :func:`base_delta`). NaN when ``n < 2``: with a single incremental stage there is no earlier
    stage gene set.
    """
    per_set = delta_per_set(results)
    return float(np.mean(per_set)) if per_set.size else math.nan


def base_delta(results: ArrayLike) -> float:
    """Forgetting of the base genes: ``R[n][0] - R[0][0]`` (larger = more forgetting)."""
    matrix = as_results_matrix(results)
    return float(matrix[-1, 0] - matrix[0, 0])


def backward_transfer(results: ArrayLike) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, 2017) adapted to losses.

    ``BWT = mean_{j=0..n-1} (R[j][j] - R[n][j])`` over ``B`` and every gene set but the last.
    The original is ``mean(A[n][j] - A[j][j])`` on accuracies; for losses the difference is flipped so
    that the sign keeps its meaning: negative BWT = forgetting, positive = later stages helped.
    """
    matrix = as_results_matrix(results)
    n = _n_stages(matrix)
    return float(np.mean(np.diagonal(matrix)[:n] - matrix[n, :n]))


def forgetting(results: ArrayLike) -> float:
    """Average forgetting (Chaudhry et al., 2018) adapted to losses.

    ``F = mean_{j=0..n-1} (R[n][j] - min_{l=j..n-1} R[l][j])``: final loss on gene set ``j`` minus the
    best (lowest) loss it had at any *earlier* evaluation since it was learned. Larger = more forgetting.
    Because the minimum excludes the final row, ``F`` can be negative (the final model is better than
    every earlier one on that gene set); it is ``>= 0`` only when no gene set improved at the last stage.
    It is never smaller than ``-BWT`` (the best earlier loss is at most the loss right after learning).
    """
    matrix = as_results_matrix(results)
    n = _n_stages(matrix)
    # Column j of the first n rows holds NaN above the diagonal, so nanmin runs over rows l = j..n-1.
    best_earlier = np.nanmin(matrix[:n, :n], axis=0)
    return float(np.mean(matrix[n, :n] - best_earlier))


def final_loss(results: ArrayLike) -> float:
    """Mean loss over all gene sets after the last stage: ``mean_{j=0..n} R[n][j]``."""
    matrix = as_results_matrix(results)
    return float(np.mean(matrix[-1]))


def plasticity_per_stage(results: ArrayLike) -> NDArray[np.float64]:
    """Loss on the new genes right after learning them: the vector ``[R[k][k] for k = 1..n]``."""
    matrix = as_results_matrix(results)
    return np.diagonal(matrix)[1:].copy()


def plasticity(results: ArrayLike) -> float:
    """``mean_{k=1..n} R[k][k]``: how well new genes are learned (a loss: lower = more plastic)."""
    return float(np.mean(plasticity_per_stage(results)))


def intransigence(results: ArrayLike, joint_results: ArrayLike) -> float:
    """Intransigence (Chaudhry et al., 2018) against the joint-training oracle, for losses.

    ``I = mean_{k=1..n} (R[k][k] - R_joint[k][k])``. Larger = less able than the oracle to learn the new
    genes; negative = learns them better than the oracle. Both matrices must have the same shape.
    """
    matrix = as_results_matrix(results)
    joint = as_results_matrix(joint_results, name="R_joint")
    if joint.shape != matrix.shape:
        raise ValueError(f"R_joint has shape {joint.shape} but R has shape {matrix.shape}")
    return float(np.mean(np.diagonal(matrix)[1:] - np.diagonal(joint)[1:]))


def accuracy_delta(accuracies: ArrayLike, learned_at: int) -> float:
    """The paper's Δ for one probe task: ``A[n] - A[learned_at]``, with ``A`` the accuracies after stages
    ``0..n`` (higher = better).

    Negative = forgetting (the paper's sign, e.g. baseline −1.82 points). Entries other than the last and
    ``A[learned_at]`` may be NaN. ``learned_at == n`` gives 0.
    """
    values = np.array(accuracies, dtype=float)
    if values.ndim != 1 or values.size < 1:
        raise ValueError(f"accuracies: expected a non-empty vector over stages, got shape {values.shape}")
    if isinstance(learned_at, bool) or not isinstance(learned_at, int | np.integer):
        raise ValueError(f"learned_at must be an integer stage index, got {learned_at!r}")
    if not 0 <= learned_at < values.size:
        raise ValueError(f"learned_at={learned_at} is outside stages 0..{values.size - 1}")
    for stage in (learned_at, values.size - 1):
        if not np.isfinite(values[stage]):
            raise ValueError(f"accuracies[{stage}] is {values[stage]}: it must be finite")
    return float(values[-1] - values[learned_at])


def summarize(results: ArrayLike, joint_results: ArrayLike | None = None) -> dict[str, float]:
    """All matrix metrics by their stable names (:data:`METRIC_NAMES`).

    ``final_mse`` is :func:`final_loss`; ``bwt`` is :func:`backward_transfer`. Undefined values are NaN:
    ``delta`` when ``n < 2``, ``intransigence`` when ``joint_results`` is None. Convert NaN to ``None``
    before writing JSON (``gil.files.write_json`` refuses NaN).
    """
    return {
        "delta": delta(results),
        "base_delta": base_delta(results),
        "bwt": backward_transfer(results),
        "forgetting": forgetting(results),
        "final_mse": final_loss(results),
        "plasticity": plasticity(results),
        "intransigence": math.nan if joint_results is None else intransigence(results, joint_results),
    }


def mean_std(values: Sequence[float | None] | ArrayLike) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds, ignoring NaN/None.

    The std uses ``ddof=1`` (an unbiased variance estimate from a few seeds); with one remaining value it
    is 0.0, and with none both results are NaN.
    """
    array = np.array(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"values: expected a vector over seeds, got shape {array.shape}")
    present = array[~np.isnan(array)]
    if present.size == 0:
        return math.nan, math.nan
    if present.size == 1:
        return float(present[0]), 0.0
    return float(np.mean(present)), float(np.std(present, ddof=1))


def skill(results: ArrayLike, baseline: ArrayLike) -> NDArray[np.float64]:
    """Skill of every entry against a reference loss per gene set: ``S[i][j] = 1 − R[i][j] / b[j]``.

    ``b[j]`` is the reference predictor's loss on exactly the positions of gene set ``j`` (the
    per-gene-mean predictor, :mod:`gil.metrics.reference`). Higher is better: 0 = no better than
    the reference, 1 = perfect, negative = worse than the reference. NaN above the diagonal.
    """
    matrix = as_results_matrix(results)
    reference = np.array(baseline, dtype=float)
    if reference.shape != (matrix.shape[0],) or not (np.isfinite(reference).all() and (reference > 0).all()):
        raise ValueError(
            f"baseline: expected {matrix.shape[0]} positive finite losses (one per gene set), got {reference}"
        )
    return 1.0 - matrix / reference[None, :]


def new_set_skill(results: ArrayLike, baseline: ArrayLike) -> float:
    """``mean_{k=1..n} S[k][k]``: how well each new gene set was learned, right after its stage."""
    return float(np.mean(np.diag(skill(results, baseline))[1:]))


def final_skill(results: ArrayLike, baseline: ArrayLike) -> float:
    """``mean_{j=0..n} S[n][j]``: skill of the final model over every gene set."""
    return float(np.mean(skill(results, baseline)[-1]))
