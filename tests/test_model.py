"""The transformer: vocabulary growth and padding handling."""

from __future__ import annotations

import torch

from gil.model import GeneTransformer, masked_value_loss


def _model(n_tokens: int = 10) -> GeneTransformer:
    torch.manual_seed(0)
    return GeneTransformer(n_tokens=n_tokens, n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0).eval()


def test_growing_keeps_old_rows_bit_identical_and_runs_on_new_ids() -> None:
    model = _model(10)
    before = model.gene_embedding.weight.detach().clone()
    model.grow_vocabulary(15, torch.Generator().manual_seed(1))
    after = model.gene_embedding.weight.detach()
    assert after.shape == (15, 16)
    assert torch.equal(after[:10], before)
    assert not torch.equal(after[10:], torch.zeros(5, 16))
    genes = torch.tensor([[1, 3, 12, 14]])
    out = model(genes, torch.rand(1, 4), torch.zeros(1, 4, dtype=torch.bool))
    assert out.mlm.shape == (1, 4) and torch.isfinite(out.mlm).all()


def test_padding_does_not_change_predictions_of_real_tokens() -> None:
    model = _model()
    genes = torch.tensor([[1, 2, 3, 4]])
    values = torch.tensor([[0.0, 1.0, -1.0, 2.0]])
    short = model(genes, values, torch.zeros(1, 4, dtype=torch.bool))
    padded_genes = torch.tensor([[1, 2, 3, 4, 0, 0]])
    padded_values = torch.tensor([[0.0, 1.0, -1.0, 2.0, 0.0, 0.0]])
    padding = padded_genes == 0
    long = model(padded_genes, padded_values, padding)
    assert torch.allclose(short.mlm, long.mlm[:, :4], atol=1e-5)
    assert torch.allclose(short.cell, long.cell, atol=1e-5)


def test_loss_is_mse_on_masked_positions_only() -> None:
    model = _model()
    genes = torch.tensor([[1, 2, 3]])
    out = model(genes, torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    targets = torch.tensor([[0.0, 5.0, 100.0]])
    masked = torch.tensor([[False, True, False]])
    expected = (out.mlm[0, 1] - 5.0) ** 2 + (out.mvc[0, 1] - 5.0) ** 2
    assert torch.allclose(masked_value_loss(out, targets, masked, 1.0), expected)
    assert masked_value_loss(out, targets, torch.zeros_like(masked), 1.0).item() == 0.0


def test_mvc_scored_on_every_gene_position_when_asked() -> None:
    """``mvc_scored`` widens the MVC term (the cell embedding must reconstruct unmasked genes too)."""
    model = _model()
    genes = torch.tensor([[1, 2, 3, 0]])
    out = model(genes, torch.zeros(1, 4), genes == 0)
    targets = torch.tensor([[0.0, 5.0, 2.0, 0.0]])
    masked = torch.tensor([[False, True, False, False]])
    scored = torch.tensor([[False, True, True, False]])  # the gene positions: neither <cls> nor pad
    mvc = ((out.mvc[0, 1] - 5.0) ** 2 + (out.mvc[0, 2] - 2.0) ** 2) / 2
    expected = (out.mlm[0, 1] - 5.0) ** 2 + 3.0 * mvc
    assert torch.allclose(masked_value_loss(out, targets, masked, 3.0, mvc_scored=scored), expected)
    # the MLM term stays on the masked positions: with no masked position only the MVC term is left
    none_masked = masked_value_loss(out, targets, torch.zeros_like(masked), 3.0, mvc_scored=scored)
    assert torch.allclose(none_masked, 3.0 * (out.mvc[0, 1:3] - targets[0, 1:3]).pow(2).mean())


def test_every_embedding_row_starts_at_the_configured_scale() -> None:
    """Initial and appended rows share ``gene_init_std`` (std 1 rows behind a LayerNorm barely train)."""
    torch.manual_seed(0)
    model = GeneTransformer(
        n_tokens=400, n_layers=1, d_model=64, n_heads=2, d_ff=32, dropout=0.0, gene_init_std=0.02
    )
    model.grow_vocabulary(800, torch.Generator().manual_seed(1))
    rows = model.gene_embedding.weight.detach()
    assert abs(float(rows[:400].std()) - 0.02) < 0.001
    assert abs(float(rows[400:].std()) - 0.02) < 0.001
    assert abs(float(rows.mean())) < 0.001
