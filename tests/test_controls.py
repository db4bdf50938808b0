"""The evaluation's controls: complete forgetting must show, no forgetting must read exactly 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import make_config, make_processed, make_split

from gil.controls import collapse_gene_rows, erase_gene_rows, redraw_gene_rows, run_controls
from gil.evaluate import evaluate_strategy, seed_runner
from gil.model import GeneTransformer
from gil.train.loop import train_strategy
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
    train_strategy(config, "finetune", data, split, out, progress=False)
    return config, data, split, out


def test_negative_control_is_exactly_zero_and_positive_controls_dwarf_the_runs_forgetting(trained) -> None:
    config, data, split, out = trained
    document = run_controls(config, "finetune", data, split, out)
    evaluated = evaluate_strategy(config, "finetune", data, split, out)
    assert document["forgotten_sets"] == ["T1"]
    for seed, controls in document["per_seed"].items():
        assert controls["delta_negative"] == [0.0, 0.0, 0.0]
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

    def __call__(self, work, jobs: list, label: str, progress: bool):  # noqa: ANN001, ANN204 - a gil Runner
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
