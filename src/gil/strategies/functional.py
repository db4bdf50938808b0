"""The maths of the regularisation strategies, as pure functions of tensors and models."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gil.data.batches import Batch
from gil.data.vocab import PAD


def known_positions(batch: Batch, known_stage: int) -> torch.Tensor:
    """Positions holding a gene of a set ``0..known_stage`` (never ``<cls>`` or padding)."""
    return (batch.gene_sets >= 0) & (batch.gene_sets <= known_stage)


def teacher_view(batch: Batch, known_stage: int) -> Batch:
    """The batch as a teacher that knows sets ``0..known_stage`` sees it: newer genes become padding."""
    unknown = batch.gene_sets > known_stage
    return Batch(
        genes=batch.genes.masked_fill(unknown, PAD),
        values=batch.values.masked_fill(unknown, 0.0),
        targets=batch.targets,
        masked=batch.masked & ~unknown,
        padding=batch.padding | unknown,
        gene_sets=batch.gene_sets,
        rows=batch.rows,
        queries=batch.queries & ~unknown,
    )


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two prediction maps on ``positions`` (zero when there are none)."""
    if not bool(positions.any()):
        return student.sum() * 0.0
    return F.mse_loss(student[positions], teacher[positions])


def fisher_diagonal(
    model: nn.Module, batches: Iterable[Batch], loss_of: Callable[[Batch], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal: the mean over batches of each parameter's squared gradient."""
    sums = {name: torch.zeros_like(p) for name, p in model.named_parameters() if p.requires_grad}
    n_batches = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_of(batch).backward()
        for name, param in model.named_parameters():
            if param.grad is not None:
                sums[name] += param.grad.detach() ** 2
        n_batches += 1
    model.zero_grad(set_to_none=True)
    return {name: total / max(n_batches, 1) for name, total in sums.items()}


def ewc_penalty(
    model: nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``½ Σ F (θ − θ*)²`` over the anchored parameters.

    A parameter that grew since the anchor was taken (the gene embedding) is compared on its old
    rows only: rows of genes that did not exist then are free.
    """
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, param in model.named_parameters():
        if name not in anchor:
            continue
        rows = anchor[name].shape[0] if param.dim() else None
        current = param[:rows] if rows is not None else param
        total = total + (fisher[name] * (current - anchor[name]) ** 2).sum()
    return 0.5 * total
