"""The stage loop: determinism, resume after a kill, shared base stage, checkpoint safety."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time

import pytest
import torch
import yaml
from conftest import gil_train_command
from factories import make_config, make_processed, make_split, model_weights, same_weights

from gil.data.vocab import Vocabulary
from gil.errors import GilError
from gil.train.checkpoint import completed_stages, load_checkpoint, stage_path
from gil.train.loop import StageTrainer, lr_factor, run_fingerprint, train_base, train_strategy


@pytest.fixture(scope="module")
def data_and_split():
    data = make_processed(n_cells=160, n_genes=40)
    return data, make_split(data)


def test_checkpoints_carry_the_vocabulary_and_the_vocabulary_grows(tmp_path, data_and_split) -> None:
    data, split = data_and_split
    trainer = StageTrainer(make_config(), "finetune", 0, data, split, tmp_path, progress=False)
    trainer.run()
    sizes = [len(split.gene_sets[0][1]), 6, 6]
    for stage in range(3):
        payload = load_checkpoint(stage_path(tmp_path, stage))
        assert len(payload["vocabulary"]) == sum(sizes[: stage + 1])
        assert payload["n_tokens"] == 2 + sum(sizes[: stage + 1])
    stage0 = load_checkpoint(stage_path(tmp_path, 0))["model"]["gene_embedding.weight"]
    stage2 = load_checkpoint(stage_path(tmp_path, 2))["model"]["gene_embedding.weight"]
    assert stage2.shape[0] > stage0.shape[0]


def test_preallocated_vocabulary_keeps_the_full_table_from_the_start(tmp_path, data_and_split) -> None:
    data, split = data_and_split
    config = make_config(model={"preset": "tiny", "vocabulary": "preallocated"})
    trainer = StageTrainer(config, "finetune", 0, data, split, tmp_path, progress=False)
    assert trainer.model.n_tokens == 2 + data.n_genes
    trainer.run()
    assert trainer.model.n_tokens == 2 + data.n_genes


def test_resume_after_losing_the_last_stage_gives_identical_weights(tmp_path, data_and_split) -> None:
    data, split = data_and_split
    config = make_config(model={"preset": "tiny", "dropout": 0.1})
    full = StageTrainer(config, "replay", 0, data, split, tmp_path / "full", progress=False)
    full.run()
    partial = StageTrainer(config, "replay", 0, data, split, tmp_path / "partial", progress=False)
    partial.run()
    stage_path(partial.run_dir, 2).unlink()  # as if killed during stage 2
    resumed = StageTrainer(config, "replay", 0, data, split, tmp_path / "partial", progress=False)
    resumed.run()
    assert same_weights(model_weights(full), model_weights(resumed))


def test_shared_base_stage_gives_the_same_run_as_training_it(tmp_path, data_and_split) -> None:
    data, split = data_and_split
    config = make_config(model={"preset": "tiny", "dropout": 0.1})
    train_base(config, data, split, tmp_path / "base", progress=False)
    for name in ("ewc", "replay"):
        own = StageTrainer(config, name, 0, data, split, tmp_path / name / "own", progress=False)
        own.run()
        shared = StageTrainer(
            config,
            name,
            0,
            data,
            split,
            tmp_path / name / "shared",
            progress=False,
            base_dir=tmp_path / "base",
        )
        shared.run()
        assert same_weights(model_weights(own), model_weights(shared))


def test_a_checkpoint_from_another_config_is_refused_and_kept(tmp_path, data_and_split) -> None:
    data, split = data_and_split
    train_strategy(make_config(), "finetune", data, split, tmp_path, progress=False)
    before = stage_path(tmp_path / "seed_0", 2).read_bytes()
    other = make_config(train={"seeds": [0], "epochs_per_stage": 3, "batch_size": 16, "device": "cpu"})
    with pytest.raises(GilError, match="different config"):
        train_strategy(other, "finetune", data, split, tmp_path, progress=False)
    assert stage_path(tmp_path / "seed_0", 2).read_bytes() == before


def test_a_corrupt_checkpoint_is_refused_with_a_clear_message(tmp_path) -> None:
    path = tmp_path / "stage_0.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(GilError, match="unreadable"):
        load_checkpoint(path)


def test_half_written_checkpoints_are_never_picked_up(tmp_path) -> None:
    (tmp_path / ".stage_1.pt.abc.tmp").write_bytes(b"partial")
    (tmp_path / "stage_0.pt").write_bytes(b"x")
    assert completed_stages(tmp_path) == [0]


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_project) -> None:
    """Kill `gil train` with SIGKILL while it trains, rerun it, compare with an uninterrupted run."""
    base_params, processed, split_dir = tiny_project
    raw = yaml.safe_load(base_params.read_text())
    raw["train"]["epochs_per_stage"] = 25  # long enough stages that the kill lands mid-run
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))

    def command(out: str) -> list[str]:
        return gil_train_command(params, processed, split_dir, tmp_path / out)

    env = {**os.environ, "TQDM_DISABLE": "1"}
    subprocess.run(command("clean"), check=True, env=env, capture_output=True)
    victim = subprocess.Popen(
        command("killed"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not stage_path(tmp_path / "killed" / "seed_0", 0).exists() and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = completed_stages(tmp_path / "killed" / "seed_0")
    assert 0 in done and 2 not in done, "the kill must land mid-run"
    subprocess.run(command("killed"), check=True, env=env, capture_output=True)
    clean = load_checkpoint(stage_path(tmp_path / "clean" / "seed_0", 2))["model"]
    resumed = load_checkpoint(stage_path(tmp_path / "killed" / "seed_0", 2))["model"]
    assert same_weights(clean, resumed)
    leftovers = [p.name for p in (tmp_path / "killed" / "seed_0").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_the_learning_rate_warms_up_then_stays_or_anneals() -> None:
    # warm-up over 4 steps: 1/4, 2/4, 3/4, then full; a stage of 12 steps.
    assert [lr_factor(s, 4, 12, "constant") for s in (0, 1, 3, 4, 11)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, 4, 12, "cosine") for s in range(12)]
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0]
    # after warm-up: 0.5 (1 + cos(pi (s - 4) / 7)), from 1 at step 4 to 0 at the last step, 11
    assert cosine[4] == 1.0 and cosine[11] == pytest.approx(0.0, abs=1e-12)
    assert cosine[7] == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 7)))
    assert all(a > b for a, b in zip(cosine[4:], cosine[5:], strict=False))
    assert lr_factor(0, 0, 5, "constant") == 1.0  # no warm-up: full rate from the first step


def test_the_embedding_table_learns_at_its_own_rate(tmp_path, data_and_split) -> None:
    # A scale near zero must freeze the gene rows (cosine start/end ~ 1) while every other weight moves.
    data, split = data_and_split
    cosines = {}
    for scale in (1.0, 1e-6):
        config = make_config(train={**make_config().train.model_dump(), "embedding_lr_scale": scale})
        trainer = StageTrainer(config, "finetune", 0, data, split, tmp_path / str(scale), progress=False)
        shared_before = trainer.model.value_encoder[0].weight.detach().clone()
        record = trainer.train_stage(0)
        cosines[scale] = record.embedding_cosine[0]
        assert not torch.equal(shared_before, trainer.model.value_encoder[0].weight)
    assert cosines[1e-6] > 0.999999 and cosines[1.0] < 0.99


def test_a_cosine_schedule_is_a_different_run(tmp_path, data_and_split) -> None:
    data, split = data_and_split
    weights = {}
    for schedule in ("constant", "cosine"):
        config = make_config(train={**make_config().train.model_dump(), "lr_schedule": schedule})
        trainer = StageTrainer(config, "finetune", 0, data, split, tmp_path / schedule, progress=False)
        trainer.train_stage(0)
        weights[schedule] = model_weights(trainer)
    assert not same_weights(weights["constant"], weights["cosine"])


def test_mvc_on_all_positions_scores_the_genes_but_not_cls_or_padding(tmp_path, data_and_split) -> None:
    data, split = data_and_split
    losses = {}
    for positions in ("all", "masked"):
        train = {**make_config().train.model_dump(), "mvc_positions": positions, "mvc_weight": 2.0}
        trainer = StageTrainer(
            make_config(train=train), "finetune", 0, data, split, tmp_path / positions, progress=False
        )
        batch = trainer.builder.evaluation_batch(split.cells_of_stage(0)[:8], 0, 0, 0.4, 12)
        output = trainer.model(batch.genes, batch.values, batch.padding)
        losses[positions] = trainer.task_loss(batch, output)
    assert batch.padding.any() and batch.masked.any()  # the check below needs both kinds of position
    genes = ~batch.padding
    genes[:, 0] = False  # <cls>
    mlm = (output.mlm[batch.masked] - batch.targets[batch.masked]).pow(2).mean()
    mvc_all = (output.mvc[genes] - batch.targets[genes]).pow(2).mean()
    mvc_masked = (output.mvc[batch.masked] - batch.targets[batch.masked]).pow(2).mean()
    assert torch.allclose(losses["masked"], mlm + 2.0 * mvc_masked)
    assert torch.allclose(losses["all"], mlm + 2.0 * mvc_all)
    assert not torch.allclose(mvc_all, mvc_masked)


def test_new_training_keys_at_their_defaults_keep_old_checkpoints_valid(data_and_split) -> None:
    data, split = data_and_split
    config = make_config()
    vocab = Vocabulary.from_split(split)
    # computed by the code before the keys of TRAIN_KEYS_ADDED_LATER existed: its checkpoints still resume
    assert run_fingerprint(config, "finetune", 0, vocab, split) == "0b9cad34d772255d"
    for key, value in (
        ("lr_schedule", "cosine"),
        ("embedding_lr_scale", 3.0),
        ("mvc_positions", "all"),
        ("max_steps_per_stage", 5),
    ):
        changed = make_config(train={**config.train.model_dump(), key: value})
        assert run_fingerprint(changed, "finetune", 0, vocab, split) != "0b9cad34d772255d"


def test_a_step_cap_cuts_the_stage_short_and_is_no_cap_at_or_above_its_steps(
    tmp_path, data_and_split
) -> None:
    # Stage 0 holds 64 cells: 4 batches of 16 per epoch, 2 epochs, 8 steps uncapped.
    data, split = data_and_split
    train = make_config().train.model_dump()
    runs = {}
    for name, changes in {
        "uncapped": {},
        "cap 5": {"max_steps_per_stage": 5},
        "cap 8": {"max_steps_per_stage": 8},
        "cap 100": {"max_steps_per_stage": 100},
        "cap 4": {"max_steps_per_stage": 4},
        "one epoch": {"epochs_per_stage": 1},
    }.items():
        trainer = StageTrainer(
            make_config(train={**train, **changes}),
            "finetune",
            0,
            data,
            split,
            tmp_path / name,
            progress=False,
        )
        record = trainer.train_stage(0)
        runs[name] = (
            record.optimizer_steps,
            len(record.epochs),
            record.cells_processed,
            model_weights(trainer),
        )
    assert runs["uncapped"][:3] == (8, 2, 128)
    assert runs["cap 5"][:3] == (5, 2, 80)  # one whole epoch, then one step of the second
    assert runs["cap 4"][:3] == (4, 1, 64)  # the cap ends the stage: no empty second epoch
    assert same_weights(runs["cap 8"][3], runs["uncapped"][3])
    assert same_weights(runs["cap 100"][3], runs["uncapped"][3])
    # the same 4 steps at the same rates as a one-epoch stage (the schedule spans the capped steps)
    assert same_weights(runs["cap 4"][3], runs["one epoch"][3])
    assert not same_weights(runs["cap 5"][3], runs["uncapped"][3])
