"""Forgetting-mitigation strategies, discovered by name.

Adding a strategy means adding one module in this package that defines a subclass of
:class:`gil.strategies.base.Strategy` with a unique ``kind``; the registry finds it.

Dependencies point one way: :mod:`gil.config` validates its ``strategies:`` entries here, and this
package reads an entry only through :class:`StrategySpec` (never importing the config).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from gil.errors import GilError

if TYPE_CHECKING:
    from gil.strategies.base import Strategy


class StrategySpec(Protocol):
    """One ``strategies:`` entry as the registry reads it (``gil.config.StrategyEntry`` is one)."""

    kind: str

    def params(self) -> dict[str, Any]: ...


def registry() -> dict[str, type[Strategy]]:
    """Map ``kind`` to strategy class, importing every module of this package once."""
    from gil.strategies.base import Strategy

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found: dict[str, type[Strategy]] = {}
    pending = list(Strategy.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if getattr(cls, "kind", None):
            found[cls.kind] = cls
    return found


def validate_strategy_entries(entries: Mapping[str, StrategySpec], source: Path) -> None:
    """Check every entry's ``kind`` exists and its parameters fit that strategy's Params model."""
    known = registry()
    for name, entry in entries.items():
        if entry.kind not in known:
            raise GilError(
                f"{source}: strategies.{name}.kind: unknown strategy {entry.kind!r}; "
                f"choose one of {sorted(known)}"
            )
        try:
            known[entry.kind].Params.model_validate(entry.params())
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise GilError(f"{source}: strategies.{name}.{key}: {first['msg']}") from None


def build_strategy(entry: StrategySpec) -> Strategy:
    """Instantiate the strategy an entry names, with validated parameters."""
    cls = registry()[entry.kind]
    return cls(cls.Params.model_validate(entry.params()))
