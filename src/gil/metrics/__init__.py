"""Metrics over gene-wise results matrices and probe accuracies.

The pure functions live in :mod:`gil.metrics.continual` (and the paired comparison with the reference
strategy in :mod:`gil.metrics.paired`) and are re-exported here. This package must not
import torch at import time, so reports and summaries can be computed without the model stack.
"""

from __future__ import annotations

from gil.metrics.continual import (
    METRIC_NAMES,
    accuracy_delta,
    as_results_matrix,
    backward_transfer,
    base_delta,
    delta,
    delta_per_set,
    final_loss,
    final_skill,
    forgetting,
    intransigence,
    mean_std,
    new_set_skill,
    plasticity,
    plasticity_per_stage,
    skill,
    summarize,
)
from gil.metrics.paired import PairedDifference, differences_to_reference, paired_difference

__all__ = [
    "METRIC_NAMES",
    "PairedDifference",
    "accuracy_delta",
    "as_results_matrix",
    "backward_transfer",
    "base_delta",
    "delta",
    "delta_per_set",
    "differences_to_reference",
    "final_loss",
    "final_skill",
    "forgetting",
    "intransigence",
    "mean_std",
    "new_set_skill",
    "paired_difference",
    "plasticity",
    "plasticity_per_stage",
    "skill",
    "summarize",
]
