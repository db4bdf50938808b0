"""``gil evaluate``: fill the results matrix row by row from each stage's checkpoint, for every seed.

Output: ``metrics/<strategy>.json`` (DVC metrics) with the mean matrix over seeds, summaries as
``*_mean``/``*_std`` over seeds (the plain name holds the mean), probe accuracies per stage, and every
seed's own numbers under ``per_seed``. Undefined values (NaN) are written as ``null``.

Every document carries the reference points of ``gil reference`` (:mod:`gil.reference`): the
per-gene-mean predictor's loss on each gene set (and the skill ``1 − R/b`` derived from it), the
majority-class rate and the raw-expression probe of each task. It also carries what each stage
cost (optimizer steps, cells processed) and how far each gene set's embedding rows moved.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gil.config import Config, evaluation_tags, run_params
from gil.data.layout import ProcessedData, Split, Task
from gil.files import finite_or_none, write_json
from gil.metrics import delta_per_set, final_skill, mean_std, new_set_skill, skill, summarize
from gil.metrics.probes import ProbeResult, paired_delta
from gil.metrics.regression import RegressionRow
from gil.model import GeneTransformer
from gil.reference import check_reference, compute_reference
from gil.scoring import EvaluationInputs
from gil.tracking.base import NullTracker, Tracker
from gil.train.checkpoint import load_checkpoint, stage_path
from gil.train.devices import on_device
from gil.train.loop import load_stage_model, record_of, run_fingerprint, use_threads
from gil.train.parallel import Runner, SeedJob, run_seeds_in_processes, seed_jobs

HEADLINE = (
    "pooled masked-value MSE of the MLM head over all masked positions of each gene set "
    "(per-gene averages under matrix_per_gene)"
)
EVALUATION_NOTE = (
    "fixed evaluation seed: every stage's model is scored on the same held-out cells, gene samples "
    "and masks, restricted to the genes it has seen"
)
PROBE_KEYS = ("accuracy", "accuracy_se", "macro_f1", "knn_accuracy")
OWN_GENES = "own_genes"  # the probe on each task's own gene set alone


def _nan_square(size: int) -> np.ndarray:
    return np.full((size, size), np.nan)


@dataclass
class SeedEvaluation:
    """Every number of one seed's run (matrices: row = after stage, column = gene set)."""

    mse: np.ndarray
    mse_per_gene: np.ndarray
    pearson: np.ndarray
    embedding_cosine: np.ndarray
    seen_mse: list[float]
    probes: dict[str, list[ProbeResult]]
    # The probe on the task's own gene set alone (None before the stage that learns it).
    own_probes: dict[str, list[ProbeResult | None]]
    optimizer_steps: list[int]
    cells_processed: list[int]
    stage_metrics: list[dict[str, float]]  # what each stage run records (NaN left out)

    def summary(self, tasks: list[Task], reference: dict[str, Any]) -> dict[str, Any]:
        baseline = reference["gene_mean_mse"]
        regression = {
            "matrix": self.mse,
            "matrix_per_gene": self.mse_per_gene,
            "pearson": self.pearson,
            "skill": skill(self.mse, baseline),
            "seen_mse": self.seen_mse,
            **summarize(self.mse),
            "delta_per_set": delta_per_set(self.mse),
            "skill_new": new_set_skill(self.mse, baseline),
            "skill_final": final_skill(self.mse, baseline),
        }
        probe_tasks = {}
        for task in tasks:
            probe_tasks[task.name] = {
                **_probe_summary(self.probes[task.name], task.learned_at),
                "learned_at": task.learned_at,
                OWN_GENES: _probe_summary(self.own_probes[task.name], task.learned_at),
            }
        own = [part[OWN_GENES] for part in probe_tasks.values()]
        return {
            "regression": regression,
            "probe": {
                "tasks": probe_tasks,
                **_combined_delta(probe_tasks.values()),
                OWN_GENES: _combined_delta(own),
            },
            "embedding_cosine": self.embedding_cosine,
            "compute": _compute_summary(self.optimizer_steps, self.cells_processed),
        }


def _probe_summary(results: list[ProbeResult | None], learned_at: int) -> dict[str, Any]:
    """A probe's scores after every stage (NaN where it was not run) and its paired Δ.

    Δ compares the last stage with the stage that learned the task's genes; a task learned at the
    last stage has nothing to forget yet (like ``T_n`` in the regression Δ): NaN.
    """
    scores = {key: [getattr(r, key) if r is not None else math.nan for r in results] for key in PROBE_KEYS}
    before, last = results[learned_at], results[-1]
    if learned_at < len(results) - 1 and before is not None and last is not None:
        delta, delta_se = paired_delta(last.correct, before.correct)
    else:
        delta, delta_se = math.nan, math.nan
    return {**scores, "delta": delta, "delta_se": delta_se}


def _combined_delta(parts: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Mean of several Δ (NaN ones left out) and the standard error of that mean, ``sqrt(Σ se²) / m``."""
    kept = [part for part in parts if not math.isnan(part["delta"])]
    if not kept:
        return {"delta": float("nan"), "delta_se": float("nan")}
    ses = np.array([part["delta_se"] for part in kept], dtype=float)
    return {
        "delta": float(np.mean([part["delta"] for part in kept])),
        "delta_se": float(np.sqrt(np.sum(ses**2)) / len(kept)),
    }


def _compute_summary(steps: list[int], cells: list[int]) -> dict[str, Any]:
    """Per-stage optimizer steps and cells processed, with totals over the incremental stages."""
    return {
        "optimizer_steps": steps,
        "cells_processed": cells,
        "optimizer_steps_incremental": sum(steps[1:]),
        "cells_processed_incremental": sum(cells[1:]),
    }


class Evaluator:
    """Scores the checkpoints of one strategy under a config."""

    def __init__(self, config: Config, strategy: str, data: ProcessedData, split: Split, checkpoints: Path):
        self.config, self.strategy, self.split, self.checkpoints = config, strategy, split, checkpoints
        self.inputs = EvaluationInputs(config, data, split)
        self.vocab = self.inputs.vocab

    def check_checkpoints(self) -> None:
        """Refuse missing, corrupt or stale checkpoints of any seed before anything is tracked."""
        for seed in self.config.train.seeds:
            expected = run_fingerprint(self.config, self.strategy, seed, self.vocab, self.split)
            for stage in range(self.split.n_stages + 1):
                load_checkpoint(stage_path(self.checkpoints / f"seed_{seed}", stage), expected, mmap=True)

    def evaluate_seed(self, seed: int, reference: dict[str, Any]) -> SeedEvaluation:
        """Rows 0..n of the results matrix and probe scores after every stage for one seed."""
        n_sets = self.split.n_stages + 1
        result = SeedEvaluation(
            *(_nan_square(n_sets) for _ in range(4)),
            seen_mse=[],
            probes={task.name: [] for task in self.inputs.tasks},
            own_probes={task.name: [] for task in self.inputs.tasks},
            optimizer_steps=[],
            cells_processed=[],
            stage_metrics=[],
        )
        expected = run_fingerprint(self.config, self.strategy, seed, self.vocab, self.split)
        for stage in range(n_sets):
            payload = load_checkpoint(stage_path(self.checkpoints / f"seed_{seed}", stage), expected)
            record = record_of(payload)
            result.optimizer_steps.append(record.optimizer_steps)
            result.cells_processed.append(record.cells_processed)
            result.embedding_cosine[stage, : stage + 1] = record.embedding_cosine
            model = load_stage_model(payload, self.inputs.device)
            row = self.inputs.regression(model, stage)
            result.mse[stage, : stage + 1] = row.mse
            result.mse_per_gene[stage, : stage + 1] = row.mse_per_gene
            result.pearson[stage, : stage + 1] = row.pearson
            result.seen_mse.append(row.seen_mse)
            result.stage_metrics.append(self._stage_metrics(stage, row, reference))
            for task in self.inputs.tasks:
                probe = self.inputs.probe(self.inputs.embeddings(model, task, stage), task)
                result.probes[task.name].append(probe)
                own = self.own_genes_probe(model, task, stage)
                result.own_probes[task.name].append(own)
                for key in PROBE_KEYS:
                    result.stage_metrics[-1][f"probe_{task.name}_{key}"] = getattr(probe, key)
                    if own is not None:
                        result.stage_metrics[-1][f"probe_{task.name}_own_{key}"] = getattr(own, key)
        for metrics in result.stage_metrics:
            for key in [key for key, value in metrics.items() if math.isnan(value)]:
                del metrics[key]
        return result

    def own_genes_probe(self, model: GeneTransformer, task: Task, stage: int) -> ProbeResult | None:
        """The probe whose input is the task's own gene set alone, once a stage has learned it.

        Why next to the usual probe: its input is mostly base genes, which are never forgotten, so it
        cannot see the loss of the task's genes; this one can only succeed through them. None for a
        task tied to no stage (``learned_at`` 0) and before its stage.
        """
        if task.learned_at == 0 or stage < task.learned_at:
            return None
        return self.inputs.probe(self.inputs.embeddings(model, task, stage, task.learned_at), task)

    def _stage_metrics(self, stage: int, row: RegressionRow, reference: dict[str, Any]) -> dict[str, float]:
        known = self.split.set_names[: stage + 1]
        baseline = reference["gene_mean_mse"]
        metrics = {f"mse_{name}": value for name, value in zip(known, row.mse, strict=True)}
        metrics |= {f"pearson_{name}": value for name, value in zip(known, row.pearson, strict=True)}
        metrics |= {f"baseline_mse_{name}": baseline[j] for j, name in enumerate(known)}
        metrics |= {f"skill_{name}": 1.0 - row.mse[j] / baseline[j] for j, name in enumerate(known)}
        metrics["mse_seen"] = row.seen_mse
        return metrics


def _mean_and_std(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over seeds (axis 0); NaN where every seed is NaN, std 0 with one seed."""
    with warnings.catch_warnings():  # cells not yet learned are NaN in every seed: NaN is right
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
        if len(stack) > 1:
            return mean, np.nanstd(stack, axis=0, ddof=1)
        return mean, np.where(np.isnan(stack[0]), np.nan, 0.0)


def _aggregate(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean matrices and ``*_mean``/``*_std`` summaries over seeds."""
    seeds = list(per_seed.values())
    regression: dict[str, Any] = {}
    for key in ("matrix", "matrix_per_gene", "pearson", "skill", "delta_per_set"):
        stack = np.stack([np.asarray(s["regression"][key], dtype=float) for s in seeds])
        regression[key], std = _mean_and_std(stack)
        if key in ("matrix", "skill", "delta_per_set"):
            regression[f"{key}_std"] = std
    for name in (*SUMMARY_NAMES, "intransigence"):
        mean, std = mean_std([s["regression"][name] for s in seeds])
        regression |= {name: mean, f"{name}_mean": mean, f"{name}_std": std}
    tasks: dict[str, Any] = {}
    for name, first in seeds[0]["probe"]["tasks"].items():
        task: dict[str, Any] = {"learned_at": first["learned_at"]}
        for key in ("accuracy", "macro_f1", "knn_accuracy"):
            stack = np.array([s["probe"]["tasks"][name][key] for s in seeds], dtype=float)
            task[key], task[f"{key}_std"] = _mean_and_std(stack)
        task |= _mean_delta([s["probe"]["tasks"][name] for s in seeds])
        own = [s["probe"]["tasks"][name][OWN_GENES] for s in seeds]
        own_accuracy, own_std = _mean_and_std(np.array([o["accuracy"] for o in own], dtype=float))
        task[OWN_GENES] = {"accuracy": own_accuracy, "accuracy_std": own_std, **_mean_delta(own)}
        tasks[name] = task
    cosine = np.stack([np.asarray(s["embedding_cosine"], dtype=float) for s in seeds])
    steps = np.array([s["compute"]["optimizer_steps"] for s in seeds], dtype=float).mean(axis=0)
    cells = np.array([s["compute"]["cells_processed"] for s in seeds], dtype=float).mean(axis=0)
    return {
        "regression": regression,
        "probe": {
            "tasks": tasks,
            **_mean_delta([s["probe"] for s in seeds]),
            OWN_GENES: _mean_delta([s["probe"][OWN_GENES] for s in seeds]),
        },
        "embedding_cosine": _mean_and_std(cosine)[0],
        "compute": _compute_summary(steps.tolist(), cells.tolist()),
    }


def _mean_delta(per_seed: list[dict[str, Any]]) -> dict[str, float]:
    """A probe Δ over seeds: mean, std over seeds, and the standard error of the mean Δ.

    Each seed's Δ has a paired standard error over the task's cells; the mean of ``m`` seeds has
    ``sqrt(Σ se²) / m`` (the cells' sampling noise, which seeds do not average away when the cells
    are the same: a conservative figure next to the spread over seeds).
    """
    mean, std = mean_std([s["delta"] for s in per_seed])
    return {"delta_mean": mean, "delta_std": std, **_combined_delta(per_seed)}


SUMMARY_NAMES = (
    "delta",
    "base_delta",
    "bwt",
    "forgetting",
    "final_mse",
    "plasticity",
    "skill_new",
    "skill_final",
)


def summary_metrics(seed_summary: dict[str, Any]) -> dict[str, float]:
    """The parent-run metrics of one seed, with stable names that sort well in the MLflow UI."""
    regression = seed_summary["regression"]
    metrics = {name: regression[name] for name in SUMMARY_NAMES}
    # Named by gene set (delta_T1 = forgetting of T1 after the last stage) when Δ averages several.
    if len(regression["delta_per_set"]) > 1:
        metrics |= {f"delta_T{j}": value for j, value in enumerate(regression["delta_per_set"], 1)}
    metrics["probe_delta"] = seed_summary["probe"]["delta"]
    metrics["probe_delta_se"] = seed_summary["probe"]["delta_se"]
    metrics["probe_own_delta"] = seed_summary["probe"][OWN_GENES]["delta"]
    metrics["probe_own_delta_se"] = seed_summary["probe"][OWN_GENES]["delta_se"]
    metrics["optimizer_steps"] = seed_summary["compute"]["optimizer_steps_incremental"]
    metrics["cells_processed"] = seed_summary["compute"]["cells_processed_incremental"]
    return {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(v)}


def seed_artifacts(strategy: str, summary: dict[str, Any], set_names: list[str], out_dir: Path) -> list[Path]:
    """Files for the seed's parent run: its metrics JSON, its ``R`` heatmap and forgetting curves.

    The same names on every parent run (the run names the strategy and seed): MLflow's run
    comparison page shows the artifacts that the compared runs have in common side by side, so
    two strategies' forgetting curves can be compared there.
    """

    from gil.figures import plot_forgetting_curves, plot_results_matrix

    document = finite_or_none({"strategy": strategy, "gene_sets": set_names, **summary})
    paths = [out_dir / "metrics.json", out_dir / "R.png", out_dir / "forgetting.png"]
    write_json(paths[0], document)
    plot_results_matrix(document, paths[1])
    plot_forgetting_curves({strategy: document}, paths[2])
    return paths


def _record_seed(
    tracker: Tracker,
    config: Config,
    strategy: str,
    seed: int,
    evaluation: SeedEvaluation,
    summary: dict[str, Any],
    set_names: list[str],
    tags: dict[str, str] | None,
) -> None:
    """Report one evaluated seed on the parent run that training opened (reopened here)."""
    run_tags = {**(tags or {}), **evaluation_tags(config)}
    tracker.begin_run(strategy, seed, run_params(config, strategy), run_tags, resume=True)
    try:
        for stage, metrics in enumerate(evaluation.stage_metrics):
            tracker.begin_stage(stage)
            tracker.log_metrics(metrics)
            tracker.end_stage()
        with tempfile.TemporaryDirectory() as tmp:
            artifacts = seed_artifacts(strategy, summary, set_names, Path(tmp))
            tracker.log_summary(summary_metrics(summary), artifacts)
    except BaseException:
        tracker.end_run("FAILED")
        raise
    tracker.end_run("FINISHED")


def evaluate_strategy(
    config: Config,
    strategy: str,
    data: ProcessedData,
    split: Split,
    checkpoints: Path,
    tracker: Tracker | None = None,
    tags: dict[str, str] | None = None,
    reference: dict[str, Any] | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """The metrics document of one strategy over all seeds (see the module docstring).

    ``reference`` is the document of ``gil reference`` for the same split and evaluation settings
    (the pipeline computes it once for every strategy); None computes it here.

    Each seed's results go to the tracker on the parent run that training opened (reopened here),
    once the seed is evaluated, so an evaluation that fails leaves the run as it was. Seeds are
    scored by :func:`seed_runner`'s runner; this process does all the recording, seed by seed as
    they arrive.
    """
    tracker = tracker or NullTracker()
    runner = seed_runner(config, runner)
    here = on_device(config, "cpu") if runner is not None else config  # else the workers score
    evaluator = Evaluator(here, strategy, data, split, checkpoints)
    evaluator.check_checkpoints()
    if reference is None:
        reference = compute_reference(here, data, split)
    check_reference(reference, split, config)
    if runner is None:
        evaluations = ((seed, evaluator.evaluate_seed(seed, reference)) for seed in config.train.seeds)
    else:
        jobs = seed_jobs(
            config, config.train.seeds, data, strategy_name=strategy, split=split, checkpoints=checkpoints
        )
        work = partial(_evaluate_job, reference=reference)
        evaluations = (
            (job.seed, result) for job, result in runner(work, jobs, f"evaluate {strategy}", False)
        )
    per_seed: dict[str, dict[str, Any]] = {}
    for seed, evaluation in evaluations:
        per_seed[str(seed)] = evaluation.summary(evaluator.inputs.tasks, reference)
        _record_seed(tracker, config, strategy, seed, evaluation, per_seed[str(seed)], split.set_names, tags)
    per_seed = {str(seed): per_seed[str(seed)] for seed in config.train.seeds}
    document = {
        "strategy": strategy,
        "kind": config.strategies[strategy].kind,
        "gene_sets": split.set_names,
        "headline": HEADLINE,
        "evaluation": EVALUATION_NOTE,
        # What reports is scored on test cells only; sweeps select on the validation cells.
        "scored_on": {"cells": "test", "n_cells": len(split.held_out_rows("test"))},
        "reference": reference,
        **_aggregate(per_seed),
        "per_seed": per_seed,
    }
    return finite_or_none(document)


def seed_runner(config: Config, runner: Runner | None) -> Runner | None:
    """Who scores the seeds: ``runner`` when given (Ray tasks), else ``compute.jobs`` worker
    processes when there are several seeds, else None (this process, one seed after another).

    Why workers: a seed's scoring is mostly one-thread work (the probes' logistic regressions, the
    small model's forward passes), so on 2 cores three one-thread workers score the three seeds of
    the default pipeline in ~60 % of the sequential time, worker start included (``make run``'s
    evaluations, benchmarks/README.md). The numbers do not change: the forward passes give the same
    bits on one thread as on two (``tests/test_controls.py`` compares the documents).
    """
    if runner is not None or config.compute.jobs == 1 or len(config.train.seeds) == 1:
        return runner
    return run_seeds_in_processes


def _evaluate_job(job: SeedJob, reference: dict[str, Any]) -> SeedEvaluation:
    """Worker entry point: score one seed's checkpoints (no tracker) on ``train.threads`` threads."""
    use_threads(job.config)
    evaluator = Evaluator(job.worker_config(), job.strategy_name, job.load_data(), job.split, job.checkpoints)
    return evaluator.evaluate_seed(job.seed, reference)
