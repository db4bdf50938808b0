"""In-memory processed data, splits and configs for fast tests of the model, strategies and trainer.

Independent of ``gil prepare``/``gil split`` so that a bug there cannot hide one here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from gil.config import Config, config_from_dict
from gil.data.layout import EVAL_STAGE, ProcessedData, Split, Task


def make_processed(
    n_cells: int = 160, n_genes: int = 40, density: float = 0.5, seed: int = 0, gene_levels: bool = False
) -> ProcessedData:
    """A random CSR matrix of positive log1p-like values with two cell labels.

    ``gene_levels``: every gene has its own typical count (1 to 30), so a model must know a gene's
    identity to predict its value (otherwise only the cell's label matters).
    """
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n_cells)
    dense = rng.random((n_cells, n_genes)) < density
    dense[:, 0] = True  # every cell expresses at least one base gene
    level = rng.uniform(1, 30, n_genes) if gene_levels else np.full(n_genes, 3.0)
    counts = rng.poisson(np.broadcast_to(level, (n_cells, n_genes)))
    values = np.where(dense, np.log1p(counts + 1 + kind[:, None] * 2), 0)
    indptr = np.concatenate([[0], np.cumsum(dense.sum(axis=1))]).astype(np.int64)
    rows, cols = np.nonzero(dense)
    genes = pd.DataFrame(
        {"gene": [f"g{j:03d}" for j in range(n_genes)], "n_cells": dense.sum(0), "total": values.sum(0)}
    )
    cells = pd.DataFrame(
        {
            "cell": [f"c{i:03d}" for i in range(n_cells)],
            "n_genes": dense.sum(1),
            "kind": [f"k{k}" for k in kind],
        }
    )
    return ProcessedData(
        indptr=indptr,
        indices=cols.astype(np.int32),
        values=values[rows, cols].astype(np.float32),
        genes=genes,
        cells=cells,
        summary={"synthetic": True},
    )


def make_split(data: ProcessedData, n_stages: int = 2, genes_per_stage: int = 6, seed: int = 0) -> Split:
    """Base genes first, then ``n_stages`` sets; 20% eval cells, half of the rest base."""
    rng = np.random.default_rng(seed)
    names = data.gene_names
    n_base = len(names) - n_stages * genes_per_stage
    sets = [("B", names[:n_base])] + [
        (f"T{k}", names[n_base + (k - 1) * genes_per_stage : n_base + k * genes_per_stage])
        for k in range(1, n_stages + 1)
    ]
    order = rng.permutation(data.n_cells)
    n_eval = data.n_cells // 5
    stages = np.empty(data.n_cells, dtype=np.int16)
    stages[order[:n_eval]] = EVAL_STAGE
    rest = order[n_eval:]
    n_base_cells = len(rest) // 2
    stages[rest[:n_base_cells]] = 0
    for k, chunk in enumerate(np.array_split(rest[n_base_cells:], n_stages), start=1):
        stages[chunk] = k
    eval_rows = np.sort(order[:n_eval])
    labels = data.cells["kind"].to_numpy()[eval_rows]
    classes = sorted(set(labels))
    task = Task(
        name="kind",
        label="kind",
        learned_at=1,
        classes=classes,
        cells=eval_rows,
        targets=np.array([classes.index(x) for x in labels]),
    )
    return Split(method="test", gene_sets=sets, cell_stages=stages, tasks=[task], summary={})


def make_config(**overrides: dict) -> Config:
    """A tiny config; ``overrides`` replace whole sections (e.g. ``train={...}``)."""
    raw = {
        "dataset": {"name": "test", "path": "unused.h5ad"},
        "model": {"preset": "tiny"},
        "train": {
            "seeds": [0],
            "epochs_per_stage": 2,
            "batch_size": 16,
            "lr": 0.003,
            "warmup_steps": 2,
            "device": "cpu",
        },
        # One C and 3 folds keep the probes quick (their protocol is pinned in test_probes.py).
        "evaluate": {"seed": 7, "repeats": 1, "batch_size": 32, "probe": {"folds": 3, "c_grid": [1.0]}},
        "strategies": {
            "finetune": {"kind": "finetune"},
            "joint": {"kind": "joint"},
            "replay": {"kind": "replay", "buffer_size": 20, "mix": 0.25},
            "distill": {"kind": "distill", "lam": 1.0},
            "ewc": {"kind": "ewc", "lam": 10.0, "fisher_batches": 2},
        },
        "tracking": {"enabled": False},
    }
    raw.update(overrides)
    return config_from_dict(raw)


def model_weights(trainer) -> dict[str, torch.Tensor]:  # noqa: ANN001 - a gil.train.loop.StageTrainer
    """A copy of the trainer's model weights (to compare runs)."""
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical weight dictionaries (same keys, equal tensors)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def enter_stage(trainer, stage: int):  # noqa: ANN001, ANN201 - StageTrainer -> (StageContext, GeneTransformer)
    """Train stages ``0..stage-1``, start ``stage`` as the loop does, then move the weights off the
    previous stage's model. Returns the stage's context and an untouched copy of the previous stage's
    model (the expected teacher)."""
    import copy

    for earlier in range(stage):
        trainer.train_stage(earlier)
    previous = copy.deepcopy(trainer.model).eval()
    ctx = trainer._context(stage)
    trainer.strategy.before_stage(ctx)
    trainer.model.grow_vocabulary(trainer.vocab.size_through(stage), torch.Generator().manual_seed(0))
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    return ctx, previous
