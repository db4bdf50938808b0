"""``gil controls``: can the evaluation see forgetting at all? A positive and a negative control.

Why: a benchmark that reports "no forgetting" must show that it would have seen forgetting. Both
controls start from the final checkpoint of one run (default: fine-tuning), seed by seed:

- **positive control**: the gene embedding rows of every earlier stage set ``T1..T(n-1)`` are
  replaced by freshly initialised rows, at the scale new genes start from (the model has lost those
  genes completely, everything else intact). Its regression Δ on those sets (against the run's own
  loss right after each set's stage) and the drop of the ``own_genes`` probe (input: the task's own
  genes) against the intact model say what complete forgetting looks like at this scale;
- **negative control**: the same intact checkpoint loaded and scored twice, as "before" and "after":
  Δ and probe Δ must be exactly 0 (the evaluation is deterministic: any other value would be noise
  in the measurement itself).

Output ``metrics/controls.json``: per seed and as means over seeds; ``gil report`` shows the rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gil.config import Config
from gil.data.layout import ProcessedData, Split, Task
from gil.evaluate import Evaluator
from gil.files import finite_or_none
from gil.metrics import mean_std
from gil.metrics.probes import paired_delta
from gil.model import GeneTransformer
from gil.train.checkpoint import load_checkpoint, stage_path
from gil.train.loop import derive_seed, load_stage_model, run_fingerprint

NOTE = (
    "positive: the final model with the embedding rows of T1..T(n-1) freshly initialised (complete "
    "forgetting of those genes); negative: the same final model scored twice (no forgetting: exactly 0)"
)


def forget_gene_rows(model: GeneTransformer, tokens: np.ndarray, seed: int) -> GeneTransformer:
    """``model`` with the embedding rows of ``tokens`` redrawn as a new gene's rows are (in place)."""
    table = model.gene_embedding
    generator = torch.Generator().manual_seed(derive_seed(seed, 0xF0F0))
    fresh = torch.randn(len(tokens), table.d_model, generator=generator) * table.init_std
    with torch.no_grad():
        table.weight[torch.as_tensor(tokens, dtype=torch.long)] = fresh.to(table.weight)
    return model


class Controls:
    """The two controls of one run's checkpoints (see the module docstring)."""

    def __init__(self, config: Config, strategy: str, data: ProcessedData, split: Split, checkpoints: Path):
        self.evaluator = Evaluator(config, strategy, data, split, checkpoints)
        self.config, self.strategy, self.split = config, strategy, split
        self.last = split.n_stages
        sets = self.evaluator.vocab.set_of_token()
        self.forgotten_tokens = np.flatnonzero((sets >= 1) & (sets < self.last))
        # Tasks whose genes are forgotten: learned at a stage before the last.
        self.tasks: list[Task] = [task for task in split.tasks if 0 < task.learned_at < self.last]

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
        """Both controls of one seed, next to the intact run's own forgetting."""
        learned = np.array(
            [self.evaluator.inputs.regression(self._model(seed, j), j).mse[j] for j in range(1, self.last)]
        )
        intact, intact_correct = self._scores(self._model(seed, self.last))
        again, again_correct = self._scores(self._model(seed, self.last))
        forgotten = forget_gene_rows(self._model(seed, self.last), self.forgotten_tokens, seed)
        corrupted, corrupted_correct = self._scores(forgotten)
        sets = slice(1, self.last)
        probes = {}
        for task in self.tasks:
            name = task.name
            positive, positive_se = paired_delta(corrupted_correct[name], intact_correct[name])
            probes[name] = {
                "intact_accuracy": float(intact_correct[name].mean()),
                "positive_accuracy": float(corrupted_correct[name].mean()),
                "positive_delta": positive,
                "positive_delta_se": positive_se,
                "negative_delta": paired_delta(again_correct[name], intact_correct[name])[0],
                "majority_rate": task.majority_rate,
            }
        return {
            "learned_mse": learned.tolist(),
            "delta_intact": (intact[sets] - learned).tolist(),
            "delta_positive": (corrupted[sets] - learned).tolist(),
            "delta_negative": (again - intact).tolist(),
            "probe": probes,
        }


def _means(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of each control's Δ (averaged over the forgotten sets) and probe Δ."""
    seeds = list(per_seed.values())
    summary: dict[str, Any] = {}
    for key in ("delta_intact", "delta_positive", "delta_negative"):
        mean, std = mean_std([float(np.mean(s[key])) for s in seeds])
        summary[key], summary[f"{key}_std"] = mean, std
    probes: dict[str, Any] = {}
    for name in seeds[0]["probe"]:
        probes[name] = {}
        for key in ("intact_accuracy", "positive_accuracy", "positive_delta", "negative_delta"):
            mean, std = mean_std([s["probe"][name][key] for s in seeds])
            probes[name][key], probes[name][f"{key}_std"] = mean, std
        probes[name]["majority_rate"] = seeds[0]["probe"][name]["majority_rate"]
    return {**summary, "probe": probes}


def run_controls(
    config: Config, strategy: str, data: ProcessedData, split: Split, checkpoints: Path
) -> dict[str, Any]:
    """The controls document of ``strategy``'s checkpoints over every seed (see the module docstring)."""
    controls = Controls(config, strategy, data, split, checkpoints)
    controls.evaluator.check_checkpoints()
    per_seed = {str(seed): controls.seed(seed) for seed in config.train.seeds}
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
