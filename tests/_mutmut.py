"""What ``make mutants`` needs from the test suite: honest test costs, training done once.

mutmut runs each mutant in a fresh process, forked from one that collected the tests, and runs the
tests that execute the mutated function, cheapest first, until one fails. Three things made that slow:

- **Costs without fixtures.** mutmut measures a test by its call phase only, so a test whose call is
  quick but whose module fixture trains and scores a model (1-3 s in a fresh process) was tried
  before unit tests that would have killed the mutant at once. :class:`FixtureCosts`, registered
  only while mutmut collects its stats (it sets ``MUTANT_UNDER_TEST=stats``), adds to each test the
  measured setup time of every fixture it uses: what the test costs in a fresh process.
- **Training in every mutant process.** The fixtures that train a tiny model did so again for every
  mutant of the evaluation, the controls or the probes, code that training never runs.
  :func:`train_checkpoints` records, during the stats run, which mutated functions training executes
  and keeps its checkpoints; a mutant process reuses them unless its mutant is in one of those
  functions (then it trains, and the mutant is tested on what it trains). Outside mutmut it trains.
- **Any test first.** Cheapest first put end-to-end tests of other modules, which execute the
  mutated function but check little of what it does, before the tests written to pin it: a mutant
  of ``seed_artifacts`` ran 14 such tests (35 s) before ``tests/test_evaluate.py``'s killed it.
  :func:`own_tests_first` runs, in a mutant process, the tests of the files named after the
  mutated module first (``gil.evaluate`` → ``test_evaluate*.py``), each group cheapest first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Generator
from functools import cache
from pathlib import Path

import pytest

from gil.config import Config
from gil.data.layout import ProcessedData, Split

# Under mutmut's working directory (mutants/), so `make mutants` (rm -rf mutants) starts it afresh.
TRAINING_CACHE = Path(".gil-mutmut-training")


class FixtureCosts:
    """Measures each fixture's setup and charges it to every test that requests the fixture."""

    def __init__(self, duration_by_test: dict[str, float]) -> None:
        self.duration_by_test = duration_by_test
        self.setup_seconds: dict[int, float] = {}  # by id of the fixture definition

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef) -> Generator:
        start = time.perf_counter()
        yield
        self.setup_seconds[id(fixturedef)] = time.perf_counter() - start

    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        definitions = item._fixtureinfo.name2fixturedefs  # type: ignore[attr-defined]
        used = {id(defs[-1]) for name in item.fixturenames if (defs := definitions.get(name))}
        self.duration_by_test[item.nodeid] += sum(self.setup_seconds.get(key, 0.0) for key in used)


def register_if_mutmut_collects_stats(config: pytest.Config) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    from mutmut.state import state

    config.pluginmanager.register(FixtureCosts(state().duration_by_test), "gil-mutmut-fixture-costs")


def own_tests_first(items: list[pytest.Item]) -> None:
    """In a mutant process, the tests of files named after the mutated module first (stable: each
    group keeps mutmut's cheapest-first order)."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    module = mutant.split("__mutmut_")[0].rpartition(".")[0].rpartition(".")[2]  # gil.metrics.probes → probes

    def elsewhere(item: pytest.Item) -> bool:
        stem = item.path.stem
        return not (stem == f"test_{module}" or stem.startswith(f"test_{module}_"))

    items.sort(key=elsewhere)


def train_checkpoints(config: Config, strategy: str, data: ProcessedData, split: Split, out: Path) -> None:
    """``train_strategy`` into ``out``; under mutmut, once per run for every mutant it cannot change."""
    from gil.train.loop import train_strategy

    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if mutant != "stats" and "__mutmut_" not in mutant:  # outside mutmut
        train_strategy(config, strategy, data, split, out, progress=False)
        return
    entry = TRAINING_CACHE / _training_key(config, strategy, data, split)
    if mutant != "stats":
        if not _reuse(entry, out, mutant):
            train_strategy(config, strategy, data, split, out, progress=False)
        return
    from mutmut.state import state

    # Training's own record of the mutated functions it executes; the test's record gets them too.
    outer, state()._stats = state()._stats, set()
    try:
        train_strategy(config, strategy, data, split, out, progress=False)
        _store(entry, out, sorted(state()._stats))
    finally:
        state()._stats = outer | state()._stats


def _reuse(entry: Path, out: Path, mutant: str) -> bool:
    from mutmut.utils.format_utils import mangled_name_from_mutant_name

    if not entry.is_dir():
        return False
    if mangled_name_from_mutant_name(mutant) in json.loads((entry / "executed.json").read_text()):
        return False  # training runs the mutated function: train with the mutant
    shutil.copytree(entry / "checkpoints", out, dirs_exist_ok=True)
    return True


def _store(entry: Path, out: Path, executed: list[str]) -> None:
    """Keep ``out`` and the functions that made it, whole or not at all (rename into place)."""
    if entry.exists():
        return
    TRAINING_CACHE.mkdir(exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=TRAINING_CACHE))
    shutil.copytree(out, partial / "checkpoints")
    (partial / "executed.json").write_text(json.dumps(executed))
    partial.rename(entry)


def _training_key(config: Config, strategy: str, data: ProcessedData, split: Split) -> str:
    """What the checkpoints depend on: the config, strategy, data, split and the (mutated) source."""
    digest = hashlib.sha256()
    for part in (config.model_dump_json(), strategy, repr(split.gene_sets), _source_digest()):
        digest.update(part.encode())
    for array in (data.indptr, data.indices, data.values, split.cell_stages):
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


@cache
def _source_digest() -> str:
    import gil

    package = Path(gil.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()
