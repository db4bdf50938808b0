"""``gil controls``: can the evaluation see forgetting at all? Positive and negative controls.

Why: a benchmark that reports "no forgetting" must show that it would have seen forgetting. The
controls start from the final checkpoint of one run (default: fine-tuning), seed by seed:

- **positive controls**: the gene embedding rows of every earlier stage set ``T1..T(n-1)`` are
  ``redrawn`` (replaced by freshly initialised rows at the scale new genes start from: the genes'
  learned identities replaced by new random ones), ``collapsed`` (all set to their mean: the
  model can no longer tell those genes apart) or ``erased`` (all replaced by one freshly initialised
  row: both at once, what the model knew of each gene and which gene it is); everything else intact.
  Their regression Δ on those sets (against the run's own loss right after each set's stage) and the
  change of the ``own_genes`` probe (input: the task's own genes) against the intact model say what
  complete forgetting looks like at this scale. Why three: a retrained probe decodes any consistent
  code, and redrawn rows are one (random, but fixed per gene), so they hide from the probe; collapsed
  rows keep the average gene's mapping, which predicts values tolerably, so they hide part of the
  loss from the regression; erased rows hide from neither;
- **negative control**: the same intact checkpoint loaded and scored twice, as "before" and "after":
  Δ and probe Δ must be exactly 0 (the evaluation is deterministic: any other value would be noise
  in the measurement itself).

Output ``metrics/controls.json``: per seed and as means over seeds; ``gil report`` shows the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gil.config import Config
from gil.data.layout import ProcessedData, Split, Task
from gil.evaluate import Evaluator, seed_runner
from gil.files import finite_or_none
from gil.metrics import mean_std
from gil.metrics.probes import paired_delta
from gil.model import GeneTransformer
from gil.train.checkpoint import load_checkpoint, stage_path
from gil.train.loop import derive_seed, load_stage_model, run_fingerprint, use_threads
from gil.train.parallel import Runner, SeedJob, seed_jobs

NOTE = (
    "positive: the final model with the embedding rows of T1..T(n-1) redrawn (fresh random rows), "
    "collapsed to their mean (identities removed) or erased (all one fresh random row: values and "
    "identities removed); negative: the same final model scored twice (no forgetting: exactly 0)"
)


def _fresh_rows(model: GeneTransformer, tokens: np.ndarray, n_rows: int, stream: int) -> GeneTransformer:
    """``model`` with the rows of ``tokens`` set to ``n_rows`` rows drawn as a new gene's rows are
    (1: one row for all; ``len(tokens)``: one each), from the seeded random ``stream`` (in place)."""
    table = model.gene_embedding
    generator = torch.Generator().manual_seed(stream)
    fresh = torch.randn(n_rows, table.d_model, generator=generator) * table.init_std
    with torch.no_grad():
        table.weight[torch.as_tensor(tokens, dtype=torch.long)] = fresh.to(table.weight)
    return model


def redraw_gene_rows(model: GeneTransformer, tokens: np.ndarray, seed: int) -> GeneTransformer:
    """``model`` with the embedding rows of ``tokens`` redrawn as a new gene's rows are (in place)."""
    return _fresh_rows(model, tokens, len(tokens), derive_seed(seed, 0xF0F0))


def collapse_gene_rows(model: GeneTransformer, tokens: np.ndarray, seed: int) -> GeneTransformer:
    """``model`` with the embedding rows of ``tokens`` all set to their mean (in place; ``seed`` is
    unused: the signature every positive control shares)."""
    weight = model.gene_embedding.weight
    index = torch.as_tensor(tokens, dtype=torch.long)
    with torch.no_grad():
        weight[index] = weight[index].mean(dim=0, keepdim=True)
    return model


def erase_gene_rows(model: GeneTransformer, tokens: np.ndarray, seed: int) -> GeneTransformer:
    """``model`` with the embedding rows of ``tokens`` all replaced by one row drawn as a new gene's
    row is (in place): neither the genes' learned values nor their identities survive."""
    return _fresh_rows(model, tokens, 1, derive_seed(seed, 0xE0E0))


POSITIVE_CONTROLS: dict[str, Callable[[GeneTransformer, np.ndarray, int], GeneTransformer]] = {
    "redrawn": redraw_gene_rows,
    "collapsed": collapse_gene_rows,
    "erased": erase_gene_rows,
}
ROWS = ("intact", *POSITIVE_CONTROLS, "negative")  # the intact run, then every control


class Controls:
    """The controls of one run's checkpoints (see the module docstring)."""

    def __init__(self, config: Config, strategy: str, data: ProcessedData, split: Split, checkpoints: Path):
        self.evaluator = Evaluator(config, strategy, data, split, checkpoints)
        self.config, self.strategy, self.split = config, strategy, split
        self.last = split.n_stages
        sets = self.evaluator.vocab.set_of_token()
        self.forgotten_tokens = np.flatnonzero((sets >= 1) & (sets < self.last))
        # Tasks whose genes are forgotten: learned at a stage before the last.
        self.tasks: list[Task] = [
            task for task in self.evaluator.inputs.tasks if 0 < task.learned_at < self.last
        ]

    def _model(self, seed: int, stage: int) -> GeneTransformer:
        expected = run_fingerprint(self.config, self.strategy, seed, self.evaluator.vocab, self.split)
        payload = load_checkpoint(stage_path(self.evaluator.checkpoints / f"seed_{seed}", stage), expected)
        return load_stage_model(payload, self.evaluator.inputs.device)

    def _scores(self, model: GeneTransformer) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The last row of R and, per forgotten task, which cells the own-genes probe got right."""
        row = np.asarray(self.evaluator.inputs.regression(model, self.last).mse, dtype=float)
        correct = {}
        for task in self.tasks:
            result = self.evaluator.own_genes_probe(model, task, self.last)
            assert result is not None  # learned before the last stage
            correct[task.name] = result.correct
        return row, correct

    def seed(self, seed: int) -> dict[str, Any]:
        """Every control of one seed, next to the intact run's own forgetting."""
        learned = np.array(
            [self.evaluator.inputs.regression(self._model(seed, j), j).mse[j] for j in range(1, self.last)]
        )
        intact, intact_correct = self._scores(self._model(seed, self.last))
        scored = {"negative": self._scores(self._model(seed, self.last))}
        for name, damage in POSITIVE_CONTROLS.items():
            scored[name] = self._scores(damage(self._model(seed, self.last), self.forgotten_tokens, seed))
        sets = slice(1, self.last)
        result: dict[str, Any] = {
            "learned_mse": learned.tolist(),
            "delta_intact": (intact[sets] - learned).tolist(),
        }
        probes: dict[str, dict[str, float]] = {
            task.name: {
                "majority_rate": task.majority_rate,
                "intact_accuracy": float(intact_correct[task.name].mean()),
            }
            for task in self.tasks
        }
        for name, (row, correct) in scored.items():
            # The negative control compares whole rows; a positive one the damaged sets' Δ.
            damaged = row - intact if name == "negative" else row[sets] - learned
            result[f"delta_{name}"] = damaged.tolist()
            for task in self.tasks:
                delta, delta_se = paired_delta(correct[task.name], intact_correct[task.name])
                probes[task.name] |= {
                    f"{name}_accuracy": float(correct[task.name].mean()),
                    f"{name}_delta": delta,
                    f"{name}_delta_se": delta_se,
                }
        return {**result, "probe": probes}


def _means(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of each row's Δ (averaged over the forgotten sets) and probe values."""
    seeds = list(per_seed.values())
    summary: dict[str, Any] = {}
    for name in ROWS:
        mean, std = mean_std([float(np.mean(s[f"delta_{name}"])) for s in seeds])
        summary[f"delta_{name}"], summary[f"delta_{name}_std"] = mean, std
    probes: dict[str, Any] = {}
    for task, first in seeds[0]["probe"].items():
        probes[task] = {"majority_rate": first["majority_rate"]}
        for key in [key for key in first if key.endswith(("_accuracy", "_delta"))]:
            mean, std = mean_std([s["probe"][task][key] for s in seeds])
            probes[task][key], probes[task][f"{key}_std"] = mean, std
    return {**summary, "probe": probes}


def run_controls(
    config: Config,
    strategy: str,
    data: ProcessedData,
    split: Split,
    checkpoints: Path,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """The controls document of ``strategy``'s checkpoints over every seed (see the module docstring).

    Seeds are scored by :func:`gil.evaluate.seed_runner`'s choice, as in evaluation: ``runner``
    when given, else ``compute.jobs`` worker processes, else this process.
    """
    controls = Controls(config, strategy, data, split, checkpoints)
    controls.evaluator.check_checkpoints()
    runner = seed_runner(config, runner)
    if runner is None:
        per_seed = {str(seed): controls.seed(seed) for seed in config.train.seeds}
    else:
        jobs = seed_jobs(
            config, config.train.seeds, data, strategy_name=strategy, split=split, checkpoints=checkpoints
        )
        done = {
            job.seed: result for job, result in runner(_controls_job, jobs, f"controls {strategy}", False)
        }
        per_seed = {str(seed): done[seed] for seed in config.train.seeds}
    return finite_or_none(
        {
            "strategy": strategy,
            "note": NOTE,
            "gene_sets": split.set_names,
            "forgotten_sets": split.set_names[1 : split.n_stages],
            **_means(per_seed),
            "per_seed": per_seed,
        }
    )


def _controls_job(job: SeedJob) -> dict[str, Any]:
    """Worker entry point: every control of one seed, on ``train.threads`` threads."""
    use_threads(job.config)
    assert job.strategy_name is not None  # controls are of a strategy's run
    controls = Controls(job.worker_config(), job.strategy_name, job.load_data(), job.split, job.checkpoints)
    return controls.seed(job.seed)
