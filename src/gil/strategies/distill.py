"""Gene distillation (paper): keep the predictions of the previous stage's model on the genes it knows.

At stage ``k ≥ 1`` a frozen copy of the stage ``k-1`` model is the teacher. It sees each batch with
the genes it does not know removed (see :func:`teacher_view`); the term is
``λ · MSE(student, teacher)`` of the MLM predictions on the masked positions of genes the teacher
knows (sets ``0..k-1``), never on the new genes ``Tk``: masked positions are where a prediction is
the model's knowledge of a gene rather than a copy of its input value. Optionally
``cls_weight · MSE`` of the ``<cls>`` embeddings as well (feature distillation).
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field

from gil.data.batches import Batch
from gil.model import GeneTransformer, ModelOutput
from gil.strategies.base import StageContext, Strategy
from gil.strategies.functional import distillation_loss, known_positions, teacher_view


class Distill(Strategy):
    """Output distillation from the previous stage's frozen model."""

    kind = "distill"

    class Params(Strategy.Params):
        lam: float = Field(5.0, ge=0, description="weight λ of the prediction distillation term")
        cls_weight: float = Field(0.0, ge=0, description="weight of the <cls> embedding distillation term")

    def __init__(self, params: Params):
        super().__init__(params)
        self.teacher: GeneTransformer | None = None

    def before_stage(self, ctx: StageContext) -> None:
        if ctx.stage == 0:
            return
        self.teacher = copy.deepcopy(ctx.model).eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)

    def loss_terms(self, ctx: StageContext, batch: Batch, output: ModelOutput) -> dict[str, torch.Tensor]:
        if self.teacher is None or (self.params.lam == 0 and self.params.cls_weight == 0):
            return {}
        known = ctx.stage - 1
        with torch.no_grad():
            target = ctx.forward(teacher_view(batch, known), self.teacher)
        positions = known_positions(batch, known) & batch.masked
        terms = {"distill": self.params.lam * distillation_loss(output.mlm, target.mlm, positions)}
        if self.params.cls_weight > 0:
            terms["distill_cls"] = self.params.cls_weight * torch.nn.functional.mse_loss(
                output.cell, target.cell
            )
        return terms

    def after_stage(self, ctx: StageContext) -> None:
        self.teacher = None
