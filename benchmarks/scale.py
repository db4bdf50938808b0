"""Wall time, peak memory and disk of the default pipeline's commands from 3*10^4 to 10^6 cells.

Usage::

    .venv/bin/python benchmarks/scale.py [--sizes 30000 100000 300000 1000000] [--work DIR]
        [--steps 50] [--json OUT] [--plot OUT.png] [--soma]

For each size it writes synthetic raw counts (:mod:`gil.data.synthetic_scale`: 20,000 genes, ~1,150
expressed per cell, 6 cell types with marker genes) as an ``.h5ad`` (and, with ``--soma``, as a
TileDB-SOMA experiment), a params copy of this repository's ``params.yaml`` pointing at it (two probe
tasks by cell group, the importance split, one seed, fine-tuning only, ``train.max_steps_per_stage``
steps per stage: one epoch of 10^6 cells is about an hour here), and runs the commands a user runs,
each in its own process, as `dvc repro` would: ``validate``, ``prepare``, ``split``, ``reference``,
``train-base``, ``train -s finetune``, ``evaluate -s finetune``. Peak RSS is the largest sum over the
command's process tree, sampled every 50 ms (worker processes included). Then it fits, per command,
the exponent of time against cells from 10^5 up, prints a table and draws a log-log figure.
Data of a size is deleted before the next size (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from gil.data.synthetic_scale import ScaleSpec, write_scale_data

REPO = Path(__file__).resolve().parent.parent
GIL = [sys.executable, "-m", "gil.cli"]
COMMANDS = ("validate", "prepare", "prepare_soma", "split", "reference", "train_base", "train", "evaluate")


def short_run(params: dict, work: Path, steps: int) -> dict:
    """``params`` with one seed, fine-tuning only, ``steps`` steps per stage, tracking in ``work``."""
    params["train"].update({"seeds": [0], "epochs_per_stage": 1, "max_steps_per_stage": steps})
    params["compute"]["jobs"] = 1
    params["strategies"] = {"finetune": {"kind": "finetune"}}
    params["benchmark"] = ["finetune"]
    params["tuned"]["rows"] = []
    for section in ("sweep", "suite", "settings"):
        params.pop(section, None)
    params["tracking"].update({"uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "gil-scale"})
    return params


def scale_params(work: Path, raw: Path, steps: int) -> dict:
    """The repository's params on the synthetic data, with its two tasks by cell group."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] = {"name": "scale", "path": str(raw), "label_columns": ["cell_type", "group"]}
    params["split"]["tasks"] = [
        {"name": "group_a", "label": "cell_type", "column": "group", "values": ["A"]},
        {"name": "group_b", "label": "cell_type", "column": "group", "values": ["B"]},
    ]
    return short_run(params, work, steps)


def zeisel_params(work: Path, raw: Path, steps: int) -> dict:
    """The repository's params unchanged but for the same short run: the Zeisel figures."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"]["path"] = str(raw)
    return short_run(params, work, steps)


def measure(args: list[str], cwd: Path) -> dict:
    """Run ``args``; return its wall seconds and the peak RSS (MiB) of its process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    output = proc.stdout.read() if proc.stdout else ""
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"s": round(seconds, 1), "rss_mib": round(peak / 2**20)}


def disk_mib(path: Path) -> float:
    """Bytes under ``path`` (a file or a directory), in MiB."""
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run_size(n_cells: int, work: Path, steps: int, soma: bool) -> dict:
    """Generate one size (0: the embedded Zeisel data) and run every command on it."""
    directory = work / f"cells_{n_cells}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    if n_cells == 0:
        from gil.data.zeisel import write_zeisel_h5ad

        write_zeisel_h5ad(directory / "raw.h5ad")
        params = zeisel_params(directory, directory / "raw.h5ad", steps)
        result: dict = {"cells": 3005, "genes": 4000, "dataset": "zeisel"}
        soma = False
    else:
        spec = ScaleSpec(n_cells=n_cells)
        nnz = write_scale_data(spec, directory / "raw.h5ad", directory / "raw.soma" if soma else None)
        params = scale_params(directory, directory / "raw.h5ad", steps)
        result = {"cells": n_cells, "genes": spec.n_genes, "nnz": nnz, "dataset": "synthetic"}
    result["generate_s"] = round(time.perf_counter() - started, 1)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = ["-p", "params.yaml"]
    commands = {
        "validate": ["validate", "raw.h5ad", *p],
        "prepare": ["prepare", *p, "--out", "data/processed"],
        "split": ["split", *p],
        "reference": ["reference", *p],
        "train_base": ["train-base", *p, "--out", "checkpoints/base", "--fresh"],
        "train": ["train", *p, "-s", "finetune", "--base", "checkpoints/base", "--fresh"],
        "evaluate": ["evaluate", *p, "-s", "finetune"],
    }
    if soma:
        soma_params = {
            **params,
            "dataset": {
                **params["dataset"],
                "path": str(directory / "raw.soma"),
                "gene_column": "feature_name",
                "soma": {"layer": "raw"},
            },
        }
        (directory / "params_soma.yaml").write_text(yaml.safe_dump(soma_params, sort_keys=False))
        commands["prepare_soma"] = ["prepare", "-p", "params_soma.yaml", "--out", "data/processed_soma"]
    for name in COMMANDS:
        if name in commands:
            result[name] = measure([*GIL, *commands[name]], directory)
            print(
                f"{n_cells:>9} {name:<13} {result[name]['s']:>8.1f} s {result[name]['rss_mib']:>7} MiB",
                flush=True,
            )
    result.setdefault("nnz", json.loads((directory / "data/processed/prepare.json").read_text())["nnz"])
    if soma:  # the two routes must give the same processed arrays
        result["soma_identical"] = all(
            filecmp.cmp(
                directory / "data/processed" / name, directory / "data/processed_soma" / name, shallow=False
            )
            for name in ("indptr.npy", "indices.npy", "values.npy", "genes.tsv", "cells.tsv")
        )
    result["disk_mib"] = {
        name: round(disk_mib(directory / path))
        for name, path in (
            ("raw_h5ad", "raw.h5ad"),
            ("raw_soma", "raw.soma"),
            ("processed", "data/processed"),
            ("split", "data/split"),
            ("checkpoints", "checkpoints"),
        )
        if (directory / path).exists()
    }
    return result


def _synthetic(results: list[dict]) -> list[dict]:
    return [r for r in results if r["dataset"] == "synthetic"]


def fitted_exponents(results: list[dict], from_cells: int = 100_000) -> dict[str, float]:
    """Per command, the slope of log(time) on log(cells) over the sizes from ``from_cells`` up."""
    exponents = {}
    for name in COMMANDS:
        points = [
            (r["cells"], r[name]["s"]) for r in _synthetic(results) if name in r and r["cells"] >= from_cells
        ]
        if len(points) >= 2:
            x, y = np.log([c for c, _ in points]), np.log([max(s, 0.1) for _, s in points])
            exponents[name] = round(float(np.polyfit(x, y, 1)[0]), 2)
    return exponents


def table(results: list[dict], exponents: dict[str, float]) -> str:
    """A Markdown table: per size, each command's wall time and peak RSS; the exponents below."""
    names = [name for name in COMMANDS if any(name in r for r in results)]
    header = "| cells (nnz) | " + " | ".join(names) + " | disk (raw, processed) |"
    lines = [header, "|" + "---|" * (len(names) + 2)]
    for r in results:
        cells = " | ".join(
            f"{r[n]['s']:g} s / {r[n]['rss_mib'] / 1024:.2f} GiB" if n in r else "–" for n in names
        )
        disk = r["disk_mib"]
        lines.append(
            f"| {'Zeisel ' if r['dataset'] == 'zeisel' else ''}{r['cells']:,} ({r['nnz'] / 1e6:.1f} M) | "
            f"{cells} | "
            f"{disk.get('raw_h5ad', 0) / 1024:.2f} GB, {disk.get('processed', 0) / 1024:.2f} GB |"
        )
    lines.append(
        "| time exponent (from 10^5 cells) | "
        + " | ".join(str(exponents.get(n, "–")) for n in names)
        + " | |"
    )
    return "\n".join(lines)


def plot(results: list[dict], out: Path) -> None:
    """Log-log wall time and peak RSS against cells, one line per command."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_rss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in COMMANDS:
        points = [(r["cells"], r[name]) for r in _synthetic(results) if name in r]
        if not points:
            continue
        cells = [c for c, _ in points]
        ax_time.plot(cells, [m["s"] for _, m in points], marker="o", label=name)
        ax_rss.plot(cells, [m["rss_mib"] / 1024 for _, m in points], marker="o", label=name)
    xs = np.array([r["cells"] for r in _synthetic(results)], dtype=float)
    ax_time.plot(xs, 10 * xs / xs[0], "k:", label="linear")
    for ax, label in ((ax_time, "wall time (s)"), (ax_rss, "peak RSS (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_rss.axhline(3.0, color="r", linestyle="--", label="3 GiB bound")
    ax_time.legend(fontsize=7)
    ax_rss.legend(fontsize=7)
    fig.suptitle("gil commands on synthetic data (20,000 genes, ~1,150 expressed per cell), 2 cores")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[0, 30_000, 100_000, 300_000, 1_000_000],
        help="numbers of cells; 0 runs the embedded Zeisel data (3,005 cells) with the same short run",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/gil-scale"))
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per training stage")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--plot", type=Path, help="write the log-log figure here (PNG)")
    parser.add_argument(
        "--soma", action="store_true", help="also write a SOMA experiment and prepare from it"
    )
    parser.add_argument("--keep", action="store_true", help="keep each size's data")
    args = parser.parse_args()
    results = []
    for n_cells in args.sizes:
        results.append(run_size(n_cells, args.work, args.steps, args.soma))
        if args.json:
            args.json.write_text(json.dumps({"results": results}, indent=1))
        if not args.keep:
            shutil.rmtree(args.work / f"cells_{n_cells}", ignore_errors=True)
    exponents = fitted_exponents(results)
    print(table(results, exponents))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "exponents": exponents}, indent=1))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
