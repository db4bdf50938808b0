"""``gil bench``: training and evaluation throughput, FLOP efficiency and memory scaling.

Why it measures this way:

- Training throughput is taken from the real :meth:`StageTrainer.train_stage` (batch assembly,
  host-to-device copy, forward, loss, backward, Adam step), so the number is what a user gets, not
  a model-only microbenchmark. The benchmark split puts every gene in the base set and lets exactly
  ``steps x batch_size`` cells train, so one stage is ``steps`` optimizer steps.
- GFLOP per cell is counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one real
  batch (forward, loss and backward), never estimated from the sizes.
- The matmul peak is measured in the same process on the same threads (fp32 on the CPU, bf16 on
  CUDA), so the achieved fraction is comparable across machines and across load conditions.
- The share of batch assembly is measured by building the same batches again outside the loop.
- ``--scaling`` runs ``gil prepare`` and a short training in subprocesses on synthetic data of two
  sizes and compares their peak RSS: memory must not grow with the number of cells. The synthetic
  input is written chunk by chunk (an ``.h5ad`` via anndata's sparse append, the processed arrays
  via ``open_memmap``), never as a dense matrix.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gil.config import Config, config_from_dict
from gil.data.layout import EVAL_STAGE, ProcessedData, Split
from gil.files import dumps_json

DEFAULT_PROCESSED = Path("data/processed")
BENCH_BATCH = 32
EVAL_BATCH = 64


# -- synthetic data, written in chunks ---------------------------------------------------------------


def _synthetic_chunk(rng: np.random.Generator, n_cells: int, n_genes: int, nnz_per_cell: int):  # noqa: ANN202
    """A CSR chunk of integer counts with about ``nnz_per_cell`` distinct genes per cell (+-25%).

    Genes are drawn with replacement and de-duplicated after one row-wise sort: vectorised, and
    never a dense ``[cells, genes]`` array.
    """
    import scipy.sparse as sp

    width = int(nnz_per_cell * 1.25) + 1
    draws = rng.integers(0, n_genes, size=(n_cells, width))
    wanted = rng.integers(int(nnz_per_cell * 0.75), width, size=n_cells)
    draws[np.arange(width)[None, :] >= wanted[:, None]] = n_genes  # sentinel: unused draw
    draws.sort(axis=1)
    first = np.ones_like(draws, dtype=bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]
    keep = first & (draws < n_genes)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
    counts = rng.geometric(0.4, size=int(indptr[-1])).astype(np.float32)
    return sp.csr_matrix((counts, draws[keep].astype(np.int32), indptr), shape=(n_cells, n_genes))


def write_synthetic_h5ad(
    path: Path, n_cells: int, n_genes: int, nnz_per_cell: int, seed: int = 0, chunk: int = 1000
) -> Path:
    """Write an ``.h5ad`` of synthetic counts chunk by chunk (memory: one chunk, never the matrix)."""
    import h5py
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.integers(0, 5, n_cells).astype(str))},
        index=[f"cell{i:07d}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{j:05d}" for j in range(n_genes)])
    with h5py.File(path, "w") as handle:
        write_elem(handle, "obs", obs)
        write_elem(handle, "var", var)
        for start in range(0, n_cells, chunk):
            block = _synthetic_chunk(rng, min(chunk, n_cells - start), n_genes, nnz_per_cell)
            if start == 0:
                write_elem(handle, "X", block)
            else:
                sparse_dataset(handle["X"]).append(block)
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
    return path


def write_synthetic_processed(
    directory: Path, n_cells: int, n_genes: int, nnz_per_cell: int, seed: int = 0, chunk: int = 1000
) -> ProcessedData:
    """Write the processed layout (log1p values) directly, chunk by chunk, and memory-map it back."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    blocks = []
    indptr = [np.zeros(1, dtype=np.int64)]
    capacity = n_cells * int(nnz_per_cell * 1.25 + 1)
    indices = np.lib.format.open_memmap(directory / "indices.tmp.npy", "w+", np.int32, (capacity,))
    values = np.lib.format.open_memmap(directory / "values.tmp.npy", "w+", np.float32, (capacity,))
    position = 0
    for start in range(0, n_cells, chunk):
        block = _synthetic_chunk(rng, min(chunk, n_cells - start), n_genes, nnz_per_cell)
        indices[position : position + block.nnz] = block.indices
        values[position : position + block.nnz] = np.log1p(block.data)
        indptr.append(position + block.indptr[1:])
        blocks.append(np.diff(block.indptr))
        position += block.nnz
    for name, source in (("indices", indices), ("values", values)):
        final = np.lib.format.open_memmap(directory / f"{name}.npy", "w+", source.dtype, (position,))
        for start in range(0, position, 1 << 22):
            final[start : start + (1 << 22)] = source[start : min(position, start + (1 << 22))]
        final.flush()
        del final
    del indices, values
    (directory / "indices.tmp.npy").unlink()
    (directory / "values.tmp.npy").unlink()
    np.save(directory / "indptr.npy", np.concatenate(indptr))
    n_genes_per_cell = np.concatenate(blocks)
    pd.DataFrame({"gene": [f"gene{j:05d}" for j in range(n_genes)], "n_cells": 0, "total": 0}).to_csv(
        directory / "genes.tsv", sep="\t", index=False, lineterminator="\n"
    )
    pd.DataFrame({"cell": [f"cell{i:07d}" for i in range(n_cells)], "n_genes": n_genes_per_cell}).to_csv(
        directory / "cells.tsv", sep="\t", index=False, lineterminator="\n"
    )
    (directory / "prepare.json").write_text(dumps_json({"synthetic": True, "nnz": int(position)}))
    return ProcessedData.load(directory)


# -- the throughput benchmark ------------------------------------------------------------------------


def bench_config(preset: str, device: str = "auto") -> Config:
    """The benchmark's config: ``preset`` sizes, batch 32, one stage, no tracking."""
    train = {
        "batch_size": BENCH_BATCH,
        "epochs_per_stage": 1,
        "warmup_steps": 10,
        "device": device,
        "seeds": [0],
    }
    return config_from_dict(
        {
            "dataset": {"name": "bench", "path": "unused.h5ad"},
            "model": {"preset": preset},
            "train": train,
            "evaluate": {"batch_size": EVAL_BATCH},
            "tracking": {"enabled": False},
        }
    )


def bench_split(data: ProcessedData, n_train: int, n_eval: int) -> Split:
    """All genes in the base set; the first ``n_train`` cells train, the next ``n_eval`` evaluate."""
    stages = np.full(data.n_cells, -2, dtype=np.int16)
    order = np.random.default_rng(0).permutation(data.n_cells)
    stages[order[:n_train]] = 0
    stages[order[n_train : n_train + n_eval]] = EVAL_STAGE
    return Split(method="bench", gene_sets=[("B", data.gene_names)], cell_stages=stages, tasks=[])


def measure_matmul_peak(device: torch.device, size: int = 2048, repeats: int = 6) -> float:
    """Best GFLOP/s of a square matmul (fp32 on the CPU, bf16 on CUDA) on the current threads."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def count_step_flops(trainer: Any, rows: np.ndarray) -> float:
    """FLOPs of one training step's forward, loss and backward on the batch of ``rows``.

    torch 2.13's counter has no formula for the CPU attention kernel
    (``_scaled_dot_product_flash_attention_for_cpu`` and its backward), which would leave a third of
    the work uncounted; they are mapped to the formulas of the CUDA flash kernels (same arithmetic).
    """
    from torch.utils import flop_counter
    from torch.utils.flop_counter import FlopCounterMode

    from gil.train.loop import autocast

    batch = trainer.builder.training_batch(rows, np.random.default_rng(0), trainer.config.train.mask_fraction)
    batch = batch.to(trainer.device)
    trainer.model.train()
    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, out_shape=None, **__: (
            flop_counter.sdpa_flop_count(q, k, v)
        ),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *_, out_shape=None, **__: (  # noqa: E501
            flop_counter.sdpa_backward_flop_count(g, q, k, v)
        ),
    }
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        with autocast(trainer.device):
            output = trainer.model(batch.genes, batch.values, batch.padding)
            loss = trainer.task_loss(batch, output)
        loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def assembly_seconds(trainer: Any, rows: np.ndarray, n_batches: int) -> float:
    """Mean seconds to assemble one training batch (outside the loop, same rows and sizes)."""
    rng = np.random.default_rng(1)
    mask = trainer.config.train.mask_fraction
    trainer.builder.training_batch(rows[:BENCH_BATCH], rng, mask)
    started = time.perf_counter()
    for i in range(n_batches):
        start = (i * BENCH_BATCH) % max(len(rows) - BENCH_BATCH, 1)
        trainer.builder.training_batch(rows[start : start + BENCH_BATCH], rng, mask)
    return (time.perf_counter() - started) / n_batches


@torch.no_grad()
def eval_throughput(trainer: Any, rows: np.ndarray, max_seq: int, repeats: int = 2) -> float:
    """Cells per second of evaluation (batch assembly + forward + masked MSE), as the evaluator runs it."""
    from gil.train.loop import autocast

    model, builder, device = trainer.model, trainer.builder, trainer.device
    model.eval()
    mask = trainer.config.train.mask_fraction

    def one_pass(seed: int) -> int:
        n = 0
        for start in range(0, len(rows), EVAL_BATCH):
            batch = builder.evaluation_batch(rows[start : start + EVAL_BATCH], 0, seed + start, mask, max_seq)
            batch = batch.to(device)
            with autocast(device):
                output = model(batch.genes, batch.values, batch.padding)
            float(((output.mlm[batch.masked] - batch.targets[batch.masked]) ** 2).sum())
            n += batch.n_cells
        return n

    one_pass(0)  # warm-up (allocator, compile)
    started, n_cells = time.perf_counter(), 0
    for r in range(repeats):
        n_cells += one_pass(r + 1)
    return n_cells / (time.perf_counter() - started)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux's ``VmHWM`` first: ``ru_maxrss`` of a spawned child starts at its parent's peak (the
    kernel carries the pre-``exec`` high-water mark over), which would make the scaling children
    report the parent's memory.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_bench_data(
    processed: Path, scratch: Path, n_genes: int = 4000, n_cells: int = 6000
) -> tuple[ProcessedData, str]:
    """The real processed data when present, else synthetic data of ``n_genes`` genes."""
    if (processed / "indptr.npy").exists():
        return ProcessedData.load(processed), f"{processed} (processed)"
    data = write_synthetic_processed(scratch / "processed", n_cells, n_genes, nnz_per_cell=1000)
    return data, f"synthetic {n_cells} cells x {n_genes} genes"


def throughput(
    preset: str = "bench",
    steps: int = 120,
    processed: Path = DEFAULT_PROCESSED,
    device: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the training and evaluation benchmark; return every figure as a flat dict."""
    from gil.train.loop import StageTrainer

    if threads is not None:
        torch.set_num_threads(threads)
    config = bench_config(preset, device)
    with tempfile.TemporaryDirectory(prefix="gil-bench-") as scratch:
        data, source = load_bench_data(processed, Path(scratch))
        n_train = min(steps * BENCH_BATCH, data.n_cells - EVAL_BATCH * 2)
        n_eval = min(EVAL_BATCH * 8, data.n_cells - n_train)
        split = bench_split(data, n_train, n_eval)
        trainer = StageTrainer(config, None, 0, data, split, Path(scratch) / "run", progress=False)
        train_rows = split.cells_of_stage(0)
        flops = count_step_flops(trainer, train_rows[:BENCH_BATCH])
        peak = measure_matmul_peak(trainer.device)
        record = trainer.train_stage(0)
        peak = max(peak, measure_matmul_peak(trainer.device))
        step_seconds = BENCH_BATCH / record.cells_per_second
        assembly = assembly_seconds(trainer, train_rows, 30)
        max_seq = config.model.resolved()["max_seq"]
        eval_cps = eval_throughput(trainer, split.cells_of_stage(EVAL_STAGE), max_seq)
    gflop_per_cell = flops / BENCH_BATCH / 1e9
    achieved = gflop_per_cell * record.cells_per_second
    return {
        "preset": preset,
        "data": source,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "steps": int(np.ceil(n_train / BENCH_BATCH)),
        "batch_size": BENCH_BATCH,
        "train_cells_per_s": record.cells_per_second,
        "eval_cells_per_s": eval_cps,
        "gflop_per_cell": gflop_per_cell,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "peak_fraction": achieved / peak,
        "step_ms": step_seconds * 1e3,
        "assembly_ms": assembly * 1e3,
        "assembly_share": assembly / step_seconds,
        "final_loss": record.epochs[-1]["loss"],
        "peak_rss_mib": peak_rss_mib(),
    }


def format_table(result: dict[str, Any]) -> str:
    """The human-readable table of :func:`throughput`'s figures."""
    rows = [
        ("preset / data", f"{result['preset']} / {result['data']}"),
        ("device, threads", f"{result['device']}, {result['threads']}"),
        ("steps x batch", f"{result['steps']} x {result['batch_size']}"),
        ("train cells/s (end to end)", f"{result['train_cells_per_s']:.1f}"),
        ("eval cells/s (end to end)", f"{result['eval_cells_per_s']:.1f}"),
        ("GFLOP per cell (fwd+bwd)", f"{result['gflop_per_cell']:.3f}"),
        ("achieved GFLOP/s", f"{result['achieved_gflops']:.1f}"),
        ("matmul peak GFLOP/s", f"{result['matmul_peak_gflops']:.1f}"),
        ("fraction of peak", f"{result['peak_fraction']:.1%}"),
        ("step time ms", f"{result['step_ms']:.1f}"),
        ("batch assembly ms (share)", f"{result['assembly_ms']:.2f} ({result['assembly_share']:.1%})"),
        ("final epoch loss", f"{result['final_loss']:.5f}"),
        ("peak RSS MiB", f"{result['peak_rss_mib']:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# -- memory scaling ----------------------------------------------------------------------------------


def _child_peak_rss(args: list[str], cwd: Path) -> tuple[float, float]:
    """Run a Python child; return (its peak RSS in MiB, wall seconds). Fails loudly on error."""
    started = time.perf_counter()
    script = (
        "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_module('gil.bench', run_name='__child__'); "
    )
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-2000:]}")
    rss = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    return float(rss), seconds


def _child_main(argv: list[str]) -> None:
    """Entry point of a scaling child: ``prepare DIR`` or ``train DIR STEPS``; prints its peak RSS."""
    from gil.data.prepare import run_prepare

    kind, directory = argv[0], Path(argv[1])
    if kind == "prepare":
        config = config_from_dict(
            {
                "dataset": {
                    "name": "scaling",
                    "path": str(directory / "raw.h5ad"),
                    "label_columns": ["cell_type"],
                },
                "prepare": {"min_genes_per_cell": 10, "min_cells_per_gene": 1},
                "tracking": {"enabled": False},
            }
        )
        run_prepare(config, directory / "processed")
    else:
        from gil.train.loop import StageTrainer

        steps = int(argv[2])
        data = ProcessedData.load(directory / "processed")
        split = bench_split(data, data.n_cells, 0)  # every cell trains: the sampler sees all rows
        trainer = StageTrainer(bench_config("bench"), None, 0, data, split, directory / "run", progress=False)
        rng = np.random.default_rng(0)
        rows = split.cells_of_stage(0)
        optimizer = torch.optim.Adam(trainer.model.parameters(), lr=1e-3)
        for _ in range(steps):
            batch = trainer.builder.training_batch(rng.choice(rows, BENCH_BATCH, replace=False), rng, 0.4)
            output = trainer.model(batch.genes, batch.values, batch.padding)
            loss = trainer.task_loss(batch, output)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


def memory_scaling(
    sizes: tuple[int, ...] = (50_000, 200_000),
    n_genes: int = 20_000,
    nnz_per_cell: int = 1000,
    steps: int = 200,
) -> list[dict[str, Any]]:
    """Peak RSS of ``gil prepare`` and of ``steps`` training steps for each number of cells."""
    results = []
    with tempfile.TemporaryDirectory(prefix="gil-scaling-") as scratch:
        for n_cells in sizes:
            directory = Path(scratch) / f"cells_{n_cells}"
            directory.mkdir()
            started = time.perf_counter()
            write_synthetic_h5ad(directory / "raw.h5ad", n_cells, n_genes, nnz_per_cell)
            generate_s = time.perf_counter() - started
            prepare_rss, prepare_s = _child_peak_rss(["prepare", str(directory)], Path.cwd())
            train_rss, train_s = _child_peak_rss(["train", str(directory), str(steps)], Path.cwd())
            nnz = json.loads((directory / "processed" / "prepare.json").read_text())["nnz"]
            results.append(
                {
                    "cells": n_cells,
                    "genes": n_genes,
                    "nnz": nnz,
                    "h5ad_mib": (directory / "raw.h5ad").stat().st_size / 2**20,
                    "generate_s": generate_s,
                    "prepare_rss_mib": prepare_rss,
                    "prepare_s": prepare_s,
                    "train_rss_mib": train_rss,
                    "train_s": train_s,
                    "train_steps": steps,
                }
            )
            for path in directory.iterdir():  # free the disk before the next size
                if path.is_file():
                    path.unlink()
    return results


def format_scaling(results: list[dict[str, Any]]) -> str:
    """One line per size, then the growth ratios of the largest over the smallest size."""
    lines = [
        f"{'cells':>8} {'nnz':>12} {'h5ad MiB':>9} {'prepare RSS MiB':>16} {'prepare s':>9} "
        f"{'train RSS MiB':>14} {'train s':>8}"
    ]
    for r in results:
        lines.append(
            f"{r['cells']:>8} {r['nnz']:>12} {r['h5ad_mib']:>9.0f} {r['prepare_rss_mib']:>16.0f} "
            f"{r['prepare_s']:>9.1f} {r['train_rss_mib']:>14.0f} {r['train_s']:>8.1f}"
        )
    first, last = results[0], results[-1]
    prepare_growth = last["prepare_rss_mib"] / first["prepare_rss_mib"]
    train_growth = last["train_rss_mib"] / first["train_rss_mib"]
    lines.append(
        f"data x{last['nnz'] / first['nnz']:.2f}: prepare RSS x{prepare_growth:.2f}, "
        f"train RSS x{train_growth:.2f}"
    )
    return "\n".join(lines)


def run_bench(
    preset: str = "bench",
    json_out: bool = False,
    scaling: bool = False,
    steps: int = 120,
    processed: Path = DEFAULT_PROCESSED,
    device: str = "auto",
    threads: int | None = None,
) -> str:
    """What ``gil bench`` prints: the throughput table (or the scaling table); JSON as the last line."""
    if scaling:
        results = memory_scaling()
        text = format_scaling(results)
        return f"{text}\n{json.dumps({'scaling': results})}" if json_out else text
    result = throughput(preset, steps, processed, device, threads)
    text = format_table(result)
    return f"{text}\n{json.dumps(result)}" if json_out else text


if __name__ == "__child__":
    _child_main(sys.argv)
