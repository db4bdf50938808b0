"""Gene distillation: keep the predictions of the previous stage's model on the genes it knows.

At stage ``k ≥ 1`` a frozen copy of the stage ``k-1`` model is the teacher. It sees each batch with
the genes it does not know removed (see :func:`teacher_view`). Two terms, both ``λ · MSE(student,
teacher)`` of the MLM predictions and never on the new genes ``Tk``:

- ``distill``: the masked positions of the genes a cell carries that the teacher knows (in practice
  ``B``: a stage-``k`` cell carries ``B ∪ Tk`` only). Masked positions are where a prediction is the
  model's knowledge of a gene rather than a copy of its input value. This is the paper's literal
  reading, and all there is with ``queries_per_cell: 0``.
- ``distill_query`` (``queries_per_cell > 0``, stages ``k ≥ 2``): query tokens for genes of the earlier
  sets ``T1..T(k-1)`` that the cell does not carry, appended with masked values
  (:func:`gil.data.batches.with_gene_queries`); no other token attends to them. This is
  Learning-without-Forgetting's reading, old outputs on new inputs: the only way the teacher's
  knowledge of the genes whose forgetting Δ measures can reach the student.

Optionally ``cls_weight · MSE`` of the ``<cls>`` embeddings as well (feature distillation).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from pydantic import Field

from gil.data.batches import Batch, with_gene_queries
from gil.model import GeneTransformer, ModelOutput
from gil.strategies.base import StageContext, Strategy
from gil.strategies.functional import distillation_loss, known_positions, teacher_view


class Distill(Strategy):
    """Output distillation from the previous stage's frozen model."""

    kind = "distill"

    class Params(Strategy.Params):
        lam: float = Field(5.0, ge=0, description="weight λ of the prediction distillation terms")
        cls_weight: float = Field(0.0, ge=0, description="weight of the <cls> embedding distillation term")
        queries_per_cell: int = Field(
            0,
            ge=0,
            description="query tokens per cell for genes of earlier stage sets it does not carry "
            "(0: distil only the genes a cell carries, the paper's literal reading)",
        )

    def __init__(self, params: Params):
        super().__init__(params)
        self.teacher: GeneTransformer | None = None
        self.query_tokens = np.zeros(0, dtype=np.int64)

    def before_stage(self, ctx: StageContext) -> None:
        if ctx.stage == 0:
            return
        self.teacher = copy.deepcopy(ctx.model).eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        sets = ctx.builder.set_of_token
        self.query_tokens = np.flatnonzero((sets >= 1) & (sets < ctx.stage))

    def augment_batch(self, ctx: StageContext, batch: Batch, rng: np.random.Generator) -> Batch:
        if self.teacher is None or self.params.lam == 0:
            return batch
        sets = ctx.builder.set_of_token[self.query_tokens].astype(np.int64)
        return with_gene_queries(batch, self.query_tokens, sets, self.params.queries_per_cell, rng)

    def loss_terms(self, ctx: StageContext, batch: Batch, output: ModelOutput) -> dict[str, torch.Tensor]:
        if self.teacher is None or (self.params.lam == 0 and self.params.cls_weight == 0):
            return {}
        known = ctx.stage - 1
        with torch.no_grad():
            target = ctx.forward(teacher_view(batch, known), self.teacher)
        positions = known_positions(batch, known) & batch.masked
        terms = {"distill": self.params.lam * distillation_loss(output.mlm, target.mlm, positions)}
        if self.params.queries_per_cell > 0 and len(self.query_tokens) > 0:
            query_gap = distillation_loss(output.mlm, target.mlm, batch.queries)
            terms["distill_query"] = self.params.lam * query_gap
        if self.params.cls_weight > 0:
            terms["distill_cls"] = self.params.cls_weight * torch.nn.functional.mse_loss(
                output.cell, target.cell
            )
        return terms

    def after_stage(self, ctx: StageContext) -> None:
        self.teacher = None
        self.query_tokens = np.zeros(0, dtype=np.int64)
