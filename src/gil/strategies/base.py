"""The strategy interface: a few explicit hooks the stage loop calls, and named loss terms.

Why this shape (learned from Avalanche, Mammoth and scvi-tools): the trainer owns the loop and the
optimizer step, so strategies can be combined; strategies return *named* extra loss terms instead of
mutating shared state, and the trainer sums and logs them by name. Order of calls in stage ``k``:

0. ``check_inputs(cells)`` once, when the trainer is built, before any run is opened;
1. ``before_stage(ctx)``: the model still holds the weights (and vocabulary) of stage ``k-1``;
2. the trainer grows the vocabulary with the genes of ``Tk`` and creates a fresh optimizer;
3. every epoch, ``epoch_batches(ctx, rng)`` gives the cell rows of each batch (replay mixes its
   buffer in here); every batch passes through ``augment_batch(ctx, batch, rng)`` (distillation
   appends query tokens there) before the model sees it, and ``loss_terms(ctx, batch, output)``
   adds terms to the task loss;
4. ``after_stage(ctx)``: buffer update, Fisher information, ...

``state_dict`` holds tensors and plain values only, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from gil.data.batches import Batch, BatchBuilder
from gil.model import GeneTransformer, ModelOutput


@dataclass
class StageContext:
    """What a strategy may look at during stage ``stage``."""

    stage: int
    model: GeneTransformer
    builder: BatchBuilder
    cells: pd.DataFrame
    batch_size: int
    mask_fraction: float
    device: torch.device
    task_loss: Callable[[Batch, ModelOutput], torch.Tensor]

    @property
    def cell_stages(self) -> np.ndarray:
        return self.builder.cell_stages

    def cells_of_stage(self, stage: int) -> np.ndarray:
        return np.flatnonzero(self.cell_stages == stage)

    def forward(self, batch: Batch, model: GeneTransformer | None = None) -> ModelOutput:
        """Run ``model`` (default: the trained model) on a batch already on the device."""
        return (model or self.model)(batch.genes, batch.values, batch.padding, batch.query_mask)


def shuffled_batches(rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rows in a random order, cut into batches (the last one may be smaller)."""
    order = rng.permutation(rows)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class Strategy:
    """Base class: plain fine-tuning on the current stage's cells, no extra terms, no state."""

    kind: ClassVar[str] = ""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, params: BaseModel):
        self.params = params

    def check_inputs(self, cells: pd.DataFrame) -> None:
        """Raise :class:`gil.errors.GilError` if the data cannot serve this strategy (before any work)."""

    def before_stage(self, ctx: StageContext) -> None:
        """Called with the previous stage's model, before the vocabulary grows."""

    def epoch_batches(self, ctx: StageContext, rng: np.random.Generator) -> list[np.ndarray]:
        """The cell rows of each batch of one epoch."""
        return shuffled_batches(ctx.cells_of_stage(ctx.stage), ctx.batch_size, rng)

    def augment_batch(self, ctx: StageContext, batch: Batch, rng: np.random.Generator) -> Batch:
        """The training batch the model sees (on the CPU, before it moves to the device).

        ``rng`` is a stream of its own, seeded by (seed, stage): what a strategy draws here does not
        change the batches, masks or dropout of the other streams.
        """
        return batch

    def loss_terms(self, ctx: StageContext, batch: Batch, output: ModelOutput) -> dict[str, torch.Tensor]:
        """Extra named loss terms added to the task loss."""
        return {}

    def after_stage(self, ctx: StageContext) -> None:
        """Called after the last epoch of a stage."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
