"""The MLflow implementation of :class:`gil.tracking.base.Tracker`.

Run layout (one MLflow experiment per benchmark, ``tracking.experiment`` or the caller's default):

* one **parent run** per (strategy, seed), named ``<strategy> · seed <seed>``, tagged
  ``gil.kind=parent``, ``gil.strategy``, ``gil.seed``, ``gil.config_hash`` (a hash of the params
  passed in, so that a changed config is a new identity) and ``gil.superseded``, plus the caller's
  tags (git commit, DVC hashes). Params: the flattened config. Summary metrics (``forgetting``,
  ``delta``, ``bwt``, ``final_mse``, ``probe_delta``...) and artifact files go on the parent.
* one nested **stage run** per stage, named ``<parent name> · stage <k>``, tagged ``gil.kind=stage``,
  ``gil.stage`` and ``mlflow.parentRunId``; step metrics and the stage's model go there. The model
  is registered as a version of ``gil-<dataset>-<strategy>`` (:func:`registered_model_name`) with
  tags ``stage`` and ``seed`` and the alias ``seed<s>-stage<k>``; a finished training run also moves
  ``seed<s>-final`` and, for the lowest seed, ``final`` to its last stage, so a user loads
  ``models:/gil-zeisel-replay@final`` without looking up version numbers.

The experiment is tagged ``mlflow.experimentKind = custom_model_development`` (model training, not
GenAI) when it is created or next used: MLflow's own statement of an experiment's type. (MLflow
3.17's UI picks its GenAI or training pages from a sidebar switch instead; the links of
:mod:`gil.tracking.ui` choose the training pages.)

Re-runs: ``begin_run(resume=False)`` always creates a fresh parent; when it finishes, every earlier
parent of the same (strategy, seed) slot (and suite setting, ``gil.setting``), whatever its config
hash, is tagged ``gil.superseded=true``: the latest finished run is a slot's current result, so a
leaderboard never averages runs of an old config with the new ones (a failed rerun supersedes
nothing, so the last good run stays current; earlier parents still RUNNING, whose process died, are
also marked KILLED). Why tags rather than deleting runs: history stays
inspectable and nothing is lost, while ``tags.gil.superseded != 'true'`` in the UI's search box
(or :mod:`gil.tracking.leaderboard`) shows only the current runs. Every parent is created with
``gil.superseded=false`` because MLflow's ``!=`` filter never matches a run that lacks the tag.
``begin_run(resume=True)`` (the evaluation, a later process) reopens the latest non-superseded
parent of that identity, so both processes must pass the same params.

The tracker uses MLflow's fluent API (``mlflow.start_run``): model logging and dataset inputs
attach to the active run, so this module sets the process-wide tracking URI; use one tracker at
a time per process. Use it as a context manager (``with tracker:``) so that an exception marks
the open runs FAILED instead of leaving them RUNNING or looking complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import mlflow
import requests
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from gil.config import TrackingConfig
from gil.errors import GilError
from gil.settings import SETTING_TAG
from gil.tracking.base import NullTracker, Tracker
from gil.tracking.server import check_reachable, resolve_tracking_uri, sqlite_artifact_root

if TYPE_CHECKING:
    import torch

TAG_KIND = "gil.kind"
TAG_STRATEGY = "gil.strategy"
TAG_SEED = "gil.seed"
TAG_CONFIG_HASH = "gil.config_hash"
TAG_SUPERSEDED = "gil.superseded"
TAG_INIT_PREFIX = "gil.init."
TAG_STAGE = "gil.stage"
TAG_SETTING = SETTING_TAG
TAG_PARENT = MLFLOW_PARENT_RUN_ID
KIND_PARENT = "parent"
KIND_STAGE = "stage"
# MLflow's experiment-type tag; values from the 3.x UI (ExperimentKind): this store holds training runs.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
ALIAS_FINAL = "final"
# The run description shown on a run's page in the MLflow UI.
TAG_RUN_NOTE = "mlflow.note.content"

_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_MAX_DIGEST_CHARS = 36  # MLflow's limit on a dataset digest
_RunStatusName = Literal["FINISHED", "FAILED", "KILLED"]


def import_lazy_parts() -> None:
    """Import what MLflow imports on first use: the SQLite store (~0.7 s) and the PyTorch flavour.
    For ``gil serve`` (:mod:`gil.command_server`), whose forks then skip it."""
    import mlflow.pytorch  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def _safe_name(text: str) -> str:
    """``text`` with characters outside ``[A-Za-z0-9._-]`` replaced, for model names and folders."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "default"


def config_hash(params: dict[str, Any]) -> str:
    """A short stable hash of the flattened config: part of a parent run's identity."""
    canonical = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def registered_model_name(experiment: str, strategy: str, setting: str | None = None) -> str:
    """The registered model that collects the stage models of ``strategy`` in ``experiment``.

    ``gil-<dataset>-<strategy>``: the default experiment ``gil-<dataset>`` already carries the
    ``gil-`` prefix, which is not doubled (``gil-zeisel`` → ``gil-zeisel-replay``). A suite's run
    adds its setting (``gil-zeisel-suite-reverse-replay``): settings must not share aliases.
    """
    parts = [experiment.removeprefix("gil-"), *([setting] if setting else []), strategy]
    return "gil-" + "-".join(_safe_name(part) for part in parts)


def stage_alias(seed: int | str, stage: int | str) -> str:
    """The registry alias of one (seed, stage) model, e.g. ``seed0-stage2``."""
    return f"seed{seed}-stage{stage}"


def final_alias(seed: int | str) -> str:
    """The registry alias of a seed's last-stage model, e.g. ``seed0-final``."""
    return f"seed{seed}-{ALIAS_FINAL}"


def loading_note(model_name: str, seed: int | str) -> str:
    """The run description (Markdown) that tells a user how to load the run's models."""
    return (
        f"Models of this run: registered model `{model_name}`.\n\n"
        "```python\nimport mlflow.pytorch\n"
        f'model = mlflow.pytorch.load_model("models:/{model_name}@{final_alias(seed)}")  # last stage\n'
        f'stage_1 = mlflow.pytorch.load_model("models:/{model_name}@{stage_alias(seed, 1)}")\n```\n'
        f"`@{ALIAS_FINAL}` is the last stage of the lowest seed. Loading needs `gil` installed."
    )


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_CHARS]


def _ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing.

    For a SQLite store the experiment's artifacts go next to the database (see
    :mod:`gil.tracking.server`) instead of MLflow's default ``./mlartifacts``; a server decides
    the location itself. Tolerates a concurrent trial creating the same experiment.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = sqlite_artifact_root(uri)
        location = (root / _safe_name(name)).as_uri() if root is not None else None
        tags = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING}
        try:
            return client.create_experiment(name, artifact_location=location, tags=tags)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise GilError(
            f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore`) or "
            "set another tracking.experiment"
        )
    if experiment.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
    return experiment.experiment_id


class TrackingUnavailable(GilError):
    """The tracking backend failed while a run was being recorded."""


_HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _reported(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a failure of the tracking backend into one clear :class:`TrackingUnavailable` line."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException) as error:
            first_line = (
                str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            )
            raise TrackingUnavailable(
                f"MLflow tracking at {self.uri} failed during {method.__name__} ({first_line}); "
                "the checkpoints "
                "written so far are kept: restore the server and rerun the same command to resume"
            ) from None

    return wrapper


def _dataset_uri(source_path: Path | str) -> str:
    """A local file or directory as its absolute path; a URI (a remote SOMA experiment) as it is."""
    return str(source_path) if "://" in str(source_path) else str(Path(source_path).resolve())


class MlflowTracker:
    """Records parent and stage runs, models and summaries in MLflow (see the module docstring).

    Every method that talks to the backend raises :class:`TrackingUnavailable` when it fails; HTTP
    retries default to 4 with a backoff factor of 1 s (about 15 s in all) unless the
    ``MLFLOW_HTTP_REQUEST_*`` variables say otherwise, so a server that went away is reported
    within seconds rather than minutes.
    """

    def __init__(self, uri: str, experiment: str, register_models: bool = True) -> None:
        for name, value in _HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)
        mlflow.set_tracking_uri(uri)
        self.uri = uri
        self.experiment = experiment
        self.register_models = register_models
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = _ensure_experiment(self.client, experiment, uri)
        self._parent: Run | None = None
        self._stage: int | None = None
        self._identity: dict[str, str] = {}
        self._last_version: tuple[int, str, str] | None = None  # (stage, model name, version) of this run

    # --- context manager -------------------------------------------------------------------

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status: _RunStatusName = "FINISHED"
        else:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        self._close(status)

    # --- the Tracker protocol --------------------------------------------------------------

    @property
    def parent_run_id(self) -> str:
        """The open parent run's id (for tests, and for logging from other processes)."""
        return self._require_parent().info.run_id

    @_reported
    def begin_run(
        self, strategy: str, seed: int, params: dict[str, Any], tags: dict[str, str], resume: bool
    ) -> None:
        """Open the parent run of (strategy, seed): fresh (superseding older ones) or reopened."""
        if self._parent is not None:
            raise RuntimeError("begin_run called while a run is open; call end_run first")
        self._last_version = None
        identity = {
            TAG_KIND: KIND_PARENT,
            TAG_STRATEGY: strategy,
            TAG_SEED: str(seed),
            TAG_CONFIG_HASH: config_hash(params),
            **({TAG_SETTING: tags[TAG_SETTING]} if TAG_SETTING in tags else {}),
        }
        current = self._search({**identity, TAG_SUPERSEDED: "false"}, order_by=["attributes.start_time DESC"])
        self._identity = identity
        if resume and current:
            self._parent = mlflow.start_run(run_id=current[0].info.run_id, tags=tags)
            self._close_orphan_stages()
            return
        self._parent = mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=f"{strategy} · seed {seed}",
            tags={**tags, **identity, TAG_SUPERSEDED: "false"},
        )
        self.client.log_batch(
            self.parent_run_id,
            params=[Param(key, _param_value(value)) for key, value in params.items()],
        )  # log_batch splits into MLflow's 100-per-request batches itself
        for earlier in current:
            if earlier.info.status == "RUNNING":  # its process died: it will never finish
                self._supersede(earlier)

    @_reported
    def begin_stage(self, stage: int) -> None:
        """Open the nested run of ``stage`` (reopened when it exists, e.g. in the evaluation)."""
        parent = self._require_parent()
        if self._stage is not None:
            self.end_stage()
        existing = self._search({TAG_PARENT: parent.info.run_id, TAG_STAGE: str(stage)})
        if existing:
            mlflow.start_run(run_id=existing[0].info.run_id, nested=True)
        else:
            parent_tags = parent.data.tags
            mlflow.start_run(
                experiment_id=self.experiment_id,
                run_name=f"{parent.info.run_name} · stage {stage}",
                nested=True,
                tags={
                    TAG_KIND: KIND_STAGE,
                    TAG_STAGE: str(stage),
                    TAG_STRATEGY: parent_tags[TAG_STRATEGY],
                    TAG_SEED: parent_tags[TAG_SEED],
                },
            )
        self._stage = stage

    @_reported
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log ``metrics`` at ``step`` on the open stage run, else on the parent run."""
        self._require_parent()
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    @_reported
    def log_stage_model(self, stage: int, model: torch.nn.Module, vocabulary: list[str]) -> None:
        """Log the model of ``stage`` on its stage run, with ``vocabulary.json``, and register it.

        Pickle serialisation with explicit requirements is what keeps this fast (torch.export
        needs an input example, and requirement inference takes seconds). Loading needs the
        model's class importable (``gil`` installed). The vocabulary travels inside the model
        (``extra_files``) and is also an artifact of the stage run. torch and ``mlflow.pytorch``
        are imported here: commands that only read runs (``gil leaderboard``) need neither.
        """
        import mlflow.pytorch
        import torch

        if self._stage != stage:
            self.begin_stage(stage)
        parent_tags = self._require_parent().data.tags
        registered = (
            registered_model_name(self.experiment, parent_tags[TAG_STRATEGY], parent_tags.get(TAG_SETTING))
            if self.register_models
            else None
        )
        with tempfile.TemporaryDirectory() as scratch:
            vocabulary_path = Path(scratch) / "vocabulary.json"
            vocabulary_path.write_text(json.dumps(list(vocabulary)))
            info = mlflow.pytorch.log_model(
                model,
                name=f"stage_{stage}",
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                extra_files=[str(vocabulary_path)],
                registered_model_name=registered,
                step=stage,
            )
            mlflow.log_artifact(str(vocabulary_path))
        if registered is not None and info.registered_model_version is not None:
            version = str(info.registered_model_version)
            seed = parent_tags[TAG_SEED]
            # The pretrained checkpoint's identity (gil.init.*, see gil.train.loop) goes with each version.
            origin = {key: value for key, value in parent_tags.items() if key.startswith(TAG_INIT_PREFIX)}
            for key, value in {"stage": str(stage), "seed": seed, **origin}.items():
                self.client.set_model_version_tag(registered, version, key, value)
            self.client.set_registered_model_alias(registered, stage_alias(seed, stage), version)
            if self._last_version is None or stage >= self._last_version[0]:
                self._last_version = (stage, registered, version)

    @_reported
    def end_stage(self) -> None:
        """Close the open stage run (FINISHED)."""
        if self._stage is not None:
            mlflow.end_run("FINISHED")
            self._stage = None

    @_reported
    def log_summary(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        """Log summary metrics and artifact files (or directories) on the parent run."""
        run_id = self.parent_run_id
        timestamp = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(key, float(value), timestamp, 0) for key, value in metrics.items()]
        )
        for artifact in map(Path, artifacts):
            if artifact.is_dir():
                self.client.log_artifacts(run_id, str(artifact), artifact_path=artifact.name)
            else:
                self.client.log_artifact(run_id, str(artifact))

    @_reported
    def log_dataset(
        self, name: str, source_path: Path | str, digest: str, n_cells: int, n_genes: int
    ) -> None:
        """Record the input dataset on the parent run (MLflow's dataset inputs, shown in the UI).

        Only metadata is logged, not the data: ``digest`` (e.g. the DVC md5 of the file; MLflow
        keeps at most 36 characters) identifies it, and the profile holds its size.
        """
        dataset = DatasetEntity(
            name=name,
            digest=digest[:_MAX_DIGEST_CHARS],
            source_type="local",
            source=json.dumps({"uri": _dataset_uri(source_path)}),
            profile=json.dumps({"num_rows": n_cells, "num_genes": n_genes}),
        )
        dataset_input = DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "training")])
        self.client.log_inputs(self.parent_run_id, datasets=[dataset_input])

    @_reported
    def end_run(self, status: Literal["FINISHED", "FAILED"] = "FINISHED") -> None:
        """Close the open stage run and the parent run with ``status``.

        Only a run that finishes supersedes the earlier runs of its slot (its identity but for the
        config hash): a rerun that fails leaves the last good run current (and itself FAILED, so it
        never looks complete).
        """
        if status == "FINISHED" and self._parent is not None:
            own = self.parent_run_id
            slot = {key: value for key, value in self._identity.items() if key != TAG_CONFIG_HASH}
            for earlier in self._search({**slot, TAG_SUPERSEDED: "false"}):
                if earlier.info.run_id != own:
                    self._supersede(earlier)
            if self._last_version is not None:
                self._set_final_aliases(*self._last_version[1:])
        self._close(status)

    # --- helpers ---------------------------------------------------------------------------

    def _close(self, status: _RunStatusName) -> None:
        """End the open stage run and parent with ``status``; a no-op when nothing is open."""
        if self._stage is not None:
            mlflow.end_run(status)
            self._stage = None
        if self._parent is not None:
            mlflow.end_run(status)
            self._parent = None

    def _require_parent(self) -> Run:
        if self._parent is None:
            raise RuntimeError("no open run: call begin_run first")
        return self._parent

    def _search(self, tags: dict[str, str], order_by: list[str] | None = None) -> list[Run]:
        """Active runs of this experiment whose tags equal ``tags``."""
        condition = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        return list(self.client.search_runs([self.experiment_id], condition, order_by=order_by))

    def _close_orphan_stages(self) -> None:
        """Mark KILLED the stage runs of the reopened parent left RUNNING by a process that died."""
        children = self._search({TAG_PARENT: self.parent_run_id})
        for child in children:
            if child.info.status == "RUNNING":
                self.client.set_terminated(child.info.run_id, "KILLED")

    def _set_final_aliases(self, name: str, version: str) -> None:
        """Point ``seed<s>-final`` (and ``final``, unless a lower seed holds it) at this run's last
        stage, and describe on the run how to load it.

        Only a finished training run gets here, so its last registered stage is the final one.
        """
        seed = self._identity[TAG_SEED]
        self.client.set_registered_model_alias(name, final_alias(seed), version)
        try:
            holder = self.client.get_model_version_by_alias(name, ALIAS_FINAL)
        except MlflowException:  # no model holds the alias yet
            holder = None
        if holder is None or int(holder.tags.get("seed", seed)) >= int(seed):
            self.client.set_registered_model_alias(name, ALIAS_FINAL, version)
        self.client.set_tag(self.parent_run_id, TAG_RUN_NOTE, loading_note(name, seed))

    def _supersede(self, run: Run) -> None:
        self.client.set_tag(run.info.run_id, TAG_SUPERSEDED, "true")
        if run.info.status == "RUNNING":
            self.client.set_terminated(run.info.run_id, "KILLED")


def open_tracker(config: TrackingConfig, experiment_default: str) -> Tracker:
    """The tracker that ``config`` asks for: MLflow, or :class:`NullTracker` when disabled.

    Checks the tracking server up front, so that an unreachable server fails the command in
    its first seconds (``on_unreachable: fail``) or disables tracking with a warning
    (``on_unreachable: disable``) instead of failing after training.
    """
    if not config.enabled:
        return NullTracker()
    uri = resolve_tracking_uri(config)
    try:
        check_reachable(uri)
    except GilError as error:
        if config.on_unreachable == "fail":
            raise
        warnings.warn(f"{error}; tracking is disabled for this run", stacklevel=2)
        return NullTracker()
    try:
        return MlflowTracker(uri, config.experiment or experiment_default, config.register_models)
    except MlflowException as error:
        first_line = str(error).split(";")[0].split("\n")[0]
        raise GilError(
            f"tracking.uri {uri!r} cannot be used ({first_line}); use sqlite:///PATH, http(s)://HOST:PORT "
            "or a database URI, or set tracking.enabled: false"
        ) from None
