"""gil's scGPT import against the real scGPT ``TransformerModel`` (a one-off check, not a test).

Usage: ``pip download --no-deps scgpt==0.2.4 -d /tmp/scgpt-dl`` (on a machine with network), then
``.venv/bin/python benchmarks/scgpt_upstream_check.py /tmp/scgpt-dl/scgpt-0.2.4-py3-none-any.whl``

Why not in the test suite: the ``scgpt`` package does not install with this project's torch (its
``__init__`` imports ``torchtext``, discontinued after torch 2.3), and tests never download. Its
``scgpt/model/model.py`` alone imports with torch 2.13 (flash-attn is optional), so this script
extracts that file (with ``dsbn.py`` and ``grad_reverse.py``) from the wheel into a stub package,
builds a small ``TransformerModel`` (torch attention, MVC on, a classification head) with random
weights, writes it as an scGPT directory in both key layouts, imports it with gil and prints the
largest differences of the MLM, MVC and cell-embedding outputs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from gil.config import config_from_dict
from gil.data.vocab import Vocabulary
from gil.train.loop import build_model_reporting

FILES = ("model.py", "dsbn.py", "grad_reverse.py")


def upstream_model_class(wheel: Path, where: Path) -> type:
    """scGPT's ``TransformerModel`` from the wheel's model files, without the package's ``__init__``."""
    package = where / "scgpt" / "model"
    package.mkdir(parents=True)
    (where / "scgpt" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    with zipfile.ZipFile(wheel) as archive:
        for name in FILES:
            (package / name).write_bytes(archive.read(f"scgpt/model/{name}"))
    sys.path.insert(0, str(where))
    warnings.filterwarnings("ignore", message="flash_attn is not installed")
    from scgpt.model.model import TransformerModel

    return TransformerModel


def main() -> None:
    wheel = Path(sys.argv[1])
    genes = [f"G{j}" for j in range(20)]
    vocab = {gene: row for row, gene in enumerate(genes)} | {"<pad>": 20, "<cls>": 21, "<eoc>": 22}
    args = {"embsize": 16, "nheads": 2, "d_hid": 32, "nlayers": 2, "dropout": 0.0, "n_bins": 51}
    dataset = ["G5", "g7", "G0", "G19", "NEW"]  # g7: matched up to case; NEW: a new gene
    to_upstream = {0: vocab["<pad>"], 1: vocab["<cls>"], 2: 5, 3: 7, 4: 0, 5: 19}
    gil_tokens = torch.tensor([[1, 2, 3, 4, 5, 0], [1, 5, 4, 3, 2, 3]])
    values = torch.tensor([[0, 3.0, -1, 900, 7000, 0], [0, 1, 2, 30, 600, 5]])  # -1 masked; >512 clamped
    padding = gil_tokens == 0
    with tempfile.TemporaryDirectory() as tmp:
        model_class = upstream_model_class(wheel, Path(tmp) / "stub")
        torch.manual_seed(1)
        upstream = model_class(
            len(vocab), 16, 2, 32, 2, n_cls=4, vocab=vocab, dropout=0.0, pad_token="<pad>", do_mvc=True
        ).eval()
        with torch.no_grad():
            for name, tensor in upstream.named_parameters():
                if "norm" in name:  # LayerNorms start at (1, 0): randomise them
                    tensor.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
            expected = upstream(gil_tokens.clone().apply_(to_upstream.get), values, padding, MVC=True)
        for layout in ("torch", "flash"):
            directory = Path(tmp) / layout
            directory.mkdir()
            state = upstream.state_dict()
            if layout == "flash":
                state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in state.items()}
            torch.save(state, directory / "best_model.pt")
            (directory / "vocab.json").write_text(json.dumps(vocab))
            (directory / "args.json").write_text(json.dumps(args))
            config = config_from_dict(
                {
                    "dataset": {"name": "check", "path": "unused.h5ad"},
                    "model": {"init": {"from": "scgpt", "path": str(directory)}, "max_seq": 32},
                }
            )
            gil_vocab = Vocabulary(genes=tuple(dataset), set_sizes=(len(dataset),))
            model, imported = build_model_reporting(config, gil_vocab, seed=0)
            with torch.no_grad():
                output = model.eval()(gil_tokens, values, padding)
            real = ~padding
            diffs = {
                "mlm": (output.mlm[real] - expected["mlm_output"][real]).abs().max(),
                "mvc": (output.mvc[real] - expected["mvc_output"][real]).abs().max(),
                "cell": (output.cell - expected["cell_emb"]).abs().max(),
            }
            shown = ", ".join(f"{name} {float(value):.1e}" for name, value in diffs.items())
            print(f"{layout} layout: max |gil - scGPT| {shown}; {imported.describe(directory)}")


if __name__ == "__main__":
    main()
