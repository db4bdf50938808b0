"""What a stage did to the gene embedding: did each gene set's rows actually move?

Why: with rows initialised at std 1 behind a LayerNorm, a stage left them at cosine 0.99-0.997 to
where they started; every gene-specific change then had to go through the shared weights, which
distillation and EWC hold still. The mean cosine per gene set between a stage's first and last
rows shows at a glance whether a set was learned through its own embedding (lower = moved more).
"""

from __future__ import annotations

import numpy as np
import torch


def mean_row_cosine(
    start: torch.Tensor, end: torch.Tensor, set_of_token: np.ndarray, n_sets: int
) -> list[float]:
    """Mean cosine between each token's ``start`` and ``end`` rows, per gene set ``0..n_sets-1``.

    ``start`` and ``end`` are ``[tokens, d]`` with the same rows; ``set_of_token`` gives each token's
    set (negative for special tokens, which are left out). A set with no rows gives NaN.
    """
    cosine = torch.nn.functional.cosine_similarity(start.double(), end.double(), dim=1).cpu().numpy()
    sets = np.asarray(set_of_token)[: len(cosine)]
    return [float(cosine[sets == k].mean()) if (sets == k).any() else float("nan") for k in range(n_sets)]
