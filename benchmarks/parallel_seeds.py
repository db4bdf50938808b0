"""Cells/s of one training process with all threads against several one-thread processes.

Why: ``compute.jobs`` trains seeds in separate processes with ``train.threads`` threads each; this
measures whether that pays on this machine for a model preset (forward, loss, backward, Adam step on
random batches of the preset's full length; no data loading).

Usage: ``.venv/bin/python benchmarks/parallel_seeds.py [--preset cpu] [--processes 3] [--steps 40]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import torch

from gil.config import MODEL_PRESETS
from gil.model import GeneTransformer, masked_value_loss

BATCH = 32
VOCAB = 4002


def cells_per_second(preset: str, threads: int, steps: int) -> float:
    """Training cells/s of one process with ``threads`` torch threads (after 5 warm-up steps)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sizes = MODEL_PRESETS[preset]
    model = GeneTransformer.from_sizes(VOCAB, sizes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    length = sizes["max_seq"] + 1
    genes = torch.randint(2, VOCAB, (BATCH, length))
    values, targets = torch.rand(BATCH, length), torch.rand(BATCH, length)
    masked, padding = torch.rand(BATCH, length) < 0.4, torch.zeros(BATCH, length, dtype=torch.bool)
    for step in range(steps + 5):
        if step == 5:
            started = time.perf_counter()
        loss = masked_value_loss(model(genes, values, padding), targets, masked, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - started)


def _one_thread(args: tuple[str, int]) -> float:
    return cells_per_second(args[0], 1, args[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    single = cells_per_second(args.preset, cores, args.steps)
    print(f"1 process x {cores} threads: {single:.0f} cells/s")
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        rates = pool.map(_one_thread, [(args.preset, args.steps)] * args.processes)
    together = sum(rates)  # the processes run the same work at once, so their timings overlap
    print(f"{args.processes} processes x 1 thread: {together:.0f} cells/s in all ({together / single:.2f}x)")


if __name__ == "__main__":
    main()
