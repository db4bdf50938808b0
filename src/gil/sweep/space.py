"""The ``sweep:`` section of ``params.yaml``: search spaces, objective, and how a sample becomes a config.

Why a schema of its own: :class:`gil.config.Config` keeps ``sweep`` a free mapping (only sweeps read
it), so this module validates it before Ray starts. A typo in a dotted key or an inverted bound
must fail in the first second with the key named, not inside a trial on a remote node.

Schema (every key optional except ``spaces`` for the swept strategy)::

    sweep:
      seed: 0                 # seeds the TPE sampler (not training: trials train with train.seeds[0])
      num_samples: 8
      max_concurrent: 2
      max_failures: 2         # retries of a crashing trial (it resumes from its last stage)
      scheduler: asha         # asha | fifo (fifo: every trial runs every stage)
      grace_stages: 2         # ASHA grace period in stages (>= 2: covers the first incremental stage)
      reduction_factor: 2     # ASHA
      cpus_per_trial: 1
      gpus_per_trial: null    # null: a share of the cluster's GPUs when it has any, else none
      time_budget_s: null
      storage_path: ray_results
      objective: {kind: weighted, forgetting_weight: 1.0, final_mse_weight: 1.0}   # or {kind: pareto}
      spaces:
        replay: {"train.lr": {loguniform: [1e-4, 3e-3]}, "strategies.replay.mix": {uniform: [0.1, 0.5]}}

A distribution is a one-key mapping: ``uniform``/``loguniform: [low, high]`` (floats),
``int``/``logint: [low, high]`` (inclusive integers) or ``choice: [a, b, ...]``. Keys are dotted paths
into the config under ``train``, ``model`` or the swept strategy's own entry ``strategies.<name>``
(other sections define the data or the evaluation, which a trial must not change).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gil.config import Config, config_from_dict
from gil.errors import GilError
from gil.metrics import summarize

SWEEPABLE_SECTIONS = ("train", "model", "strategies")
_RANGE_KINDS = ("uniform", "loguniform", "int", "logint")
_KINDS = (*_RANGE_KINDS, "choice")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Strict):
    """One sampled value: a range (``low``..``high``) or a list of choices."""

    kind: Literal["uniform", "loguniform", "int", "logint", "choice"]
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, raw: Any) -> Any:
        """``{loguniform: [a, b]}`` (the YAML form) to ``kind``/``low``/``high``."""
        if isinstance(raw, dict) and "kind" not in raw:
            if len(raw) != 1 or next(iter(raw)) not in _KINDS:
                raise ValueError(f"expected one of {{{', '.join(_KINDS)}}}: [...] as a one-key mapping")
            ((kind, values),) = raw.items()
            if not isinstance(values, list | tuple):
                raise ValueError(f"{kind}: expected a list")
            if kind == "choice":
                return {"kind": kind, "choices": values}
            if len(values) != 2:
                raise ValueError(f"{kind}: expected [low, high]")
            return {"kind": kind, "low": values[0], "high": values[1]}
        return raw

    @model_validator(mode="after")
    def _well_formed(self) -> Distribution:
        if self.kind == "choice":
            if not self.choices:
                raise ValueError("choice: needs at least one value")
            return self
        low, high = self.low, self.high
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"{self.kind}: needs finite low < high (got [{low}, {high}])")
        if self.kind.startswith("log") and low <= 0:
            raise ValueError(f"{self.kind}: needs low > 0 (got {low})")
        if self.kind in ("int", "logint") and not (low.is_integer() and high.is_integer()):
            raise ValueError(f"{self.kind}: bounds must be integers (got [{low}, {high}])")
        return self

    def extremes(self) -> list[Any]:
        """The values at the edges of the space: each must give a valid config."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("int", "logint"):
            return [int(self.low), int(self.high)]  # type: ignore[arg-type]
        return [self.low, self.high]

    def to_optuna(self) -> Any:
        """The equivalent Optuna distribution (what OptunaSearch samples from)."""
        from optuna import distributions

        if self.kind == "choice":
            return distributions.CategoricalDistribution(list(self.choices))
        log = self.kind.startswith("log")
        if self.kind in ("int", "logint"):
            return distributions.IntDistribution(int(self.low), int(self.high), log=log)  # type: ignore[arg-type]
        return distributions.FloatDistribution(self.low, self.high, log=log)  # type: ignore[arg-type]


class Objective(_Strict):
    """What a trial is scored by.

    ``weighted``: minimise ``forgetting_weight * forgetting + final_mse_weight * final_mse``.
    ``pareto``: minimise forgetting and plasticity (new-gene loss) together; the weights then only
    pick the one Pareto point whose values are written back to ``params.yaml``.
    """

    kind: Literal["weighted", "pareto"] = Field(
        "weighted",
        description="weighted: minimise the weighted sum; pareto: keep the Pareto set of forgetting and "
        "plasticity",
    )
    forgetting_weight: float = Field(1.0, ge=0, description="weight of forgetting in the score")
    final_mse_weight: float = Field(1.0, ge=0, description="weight of the final MSE in the score")

    @property
    def metrics(self) -> list[str]:
        """The reported metric(s) the search minimises."""
        return ["score"] if self.kind == "weighted" else ["forgetting", "plasticity"]

    def stage_metrics(self, rows: list[list[float]]) -> dict[str, float]:
        """Objective metrics of the results matrix so far (rows ``0..s`` of ``R``).

        Partial matrices: after stage ``s >= 1`` the metrics of :func:`gil.metrics.summarize` on the
        ``(s+1)x(s+1)`` matrix (forgetting *so far*, mean loss of the last row, mean ``R[k][k]`` for
        ``k = 1..s``); after the base stage nothing can have been forgotten (forgetting 0) and the
        only new gene set is ``B`` (plasticity ``R[0][0]``). After the last stage these are exactly
        the metrics of ``gil evaluate``, and at any stage every trial is scored the same way, which
        is all ASHA needs to compare trials at a rung. Undefined values (``delta`` before stage 2)
        are left out.
        """
        size = len(rows)
        matrix = np.full((size, size), np.nan)
        for stage, row in enumerate(rows):
            matrix[stage, : stage + 1] = row
        if size == 1:
            metrics = {"forgetting": 0.0, "final_mse": float(matrix[0, 0]), "plasticity": float(matrix[0, 0])}
        else:
            metrics = {name: value for name, value in summarize(matrix).items() if math.isfinite(value)}
        metrics["score"] = (
            self.forgetting_weight * metrics["forgetting"] + self.final_mse_weight * metrics["final_mse"]
        )
        return metrics


class SweepConfig(_Strict):
    """The validated ``sweep:`` section (see the module docstring)."""

    seed: int = Field(0, description="seeds the TPE sampler (not training: trials train with train.seeds[0])")
    num_samples: int = Field(8, ge=1, description="trials per sweep")
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    max_failures: int = Field(
        2, ge=0, description="retries of a crashing trial (it resumes from its last stage)"
    )
    scheduler: Literal["asha", "fifo"] = Field(
        "asha",
        description="asha: stop bad trials early, on the stage index; fifo: every trial runs every stage",
    )
    grace_stages: int = Field(
        2,
        ge=2,
        description="ASHA never stops a trial before this many stages (covers the first incremental one)",
    )
    reduction_factor: float = Field(2.0, gt=1, description="ASHA's reduction factor")
    cpus_per_trial: float = Field(1.0, gt=0, description="Ray CPUs of each trial (fractions allowed)")
    gpus_per_trial: float | None = Field(
        None, ge=0, description="Ray GPUs of each trial (null: a share of the cluster's GPUs when it has any)"
    )
    time_budget_s: float | None = Field(None, gt=0, description="stop the sweep after this many seconds")
    storage_path: Path = Field(
        Path("ray_results"), description="Ray Tune's results; must be shared by every node of a cluster"
    )
    objective: Objective = Field(Objective(), description="what a trial is scored by")
    spaces: dict[str, dict[str, Distribution]] = Field(
        default_factory=dict,
        description="per strategy name: dotted key (train.*, model.* or strategies.<name>.*) to a "
        "distribution (uniform, loguniform, int, logint: [low, high], or choice: [...])",
    )


def _where(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a readable key (dotted space keys quoted)."""
    return ".".join(f"'{part}'" if "." in str(part) else str(part) for part in loc)


def load_sweep_config(config: Config, source: Path | str = "params.yaml") -> SweepConfig:
    """Validate ``config.sweep``; raise :class:`GilError` naming the first bad key."""
    try:
        return SweepConfig.model_validate(config.sweep)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against the documented sweep params"
        raise GilError(f"{source}: sweep.{_where(first['loc'])}: {message}") from None


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key`` ``a.b.c`` (sections created as needed)."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def write_params_file(path: Path, values: dict[str, Any]) -> None:
    """Write ``values`` (dotted keys) into the YAML file ``path``, keeping everything else as it was.

    A ruamel.yaml round trip keeps comments, key order and flow-style entries such as
    ``replay: {kind: replay, buffer_size: 200}``; the file is replaced atomically.
    """
    from ruamel.yaml import YAML

    from gil.files import write_text

    yaml = YAML()
    yaml.width = 4096  # never re-wrap long lines
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the layout of the project's params.yaml
    yaml.representer.add_representer(  # ``null`` stays ``null`` (ruamel writes an empty value)
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    document = yaml.load(path.read_text())
    for key, value in values.items():
        _set_dotted(document, key, value)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    write_text(path, buffer.getvalue())


def apply_params(config: Config, values: dict[str, Any], source: Path | str = "params.yaml") -> Config:
    """``config`` with the sampled ``values`` (dotted keys) applied, validated like ``params.yaml``."""
    raw = config.model_dump(mode="json")
    for key, value in values.items():
        _set_dotted(raw, key, value)
    return config_from_dict(raw, Path(source))


def strategy_entry(config: Config, strategy: str, values: dict[str, Any]) -> dict[str, Any]:
    """``strategy``'s entry with ``values`` in it: its own parameters, and ``train.*`` as its overrides.

    Why not the global ``train`` section: a learning rate tuned for one strategy must not change the
    shared base stage or the other strategies (:meth:`gil.config.Config.for_strategy`).
    """
    entry = config.strategies[strategy].model_dump(mode="json")
    for key, value in values.items():
        section, _, rest = key.partition(".")
        if section == "strategies":
            entry[rest.split(".", 1)[1]] = value
        elif section == "train":
            entry["train"] = {**entry.get("train", {}), rest: value}
        else:
            raise GilError(
                f"sweep.spaces.{strategy}.'{key}': only train.* and strategies.{strategy}.* keys can be set "
                "for one strategy (model.* keys change the shared base stage); remove it"
            )
    return entry


def apply_to_strategy(config: Config, strategy: str, values: dict[str, Any]) -> Config:
    """``config`` with ``values`` applied to ``strategy`` alone (``model.*`` keys to the whole config)."""
    shared = {key: value for key, value in values.items() if key.startswith("model.")}
    config = apply_params(config, shared) if shared else config
    own = {key: value for key, value in values.items() if key not in shared}
    raw = config.model_dump(mode="json")
    raw["strategies"][strategy] = strategy_entry(config, strategy, own)
    return config_from_dict(raw)


def _check_key(config: Config, strategy: str, key: str, where: str) -> None:
    """Raise :class:`GilError` unless ``key`` names a sweepable leaf of the config."""
    from gil.strategies import registry

    parts = key.split(".")
    if parts[0] not in SWEEPABLE_SECTIONS:
        raise GilError(f"{where}: only keys under {', '.join(SWEEPABLE_SECTIONS)} can be swept")
    if parts[0] == "strategies":
        if len(parts) != 3 or parts[1] != strategy:
            raise GilError(
                f"{where}: expected strategies.{strategy}.<parameter> (the swept strategy's own entry)"
            )
        fields = registry()[config.strategies[strategy].kind].Params.model_fields
        if parts[2] not in fields:
            raise GilError(
                f"{where}: {parts[2]!r} is not a parameter of strategy {strategy!r}; "
                f"choose one of {sorted(fields)}"
            )
        return
    node: Any = config
    for depth, part in enumerate(parts):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise GilError(f"{where}: no such config key {'.'.join(parts[: depth + 1])!r}")
        node = getattr(node, part)
    if isinstance(node, BaseModel | dict | list):
        raise GilError(f"{where}: not a single value; name a key inside it")


def strategy_space(
    config: Config, sweep: SweepConfig, strategy: str, source: Path | str = "params.yaml"
) -> dict[str, Distribution]:
    """The validated search space of ``strategy``: keys exist and both ends of each range are valid.

    Why check the extremes: a bound the config refuses (``mix: 1.5`` where ``mix < 1``) would
    otherwise fail trial after trial on the cluster instead of here.
    """
    if strategy not in config.strategies:
        raise GilError(f"unknown strategy {strategy!r}; choose one of {sorted(config.strategies)}")
    space = sweep.spaces.get(strategy)
    if not space:
        raise GilError(f"{source}: sweep.spaces.{strategy}: no search space for this strategy; add one")
    for key, distribution in space.items():
        where = f"{source}: sweep.spaces.{strategy}.'{key}'"
        _check_key(config, strategy, key, where)
        for value in distribution.extremes():
            try:
                apply_params(config, {key: value}, source)
            except GilError as error:
                raise GilError(f"{where}: value {value!r} is not accepted by the config ({error})") from None
    return space


def optuna_space(space: dict[str, Distribution]) -> dict[str, Any]:
    """The search space as Optuna distributions keyed by the dotted config keys."""
    return {key: distribution.to_optuna() for key, distribution in space.items()}
