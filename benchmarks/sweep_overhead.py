"""Ray Tune's overhead per sweep trial, and the compute ASHA saves over FIFO.

Why: a sweep on a small CPU machine is only worth distributing if Ray's per-trial cost (actor
start, scheduling, checkpoint persistence, experiment snapshots) is small next to a trial. Trials
here are the real trainable (``gil.sweep.runner``) on synthetic data in a temporary directory,
with tracking disabled, so that only Ray is measured.

1. Overhead: FIFO sweeps with trials of two lengths (epochs per stage). ``Σ trial`` is the sum of
   Ray's ``time_total_s`` (from the trial function's start to its last report); with ``c``
   concurrent trials the ideal wall time is ``Σ trial / c``; the overhead per trial is
   ``(wall - Σ trial / c) · c / n`` (the concurrency-slot seconds not spent inside a trial), shown
   as a fraction of the mean trial time. ``wall`` includes the tuner setup and the end of the sweep.
2. ASHA vs FIFO: the same number of trials, the same TPE seed; compute = Σ trial time; and the
   best objective (weighted score of a trial that completed every stage) each found.

Run: ``.venv/bin/python benchmarks/sweep_overhead.py [--trials 8] [--concurrent 2]``. Prints a
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SPACE = {
    "train.lr": {"loguniform": [1e-4, 3e-2]},
    "strategies.replay.mix": {"uniform": [0.1, 0.5]},
    "strategies.replay.buffer_size": {"int": [10, 80]},
}


def _params(h5ad: Path, epochs: int, trials: int, concurrent: int, scheduler: str) -> dict[str, Any]:
    """Tiny synthetic params: 3 stages (base + 2), the tiny model, tracking off."""
    return {
        "dataset": {"name": "bench", "path": str(h5ad), "label_columns": ["cell_type", "group"]},
        "prepare": {"min_genes_per_cell": 5, "min_cells_per_gene": 3, "chunk_size": 256},
        "split": {
            "seed": 0,
            "eval_fraction": 0.3,
            "genes": {"method": "random", "n_stages": 2, "stage_fraction": 0.1},
        },
        "model": {"preset": "tiny"},
        "train": {
            "seeds": [0],
            "epochs_per_stage": epochs,
            "batch_size": 32,
            "warmup_steps": 0,
            "device": "cpu",
        },
        "evaluate": {"seed": 7, "repeats": 1, "batch_size": 128},
        "strategies": {"replay": {"kind": "replay", "buffer_size": 40, "mix": 0.25}},
        "tracking": {"enabled": False},
        "sweep": {
            "seed": 0,
            "num_samples": trials,
            "max_concurrent": concurrent,
            "scheduler": scheduler,
            "grace_stages": 2,
            "spaces": {"replay": SPACE},
        },
    }


def _sweep(root: Path, h5ad: Path, dirs: tuple[Path, Path], name: str, **params: Any) -> dict[str, Any]:
    from gil.config import config_from_dict
    from gil.sweep.runner import run_sweep

    config = config_from_dict(_params(h5ad, **params))
    started = time.perf_counter()
    summary = run_sweep(
        config,
        "replay",
        dirs[0],
        dirs[1],
        storage_path=root / "ray_results" / name,
        params_path=root / "params.yaml",
        report_dir=root / "reports" / name,
    )
    wall = time.perf_counter() - started
    trial_seconds = [t["metrics"]["time_total_s"] for t in summary["trials"]]
    best = summary["best"]
    return {
        "wall_s": wall,
        "trials": len(trial_seconds),
        "trial_s_sum": sum(trial_seconds),
        "trial_s_mean": sum(trial_seconds) / len(trial_seconds),
        "stopped_early": summary["n_stopped_early"],
        "best_score": None if best is None else best["metrics"]["score"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--epochs", type=int, nargs=2, default=[1, 6], help="short and long trials")
    args = parser.parse_args()

    import ray

    from gil.config import config_from_dict
    from gil.data.prepare import run_prepare
    from gil.data.split import run_split
    from gil.data.synthetic import write_synthetic_h5ad

    with tempfile.TemporaryDirectory(prefix="gil-sweep-bench-") as tmp:
        root = Path(tmp)
        h5ad = write_synthetic_h5ad(
            root / "synthetic.h5ad", n_cells=600, n_genes=80, n_types=4, seed=0, n_groups=2, n_markers=5
        )
        base = config_from_dict(_params(h5ad, 1, 1, 1, "fifo"))
        dirs = (root / "processed", root / "split")
        run_prepare(base, dirs[0])
        run_split(base, dirs[0], dirs[1])
        ray.init(num_cpus=args.concurrent, include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            overhead = {}
            for epochs in args.epochs:
                run = _sweep(
                    root,
                    h5ad,
                    dirs,
                    f"fifo-e{epochs}",
                    epochs=epochs,
                    trials=args.trials,
                    concurrent=args.concurrent,
                    scheduler="fifo",
                )
                slot_overhead = (run["wall_s"] - run["trial_s_sum"] / args.concurrent) * args.concurrent
                run["overhead_per_trial_s"] = slot_overhead / run["trials"]
                run["overhead_fraction"] = run["overhead_per_trial_s"] / run["trial_s_mean"]
                overhead[f"epochs_{epochs}"] = run
            long_epochs = args.epochs[1]
            asha = _sweep(
                root,
                h5ad,
                dirs,
                "asha",
                epochs=long_epochs,
                trials=args.trials,
                concurrent=args.concurrent,
                scheduler="asha",
            )
            fifo = overhead[f"epochs_{long_epochs}"]
        finally:
            ray.shutdown()

    print(
        f"{'run':<14}{'trials':>7}{'wall s':>9}{'Σ trial s':>11}{'mean trial s':>14}"
        f"{'overhead/trial s':>18}{'overhead':>10}{'stopped':>9}{'best score':>12}"
    )
    rows = [*((f"fifo e={k.split('_')[1]}", v) for k, v in overhead.items()), (f"asha e={long_epochs}", asha)]
    for name, run in rows:
        per_trial = run.get("overhead_per_trial_s")
        fraction = run.get("overhead_fraction")
        print(
            f"{name:<14}{run['trials']:>7}{run['wall_s']:>9.1f}{run['trial_s_sum']:>11.1f}"
            f"{run['trial_s_mean']:>14.2f}{'' if per_trial is None else f'{per_trial:.2f}':>18}"
            f"{'' if fraction is None else f'{fraction:.0%}':>10}{run['stopped_early']:>9}"
            f"{run['best_score']:>12.4f}"
        )
    saved = 1 - asha["trial_s_sum"] / fifo["trial_s_sum"]
    print(
        f"ASHA vs FIFO ({args.trials} trials, {long_epochs} epochs/stage): {saved:.0%} less trial compute, "
        f"{1 - asha['wall_s'] / fifo['wall_s']:.0%} less wall time; best score ASHA "
        f"{asha['best_score']:.4f} vs FIFO {fifo['best_score']:.4f}"
    )
    print(
        json.dumps(
            {
                "overhead": overhead,
                "asha": asha,
                "fifo": fifo,
                "asha_compute_saved": saved,
                "concurrent": args.concurrent,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
