"""The per-gene-mean predictor: what a model must beat before its forgetting means anything.

Why: a model that barely beats predicting each gene's mean has not learned the genes whose
forgetting the benchmark measures. :func:`gene_means` is that trivial predictor, fitted on exactly
what training showed (each training cell restricted to ``B`` and its own stage's genes), and
:class:`GeneMeanPredictor` presents it as a model, so :func:`gil.metrics.regression.regression_row`
scores it on exactly the same cells, positions and masks as every row of ``R``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gil.data.batches import BatchBuilder
from gil.model import ModelOutput

_CHUNK_ROWS = 2048


def gene_means(builder: BatchBuilder, training_rows: np.ndarray) -> np.ndarray:
    """Mean value of every token over the training cells that carry it, as training showed them.

    A cell of stage ``s`` carries a gene of set ``j`` only if it is expressed there and ``j`` is 0
    or ``s`` (the stage restriction of :meth:`BatchBuilder.training_batch`). Tokens never carried
    (and the special tokens) get 0. Returns ``float64 [n_tokens]``.
    """
    n_tokens = len(builder.set_of_token)
    sums, counts = np.zeros(n_tokens), np.zeros(n_tokens)
    rows = np.sort(np.asarray(training_rows, dtype=np.int64))
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start : start + _CHUNK_ROWS]
        lengths, columns, values = builder.rows.read(chunk)
        tokens = builder.token_of_column[columns]
        own_stage = np.repeat(builder.cell_stages[chunk], lengths)
        sets = builder.set_of_token[tokens]
        shown = (sets == 0) | (sets == own_stage)
        sums += np.bincount(tokens[shown], weights=values[shown], minlength=n_tokens)
        counts += np.bincount(tokens[shown], minlength=n_tokens)
    means = np.zeros(n_tokens)  # tokens never carried keep 0: `where` leaves them untouched
    np.divide(sums, counts, out=means, where=counts > 0)
    return means


class GeneMeanPredictor(nn.Module):
    """Predicts every position's value as its gene's training mean, whatever the input."""

    def __init__(self, means: np.ndarray):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))

    def forward(self, genes: torch.Tensor, values: torch.Tensor, padding: torch.Tensor) -> ModelOutput:
        predicted = self.means[genes]
        return ModelOutput(mlm=predicted, mvc=predicted, cell=torch.zeros(genes.shape[0], 1))
