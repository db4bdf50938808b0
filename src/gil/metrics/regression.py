"""Gene-wise regression: one row of the results matrix ``R`` for one stage's model.

Why this protocol: the paper scores each stage's model on freshly re-sampled masks and genes, which
adds sampling noise to its Δ. Here every stage's model is scored on the *same* held-out cells, gene
samples and masks (fixed ``evaluate.seed``; see :meth:`BatchBuilder.evaluation_batch`), restricted
to the genes it has seen. The headline is the *pooled* masked-value MSE of the MLM head over all
masked positions of a gene set; the per-gene average (mean over genes of each gene's own MSE) and
the pooled Pearson r are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gil.data.batches import BatchBuilder, SamplingWeights
from gil.model import GeneTransformer


@dataclass(frozen=True)
class RegressionRow:
    """Scores of one stage's model on the gene sets ``0..stage`` (index = gene set)."""

    mse: list[float]
    mse_per_gene: list[float]
    pearson: list[float]
    n_positions: list[int]
    seen_mse: float


def _pearson(n: float, sp: float, st: float, spp: float, stt: float, spt: float) -> float:
    cov = spt - sp * st / n
    var = (spp - sp**2 / n) * (stt - st**2 / n)
    return float(cov / np.sqrt(var)) if var > 0 else float("nan")


@torch.no_grad()
def regression_row(
    model: GeneTransformer,
    builder: BatchBuilder,
    rows: np.ndarray,
    stage: int,
    seeds: list[int],
    batch_size: int,
    mask_fraction: float,
    max_seq: int,
    device: torch.device | str = "cpu",
    weights: SamplingWeights = "uniform",
) -> RegressionRow:
    """Masked-value MSE per gene set for the model of ``stage`` on the evaluation ``rows``.

    Each seed in ``seeds`` is one evaluation pass over all rows (more passes, more positions).
    """
    model.eval()
    n_sets = stage + 1
    # per set: count, sse, Σp, Σt, Σp², Σt², Σpt
    moments = np.zeros((n_sets, 7))
    sse_per_token = np.zeros(builder.set_of_token.shape[0])
    n_per_token = np.zeros(builder.set_of_token.shape[0])
    for pass_seed in seeds:
        for start in range(0, len(rows), batch_size):
            batch_seed = [pass_seed, start]
            batch = builder.evaluation_batch(
                rows[start : start + batch_size],
                stage,
                int(np.random.SeedSequence(batch_seed).generate_state(1)[0]),
                mask_fraction,
                max_seq,
                weights,
            ).to(device)
            output = model(batch.genes, batch.values, batch.padding)
            masked = batch.masked
            pred = output.mlm[masked].double().cpu().numpy()
            true = batch.targets[masked].double().cpu().numpy()
            sets = batch.gene_sets[masked].cpu().numpy()
            tokens = batch.genes[masked].cpu().numpy()
            err = (pred - true) ** 2
            sse_per_token += np.bincount(tokens, weights=err, minlength=len(sse_per_token))
            n_per_token += np.bincount(tokens, minlength=len(n_per_token))
            for column, stat in enumerate(
                (np.ones_like(err), err, pred, true, pred**2, true**2, pred * true)
            ):
                moments[:, column] += np.bincount(sets, weights=stat, minlength=n_sets)[:n_sets]
    set_of_token = builder.set_of_token
    mse, per_gene, pearson = [], [], []
    for gene_set in range(n_sets):
        n = moments[gene_set, 0]
        mse.append(float(moments[gene_set, 1] / n) if n else float("nan"))
        pearson.append(_pearson(*moments[gene_set, [0, 2, 3, 4, 5, 6]]) if n > 1 else float("nan"))
        scored = (set_of_token == gene_set) & (n_per_token > 0)
        per_gene.append(
            float(np.mean(sse_per_token[scored] / n_per_token[scored])) if scored.any() else float("nan")
        )
    total = moments[:, 0].sum()
    return RegressionRow(
        mse=mse,
        mse_per_gene=per_gene,
        pearson=pearson,
        n_positions=[int(n) for n in moments[:, 0]],
        seen_mse=float(moments[:, 1].sum() / total) if total else float("nan"),
    )
