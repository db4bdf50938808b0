"""Replay + distillation on the replayed genes (this project's method).

Why: plain replay rehearses an earlier gene set ``Tj`` only through the few buffered cells of stage
``j`` and their *true* values. Distillation alone (paper) never sees ``Tj`` after stage ``j``: stage
``k`` cells carry only ``B ∪ Tk``, so the teacher's knowledge of ``Tj`` is never queried. Combining
them at the same memory (the same buffer) lets the frozen previous-stage teacher supervise *every*
position of a gene it knows, including the ``Tj`` genes of replayed cells and the base genes of
current cells, which gives a dense, low-variance target for exactly the genes that are forgotten.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from gil.data.batches import Batch
from gil.model import ModelOutput
from gil.strategies.base import StageContext, Strategy
from gil.strategies.distill import Distill
from gil.strategies.replay import Replay


class ReplayDistill(Strategy):
    """Replay's batches with distillation's terms (see the module docstring)."""

    kind = "replay_distill"

    class Params(Replay.Params, Distill.Params):
        lam: float = Field(1.0, ge=0, description="weight λ of the prediction distillation term")

    def __init__(self, params: Params):
        super().__init__(params)
        self.replay = Replay(Replay.Params(**params.model_dump(include=set(Replay.Params.model_fields))))
        self.distill = Distill(Distill.Params(**params.model_dump(include=set(Distill.Params.model_fields))))

    def check_inputs(self, cells: pd.DataFrame) -> None:
        self.replay.check_inputs(cells)

    def before_stage(self, ctx: StageContext) -> None:
        self.distill.before_stage(ctx)

    def epoch_batches(self, ctx: StageContext, rng: np.random.Generator) -> list[np.ndarray]:
        return self.replay.epoch_batches(ctx, rng)

    def augment_batch(self, ctx: StageContext, batch: Batch, rng: np.random.Generator) -> Batch:
        return self.distill.augment_batch(ctx, batch, rng)

    def loss_terms(self, ctx: StageContext, batch: Batch, output: ModelOutput) -> dict[str, torch.Tensor]:
        return self.distill.loss_terms(ctx, batch, output)

    def after_stage(self, ctx: StageContext) -> None:
        self.replay.after_stage(ctx)
        self.distill.after_stage(ctx)

    def state_dict(self) -> dict[str, Any]:
        return self.replay.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replay.load_state_dict(state)
