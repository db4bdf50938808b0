"""The embedding-movement diagnostic: mean cosine per gene set, special tokens left out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gil.train.diagnostics import mean_row_cosine


def test_mean_row_cosine_per_gene_set() -> None:
    start = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    end = start.clone()
    end[0] = torch.tensor([-1.0, 0.0])  # a special token: ignored
    end[3] = torch.tensor([2.0, 0.0])  # set 0: one row turned 90 degrees, one unchanged
    end[4] = torch.tensor([-3.0, 0.0])  # set 1: reversed
    set_of_token = np.array([-1, -1, 0, 0, 1, 1])
    cosines = mean_row_cosine(start, end, set_of_token, 3)
    assert cosines[:2] == pytest.approx([(1.0 + 0.0) / 2, (-1.0 + 1.0) / 2])
    assert math.isnan(cosines[2])  # no rows of set 2 yet
