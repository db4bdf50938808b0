"""``make mutants``: a test costs its fixtures too; training is done once for the mutants it cannot see."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from _mutmut import TRAINING_CACHE, FixtureCosts, train_checkpoints
from factories import make_config, make_processed, make_split

ROOT = Path(__file__).resolve().parents[1]

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


def test_training_is_kept_for_mutants_it_does_not_run_and_redone_for_those_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During mutmut's stats run the fixture trains and keeps its checkpoints with the functions
    training executed; a mutant outside them gets the kept checkpoints, one inside trains anew."""
    mutmut_state = pytest.importorskip("mutmut.state")  # the `mutants` extra, not installed in CI
    import gil.train.loop as loop

    monkeypatch.chdir(tmp_path)  # mutmut's working directory holds the kept training
    data = make_processed(n_cells=60, n_genes=20)
    split = make_split(data, genes_per_stage=4)
    config = make_config()
    trainings: list[Path] = []
    original = loop.train_strategy

    def recording(config, strategy, data, split, out, **kwargs):  # noqa: ANN001, ANN202
        trainings.append(out)
        return original(config, strategy, data, split, out, **kwargs)

    monkeypatch.setattr(loop, "train_strategy", recording)
    state = mutmut_state.state()
    monkeypatch.setattr(state, "_stats", {"gil.earlier.x_seen_by_the_test"})

    def train(out: Path, mutant: str | None) -> list[str]:
        if mutant is None:
            monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
        else:
            monkeypatch.setenv("MUTANT_UNDER_TEST", mutant)
        train_checkpoints(config, "finetune", data, split, out)
        return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())

    kept = train(tmp_path / "stats", "stats")
    assert trainings == [tmp_path / "stats"] and kept and "gil.earlier.x_seen_by_the_test" in state._stats
    (entry,) = TRAINING_CACHE.iterdir()
    # here gil is not mutated, so nothing was recorded; say training runs `x_trained_here`
    assert json.loads((entry / "executed.json").read_text()) == []
    (entry / "executed.json").write_text(json.dumps(["gil.evaluate.x_trained_here"]))

    assert train(tmp_path / "reused", "gil.evaluate.x_scored_here__mutmut_3") == kept
    assert len(trainings) == 1  # copied, not trained
    assert train(tmp_path / "retrained", "gil.evaluate.x_trained_here__mutmut_3") == kept
    assert trainings[-1] == tmp_path / "retrained"
    assert train(tmp_path / "plain", None) == kept and trainings[-1] == tmp_path / "plain"
    assert len(list(TRAINING_CACHE.iterdir())) == 1


def test_reviewed_equivalents_are_marked_skipped_and_stale_names_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mutmut")  # the report reads mutmut's status names
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutants_report", ROOT / "benchmarks" / "mutants_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    meta = tmp_path / "evaluate.py.meta"
    codes = {"gil.e.x_f__mutmut_1": None, "gil.e.x_f__mutmut_2": None, "gil.e.x_f__mutmut_3": 1}
    meta.write_text(json.dumps({"exit_code_by_key": codes, "durations_by_key": {}}))
    equivalent = {"gil.e.x_f__mutmut_2", "gil.e.x_f__mutmut_3", "gil.e.x_gone__mutmut_9"}
    assert report.skip_equivalents([meta], equivalent) == 0
    after = json.loads(meta.read_text())
    # untested equivalents skipped (34), a result already there kept, the rest left to test
    assert after["exit_code_by_key"] == {
        "gil.e.x_f__mutmut_1": None,
        "gil.e.x_f__mutmut_2": 34,
        "gil.e.x_f__mutmut_3": 1,
    }
    assert after["durations_by_key"] == {}
    out = capsys.readouterr().out
    assert "2 reviewed equivalents marked skipped" in out
    assert "not a mutant any more (review it again): gil.e.x_gone__mutmut_9" in out


def test_a_mutants_own_module_tests_run_first_each_group_in_the_order_given(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _mutmut import own_tests_first

    # module names of their own: the real test modules may be imported in this process already
    for name in ("test_other_zz", "test_zebra", "test_zebra_summary", "test_zebras_elsewhere"):
        pytester.makepyfile(**{name: "def test_a():\n    pass\n\ndef test_b():\n    pass\n"})

    class OwnFirst:
        def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
            own_tests_first(items)

    given = [
        "test_other_zz.py::test_a",
        "test_zebras_elsewhere.py::test_a",
        "test_zebra.py::test_b",
        "test_zebra_summary.py::test_a",
        "test_zebra.py::test_a",
    ]

    def order(mutant: str) -> list[str]:
        monkeypatch.setenv("MUTANT_UNDER_TEST", mutant)
        result = pytester.runpytest_inprocess("-p", "no:randomly", "-v", *given, plugins=[OwnFirst()])
        return [line.split(" ")[0] for line in result.outlines if " PASSED" in line]

    assert order("gil.zebra.x_seed_artifacts__mutmut_9") == [
        given[2],
        given[3],
        given[4],
        given[0],
        given[1],
    ]
    assert order("gil.metrics.yak.x_fold_of_cells__mutmut_2") == given  # no test_yak file here
    assert order("stats") == given
