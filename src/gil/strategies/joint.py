"""Joint training: the paper's oracle and upper bound.

At stage ``k`` the model trains on the cells of all stages ``0..k`` at once, each cell with its own
stage's genes (``B ∪ Tj`` for a cell of stage ``j``), so no gene set is ever left unrehearsed.
"""

from __future__ import annotations

import numpy as np

from gil.strategies.base import StageContext, Strategy, shuffled_batches


class Joint(Strategy):
    """Cumulative training on every stage seen so far."""

    kind = "joint"

    def epoch_batches(self, ctx: StageContext, rng: np.random.Generator) -> list[np.ndarray]:
        stages = ctx.cell_stages
        rows = np.flatnonzero((stages >= 0) & (stages <= ctx.stage))
        return shuffled_batches(rows, ctx.batch_size, rng)
