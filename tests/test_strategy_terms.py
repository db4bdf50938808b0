"""Each strategy's loss term and state, pinned by value and by direction.

The end-to-end strategy tests (``test_strategies.py``) show that strategies change the weights; these
show *how*: a sign-flipped term, a swapped merge or a dropped term changes a value asserted here.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from factories import enter_stage, make_config, make_processed, make_split, model_weights, same_weights

from gil.data.batches import Batch
from gil.model import GeneTransformer
from gil.strategies.base import StageContext
from gil.strategies.functional import ewc_penalty, fisher_diagonal, teacher_view
from gil.strategies.replay import Replay
from gil.train.checkpoint import load_checkpoint, save_checkpoint, stage_path
from gil.train.loop import StageTrainer


@pytest.fixture(scope="module")
def data_and_split():
    data = make_processed(n_cells=160, n_genes=40)
    return data, make_split(data)


def _trainer(tmp_path, data_and_split, name: str, entry: dict, **config) -> StageTrainer:
    data, split = data_and_split
    return StageTrainer(
        make_config(strategies={name: entry}, **config), name, 0, data, split, tmp_path / name, progress=False
    )


def _enter_stage_one(trainer: StageTrainer) -> tuple[StageContext, GeneTransformer]:
    """Stage 1 started as the loop does, and the untouched stage-0 model (the expected teacher)."""
    return enter_stage(trainer, 1)


def _stage_batch(trainer: StageTrainer, stage: int, seed: int = 0) -> Batch:
    rows = trainer.split.cells_of_stage(stage)[:16]
    return trainer.builder.training_batch(rows, np.random.default_rng(seed), 0.4)


def _masked_mse(a: torch.Tensor, b: torch.Tensor, positions: torch.Tensor) -> float:
    return float(((a - b).detach()[positions] ** 2).mean())


LONGER_STAGES = {
    "seeds": [0],
    "epochs_per_stage": 4,
    "batch_size": 16,
    "lr": 0.003,
    "warmup_steps": 2,
    "device": "cpu",
}


# -- distillation ---------------------------------------------------------------------------------


def test_distill_term_is_lambda_times_mse_to_the_stage_zero_model_on_masked_base_genes(
    tmp_path, data_and_split
) -> None:
    trainer = _trainer(
        tmp_path, data_and_split, "distill", {"kind": "distill", "lam": 2.5, "cls_weight": 0.5}
    )
    ctx, teacher = _enter_stage_one(trainer)
    batch = _stage_batch(trainer, 1)
    trainer.model.eval()
    output = ctx.forward(batch)
    terms = trainer.strategy.loss_terms(ctx, batch, output)
    with torch.no_grad():
        expected = ctx.forward(teacher_view(batch, 0), teacher)
    base_masked = (batch.gene_sets == 0) & batch.masked
    assert bool(base_masked.any()) and bool(((batch.gene_sets == 1) & batch.masked).any())
    assert set(terms) == {"distill", "distill_cls"}
    assert terms["distill"].item() == pytest.approx(2.5 * _masked_mse(output.mlm, expected.mlm, base_masked))
    cls = float(((output.cell.detach() - expected.cell) ** 2).mean())
    assert terms["distill_cls"].item() == pytest.approx(0.5 * cls, rel=1e-5)
    assert terms["distill"].item() > 0 and cls > 0


def test_a_gradient_step_on_the_distill_term_brings_the_student_closer_to_the_teacher(
    tmp_path, data_and_split
) -> None:
    trainer = _trainer(tmp_path, data_and_split, "distill", {"kind": "distill", "lam": 1.0})
    ctx, _ = _enter_stage_one(trainer)
    batch = _stage_batch(trainer, 1)
    trainer.model.eval()
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.05)
    gaps = []
    for _ in range(3):
        term = trainer.strategy.loss_terms(ctx, batch, ctx.forward(batch))["distill"]
        gaps.append(term.item())
        optimizer.zero_grad()
        term.backward()
        optimizer.step()
    assert gaps[2] < gaps[1] < gaps[0]


def test_distillation_keeps_base_gene_predictions_closer_to_the_stage_zero_model(
    tmp_path, data_and_split
) -> None:
    """A whole stage: distillation's student ends nearer its teacher on B than fine-tuning's."""
    gaps = {}
    for name, entry in {
        "finetune": {"kind": "finetune"},
        "distill": {"kind": "distill", "lam": 20.0},
    }.items():
        trainer = _trainer(tmp_path, data_and_split, name, entry, train=LONGER_STAGES)
        trainer.train_stage(0)
        stage_zero = copy.deepcopy(trainer.model).eval()
        trainer.train_stage(1)
        batch = _stage_batch(trainer, 1, seed=5)
        trainer.model.eval()
        with torch.no_grad():
            student = _mlm(trainer.model, batch)
            teacher = _mlm(stage_zero, teacher_view(batch, 0))
        gaps[name] = _masked_mse(student, teacher, (batch.gene_sets == 0) & batch.masked)
    assert gaps["distill"] < 0.5 * gaps["finetune"]


def _mlm(model: GeneTransformer, batch: Batch) -> torch.Tensor:
    return model(batch.genes, batch.values, batch.padding).mlm


# -- EWC ----------------------------------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    """An embedding that can grow and a shared linear layer, like the transformer's two kinds of weights;
    a scalar weight; and a head registered first that the anchor does not hold (never penalised)."""

    def __init__(self, rows: int):
        super().__init__()
        self.head = torch.nn.Parameter(torch.zeros(3))
        self.embedding = torch.nn.Parameter(torch.zeros(rows, 2))
        self.linear = torch.nn.Linear(2, 1)
        self.scale = torch.nn.Parameter(torch.tensor(1.0))


def test_ewc_penalty_weighs_each_squared_move_by_its_fisher_and_frees_grown_rows() -> None:
    model = _Tiny(rows=3)
    anchor = {name: param.detach().clone() for name, param in model.named_parameters() if name != "head"}
    fisher = {
        "embedding": torch.tensor([[1.0, 2.0], [0.0, 3.0]]),  # two rows were known at the anchor
        "linear.weight": torch.tensor([[4.0, 0.5]]),
        "linear.bias": torch.tensor([2.0]),
        "scale": torch.tensor(10.0),
    }
    anchor["embedding"] = anchor["embedding"][:2]
    with torch.no_grad():
        model.head += 50.0
        model.embedding += torch.tensor([[1.0, -1.0], [5.0, 2.0], [100.0, 100.0]])  # row 2 is new
        model.linear.weight += torch.tensor([[0.5, -2.0]])
        model.linear.bias -= 3.0
        model.scale += 0.5
    by_hand = (1 * 1 + 2 * 1 + 0 * 25 + 3 * 4) + (4 * 0.25 + 0.5 * 4) + 2 * 9 + 10 * 0.25
    assert ewc_penalty(model, fisher, anchor).item() == pytest.approx(0.5 * by_hand)


def test_fisher_diagonal_is_the_mean_squared_gradient_over_batches() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    batches = [(torch.tensor([1.0, 2.0]), 0.0), (torch.tensor([3.0, 0.0]), 1.0)]

    def loss_of(batch):
        x, y = batch
        return (model(x).squeeze() - y) ** 2

    fisher = fisher_diagonal(model, batches, loss_of)
    # gradient 2 (w·x − y) x: batch 1 → 2·(−1)·(1, 2) = (−2, −4); batch 2 → 2·2·(3, 0) = (12, 0)
    expected = torch.tensor([[(4 + 144) / 2, (16 + 0) / 2]])
    assert torch.allclose(fisher["weight"], expected)
    assert model.weight.grad is None  # leaves no gradient behind for the next optimizer step


def test_ewc_term_is_lambda_times_the_penalty_and_pulls_towards_the_anchor(tmp_path, data_and_split) -> None:
    trainer = _trainer(tmp_path, data_and_split, "ewc", {"kind": "ewc", "lam": 3.0, "fisher_batches": 2})
    ctx, _ = _enter_stage_one(trainer)
    strategy = trainer.strategy
    assert set(strategy.anchor) == {name for name, _ in trainer.model.named_parameters()}
    batch = _stage_batch(trainer, 1)
    term = strategy.loss_terms(ctx, batch, ctx.forward(batch))["ewc"]
    penalty = ewc_penalty(trainer.model, strategy.fisher, strategy.anchor)
    assert term.item() == pytest.approx(3.0 * penalty.item()) and penalty.item() > 0
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1e-3)
    optimizer.zero_grad()
    term.backward()
    optimizer.step()
    assert ewc_penalty(trainer.model, strategy.fisher, strategy.anchor).item() < penalty.item()


def test_online_ewc_merges_fisher_as_gamma_old_plus_new(tmp_path, data_and_split) -> None:
    trainer = _trainer(
        tmp_path, data_and_split, "ewc", {"kind": "ewc", "lam": 1.0, "gamma": 0.25, "fisher_batches": 2}
    )
    trainer.train_stage(0)
    ctx = trainer._context(0)
    strategy = trainer.strategy

    def estimate(old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        strategy.fisher = dict(old)
        torch.manual_seed(0)
        strategy.after_stage(ctx)
        return strategy.fisher

    fresh = estimate({})
    rows = trainer.model.gene_embedding.weight.shape[0]
    old = {name: torch.full_like(value, 8.0) for name, value in fresh.items()}
    old["gene_embedding.weight"] = torch.full((rows - 3, fresh["gene_embedding.weight"].shape[1]), 8.0)
    merged = estimate(old)
    for name, value in fresh.items():
        if name == "gene_embedding.weight":
            assert torch.allclose(merged[name][:-3], value[:-3] + 2.0)  # γ · 8 on rows the old Fisher had
            assert torch.allclose(merged[name][-3:], value[-3:])  # rows new since: their own estimate
        else:
            assert torch.allclose(merged[name], value + 2.0)
    assert any(float(value.abs().sum()) > 0 for value in fresh.values())


# -- replay and replay + distillation -----------------------------------------------------------------


@pytest.mark.parametrize("mix", [0.05, 0.25, 0.75, 0.95])
def test_each_replay_batch_holds_round_mix_times_batch_size_buffer_cells(
    tmp_path, data_and_split, mix: float
) -> None:
    trainer = _trainer(tmp_path, data_and_split, "replay", {"kind": "replay", "buffer_size": 30, "mix": mix})
    strategy = trainer.strategy
    strategy.buffer = trainer.split.cells_of_stage(0)[:30]
    ctx = trainer._context(1)
    batches = strategy.epoch_batches(ctx, np.random.default_rng(0))
    n_replay = round(mix * 16)  # 1, 4, 12, 15: at least one of each kind in every batch
    stages = trainer.split.cell_stages
    assert all(len(rows) == 16 and (stages[rows] == 0).sum() == n_replay for rows in batches)
    assert len(batches) == -(-len(ctx.cells_of_stage(1)) // 16)  # matched: fine-tuning's step count


def test_replay_distill_uses_replay_batches_and_the_distillation_term(tmp_path, data_and_split) -> None:
    entry = {"kind": "replay_distill", "buffer_size": 30, "mix": 0.25, "lam": 2.0}
    trainer = _trainer(tmp_path, data_and_split, "replay_distill", entry)
    ctx, teacher = _enter_stage_one(trainer)
    strategy = trainer.strategy
    stages = trainer.split.cell_stages
    assert len(strategy.replay.buffer) == 30 and set(stages[strategy.replay.buffer]) == {0}
    rows = strategy.epoch_batches(ctx, np.random.default_rng(0))[0]
    assert (stages[rows] == 0).sum() == 4 and (stages[rows] == 1).sum() == 12
    batch = trainer.builder.training_batch(rows, np.random.default_rng(0), 0.4)
    trainer.model.eval()
    output = ctx.forward(batch)
    terms = strategy.loss_terms(ctx, batch, output)
    with torch.no_grad():
        expected = ctx.forward(teacher_view(batch, 0), teacher)
    positions = (batch.gene_sets == 0) & batch.masked
    assert set(terms) == {"distill"}
    assert terms["distill"].item() == pytest.approx(2.0 * _masked_mse(output.mlm, expected.mlm, positions))
    assert torch.equal(strategy.state_dict()["buffer"], torch.from_numpy(strategy.replay.buffer))
    assert strategy.params.lam == 2.0 and strategy.distill.params.lam == 2.0


def test_replay_keeps_count_of_cells_seen_and_balances_a_label(tmp_path, data_and_split) -> None:
    """Random policy: stage k gets slots in proportion to its share of all cells seen so far (so the
    count of cells seen must accumulate); balanced with a label: a rare class is kept whole."""
    trainer = _trainer(
        tmp_path, data_and_split, "replay", {"kind": "replay", "buffer_size": 10, "policy": "random"}
    )
    strategy, stages = trainer.strategy, trainer.split.cell_stages
    sizes = [int((stages == k).sum()) for k in range(3)]  # 64, 32, 32 training cells
    for stage in range(3):
        strategy.after_stage(trainer._context(stage))
        assert strategy.n_seen == sum(sizes[: stage + 1])
    # stage 2 holds round(10 · 32 / 128) = 2 slots (5 if only the last stage's cells were counted)
    assert len(strategy.buffer) == 10 and (stages[strategy.buffer] == 2).sum() == 2

    cells = trainer.data.cells.copy()
    stage_zero = trainer.split.cells_of_stage(0)
    cells["rare"] = "common"
    cells.loc[cells.index[stage_zero[:4]], "rare"] = "rare"
    balanced = Replay(Replay.Params(buffer_size=10, balance_label="rare"))
    balanced.check_inputs(cells)
    balanced.after_stage(dataclasses.replace(trainer._context(0), cells=cells))
    assert set(stage_zero[:4]) <= set(balanced.buffer)  # 4 rare + 6 common, not ~0.6 rare at random


@pytest.mark.parametrize("kind", ["replay", "replay_distill"])
def test_a_balance_label_that_is_not_a_cell_column_is_refused(tmp_path, data_and_split, kind: str) -> None:
    from gil.errors import GilError

    with pytest.raises(
        GilError,
        match=r"replay balance_label 'missing' is not a cell label column "
        r"\(have \['cell', 'n_genes', 'kind'\]\); add it to dataset.label_columns and rerun "
        r"`gil prepare`, or set balance_label: null$",
    ):
        _trainer(tmp_path, data_and_split, kind, {"kind": kind, "balance_label": "missing"})
    _trainer(tmp_path, data_and_split, kind, {"kind": kind, "balance_label": "kind"})  # a real column


def test_buffer_samples_are_distinct_and_balanced_over_three_classes() -> None:
    from gil.strategies.buffer import balanced_sample, update_buffer

    rng = np.random.default_rng(0)
    rows = np.arange(100)
    assert len(np.unique(balanced_sample(rows, None, 50, rng))) == 50  # without replacement
    labels = np.array(["a"] * 80 + ["b"] * 15 + ["c"] * 5)
    chosen = balanced_sample(rows, labels, 15, rng)
    assert chosen.shape == (15,) and [int((labels[chosen] == c).sum()) for c in "abc"] == [5, 5, 5]
    buffer = update_buffer(np.zeros(0, dtype=np.int64), np.zeros(0), rows, 0, 0, 15, "balanced", labels, rng)
    assert [int((labels[buffer] == c).sum()) for c in "abc"] == [5, 5, 5]
    # random policy: 20 seen before, 20 new, 10 slots → 5 new (not 10 · 20 / (20 − 20))
    old = np.arange(10)
    mixed = update_buffer(old, np.zeros(10), np.arange(50, 70), 1, 20, 10, "random", None, rng)
    assert len(mixed) == 10 and (mixed >= 50).sum() == 5


# -- resume: every strategy with state --------------------------------------------------------------


STATEFUL = {
    "ewc": {"kind": "ewc", "lam": 50.0, "fisher_batches": 2},
    "replay_distill": {"kind": "replay_distill", "buffer_size": 20, "mix": 0.25, "lam": 2.0},
    "distill": {"kind": "distill", "lam": 2.0, "cls_weight": 1.0},
    "distill_query": {"kind": "distill", "lam": 2.0, "queries_per_cell": 4},
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_resume_from_stage_one_restores_the_strategy_state(tmp_path, data_and_split, name: str) -> None:
    full = _trainer(tmp_path / "full", data_and_split, name, STATEFUL[name])
    full.run()
    partial = _trainer(tmp_path / "partial", data_and_split, name, STATEFUL[name])
    partial.run()
    stage_path(partial.run_dir, 2).unlink()  # as if killed during stage 2
    resumed = _trainer(tmp_path / "partial", data_and_split, name, STATEFUL[name])
    resumed.run()
    assert same_weights(model_weights(full), model_weights(resumed))


def test_fresh_retrains_over_existing_checkpoints_instead_of_loading_them(tmp_path, data_and_split) -> None:
    entry = STATEFUL["ewc"]
    clean = _trainer(tmp_path / "clean", data_and_split, "ewc", entry)
    clean.run()
    stale = _trainer(tmp_path / "stale", data_and_split, "ewc", entry)
    stale.run()
    for stage in range(3):  # same fingerprint, other weights: only --fresh can tell
        path = stage_path(stale.run_dir, stage)
        payload = load_checkpoint(path)
        payload["model"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in payload["model"].items()}
        save_checkpoint(path, payload)
    rerun = _trainer(tmp_path / "stale", data_and_split, "ewc", entry)
    records = rerun.run(fresh=True)
    assert [record.stage for record in records] == [0, 1, 2]
    assert same_weights(model_weights(clean), model_weights(rerun))


# -- edges: no teacher or anchor yet, one weight at zero, tiny buffers --------------------------------


def test_teacher_view_blanks_exactly_the_genes_the_teacher_never_saw(tmp_path, data_and_split) -> None:
    trainer = _trainer(tmp_path, data_and_split, "finetune", {"kind": "finetune"})
    stages = trainer.split.cell_stages
    rows = np.concatenate([trainer.split.cells_of_stage(1)[:8], trainer.split.cells_of_stage(2)[:8]])
    batch = trainer.builder.training_batch(rows, np.random.default_rng(0), 0.4)
    view = teacher_view(batch, known_stage=1)
    new = batch.gene_sets == 2
    known = ~new
    assert bool(new.any()) and bool((batch.gene_sets == 1).any()) and set(stages[rows]) == {1, 2}
    assert bool((view.genes[new] == 0).all()) and bool((view.values[new] == 0).all())
    assert bool(view.padding[new].all()) and not bool(view.masked[new].any())
    for field in ("genes", "values", "masked", "padding"):
        assert torch.equal(getattr(view, field)[known], getattr(batch, field)[known]), field
    assert view.targets is batch.targets and view.gene_sets is batch.gene_sets and view.rows is batch.rows


def test_no_term_before_a_teacher_or_an_anchor_exists_and_none_after(tmp_path, data_and_split) -> None:
    for name, entry in {
        "distill": {"kind": "distill", "lam": 1.0, "cls_weight": 1.0},
        "ewc": {"kind": "ewc", "lam": 1.0, "fisher_batches": 1},
    }.items():
        trainer = _trainer(tmp_path, data_and_split, name, entry)
        strategy = trainer.strategy
        assert strategy.state_dict() == ({"fisher": {}, "anchor": {}} if name == "ewc" else {})
        ctx = trainer._context(0)
        strategy.before_stage(ctx)
        batch = _stage_batch(trainer, 0)
        assert strategy.loss_terms(ctx, batch, ctx.forward(batch)) == {}, name
    distill = _trainer(tmp_path, data_and_split, "distill", {"kind": "distill"})
    ctx, _ = _enter_stage_one(distill)
    assert not any(param.requires_grad for param in distill.strategy.teacher.parameters())  # frozen
    distill.strategy.after_stage(ctx)
    assert distill.strategy.teacher is None  # released with the stage


@pytest.mark.parametrize(("lam", "cls_weight"), [(0.0, 1.0), (1.0, 0.0)])
def test_either_distillation_weight_alone_gives_its_term(
    tmp_path, data_and_split, lam: float, cls_weight: float
) -> None:
    entry = {"kind": "distill", "lam": lam, "cls_weight": cls_weight}
    trainer = _trainer(tmp_path, data_and_split, "distill", entry)
    ctx, _ = _enter_stage_one(trainer)
    batch = _stage_batch(trainer, 1)
    terms = trainer.strategy.loss_terms(ctx, batch, ctx.forward(batch))
    assert ("distill_cls" in terms) == (cls_weight > 0)
    assert (terms["distill"].item() > 0) == (lam > 0)
    assert sum(term.item() for term in terms.values()) > 0


@pytest.mark.parametrize("lam", [1.0, 3.0])
def test_ewc_term_scales_with_lambda_from_one(tmp_path, data_and_split, lam: float) -> None:
    trainer = _trainer(tmp_path, data_and_split, "ewc", {"kind": "ewc", "lam": lam, "fisher_batches": 1})
    ctx, _ = _enter_stage_one(trainer)
    batch = _stage_batch(trainer, 1)
    term = trainer.strategy.loss_terms(ctx, batch, ctx.forward(batch))["ewc"]
    penalty = ewc_penalty(trainer.model, trainer.strategy.fisher, trainer.strategy.anchor)
    assert term.item() == pytest.approx(lam * penalty.item())


def test_distillation_without_positions_is_a_zero_that_keeps_the_graph() -> None:
    from gil.strategies.functional import distillation_loss

    student = torch.ones(2, 3, requires_grad=True)
    loss = distillation_loss(student, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad


def test_fisher_of_one_batch_is_its_squared_gradient() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    fisher = fisher_diagonal(model, [torch.tensor([3.0])], lambda x: model(x).sum())
    assert fisher["weight"].item() == pytest.approx(9.0)  # d(w·3)/dw = 3


@pytest.mark.parametrize(("buffer_size", "distinct"), [(2, False), (4, True)])
def test_a_buffer_smaller_than_a_batch_share_is_drawn_with_replacement(
    tmp_path, data_and_split, buffer_size: int, distinct: bool
) -> None:
    trainer = _trainer(tmp_path, data_and_split, "replay", {"kind": "replay", "mix": 0.25})
    strategy, stages = trainer.strategy, trainer.split.cell_stages
    strategy.buffer = trainer.split.cells_of_stage(0)[:buffer_size]
    batches = strategy.epoch_batches(trainer._context(1), np.random.default_rng(0))
    for rows in batches:
        replayed = rows[stages[rows] == 0]
        assert len(replayed) == 4 and set(replayed) <= set(strategy.buffer)
        if distinct:  # exactly a share's worth: every buffered cell once, no repeats
            assert sorted(replayed) == sorted(strategy.buffer)
