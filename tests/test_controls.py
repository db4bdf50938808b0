"""The evaluation's controls: complete forgetting must show, no forgetting must read exactly 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _mutmut import train_checkpoints
from factories import make_config, make_processed, make_split

from gil.controls import (
    NOTE,
    Controls,
    _controls_job,
    _means,
    collapse_gene_rows,
    erase_gene_rows,
    redraw_gene_rows,
    run_controls,
)
from gil.errors import GilError
from gil.evaluate import evaluate_strategy, seed_runner
from gil.model import GeneTransformer
from gil.train.parallel import run_seeds_in_processes


def _trained_like() -> tuple[GeneTransformer, torch.Tensor]:
    """A model whose gene rows are far from the initial scale (as trained rows are), and a copy of them."""
    model = GeneTransformer(n_tokens=400, n_layers=1, d_model=64, n_heads=2, d_ff=32, dropout=0.0)
    with torch.no_grad():
        model.gene_embedding.weight.mul_(10.0)
    return model, model.gene_embedding.weight.detach().clone()


def test_redrawing_rows_redraws_exactly_those_rows_at_the_initial_scale() -> None:
    model, before = _trained_like()
    tokens = np.arange(100, 300)
    redraw_gene_rows(model, tokens, seed=0)
    after = model.gene_embedding.weight.detach()
    changed = (after != before).any(dim=1)
    assert changed[100:300].all() and not changed[:100].any() and not changed[300:].any()
    assert float(after[100:300].std()) == pytest.approx(model.gene_embedding.init_std, rel=0.05)
    again = redraw_gene_rows(GeneTransformer(400, 1, 64, 2, 32, 0.0), tokens, seed=0).gene_embedding.weight
    assert torch.equal(again[100:300], after[100:300])  # seeded


def test_collapsing_rows_sets_exactly_those_rows_to_their_mean() -> None:
    model = GeneTransformer(n_tokens=50, n_layers=1, d_model=8, n_heads=2, d_ff=8, dropout=0.0)
    before = model.gene_embedding.weight.detach().clone()
    tokens = np.array([3, 7, 11])
    after = collapse_gene_rows(model, tokens, seed=0).gene_embedding.weight.detach()
    expected = before[[3, 7, 11]].mean(dim=0)
    for token in tokens:
        torch.testing.assert_close(after[token], expected)
    others = np.setdiff1d(np.arange(50), tokens)
    assert torch.equal(after[others], before[others])


def test_erasing_rows_gives_exactly_those_rows_one_fresh_row_at_the_initial_scale() -> None:
    model, before = _trained_like()
    tokens = np.arange(100, 300)
    after = erase_gene_rows(model, tokens, seed=0).gene_embedding.weight.detach()
    assert (after[100:300] == after[100]).all()  # one row for all: no gene can be told apart
    assert not torch.allclose(after[100], before[100:300].mean(dim=0), atol=1e-3)  # not the collapse
    assert torch.equal(after[:100], before[:100]) and torch.equal(after[300:], before[300:])
    assert float(after[100].std()) == pytest.approx(model.gene_embedding.init_std, rel=0.3)
    again = erase_gene_rows(GeneTransformer(400, 1, 64, 2, 32, 0.0), tokens, seed=0).gene_embedding.weight
    assert torch.equal(again[100:300], after[100:300])  # seeded
    other = erase_gene_rows(GeneTransformer(400, 1, 64, 2, 32, 0.0), tokens, seed=1).gene_embedding.weight
    assert not torch.equal(other[100], after[100])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_processed(n_cells=240, n_genes=40, gene_levels=True)
    split = make_split(data)
    config = make_config(
        train={"seeds": [0, 1], "epochs_per_stage": 6, "batch_size": 16, "lr": 0.003, "warmup_steps": 2},
        evaluate={"seed": 7, "repeats": 1, "batch_size": 32, "probe": {"folds": 3, "c_grid": [1.0]}},
    )
    out = tmp_path_factory.mktemp("ckpt")
    train_checkpoints(config, "finetune", data, split, out)  # trained once per mutmut run
    return config, data, split, out


def test_negative_control_is_exactly_zero_and_positive_controls_dwarf_the_runs_forgetting(trained) -> None:
    config, data, split, out = trained
    document = run_controls(config, "finetune", data, split, out)
    evaluated = evaluate_strategy(config, "finetune", data, split, out)
    assert document["forgotten_sets"] == ["T1"]
    assert (document["strategy"], document["note"], document["gene_sets"]) == (
        "finetune",
        NOTE,
        ["B", "T1", "T2"],
    )
    for seed, controls in document["per_seed"].items():
        assert controls["delta_negative"] == [0.0, 0.0, 0.0]
        # T1's loss right after its stage: the diagonal of the run's own results matrix
        assert controls["learned_mse"] == pytest.approx(
            [evaluated["per_seed"][seed]["regression"]["matrix"][1][1]]
        )
        assert controls["probe"]["kind"]["negative_delta"] == 0.0
        # The intact run's Δ is the evaluation's own Δ of T1 for that seed.
        assert controls["delta_intact"] == pytest.approx([evaluated["per_seed"][seed]["regression"]["delta"]])
        for name in ("redrawn", "collapsed", "erased"):
            assert controls[f"delta_{name}"][0] > 3 * max(controls["delta_intact"][0], 0.01), name
    assert document["delta_negative"] == 0.0
    assert document["delta_redrawn"] > 3 * max(document["delta_intact"], 0.01)
    probe = document["probe"]["kind"]
    assert probe["negative_accuracy"] == probe["intact_accuracy"]
    # Removing the identities of the task's genes (collapse, erasure) costs the own-genes probe; the
    # tiny data's seeded values: collapsed −0.135, erased −0.094 (mean of 2 seeds).
    assert probe["collapsed_delta"] < -0.05 and probe["erased_delta"] < -0.05


class _ScoreHere:
    """A runner calling the worker entry point in this process, job by job; it records the seeds."""

    def __init__(self) -> None:
        self.seeds: list[int] = []
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, work, jobs: list, label: str, progress: bool):  # noqa: ANN001, ANN204 - a gil Runner
        self.calls.append((label, progress))
        for job in jobs:
            self.seeds.append(job.seed)
            yield job, work(job)


def test_the_worker_entry_points_score_each_seed_as_this_process_does(trained) -> None:
    """What a worker process runs (``_evaluate_job``, ``_controls_job``), called here: the same
    documents as scoring without workers. Here too because code run in another process is invisible
    to mutation testing's map of which tests execute which function."""
    config, data, split, out = trained
    evaluations, controls = _ScoreHere(), _ScoreHere()
    assert evaluate_strategy(config, "finetune", data, split, out, runner=evaluations) == evaluate_strategy(
        config, "finetune", data, split, out
    )
    assert run_controls(config, "finetune", data, split, out, runner=controls) == run_controls(
        config, "finetune", data, split, out
    )
    assert evaluations.seeds == controls.seeds == [0, 1]  # the runner given did score the seeds
    # one call each, labelled for the progress line, without a bar of its own (the caller's shows)
    assert evaluations.calls == [("evaluate finetune", False)] and controls.calls == [
        ("controls finetune", False)
    ]


def test_seeds_scored_in_worker_processes_give_the_documents_of_one_process(trained) -> None:
    """With ``compute.jobs`` > 1 the seeds are scored in worker processes forked from a fork server
    (``gil.train.workers``); every number is the one scored here, to the bit."""
    config, data, split, out = trained
    workers = config.model_copy(update={"compute": config.compute.model_copy(update={"jobs": 2})})
    assert seed_runner(config, None) is None and seed_runner(workers, None) is run_seeds_in_processes
    assert evaluate_strategy(workers, "finetune", data, split, out) == evaluate_strategy(
        config, "finetune", data, split, out
    )
    assert run_controls(workers, "finetune", data, split, out) == run_controls(
        config, "finetune", data, split, out
    )


def test_a_positive_controls_delta_is_the_damaged_models_loss_minus_the_learned_loss(trained) -> None:
    config, data, split, out = trained
    controls = Controls(config, "finetune", data, split, out)
    per_seed = controls.seed(0)
    damaged = erase_gene_rows(controls._model(0, 2), controls.forgotten_tokens, 0)
    mse = controls.evaluator.inputs.regression(damaged, 2).mse[1]
    assert per_seed["delta_erased"] == pytest.approx([mse - per_seed["learned_mse"][0]])


def test_the_damaged_tokens_are_the_earlier_stage_sets_and_the_tasks_those_learned_before_the_last(
    trained,
) -> None:
    """Three stages (B, T1, T2): only T1 is forgotten by the final model, only a task learned at
    stage 1 is scored (one learned at 0 is the base; one at 2 is the final stage's own)."""
    import dataclasses

    config, data, split, out = trained
    task = split.tasks[0]
    tasks = [dataclasses.replace(task, name=f"at_{stage}", learned_at=stage) for stage in (0, 1, 2)]
    controls = Controls(config, "finetune", data, dataclasses.replace(split, tasks=tasks), out)
    sets = controls.evaluator.vocab.set_of_token()
    assert controls.forgotten_tokens.tolist() == np.flatnonzero(sets == 1).tolist()
    assert len(controls.forgotten_tokens) == 6
    assert [t.name for t in controls.tasks] == ["at_1"]


def test_a_worker_refuses_checkpoints_of_another_config(trained) -> None:
    """The worker entry point loads each checkpoint against the run's fingerprint: a worker never
    scores another run's weights (``check_checkpoints`` runs in the parent only)."""
    from gil.train.parallel import seed_jobs

    config, data, split, out = trained
    other = config.model_copy(update={"train": config.train.model_copy(update={"lr": 0.001})})
    (job,) = seed_jobs(other, [0], data, strategy_name="finetune", split=split, checkpoints=out)
    with pytest.raises(GilError, match="different config"):
        _controls_job(job)


def test_control_means_over_seeds_by_hand() -> None:
    """Two seeds; each row's Δ is first averaged over the forgotten sets, then over seeds."""

    def seed(deltas: dict[str, list[float]], accuracy: float) -> dict:
        return {
            **{f"delta_{name}": values for name, values in deltas.items()},
            "probe": {
                "kind": {
                    "majority_rate": 0.5,
                    "intact_accuracy": accuracy,
                    "erased_delta": -accuracy,
                    "erased_delta_se": 9.0,
                }
            },
        }

    rows = ("intact", "redrawn", "collapsed", "erased", "negative")
    one = seed({name: [1.0, 3.0] for name in rows}, 0.8)  # per-seed mean 2
    two = seed({name: [4.0, 6.0] for name in rows}, 0.6)  # per-seed mean 5
    summary = _means({"0": one, "1": two})
    for name in rows:
        assert summary[f"delta_{name}"] == pytest.approx(3.5)
        assert summary[f"delta_{name}_std"] == pytest.approx(np.std([2.0, 5.0], ddof=1))
    assert summary["probe"] == {
        "kind": {
            "majority_rate": 0.5,
            "intact_accuracy": pytest.approx(0.7),
            "intact_accuracy_std": pytest.approx(np.std([0.8, 0.6], ddof=1)),
            "erased_delta": pytest.approx(-0.7),
            "erased_delta_std": pytest.approx(np.std([0.8, 0.6], ddof=1)),
        }
    }
    alone = _means({"3": one})  # one seed: its own values, no spread
    assert alone["delta_erased"] == 2.0 and alone["probe"]["kind"]["majority_rate"] == 0.5


def test_the_damage_draws_from_fixed_seeded_streams() -> None:
    """Pinned values: the controls' numbers are reproducible across versions only if the erased and
    redrawn rows come from the same streams (seed 5, d_model 8; torch's CPU generator)."""

    def rows(damage) -> torch.Tensor:
        model = GeneTransformer(20, 1, 8, 2, 8, 0.0)
        return damage(model, np.array([3, 4]), 5).gene_embedding.weight.detach()

    erased, redrawn = rows(erase_gene_rows), rows(redraw_gene_rows)
    assert erased[3, :3].tolist() == pytest.approx([0.0321161, 0.0205912, -0.0056986], abs=1e-7)
    assert redrawn[3, :3].tolist() == pytest.approx([0.0310553, 0.0222551, 0.0058923], abs=1e-7)
    assert redrawn[4, :3].tolist() == pytest.approx([-0.0060197, -0.0131634, -0.0007618], abs=1e-7)
