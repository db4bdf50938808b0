"""Typed configuration: one model per ``params.yaml`` section, validated before any work starts.

Why: a typo in ``params.yaml`` must fail in the first second with a message naming the key, not
an hour into training. Every section forbids unknown keys. Strategy entries are validated against
the parameter model that each strategy declares (see :mod:`gil.strategies`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gil.errors import GilError

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SomaConfig(Section):
    """A TileDB-SOMA experiment as the dataset (``dataset.soma``): which cells and which matrix to read."""

    measurement: str = Field("RNA", description="the experiment's measurement (ms) holding the counts")
    layer: str = Field("raw", description="the measurement's X layer of raw counts")
    obs_filter: str | None = Field(
        None,
        description="obs value filter selecting the cells, e.g. \"tissue_general == 'brain' and "
        'is_primary_data == True" (null: all cells)',
    )
    census_version: str | None = Field(
        None,
        description="a CELLxGENE Census release (e.g. '2025-01-30'): read the Census (network, needs "
        "cellxgene-census) instead of dataset.path",
    )
    organism: str = Field("homo_sapiens", description="census_version only: the Census experiment read")


class DatasetConfig(Section):
    """Where the raw data is (an ``.h5ad`` file or a SOMA experiment) and how to read it."""

    name: str = Field("dataset", description="the dataset's name; the MLflow experiment is gil-<name>")
    # A string, not a Path: a SOMA URI such as s3://bucket/experiment must keep its '//'.
    path: str = Field(
        description="the raw .h5ad file (raw counts in X or in counts_layer), or with dataset.soma the "
        "SOMA experiment's URI (a local directory or any URI tiledbsoma opens)"
    )
    counts_layer: str | None = Field(
        None, description="layer holding the raw counts (null: counts are in X); .h5ad only"
    )
    gene_column: str | None = Field(
        None,
        description="var column of gene symbols (null: gene names are var_names; a SOMA experiment has "
        "none, so name its column, e.g. CELLxGENE Census's feature_name)",
    )
    label_columns: list[str] = Field(
        default_factory=list,
        description="obs columns kept as cell labels, for tasks, probes and replay balancing",
    )
    soma: SomaConfig | None = Field(
        None, description="read a TileDB-SOMA experiment (or the CELLxGENE Census) instead of an .h5ad"
    )

    @field_validator("path", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @model_validator(mode="after")
    def _counts_layer_is_h5ad_only(self) -> DatasetConfig:
        if self.soma is not None and self.counts_layer is not None:
            raise ValueError(
                "counts_layer is an .h5ad setting; with dataset.soma name the X layer of raw counts in "
                "dataset.soma.layer and set counts_layer: null"
            )
        return self


class PrepareConfig(Section):
    """Quality control and transformation applied by ``gil prepare``."""

    min_genes_per_cell: int = Field(200, ge=0, description="cells with fewer expressed genes are dropped")
    min_cells_per_gene: int = Field(3, ge=0, description="genes expressed in fewer cells are dropped")
    normalize_total: float | None = Field(
        None,
        gt=0,
        description="scale each cell's counts to this total before log1p (null: plain log1p, as the paper)",
    )
    chunk_size: int = Field(2000, ge=1, description="cells read and written at a time (memory, not results)")
    values: Literal["auto", "log1p", "binned"] = Field(
        "auto",
        description="the value representation: log1p, or scGPT's per-cell bins 1..n_bins-1 of the non-zero "
        "values; auto: what model.init's checkpoint was trained on (args.json), else log1p",
    )
    n_bins: int | None = Field(None, ge=3, description="bins of 'binned' (auto: the checkpoint's n_bins)")


class TaskConfig(Section):
    """A downstream task: a named subset of cells and the label to predict on it."""

    name: str = Field(description="the task's name (probe and report labels)")
    label: str = Field(description="obs column the probe predicts (one of dataset.label_columns)")
    column: str | None = Field(None, description="obs column that selects the task's cells (with values)")
    values: list[str] | None = Field(None, description="values of column whose cells belong to the task")

    @model_validator(mode="after")
    def _column_and_values_together(self) -> TaskConfig:
        if (self.column is None) != (self.values is None):
            raise ValueError("give both 'column' and 'values' (a subset of cells) or neither (all cells)")
        return self


class GeneSplitConfig(Section):
    """How genes are partitioned into base genes ``B`` and stage genes ``T1..Tn``."""

    method: Literal["random", "importance", "file", "new_to_model"] = Field(
        "importance",
        description="importance: task k's most expressed genes are T_k; random: n_stages random sets; "
        "file: lists in 'file'; new_to_model: B is the genes model.init's vocabulary knows",
    )
    assign: Literal["importance", "random", "file"] = Field(
        "importance",
        description="new_to_model: how the genes new to the model are spread over the stages (the rules "
        "of the other methods, applied to the new genes only)",
    )
    n_stages: int = Field(2, ge=1, description="number of incremental stages for method 'random'")
    stage_fraction: float = Field(0.05, gt=0, lt=1, description="fraction of genes per stage ('random')")
    top_n: int = Field(200, ge=1, description="genes per task ('importance')")
    score: Literal["expression", "differential"] = Field(
        "expression",
        description="how 'importance' ranks a task's genes: summed expression (paper) or differential",
    )
    file: Path | None = Field(
        None,
        description="method 'file': YAML {T1: [genes], ...} or CSV/TSV with columns gene, stage (keep it in "
        "gene_lists/)",
    )

    @model_validator(mode="after")
    def _file_given(self) -> GeneSplitConfig:
        uses_file = self.method == "file" or (self.method == "new_to_model" and self.assign == "file")
        if uses_file and self.file is None:
            raise ValueError("method 'file' needs 'file': a YAML/CSV listing genes per stage")
        return self


class SplitConfig(Section):
    """Gene sets, cell stages and tasks, all drawn from ``seed``."""

    seed: int = Field(
        0, description="fixes the gene sets, the held-out cells, each cell's stage and the tasks' cells"
    )
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="fraction of cells held out as test cells: what the benchmark reports on"
    )
    validation_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="fraction of cells held out as validation cells: what sweeps select on (never reported)",
    )
    base_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="fraction of the training cells in the base stage 0 (the rest share stages 1..n)",
    )
    genes: GeneSplitConfig = Field(GeneSplitConfig(), description="how the genes are split into B, T1..Tn")
    tasks: list[TaskConfig] = Field(
        default_factory=list,
        description="downstream tasks: task k defines the genes of stage k (importance) and a probe",
    )

    @model_validator(mode="after")
    def _some_cells_left_to_train(self) -> SplitConfig:
        if self.eval_fraction + self.validation_fraction >= 1:
            raise ValueError(
                f"eval_fraction {self.eval_fraction} + validation_fraction {self.validation_fraction} "
                "leave no training cells; keep their sum below 1"
            )
        return self


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model (for GPUs).
    "paper": {
        "n_layers": 6,
        "d_model": 256,
        "n_heads": 8,
        "d_ff": 256,
        "dropout": 0.15,
        "max_seq": 512,
        "gene_init_std": 0.02,
    },
    # The configuration of the throughput benchmark (issue: performance).
    "bench": {
        "n_layers": 4,
        "d_model": 128,
        "n_heads": 4,
        "d_ff": 128,
        "dropout": 0.15,
        "max_seq": 256,
        "gene_init_std": 0.02,
    },
    # Small enough that the default pipeline finishes in minutes on 2 CPU cores. No dropout: on the
    # CPU, drawing dropout masks took about a quarter of a training step (torch.profiler).
    "cpu": {
        "n_layers": 2,
        "d_model": 64,
        "n_heads": 4,
        "d_ff": 128,
        "dropout": 0.0,
        "max_seq": 128,
        "gene_init_std": 0.02,
    },
    # For tests.
    "tiny": {
        "n_layers": 2,
        "d_model": 16,
        "n_heads": 2,
        "d_ff": 32,
        "dropout": 0.0,
        "max_seq": 32,
        "gene_init_std": 0.02,
    },
}


class ModelInitConfig(Section):
    """Where the base stage's weights come from: random initialisation, or a pretrained scGPT model."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)
    source: Literal["random", "scgpt"] = Field(
        "random", alias="from", description="random initialisation, or a pretrained scGPT model as stage 0"
    )
    path: Path | None = Field(
        None, description="the scGPT model directory (args.json, vocab.json, best_model.pt)"
    )

    @model_validator(mode="after")
    def _path_given(self) -> ModelInitConfig:
        if self.source == "scgpt" and self.path is None:
            raise ValueError(
                "from: scgpt needs 'path': the directory holding args.json, vocab.json, best_model.pt"
            )
        return self

    @property
    def pretrained(self) -> Path | None:
        """The scGPT directory, or None for random initialisation."""
        return self.path if self.source == "scgpt" else None


# Model keys an scGPT checkpoint fixes (gil.scgpt_dir.model_sizes); params.yaml may not override them.
CHECKPOINT_KEYS = ("n_layers", "d_model", "n_heads", "d_ff", "activation", "value_clamp")


class ModelConfig(Section):
    """Transformer sizes: a preset, with any field overridable; or the sizes of ``init``'s checkpoint."""

    init: ModelInitConfig = Field(ModelInitConfig(), description="where stage 0's weights come from")
    preset: Literal["paper", "bench", "cpu", "tiny"] = Field(
        "cpu", description="model sizes: paper (GPU), bench, cpu (minutes on 2 cores), tiny (tests)"
    )
    n_layers: int | None = Field(None, ge=1, description="transformer layers (null: the preset's)")
    d_model: int | None = Field(None, ge=2, description="embedding width (null: the preset's)")
    n_heads: int | None = Field(
        None, ge=1, description="attention heads; must divide d_model (null: the preset's)"
    )
    d_ff: int | None = Field(None, ge=1, description="feed-forward width (null: the preset's)")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="dropout rate (null: the preset's or the checkpoint's)"
    )
    max_seq: int | None = Field(
        None, ge=2, description="genes per cell in a batch; cells with more are sampled (null: the preset's)"
    )
    gene_init_std: float | None = Field(None, gt=0, description="std of every gene embedding row at creation")
    activation: Literal["gelu", "relu"] | None = Field(None, description="feed-forward non-linearity")
    value_clamp: float | None = Field(None, gt=0, description="input values are clamped at it (null: none)")
    vocabulary: Literal["growing", "preallocated"] = Field(
        "growing",
        description="growing: the embedding table grows with each stage's genes (true token-incremental); "
        "preallocated: every gene's row exists from the start (the paper's code)",
    )

    def resolved(self) -> dict[str, Any]:
        """The preset's sizes with this section's overrides applied (or the checkpoint's sizes)."""
        sizes = {**MODEL_PRESETS[self.preset], "activation": "gelu", "value_clamp": None}
        for key in sizes:
            value = getattr(self, key)
            if value is not None:
                sizes[key] = value
        if self.init.pretrained is not None:
            sizes.update(self._checkpoint_sizes(self.init.pretrained))
        if sizes["d_model"] % sizes["n_heads"]:
            raise GilError(
                f"model: d_model={sizes['d_model']} is not divisible by n_heads={sizes['n_heads']}; "
                "change one of them in params.yaml"
            )
        return sizes

    def _checkpoint_sizes(self, directory: Path) -> dict[str, Any]:
        from gil.scgpt_dir import model_sizes

        fixed = model_sizes(directory)
        overridden = [key for key in CHECKPOINT_KEYS if getattr(self, key) is not None]
        if overridden:
            raise GilError(
                f"model.{overridden[0]}: set by the checkpoint in model.init.path "
                f"({overridden[0]}={fixed[overridden[0]]}); remove it from params.yaml"
            )
        if self.dropout is not None:
            fixed.pop("dropout", None)
        return fixed


class TrainConfig(Section):
    """Stage-wise optimisation; ``seeds`` drive initialisation and training (not the data split)."""

    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="training runs over the one split (initialisation, batch order, gene sampling, masks); "
        "every metric is a mean ± std over them",
    )
    epochs_per_stage: int = Field(10, ge=1, description="epochs of every incremental stage")
    base_epochs: int | None = Field(
        None,
        ge=0,
        description="epochs of stage 0 (null: epochs_per_stage; with model.init from scgpt, null means 0: "
        "stage 0 is the pretrained model as it is, and a positive value adapts it on the base-stage cells)",
    )
    batch_size: int = Field(32, ge=1, description="cells per optimizer step")
    max_steps_per_stage: int | None = Field(
        None,
        ge=1,
        description="stop a stage after this many optimizer steps (null: whole epochs); at CELLxGENE scale "
        "one epoch of 10^6 cells takes hours on a CPU",
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (a fresh optimizer every stage)")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps at the start of every stage")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="after warm-up: constant, or a cosine decay to zero over each stage's steps (each stage "
        "anneals)",
    )
    embedding_lr_scale: float = Field(
        1.0,
        gt=0,
        description="learning rate of the gene embedding table, as a multiple of lr (its rows learn only "
        "from "
        "the batches holding their gene)",
    )
    mask_fraction: float = Field(0.4, gt=0, lt=1, description="fraction of a cell's gene positions masked")
    mvc_weight: float = Field(1.0, ge=0, description="weight of the MVC head's loss next to the MLM head's")
    mvc_positions: Literal["masked", "all"] = Field(
        "masked",
        description="positions the MVC head (a gene's value from the <cls> embedding) is scored on: the "
        "masked "
        "ones (paper, scGPT) or every gene position, so <cls> must encode the whole cell's profile",
    )
    gene_sampling: Literal["uniform", "log1p", "shifted"] = Field(
        "log1p",
        description="how a cell with more than max_seq genes is sampled: a fraction (weighted_fraction) of "
        "the "
        "cells with these weights, the others uniformly",
    )
    weighted_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="fraction of the cells whose genes are sampled with gene_sampling's weights",
    )
    device: str = Field(
        "auto",
        description="auto, cpu, cuda or cuda:<index>; a Ray task or a compute.devices worker gets its own "
        "device",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads of each training process (null: torch's default, all cores); a CPU run's "
        "exact numbers depend on it: threads split float sums, so the rounding changes with them",
    )

    @field_validator("device")
    @classmethod
    def _device_is_a_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
            raise ValueError("not a device; use auto, cpu, cuda or cuda:<index>")
        return value


class ComputeConfig(Section):
    """How the work is spread over processes, devices and machines.

    Results do not depend on it (tested: the same checkpoints and metrics with every backend), so
    DVC does not track it and it is not part of a run's identity.
    """

    jobs: int = Field(
        1,
        ge=1,
        description="seeds trained at once, each in its own process with train.threads threads (on a CPU, "
        "several one-thread processes use the cores better than one process whose threads wait on each "
        "other)",
    )
    devices: list[str] | None = Field(
        None,
        min_length=1,
        description="local backend: devices the worker processes take in turn (seed i on devices[i % len]), "
        "e.g. [cuda:0, cuda:1]; null: every process uses train.device",
    )
    backend: Literal["local", "ray"] = Field(
        "local", description="local: this machine's processes (jobs); ray: one Ray task per (strategy, seed)"
    )
    address: str = Field(
        "local",
        description="ray backend: local (Ray on this machine, 127.0.0.1), auto or HOST:PORT of a running "
        "cluster",
    )
    cpus_per_job: float = Field(1.0, gt=0, description="ray backend: CPUs of each task (fractions allowed)")
    gpus_per_job: float = Field(
        0.0,
        ge=0,
        description="ray backend: GPUs of each task (0.5: two tasks share a GPU; 0 trains on the CPU)",
    )
    max_retries: int = Field(
        2,
        ge=0,
        description="ray backend: retries of a task whose worker or node died (it resumes from its last "
        "finished "
        "stage on the same node, or anywhere when scratch_path is shared by every node)",
    )
    data: Literal["auto", "object_store", "shared_path"] = Field(
        "auto",
        description="ray backend: how tasks get the processed data: object_store (the driver ships the "
        "arrays once per command; nodes need no shared filesystem), shared_path (tasks read them from the "
        "processed directory, which every node must see at the same path), auto (shared_path when the "
        "arrays exceed shared_data_above_gib)",
    )
    shared_data_above_gib: float = Field(
        1.0,
        gt=0,
        description="ray backend, data auto: the size of processed arrays above which tasks read them "
        "from the shared path",
    )
    scratch_path: str | None = Field(
        None,
        description="ray backend: where tasks keep their stage checkpoints until the driver has them (null: "
        "the "
        "node's temporary directory); outputs are always written by the driver",
    )

    @field_validator("address")
    @classmethod
    def _address_is_an_address(cls, value: str) -> str:
        if not re.fullmatch(r"local|auto|[A-Za-z0-9.\-]+:[0-9]+", value):
            raise ValueError("not a Ray address; use local, auto or HOST:PORT (e.g. 10.0.0.5:6379)")
        return value

    @model_validator(mode="after")
    def _devices_are_devices(self) -> ComputeConfig:
        bad = [device for device in self.devices or [] if not re.fullmatch(r"cpu|cuda:[0-9]+", device)]
        if bad:
            raise ValueError(f"devices: {bad} are not devices; use cpu or cuda:<index> (e.g. cuda:1)")
        if self.devices and self.jobs < len(self.devices):
            raise ValueError(
                f"jobs ({self.jobs}) is less than the number of devices ({len(self.devices)}): "
                f"set compute.jobs to at least {len(self.devices)}"
            )
        return self


class ProbeConfig(Section):
    """Linear and kNN probes on frozen ``<cls>`` embeddings, cross-validated over the task's cells."""

    input: Literal["top_expressed", "sampled"] = Field(
        "top_expressed",
        description="probe input: each cell's max_seq most expressed known genes, or a sample of its genes",
    )
    folds: int = Field(5, ge=3, description="cross-validation folds (one tests, the next selects C)")
    c_grid: list[float] = Field(
        default_factory=lambda: [0.01, 0.1, 1.0, 10.0],
        min_length=1,
        description="inverse regularisation strengths C the linear probe chooses from (on validation folds)",
    )
    knn_k: int = Field(10, ge=1, description="neighbours of the kNN probe")
    max_cells: int | None = Field(
        3000,
        ge=10,
        description="cells per task the probes use: a seeded sample (evaluate.seed) of the task's test cells "
        "when it has more, so probe cost stays flat in the dataset size (null: all)",
    )


class EvaluateConfig(Section):
    """Fixed-seed evaluation: the same masks and gene samples for every stage's model."""

    seed: int = Field(
        1234,
        description="fixes the evaluation masks and gene samples (the same for every stage and strategy)",
    )
    max_seq: int | None = Field(None, ge=2, description="defaults to model.max_seq")
    gene_sampling: Literal["uniform", "log1p", "shifted"] = Field(
        "uniform",
        description="which gene positions are scored: log1p-weighted scores where expression varies; uniform "
        "scores mostly a cell's 1-2-count genes",
    )
    repeats: int = Field(2, ge=1, description="evaluation passes with different masks, averaged")
    batch_size: int = Field(64, ge=1, description="cells per evaluation batch (speed, not results)")
    max_cells: int | None = Field(
        10_000,
        ge=1,
        description="held-out cells each row of R is scored on: a seeded sample (evaluate.seed) when there "
        "are more, so evaluation cost stays flat in the dataset size (null: all)",
    )
    probe: ProbeConfig = Field(ProbeConfig(), description="the linear and kNN probes")


class StrategyEntry(Section):
    """One named strategy run: ``kind`` picks the implementation, the rest are its parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str = Field(description="the strategy implementation; its parameters are listed below by kind")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of 'train' for this strategy's runs (stages 1..n when the base stage is "
        "shared), e.g. a tuned learning rate",
    )

    def params(self) -> dict[str, Any]:
        """The strategy parameters (everything but ``kind``)."""
        return dict(self.model_extra or {})


TUNED_SUFFIX = "@tuned"


class TunedConfig(Section):
    """Where the tuned strategies are read from, and which of them the benchmark reports."""

    path: Path | None = Field(
        None,
        description="the tuned params file (written by gil tune): its NAME@tuned entries join 'strategies'",
    )
    rows: list[str] = Field(
        default_factory=list,
        description="strategies whose NAME@tuned row the default pipeline trains and reports beside NAME",
    )


class TrackingConfig(Section):
    """Where runs are recorded; ``uri`` null means ``MLFLOW_TRACKING_URI`` or the local SQLite store."""

    enabled: bool = Field(True, description="false: no MLflow tracking at all")
    uri: str | None = Field(
        None,
        description="tracking server or store (null: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)",
    )
    experiment: str | None = Field(None, description="MLflow experiment (null: gil-<dataset.name>)")
    register_models: bool = Field(
        True, description="register each stage's model in the MLflow model registry"
    )
    on_unreachable: Literal["fail", "disable"] = Field(
        "fail",
        description="an unreachable server fails the command at once, or turns tracking off with a warning",
    )


class SettingConfig(Section):
    """One setting of a suite: overrides of ``dataset``, ``prepare`` and ``split`` (see :mod:`gil.settings`).

    The overrides are kept as raw mappings here and validated once merged into the whole config,
    so that a typo names its full key (``split.genes.methd``) like any other.
    """

    desc: str = Field("", description="what the setting varies (shown in the suite's report)")
    dataset: dict[str, Any] = Field(
        default_factory=dict, description="overrides of 'dataset' (not its path: a suite runs on one dataset)"
    )
    prepare: dict[str, Any] = Field(default_factory=dict, description="overrides of 'prepare'")
    split: dict[str, Any] = Field(
        default_factory=dict, description="overrides of 'split' (mappings merged key by key, lists replaced)"
    )

    @model_validator(mode="after")
    def _one_dataset(self) -> SettingConfig:
        if "path" in self.dataset:
            raise ValueError(
                "a suite runs on one dataset (dataset.path, a dependency of its pipeline); "
                "remove dataset.path here and write a second params file for another dataset"
            )
        return self


class SuiteConfig(Section):
    """What every setting of the suite trains: its strategies and its training overrides."""

    strategies: list[str] = Field(default_factory=list, description="default: the benchmark list")
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of 'train' for the suite")
    experiment: str | None = Field(None, description="MLflow experiment (default: <benchmark's>-suite)")


class Config(Section):
    """The whole ``params.yaml``."""

    dataset: DatasetConfig = Field(description="the raw data")
    prepare: PrepareConfig = Field(PrepareConfig(), description="quality control and value transformation")
    split: SplitConfig = Field(SplitConfig(), description="gene sets, cell stages and tasks")
    model: ModelConfig = Field(ModelConfig(), description="the transformer")
    train: TrainConfig = Field(TrainConfig(), description="stage-wise training")
    compute: ComputeConfig = Field(
        ComputeConfig(), description="processes, devices and machines (results do not depend on it)"
    )
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="the fixed evaluation and the probes")
    strategies: dict[str, StrategyEntry] = Field(
        default_factory=dict, description="named strategy runs: name: {kind: <strategy>, ...its parameters}"
    )
    benchmark: list[str] = Field(
        default_factory=list,
        description="the entries of 'strategies' the default pipeline trains and reports",
    )
    tuned: TunedConfig = Field(TunedConfig(), description="tuned strategies (gil tune) and their rows")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow tracking")
    sweep: dict[str, Any] = Field(
        default_factory=dict, description="hyperparameter sweeps (gil sweep), validated when a sweep starts"
    )
    settings: dict[str, SettingConfig] = Field(
        default_factory=dict,
        description="the suite's settings: name: {desc, dataset/prepare/split overrides}",
    )
    suite: SuiteConfig = Field(SuiteConfig(), description="what every setting of the suite trains")

    @model_validator(mode="after")
    def _reference_is_not_a_strategy_name(self) -> Config:
        if "reference" in self.strategies:
            raise ValueError(
                "strategies: 'reference' is reserved (metrics/reference.json holds the reference points); "
                "rename that entry"
            )
        return self

    @model_validator(mode="after")
    def _pretrained_options_have_a_checkpoint(self) -> Config:
        pretrained = self.model.init.pretrained is not None
        if self.split.genes.method == "new_to_model" and not pretrained:
            raise ValueError(
                "split.genes.method 'new_to_model' needs a pretrained model: set model.init "
                "{from: scgpt, path: DIR}, or choose another method"
            )
        if self.train.base_epochs == 0 and not pretrained:
            raise ValueError("train.base_epochs 0 leaves a randomly initialised model untrained; raise it")
        return self

    @model_validator(mode="after")
    def _benchmark_names_exist(self) -> Config:
        for key, names in (("benchmark", self.benchmark), ("suite.strategies", self.suite.strategies)):
            unknown = [name for name in names if name not in self.strategies]
            if unknown:
                raise ValueError(
                    f"{key}: {unknown} are not entries of 'strategies'; add them there or remove them"
                )
        return self

    @model_validator(mode="after")
    def _strategy_train_overrides_are_valid(self) -> Config:
        for name in self.strategies:
            try:
                self.for_strategy(name)
            except ValidationError as error:
                first = error.errors()[0]
                key = ".".join(str(part) for part in first["loc"])
                raise ValueError(
                    f"strategies.{name}.train.{key}: {first['msg']} (the overrides take the keys of 'train')"
                ) from None
        return self

    @property
    def report_rows(self) -> list[str]:
        """The rows the benchmark reports: every ``benchmark`` strategy, then the tuned rows."""
        return self.benchmark + [f"{name}{TUNED_SUFFIX}" for name in self.tuned.rows]

    def for_strategy(self, name: str) -> Config:
        """The config ``name``'s runs train with: ``train`` updated by the entry's own overrides.

        Why per entry: a tuned learning rate belongs to one strategy's row, while the shared base
        stage and every other strategy keep the global ``train`` section.
        """
        overrides = self.strategies[name].train
        if not overrides:
            return self
        train = TrainConfig.model_validate({**self.train.model_dump(), **overrides})
        return self.model_copy(update={"train": train})

    def experiment_name(self) -> str:
        """The MLflow experiment of this config's runs: ``tracking.experiment`` or ``gil-<dataset>``."""
        return self.tracking.experiment or f"gil-{self.dataset.name}"

    def suite_experiment_name(self) -> str:
        """The MLflow experiment of the suite's runs (see :func:`gil.settings.suite_experiment`)."""
        from gil.settings import suite_experiment

        return suite_experiment(self.model_dump(mode="json"))


def _format_validation_error(error: ValidationError, source: Path) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key; check its spelling against the documented params"
    elif first["type"] == "missing":
        message = "required key is missing; add it"
    got = first.get("input")
    shown = (
        "" if first["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    )
    return f"{source}: {key}: {message}{shown}" if key else f"{source}: {message}"


def _validated(raw: dict[str, Any], source: Path | str) -> Config:
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise GilError(_format_validation_error(error, Path(source))) from None
    from gil.strategies import validate_strategy_entries

    validate_strategy_entries(config.strategies, Path(source))
    if config.model.init.pretrained is not None:
        from gil.scgpt_dir import check_directory

        check_directory(config.model.init.pretrained)  # an unusable checkpoint fails before any work
        config.model.resolved()
    return config


def config_from_dict(raw: Any, source: Path = DEFAULT_PARAMS, setting: str | None = None) -> Config:
    """Validate a parsed params mapping; raise :class:`GilError` naming the first bad key.

    Every setting of the suite is validated too (merged into the whole config), so that a bad
    override fails every command, not only the suite's. With ``setting``, the config of that
    setting is returned (:func:`gil.settings.resolve_setting`).
    """
    if not isinstance(raw, dict):
        raise GilError(f"{source}: expected a mapping of sections at the top level")
    raw = with_tuned_strategies(raw, source)
    config = _validated(raw, source)
    from gil.settings import resolve_setting

    resolved = {
        name: _validated(resolve_setting(raw, name), f"{source} (setting {name})") for name in config.settings
    }
    if setting is None:
        return config
    if setting not in resolved:
        known = ", ".join(resolved) or "none: add a 'settings' section"
        raise GilError(
            f"unknown setting {setting!r}; choose one of the entries of 'settings' in {source} ({known})"
        )
    return resolved[setting]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise GilError(f"{path}: not valid YAML{where}; fix the syntax") from None


def with_tuned_strategies(raw: dict[str, Any], source: Path) -> dict[str, Any]:
    """``raw`` with the ``NAME@tuned`` entries of the tuned params file (``tuned.path``) added.

    The file is written by ``gil tune`` and tracked by the sweep pipeline; until it exists there are
    no tuned entries (and ``tuned.rows`` cannot be trained, see :func:`missing_strategy_hint`).
    Entries already in ``raw`` are kept when the file cannot be read: a config re-validated from its
    own dump (a sweep trial in a Ray worker, whose working directory is not the project's) carries
    them already. A params file may not write them: :func:`load_config` refuses that.
    """
    strategies = raw.get("strategies") or {}
    tuned = raw.get("tuned") or {}
    path = Path(tuned["path"]) if isinstance(tuned, dict) and tuned.get("path") else None
    entries: dict[str, Any] = {}
    if path is not None and path.is_file():
        document = _read_yaml(path)
        entries = document.get("strategies") if isinstance(document, dict) else None
        if not isinstance(entries, dict) or not all(str(name).endswith(TUNED_SUFFIX) for name in entries):
            raise GilError(
                f"{path}: expected a 'strategies' mapping of NAME{TUNED_SUFFIX} entries; rewrite it with "
                "`gil tune`"
            )
    return {**raw, "strategies": {**strategies, **entries}} if entries else raw


def _refuse_hand_made_tuned(raw: Any, source: Path) -> None:
    """``@tuned`` names are reserved to the tuned file, so a hand-written entry cannot pass for one."""
    strategies = raw.get("strategies") if isinstance(raw, dict) else None
    reserved = [name for name in strategies or {} if str(name).endswith(TUNED_SUFFIX)]
    if reserved:
        raise GilError(
            f"{source}: strategies {reserved}: names ending in {TUNED_SUFFIX!r} are reserved for the tuned "
            "params file; rename them"
        )


def missing_strategy_hint(config: Config, name: str) -> str:
    """How to fix an unknown strategy name (a tuned row needs `gil tune` first)."""
    if name.endswith(TUNED_SUFFIX):
        where = config.tuned.path or "tuned.path (not set)"
        return (
            f"no tuned values for {name.removesuffix(TUNED_SUFFIX)!r} in {where}; run `gil tune` "
            "(or `make tune`) first"
        )
    return (
        f"unknown strategy {name!r}; choose one of {sorted(config.strategies)} "
        "(the entries of 'strategies' in params.yaml)"
    )


def load_config(path: Path | str = DEFAULT_PARAMS, setting: str | None = None) -> Config:
    """Read and validate ``params.yaml`` (or another file), as the given suite ``setting`` if any."""
    path = Path(path)
    if not path.is_file():
        raise GilError(f"params file {path} not found; pass --params PATH or run from the project root")
    raw = _read_yaml(path)
    _refuse_hand_made_tuned(raw, path)
    return config_from_dict(raw, path, setting)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``a.b.c`` keys (for trackers' flat parameter tables)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_NOT_RUN_IDENTITY = {
    "strategies",
    "benchmark",
    "tracking",
    "sweep",
    "evaluate",
    "compute",
    "settings",
    "suite",
    "tuned",
}


def run_params(config: Config, strategy_name: str) -> dict[str, Any]:
    """The resolved, flattened config that one strategy's runs depend on.

    Other strategies' entries, the benchmark list, tracking, sweep, compute and the suite's
    sections are left out (a setting's overrides are already merged into ``split`` and ``train``),
    so that changing them does not change this strategy's run identity; so are the evaluation
    settings: a re-evaluation reports on the runs that training opened (its settings go to tags,
    see :func:`evaluation_tags`).
    """
    raw = config.for_strategy(strategy_name).model_dump(mode="json", exclude=_NOT_RUN_IDENTITY)
    raw["model"] = {**raw["model"], **config.model.resolved()}
    if config.model.init.pretrained is not None:
        raw["model"]["init"] = {**raw["model"]["init"], **pretrained_params(config.model.init.pretrained)}
    raw["strategy"] = {"name": strategy_name, **config.strategies[strategy_name].model_dump(mode="json")}
    return flatten(raw)


def pretrained_params(directory: Path) -> dict[str, Any]:
    """What identifies a pretrained start: the checkpoint's hashes and the state-dict keys not imported."""
    from gil.model.scgpt import dropped_keys
    from gil.scgpt_dir import identity

    return {**identity(directory), "dropped_keys": ",".join(dropped_keys(directory)) or "none"}


def evaluation_tags(config: Config) -> dict[str, str]:
    """The evaluation settings as ``evaluate.*`` tags (tags, unlike params, may change on a rerun).

    ``evaluate.cells`` says which cells the numbers come from: the split's test cells (sweep trials
    log ``scored_on: validation cells`` on their parent run instead).
    """
    return {
        "evaluate.cells": "test",
        **{
            f"evaluate.{key}": str(value)
            for key, value in flatten(config.evaluate.model_dump(mode="json")).items()
        },
    }
