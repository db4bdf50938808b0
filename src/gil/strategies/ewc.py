"""Online elastic weight consolidation (Schwarz et al. 2018 variant of Kirkpatrick et al. 2017).

After each stage the diagonal empirical Fisher ``F_k`` is estimated on that stage's cells and merged
``F ← γ·F + F_k``; the anchor ``θ*`` becomes the stage's final weights. During later stages the term
``λ · ½ Σ F (θ − θ*)²`` pulls the shared weights (and old gene-embedding rows) towards the anchor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from gil.data.batches import Batch
from gil.model import ModelOutput
from gil.strategies.base import StageContext, Strategy, shuffled_batches
from gil.strategies.functional import ewc_penalty, fisher_diagonal


class Ewc(Strategy):
    """Online EWC with a Fisher-weighted quadratic penalty."""

    kind = "ewc"

    class Params(Strategy.Params):
        lam: float = Field(100.0, ge=0, description="strength λ of the penalty")
        gamma: float = Field(1.0, ge=0, le=1, description="decay of the previous Fisher (online EWC)")
        fisher_batches: int = Field(20, ge=1, description="batches used to estimate the Fisher")
        seed: int = Field(0, description="seeds the batches the Fisher is estimated on")

    def __init__(self, params: Params):
        super().__init__(params)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def loss_terms(self, ctx: StageContext, batch: Batch, output: ModelOutput) -> dict[str, torch.Tensor]:
        if not self.anchor or self.params.lam == 0:
            return {}
        return {"ewc": self.params.lam * ewc_penalty(ctx.model, self.fisher, self.anchor)}

    def after_stage(self, ctx: StageContext) -> None:
        rng = np.random.default_rng([self.params.seed, ctx.stage])
        rows = shuffled_batches(ctx.cells_of_stage(ctx.stage), ctx.batch_size, rng)[
            : self.params.fisher_batches
        ]
        batches = (ctx.builder.training_batch(r, rng, ctx.mask_fraction).to(ctx.device) for r in rows)
        ctx.model.train()
        new = fisher_diagonal(ctx.model, batches, lambda b: ctx.task_loss(b, ctx.forward(b)))
        for name, value in new.items():
            old = self.fisher.get(name)
            if old is not None and old.shape != value.shape:
                merged = value.clone()
                merged[: old.shape[0]] += self.params.gamma * old
                value = merged
            elif old is not None:
                value = value + self.params.gamma * old
            self.fisher[name] = value
        self.anchor = {name: p.detach().clone() for name, p in ctx.model.named_parameters()}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": dict(self.fisher), "anchor": dict(self.anchor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher = dict(state["fisher"])
        self.anchor = dict(state["anchor"])
