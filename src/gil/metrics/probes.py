"""Gene-based classification probes on frozen ``<cls>`` embeddings, with their reference points.

Why this protocol:

- **Input that carries the cell's identity** (``evaluate.probe.input``). ``top_expressed`` (default)
  feeds each cell's ``max_seq`` most expressed known genes (:meth:`BatchBuilder.probe_batch`);
  ``sampled`` feeds a uniform sample of its genes, as the regression evaluation does. On Zeisel a
  uniform sample of 128 of a cell's ~2,300 genes is mostly 1-2-count genes: a logistic regression on
  exactly those values scored 0.30 on the neuron subclasses (majority 0.27), on the top 128 0.59.
- **Cross-validation over all the task's held-out cells** (``evaluate.probe.folds``). The cells are
  dealt into stratified folds; for fold ``f`` the probe is fit on the other folds but ``f+1``, its
  inverse regularisation ``C`` is chosen on fold ``f+1`` (never on the test fold: the paper's code
  selects on test, an optimistic protocol) and it predicts fold ``f``. Every cell is predicted once,
  so accuracies are over all the task's cells and a change between stages is a paired comparison on
  the same cells (:func:`paired_delta`) with a standard error.
- **Reference points** next to every accuracy: the majority-class rate (:attr:`Task.majority_rate`)
  and the same probe on the raw values of the same input genes (:func:`input_expression`), the
  ceiling a frozen embedding of those genes should approach.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from gil.data.batches import Batch, BatchBuilder
from gil.model import GeneTransformer

ProbeInput = Literal["top_expressed", "sampled"]


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated scores of one probe; ``correct`` says which cells it got right (task order)."""

    accuracy: float
    accuracy_se: float
    macro_f1: float
    knn_accuracy: float
    correct: np.ndarray


def _probe_batches(
    builder: BatchBuilder,
    rows: np.ndarray,
    stage: int,
    batch_size: int,
    max_seq: int,
    probe_input: ProbeInput,
    seed: int,
    only_set: int | None = None,
) -> Iterator[Batch]:
    """Unmasked input batches of ``rows`` restricted to the genes of sets ``0..stage``.

    ``only_set``: the genes of that one set instead, always the most expressed ones.
    """
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        if probe_input == "top_expressed" or only_set is not None:
            yield builder.probe_batch(part, stage, max_seq, only_set)
        else:
            yield builder.evaluation_batch(part, stage, seed + start, 0.0, max_seq)


@torch.no_grad()
def cell_embeddings(
    model: GeneTransformer,
    builder: BatchBuilder,
    rows: np.ndarray,
    stage: int,
    seed: int,
    batch_size: int,
    max_seq: int,
    device: torch.device | str = "cpu",
    probe_input: ProbeInput = "top_expressed",
    only_set: int | None = None,
) -> np.ndarray:
    """``<cls>`` embeddings of ``rows``, inputs restricted to the genes of sets ``0..stage``
    (or of the set ``only_set``)."""
    model.eval()
    batches = _probe_batches(builder, rows, stage, batch_size, max_seq, probe_input, seed, only_set)
    parts = [
        model(batch.genes, batch.values, batch.padding).cell.float().cpu().numpy()
        for batch in (b.to(device) for b in batches)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def input_expression(
    builder: BatchBuilder,
    rows: np.ndarray,
    stage: int,
    seed: int,
    batch_size: int,
    max_seq: int,
    probe_input: ProbeInput = "top_expressed",
    only_set: int | None = None,
) -> np.ndarray:
    """The values the model's input holds, as a ``[cells, known genes]`` matrix (0 where not input).

    The raw-expression probe is fit on these: what a classifier can read from exactly the genes and
    values the frozen model was given.
    """
    n_known = int((builder.set_of_token >= 0).sum() - (builder.set_of_token > stage).sum())
    first_gene = int(np.argmax(builder.set_of_token >= 0))
    matrix = np.zeros((len(rows), n_known), dtype=np.float32)
    offset = 0
    for batch in _probe_batches(builder, rows, stage, batch_size, max_seq, probe_input, seed, only_set):
        genes = batch.genes.numpy()
        cell, position = np.nonzero(~batch.padding.numpy() & (genes >= first_gene))
        matrix[offset + cell, genes[cell, position] - first_gene] = batch.values.numpy()[cell, position]
        offset += batch.n_cells
    return matrix


def fold_of_cells(targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold of every cell: each class's cells, in a seeded order, dealt round-robin.

    Dealing continues from class to class, so classes with fewer cells than folds do not all land
    in fold 0.
    """
    rng = np.random.default_rng(seed)
    fold = np.empty(len(targets), dtype=np.int64)
    dealt = 0
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        fold[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold


def _best_c_predictions(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    c_grid: list[float],
    seed: int,
) -> np.ndarray:
    """Test predictions of the logistic regression whose ``C`` scores best on the validation cells.

    The grid is walked from the strongest regularisation up with warm starts (each fit starts from
    the previous solution): several times faster on thousands of raw-expression features. Ties go
    to the smaller ``C``.
    """
    probe = LogisticRegression(max_iter=500, random_state=seed, warm_start=True)
    best_accuracy, best_predictions = -1.0, np.empty(0)
    for c in sorted(c_grid):
        probe.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(x_train, y_train)
        accuracy = float(np.mean(probe.predict(x_val) == y_val))
        if accuracy > best_accuracy:
            best_accuracy, best_predictions = accuracy, probe.predict(x_test)
    return best_predictions


def cross_validated_probe(
    features: np.ndarray, targets: np.ndarray, folds: int, c_grid: list[float], knn_k: int, seed: int
) -> ProbeResult:
    """Linear probe (``C`` chosen on the validation fold) and kNN, each cell predicted once."""
    fold = fold_of_cells(targets, folds, seed)
    linear = np.empty_like(targets)
    knn = np.empty_like(targets)
    for test_fold in range(folds):
        test, val = fold == test_fold, fold == (test_fold + 1) % folds
        train = ~(test | val)
        scaler = StandardScaler().fit(features[train])
        x_train, x_val, x_test = (scaler.transform(features[part]) for part in (train, val, test))
        linear[test] = _best_c_predictions(x_train, targets[train], x_val, targets[val], x_test, c_grid, seed)
        fit_cells = train | val
        k = min(knn_k, int(fit_cells.sum()))
        neighbours = KNeighborsClassifier(n_neighbors=k).fit(
            np.vstack([x_train, x_val]), np.concatenate([targets[train], targets[val]])
        )
        knn[test] = neighbours.predict(x_test)
    correct = linear == targets
    accuracy = float(correct.mean())
    return ProbeResult(
        accuracy=accuracy,
        accuracy_se=math.sqrt(accuracy * (1 - accuracy) / len(targets)),
        macro_f1=float(f1_score(targets, linear, average="macro", zero_division=0)),
        knn_accuracy=float(np.mean(knn == targets)),
        correct=correct,
    )


def paired_delta(correct_later: np.ndarray, correct_before: np.ndarray) -> tuple[float, float]:
    """Accuracy change on the same cells and its standard error (of the mean per-cell difference)."""
    difference = correct_later.astype(float) - correct_before.astype(float)
    se = float(difference.std(ddof=1) / math.sqrt(len(difference))) if len(difference) > 1 else math.nan
    return float(difference.mean()), se
