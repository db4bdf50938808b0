"""Re-inject the plausible bugs of issue 17 one at a time and check that a fast test fails for each.

Run: ``.venv/bin/python benchmarks/reinject_bugs.py [NAME ...]``. For every bug a scratch copy of
``src/`` gets one textual edit; the fast tests of the files that should catch it run against that
copy (``PYTHONPATH`` puts it first, fixed order, stop at the first failure). Prints one line per bug:
``caught`` with the first failing test, or ``SURVIVED``; exits 1 if any bug survived or an edit no
longer applies (the code moved: update the edit here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    path: str  # under src/gil/
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = [
    Bug(
        "evaluate: every row of R from the final checkpoint",
        "evaluate.py",
        'stage_path(self.checkpoints / f"seed_{seed}", stage), expected)',
        'stage_path(self.checkpoints / f"seed_{seed}", n_sets - 1), expected)',
        ("test_evaluate.py",),
    ),
    Bug(
        "evaluate: seed 0's matrix instead of the mean over seeds",
        "evaluate.py",
        "regression[key], std = _mean_and_std(stack)",
        "regression[key], std = stack[0], _mean_and_std(stack)[1]",
        ("test_evaluate.py",),
    ),
    Bug(
        "evaluate: probe Δ sign flipped",
        "evaluate.py",
        "delta, delta_se = paired_delta(last.correct, before.correct)",
        "delta, delta_se = paired_delta(before.correct, last.correct)",
        ("test_evaluate.py",),
    ),
    Bug(
        "evaluate: learned_at taken as 0",
        "evaluate.py",
        "before, last = results[learned_at], results[-1]",
        "before, last = results[0], results[-1]",
        ("test_evaluate.py",),
    ),
    Bug(
        "evaluate: MLflow probe_delta holds the standard error",
        "evaluate.py",
        'metrics["probe_delta"] = seed_summary["probe"]["delta"]',
        'metrics["probe_delta"] = seed_summary["probe"]["delta_se"]',
        ("test_evaluate.py",),
    ),
    Bug(
        "probes: C chosen on the test cells",
        "metrics/probes.py",
        "_best_c_predictions(x_train, targets[train], x_val, targets[val], x_test, c_grid, seed)",
        "_best_c_predictions(x_train, targets[train], x_test, targets[test], x_test, c_grid, seed)",
        ("test_probes.py",),
    ),
    Bug(
        "distill: term sign flipped",
        "strategies/distill.py",
        'terms = {"distill": self.params.lam * distillation_loss(',
        'terms = {"distill": -self.params.lam * distillation_loss(',
        ("test_strategy_terms.py", "test_strategies.py"),
    ),
    Bug(
        "distill: cls term weighted by lam",
        "strategies/distill.py",
        'terms["distill_cls"] = self.params.cls_weight * ',
        'terms["distill_cls"] = self.params.lam * ',
        ("test_strategy_terms.py",),
    ),
    Bug(
        "ewc: penalty sign flipped",
        "strategies/ewc.py",
        'return {"ewc": self.params.lam * ewc_penalty(',
        'return {"ewc": -self.params.lam * ewc_penalty(',
        ("test_strategy_terms.py", "test_strategies.py"),
    ),
    Bug(
        "ewc: γ merge swapped",
        "strategies/ewc.py",
        "value = value + self.params.gamma * old",
        "value = self.params.gamma * value + old",
        ("test_strategy_terms.py",),
    ),
    Bug(
        "ewc: Fisher as mean absolute gradient",
        "strategies/functional.py",
        "sums[name] += param.grad.detach() ** 2",
        "sums[name] += param.grad.detach().abs()",
        ("test_strategy_terms.py",),
    ),
    Bug(
        "ewc: state not restored on resume",
        "strategies/ewc.py",
        '        self.fisher = dict(state["fisher"])\n        self.anchor = dict(state["anchor"])',
        "        self.fisher, self.anchor = {}, {}",
        ("test_strategy_terms.py",),
    ),
    Bug(
        "replay_distill: no distillation term",
        "strategies/replay_distill.py",
        "return self.distill.loss_terms(ctx, batch, output)",
        "return {}",
        ("test_strategy_terms.py",),
    ),
    Bug(
        "replay_distill: buffer not restored on resume",
        "strategies/replay_distill.py",
        "        self.replay.load_state_dict(state)",
        "        del state",
        ("test_strategy_terms.py",),
    ),
    Bug(
        "replay: 1 − mix of each batch from the buffer",
        "strategies/replay.py",
        "n_replay = max(1, round(self.params.mix * ctx.batch_size))",
        "n_replay = max(1, round((1 - self.params.mix) * ctx.batch_size))",
        ("test_strategy_terms.py",),
    ),
    Bug(
        "train: --fresh ignored",
        "train/loop.py",
        "        if fresh:\n            for stage in completed_stages",
        "        if False:\n            for stage in completed_stages",
        ("test_strategy_terms.py",),
    ),
    Bug(
        "leaderboard: superseded runs counted",
        "tracking/leaderboard.py",
        "and tags.`{TAG_SUPERSEDED}` = 'false' ",
        "",
        ("test_leaderboard.py",),
    ),
    Bug(
        "leaderboard: a missing metric ranks first",
        "tracking/leaderboard.py",
        'na_position="last"',
        'na_position="first"',
        ("test_leaderboard.py",),
    ),
    Bug(
        "leaderboard: tie-break follows descending",
        "tracking/leaderboard.py",
        "ascending=[not descending, True][: len(ranking)]",
        "ascending=[not descending, not descending][: len(ranking)]",
        ("test_leaderboard.py",),
    ),
    Bug(
        "suite: ranks reversed (most forgetting first)",
        "suite.py",
        'rank(method="average", ascending=ascending)',
        'rank(method="average", ascending=not ascending)',
        ("test_suite.py",),
    ),
    Bug(
        "suite: ties take the lowest rank",
        "suite.py",
        'rank(method="average", ascending=ascending)',
        'rank(method="min", ascending=ascending)',
        ("test_suite.py",),
    ),
    Bug(
        "suite: spread over settings with ddof=0",
        "suite.py",
        '"spread": grouped["mean"].std(ddof=1)',
        '"spread": grouped["mean"].std(ddof=0)',
        ("test_suite.py",),
    ),
    Bug(
        "suite: overall ties broken by name, not mean rank",
        "suite.py",
        'sort_values(["mean", "mean_rank", "strategy"]',
        'sort_values(["mean", "strategy", "mean_rank"]',
        ("test_suite.py",),
    ),
    Bug(
        "suite: Kendall's W with settings and strategies swapped",
        "suite.py",
        "n, m = ranks.shape",
        "m, n = ranks.shape",
        ("test_suite.py",),
    ),
    Bug(
        "settings: an override replaces its whole section",
        "settings.py",
        "result[key] = merged(base.get(key), value)",
        "result[key] = copy.deepcopy(value)",
        ("test_suite.py",),
    ),
    Bug(
        "settings: suite.train not applied",
        "settings.py",
        'resolved["train"] = merged(raw.get("train") or {}, suite.get("train") or {})',
        'resolved["train"] = raw.get("train") or {}',
        ("test_suite.py",),
    ),
    Bug(
        "paired: t interval with n instead of n − 1 degrees of freedom",
        "metrics/paired.py",
        "t_quantile(0.5 + confidence / 2, n - 1)",
        "t_quantile(0.5 + confidence / 2, n)",
        ("test_paired.py", "test_report.py", "test_suite.py"),
    ),
    Bug(
        "paired: population sd (ddof=0) of the differences",
        "metrics/paired.py",
        "float(diffs.std(ddof=1))",
        "float(diffs.std())",
        ("test_paired.py", "test_report.py", "test_suite.py"),
    ),
    Bug(
        "paired: seeds paired by position, not by name",
        "metrics/paired.py",
        "pairs = [(_finite(values[seed]), _finite(reference[seed])) for seed in seeds]",
        "pairs = list(zip(map(_finite, values.values()), map(_finite, reference.values())))",
        ("test_paired.py", "test_report.py", "test_suite.py"),
    ),
    Bug(
        "paired: one-sided 95 % quantile",
        "metrics/paired.py",
        "t_quantile(0.5 + confidence / 2, n - 1)",
        "t_quantile(confidence, n - 1)",
        ("test_paired.py", "test_report.py", "test_suite.py"),
    ),
    Bug(
        "metrics: per-set Δ from the row before the last",
        "metrics/continual.py",
        "return matrix[n, 1:n] - np.diagonal(matrix)[1:n]",
        "return matrix[n - 1, 1:n] - np.diagonal(matrix)[1:n]",
        ("test_metrics.py",),
    ),
    Bug(
        "tracking: the setting is not part of a run's identity",
        "tracking/mlflow_tracker.py",
        "**({TAG_SETTING: tags[TAG_SETTING]} if TAG_SETTING in tags else {}),",
        "",
        ("test_tracking.py",),
    ),
    Bug(
        "sweep: the Pareto set is only the best point",
        "sweep/selection.py",
        "return [r for r in records if not any(dominates(other, r) for other in records if other is not r)]",
        'return [min(records, key=lambda r: r["metrics"]["score"])] if records else []',
        ("test_sweep.py",),
    ),
    Bug(
        "sweep: best trial with the highest score",
        "sweep/selection.py",
        'best = min(candidates, key=lambda r: r["metrics"]["score"])',
        'best = max(candidates, key=lambda r: r["metrics"]["score"])',
        ("test_sweep.py",),
    ),
    Bug(
        "sweep: stopped trials told to Optuna as complete",
        "sweep/runner.py",
        "            result = None  # OptunaSearch records",
        "            pass  # OptunaSearch records",
        ("test_sweep.py",),
    ),
    Bug(
        "sweep: Optuna maximises",
        "sweep/runner.py",
        'mode="min" if len(metrics) == 1 else ["min"] * len(metrics),',
        'mode="max" if len(metrics) == 1 else ["max"] * len(metrics),',
        ("test_sweep.py",),
    ),
    Bug(
        "train: the embedding table's lr scale ignored",
        "train/loop.py",
        'group["lr"] = rate * group["lr_scale"]',
        'group["lr"] = rate',
        ("test_train.py",),
    ),
    Bug(
        "train: cosine schedule rising instead of decaying",
        "train/loop.py",
        "return 0.5 * (1.0 + math.cos(math.pi * progress))",
        "return 0.5 * (1.0 - math.cos(math.pi * progress))",
        ("test_train.py",),
    ),
    Bug(
        "train: embedding_lr_scale always in the fingerprint (old checkpoints refused)",
        "train/loop.py",
        '    "embedding_lr_scale": 1.0,\n',
        "",
        ("test_train.py",),
    ),
    Bug(
        "train: mvc_positions all also scores the <cls> and pad positions",
        "train/loop.py",
        "scored = (batch.gene_sets != NO_SET) & ~batch.queries if",
        "scored = torch.ones_like(batch.masked) if",
        ("test_train.py",),
    ),
    Bug(
        "model: the MVC term scored on the masked positions whatever mvc_scored says",
        "model/transformer.py",
        "F.mse_loss(output.mvc[mvc_scored], targets[mvc_scored])",
        "F.mse_loss(output.mvc[masked], targets[masked])",
        ("test_model.py", "test_train.py"),
    ),
    # Issue 24: distillation's old-gene queries, the own-genes probe, the controls.
    Bug(
        "queries: distill_query term sign flipped",
        "strategies/distill.py",
        'terms["distill_query"] = self.params.lam * query_gap',
        'terms["distill_query"] = -self.params.lam * query_gap',
        ("test_gene_queries.py",),
    ),
    Bug(
        "queries: the query term scored on the masked positions instead of the queries",
        "strategies/distill.py",
        "distillation_loss(output.mlm, target.mlm, batch.queries)",
        "distillation_loss(output.mlm, target.mlm, batch.masked)",
        ("test_gene_queries.py",),
    ),
    Bug(
        "queries: drawn from the new set Tk as well",
        "strategies/distill.py",
        "(sets >= 1) & (sets < ctx.stage)",
        "(sets >= 1) & (sets <= ctx.stage)",
        ("test_gene_queries.py",),
    ),
    Bug(
        "queries: may ask for a gene the cell carries",
        "data/batches.py",
        "keys = np.where(carried, 2.0, rng.random(carried.shape))",
        "keys = rng.random(carried.shape)",
        ("test_gene_queries.py",),
    ),
    Bug(
        "queries: the cell's tokens attend to the queries",
        "model/transformer.py",
        "cell_keys = ~(padding | queries)",
        "cell_keys = ~padding",
        ("test_gene_queries.py",),
    ),
    Bug(
        "queries: the task loss (MVC on all positions) scores the queries",
        "train/loop.py",
        "scored = (batch.gene_sets != NO_SET) & ~batch.queries if",
        "scored = batch.gene_sets != NO_SET if",
        ("test_gene_queries.py",),
    ),
    Bug(
        "batches: stage cells keep earlier sets' genes (hidden values leak)",
        "data/batches.py",
        "allowed = (sets == 0) | (sets == own_stage)",
        "allowed = sets <= own_stage",
        ("test_gene_queries.py",),
    ),
    Bug(
        "probes: the own-genes probe fed every known gene",
        "evaluate.py",
        "self.inputs.embeddings(model, task, stage, task.learned_at)",
        "self.inputs.embeddings(model, task, stage)",
        ("test_evaluate.py",),
    ),
    Bug(
        "controls: the positive control redraws no rows",
        "controls.py",
        "(sets >= 1) & (sets < self.last)",
        "(sets >= 1) & (sets < 1)",
        ("test_controls.py",),
    ),
    Bug(
        "controls: the negative control scores the redrawn model",
        "controls.py",
        'scored = {"negative": self._scores(self._model(seed, self.last))}',
        'scored = {"negative": self._scores(redraw_gene_rows(self._model(seed, self.last), '
        "self.forgotten_tokens, seed))}",
        ("test_controls.py",),
    ),
    Bug(
        "controls: the collapse keeps the rows as they are",
        "controls.py",
        "weight[index] = weight[index].mean(dim=0, keepdim=True)",
        "weight[index] = weight[index]",
        ("test_controls.py",),
    ),
    Bug(
        "controls: the erasure draws a row per gene (identities survive)",
        "controls.py",
        "return _fresh_rows(model, tokens, 1, derive_seed(seed, 0xE0E0))",
        "return _fresh_rows(model, tokens, len(tokens), derive_seed(seed, 0xE0E0))",
        ("test_controls.py",),
    ),
    Bug(
        "evaluate: every worker scores seed 0",
        "evaluate.py",
        "return evaluator.evaluate_seed(job.seed, reference)",
        "return evaluator.evaluate_seed(0, reference)",
        ("test_controls.py",),
    ),
    Bug(
        "evaluate: seeds scored in this process whatever compute.jobs is",
        "evaluate.py",
        "config.compute.jobs == 1 or",
        "config.compute.jobs >= 1 or",
        ("test_controls.py",),
    ),
    Bug(
        "controls: every seed gets the first seed's worker result",
        "controls.py",
        "per_seed = {str(seed): done[seed] for seed in config.train.seeds}",
        "per_seed = {str(seed): done[config.train.seeds[0]] for seed in config.train.seeds}",
        ("test_controls.py",),
    ),
    Bug(
        "workers: a forked process reuses its parent's fork server",
        "train/workers.py",
        "get_all_start_methods() or _server_owner != os.getpid():",
        "get_all_start_methods():",
        ("test_workers.py",),
    ),
    Bug(
        "leaderboard: the suite ranks every strategy of its experiment, ablations included",
        "tracking/leaderboard.py",
        "(strategies is None or run.data.tags[TAG_STRATEGY] in strategies)",
        "(strategies is None or True)",
        ("test_leaderboard.py",),
    ),
    Bug(
        "controls: the erasure ignores the seed",
        "controls.py",
        "derive_seed(seed, 0xE0E0)",
        "derive_seed(0, 0xE0E0)",
        ("test_controls.py",),
    ),
    # issue 26: selection on validation cells, reporting on test cells, tuned rows
    Bug(
        "sweep: trials scored on the test cells",
        "sweep/trial.py",
        'return EvaluationInputs(config, data, split, cells="validation")',
        'return EvaluationInputs(config, data, split, cells="test")',
        ("test_sweep.py",),
    ),
    Bug(
        "evaluate: scored on the validation cells",
        "scoring.py",
        'cells: CellSet = "test"):',
        'cells: CellSet = "validation"):',
        ("test_evaluate.py",),
    ),
    Bug(
        "split: validation cells drawn before the test cells (test cells move)",
        "data/split.py",
        "part = stratified_parts(keys, (*held_out, 1 - sum(held_out)), rng)",
        "part = stratified_parts(keys, (*held_out[::-1], 1 - sum(held_out)), rng)",
        ("test_split.py",),
    ),
    Bug(
        "config: a strategy's train overrides lose to the global train section",
        "config.py",
        "{**self.train.model_dump(), **overrides}",
        "{**overrides, **self.train.model_dump()}",
        ("test_tuned.py",),
    ),
    Bug(
        "train: the shared base checked against the tuned row's config",
        "train/loop.py",
        "expected = run_fingerprint(self.base_config, None,",
        "expected = run_fingerprint(self.config, None,",
        ("test_tuned.py",),
    ),
    Bug(
        "tune: sweeps of different budgets collected together",
        "sweep/tuned.py",
        "if budgets[name] != first:",
        "if budgets[name] is None:",
        ("test_tuned.py",),
    ),
    Bug(
        "report: tuned − default taken the other way round",
        "tuned_report.py",
        "paired_difference(per_seed[row], per_seed[reference])",
        "paired_difference(per_seed[reference], per_seed[row])",
        ("test_report.py",),
    ),
    Bug(
        "suite: a setting keeps the benchmark's tuned rows",
        "settings.py",
        'resolved["tuned"] = {**(raw.get("tuned") or {}), "rows": []}',
        'resolved["tuned"] = dict(raw.get("tuned") or {})',
        ("test_suite.py",),
    ),
    Bug(
        "config: a dumped config's tuned entries dropped where the tuned file cannot be read",
        "config.py",
        'return {**raw, "strategies": {**strategies, **entries}} if entries else raw',
        'return {**raw, "strategies": {**{k: v for k, v in strategies.items() if "@" not in k}, **entries}}',
        ("test_tuned.py",),
    ),
    Bug(
        "train: the step cap leaves the epoch's batches whole",
        "train/loop.py",
        "batches = batches[: stage_steps - record.optimizer_steps]",
        "batches = batches",
        ("test_train.py",),
    ),
    Bug(
        "train: the step cap never ends the stage",
        "train/loop.py",
        "break  # the cap is reached: the stage's last epoch was cut short",
        "pass  # the cap is reached: the stage's last epoch was cut short",
        ("test_train.py",),
    ),
    Bug(
        "scoring: evaluation cells sampled with replacement",
        "scoring.py",
        "choice(n_items, size=limit, replace=False)",
        "choice(n_items, size=limit, replace=True)",
        ("test_scale_rules.py",),
    ),
    Bug(
        "scoring: a capped task keeps the first targets, not its cells' own",
        "scoring.py",
        "targets=task.targets[keep]",
        "targets=task.targets[: len(keep)]",
        ("test_scale_rules.py",),
    ),
    Bug(
        "split: gene sums read each chunk's rows in reverse",
        "data/split.py",
        "reader.read(np.arange(start, stop))",
        "reader.read(np.arange(start, stop)[::-1])",
        ("test_scale_rules.py",),
    ),
    Bug(
        "cluster: data read from the shared path below the size threshold",
        "cluster/runner.py",
        'return "shared_path" if size > compute.shared_data_above_gib * 2**30 else "object_store"',
        'return "shared_path" if size < compute.shared_data_above_gib * 2**30 else "object_store"',
        ("test_cluster.py",),
    ),
    Bug(
        "cluster: a node that does not see the shared path is not refused",
        "cluster/runner.py",
        'if not (directory / "indptr.npy").is_file():',
        "if False:",
        ("test_cluster.py",),
    ),
    Bug(
        "soma: the obs filter ignored",
        "data/soma.py",
        "experiment.obs.read(value_filter=settings.obs_filter, column_names=read)",
        "experiment.obs.read(column_names=read)",
        ("test_soma.py",),
    ),
    Bug(
        "soma: cells placed by joinid offset, not by their rank among the selected",
        "data/soma.py",
        'rows = np.searchsorted(joinids, table["soma_dim_0"].to_numpy())',
        'rows = table["soma_dim_0"].to_numpy() - joinids[0]',
        ("test_soma.py",),
    ),
    Bug(
        "prepare: the content hash ignores the values",
        "data/io.py",
        '(chunk.data, "<f8"))',
        '(chunk.data * 0, "<f8"))',
        ("test_soma.py", "test_prepare.py", "test_scale_rules.py"),
    ),
    Bug(
        "layout: cell labels loaded as Python strings",
        "data/layout.py",
        'dtypes = {column: "category" for column in wanted}',
        "dtypes = {column: str for column in wanted}",
        ("test_prepare.py",),
    ),
    Bug(
        "layout: cell names loaded by every command",
        "data/layout.py",
        'if names or column != "cell"]',
        "if True or names]",
        ("test_prepare.py",),
    ),
    Bug(
        "layout: labels such as NA read as missing",
        "data/layout.py",
        "usecols=wanted, dtype=dtypes, keep_default_na=False)",
        "usecols=wanted, dtype=dtypes)",
        ("test_prepare.py",),
    ),
    Bug(
        "optimizer: fused Adam (other numbers) instead of foreach",
        "train/loop.py",
        "lr=train.lr, foreach=True)",
        "lr=train.lr, fused=True)",
        ("test_performance_paths.py",),
    ),
    Bug(
        "attention: q and k taken from each other's third of the projection",
        "model/transformer.py",
        "        q, k, v = (\n            part.view",
        "        k, q, v = (\n            part.view",
        ("test_performance_paths.py",),
    ),
]


def run_one(bug: Bug, scratch: Path) -> tuple[str, float]:
    """Apply ``bug`` to a fresh copy of src/ in ``scratch`` and run its tests; the verdict line."""
    source = scratch / "src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT / "src", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = source / "gil" / bug.path
    text = target.read_text()
    if text.count(bug.old) != 1:
        return f"EDIT DOES NOT APPLY ({text.count(bug.old)} matches)", 0.0
    target.write_text(text.replace(bug.old, bug.new))
    env = {**os.environ, "PYTHONPATH": str(source), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    command += ["-m", "not slow", *(str(ROOT / "tests" / name) for name in bug.tests)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode == 0:
        return "SURVIVED", seconds
    if result.returncode == 5:  # pytest: no test selected (e.g. only slow ones named): nothing checked it
        return "NOT CHECKED: no fast test selected", seconds
    failed = re.search(r"^(FAILED|ERROR) (\S+)", result.stdout, re.MULTILINE)
    if failed is None:
        return f"caught, but no test named: {result.stdout[-200:]!r}", seconds
    return f"caught by {failed.group(2)}{' (error)' if failed.group(1) == 'ERROR' else ''}", seconds


def main() -> int:
    chosen = [bug for bug in BUGS if not sys.argv[1:] or any(arg in bug.name for arg in sys.argv[1:])]
    bad = 0
    with tempfile.TemporaryDirectory(prefix="gil-bugs-") as tmp:
        for bug in chosen:
            verdict, seconds = run_one(bug, Path(tmp))
            bad += not verdict.startswith("caught")
            print(f"{bug.name:55s} {verdict} ({seconds:.0f} s)", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} bugs caught")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
