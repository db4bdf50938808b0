"""Replay-buffer selection as pure functions.

Why: the buffer is the only memory of earlier stages a replay method may keep, so its update at the
end of stage ``k`` sees only the old buffer and the cells of stage ``k`` (never the full earlier
data). Two policies:

- ``random``: a uniform sample over every cell seen so far (reservoir sampling in expectation: stage
  ``k`` gets slots in proportion to its share of all cells seen);
- ``balanced``: equal slots per stage, and within a stage equal slots per class of a label column
  when one is given (classes with too few cells give their slots to the others).
"""

from __future__ import annotations

import numpy as np


def balanced_sample(
    rows: np.ndarray, labels: np.ndarray | None, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` rows (or all if fewer), spread as evenly as possible over ``labels``; sorted."""
    rows = np.asarray(rows)
    if n >= len(rows):
        return np.sort(rows)
    if labels is None:
        return np.sort(rng.choice(rows, size=n, replace=False))
    order = rng.permutation(len(rows))
    shuffled_labels = np.asarray(labels)[order]
    _, class_of = np.unique(shuffled_labels, return_inverse=True)
    rank_in_class = np.zeros(len(rows), dtype=np.int64)
    for cls in np.unique(class_of):
        members = np.flatnonzero(class_of == cls)
        rank_in_class[members] = np.arange(len(members))
    chosen = order[np.lexsort((rng.random(len(rows)), rank_in_class))[:n]]
    return np.sort(rows[chosen])


def update_buffer(
    buffer: np.ndarray,
    buffer_stages: np.ndarray,
    new_rows: np.ndarray,
    new_stage: int,
    n_seen_before: int,
    size: int,
    policy: str,
    labels_of: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """The buffer after stage ``new_stage``: a subset of ``buffer ∪ new_rows`` of at most ``size`` rows.

    ``buffer_stages`` gives the stage of each buffered row, ``labels_of`` the label of every row of
    the dataset (indexed by row) or None.
    """

    def labels(rows: np.ndarray) -> np.ndarray | None:
        return None if labels_of is None else labels_of[rows]

    if policy == "random":
        n_new = round(size * len(new_rows) / max(n_seen_before + len(new_rows), 1))
        n_new = min(max(n_new, size - len(buffer)), len(new_rows))
        kept_old = balanced_sample(buffer, None, size - n_new, rng)
        return np.sort(np.concatenate([kept_old, balanced_sample(new_rows, None, n_new, rng)]))
    stages = np.unique(np.concatenate([buffer_stages, [new_stage]]))
    slots = np.full(len(stages), size // len(stages))
    slots[: size % len(stages)] += 1
    parts = []
    for stage, n_slots in zip(stages, slots, strict=True):
        rows = new_rows if stage == new_stage else buffer[buffer_stages == stage]
        parts.append(balanced_sample(rows, labels(rows), int(n_slots), rng))
    return np.sort(np.concatenate(parts))
