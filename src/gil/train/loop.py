"""The stage loop: base stage, then stages 1..n, each from the previous stage's final weights.

Why it is built this way:

- Every random stream of stage ``k`` (batch order, gene sampling, masks, dropout, new embedding rows)
  is seeded from ``(seed, k)``. A run resumed from the checkpoint of stage ``k-1`` therefore redoes
  stage ``k`` exactly as an uninterrupted run would, and checkpoints need no RNG state.
- Each stage gets a fresh Adam optimizer with linear warm-up (as in the paper), then a constant
  rate or a cosine decay to zero over the stage's steps (``train.lr_schedule``; on Zeisel the decay
  learned the last stage's genes worse, so ``constant`` is the default). The gene embedding table
  has a parameter group of its own (``train.embedding_lr_scale``).
- The trainer owns the optimizer step; strategies only add named loss terms (see
  :mod:`gil.strategies.base`), which are logged by name.
- On CUDA the forward pass runs under bf16 autocast; batches are pinned and copied non-blocking.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from gil.config import Config, TrainConfig, missing_strategy_hint, run_params
from gil.data.batches import Batch, BatchBuilder, GeneSampling
from gil.data.layout import ProcessedData, Split
from gil.data.vocab import NO_SET, Vocabulary
from gil.errors import GilError
from gil.model import GeneTransformer, ModelOutput, masked_value_loss
from gil.model.scgpt import Imported, import_scgpt
from gil.scgpt_dir import identity
from gil.strategies import build_strategy
from gil.strategies.base import StageContext, Strategy
from gil.tracking.base import NullTracker, Tracker
from gil.train.checkpoint import (
    completed_stages,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
    stage_path,
)
from gil.train.devices import on_device
from gil.train.diagnostics import mean_row_cosine
from gil.train.parallel import Runner, SeedJob, run_seeds_in_processes, seed_jobs


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (independent streams for independent purposes)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def pick_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda:<i>`` must exist."""
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GilError(
                f"train.device is {setting!r} but no CUDA device is available; set train.device: auto"
            )
        index = int(setting.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise GilError(
                f"device {setting!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                "device(s); fix compute.devices or train.device"
            )
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; disabled on the CPU (fp32 there, for exact reproducibility)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The multiple of ``train.lr`` for optimizer step ``step`` (0-based) of a stage of ``total`` steps.

    Linear warm-up over ``warmup`` steps, then 1 (``constant``) or a half cosine from 1 down to 0
    at the stage's last step (``cosine``).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup + 1:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup - 1))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: GeneTransformer, embedding_lr_scale: float) -> list[dict]:
    """The gene embedding table, at ``embedding_lr_scale`` x the learning rate, and every other weight.

    Why a group of its own: a gene's row is updated only by the batches that hold the gene, while the
    shared weights are updated by every batch.
    """
    table = model.gene_embedding.weight
    rest = [p for p in model.parameters() if p is not table]
    return [{"params": [table], "lr_scale": embedding_lr_scale}, {"params": rest, "lr_scale": 1.0}]


def stage_optimizer(model: GeneTransformer, train: TrainConfig) -> torch.optim.Adam:
    """A stage's fresh Adam over :func:`parameter_groups`.

    Why ``foreach``: one call per operation for all tensors (CUDA's default) instead of a Python
    loop over the parameters; on the CPU the same numbers bit for bit, ~2 % of a step less
    (``fused=True`` would change the numbers).
    """
    return torch.optim.Adam(parameter_groups(model, train.embedding_lr_scale), lr=train.lr, foreach=True)


def use_threads(config: Config) -> None:
    """Run torch and the BLAS libraries numpy and scikit-learn call with ``train.threads`` threads
    (unset: their defaults).

    Why BLAS too: OpenBLAS busy-waits for its threads, so three evaluation workers with two BLAS
    threads each on two cores made ``gil evaluate`` take 108 s instead of 52 s (measured quiet).
    """
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
        threadpool_limits(limits=config.train.threads, user_api="blas")


def build_model(config: Config, vocab: Vocabulary, seed: int) -> GeneTransformer:
    """A freshly initialised model holding the base-stage vocabulary (or all genes if preallocated).

    With ``model.init`` from scGPT the weights are the checkpoint's (:func:`gil.model.scgpt.import_scgpt`):
    genes it knows get their pretrained rows, the others keep the seeded random rows drawn here.
    """
    return build_model_reporting(config, vocab, seed)[0]


def build_model_reporting(
    config: Config, vocab: Vocabulary, seed: int
) -> tuple[GeneTransformer, Imported | None]:
    """:func:`build_model`, and what the import of a pretrained model did (None: random init)."""
    n_tokens = vocab.size if config.model.vocabulary == "preallocated" else vocab.size_through(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 0xC0FFEE))
        model = GeneTransformer.from_sizes(n_tokens, config.model.resolved())
    directory = config.model.init.pretrained
    if directory is None:
        return model, None
    # Base genes only: stage genes start from random rows as new genes, also when the table is
    # preallocated (the same model as growing it).
    return model, import_scgpt(model, directory, vocab.genes_through(0))


def pretrained_identity(config: Config) -> dict[str, str]:
    """The hashes of the pretrained checkpoint (empty for random initialisation)."""
    directory = config.model.init.pretrained
    return identity(directory) if directory is not None else {}


def _model_identity(config: Config) -> dict:
    """The model section as fingerprints hash it: keys added with pretrained starts (``init``,
    ``activation``, ``value_clamp``) are left out while unset, so older checkpoints still resume."""
    dumped = config.model.model_dump()
    if config.model.init.pretrained is None:
        del dumped["init"]
    return {key: value for key, value in dumped.items() if key not in ("activation", "value_clamp") or value}


# Training keys added after checkpoints existed, with the behaviour those checkpoints were trained with.
TRAIN_KEYS_ADDED_LATER = {
    "lr_schedule": "constant",
    "embedding_lr_scale": 1.0,
    "mvc_positions": "masked",
    "max_steps_per_stage": None,
}
# The same for strategy parameters.
STRATEGY_KEYS_ADDED_LATER = {"queries_per_cell": 0, "train": {}}


def _without_old_defaults(values: dict, added_later: dict) -> dict:
    """``values`` without the keys added later that hold the old behaviour (older checkpoints resume)."""
    return {key: value for key, value in values.items() if added_later.get(key, object()) != value}


def run_fingerprint(
    config: Config, strategy_name: str | None, seed: int, vocab: Vocabulary, split: Split
) -> str:
    """What a checkpoint of this run depends on: model, training, strategy, seed and the split.

    ``strategy_name`` None is the shared base run (see :func:`train_base`). A pretrained start
    adds the checkpoint's hashes, so a checkpoint replaced under the same path is noticed. A
    strategy's ``train`` overrides count (:meth:`Config.for_strategy`, idempotent), so evaluation
    expects what training wrote from the global config alone.
    """
    if strategy_name:
        config = config.for_strategy(strategy_name)
    train = _without_old_defaults(
        config.train.model_dump(exclude={"seeds", "device", "threads"}), TRAIN_KEYS_ADDED_LATER
    )
    strategy = (
        _without_old_defaults(config.strategies[strategy_name].model_dump(), STRATEGY_KEYS_ADDED_LATER)
        if strategy_name
        else None
    )
    pretrained = pretrained_identity(config)
    return fingerprint(
        {
            **({"pretrained": pretrained} if pretrained else {}),
            "model": _model_identity(config),
            "train": train,
            "strategy": strategy,
            "seed": seed,
            "genes": vocab.genes,
            "set_sizes": vocab.set_sizes,
            "cell_stages": fingerprint({"stages": split.cell_stages.tolist()}),
        }
    )


@dataclass
class StageRecord:
    """What happened in one stage: epoch losses (task and named terms), compute and throughput.

    ``optimizer_steps`` and ``cells_processed`` make strategies' budgets comparable (replay's buffer
    cells and joint's earlier stages are cells processed too); ``embedding_cosine`` is the mean
    cosine of each known gene set's embedding rows between the stage's start and end (see
    :mod:`gil.train.diagnostics`).
    """

    stage: int
    epochs: list[dict[str, float]] = field(default_factory=list)
    cells_per_second: float = 0.0
    seconds: float = 0.0
    optimizer_steps: int = 0
    cells_processed: int = 0
    embedding_cosine: list[float] = field(default_factory=list)


@dataclass
class StageTrainer:
    """Trains one (strategy, seed) through all stages, checkpointing after each.

    ``strategy_name`` None trains only the base stage, with no strategy: the base stage is the
    same for every strategy (no strategy acts before stage 1), so the pipeline trains it once per
    seed and every strategy run imports it from ``base_dir``. Besides saving time, this makes the
    comparison between strategies paired: they all start stage 1 from the same model.
    """

    config: Config
    strategy_name: str | None
    seed: int
    data: ProcessedData
    split: Split
    run_dir: Path
    tracker: Tracker = field(default_factory=NullTracker)
    progress: bool = True
    base_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.strategy_name is not None and self.strategy_name not in self.config.strategies:
            raise GilError(missing_strategy_hint(self.config, self.strategy_name))
        # The shared base stage was trained with the global config; the strategy's own stages use
        # its entry's train overrides (a tuned row's learning rate, say).
        self.base_config = self.config
        if self.strategy_name is not None:
            self.config = self.config.for_strategy(self.strategy_name)
        self.device = pick_device(self.config.train.device)
        self.vocab = Vocabulary.from_split(self.split)
        sizes = self.config.model.resolved()
        sampling = GeneSampling(self.config.train.gene_sampling, self.config.train.weighted_fraction)
        self.builder = BatchBuilder(self.data, self.vocab, self.split.cell_stages, sizes["max_seq"], sampling)
        self.fingerprint = run_fingerprint(self.config, self.strategy_name, self.seed, self.vocab, self.split)
        self.strategy: Strategy = (
            build_strategy(self.config.strategies[self.strategy_name])
            if self.strategy_name is not None
            else Strategy(Strategy.Params())
        )
        self.strategy.check_inputs(self.data.cells)
        model, self.imported = build_model_reporting(self.config, self.vocab, self.seed)
        self.model = model.to(self.device)
        if self.imported is not None:
            print(f"seed {self.seed}: {self.imported.describe(self.config.model.init.path)}", file=sys.stderr)

    # -- one stage -------------------------------------------------------------------------

    def task_loss(self, batch: Batch, output: ModelOutput) -> torch.Tensor:
        train = self.config.train
        scored = (batch.gene_sets != NO_SET) & ~batch.queries if train.mvc_positions == "all" else None
        return masked_value_loss(output, batch.targets, batch.masked, train.mvc_weight, scored)

    def _context(self, stage: int) -> StageContext:
        return StageContext(
            stage=stage,
            model=self.model,
            builder=self.builder,
            cells=self.data.cells,
            batch_size=self.config.train.batch_size,
            mask_fraction=self.config.train.mask_fraction,
            device=self.device,
            task_loss=self.task_loss,
        )

    def _epochs(self, stage: int) -> int:
        train = self.config.train
        if stage > 0:
            return train.epochs_per_stage
        if train.base_epochs is None:
            return 0 if self.imported is not None else train.epochs_per_stage
        return train.base_epochs

    def train_stage(self, stage: int) -> StageRecord:
        """Run stage ``stage`` from the current weights; deterministic given (seed, stage)."""
        train = self.config.train
        torch.manual_seed(derive_seed(self.seed, stage, 1))
        rng = np.random.default_rng([self.seed, stage])
        augment_rng = np.random.default_rng([self.seed, stage, 4])
        ctx = self._context(stage)
        if len(ctx.cells_of_stage(stage)) == 0:
            raise GilError(
                f"stage {stage} has no training cells; change split fractions and rerun `gil split`"
            )
        self.strategy.before_stage(ctx)
        if self.config.model.vocabulary == "growing":
            generator = torch.Generator().manual_seed(derive_seed(self.seed, stage, 2))
            self.model.grow_vocabulary(self.vocab.size_through(stage), generator)
            self.model.to(self.device)
        start_rows = self.model.gene_embedding.weight.detach().clone()
        optimizer = stage_optimizer(self.model, train)
        n_epochs = self._epochs(stage)
        record = StageRecord(stage=stage)
        started, n_cells = time.perf_counter(), 0
        for epoch in range(n_epochs):
            self.model.train()
            batches = self.strategy.epoch_batches(ctx, rng)
            stage_steps = n_epochs * len(batches)  # every epoch of a stage has as many batches
            if train.max_steps_per_stage is not None:
                stage_steps = min(stage_steps, train.max_steps_per_stage)
                batches = batches[: stage_steps - record.optimizer_steps]
            # Summed on the device in float64 (same numbers as Python floats): reading a value
            # every step would wait for the GPU every step.
            sums: dict[str, torch.Tensor] = {}
            n_steps = 0
            bar = tqdm(
                batches,
                desc=f"{self.strategy_name or 'base'} seed {self.seed} stage {stage} epoch {epoch + 1}",
                disable=None if self.progress else True,
                leave=False,
                unit="batch",
                mininterval=1.0,
            )
            for rows in bar:
                batch = self.builder.training_batch(rows, rng, train.mask_fraction)
                batch = self.strategy.augment_batch(ctx, batch, augment_rng)
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                batch = batch.to(self.device, non_blocking=True)
                with autocast(self.device):
                    output = ctx.forward(batch)
                    task = self.task_loss(batch, output)
                    terms = self.strategy.loss_terms(ctx, batch, output)
                loss = task + sum(terms.values(), torch.zeros((), device=self.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                step = record.optimizer_steps
                rate = train.lr * lr_factor(step, train.warmup_steps, stage_steps, train.lr_schedule)
                for group in optimizer.param_groups:
                    group["lr"] = rate * group["lr_scale"]
                optimizer.step()
                n_cells += batch.n_cells
                record.optimizer_steps += 1
                for name, value in {"loss": loss, "task_loss": task, **terms}.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().double()
                n_steps += 1
                if not bar.disable and n_steps % 20 == 0:
                    bar.set_postfix(loss=f"{float(sums['loss']) / n_steps:.4f}", refresh=False)
            epoch_means = {name: float(total) / max(len(batches), 1) for name, total in sums.items()}
            record.epochs.append(epoch_means)
            self.tracker.log_metrics(epoch_means, step=epoch)
            if train.max_steps_per_stage is not None and record.optimizer_steps >= stage_steps:
                break  # the cap is reached: the stage's last epoch was cut short
        record.seconds = time.perf_counter() - started
        record.cells_per_second = n_cells / max(record.seconds, 1e-9)
        record.cells_processed = n_cells
        record.embedding_cosine = mean_row_cosine(
            start_rows, self.model.gene_embedding.weight.detach(), self.vocab.set_of_token(), stage + 1
        )
        self._finish_stage(ctx)
        return record

    def _finish_stage(self, ctx: StageContext) -> None:
        """The strategy's end-of-stage work, under an RNG seeded from (seed, stage) alone."""
        torch.manual_seed(derive_seed(self.seed, ctx.stage, 3))
        self.strategy.after_stage(ctx)

    def import_base(self) -> StageRecord:
        """Take stage 0 from the shared base run instead of training it (same result, less work)."""
        assert self.base_dir is not None
        expected = run_fingerprint(self.base_config, None, self.seed, self.vocab, self.split)
        payload = load_checkpoint(stage_path(self.base_dir / f"seed_{self.seed}", 0), expected)
        self.model.load_state_dict(payload["model"])
        ctx = self._context(0)
        self.strategy.before_stage(ctx)
        for epoch, epoch_means in enumerate(payload["epochs"]):
            self.tracker.log_metrics(epoch_means, step=epoch)
        self._finish_stage(ctx)
        return record_of(payload)

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, stage: int, record: StageRecord) -> Path:
        path = stage_path(self.run_dir, stage)
        save_checkpoint(
            path,
            {
                "fingerprint": self.fingerprint,
                "strategy": self.strategy_name,
                "seed": self.seed,
                "stage": stage,
                "model_sizes": self.config.model.resolved(),
                "n_tokens": self.model.n_tokens,
                "vocabulary": self.vocab.genes_through(stage),
                "model": self.model.state_dict(),
                "strategy_state": self.strategy.state_dict(),
                "epochs": record.epochs,
                "cells_per_second": record.cells_per_second,
                "seconds": record.seconds,
                "optimizer_steps": record.optimizer_steps,
                "cells_processed": record.cells_processed,
                "embedding_cosine": record.embedding_cosine,
            },
        )
        return path

    def restore(self, stage: int) -> dict:
        """Load the checkpoint of ``stage`` into the model and the strategy; return its payload."""
        payload = load_checkpoint(stage_path(self.run_dir, stage), self.fingerprint)
        self.model.grow_vocabulary(int(payload["n_tokens"]))
        self.model.load_state_dict(payload["model"])
        self.model.to(self.device)
        self.strategy.load_state_dict(payload["strategy_state"])
        return payload

    # -- the whole run ---------------------------------------------------------------------

    def run(
        self, fresh: bool = False, on_stage_end: Callable[[int, GeneTransformer], None] | None = None
    ) -> list[StageRecord]:
        """Train every stage not yet checkpointed; resume after the last complete checkpoint.

        ``on_stage_end(stage, model)`` is called after each stage's checkpoint is written (a sweep
        reports intermediate results to its scheduler there).
        """
        if fresh:
            for stage in completed_stages(self.run_dir):
                stage_path(self.run_dir, stage).unlink()
        done = completed_stages(self.run_dir)
        last = 0 if self.strategy_name is None else self.split.n_stages
        start = done[-1] + 1 if done else 0
        if done:
            self.restore(done[-1])
        records = []
        for stage in range(start, last + 1):
            self.tracker.begin_stage(stage)
            imported = stage == 0 and self.base_dir is not None
            record = self.import_base() if imported else self.train_stage(stage)
            self.save(stage, record)
            self._log_stage_end(record)
            records.append(record)
            if on_stage_end is not None:
                on_stage_end(stage, self.model)
        return records

    def _log_stage_end(self, record: StageRecord) -> None:
        cosines = zip(self.split.set_names, record.embedding_cosine, strict=False)
        self.tracker.log_metrics(
            {
                "cells_per_second": record.cells_per_second,
                "stage_seconds": record.seconds,
                "optimizer_steps": record.optimizer_steps,
                "cells_processed": record.cells_processed,
                **{f"embedding_cosine_{name}": value for name, value in cosines},
            }
        )
        self.tracker.log_stage_model(record.stage, self.model, self.vocab.genes_through(record.stage))
        self.tracker.end_stage()

    def log_trained_stages(self, first: int) -> list[StageRecord]:
        """Record the stages from ``first`` on that another process or machine trained, from their
        checkpoints, as :meth:`run` would have; return their records.

        From the checkpoints, not from what the worker returned: a Ray task retried after its
        worker died resumes after the stages its first attempt finished, and returns only its own.
        """
        records = []
        for stage in [stage for stage in completed_stages(self.run_dir) if stage >= first]:
            self.tracker.begin_stage(stage)
            record = record_of(self.restore(stage))
            for epoch, epoch_means in enumerate(record.epochs):
                self.tracker.log_metrics(epoch_means, step=epoch)
            self._log_stage_end(record)
            records.append(record)
        return records


def record_of(payload: dict) -> StageRecord:
    """The :class:`StageRecord` saved in a checkpoint payload."""
    return StageRecord(
        stage=int(payload["stage"]),
        epochs=list(payload["epochs"]),
        cells_per_second=float(payload["cells_per_second"]),
        seconds=float(payload["seconds"]),
        optimizer_steps=int(payload["optimizer_steps"]),
        cells_processed=int(payload["cells_processed"]),
        embedding_cosine=[float(value) for value in payload["embedding_cosine"]],
    )


def load_stage_model(checkpoint: dict, device: torch.device | str = "cpu") -> GeneTransformer:
    """Rebuild the model saved in a checkpoint payload (see :func:`gil.train.checkpoint.load_checkpoint`)."""
    model = GeneTransformer.from_sizes(int(checkpoint["n_tokens"]), checkpoint["model_sizes"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def train_strategy(
    config: Config,
    strategy_name: str,
    data: ProcessedData,
    split: Split,
    checkpoints: Path,
    seeds: list[int] | None = None,
    tracker: Tracker | None = None,
    tags: dict[str, str] | None = None,
    fresh: bool = False,
    progress: bool = True,
    base_dir: Path | None = None,
    runner: Runner | None = None,
) -> dict[int, list[StageRecord]]:
    """Train ``strategy_name`` for every seed into ``checkpoints/seed_<seed>/stage_<k>.pt``.

    One strategy of :func:`train_strategies` (see there).
    """
    grid = train_strategies(
        config,
        {strategy_name: checkpoints},
        data,
        split,
        seeds=seeds,
        tracker=tracker,
        tags=tags,
        fresh=fresh,
        progress=progress,
        base_dir=base_dir,
        runner=runner,
    )
    return grid[strategy_name]


def train_strategies(
    config: Config,
    checkpoints: dict[str, Path],
    data: ProcessedData,
    split: Split,
    seeds: list[int] | None = None,
    tracker: Tracker | None = None,
    tags: dict[str, str] | None = None,
    fresh: bool = False,
    progress: bool = True,
    base_dir: Path | None = None,
    runner: Runner | None = None,
) -> dict[str, dict[int, list[StageRecord]]]:
    """Train each strategy (the keys of ``checkpoints``, each with its checkpoint directory) for
    every seed: the grid of (strategy, seed) runs.

    Each run is one tracked parent run: opened fresh, or reopened when resuming from checkpoints;
    an exception marks it FAILED before it propagates. Without a ``runner`` and with
    ``compute.jobs`` 1 the runs train here one after another, logging as they go. Otherwise every
    run is a job of the runner (``compute.jobs`` worker processes, or Ray tasks on a cluster), all
    submitted at once, and each is recorded once it has finished, from its checkpoints: one
    process writes to the tracker, and a run that fails records nothing (the others are recorded
    before its error is raised).
    """
    tracker = tracker or NullTracker()
    use_threads(config)
    tags = {
        **(tags or {}),
        **{f"gil.init.{key}": value for key, value in pretrained_identity(config).items()},
    }
    seeds = seeds if seeds is not None else config.train.seeds
    here = runner is None and (config.compute.jobs == 1 or len(checkpoints) * len(seeds) == 1)
    trainers = {
        (name, seed): StageTrainer(
            on_device(config, _device_here(config) if here else "cpu"),  # else workers train
            name,
            seed,
            data,
            split,
            directory / f"seed_{seed}",
            tracker=tracker,
            progress=progress,
            base_dir=base_dir,
        )
        for name, directory in checkpoints.items()
        for seed in seeds
    }
    resuming = {key: _check_resumable(trainer, fresh) for key, trainer in trainers.items()}

    def record(name: str, seed: int, train: Callable[[], list[StageRecord]]) -> list[StageRecord]:
        tracker.begin_run(name, seed, run_params(config, name), tags or {}, resume=resuming[name, seed])
        tracker.log_dataset(
            config.dataset.name,
            config.dataset.path,
            (tags or {}).get("dvc.data.md5", "untracked"),
            data.n_cells,
            data.n_genes,
        )
        try:
            records = train()
        except BaseException:
            tracker.end_run("FAILED")
            raise
        tracker.end_run("FINISHED")
        return records

    results: dict[str, dict[int, list[StageRecord]]] = {name: {} for name in checkpoints}
    if here:
        for (name, seed), trainer in trainers.items():
            results[name][seed] = record(name, seed, partial(trainer.run, fresh=fresh))
        return results
    # Stages checkpointed before this command were recorded by the run that trained them.
    first = {key: _resume_stage(trainer, fresh) for key, trainer in trainers.items()}
    jobs = [
        job
        for name, directory in checkpoints.items()
        for job in seed_jobs(
            config,
            seeds,
            data,
            strategy_name=name,
            split=split,
            checkpoints=directory,
            base_dir=base_dir,
            fresh=fresh,
        )
    ]
    label = ", ".join(checkpoints)
    for job, _ in (runner or run_seeds_in_processes)(_train_seed, jobs, label, progress):
        key = (job.strategy_name, job.seed)
        results[job.strategy_name][job.seed] = record(
            *key, partial(trainers[key].log_trained_stages, first[key])
        )
    return {name: dict(sorted(runs.items())) for name, runs in results.items()}


def _device_here(config: Config) -> str | None:
    """The device of runs trained in this process: the single ``compute.devices`` entry, if any."""
    return config.compute.devices[0] if config.compute.devices else None


def _check_resumable(trainer: StageTrainer, fresh: bool) -> bool:
    """Whether the run resumes from checkpoints; a stale or corrupt one is refused before any work."""
    done = completed_stages(trainer.run_dir)
    if done and not fresh:
        load_checkpoint(stage_path(trainer.run_dir, done[-1]), trainer.fingerprint)
        return True
    return False


def _resume_stage(trainer: StageTrainer, fresh: bool) -> int:
    """The first stage the run will train (after its last checkpoint, unless ``fresh``)."""
    done = [] if fresh else completed_stages(trainer.run_dir)
    return done[-1] + 1 if done else 0


def _train_seed(job: SeedJob) -> list[StageRecord]:
    """Worker entry point: train one seed's remaining stages (no tracker); return its records."""
    config = job.worker_config()
    use_threads(config)
    trainer = StageTrainer(
        config,
        job.strategy_name,
        job.seed,
        job.load_data(),
        job.split,
        job.run_dir,
        progress=False,
        base_dir=job.base_dir,
    )
    return trainer.run(fresh=job.fresh)


def train_base(
    config: Config,
    data: ProcessedData,
    split: Split,
    out: Path,
    seeds: list[int] | None = None,
    fresh: bool = False,
    progress: bool = True,
    runner: Runner | None = None,
) -> dict[int, list[StageRecord]]:
    """Train the strategy-independent base stage once per seed into ``out/seed_<seed>/stage_0.pt``.

    Not tracked: every strategy's run records the base stage it imports.
    """
    use_threads(config)
    seeds = seeds if seeds is not None else config.train.seeds
    here = runner is None and (config.compute.jobs == 1 or len(seeds) == 1)
    trainers = {
        seed: StageTrainer(
            on_device(config, _device_here(config) if here else "cpu"),
            None,
            seed,
            data,
            split,
            out / f"seed_{seed}",
            progress=progress,
        )
        for seed in seeds
    }
    if here:
        return {seed: trainer.run(fresh=fresh) for seed, trainer in trainers.items()}
    first = {seed: _resume_stage(trainer, fresh) for seed, trainer in trainers.items()}
    jobs = seed_jobs(
        config, list(trainers), data, strategy_name=None, split=split, checkpoints=out, fresh=fresh
    )
    results = {
        job.seed: trainers[job.seed].log_trained_stages(first[job.seed])
        for job, _ in (runner or run_seeds_in_processes)(_train_seed, jobs, "base", progress)
    }
    return dict(sorted(results.items()))
