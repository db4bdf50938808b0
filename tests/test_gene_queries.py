"""Old-gene queries: distillation that reaches the genes of earlier stages.

Pinned here: the sampler (only earlier sets' genes a cell does not carry, never reading values,
deterministic per seed), the model (queries change nothing at the cell's own positions), the
``distill_query`` term by value at stage 2 (query positions, teacher view, never ``T2``), the task
loss (never scored on queries), and the whole-stage effect (the student stays nearer its teacher on
``T1``).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from factories import enter_stage, make_config, make_processed, make_split

from gil.data.batches import MASKED_VALUE, Batch, with_gene_queries
from gil.data.vocab import NO_SET
from gil.model import GeneTransformer
from gil.strategies.base import StageContext
from gil.strategies.functional import teacher_view
from gil.train.loop import StageTrainer

QUERY_DISTILL = {"kind": "distill", "lam": 2.5, "queries_per_cell": 4}
LONGER_STAGES = {"seeds": [0], "epochs_per_stage": 4, "batch_size": 16, "lr": 0.003, "warmup_steps": 2}


@pytest.fixture(scope="module")
def data_and_split():
    data = make_processed(n_cells=160, n_genes=40)
    return data, make_split(data, n_stages=2, genes_per_stage=6)


def _trainer(tmp_path, data_and_split, entry: dict, data=None, **config) -> StageTrainer:
    base_data, split = data_and_split
    return StageTrainer(
        make_config(strategies={"s": entry}, **config),
        "s",
        0,
        data or base_data,
        split,
        tmp_path,
        progress=False,
    )


def _enter_stage_two(trainer: StageTrainer) -> tuple[StageContext, GeneTransformer]:
    """Stage 2 started as the loop does, and the untouched stage-1 model (the expected teacher)."""
    return enter_stage(trainer, 2)


def _stage_two_batch(trainer: StageTrainer, seed: int = 0) -> Batch:
    rows = trainer.split.cells_of_stage(2)[:16]
    return trainer.builder.training_batch(rows, np.random.default_rng(seed), 0.4)


def _forward(model: GeneTransformer, batch: Batch):
    return model(batch.genes, batch.values, batch.padding, batch.query_mask)


# -- the sampler ------------------------------------------------------------------------------------


def _candidate_batch() -> tuple[Batch, np.ndarray, np.ndarray]:
    """Two cells over tokens 2..9; candidates 5..9 (set 1); cell 0 carries 5 and 6, cell 1 none."""
    genes = torch.tensor([[1, 2, 5, 6], [1, 3, 4, 0]])
    batch = Batch(
        genes=genes,
        values=torch.ones(2, 4),
        targets=torch.ones(2, 4),
        masked=torch.zeros(2, 4, dtype=torch.bool),
        padding=genes == 0,
        gene_sets=torch.where(genes >= 5, 1, torch.where(genes >= 2, 0, NO_SET)),
        rows=torch.tensor([10, 11]),
        queries=torch.zeros(2, 4, dtype=torch.bool),
    )
    candidates = np.arange(5, 10)
    return batch, candidates, np.ones(5, dtype=np.int64)


def test_queries_are_distinct_candidates_the_cell_does_not_carry_with_masked_values() -> None:
    batch, candidates, sets = _candidate_batch()
    queried = with_gene_queries(batch, candidates, sets, 4, np.random.default_rng(0))
    assert queried.genes.shape == (2, 8)
    for field in dataclasses.fields(Batch):  # the cell's own columns are untouched
        if field.name != "rows":
            assert torch.equal(getattr(queried, field.name)[:, :4], getattr(batch, field.name)), field.name
    first, second = queried.genes[0, 4:], queried.genes[1, 4:]
    # Cell 0 carries 5 and 6: only 7, 8, 9 are left, so its 4th slot is padding.
    assert sorted(first[queried.queries[0, 4:]].tolist()) == [7, 8, 9]
    assert queried.queries[0, 4:].sum() == 3 and bool(queried.padding[0, 4:][~queried.queries[0, 4:]].all())
    assert len(set(second.tolist())) == 4 and set(second.tolist()) <= set(candidates.tolist())
    q = queried.queries
    assert bool((queried.values[q] == MASKED_VALUE).all()) and bool((queried.targets[q] == 0).all())
    assert not bool(queried.masked[q].any()) and not bool(queried.padding[q].any())
    assert bool((queried.gene_sets[q] == 1).all())


def test_queries_are_deterministic_per_seed_and_differ_between_seeds() -> None:
    batch, candidates, sets = _candidate_batch()
    draws = [
        with_gene_queries(batch, candidates, sets, 2, np.random.default_rng(s)).genes for s in (3, 3, 4, 5)
    ]
    assert torch.equal(draws[0], draws[1])
    assert not (torch.equal(draws[0], draws[2]) and torch.equal(draws[0], draws[3]))


def test_no_queries_leave_the_batch_itself() -> None:
    batch, candidates, sets = _candidate_batch()
    assert with_gene_queries(batch, candidates, sets, 0, np.random.default_rng(0)) is batch
    assert with_gene_queries(batch, candidates[:0], sets[:0], 3, np.random.default_rng(0)) is batch
    assert batch.query_mask is None


# -- the model --------------------------------------------------------------------------------------


def test_queries_change_nothing_at_the_cells_own_positions(tmp_path, data_and_split) -> None:
    trainer = _trainer(tmp_path, data_and_split, QUERY_DISTILL)
    ctx, _ = _enter_stage_two(trainer)
    batch = _stage_two_batch(trainer)
    queried = trainer.strategy.augment_batch(ctx, batch, np.random.default_rng(0))
    assert bool(queried.queries.any())
    trainer.model.eval()
    with torch.no_grad():
        plain, with_queries = _forward(trainer.model, batch), _forward(trainer.model, queried)
    own = batch.genes.shape[1]
    torch.testing.assert_close(with_queries.mlm[:, :own], plain.mlm, rtol=0, atol=1e-5)
    torch.testing.assert_close(with_queries.mvc[:, :own], plain.mvc, rtol=0, atol=1e-5)
    torch.testing.assert_close(with_queries.cell, plain.cell, rtol=0, atol=1e-5)
    # A query is answered from the cell alone: changing another query's gene does not move it.
    other = queried.genes.clone()
    other[0, own + 1] = other[0, own]
    moved = dataclasses.replace(queried, genes=other)
    with torch.no_grad():
        again = _forward(trainer.model, moved)
    torch.testing.assert_close(again.mlm[0, own], with_queries.mlm[0, own], rtol=0, atol=1e-5)


@pytest.mark.parametrize("mvc_positions", ["masked", "all"])
def test_the_task_loss_never_scores_a_query(tmp_path, data_and_split, mvc_positions: str) -> None:
    train = {**LONGER_STAGES, "epochs_per_stage": 1, "mvc_weight": 3.0, "mvc_positions": mvc_positions}
    trainer = _trainer(tmp_path, data_and_split, QUERY_DISTILL, train=train)
    ctx, _ = _enter_stage_two(trainer)
    batch = _stage_two_batch(trainer)
    queried = trainer.strategy.augment_batch(ctx, batch, np.random.default_rng(0))
    trainer.model.eval()
    with torch.no_grad():
        plain = trainer.task_loss(batch, _forward(trainer.model, batch))
        with_queries = trainer.task_loss(queried, _forward(trainer.model, queried))
    assert with_queries.item() == pytest.approx(plain.item(), abs=1e-6)


# -- the distillation term --------------------------------------------------------------------------


def test_distill_query_term_is_lambda_times_mse_to_the_teacher_on_earlier_genes_only(
    tmp_path, data_and_split
) -> None:
    trainer = _trainer(tmp_path, data_and_split, QUERY_DISTILL)
    ctx, teacher = _enter_stage_two(trainer)
    batch = trainer.strategy.augment_batch(ctx, _stage_two_batch(trainer), np.random.default_rng(0))
    q = batch.queries
    assert bool(q.any()) and bool((batch.gene_sets[q] == 1).all())  # T1 only: never B, never T2
    trainer.model.eval()
    output = ctx.forward(batch)
    terms = trainer.strategy.loss_terms(ctx, batch, output)
    with torch.no_grad():
        view = teacher_view(batch, 1)
        expected = _forward(teacher, view)
    assert not bool(view.genes[batch.gene_sets == 2].any())  # the teacher never sees T2
    assert torch.equal(view.queries, q)  # its queries are of T1, which it knows: all kept
    assert set(terms) == {"distill", "distill_query"}
    want = 2.5 * float(((output.mlm - expected.mlm).detach()[q] ** 2).mean())
    assert terms["distill_query"].item() == pytest.approx(want, rel=1e-5)
    known_masked = (batch.gene_sets >= 0) & (batch.gene_sets <= 1) & batch.masked
    want_known = 2.5 * float(((output.mlm - expected.mlm).detach()[known_masked] ** 2).mean())
    assert terms["distill"].item() == pytest.approx(want_known, rel=1e-5)
    assert terms["distill_query"].item() > 0


def test_one_query_per_cell_still_gives_the_query_term(tmp_path, data_and_split) -> None:
    trainer = _trainer(tmp_path, data_and_split, {**QUERY_DISTILL, "queries_per_cell": 1})
    ctx, _ = _enter_stage_two(trainer)
    batch = trainer.strategy.augment_batch(ctx, _stage_two_batch(trainer), np.random.default_rng(0))
    assert int(batch.queries.sum(dim=1).max()) == 1
    assert set(trainer.strategy.loss_terms(ctx, batch, ctx.forward(batch))) == {"distill", "distill_query"}


def test_a_gradient_step_on_the_query_term_brings_the_student_closer_on_the_queries(
    tmp_path, data_and_split
) -> None:
    trainer = _trainer(tmp_path, data_and_split, QUERY_DISTILL)
    ctx, _ = _enter_stage_two(trainer)
    batch = trainer.strategy.augment_batch(ctx, _stage_two_batch(trainer), np.random.default_rng(0))
    trainer.model.eval()
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.05)
    values = []
    for _ in range(3):
        term = trainer.strategy.loss_terms(ctx, batch, ctx.forward(batch))["distill_query"]
        values.append(term.item())
        optimizer.zero_grad()
        term.backward()
        optimizer.step()
    assert values[2] < values[1] < values[0]


def test_no_query_at_stage_one_and_the_papers_reading_has_none_at_all(tmp_path, data_and_split) -> None:
    trainer = _trainer(tmp_path / "q", data_and_split, QUERY_DISTILL)
    ctx, _ = enter_stage(trainer, 1)
    batch = trainer.builder.training_batch(trainer.split.cells_of_stage(1)[:8], np.random.default_rng(0), 0.4)
    assert trainer.strategy.augment_batch(ctx, batch, np.random.default_rng(0)) is batch  # no earlier set
    assert set(trainer.strategy.loss_terms(ctx, batch, ctx.forward(batch))) == {"distill"}
    literal = _trainer(tmp_path / "l", data_and_split, {"kind": "distill", "lam": 2.5})
    ctx, _ = _enter_stage_two(literal)
    batch = _stage_two_batch(literal)
    assert literal.strategy.augment_batch(ctx, batch, np.random.default_rng(0)) is batch
    assert set(literal.strategy.loss_terms(ctx, batch, ctx.forward(batch))) == {"distill"}


def test_replay_distill_queries_skip_the_genes_its_replayed_cells_carry(tmp_path, data_and_split) -> None:
    entry = {"kind": "replay_distill", "buffer_size": 30, "mix": 0.5, "lam": 1.0, "queries_per_cell": 6}
    trainer = _trainer(tmp_path, data_and_split, entry)
    ctx, _ = _enter_stage_two(trainer)
    rows = trainer.strategy.epoch_batches(ctx, np.random.default_rng(0))[0]
    assert (trainer.split.cell_stages[rows] == 1).any()  # replayed stage-1 cells carry T1 genes
    plain = trainer.builder.training_batch(rows, np.random.default_rng(0), 0.4)
    batch = trainer.strategy.augment_batch(ctx, plain, np.random.default_rng(0))
    own = plain.genes.shape[1]
    for cell in range(batch.n_cells):
        carried = set(plain.genes[cell].tolist())
        asked = set(batch.genes[cell, own:][batch.queries[cell, own:]].tolist())
        assert asked and not (asked & carried)
    assert "distill_query" in trainer.strategy.loss_terms(ctx, batch, ctx.forward(batch))


def test_the_query_term_never_reads_the_hidden_values_of_earlier_genes(tmp_path, data_and_split) -> None:
    """Stage-2 cells' T1 values are not stage 2's data: changing them changes no term."""
    data, split = data_and_split
    t1 = np.isin(data.gene_names, split.gene_sets[1][1])
    stage_two = np.repeat(split.cell_stages == 2, np.diff(data.indptr))
    values = data.values.copy()
    values[t1[data.indices] & stage_two] += 3.0
    altered = dataclasses.replace(data, values=values)
    terms = []
    for which, source in (("same", data), ("altered", altered)):
        trainer = _trainer(tmp_path / which, data_and_split, QUERY_DISTILL, data=source)
        ctx, _ = _enter_stage_two(trainer)
        batch = trainer.strategy.augment_batch(ctx, _stage_two_batch(trainer), np.random.default_rng(0))
        trainer.model.eval()
        output = ctx.forward(batch)
        terms.append({k: v.item() for k, v in trainer.strategy.loss_terms(ctx, batch, output).items()})
    assert terms[0] == terms[1]


def test_query_distillation_keeps_earlier_genes_nearer_the_teacher_than_the_papers_reading(
    tmp_path, data_and_split
) -> None:
    """A whole stage 2 from the same stage-1 model: the student's T1 predictions stay closer."""
    gaps = {}
    for name, entry in {
        "finetune": {"kind": "finetune"},
        "literal": {"kind": "distill", "lam": 20.0},
        "query": {"kind": "distill", "lam": 20.0, "queries_per_cell": 6},
    }.items():
        trainer = _trainer(tmp_path / name, data_and_split, entry, train=LONGER_STAGES)
        trainer.train_stage(0)
        trainer.train_stage(1)
        stage_one = copy.deepcopy(trainer.model).eval()
        trainer.train_stage(2)
        # Held-out cells with all their T1 genes masked: what each model says about T1.
        rows = trainer.split.cells_of_stage(-1)[:32]
        batch = trainer.builder.evaluation_batch(rows, 1, seed=3, mask_fraction=0.0, max_seq=64)
        t1 = batch.gene_sets == 1
        batch = dataclasses.replace(batch, values=batch.values.masked_fill(t1, MASKED_VALUE), masked=t1)
        trainer.model.eval()
        with torch.no_grad():
            student, teacher = _forward(trainer.model, batch).mlm, _forward(stage_one, batch).mlm
        gaps[name] = float(((student - teacher)[batch.gene_sets == 1] ** 2).mean())
    assert gaps["query"] < 0.5 * gaps["literal"] and gaps["query"] < 0.5 * gaps["finetune"]


def test_a_single_earlier_gene_is_still_queried(tmp_path, data_and_split) -> None:
    """T1 of one gene: one query candidate, and its term is there (the smallest old-gene set)."""
    data, _ = data_and_split
    trainer = _trainer(tmp_path, (data, make_split(data, n_stages=2, genes_per_stage=1)), QUERY_DISTILL)
    ctx, _ = _enter_stage_two(trainer)
    batch = trainer.strategy.augment_batch(ctx, _stage_two_batch(trainer), np.random.default_rng(0))
    assert bool(batch.queries.any()) and int(batch.queries.sum(dim=1).max()) == 1
    assert set(trainer.strategy.loss_terms(ctx, batch, ctx.forward(batch))) == {"distill", "distill_query"}
