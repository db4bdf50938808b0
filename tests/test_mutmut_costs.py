"""``make mutants`` orders a mutant's tests by what each costs in a fresh process, fixtures included."""

from __future__ import annotations

from collections import defaultdict

import pytest
from _mutmut_costs import FixtureCosts

pytest_plugins = ["pytester"]


def test_a_tests_cost_includes_the_setup_of_every_fixture_it_uses(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.fixture(scope="module")
        def trained():
            time.sleep(0.3)

        @pytest.fixture
        def scored(trained):
            time.sleep(0.1)

        def test_first_user(trained):
            pass

        def test_later_user(scored):
            pass

        def test_no_fixture():
            pass
        """
    )
    costs: defaultdict[str, float] = defaultdict(float)
    pytester.runpytest_inprocess("-p", "no:randomly", plugins=[FixtureCosts(costs)]).assert_outcomes(passed=3)
    by_name = {nodeid.rsplit("::", 1)[1]: seconds for nodeid, seconds in costs.items()}
    # the module fixture is charged to every test using it, not only the one that built it
    assert 0.3 <= by_name["test_first_user"] < 0.4
    assert 0.4 <= by_name["test_later_user"] < 0.55
    assert by_name["test_no_fixture"] < 0.05
