"""The cost mutmut estimates for each test includes the fixtures it sets up (``make mutants``).

Why: mutmut runs a mutant's tests cheapest first and stops at the first failure, but it measures a
test by its call phase only. A test whose call is quick but whose module fixture trains and scores
a model (1-3 s in a fresh mutant process) was tried before the unit tests that would have killed
the mutant at once. This plugin, registered only while mutmut collects its stats (it sets
``MUTANT_UNDER_TEST=stats``), adds to each test the measured setup time of every fixture it uses:
what that test costs in a fresh process, the situation of every mutant.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator

import pytest


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
