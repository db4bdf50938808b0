"""The scGPT-style gene transformer with a growable gene embedding.

Why this shape: a cell is an unordered set of (gene, value) tokens, so there is no positional
encoding; the token embedding is ``LayerNorm(gene embedding) + value encoder(value)``. The encoder is
post-norm like the paper's and calls ``scaled_dot_product_attention`` directly (fused kernels, one
boolean key-padding mask). Two heads regress expression: the per-token MLM head and the MVC head,
which predicts a gene's value from its embedding and the ``<cls>`` cell embedding.

On the CPU, dropout draws its masks from raw 64-bit random words (see :func:`dropout`): ATen's
``bernoulli_`` made the dropout masks about a fifth of a training step of the "bench" model.

The model holds no continual-learning logic; it only knows how many gene tokens it has
(:meth:`GeneTransformer.grow_vocabulary` appends rows and never touches old ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_INT16_MIN = -(2**15)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, as ``F.dropout``, with cheaper masks on the CPU.

    Why: on the CPU ``F.dropout`` draws one Bernoulli sample per element (~7 ms for a bench-sized
    activation on one core, single-threaded); here one ``random_`` call fills 64-bit words, each
    split into four 16-bit uniforms that are compared with ``p * 2**16`` (a quarter of the generator
    calls of one draw per element). Elements are dropped with probability ``round(p * 2**16) / 2**16``
    (within 7.7e-6 of ``p``) and survivors are scaled by ``1 / (1 - p)``. The masks come from the
    default CPU generator, so ``torch.manual_seed`` makes them reproducible; they differ from
    ``F.dropout``'s stream. Other devices use ``F.dropout``.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= _INT16_MIN + round(p * 2**16)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Module form of :func:`dropout` (keeps ``nn.Dropout``'s ``p`` attribute and repr)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@dataclass(frozen=True)
class ModelOutput:
    """Per-token predictions of both heads, the cell embedding, and the input mask used."""

    mlm: torch.Tensor  # [B, L]
    mvc: torch.Tensor  # [B, L]
    cell: torch.Tensor  # [B, d]


class GeneEmbedding(nn.Module):
    """An embedding table that can grow by appending rows.

    Why the small initial scale (``init_std``, default 0.02; scGPT draws U(-0.1, 0.1)): the rows pass
    through a LayerNorm, so only their direction matters, and Adam moves each coordinate by about
    ``lr`` per step whatever the gradient's size. Rows of std 1 turned by a few degrees in a stage
    (cosine 0.99 between start and end: the genes' identities stayed frozen random codes); rows of
    std 0.02 are moved by the optimiser within a few hundred steps. Every row, appended ones
    included, is drawn at the same scale.
    """

    def __init__(
        self, n_tokens: int, d_model: int, init_std: float = 0.02, generator: torch.Generator | None = None
    ):
        super().__init__()
        self.d_model = d_model
        self.init_std = init_std
        self.weight = nn.Parameter(self._rows(n_tokens, generator))

    def _rows(self, n_rows: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(n_rows, self.d_model, generator=generator) * self.init_std

    @property
    def n_tokens(self) -> int:
        return int(self.weight.shape[0])

    def grow(self, n_tokens: int, generator: torch.Generator | None = None) -> None:
        """Append rows up to ``n_tokens``; existing rows are kept bit for bit."""
        extra = n_tokens - self.n_tokens
        if extra < 0:
            raise ValueError(f"cannot shrink the vocabulary from {self.n_tokens} to {n_tokens} tokens")
        if extra == 0:
            return
        new_rows = self._rows(extra, generator).to(self.weight)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), new_rows]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer on fused scaled-dot-product attention.

    Why q, k and v are views of a split (not of one permuted ``[B, L, 3, H, Dh]`` tensor): the
    backward pass then concatenates three gradients instead of copying a permuted one: a few % of
    a layer's step less on the CPU, the same numbers bit for bit (tests/test_performance_paths.py).

    ``activation`` is the feed-forward non-linearity: gil's own models use GELU; scGPT's
    checkpoints were trained with ReLU (torch's ``TransformerEncoderLayer`` default), so an imported
    model must keep it to compute what it was trained to compute.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.activation = ACTIVATIONS[activation]
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff_in = nn.Linear(d_model, d_ff)
        self.ff_out = nn.Linear(d_ff, d_model)
        self.norm_attn = nn.LayerNorm(d_model)
        self.norm_ff = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        """``attend`` is a ``[B, 1, 1, L]`` boolean mask, True where a key may be attended to (None: all)."""
        batch, length, d_model = x.shape
        q, k, v = (
            part.view(batch, length, self.n_heads, d_model // self.n_heads).transpose(1, 2)
            for part in self.qkv(x).split(d_model, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        attended = attended.transpose(1, 2).reshape(batch, length, d_model)
        x = self.norm_attn(x + dropout(self.out(attended), self.dropout, self.training))
        hidden = dropout(self.activation(self.ff_in(x)), self.dropout, self.training)
        return self.norm_ff(x + dropout(self.ff_out(hidden), self.dropout, self.training))


class GeneTransformer(nn.Module):
    """Gene embedding + value encoder, transformer encoder, MLM and MVC heads."""

    ARCHITECTURE_KEYS = ("n_layers", "d_model", "n_heads", "d_ff", "dropout", "gene_init_std")
    # Keys added later, with the value that checkpoints written before them were trained with.
    OPTIONAL_KEYS = {"activation": "gelu", "value_clamp": None}

    @classmethod
    def from_sizes(cls, n_tokens: int, sizes: dict) -> GeneTransformer:
        """Build from a resolved model config (extra keys such as ``max_seq`` are batching's)."""
        options = {key: sizes.get(key, default) for key, default in cls.OPTIONAL_KEYS.items()}
        return cls(n_tokens=n_tokens, **{key: sizes[key] for key in cls.ARCHITECTURE_KEYS}, **options)

    def __init__(
        self,
        n_tokens: int,
        n_layers: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        gene_init_std: float = 0.02,
        activation: str = "gelu",
        value_clamp: float | None = None,
    ):
        """``value_clamp``: input values above it are clamped before the value encoder (scGPT
        clamps at 512); None leaves them as they are."""
        super().__init__()
        self.value_clamp = value_clamp
        self.gene_embedding = GeneEmbedding(n_tokens, d_model, gene_init_std)
        self.gene_norm = nn.LayerNorm(d_model)
        self.value_encoder = nn.Sequential(
            nn.Linear(1, d_model), nn.ReLU(), nn.Linear(d_model, d_model), nn.LayerNorm(d_model)
        )
        self.dropout = Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout, activation) for _ in range(n_layers)
        )
        self.mlm_head = nn.Sequential(
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )
        self.mvc_query = nn.Linear(d_model, d_model)
        self.mvc_cell = nn.Linear(d_model, d_model, bias=False)

    @property
    def n_tokens(self) -> int:
        return self.gene_embedding.n_tokens

    def grow_vocabulary(self, n_tokens: int, generator: torch.Generator | None = None) -> None:
        """Append embedding rows for new genes (no-op when the table is already that large)."""
        self.gene_embedding.grow(n_tokens, generator)

    def encode(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        padding: torch.Tensor,
        queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Contextual token states ``[B, L, d]``; padded keys are never attended to.

        ``queries`` (``[B, L]`` bool, None: none) marks query tokens: each attends to the cell's
        tokens and to itself, and no other token attends to it, so the states of the cell's own
        tokens are what they would be without the queries.
        """
        gene_states = self.gene_norm(self.gene_embedding(genes))
        if self.value_clamp is not None:
            values = values.clamp(max=self.value_clamp)
        x = self.dropout(gene_states + self.value_encoder(values.unsqueeze(-1)))
        attend = _key_mask(padding) if queries is None else _query_mask(padding, queries)
        for layer in self.layers:
            x = layer(x, attend)
        return x

    def forward(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        padding: torch.Tensor,
        queries: torch.Tensor | None = None,
    ) -> ModelOutput:
        states = self.encode(genes, values, padding, queries)
        cell = states[:, 0]
        mlm = self.mlm_head(states).squeeze(-1)
        query = torch.sigmoid(self.mvc_query(self.gene_norm(self.gene_embedding(genes))))
        mvc = torch.einsum("bld,bd->bl", query, self.mvc_cell(cell))
        return ModelOutput(mlm=mlm, mvc=mvc, cell=cell)


def _key_mask(padding: torch.Tensor) -> torch.Tensor | None:
    """The ``[B, 1, 1, L]`` key mask of SDPA, or None on a CPU batch without padding.

    Why None: the CPU attention kernel then skips applying the mask (a few % of a step, and the
    result is the same: masking no key changes nothing). On CUDA the check would synchronise the
    device every step, so the mask is always passed there.
    """
    if padding.device.type == "cpu" and not bool(padding.any()):
        return None
    return (~padding)[:, None, None, :]


def _query_mask(padding: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The ``[B, 1, L, L]`` SDPA mask (True: may attend) of a batch with query tokens.

    Every token attends to the cell's tokens (neither padding nor query); a query token also
    attends to itself, as a masked gene of the cell would.
    """
    cell_keys = ~(padding | queries)
    itself = torch.eye(padding.shape[1], dtype=torch.bool, device=padding.device)
    return (cell_keys[:, None, :] | (itself & queries[:, :, None]))[:, None]


def masked_value_loss(
    output: ModelOutput,
    targets: torch.Tensor,
    masked: torch.Tensor,
    mvc_weight: float,
    mvc_scored: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paper loss: MSE of the MLM head on the masked positions plus ``mvc_weight`` x MSE of the MVC
    head on ``mvc_scored`` (default: the masked positions, as in the paper and scGPT).

    A term without any position contributes zero (not NaN).
    """
    mvc_scored = masked if mvc_scored is None else mvc_scored
    loss = output.mlm.sum() * 0.0
    if bool(masked.any()):
        loss = F.mse_loss(output.mlm[masked], targets[masked])
    if mvc_weight != 0 and bool(mvc_scored.any()):
        loss = loss + mvc_weight * F.mse_loss(output.mvc[mvc_scored], targets[mvc_scored])
    return loss
