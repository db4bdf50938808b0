"""Time and peak memory of an scGPT-human-sized model in gil: import, evaluation, a training step.

Usage: ``.venv/bin/python benchmarks/scgpt_size.py [--vocab 60697] [--dataset-genes 20000]
[--batch 8] [--seq 512] [--steps 2] [--threads N] [--device cpu|cuda]``

The published weights cannot be downloaded here, so the script writes an scGPT-format directory
(``args.json``, ``vocab.json``, ``best_model.pt``) with random weights of scGPT-human's shape: 12
layers, 512 wide, 8 heads, d_hid 512, a ``--vocab``-token vocabulary (scGPT-human: 60,697), with the
flash key layout (``self_attn.Wqkv``) and a classification head that the import drops. Each phase
runs in its own process, so its peak RSS (``ru_maxrss``) is its own:

- ``import``: ``build_model`` with ``model.init: {from: scgpt}`` for ``--dataset-genes`` genes, half of
  them in the vocabulary (what ``gil train-base`` does per seed);
- ``step-full``: forward + masked-value loss + backward + Adam step of ``GeneTransformer`` holding
  the *whole* vocabulary (the worst case: gil's imported table holds only the dataset's genes), on
  ``--batch`` cells of ``--seq`` genes (+ ``<cls>``);
- ``eval``: a no-grad forward of the same batch.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {"embsize": 512, "nheads": 8, "d_hid": 512, "nlayers": 12}


def write_checkpoint(directory: Path, n_vocab: int) -> None:
    """A random state dict in scGPT's key layout (flash attention keys), and its JSON files."""
    d, hid, layers = SIZES["embsize"], SIZES["d_hid"], SIZES["nlayers"]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.05

    state = {"encoder.embedding.weight": rand(n_vocab, d)}
    for name in ("encoder.enc_norm", "value_encoder.norm"):
        state |= {f"{name}.weight": torch.ones(d), f"{name}.bias": torch.zeros(d)}
    state |= {"value_encoder.linear1.weight": rand(d, 1), "value_encoder.linear1.bias": rand(d)}
    state |= {"value_encoder.linear2.weight": rand(d, d), "value_encoder.linear2.bias": rand(d)}
    for i in range(layers):
        p = f"transformer_encoder.layers.{i}."
        state |= {p + "self_attn.Wqkv.weight": rand(3 * d, d), p + "self_attn.Wqkv.bias": rand(3 * d)}
        state |= {p + "self_attn.out_proj.weight": rand(d, d), p + "self_attn.out_proj.bias": rand(d)}
        state |= {p + "linear1.weight": rand(hid, d), p + "linear1.bias": rand(hid)}
        state |= {p + "linear2.weight": rand(d, hid), p + "linear2.bias": rand(d)}
        for norm in ("norm1", "norm2"):
            state |= {p + f"{norm}.weight": torch.ones(d), p + f"{norm}.bias": torch.zeros(d)}
    for j, (n_in, n_out) in zip((0, 2, 4), ((d, d), (d, d), (d, 1)), strict=True):
        state |= {f"decoder.fc.{j}.weight": rand(n_out, n_in), f"decoder.fc.{j}.bias": rand(n_out)}
    state |= {"mvc_decoder.gene2query.weight": rand(d, d), "mvc_decoder.gene2query.bias": rand(d)}
    state |= {"mvc_decoder.W.weight": rand(d, d), "cls_decoder.out_layer.weight": rand(10, d)}
    torch.save(state, directory / "best_model.pt")
    genes = [f"GENE{j}" for j in range(n_vocab - 3)]
    vocab = {token: row for row, token in enumerate([*genes, "<pad>", "<cls>", "<eoc>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    args = {**SIZES, "dropout": 0.2, "n_bins": 51, "input_style": "binned", "input_emb_style": "continuous"}
    (directory / "args.json").write_text(json.dumps(args))


def _config(directory: Path, device: str):  # noqa: ANN202 - gil.config.Config
    from gil.config import config_from_dict

    return config_from_dict(
        {
            "dataset": {"name": "bench", "path": "unused.h5ad"},
            "model": {"init": {"from": "scgpt", "path": str(directory)}, "max_seq": 512},
            "train": {"device": device},
            "tracking": {"enabled": False},
        }
    )


def phase_import(directory: Path, args: argparse.Namespace) -> dict:
    from gil.data.vocab import Vocabulary
    from gil.train.loop import build_model_reporting

    known = [f"GENE{j}" for j in range(0, 2 * args.dataset_genes, 4)][: args.dataset_genes // 2]
    genes = known + [f"NEW{j}" for j in range(args.dataset_genes - len(known))]
    vocab = Vocabulary(genes=tuple(genes), set_sizes=(len(genes),))
    started = time.perf_counter()
    model, imported = build_model_reporting(_config(directory, args.device), vocab, seed=0)
    return {
        "seconds": time.perf_counter() - started,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrained_genes": imported.pretrained_genes,
    }


def _batch(n_tokens: int, args: argparse.Namespace, device: torch.device) -> tuple:
    gen = torch.Generator().manual_seed(1)
    genes = torch.randint(2, n_tokens, (args.batch, args.seq + 1), generator=gen)
    genes[:, 0] = 1
    values = torch.randint(0, 51, (args.batch, args.seq + 1), generator=gen).float()
    masked = torch.rand(args.batch, args.seq + 1, generator=gen) < 0.4
    masked[:, 0] = False
    padding = torch.zeros_like(masked)
    inputs = torch.where(masked, torch.full_like(values, -1.0), values)
    return tuple(t.to(device) for t in (genes, inputs, values, masked, padding))


def phase_step(directory: Path, args: argparse.Namespace, train: bool) -> dict:
    from gil.model import GeneTransformer, masked_value_loss
    from gil.train.loop import autocast

    device = torch.device(args.device)
    sizes = _config(directory, args.device).model.resolved()
    model = GeneTransformer.from_sizes(args.vocab, sizes).to(device)
    genes, inputs, targets, masked, padding = _batch(args.vocab, args, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        if train:
            model.train()
            with autocast(device):
                loss = masked_value_loss(model(genes, inputs, padding), targets, masked, 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            model.eval()
            with torch.no_grad(), autocast(device):
                model(genes, inputs, padding)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    result = {"seconds_per_step": times, "parameters": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=60697, help="tokens of the checkpoint's vocabulary")
    parser.add_argument("--dataset-genes", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--phase", choices=["import", "step-full", "eval"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.phase:  # a child process: one phase, one JSON line with its own peak RSS
        run = {"import": lambda: phase_import(args.dir, args)}
        run |= {
            "step-full": lambda: phase_step(args.dir, args, True),
            "eval": lambda: phase_step(args.dir, args, False),
        }
        result = run[args.phase]()
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        write_checkpoint(directory, args.vocab)
        size = (directory / "best_model.pt").stat().st_size / 2**20
        seconds = time.perf_counter() - started
        print(f"wrote a {size:.0f} MiB random scGPT-human-shaped checkpoint in {seconds:.1f} s")
        passed = sys.argv[1:]
        for phase in ("import", "eval", "step-full"):
            command = [sys.executable, __file__, *passed, "--phase", phase, "--dir", str(directory)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            print(f"{phase}: {out.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
