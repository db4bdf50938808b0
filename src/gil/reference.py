"""``gil reference``: the reference points every strategy's numbers are read against.

Why a step of its own: they depend on the data, the split and the evaluation settings only, not
on any model, so the pipeline computes them once and every ``gil evaluate`` copies them into its
metrics document. Output ``metrics/reference.json``:

- ``gene_mean_mse`` (one per gene set): the per-gene-mean predictor (:mod:`gil.metrics.gene_mean`)
  scored on exactly the positions and masks of ``R`` (its ``skill`` is ``1 − R / gene_mean_mse``);
- per probe task: ``majority_rate`` and, after every stage, the raw-expression probe
  (``raw_accuracy`` ± ``raw_accuracy_se``, ``raw_knn_accuracy``): the same cross-validated probe on
  the values of exactly the genes the model's input holds, the ceiling its ``<cls>`` probe should
  approach;
- per probe task, ``own_genes_raw_accuracy``: the raw-expression probe on the task's own gene set
  alone (the input of the ``own_genes`` probe), from the stage that learns it (null before);
- ``settings``: what it was computed under (``gil evaluate`` refuses a mismatch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gil.config import Config
from gil.data.layout import ProcessedData, Split
from gil.errors import GilError
from gil.files import finite_or_none
from gil.metrics.gene_mean import GeneMeanPredictor, gene_means
from gil.scoring import EvaluationInputs, reference_settings

NOTE = (
    "gene_mean_mse: each gene's mean value over the training cells that carry it, scored on the "
    "positions and masks of R; raw_accuracy: the cross-validated probe on the probe input's raw values"
)


def _present_columns(matrix: np.ndarray) -> np.ndarray:
    """Columns with a non-zero value (the others carry nothing and only slow the probe down)."""
    return matrix[:, (matrix != 0).any(axis=0)]


def compute_reference(config: Config, data: ProcessedData, split: Split) -> dict[str, Any]:
    """The reference document (see the module docstring)."""
    inputs = EvaluationInputs(config, data, split)
    training_rows = np.flatnonzero(split.cell_stages >= 0)
    predictor = GeneMeanPredictor(gene_means(inputs.builder, training_rows)).to(inputs.device)
    row = inputs.regression(predictor, split.n_stages)
    probes: dict[str, Any] = {}
    for task in inputs.tasks:
        results = [
            inputs.probe(_present_columns(inputs.input_expression(task, stage)), task)
            for stage in range(split.n_stages + 1)
        ]
        own = [
            inputs.probe(_present_columns(inputs.input_expression(task, stage, task.learned_at)), task)
            if 0 < task.learned_at <= stage
            else None
            for stage in range(split.n_stages + 1)
        ]
        probes[task.name] = {
            "majority_rate": task.majority_rate,
            "classes": len(task.classes),
            "cells": len(task.cells),
            "raw_accuracy": [result.accuracy for result in results],
            "raw_accuracy_se": [result.accuracy_se for result in results],
            "raw_knn_accuracy": [result.knn_accuracy for result in results],
            "own_genes_raw_accuracy": [math.nan if r is None else r.accuracy for r in own],
        }
    return finite_or_none(
        {
            "note": NOTE,
            "settings": reference_settings(config, split),
            "gene_mean_mse": row.mse,
            "gene_mean_mse_per_gene": row.mse_per_gene,
            "positions": row.n_positions,
            "probe": probes,
        }
    )


def check_reference(reference: dict[str, Any], split: Split, config: Config) -> None:
    """Refuse a reference document made for another split or other evaluation settings."""
    if reference.get("settings") != finite_or_none(reference_settings(config, split)):
        raise GilError(
            "the reference (gil reference) was computed for another split or other evaluation settings; "
            "rerun `gil reference` (or `dvc repro`)"
        )
