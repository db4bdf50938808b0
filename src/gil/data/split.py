"""``gil split``: gene sets ``B, T1..Tn``, the stage of every cell, and the probe tasks.

Everything is drawn from ``split.seed`` through three independent random streams (gene sets, cell
stages, probe splits), so changing e.g. the gene method does not reshuffle the cells.

Gene sets (``split.genes.method``):

- ``random``: ``n_stages`` sets of ``round(stage_fraction * n_genes)`` random genes; the rest is ``B``.
- ``importance`` (the paper): one stage per task, in the order of ``split.tasks``. Task ``k`` scores
  every gene over *all* of the task's cells (any stage, held-out ones included, as the paper does):
  ``score: expression`` sums the log1p values; ``score: differential`` is the mean in the task's cells
  minus the mean in all other cells. Its ``top_n`` genes with a positive score form its top list.
  Rank rule for a gene in several top lists: it goes to the task where it ranks higher (smaller rank);
  a tie goes to the earlier task. So ``Tk`` has at most ``top_n`` genes. Everything else is ``B``.
- ``file``: a YAML mapping ``{T1: [genes], T2: [...]}`` or a CSV/TSV with columns ``gene, stage``;
  stage names are ``T1..Tn`` (or ``1..n``). ``B`` is every other gene.
- ``new_to_model`` (a pretrained ``model.init``): ``B`` is the genes the model's vocabulary knows
  (matched by symbol, :mod:`gil.data.model_vocab`), and every other gene goes to a stage by
  ``assign``: ``random`` (``n_stages`` equal random parts), ``importance`` (to the task ranking it
  highest among the new genes, ties to the earlier task; ``top_n`` does not apply: every new gene
  must be learned at some stage) or ``file`` (which must list exactly the new genes).

Genes within a set keep the processed gene order.

Cells: ``eval_fraction`` of the cells are held out as test cells (stage ``EVAL_STAGE``: what the
benchmark reports on) and ``validation_fraction`` as validation cells (stage ``VALIDATION_STAGE``:
what sweeps select on), both in one draw stratified by the tasks' labels so that every task and
class gets cells of each. The test cells do not depend on ``validation_fraction`` (validation cells
come out of the training cells), and ``validation_fraction`` 0 gives the split of before it existed.
Of the rest, ``base_fraction`` go to stage 0 and the others are split equally among stages ``1..n``
at random.

Tasks: the probe cells of a task are its held-out cells with a non-empty label; evaluation
cross-validates its probes over them (``evaluate.probe.folds``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from gil.config import Config, GeneSplitConfig, SplitConfig, TaskConfig
from gil.data.layout import EVAL_STAGE, VALIDATION_STAGE, ProcessedData, Split, Task
from gil.data.model_vocab import match_genes
from gil.data.prepare import RESERVED_CELL_COLUMNS
from gil.data.rows import row_reader
from gil.errors import GilError
from gil.scgpt_dir import model_genes

MIN_PROBE_CELLS = 10
RANK_RULE = "a gene in several top lists goes to the task ranking it higher; ties go to the earlier task"
STREAMS = ("genes", "cells")


@dataclass(frozen=True)
class TaskCells:
    """A task resolved against the processed cells: who is in it and their labels."""

    config: TaskConfig
    members: np.ndarray
    labels: np.ndarray

    @property
    def labelled(self) -> np.ndarray:
        """Members with a label (a missing label is stored as ``""``)."""
        return self.members & (self.labels != "")


# ---------------------------------------------------------------------------------------------- tasks


def _column(cells: pd.DataFrame, column: str, task: str) -> np.ndarray:
    if column not in cells.columns:
        available = [c for c in cells.columns if c not in RESERVED_CELL_COLUMNS]
        raise GilError(
            f"split.tasks[{task}]: column {column!r} is not in the processed cells (label columns: "
            f"{available}); add it to dataset.label_columns and re-run `gil prepare`"
        )
    return cells[column].to_numpy(dtype=str)


def resolve_task(task: TaskConfig, cells: pd.DataFrame) -> TaskCells:
    """Find the cells of ``task``; unknown columns, values or an empty task are user errors."""
    labels = _column(cells, task.label, task.name)
    members = np.ones(len(cells), dtype=bool)
    if task.column is not None and task.values is not None:
        column = _column(cells, task.column, task.name)
        present = set(np.unique(column))
        unknown = [value for value in task.values if value not in present]
        if unknown:
            raise GilError(
                f"split.tasks[{task.name}]: values {unknown} not found in column {task.column!r} "
                f"(values: {sorted(present)[:12]}); fix split.tasks"
            )
        members = np.isin(column, task.values)
    resolved = TaskCells(task, members, labels)
    if not resolved.labelled.any():
        raise GilError(f"split.tasks[{task.name}]: no cell has a {task.label!r} label; fix split.tasks")
    return resolved


# ------------------------------------------------------------------------------------------ gene sets


def weighted_gene_sums(data: ProcessedData, weights: np.ndarray, chunk_rows: int) -> np.ndarray:
    """``weights @ X`` for ``weights`` of shape (k, n_cells), reading ``chunk_rows`` rows at a time.

    Rows are copied with positioned reads (:mod:`gil.data.rows`), not sliced from the memory map,
    whose touched pages would stay resident: memory stays flat in the number of cells.
    """
    reader = row_reader(data)
    totals = np.zeros((data.n_genes, weights.shape[0]))
    for start in range(0, data.n_cells, chunk_rows):
        stop = min(start + chunk_rows, data.n_cells)
        lengths, columns, values = reader.read(np.arange(start, stop))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        block = sp.csr_matrix((values, columns, indptr), shape=(stop - start, data.n_genes))
        totals += block.T @ weights[:, start:stop].T
    return totals.T


def importance_scores(data: ProcessedData, tasks: list[TaskCells], score: str, chunk_rows: int) -> np.ndarray:
    """Per-task gene scores, shape (n_tasks, n_genes): summed log1p, or mean difference vs other cells."""
    members = np.array([task.members for task in tasks], dtype=np.float64)
    if score == "expression":
        return weighted_gene_sums(data, members, chunk_rows)
    inside = members.sum(axis=1, keepdims=True)
    outside = data.n_cells - inside
    if (outside == 0).any():
        raise GilError(
            "split.genes.score 'differential' needs tasks that leave out some cells; use 'expression'"
        )
    return weighted_gene_sums(data, members / inside - (1 - members) / outside, chunk_rows)


def assign_by_rank(scores: np.ndarray, top_n: int, positive_only: bool = True) -> tuple[np.ndarray, int]:
    """Stage of every gene (0 = base, k = task k) by the rank rule; also how many genes were shared.

    ``positive_only`` False also ranks genes scoring zero (or less), so that with ``top_n`` the
    number of genes every gene is assigned to a task.
    """
    n_tasks, n_genes = scores.shape
    rank = np.empty((n_tasks, n_genes), dtype=np.int64)
    order = np.argsort(-scores, axis=1, kind="stable")
    np.put_along_axis(rank, order, np.arange(n_genes)[None, :].repeat(n_tasks, axis=0), axis=1)
    in_top = (rank < top_n) & ((scores > 0) | (not positive_only))
    best = np.argmin(np.where(in_top, rank, n_genes), axis=0)
    stage = np.where(in_top.any(axis=0), best + 1, 0)
    return stage, int((in_top.sum(axis=0) > 1).sum())


def random_stages(n_genes: int, genes: GeneSplitConfig, rng: np.random.Generator) -> np.ndarray:
    """Stage of every gene: ``n_stages`` random sets of ``round(stage_fraction * n_genes)`` genes."""
    size = round(genes.stage_fraction * n_genes)
    if size == 0:
        raise GilError(
            f"split.genes.stage_fraction {genes.stage_fraction} of {n_genes} genes is 0 genes; raise it"
        )
    stage = np.zeros(n_genes, dtype=np.int64)
    stage[rng.permutation(n_genes)[: genes.n_stages * size]] = np.repeat(
        np.arange(1, genes.n_stages + 1), size
    )
    return stage


def _stage_number(name: object, source: Path) -> int:
    match = re.fullmatch(r"[Tt]?(\d+)", str(name).strip())
    if not match or int(match.group(1)) < 1:
        raise GilError(
            f"{source}: stage {name!r} is not a stage name; use T1, T2, ... (B is all other genes)"
        )
    return int(match.group(1))


def read_gene_file(path: Path) -> pd.DataFrame:
    """The ``gene, stage`` pairs of a YAML or CSV/TSV gene-set file (stage as 1..n)."""
    if not path.is_file():
        raise GilError(f"split.genes.file {path} not found; fix the path")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            raw = yaml.safe_load(path.read_text())
            if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
                raise GilError(
                    f"{path}: expected a mapping of stage name to a list of genes, e.g. T1: [g1, g2]"
                )
            table = pd.DataFrame(
                [(str(gene), stage) for stage, genes in raw.items() for gene in genes],
                columns=["gene", "stage"],
            )
        elif path.suffix.lower() in (".csv", ".tsv"):
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str)
        else:
            raise GilError(f"{path}: unknown gene-set file type; use .yaml, .yml, .csv or .tsv")
    except (yaml.YAMLError, pd.errors.ParserError, UnicodeDecodeError):
        raise GilError(f"{path}: cannot parse the gene-set file; fix its syntax") from None
    if list(table.columns[:2]) != ["gene", "stage"]:
        raise GilError(f"{path}: expected columns 'gene' and 'stage' (got {list(table.columns)})")
    table["stage"] = [_stage_number(stage, path) for stage in table["stage"]]
    return table.drop_duplicates()


def file_stages(gene_index: pd.Index, path: Path) -> np.ndarray:
    """Stage of every processed gene as listed in ``path``; unknown genes and overlaps are errors."""
    table = read_gene_file(path)
    unknown = table.loc[~table["gene"].isin(gene_index), "gene"].unique()
    if len(unknown):
        raise GilError(
            f"{path}: {len(unknown)} genes are not in the processed data (e.g. {list(unknown[:3])}); "
            "fix the names (genes removed by QC are absent: see genes.tsv of the processed data)"
        )
    overlap = table.loc[table["gene"].duplicated(), "gene"].unique()
    if len(overlap):
        raise GilError(f"{path}: genes {list(overlap[:3])} are listed in several stages; keep each in one")
    numbers = sorted(table["stage"].unique())
    if numbers != list(range(1, len(numbers) + 1)):
        raise GilError(f"{path}: stages must be T1..Tn without gaps (got {[f'T{n}' for n in numbers]})")
    stage = np.zeros(len(gene_index), dtype=np.int64)
    stage[gene_index.get_indexer(table["gene"])] = table["stage"].to_numpy()
    return stage


def new_gene_stages(
    config: Config, data: ProcessedData, tasks: list[TaskCells], rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Method ``new_to_model``: base genes are the model's, the new ones spread by ``assign``."""
    genes, directory = config.split.genes, config.model.init.pretrained
    assert directory is not None  # guaranteed by Config
    new = np.array([row is None for row in match_genes(data.gene_names, model_genes(directory))])
    if new.all() or not new.any():
        which = "none" if new.all() else "all"
        raise GilError(
            f"{which} of the {len(new)} dataset genes are in the vocabulary of {directory}: "
            + (
                "check dataset.gene_column (symbols are matched, case rules in the README)"
                if new.all()
                else "no gene is new to the model; choose another split.genes.method"
            )
        )
    index = np.flatnonzero(new)
    stage = np.zeros(data.n_genes, dtype=np.int64)
    if genes.assign == "random":
        stage[index] = 1 + (rng.permutation(len(index)) * genes.n_stages) // len(index)
    elif genes.assign == "file":
        assert genes.file is not None  # guaranteed by GeneSplitConfig
        stage = file_stages(pd.Index(data.gene_names), genes.file)
        wrong = np.flatnonzero((stage > 0) != new)
        if len(wrong):
            names = [data.gene_names[i] for i in wrong[:3]]
            raise GilError(
                f"{genes.file}: {len(wrong)} genes are listed though the model knows them, or are new to "
                f"the model but not listed (e.g. {names}); list exactly the new genes"
            )
    else:
        if not tasks:
            raise GilError(
                "split.genes.assign 'importance' needs split.tasks (one task per stage); add tasks"
            )
        scores = importance_scores(data, tasks, genes.score, config.prepare.chunk_size)[:, index]
        stage[index], _ = assign_by_rank(scores, len(index), positive_only=False)
    details = {"assign": genes.assign, "model": str(directory), "model_genes": int((~new).sum())}
    if genes.assign == "importance":
        details.update(score=genes.score, rank_rule=RANK_RULE)
    return stage, details


def gene_stages(
    config: Config, data: ProcessedData, tasks: list[TaskCells], rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Stage of every gene under ``split.genes.method``, and what to record about how it was chosen."""
    genes = config.split.genes
    if genes.method == "new_to_model":
        return new_gene_stages(config, data, tasks, rng)
    if genes.method == "random":
        return random_stages(data.n_genes, genes, rng), {"stage_fraction": genes.stage_fraction}
    if genes.method == "file":
        assert genes.file is not None  # guaranteed by GeneSplitConfig
        return file_stages(pd.Index(data.gene_names), genes.file), {"file": str(genes.file)}
    if not tasks:
        raise GilError("split.genes.method 'importance' needs split.tasks (one task per stage); add tasks")
    scores = importance_scores(data, tasks, genes.score, config.prepare.chunk_size)
    stage, shared = assign_by_rank(scores, genes.top_n)
    return stage, {"score": genes.score, "top_n": genes.top_n, "rank_rule": RANK_RULE, "shared_genes": shared}


def named_sets(stage: np.ndarray, names: list[str]) -> list[tuple[str, list[str]]]:
    """``[("B", ...), ("T1", ...), ...]`` in processed gene order; every set must have genes."""
    n_stages = int(stage.max(initial=0))
    if n_stages == 0:
        raise GilError("the gene split has no stage genes; check split.genes")
    genes = np.asarray(names, dtype=object)
    sets = [("B" if k == 0 else f"T{k}", genes[stage == k].tolist()) for k in range(n_stages + 1)]
    for name, genes in sets:
        if not genes:
            fix = "lower split.genes.top_n / stage_fraction" if name == "B" else "check split.genes"
            raise GilError(f"gene set {name} is empty; {fix}")
    return sets


# ---------------------------------------------------------------------------------------------- cells


def stratified_parts(keys: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Part index (0..len(fractions)-1) of every element, drawn at random within each key's group.

    Within a group of ``m`` elements, part ``j`` gets ``rint(m * cumsum(fractions)[j]) - rint(m *
    cumsum(fractions)[j-1])`` elements, so small groups put their few elements in the first parts.
    """
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    order = rng.permutation(len(keys))
    order = order[np.argsort(inverse[order], kind="stable")]
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - np.repeat(np.cumsum(counts) - counts, counts)
    bounds = np.rint(np.outer(counts, np.cumsum(fractions)[:-1]))
    return (rank[:, None] >= bounds[inverse]).sum(axis=1)


def strata(n_cells: int, tasks: list[TaskCells]) -> np.ndarray:
    """One integer key per cell: its label in every task (or none), so held-out cells cover each class."""
    codes = np.full((n_cells, max(len(tasks), 1)), -1, dtype=np.int64)
    for k, task in enumerate(tasks):
        labelled = task.labelled
        codes[labelled, k] = pd.factorize(task.labels[labelled], sort=True)[0]
    return np.unique(codes, axis=0, return_inverse=True)[1].ravel()


def cell_stages(split: SplitConfig, keys: np.ndarray, n_stages: int, rng: np.random.Generator) -> np.ndarray:
    """Stage of every cell: test or validation (stratified by ``keys``), base stage 0, or ``1..n_stages``."""
    held_out = (split.eval_fraction, split.validation_fraction)
    part = stratified_parts(keys, (*held_out, 1 - sum(held_out)), rng)
    stage = np.where(part == 0, EVAL_STAGE, VALIDATION_STAGE).astype(np.int16)
    rest = rng.permutation(np.flatnonzero(part == 2))
    n_base = round(split.base_fraction * len(rest))
    n_later = len(rest) - n_base
    stage[rest[:n_base]] = 0
    stage[rest[n_base:]] = 1 + (np.arange(n_later) * n_stages) // max(n_later, 1)
    counts = np.bincount(stage[stage >= 0], minlength=n_stages + 1)
    empty = [k for k in range(n_stages + 1) if counts[k] == 0]
    no_validation = split.validation_fraction > 0 and not (stage == VALIDATION_STAGE).any()
    if empty or not (stage == EVAL_STAGE).any() or no_validation:
        which = f"stage {empty[0]}" if empty else "the validation set" if no_validation else "the test set"
        raise GilError(
            f"{which} would have no cells ({len(keys)} cells, {n_stages} stages); adjust "
            "split.eval_fraction / split.validation_fraction / split.base_fraction or use more cells"
        )
    return stage


# ---------------------------------------------------------------------------------------------- probes


def probe_task(task: TaskCells, stage: np.ndarray, learned_at: int) -> Task:
    """The task's labelled held-out cells; evaluation cross-validates probes over all of them."""
    name = task.config.name
    cells = np.flatnonzero(task.labelled & (stage == EVAL_STAGE))
    if len(cells) < MIN_PROBE_CELLS:
        raise GilError(
            f"task {name}: only {len(cells)} held-out cells (need {MIN_PROBE_CELLS}); "
            "raise split.eval_fraction or widen the task"
        )
    labels = task.labels[cells]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise GilError(
            f"task {name}: all held-out cells have {task.config.label} {classes[0]!r}; "
            "choose a label with several classes"
        )
    return Task(name, task.config.label, learned_at, classes, cells, np.searchsorted(classes, labels))


# --------------------------------------------------------------------------------------------- summary


def checks(
    sets: list[tuple[str, list[str]]], gene_names: list[str], stage: np.ndarray, tasks: list[Task]
) -> dict:
    """Invariants of a split, recorded in the summary; a failure is a bug, so it raises."""
    listed = [gene for _, genes in sets for gene in genes]
    result = {
        "gene_sets_disjoint": len(listed) == len(set(listed)),
        "gene_sets_cover_all_genes": set(listed) == set(gene_names),
        "cell_stages_disjoint": bool(((stage >= VALIDATION_STAGE) & (stage <= len(sets) - 1)).all()),
        "probe_cells_held_out": all((stage[t.cells] == EVAL_STAGE).all() for t in tasks),
    }
    failed = [name for name, ok in result.items() if not ok]
    if failed:
        raise RuntimeError(f"split invariants failed: {failed}")
    return result


def summarize(
    config: Config, method_info: dict, sets: list, stage: np.ndarray, tasks: list[Task], ok: dict
) -> dict:
    keys = {EVAL_STAGE: "eval", VALIDATION_STAGE: "validation"} | {k: str(k) for k in range(len(sets))}
    stage_counts = {
        name: int((stage == k).sum())
        for k, name in keys.items()
        if k != VALIDATION_STAGE or (stage == VALIDATION_STAGE).any()
    }
    return {
        "seed": config.split.seed,
        "method": config.split.genes.method,
        "method_details": method_info,
        "gene_sets": {name: len(genes) for name, genes in sets},
        "cell_stages": stage_counts,
        "checks": ok,
        "tasks": [
            {
                "name": t.name,
                "label": t.label,
                "learned_at": t.learned_at,
                "classes": len(t.classes),
                "cells": len(t.cells),
                "majority_rate": t.majority_rate,
            }
            for t in tasks
        ],
    }


def _stage_name(key: str) -> str:
    return {"eval": "test (held-out)", "validation": "validation (held-out)"}.get(key, f"stage {key}")


def summary_text(summary: dict) -> str:
    """The human-readable summary printed by ``gil split`` and stored as ``summary.txt``."""
    details = summary["method_details"]
    how = {
        "random": lambda: f"random, stage_fraction {details['stage_fraction']}",
        "file": lambda: f"from {details['file']}",
        "new_to_model": lambda: (
            f"new to the model in {details['model']} ({details['model_genes']} genes known to it form B), "
            f"assigned by {details['assign']}"
        ),
        "importance": lambda: (
            f"importance ({details['score']}, top {details['top_n']} per task; {details['shared_genes']} "
            f"genes in several top lists: {details['rank_rule']})"
        ),
    }[summary["method"]]()
    n_genes = sum(summary["gene_sets"].values())
    n_cells = sum(summary["cell_stages"].values())
    lines = [
        f"split seed {summary['seed']}; genes: {how}",
        "gene sets: "
        + ", ".join(f"{name} {n}" for name, n in summary["gene_sets"].items())
        + f" (disjoint, cover all {n_genes} genes)",
        "cells: "
        + ", ".join(f"{_stage_name(k)} {n}" for k, n in summary["cell_stages"].items())
        + f" (disjoint, {n_cells} cells)",
    ]
    for t in summary["tasks"]:
        learned = f"learned at stage {t['learned_at']}" if t["learned_at"] else "not tied to a stage"
        lines.append(
            f"task {t['name']} ({t['label']}, {learned}): {t['classes']} classes, "
            f"{t['cells']} held-out cells (majority class {t['majority_rate']:.2f})"
        )
    return "\n".join(lines) + "\n"


def run_split(config: Config, processed_dir: Path, out_dir: Path) -> str:
    """Compute the split of ``processed_dir`` from ``config.split`` and write it to ``out_dir``."""
    data = ProcessedData.load(processed_dir)
    gene_rng, cell_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.split.seed).spawn(len(STREAMS))
    )
    tasks = [resolve_task(task, data.cells) for task in config.split.tasks]
    stage_of_gene, method_info = gene_stages(config, data, tasks, gene_rng)
    sets = named_sets(stage_of_gene, data.gene_names)
    stage = cell_stages(config.split, strata(data.n_cells, tasks), len(sets) - 1, cell_rng)
    genes = config.split.genes
    importance = genes.method == "importance" or (
        genes.method == "new_to_model" and genes.assign == "importance"
    )
    probes = [probe_task(task, stage, k if importance else 0) for k, task in enumerate(tasks, 1)]
    summary = summarize(
        config, method_info, sets, stage, probes, checks(sets, data.gene_names, stage, probes)
    )
    text = summary_text(summary)
    Split(config.split.genes.method, sets, stage, probes, summary).write(out_dir, text)
    return text
