"""Batch assembly: allowed genes, sampling, masking, padding, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import make_processed, make_split

from gil.data.batches import MASKED_VALUE, BatchBuilder
from gil.data.vocab import CLS, NO_SET, PAD, Vocabulary


@pytest.fixture(scope="module")
def builder() -> BatchBuilder:
    data = make_processed(n_cells=120, n_genes=40)
    split = make_split(data, n_stages=2, genes_per_stage=6)
    return BatchBuilder(data, Vocabulary.from_split(split), split.cell_stages, max_seq=12)


def test_training_batch_only_contains_base_and_own_stage_genes(builder: BatchBuilder) -> None:
    rows = np.flatnonzero(builder.cell_stages >= 0)
    batch = builder.training_batch(rows, np.random.default_rng(0), 0.4)
    stage_of_row = torch.from_numpy(builder.cell_stages[rows].astype(np.int64))[:, None]
    real = batch.gene_sets >= 0
    assert bool(((batch.gene_sets == 0) | (batch.gene_sets == stage_of_row))[real].all())
    # some stage-1 and stage-2 cells do carry their own stage genes
    assert bool((batch.gene_sets == 1).any()) and bool((batch.gene_sets == 2).any())


def test_cls_first_pad_consistent_and_masks_never_hit_cls_or_pad(builder: BatchBuilder) -> None:
    batch = builder.training_batch(np.arange(40), np.random.default_rng(1), 0.4)
    assert bool((batch.genes[:, 0] == CLS).all())
    assert torch.equal(batch.padding, batch.genes == PAD)
    assert not bool(batch.masked[:, 0].any())
    assert not bool((batch.masked & batch.padding).any())
    assert bool((batch.values[batch.masked] == MASKED_VALUE).all())
    unmasked_real = ~batch.masked & ~batch.padding
    unmasked_real[:, 0] = False
    assert torch.equal(batch.values[unmasked_real], batch.targets[unmasked_real])
    assert bool((batch.gene_sets[batch.padding] == NO_SET).all())


def test_mask_fraction_is_respected_on_average(builder: BatchBuilder) -> None:
    batch = builder.training_batch(np.arange(100), np.random.default_rng(2), 0.4)
    real = ~batch.padding
    real[:, 0] = False
    fraction = batch.masked.sum().item() / real.sum().item()
    assert 0.33 < fraction < 0.47


def test_sequences_are_capped_at_max_seq_and_values_match_the_matrix(builder: BatchBuilder) -> None:
    rows = np.arange(30)
    batch = builder.training_batch(rows, np.random.default_rng(3), 0.0)
    assert batch.genes.shape[1] <= 1 + builder.max_seq
    data = builder.data
    for i, row in enumerate(rows[:5]):
        start, end = data.indptr[row], data.indptr[row + 1]
        truth = dict(
            zip(builder.token_of_column[data.indices[start:end]], data.values[start:end], strict=True)
        )
        for token, value in zip(batch.genes[i, 1:].tolist(), batch.targets[i, 1:].tolist(), strict=True):
            if token != PAD:
                assert truth[token] == pytest.approx(value)


def test_same_rng_seed_gives_identical_batches(builder: BatchBuilder) -> None:
    a = builder.training_batch(np.arange(20), np.random.default_rng(5), 0.4)
    b = builder.training_batch(np.arange(20), np.random.default_rng(5), 0.4)
    assert torch.equal(a.genes, b.genes) and torch.equal(a.masked, b.masked)


def test_evaluation_batches_share_positions_and_masks_across_stages(builder: BatchBuilder) -> None:
    rows = np.flatnonzero(builder.cell_stages == -1)
    early = builder.evaluation_batch(rows, 1, seed=11, mask_fraction=0.4, max_seq=12)
    late = builder.evaluation_batch(rows, 2, seed=11, mask_fraction=0.4, max_seq=12)
    assert not bool((early.gene_sets > 1).any())
    for i in range(len(rows)):
        early_masked = {
            (g, m) for g, m in zip(early.genes[i].tolist(), early.masked[i].tolist(), strict=True) if g != PAD
        }
        late_known = {
            (g, m)
            for g, m, s in zip(
                late.genes[i].tolist(), late.masked[i].tolist(), late.gene_sets[i].tolist(), strict=True
            )
            if g != PAD and s <= 1
        }
        assert early_masked == late_known


def test_sampling_weights_of_each_scheme() -> None:
    from gil.data.batches import _sampling_weights

    segment = np.array([0, 0, 0, 1, 1])
    values = np.array([0.7, 1.1, 3.0, 2.0, 2.5])
    assert _sampling_weights(segment, values, "uniform").tolist() == [1.0] * 5
    assert _sampling_weights(segment, values, "log1p").tolist() == values.tolist()
    shifted = _sampling_weights(segment, values, "shifted")
    assert shifted == pytest.approx([1e-5, 0.4 + 1e-5, 2.3 + 1e-5, 1e-5, 0.5 + 1e-5])


def test_weighted_sampling_prefers_expressed_genes_and_fraction_zero_is_uniform() -> None:
    from gil.data.batches import GeneSampling

    data = make_processed(n_cells=60, n_genes=40, density=0.9)
    split = make_split(data, n_stages=2, genes_per_stage=6)
    vocab = Vocabulary.from_split(split)
    rows = np.flatnonzero(split.cell_stages >= 0)
    means = {}
    for name, sampling in {
        "weighted": GeneSampling("shifted", 1.0),
        "uniform": GeneSampling("shifted", 0.0),
    }.items():
        builder = BatchBuilder(data, vocab, split.cell_stages, 8, sampling)
        batch = builder.training_batch(rows, np.random.default_rng(0), 0.4)
        real = batch.gene_sets >= 0
        means[name] = float(batch.targets[real].mean())
    assert means["weighted"] > means["uniform"] + 0.1
