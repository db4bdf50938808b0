"""Gene-based classification probes on frozen ``<cls>`` embeddings.

Why this protocol: the paper's public code picks the best epoch on the test split, which is
optimistic. Here a logistic-regression probe is fit on the task's fixed train cells, its inverse
regularisation ``C`` is chosen on the validation cells, and accuracy / macro-F1 are reported on the
test cells; kNN accuracy (fit on train+val) is reported beside it. The cells of each split are
fixed by the split step, so differences between stages are the model's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from gil.data.batches import BatchBuilder
from gil.data.layout import Task
from gil.model import GeneTransformer


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    macro_f1: float
    knn_accuracy: float
    c: float


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
) -> np.ndarray:
    """``<cls>`` embeddings of ``rows`` (no masking), inputs restricted to genes of sets ``0..stage``."""
    model.eval()
    parts = []
    for start in range(0, len(rows), batch_size):
        batch = builder.evaluation_batch(rows[start : start + batch_size], stage, seed + start, 0.0, max_seq)
        batch = batch.to(device)
        parts.append(model(batch.genes, batch.values, batch.padding).cell.float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def fit_probes(embeddings: np.ndarray, task: Task, c_grid: list[float], knn_k: int, seed: int) -> ProbeResult:
    """Linear probe (C chosen on val, scored on test) and kNN accuracy on test."""
    a, b = len(task.train), len(task.train) + len(task.val)
    y_train, y_val, y_test = task.split_targets()
    scaler = StandardScaler().fit(embeddings[:a])
    x_train, x_val, x_test = (
        scaler.transform(part) for part in (embeddings[:a], embeddings[a:b], embeddings[b:])
    )
    best: tuple[float, float, LogisticRegression] | None = None
    for c in c_grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe = LogisticRegression(C=c, max_iter=500, random_state=seed).fit(x_train, y_train)
        score = accuracy_score(y_val, probe.predict(x_val))
        if best is None or score > best[0]:
            best = (score, c, probe)
    assert best is not None
    predicted = best[2].predict(x_test)
    k = min(knn_k, len(y_train) + len(y_val))
    knn = KNeighborsClassifier(n_neighbors=k).fit(
        np.vstack([x_train, x_val]), np.concatenate([y_train, y_val])
    )
    return ProbeResult(
        accuracy=float(accuracy_score(y_test, predicted)),
        macro_f1=float(f1_score(y_test, predicted, average="macro", zero_division=0)),
        knn_accuracy=float(accuracy_score(y_test, knn.predict(x_test))),
        c=float(best[1]),
    )


def task_rows(task: Task) -> np.ndarray:
    """All probe cells of a task in the order train, val, test (aligned with ``task.targets``)."""
    return np.concatenate([task.train, task.val, task.test])
