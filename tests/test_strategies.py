"""Each strategy changes what it claims to change, and nothing when it should not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import make_config, make_processed, make_split

from gil.config import config_from_dict
from gil.errors import GilError
from gil.strategies import registry
from gil.strategies.buffer import balanced_sample, update_buffer
from gil.strategies.functional import ewc_penalty, teacher_view
from gil.train.loop import StageTrainer


@pytest.fixture(scope="module")
def data_and_split():
    data = make_processed(n_cells=160, n_genes=40)
    return data, make_split(data)


def _trainer(tmp_path, data_and_split, name: str, **strategies) -> StageTrainer:
    data, split = data_and_split
    config = make_config(strategies=strategies or {name: {"kind": name}}) if strategies else make_config()
    return StageTrainer(config, name, 0, data, split, tmp_path / name, progress=False)


def _final_weights(trainer: StageTrainer) -> dict[str, torch.Tensor]:
    trainer.run()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_registry_finds_every_default_strategy() -> None:
    assert {"finetune", "joint", "replay", "distill", "ewc", "replay_distill"} <= set(registry())


def test_distill_with_zero_lambda_equals_finetune(tmp_path, data_and_split) -> None:
    finetune = _final_weights(_trainer(tmp_path, data_and_split, "finetune", finetune={"kind": "finetune"}))
    for entry in ({"kind": "distill", "lam": 0.0}, {"kind": "distill", "lam": 0.0, "queries_per_cell": 4}):
        # With λ = 0 the old-gene queries are not drawn either (drawing them would move the rng).
        trainer = _trainer(tmp_path / str(len(entry)), data_and_split, "distill", distill=entry)
        distill = _final_weights(trainer)
        assert all(torch.equal(finetune[k], distill[k]) for k in finetune), entry


def test_distill_and_ewc_change_the_weights_of_later_stages(tmp_path, data_and_split) -> None:
    finetune = _final_weights(_trainer(tmp_path, data_and_split, "finetune", finetune={"kind": "finetune"}))
    for name, entry in {
        "distill": {"kind": "distill", "lam": 5.0},
        "ewc": {"kind": "ewc", "lam": 100.0},
    }.items():
        weights = _final_weights(_trainer(tmp_path, data_and_split, name, **{name: entry}))
        assert not torch.equal(weights["layers.0.qkv.weight"], finetune["layers.0.qkv.weight"])


def test_teacher_view_hides_new_genes_only(data_and_split, tmp_path) -> None:
    trainer = _trainer(tmp_path, data_and_split, "finetune", finetune={"kind": "finetune"})
    rows = trainer.split.cells_of_stage(2)
    batch = trainer.builder.training_batch(rows, np.random.default_rng(0), 0.4)
    view = teacher_view(batch, known_stage=1)
    new = batch.gene_sets == 2
    assert bool(new.any())
    assert bool(view.padding[new].all()) and bool((view.genes[new] == 0).all())
    assert torch.equal(view.genes[~new], batch.genes[~new])


def test_replay_batches_mix_earlier_cells_that_keep_their_own_genes(tmp_path, data_and_split) -> None:
    trainer = _trainer(
        tmp_path, data_and_split, "replay", replay={"kind": "replay", "buffer_size": 20, "mix": 0.5}
    )
    trainer.run()
    strategy = trainer.strategy
    stages = trainer.split.cell_stages
    assert len(strategy.buffer) == 20 and set(stages[strategy.buffer]) == {0, 1, 2}
    ctx = trainer._context(2)
    strategy.buffer = strategy.buffer[stages[strategy.buffer] < 2]  # the buffer as it was during stage 2
    batches = strategy.epoch_batches(ctx, np.random.default_rng(0))
    rows = np.concatenate(batches)
    assert set(stages[rows]) >= {2, 0} and (stages[rows] < 2).sum() > 0
    batch = trainer.builder.training_batch(batches[0], np.random.default_rng(1), 0.4)
    own = torch.from_numpy(stages[batches[0]].astype(np.int64))[:, None]
    real = batch.gene_sets >= 0
    assert bool(((batch.gene_sets == 0) | (batch.gene_sets == own))[real].all())
    assert bool((batch.gene_sets == 1).any())  # stage-1 genes are rehearsed at stage 2


def test_joint_trains_on_all_stages_so_far(tmp_path, data_and_split) -> None:
    trainer = _trainer(tmp_path, data_and_split, "joint", joint={"kind": "joint"})
    ctx = trainer._context(1)
    rows = np.concatenate(trainer.strategy.epoch_batches(ctx, np.random.default_rng(0)))
    assert set(trainer.split.cell_stages[rows]) == {0, 1}


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it() -> None:
    model = torch.nn.Linear(3, 2)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    assert ewc_penalty(model, fisher, anchor).item() == 0.0
    with torch.no_grad():
        model.bias += 1.0
    assert ewc_penalty(model, fisher, anchor).item() == pytest.approx(0.5 * 2 * 1.0)


def test_balanced_buffer_spreads_over_stages_and_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["a"] * 90 + ["b"] * 10)
    chosen = balanced_sample(np.arange(100), labels, 20, rng)
    assert (labels[chosen] == "b").sum() == 10
    buffer = update_buffer(
        np.zeros(0, dtype=np.int64), np.zeros(0), np.arange(50), 0, 0, 10, "balanced", None, rng
    )
    buffer = update_buffer(buffer, np.zeros(len(buffer)), np.arange(50, 60), 1, 50, 10, "balanced", None, rng)
    assert len(buffer) == 10 and (buffer >= 50).sum() == 5
    random = update_buffer(np.arange(10), np.zeros(10), np.arange(90, 100), 1, 90, 10, "random", None, rng)
    assert len(random) == 10 and (random >= 90).sum() == 1  # 10% of all cells seen came in stage 1


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "nope"}, "unknown strategy 'nope'"),
        ({"kind": "replay", "buffer_size": -3}, "strategies.bad.buffer_size"),
        ({"kind": "distill", "lamda": 1.0}, "strategies.bad.lamda"),
    ],
)
def test_invalid_strategy_entries_name_the_key(entry: dict, message: str) -> None:
    with pytest.raises(GilError, match=message):
        config_from_dict({"dataset": {"path": "x.h5ad"}, "strategies": {"bad": entry}})


@pytest.mark.parametrize("kind", sorted(registry()))
def test_every_strategy_trains_and_evaluates_end_to_end(tmp_path, data_and_split, kind: str) -> None:
    from gil.evaluate import evaluate_strategy
    from gil.train.loop import train_strategy

    data, split = data_and_split
    config = make_config(strategies={kind: {"kind": kind}})
    train_strategy(config, kind, data, split, tmp_path, progress=False)
    document = evaluate_strategy(config, kind, data, split, tmp_path)
    final = document["regression"]["matrix"][-1]
    assert len(final) == 3 and all(value is not None and value > 0 for value in final)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def test_steps_and_cells_per_stage_of_finetune_replay_and_joint(tmp_path, data_and_split) -> None:
    """Replay's default epoch spends fine-tuning's steps; ``current_cells`` and joint spend more."""
    stages = data_and_split[1].cell_stages
    n = {k: int((stages == k).sum()) for k in (0, 1, 2)}
    epochs, batch = 2, 16  # make_config's train section
    records = {}
    for name, entry in {
        "finetune": {"kind": "finetune"},
        "replay": {"kind": "replay", "buffer_size": 20, "mix": 0.25},
        "replay_all": {"kind": "replay", "buffer_size": 20, "mix": 0.25, "epoch": "current_cells"},
        "joint": {"kind": "joint"},
    }.items():
        records[name] = _trainer(tmp_path, data_and_split, name, **{name: entry}).run()
    finetune = [epochs * _ceil(n[k], batch) for k in (0, 1, 2)]
    assert [r.optimizer_steps for r in records["finetune"]] == finetune
    assert [r.cells_processed for r in records["finetune"]] == [epochs * n[k] for k in (0, 1, 2)]
    assert [r.optimizer_steps for r in records["replay"]] == finetune
    assert [r.cells_processed for r in records["replay"]][1:] == [steps * batch for steps in finetune[1:]]
    n_current = batch - round(0.25 * batch)
    assert [r.optimizer_steps for r in records["replay_all"]][1:] == [
        epochs * _ceil(n[k], n_current) for k in (1, 2)
    ]
    seen = [n[0], n[0] + n[1], n[0] + n[1] + n[2]]
    assert [r.optimizer_steps for r in records["joint"]] == [epochs * _ceil(m, batch) for m in seen]
    assert [r.cells_processed for r in records["joint"]] == [epochs * m for m in seen]


def test_small_initial_rows_move_during_their_stage_where_unit_rows_barely_turn(
    tmp_path, data_and_split
) -> None:
    """The embedding diagnostic, and the reason for ``gene_init_std``: rows behind a LayerNorm move
    by about ``lr`` per step, so only small rows change direction within a stage."""
    data, split = data_and_split
    cosines = {}
    for std in (0.02, 1.0):
        config = make_config(model={"preset": "tiny", "gene_init_std": std})
        trainer = StageTrainer(config, "finetune", 0, data, split, tmp_path / str(std), progress=False)
        records = trainer.run()
        assert [len(r.embedding_cosine) for r in records] == [1, 2, 3]
        cosines[std] = [r.embedding_cosine[r.stage] for r in records]  # each stage's new rows
    assert all(c < 0.97 for c in cosines[0.02])
    assert all(c > 0.999 for c in cosines[1.0])
