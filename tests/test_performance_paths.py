"""The optimised paths compute what the straightforward ones compute, so speed never changes results.

Each fast path (fused SDPA attention with an optional key mask, cheap CPU dropout masks, the
row-wise ranking of batch assembly) is checked against a simple reference written for clarity.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from factories import make_processed, make_split

from gil.data import batches as batches_module
from gil.data.batches import MASKED_VALUE, BatchBuilder
from gil.data.vocab import CLS, NO_SET, PAD, Vocabulary
from gil.model import GeneTransformer, masked_value_loss
from gil.model import transformer as transformer_module
from gil.model.transformer import dropout


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: object
) -> torch.Tensor:
    """Attention with explicit scores, masking and softmax (the textbook formula)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _loss_and_grads(
    model: GeneTransformer,
    genes: torch.Tensor,
    values: torch.Tensor,
    padding: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = masked_value_loss(model(genes, values, padding), targets, masked, mvc_weight=1.0)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _random_batch(padded: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    batch, length = 6, 23
    genes = torch.randint(2, 50, (batch, length), generator=generator)
    genes[:, 0] = CLS
    lengths = torch.randint(5, length + 1, (batch,), generator=generator)
    if not padded:
        lengths = torch.full((batch,), length)
    padding = torch.arange(length)[None, :] >= lengths[:, None]
    genes[padding] = PAD
    targets = torch.rand(batch, length, generator=generator) * 3
    masked = (torch.rand(batch, length, generator=generator) < 0.4) & ~padding
    masked[:, 0] = False
    values = torch.where(masked, torch.full_like(targets, MASKED_VALUE), targets)
    return genes, values, padding, targets, masked


@pytest.mark.parametrize("padded", [True, False])
def test_sdpa_path_matches_naive_attention(monkeypatch: pytest.MonkeyPatch, padded: bool) -> None:
    torch.manual_seed(0)
    model = GeneTransformer(n_tokens=50, n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0).double()
    inputs = _random_batch(padded)
    inputs = tuple(t.double() if t.is_floating_point() else t for t in inputs)
    fast_loss, fast_grads = _loss_and_grads(model, *inputs)
    monkeypatch.setattr(transformer_module.F, "scaled_dot_product_attention", naive_attention)
    monkeypatch.setattr(transformer_module, "_key_mask", lambda padding: (~padding)[:, None, None, :])
    ref_loss, ref_grads = _loss_and_grads(model, *inputs)
    torch.testing.assert_close(fast_loss, ref_loss, rtol=1e-10, atol=1e-12)
    for fast, ref in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-11)


def test_unpadded_batch_skips_mask_with_same_result() -> None:
    """The no-padding shortcut (no key mask) gives the loss of an all-true mask, to float tolerance."""
    torch.manual_seed(0)
    model = GeneTransformer(n_tokens=50, n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0)
    genes, values, padding, targets, masked = _random_batch(padded=False)
    assert transformer_module._key_mask(padding) is None
    fast = masked_value_loss(model(genes, values, padding), targets, masked, 1.0)
    attend = (~padding)[:, None, None, :]
    gene_states = model.gene_norm(model.gene_embedding(genes))
    x = model.dropout(gene_states + model.value_encoder(values.unsqueeze(-1)))
    for layer in model.layers:
        x = layer(x, attend)
    head = model.mlm_head(x).squeeze(-1)
    query = torch.sigmoid(model.mvc_query(model.gene_norm(model.gene_embedding(genes))))
    mvc = torch.einsum("bld,bd->bl", query, model.mvc_cell(x[:, 0]))
    ref = torch.nn.functional.mse_loss(head[masked], targets[masked]) + torch.nn.functional.mse_loss(
        mvc[masked], targets[masked]
    )
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_fast_dropout_rate_scale_gradient_and_determinism() -> None:
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(3)
    out = dropout(x, 0.15, training=True)
    kept = out.detach() != 0
    assert abs(1 - kept.float().mean().item() - 0.15) < 0.005
    torch.testing.assert_close(out.detach()[kept], torch.full((int(kept.sum()),), 1 / 0.85))
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach())  # d out / d x is the scaled mask
    torch.manual_seed(3)
    assert torch.equal(dropout(x.detach(), 0.15, training=True), out.detach())
    assert dropout(x, 0.15, training=False) is x
    assert dropout(x, 0.0, training=True) is x


def reference_top(segment: np.ndarray, keys: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: rank entries by descending key, ties in entry order."""
    rank = np.empty(len(keys), dtype=np.int64)
    for cell in np.unique(segment):
        where = np.flatnonzero(segment == cell)
        order = sorted(range(len(where)), key=lambda i: (-keys[where[i]], i))
        rank[where[order]] = np.arange(len(where))
    return rank < limit, rank


@pytest.mark.parametrize("seed", range(5))
def test_row_wise_ranking_matches_per_cell_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    segment = np.repeat(np.arange(12), rng.integers(0, 40, 12))
    # Integer-valued keys force ties (the stable fallback); random keys take the fast path.
    for keys in (rng.random(len(segment)), rng.integers(0, 5, len(segment)).astype(float)):
        keep, rank = batches_module._top_per_segment(segment, keys, 7)
        ref_keep, ref_rank = reference_top(segment, keys, 7)
        np.testing.assert_array_equal(rank, ref_rank)
        np.testing.assert_array_equal(keep, ref_keep)


def reference_training_batch(
    builder: BatchBuilder, rows: np.ndarray, rng: np.random.Generator, mask_fraction: float
) -> dict[str, np.ndarray]:
    """Cell by cell, with the random draws of :meth:`BatchBuilder.training_batch` in the same order."""
    data = builder.data
    cells = []
    for row in rows:
        columns = np.asarray(data.indices[data.indptr[row] : data.indptr[row + 1]])
        tokens = builder.token_of_column[columns]
        sets = builder.set_of_token[tokens]
        values = np.asarray(data.values[data.indptr[row] : data.indptr[row + 1]], np.float32)
        allowed = (sets == 0) | (sets == builder.cell_stages[row])
        cells.append((tokens[allowed], sets[allowed], values[allowed]))
    weighted = rng.random(len(rows)) < 0.5
    n_entries = sum(len(c[0]) for c in cells)
    uniform, mask_draws = rng.random(n_entries), rng.random(n_entries)
    chosen, offset = [], 0
    for cell, (tokens, sets, values) in enumerate(cells):
        u = uniform[offset : offset + len(tokens)]
        keys = np.log(np.maximum(u, 1e-12)) / np.maximum(values, 1e-6) if weighted[cell] else u
        order = sorted(range(len(keys)), key=lambda i: (-keys[i], i))[: builder.max_seq]
        draws = mask_draws[offset : offset + len(tokens)]
        chosen.append([(tokens[i], sets[i], values[i], draws[i] < mask_fraction) for i in order])
        offset += len(tokens)
    length = 1 + max(len(c) for c in chosen)
    shape = (len(rows), length)
    out = {
        "genes": np.full(shape, PAD),
        "sets": np.full(shape, NO_SET),
        "targets": np.zeros(shape, np.float32),
        "masked": np.zeros(shape, bool),
    }
    out["genes"][:, 0] = CLS
    for cell, entries in enumerate(chosen):
        for position, (token, gene_set, value, is_masked) in enumerate(entries, start=1):
            out["genes"][cell, position], out["sets"][cell, position] = token, gene_set
            out["targets"][cell, position], out["masked"][cell, position] = value, is_masked
    return out


def test_fast_batch_assembly_matches_per_cell_reference() -> None:
    data = make_processed(n_cells=60, n_genes=40, density=0.6)
    split = make_split(data)
    builder = BatchBuilder(data, Vocabulary.from_split(split), split.cell_stages, max_seq=9)
    rows = np.flatnonzero(split.cell_stages >= 0)[:20]
    batch = builder.training_batch(rows, np.random.default_rng(11), 0.4)
    ref = reference_training_batch(builder, rows, np.random.default_rng(11), 0.4)
    np.testing.assert_array_equal(batch.genes.numpy(), ref["genes"])
    np.testing.assert_array_equal(batch.gene_sets.numpy(), ref["sets"])
    np.testing.assert_array_equal(batch.targets.numpy(), ref["targets"])
    np.testing.assert_array_equal(batch.masked.numpy(), ref["masked"])
    np.testing.assert_array_equal(batch.padding.numpy(), ref["genes"] == PAD)
    np.testing.assert_array_equal(batch.values.numpy(), np.where(ref["masked"], MASKED_VALUE, ref["targets"]))


def _permuted_qkv_layer(layer: transformer_module.EncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """The encoder layer as first written: q, k, v from one permuted ``[B, L, 3, H, Dh]`` tensor."""
    batch, length, d_model = x.shape
    qkv = layer.qkv(x).view(batch, length, 3, layer.n_heads, d_model // layer.n_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attended = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    x = layer.norm_attn(x + layer.out(attended.transpose(1, 2).reshape(batch, length, d_model)))
    return layer.norm_ff(x + layer.ff_out(layer.activation(layer.ff_in(x))))


def test_split_qkv_views_compute_the_permuted_layout_bit_for_bit() -> None:
    """The encoder layer's split q/k/v views (cheaper backward) give the same outputs and gradients,
    to the bit, as the permuted layout they replaced, at the ``cpu`` preset's sizes in float32."""
    torch.manual_seed(0)
    layer = transformer_module.EncoderLayer(d_model=64, n_heads=4, d_ff=128, dropout=0.0)
    x0 = torch.randn(16, 129, 64)
    results = []
    for forward in (lambda x: layer(x, None), lambda x: _permuted_qkv_layer(layer, x)):
        layer.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        y = forward(x)
        (y * y.detach().cos()).sum().backward()
        results.append([y.detach(), x.grad, *(p.grad for p in layer.parameters())])
    for fast, reference in zip(*results, strict=True):
        assert torch.equal(fast, reference)


def test_stage_optimizer_steps_like_the_per_parameter_adam_bit_for_bit() -> None:
    """The stage optimizer (foreach Adam over the two learning-rate groups) moves the weights exactly
    as torch's per-parameter Adam loop does, so choosing it changed no result."""
    from gil.config import TrainConfig
    from gil.train.loop import parameter_groups, stage_optimizer

    train = TrainConfig(lr=1e-3, embedding_lr_scale=10.0)
    torch.manual_seed(0)
    models = [GeneTransformer(n_tokens=50, n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0)]
    models.append(copy.deepcopy(models[0]))
    optimizers = [
        stage_optimizer(models[0], train),
        torch.optim.Adam(parameter_groups(models[1], train.embedding_lr_scale), lr=train.lr, foreach=False),
    ]
    assert [len(group["params"]) for group in optimizers[0].param_groups] == [
        1,
        len(list(models[0].parameters())) - 1,
    ]
    inputs = _random_batch(padded=True)
    start = [p.detach().clone() for p in models[0].parameters()]
    for step in range(25):
        for model, optimizer in zip(models, optimizers, strict=True):
            for group in optimizer.param_groups:
                group["lr"] = train.lr * (step + 1) / 25 * group["lr_scale"]
            _loss_and_grads(model, *inputs)
            optimizer.step()
    for fast, reference, before in zip(models[0].parameters(), models[1].parameters(), start, strict=True):
        assert torch.equal(fast, reference)
        assert not torch.equal(fast, before)
