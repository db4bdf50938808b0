"""Importing a pretrained scGPT model's weights into :class:`GeneTransformer`.

Why this works: gil's transformer has scGPT's shape, so every tensor of scGPT's
``TransformerModel`` (scgpt/model/model.py) has a place here:

==========================================================  ======================================
scGPT                                                       gil
==========================================================  ======================================
``encoder.embedding.weight`` (GeneEncoder)                  ``gene_embedding.weight``, rows gathered
``encoder.enc_norm``                                        ``gene_norm``
``value_encoder.linear1 / linear2 / norm``                  ``value_encoder.0 / 2 / 3``
``transformer_encoder.layers.N.self_attn.in_proj_*``        ``layers.N.qkv`` (q, k, v stacked in
(torch) or ``.self_attn.Wqkv.*`` (flash layer)              the same order in both layouts)
``...self_attn.out_proj``, ``linear1``, ``linear2``         ``layers.N.out``, ``ff_in``, ``ff_out``
``...norm1``, ``norm2`` (post-norm)                         ``layers.N.norm_attn``, ``norm_ff``
``decoder.fc.0 / 2 / 4`` (ExprDecoder)                      ``mlm_head.0 / 2 / 4``
``mvc_decoder.gene2query``                                  ``mvc_query``
``mvc_decoder.W`` (inner product: ``W(query) . cell``)      ``mvc_cell`` = ``W`` transposed
                                                            (gil computes ``query . M cell``)
==========================================================  ======================================

The embedding table keeps gil's token order (``<pad>, <cls>, B..., T1...``): row ``t`` is the
checkpoint's row of token ``t``'s gene (matched by symbol, :mod:`gil.data.model_vocab`), so the
known genes stay a prefix and growing stays an append; genes the model lacks keep the seeded random
rows of a fresh model, and vocabulary rows of genes absent from the data are not carried.

Computation differences are model options set from ``args.json`` (:mod:`gil.scgpt_dir`): ReLU in
the feed-forward, values clamped at 512. Keys gil does not use (classification heads, the
adversarial discriminator, generative training's flag embedding) are dropped and reported; keys
of modules gil cannot represent (batch labels, DSBN, zero-probability heads, category values) are
refused, and so is any key it does not recognise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gil.data.model_vocab import match_genes
from gil.data.vocab import CLS, PAD
from gil.errors import GilError
from gil.model.transformer import GeneTransformer
from gil.scgpt_dir import IGNORED_TOKENS, model_genes, read_vocab, state_file

EMBEDDING = "encoder.embedding.weight"
MVC_W = "mvc_decoder.W.weight"
_TOP = {
    "encoder.enc_norm": "gene_norm",
    "value_encoder.linear1": "value_encoder.0",
    "value_encoder.linear2": "value_encoder.2",
    "value_encoder.norm": "value_encoder.3",
    "decoder.fc.0": "mlm_head.0",
    "decoder.fc.2": "mlm_head.2",
    "decoder.fc.4": "mlm_head.4",
    "mvc_decoder.gene2query": "mvc_query",
}
_LAYER = {
    "self_attn.in_proj_": "qkv.",
    "self_attn.Wqkv.": "qkv.",
    "self_attn.out_proj.": "out.",
    "linear1.": "ff_in.",
    "linear2.": "ff_out.",
    "norm1.": "norm_attn.",
    "norm2.": "norm_ff.",
}
_LAYER_KEY = re.compile(r"^transformer_encoder\.layers\.(\d+)\.(.+)$")
DROPPED = {
    "cls_decoder.": "cell-type classification head",
    "grad_reverse_discriminator.": "adversarial batch discriminator",
    "flag_encoder.": "generative-training flag embedding",
}
REFUSED = {
    "batch_encoder.": "batch labels (use_batch_labels)",
    "dsbn.": "domain-specific batch norm (DSBN)",
    "bn.": "batch norm of the input embeddings",
    "decoder.zero_logit.": "explicit zero probabilities (explicit_zero_prob)",
    "mvc_decoder.W_zero_logit.": "explicit zero probabilities (explicit_zero_prob)",
    "value_encoder.embedding.": "category value style (input_emb_style: category)",
}


@dataclass(frozen=True)
class Imported:
    """What an import did: how many gene tokens got a pretrained row, and the keys left out."""

    pretrained_genes: int
    new_genes: int
    dropped: tuple[str, ...]

    def describe(self, directory: Path) -> str:
        dropped = ", ".join(self.dropped) if self.dropped else "none"
        return (
            f"imported scGPT model {directory}: {self.pretrained_genes} base genes with pretrained rows, "
            f"{self.new_genes} new to the model (random rows); dropped keys: {dropped}"
        )


def load_state(directory: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, loaded with ``weights_only=True`` (loading cannot run code).

    ``mmap`` maps the tensors instead of reading them (to list the keys of a large checkpoint).
    """
    path = state_file(directory)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise GilError(
            f"{path}: not a loadable state dict ({type(error).__name__}); "
            "use the file published with the model"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GilError(f"{path}: expected a state dict (parameter name -> tensor); got something else")
    return state


def gil_key(key: str) -> str | None:
    """gil's parameter name for an scGPT key; None when it is dropped; GilError when refused/unknown."""
    for prefix, why in REFUSED.items():
        if key.startswith(prefix):
            raise GilError(f"state dict key {key}: {why} is not supported; use a checkpoint without it")
    if any(key.startswith(prefix) for prefix in DROPPED):
        return None
    if key == MVC_W:
        return "mvc_cell.weight"
    module, _, leaf = key.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{leaf}"
    match = _LAYER_KEY.match(key)
    if match:
        layer, rest = match.groups()
        for prefix, target in _LAYER.items():
            if rest.startswith(prefix):
                return f"layers.{layer}.{target}{rest.removeprefix(prefix)}"
    raise GilError(
        f"state dict key {key} is not part of scGPT's TransformerModel as gil reads it; "
        "use a checkpoint of scgpt.model.TransformerModel"
    )


def mapped_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every non-embedding tensor under gil's name (``mvc_cell`` transposed), and the dropped keys."""
    mapped, dropped = {}, []
    for key, tensor in state.items():
        if key == EMBEDDING:
            continue
        name = gil_key(key)
        if name is None:
            dropped.append(key)
            continue
        if name in mapped:
            raise GilError(f"state dict has {key} twice (torch and flash layouts mixed); the file is corrupt")
        mapped[name] = tensor.t().contiguous() if key == MVC_W else tensor
    return mapped, dropped


def dropped_keys(directory: Path) -> list[str]:
    """The state-dict keys an import leaves out (refused or unknown keys raise :class:`GilError`)."""
    state = load_state(directory, mmap=True)
    dropped = [key for key in state if key != EMBEDDING and gil_key(key) is None]
    return dropped + [f"{EMBEDDING}[{token}]" for token in IGNORED_TOKENS if token in read_vocab(directory)]


def import_scgpt(model: GeneTransformer, directory: Path, genes: Sequence[str]) -> Imported:
    """Load the checkpoint in ``directory`` into ``model`` (built from its sizes), in place.

    ``genes`` are the first gene tokens in token order (token ``2 + i`` is ``genes[i]``): their
    rows come from the checkpoint where the vocabulary has the gene; every other row keeps the
    model's (seeded random) row.
    """
    state = load_state(directory)
    if EMBEDDING not in state:
        raise GilError(f"{state_file(directory)}: no {EMBEDDING}; not an scGPT TransformerModel state dict")
    mapped, _ = mapped_state(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(mapped) - {"gene_embedding.weight"})
    if missing:
        raise GilError(
            f"{state_file(directory)}: lacks weights for {missing[:3]}; not a complete scGPT model"
        )
    for name, tensor in mapped.items():
        if tensor.shape != own[name].shape:
            raise GilError(
                f"{state_file(directory)}: {name} has shape {tuple(tensor.shape)}, args.json implies "
                f"{tuple(own[name].shape)}; the files do not belong together"
            )
    table = state[EMBEDDING]
    vocab = read_vocab(directory)
    if table.shape[0] <= max(vocab.values()) or table.shape[1] != own["gene_embedding.weight"].shape[1]:
        raise GilError(
            f"{state_file(directory)}: {EMBEDDING} has shape {tuple(table.shape)}, too small for "
            f"{len(vocab)} vocabulary tokens of width {own['gene_embedding.weight'].shape[1]}"
        )
    rows = own["gene_embedding.weight"].clone()
    rows[PAD], rows[CLS] = table[vocab["<pad>"]], table[vocab["<cls>"]]
    matched = match_genes(list(genes), model_genes(directory))
    tokens = [token for token, row in enumerate(matched, start=2) if row is not None]
    rows[tokens] = table[[row for row in matched if row is not None]].to(rows.dtype)
    model.load_state_dict({**mapped, "gene_embedding.weight": rows}, strict=True)
    return Imported(len(tokens), len(matched) - len(tokens), tuple(dropped_keys(directory)))
