"""The fixed evaluation of a config and split: cells, batches, seeds and probe protocol.

Why a module of its own: the strategies' evaluation (:mod:`gil.evaluate`) and the reference points
(:mod:`gil.reference`) must score on exactly the same positions, masks and probe inputs, so both
take them from here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from gil.config import Config
from gil.data.batches import BatchBuilder
from gil.data.layout import CellSet, ProcessedData, Split, Task
from gil.data.vocab import Vocabulary
from gil.metrics.probes import ProbeResult, cell_embeddings, cross_validated_probe, input_expression
from gil.metrics.regression import RegressionRow, regression_row
from gil.model import GeneTransformer
from gil.train.loop import derive_seed, pick_device


def sample_positions(n_items: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of ``limit`` of ``n_items`` items; all of them when fewer.

    Why: evaluation must cost the same at 10^3 and 10^6 cells. The sample depends on the seed and
    the count alone, so every strategy, seed and stage is scored on the same cells.
    """
    if limit is None or n_items <= limit:
        return np.arange(n_items)
    return np.sort(np.random.default_rng(seed).choice(n_items, size=limit, replace=False))


def capped_task(task: Task, limit: int | None, seed: int) -> Task:
    """``task`` restricted to a seeded sample of at most ``limit`` of its cells (see above)."""
    keep = sample_positions(len(task.cells), limit, seed)
    if len(keep) == len(task.cells):
        return task
    return replace(task, cells=task.cells[keep], targets=task.targets[keep])


class EvaluationInputs:
    """The held-out cells, batch builder, pass seeds and probe settings of one config and split.

    ``cells`` says which held-out cells the regression rows score: ``test`` for everything that
    reports (evaluation, reference, controls), ``validation`` for everything that selects (sweep
    trials). Probes always use the tasks' test cells; nothing that selects runs them. Both are
    capped at a seeded sample (``evaluate.max_cells``, ``evaluate.probe.max_cells``): ``tasks`` are
    the split's tasks so capped, and every caller probes those.
    """

    def __init__(self, config: Config, data: ProcessedData, split: Split, cells: CellSet = "test"):
        self.config, self.split, self.cells = config, split, cells
        self.vocab = Vocabulary.from_split(split)
        self.max_seq = config.evaluate.max_seq or config.model.resolved()["max_seq"]
        self.builder = BatchBuilder(data, self.vocab, split.cell_stages, self.max_seq)
        self.device = pick_device(config.train.device)
        cfg = config.evaluate
        held_out = split.held_out_rows(cells)
        self.eval_rows = held_out[sample_positions(len(held_out), cfg.max_cells, derive_seed(cfg.seed, 7))]
        self.tasks = [
            capped_task(task, cfg.probe.max_cells, derive_seed(cfg.seed, 8, k))
            for k, task in enumerate(split.tasks)
        ]
        self.pass_seeds = [derive_seed(config.evaluate.seed, r) for r in range(config.evaluate.repeats)]

    def regression(self, model: torch.nn.Module, stage: int) -> RegressionRow:
        """Row ``stage`` of ``R`` for ``model`` (which knows the gene sets ``0..stage``)."""
        cfg = self.config.evaluate
        return regression_row(
            model,
            self.builder,
            self.eval_rows,
            stage,
            self.pass_seeds,
            cfg.batch_size,
            self.config.train.mask_fraction,
            self.max_seq,
            self.device,
            cfg.gene_sampling,
        )

    def probe(self, features: np.ndarray, task: Task) -> ProbeResult:
        cfg = self.config.evaluate
        return cross_validated_probe(
            features, task.targets, cfg.probe.folds, cfg.probe.c_grid, cfg.probe.knn_k, cfg.seed
        )

    def embeddings(
        self, model: GeneTransformer, task: Task, stage: int, only_set: int | None = None
    ) -> np.ndarray:
        """``<cls>`` embeddings of the task's cells; ``only_set``: from the genes of that set alone."""
        cfg = self.config.evaluate
        return cell_embeddings(
            model,
            self.builder,
            task.cells,
            stage,
            cfg.seed,
            cfg.batch_size,
            self.max_seq,
            self.device,
            cfg.probe.input,
            only_set,
        )

    def input_expression(self, task: Task, stage: int, only_set: int | None = None) -> np.ndarray:
        cfg = self.config.evaluate
        return input_expression(
            self.builder, task.cells, stage, cfg.seed, cfg.batch_size, self.max_seq, cfg.probe.input, only_set
        )


def reference_settings(config: Config, split: Split) -> dict[str, Any]:
    """What a reference document must have been computed under to serve this evaluation."""
    return {
        "gene_sets": split.set_names,
        "evaluate": config.evaluate.model_dump(mode="json", exclude={"batch_size"}),
        "mask_fraction": config.train.mask_fraction,
        "max_seq": config.evaluate.max_seq or config.model.resolved()["max_seq"],
    }
