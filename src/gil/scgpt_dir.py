"""An scGPT checkpoint directory: its ``args.json`` and ``vocab.json``, what gil can represent, its identity.

Why a module without torch: the configuration (``model.init``), ``gil prepare`` (values binned as the
checkpoint expects) and ``gil split`` (genes new to the model) read these small JSON files; only
the weights need torch (:mod:`gil.model.scgpt`).

The directory, as scGPT publishes it::

    DIR/args.json       model sizes and options (embsize, nheads, d_hid, nlayers, n_bins, ...)
    DIR/vocab.json      gene symbol -> token id, with "<pad>", "<cls>" (and "<eoc>")
    DIR/best_model.pt   the state dict of scGPT's TransformerModel

Everything gil cannot compute the way scGPT did is refused here, with one line naming the
``args.json`` key (the state-dict keys are checked again when the weights are mapped).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from gil.errors import GilError

ARGS_FILE = "args.json"
VOCAB_FILE = "vocab.json"
STATE_FILES = ("best_model.pt", "model.pt")
SPECIAL_TOKENS = ("<pad>", "<cls>")  # gil's token ids 0 and 1, in this order
IGNORED_TOKENS = ("<eoc>",)  # scGPT's end-of-cell token: gil's batches never contain it
VALUE_CLAMP = 512.0  # scGPT's ContinuousValueEncoder clamps its inputs at max_value=512
MASK_VALUE = -1  # gil's masked input value (gil.data.batches.MASKED_VALUE), scGPT's default

# args.json key -> gil model key (alternative spellings of one key: the first present wins).
SIZE_KEYS = {
    "n_layers": ("nlayers",),
    "d_model": ("embsize", "d_model"),
    "n_heads": ("nheads", "nhead"),
    "d_ff": ("d_hid",),
}

# args.json options gil cannot represent: (key, accepted values, why).
_UNSUPPORTED: tuple[tuple[str, tuple[Any, ...], str], ...] = (
    ("pre_norm", (False, None), "gil's encoder layers are post-norm only"),
    ("norm_scheme", ("post", None), "gil's encoder layers are post-norm only"),
    ("use_batch_labels", (False, None), "gil has no batch-label encoder"),
    ("INPUT_BATCH_LABELS", (False, None), "gil has no batch-label encoder"),
    ("DSBN", (False, None), "gil has no domain-specific batch norm"),
    ("domain_spec_batchnorm", (False, None), "gil has no domain-specific batch norm"),
    ("input_emb_style", ("continuous", None), "gil encodes values with scGPT's continuous encoder only"),
    ("explicit_zero_prob", (False, None), "gil's heads predict values, not zero probabilities"),
    ("cell_emb_style", ("cls", None), "gil's cell embedding is the <cls> state"),
    ("mvc_decoder_style", ("inner product", None), "gil's MVC head is the inner-product decoder"),
    ("fast_transformer_backend", ("flash", None), "gil computes exact attention, not linear attention"),
    ("mask_value", (MASK_VALUE, None), f"gil masks input values with {MASK_VALUE}"),
)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise GilError(f"model.init.path: {path} not found; an scGPT model directory holds {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GilError(f"{path}: not valid JSON; replace it with the file published with the model") from None


def read_args(directory: Path) -> dict[str, Any]:
    """``args.json``, checked: every size present, nothing gil cannot represent."""
    args = _read_json(directory / ARGS_FILE, f"{ARGS_FILE}, {VOCAB_FILE} and best_model.pt")
    if not isinstance(args, dict):
        raise GilError(f"{directory / ARGS_FILE}: expected a JSON object of model options")
    for key, accepted, why in _UNSUPPORTED:
        if args.get(key) not in accepted:
            raise GilError(
                f"{directory / ARGS_FILE}: {key}={args[key]!r} is not supported ({why}); "
                "use a checkpoint without it"
            )
    return args


def model_sizes(directory: Path) -> dict[str, Any]:
    """The gil model keys that the checkpoint fixes: sizes, ReLU feed-forward, value clamp (and dropout)."""
    args = read_args(directory)
    sizes: dict[str, Any] = {}
    for gil_key, names in SIZE_KEYS.items():
        found = [args[name] for name in names if name in args]
        if not found or not isinstance(found[0], int) or found[0] < 1:
            raise GilError(
                f"{directory / ARGS_FILE}: {names[0]} is missing or not a positive integer; "
                "it is needed to rebuild the model"
            )
        sizes[gil_key] = found[0]
    if sizes["d_model"] % sizes["n_heads"]:
        raise GilError(
            f"{directory / ARGS_FILE}: embsize is not divisible by nheads; the file is inconsistent"
        )
    sizes["activation"] = "relu"
    sizes["value_clamp"] = VALUE_CLAMP
    if isinstance(args.get("dropout"), int | float) and 0 <= args["dropout"] < 1:
        sizes["dropout"] = float(args["dropout"])
    return sizes


def binned_values(directory: Path) -> int | None:
    """``n_bins`` when the checkpoint was trained on per-cell binned values, else None (log1p).

    scGPT's pretraining scripts record ``input_style: binned`` and ``n_bins``; a checkpoint with
    ``n_bins`` but no ``input_style`` is taken as binned too (binning is scGPT's default input), one
    with neither as unknown (None: ``prepare.values: auto`` then stores log1p).
    """
    args = read_args(directory)
    if "input_style" not in args and "n_bins" not in args:
        return None
    style, n_bins = args.get("input_style", "binned"), args.get("n_bins")
    if style != "binned":
        if style in ("log1p", "normed_raw"):
            return None
        raise GilError(f"{directory / ARGS_FILE}: input_style={style!r} is not supported (binned or log1p)")
    if not isinstance(n_bins, int) or n_bins < 3:
        raise GilError(f"{directory / ARGS_FILE}: input_style is binned but n_bins is missing or below 3")
    return n_bins


def read_vocab(directory: Path) -> dict[str, int]:
    """``vocab.json``: gene symbol -> row of the embedding table; the special tokens must be there."""
    vocab = _read_json(directory / VOCAB_FILE, f"{ARGS_FILE}, {VOCAB_FILE} and best_model.pt")
    if not isinstance(vocab, dict) or not all(isinstance(v, int) and v >= 0 for v in vocab.values()):
        raise GilError(f"{directory / VOCAB_FILE}: expected a JSON object of gene symbol -> token id")
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise GilError(
            f"{directory / VOCAB_FILE}: special tokens {missing} are missing; gil needs <pad> and <cls>"
        )
    if len(set(vocab.values())) != len(vocab):
        raise GilError(f"{directory / VOCAB_FILE}: several symbols share a token id; the file is corrupt")
    return vocab


def model_genes(directory: Path) -> dict[str, int]:
    """The gene symbols of ``vocab.json`` (special and ignored tokens left out) -> their rows."""
    skip = set(SPECIAL_TOKENS) | set(IGNORED_TOKENS)
    return {symbol: row for symbol, row in read_vocab(directory).items() if symbol not in skip}


def state_file(directory: Path) -> Path:
    """The state dict file (``best_model.pt``, else ``model.pt``)."""
    for name in STATE_FILES:
        if (directory / name).is_file():
            return directory / name
    raise GilError(
        f"model.init.path: {directory} holds no {' or '.join(STATE_FILES)} (the state dict); add it"
    )


def check_directory(directory: Path) -> None:
    """Refuse a directory without the three files, or whose ``args.json``/``vocab.json`` gil cannot use."""
    if not directory.is_dir():
        raise GilError(
            f"model.init.path: {directory} is not a directory; point it at the scGPT model directory"
        )
    model_sizes(directory)
    read_vocab(directory)
    state_file(directory)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=4)
def _identity(state: Path, vocab: Path, state_stat: tuple[int, int], vocab_stat: tuple[int, int]) -> dict:
    return {"state_sha256": _sha256(state), "vocab_sha256": _sha256(vocab)}


def identity(directory: Path) -> dict[str, str]:
    """SHA-256 of the state dict file and of ``vocab.json``: which pretrained model a run started from.

    Cached per (path, size, mtime): a 200 MB checkpoint is hashed once per process.
    """
    state, vocab = state_file(directory), directory / VOCAB_FILE
    read_vocab(directory)
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in (state, vocab)]
    return dict(_identity(state.resolve(), vocab.resolve(), *stats))
