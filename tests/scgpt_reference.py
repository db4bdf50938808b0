"""An independent small re-implementation of scGPT's ``TransformerModel`` forward pass, and a writer
of scGPT-format checkpoint directories with its random weights (tests only; nothing is downloaded).

Written from scGPT's published module structure (bowang-lab/scGPT, scgpt/model/model.py, as of
release 0.2.4): ``GeneEncoder`` (embedding, ``enc_norm``), ``ContinuousValueEncoder`` (``linear1``,
ReLU, ``linear2``, ``norm``, inputs clamped at ``max_value=512``), torch's post-norm
``TransformerEncoderLayer`` (ReLU feed-forward, ``batch_first``), ``ExprDecoder`` (``fc`` =
Linear, LeakyReLU, Linear, LeakyReLU, Linear), the inner-product ``MVCDecoder``
(``bmm(W(sigmoid(gene2query(gene_embs))), cell_emb)``) and the ``<cls>`` state as cell embedding.
The module *names* are scGPT's, so its ``state_dict()`` is a checkpoint in scGPT's key layout; the
flash layout renames ``self_attn.in_proj_*`` to ``self_attn.Wqkv.*`` (scGPT's own
``load_pretrained`` maps one onto the other by that rename).

It uses torch's own ``nn.TransformerEncoderLayer`` rather than gil's code, so that a mistake in
gil's mapping (q/k/v order, a transposed weight, GELU for ReLU, a missing clamp) shows up as a
different output.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

MAX_VALUE = 512


class GeneEncoder(nn.Module):
    def __init__(self, n_tokens: int, d_model: int, padding_idx: int):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(tokens))


class ContinuousValueEncoder(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(values.unsqueeze(-1), max=MAX_VALUE)
        return self.norm(self.linear2(self.activation(self.linear1(x))))


class ExprDecoder(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.fc(states).squeeze(-1)


class MVCDecoder(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.gene2query = nn.Linear(d_model, d_model)
        self.query_activation = nn.Sigmoid()
        self.W = nn.Linear(d_model, d_model, bias=False)

    def forward(self, cell: torch.Tensor, gene_embs: torch.Tensor) -> torch.Tensor:
        query = self.query_activation(self.gene2query(gene_embs))
        return torch.bmm(self.W(query), cell.unsqueeze(2)).squeeze(2)


class ScgptReference(nn.Module):
    """scGPT's TransformerModel (continuous values, post-norm, MVC on, one classification head)."""

    def __init__(self, n_tokens: int, d_model: int, n_heads: int, d_hid: int, n_layers: int, pad_id: int):
        super().__init__()
        self.encoder = GeneEncoder(n_tokens, d_model, pad_id)
        self.flag_encoder = nn.Embedding(2, d_model)
        self.value_encoder = ContinuousValueEncoder(d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_hid, dropout=0.0, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.decoder = ExprDecoder(d_model)
        self.cls_decoder = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 3))
        self.mvc_decoder = MVCDecoder(d_model)
        self.encoder.embedding.weight.data.uniform_(-0.1, 0.1)

    def forward(
        self, tokens: torch.Tensor, values: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(MLM predictions, MVC predictions, cell embeddings), as scGPT's perceptual forward."""
        gene_embs = self.encoder(tokens)
        states = self.transformer_encoder(
            gene_embs + self.value_encoder(values), src_key_padding_mask=padding
        )
        cell = states[:, 0, :]
        return self.decoder(states), self.mvc_decoder(cell, gene_embs), cell


SIZES = {"embsize": 16, "nheads": 2, "d_hid": 32, "nlayers": 2}


def scgpt_args(**overrides: object) -> dict:
    """An args.json like scGPT-human's (binned values, continuous encoder, post-norm), tiny sizes."""
    return {
        **SIZES,
        "dropout": 0.0,
        "n_bins": 11,
        "input_style": "binned",
        "input_emb_style": "continuous",
        "pad_token": "<pad>",
        "pad_value": -2,
        "mask_value": -1,
        "MVC": True,
        "fast_transformer": True,
        **overrides,
    }


def scgpt_vocab(genes: list[str]) -> dict[str, int]:
    """Genes first, special tokens last (as in scGPT-human's vocabulary, where <pad> is not row 0)."""
    tokens = [*genes, "<pad>", "<cls>", "<eoc>"]
    return {token: row for row, token in enumerate(tokens)}


def write_scgpt_dir(
    directory: Path, genes: list[str], layout: str = "torch", seed: int = 0, **args: object
) -> ScgptReference:
    """Write ``args.json``, ``vocab.json`` and ``best_model.pt`` (random weights); return the model."""
    vocab = scgpt_vocab(genes)
    torch.manual_seed(seed)
    model = ScgptReference(
        len(vocab), SIZES["embsize"], SIZES["nheads"], SIZES["d_hid"], SIZES["nlayers"], vocab["<pad>"]
    ).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0): make them random, so a swapped norm shows
        for name, tensor in model.named_parameters():
            if "norm" in name:
                tensor.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    state = model.state_dict()
    if layout == "flash":
        state = {key.replace("self_attn.in_proj_", "self_attn.Wqkv."): value for key, value in state.items()}
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "best_model.pt")
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "args.json").write_text(json.dumps(scgpt_args(**args)))
    return model
