"""Vectorised batch assembly from the processed CSR matrix.

Why: per-cell Python loops made the reference implementation spend much of its time outside the
model. Here a batch is built with a handful of numpy operations over the flat non-zeros of its
cells: gather, filter by allowed gene sets, sample with random keys (top-``max_seq`` per cell via
one sort), pad to the longest cell of the batch (not to ``max_seq``), and mask.

Sampling (a :class:`GeneSampling`): when a cell has more than ``max_seq`` allowed genes, a fraction
``weighted_fraction`` of the cells (paper: half) sample with weights ``w`` and the others uniformly
(weighted sampling without replacement by Efraimidis-Spirakis keys ``log(u) / w``); the top keys
of each cell are ranked by one row-wise sort of a ``[cells, longest]`` array (see
:func:`_top_per_segment`). The weights (:data:`SAMPLING_WEIGHTS`) are ``uniform``, ``log1p`` (the
value itself: a 20-count gene is drawn ~4.4x as often as a 1-count gene) or ``shifted`` (the
authors' code: ``value - min(value of the cell) + 1e-5``, which nearly excludes a cell's
lowest-count genes). Masking draws one uniform
number per (cell, gene) entry and masks it when the number is below ``mask_fraction``; the
``<cls>`` and pad positions are never masked.

Evaluation batches sample their genes among *all* of a cell's genes with a fixed seed and only then
drop the genes not yet learned, so every stage's model sees the same gene samples and the same masks
on the gene sets it knows (see :func:`evaluation_batch`). Probe batches take each cell's
``max_seq`` most expressed known genes, deterministically (see :func:`probe_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch

from gil.data.layout import ProcessedData
from gil.data.rows import row_reader
from gil.data.vocab import CLS, NO_SET, PAD, Vocabulary

MASKED_VALUE = -1.0
SamplingWeights = Literal["uniform", "log1p", "shifted"]
SAMPLING_WEIGHTS: tuple[str, ...] = ("uniform", "log1p", "shifted")


@dataclass(frozen=True)
class GeneSampling:
    """How a training cell with more than ``max_seq`` genes is sampled (defaults: the paper's)."""

    weights: SamplingWeights = "log1p"
    weighted_fraction: float = 0.5


@dataclass(frozen=True)
class Batch:
    """A padded batch; position 0 of every row is ``<cls>``."""

    genes: torch.Tensor  # [B, L] int64 token ids
    values: torch.Tensor  # [B, L] float32 input values (MASKED_VALUE where masked)
    targets: torch.Tensor  # [B, L] float32 true log1p values
    masked: torch.Tensor  # [B, L] bool, positions whose value is to be predicted
    padding: torch.Tensor  # [B, L] bool, True at padding
    gene_sets: torch.Tensor  # [B, L] int64 gene-set index (NO_SET at <cls>/pad)
    rows: torch.Tensor  # [B] int64 processed row index of each cell
    queries: torch.Tensor  # [B, L] bool, True at query tokens (see :func:`with_gene_queries`)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device``."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    @property
    def n_cells(self) -> int:
        return int(self.genes.shape[0])

    @property
    def query_mask(self) -> torch.Tensor | None:
        """:attr:`queries` for the model, or None when the batch has none (the model's fast path).

        Only CPU batches are checked: on CUDA the check would synchronise the device every step.
        """
        if self.queries.device.type == "cpu" and not bool(self.queries.any()):
            return None
        return self.queries


class BatchBuilder:
    """Builds batches for the cells of a processed matrix under a vocabulary."""

    def __init__(
        self,
        data: ProcessedData,
        vocab: Vocabulary,
        cell_stages: np.ndarray,
        max_seq: int,
        sampling: GeneSampling = GeneSampling(),
    ):
        self.data = data
        self.sampling = sampling
        self.rows = row_reader(data)
        self.max_seq = max_seq
        self.token_of_column = vocab.token_of_column(data.gene_names)
        self.set_of_token = vocab.set_of_token()
        self.cell_stages = np.asarray(cell_stages)

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat (cell position in batch, token, gene set, value) of every non-zero of ``rows``."""
        lengths, columns, values = self.rows.read(rows)
        segment = np.repeat(np.arange(len(rows)), lengths)
        tokens = self.token_of_column[columns]
        return segment, tokens, self.set_of_token[tokens], values

    def training_batch(self, rows: np.ndarray, rng: np.random.Generator, mask_fraction: float) -> Batch:
        """A training batch: each cell restricted to base genes and the genes of its own stage."""
        rows = np.asarray(rows, dtype=np.int64)
        segment, tokens, sets, values = self._gather(rows)
        own_stage = self.cell_stages[rows][segment]
        allowed = (sets == 0) | (sets == own_stage)
        segment, tokens, sets, values = segment[allowed], tokens[allowed], sets[allowed], values[allowed]
        weighted_cells = rng.random(len(rows)) < self.sampling.weighted_fraction
        weights = _sampling_weights(segment, values, self.sampling.weights)
        keys = _sampling_keys(rng.random(len(values)), weights, weighted_cells[segment])
        keep, rank = _top_per_segment(segment, keys, self.max_seq)
        masked = rng.random(len(values)) < mask_fraction
        return _pad_kept(keep, rows, segment, rank, tokens, sets, values, masked)

    def evaluation_batch(
        self,
        rows: np.ndarray,
        known_stage: int,
        seed: int,
        mask_fraction: float,
        max_seq: int,
        weights: SamplingWeights = "uniform",
    ) -> Batch:
        """An evaluation batch for a model that knows gene sets ``0..known_stage``.

        Keys and mask draws depend only on ``seed`` and the rows, and genes are sampled (with
        ``weights``) among all of a cell's genes *before* unknown genes are dropped: a later stage's
        model is scored on a superset of the same positions, with the same masks, as an earlier
        stage's model.
        """
        rows = np.asarray(rows, dtype=np.int64)
        rng = np.random.default_rng(seed)
        segment, tokens, sets, values = self._gather(rows)
        weighted = np.full(len(values), weights != "uniform")
        keys = _sampling_keys(rng.random(len(values)), _sampling_weights(segment, values, weights), weighted)
        mask_draws = rng.random(len(values))
        keep, _ = _top_per_segment(segment, keys, max_seq)
        keep &= sets <= known_stage
        segment, tokens, sets, values, mask_draws = (
            segment[keep],
            tokens[keep],
            sets[keep],
            values[keep],
            mask_draws[keep],
        )
        rank = _rank_in_segment(segment)
        return _pad(rows, segment, rank, tokens, sets, values, mask_draws < mask_fraction)

    def probe_batch(
        self, rows: np.ndarray, known_stage: int, max_seq: int, only_set: int | None = None
    ) -> Batch:
        """Unmasked inputs: each cell's ``max_seq`` most expressed genes of sets ``0..known_stage``
        (or of the one set ``only_set``, which must be known).

        Why for probes: a uniform sample of a Zeisel cell's ~2,300 genes is mostly 1-2-count genes
        that say little about its type (a logistic regression on exactly those values scored near
        the majority rate); its most expressed genes carry its identity. ``only_set`` feeds a task's
        own genes alone: a probe that can only succeed through what the model knows of them.
        Deterministic: ties keep the processed column order.
        """
        if only_set is not None and only_set > known_stage:
            raise ValueError(f"gene set {only_set} is not known after stage {known_stage}")
        rows = np.asarray(rows, dtype=np.int64)
        segment, tokens, sets, values = self._gather(rows)
        known = sets <= known_stage if only_set is None else sets == only_set
        segment, tokens, sets, values = segment[known], tokens[known], sets[known], values[known]
        keep, rank = _top_per_segment(segment, values.astype(np.float64), max_seq)
        unmasked = np.zeros(len(values), dtype=bool)
        return _pad_kept(keep, rows, segment, rank, tokens, sets, values, unmasked)


def _sampling_weights(segment: np.ndarray, values: np.ndarray, weights: SamplingWeights) -> np.ndarray:
    """The sampling weight of every entry (see the module docstring); ``uniform`` gives ones."""
    if weights == "uniform":
        return np.ones(len(values))
    if weights == "log1p":
        return values.astype(np.float64)
    n_cells = int(segment[-1]) + 1 if len(segment) else 0
    cell_min = np.full(n_cells, np.inf)
    np.minimum.at(cell_min, segment, values)
    return values - cell_min[segment] + 1e-5


def _sampling_keys(uniform: np.ndarray, weights: np.ndarray, weighted: np.ndarray) -> np.ndarray:
    """Random keys whose top-k is a uniform sample, or a sample weighted by ``weights`` where ``weighted``."""
    safe = np.maximum(uniform, 1e-12)
    return np.where(weighted, np.log(safe) / np.maximum(weights, 1e-6), uniform)


def _top_per_segment(segment: np.ndarray, keys: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep mask of the ``limit`` largest keys of every segment, and each entry's rank in it.

    ``segment`` must be non-decreasing (entries grouped by cell, as :meth:`BatchBuilder._gather`
    yields them). Why not one ``np.lexsort((-keys, segment))`` (the reference, ~10x slower): each
    cell's keys sit in one row of a ``[cells, longest]`` array padded with ``+inf``, ranked by numpy's
    SIMD quicksort. Quicksort is not stable, so when a row holds equal keys (practically never with
    random keys) the batch is re-ranked with a stable sort: the ranks always equal the reference's
    (descending keys, ties in entry order).
    """
    n_cells = int(segment[-1]) + 1 if len(segment) else 0
    counts = np.bincount(segment, minlength=n_cells)
    starts = np.cumsum(counts) - counts
    column = np.arange(len(segment)) - starts[segment]
    padded = np.full((n_cells, int(counts.max(initial=0))), np.inf)
    padded[segment, column] = -keys
    column_index = np.arange(padded.shape[1])
    valid = column_index[None, :] < counts[:, None]
    order = np.argsort(padded, axis=1)
    ranked = np.take_along_axis(padded, order, axis=1)
    if np.any((ranked[:, 1:] == ranked[:, :-1]) & valid[:, 1:]):
        order = np.argsort(padded, axis=1, kind="stable")
    rank = np.empty(len(keys), dtype=np.int64)
    rank[(starts[:, None] + order)[valid]] = np.broadcast_to(column_index, padded.shape)[valid]
    return rank < limit, rank


def _rank_in_segment(segment: np.ndarray) -> np.ndarray:
    """Each entry's position within its segment (``segment`` non-decreasing): no sort needed."""
    counts = np.bincount(segment)
    return np.arange(len(segment)) - np.repeat(np.cumsum(counts) - counts, counts)


def _pad_kept(keep: np.ndarray, rows: np.ndarray, *entries: np.ndarray) -> Batch:
    """:func:`_pad` of the flat entries selected by ``keep`` (segment, rank, tokens, sets, values, masked)."""
    return _pad(rows, *(entry[keep] for entry in entries))


def _pad(
    rows: np.ndarray,
    segment: np.ndarray,
    rank: np.ndarray,
    tokens: np.ndarray,
    sets: np.ndarray,
    values: np.ndarray,
    masked_entries: np.ndarray,
) -> Batch:
    """Scatter flat entries into ``[B, 1 + longest]`` arrays with ``<cls>`` at position 0."""
    n_cells = len(rows)
    length = 1 + (int(rank.max()) + 1 if len(rank) else 0)
    position = 1 + rank
    genes = np.full((n_cells, length), PAD, dtype=np.int64)
    genes[:, 0] = CLS
    genes[segment, position] = tokens
    gene_sets = np.full((n_cells, length), NO_SET, dtype=np.int64)
    gene_sets[segment, position] = sets
    targets = np.zeros((n_cells, length), dtype=np.float32)
    targets[segment, position] = values
    masked = np.zeros((n_cells, length), dtype=bool)
    masked[segment, position] = masked_entries
    padding = genes == PAD
    inputs = np.where(masked, MASKED_VALUE, targets).astype(np.float32)
    return Batch(
        genes=torch.from_numpy(genes),
        values=torch.from_numpy(inputs),
        targets=torch.from_numpy(targets),
        masked=torch.from_numpy(masked),
        padding=torch.from_numpy(padding),
        gene_sets=torch.from_numpy(gene_sets),
        rows=torch.from_numpy(rows.copy()),
        queries=torch.zeros((n_cells, length), dtype=torch.bool),
    )


def with_gene_queries(
    batch: Batch, candidates: np.ndarray, candidate_sets: np.ndarray, per_cell: int, rng: np.random.Generator
) -> Batch:
    """``batch`` with up to ``per_cell`` query tokens appended to every cell.

    A query asks the model for the value of a gene the cell does not carry: its input value is
    :data:`MASKED_VALUE`, it is never a target (``masked`` False, ``targets`` 0) and the model lets no
    other token attend to it (see :attr:`Batch.queries`), so it is answered from the cell's own genes.
    Why: at stage ``k`` a cell carries only ``B ∪ Tk``; distillation can reach the genes of earlier
    sets only by asking about them (Learning-without-Forgetting's old outputs on new inputs).

    The genes are drawn uniformly, without replacement, among ``candidates`` (token ids, with their
    gene sets ``candidate_sets``) that the cell does not carry in ``batch``. Only token ids and
    ``rng`` are read, never expression data: the values of those genes are not part of the stage's
    data. A cell that carries all but ``m < per_cell`` candidates gets ``m`` queries (padding after).
    """
    if per_cell <= 0 or len(candidates) == 0:
        return batch
    genes = batch.genes.numpy()
    n_cells = genes.shape[0]
    column_of_token = np.full(max(int(genes.max()), int(candidates.max())) + 1, -1, dtype=np.int64)
    column_of_token[candidates] = np.arange(len(candidates))
    columns = column_of_token[genes]
    cell, position = np.nonzero(columns >= 0)
    carried = np.zeros((n_cells, len(candidates)), dtype=bool)
    carried[cell, columns[cell, position]] = True
    keys = np.where(carried, 2.0, rng.random(carried.shape))  # carried genes sort last
    chosen = np.argsort(keys, axis=1, kind="stable")[:, : min(per_cell, len(candidates))]
    valid = ~np.take_along_axis(carried, chosen, axis=1)
    extra = {
        "genes": np.where(valid, candidates[chosen], PAD),
        "values": np.where(valid, MASKED_VALUE, 0.0).astype(np.float32),
        "targets": np.zeros(valid.shape, dtype=np.float32),
        "masked": np.zeros(valid.shape, dtype=bool),
        "padding": ~valid,
        "gene_sets": np.where(valid, candidate_sets[chosen], NO_SET),
        "queries": valid,
    }
    appended = {
        name: torch.cat([getattr(batch, name), torch.from_numpy(part).to(getattr(batch, name).dtype)], dim=1)
        for name, part in extra.items()
    }
    return Batch(**appended, rows=batch.rows)
