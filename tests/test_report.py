"""Report: PNG figures, the Markdown table and error handling on malformed metrics files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from gil.errors import GilError
from gil.figures import plot_forgetting_curves, plot_probe_accuracy, plot_results_matrix
from gil.files import write_json
from gil.metrics_files import load_metrics
from gil.report import benchmark_table, run_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(strategy: str, kind: str, delta_mean: float, t1_final: float = 0.56) -> dict[str, Any]:
    """A metrics file in the evaluate step's format, two incremental stages, three seeds."""
    matrix = [[0.5, None, None], [0.52, 0.41, None], [0.55, t1_final, 0.40]]
    regression: dict[str, Any] = {
        "matrix": matrix,
        "matrix_std": [[0.01, None, None], [0.02, 0.01, None], [0.02, 0.03, 0.01]],
        "delta": delta_mean,
        "delta_mean": delta_mean,
        "delta_std": 0.01,
        "intransigence": None,
        "intransigence_mean": None,
        "intransigence_std": None,
    }
    for name, value in {"bwt": -0.1, "forgetting": 0.1, "final_mse": 0.5, "plasticity": 0.405}.items():
        regression |= {name: value, f"{name}_mean": value, f"{name}_std": 0.002}
    task = {
        "accuracy": [0.80, 0.90, 0.87],
        "accuracy_std": [0.01, 0.01, 0.02],
        "learned_at": 1,
        "delta": -0.03,
        "delta_mean": -0.03,
        "delta_std": 0.005,
    }
    return {
        "strategy": strategy,
        "kind": kind,
        "gene_sets": ["B", "T1", "T2"],
        "headline": f"{strategy}: Δ {delta_mean:.3f}",
        "evaluation": "masked-value MSE on held-out cells",
        "regression": regression,
        "probe": {"tasks": {"neurons": task}, "delta": -0.03, "delta_mean": -0.03, "delta_std": 0.005},
        "per_seed": {str(seed): {"regression": {"matrix": matrix}} for seed in range(3)},
    }


@pytest.fixture
def metrics_by_strategy() -> dict[str, dict[str, Any]]:
    # Listed out of report order on purpose.
    strategies = [
        _metrics("joint", "joint", 0.01),
        _metrics("ewc", "ewc", 0.2),
        _metrics("replay", "replay", 0.03),
        _metrics("finetune", "finetune", 0.1234, t1_final=0.6),
        _metrics("distill", "distill", 0.1),
    ]
    return {metrics["strategy"]: metrics for metrics in strategies}


def _assert_png(path: Path) -> None:
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_run_report_writes_markdown_and_pngs(tmp_path: Path, metrics_by_strategy) -> None:
    paths = []
    for name, metrics in metrics_by_strategy.items():
        paths.append(tmp_path / "metrics" / f"{name}.json")
        write_json(paths[-1], metrics)
    out_md = tmp_path / "reports" / "benchmark.md"
    plots_dir = tmp_path / "reports" / "plots"

    run_report(paths, out_md, plots_dir)

    expected = [f"R_{name}.png" for name in metrics_by_strategy] + [
        "forgetting_curves.png",
        "probe_accuracy.png",
    ]
    assert sorted(p.name for p in plots_dir.iterdir()) == sorted(expected)  # no temporary files left
    for name in expected:
        _assert_png(plots_dir / name)
    report = out_md.read_text()
    assert report.startswith("# Gene-incremental learning benchmark")
    assert "- Seeds: 3 per strategy" in report
    assert "| finetune | 0.123 ± 0.010 |" in report
    assert "mean ± std over seeds" in report
    for name in expected:
        assert f"(plots/{name})" in report  # links relative to the report


def test_heatmap_with_nan_cells_and_without_std(tmp_path: Path) -> None:
    metrics = _metrics("finetune", "finetune", 0.1)
    metrics["regression"]["matrix"] = [[0.5, float("nan"), None], [0.52, 0.41, None], [0.55, 0.56, 0.40]]
    del metrics["regression"]["matrix_std"]
    path = tmp_path / "R.png"
    plot_results_matrix(metrics, path)
    _assert_png(path)


def test_pngs_are_deterministic(tmp_path: Path) -> None:
    metrics = _metrics("finetune", "finetune", 0.1)
    plot_results_matrix(metrics, tmp_path / "a.png")
    plot_results_matrix(metrics, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_curves_with_three_incremental_stages_and_no_probe(tmp_path: Path) -> None:
    metrics = _metrics("finetune", "finetune", 0.1)
    metrics["gene_sets"] = ["B", "T1", "T2", "T3"]
    metrics["regression"]["matrix"] = [
        [0.6, None, None, None],
        [0.62, 0.5, None, None],
        [0.58, 0.45, 0.42, None],
        [0.66, 0.57, 0.40, 0.30],
    ]
    metrics["regression"]["matrix_std"] = None
    metrics["probe"] = None
    plot_forgetting_curves({"finetune": metrics}, tmp_path / "curves.png")
    plot_probe_accuracy({"finetune": metrics}, tmp_path / "probe.png")
    _assert_png(tmp_path / "curves.png")
    _assert_png(tmp_path / "probe.png")
    assert "| T1: after stage 1 → after stage 3 |" in benchmark_table({"finetune": metrics})


def test_table_numbers_and_row_order(metrics_by_strategy) -> None:
    table = benchmark_table(metrics_by_strategy)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == (
        "| strategy | Δ (mean ± std) | forgetting | BWT | final MSE | plasticity (new-gene MSE) "
        "| new-set skill | final skill | intransigence vs joint | T1: after stage 1 → after stage 2 | steps "
        "| probe Δ (± std; se) |"
    )
    # Baseline first, then methods by increasing Δ, the joint oracle last.
    assert [row.split(" | ")[0][2:] for row in rows[1:]] == ["finetune", "replay", "distill", "ewc", "joint"]
    assert rows[1] == (
        "| finetune | 0.123 ± 0.010 | 0.100 ± 0.002 | -0.100 ± 0.002 | 0.500 ± 0.002 | 0.405 ± 0.002 "
        "| – | – | – | 0.410 → 0.600 | – | -0.030 ± 0.005 |"
    )
    legend = table.split("\n\n", 1)[1]
    assert "mean ± std over seeds" in legend
    assert "- BWT = loss right after learning − final loss" in legend and "(negative = forgetting)" in legend


def test_table_shows_missing_values_and_means_without_std(metrics_by_strategy) -> None:
    metrics = metrics_by_strategy["replay"]
    metrics["regression"]["delta_mean"] = None
    metrics["regression"]["delta"] = None
    del metrics["regression"]["bwt_std"]
    metrics["probe"] = None
    row = next(line for line in benchmark_table({"replay": metrics}).splitlines() if "| replay |" in line)
    assert row.startswith("| replay | – | 0.100 ± 0.002 | -0.100 | ")
    assert row.endswith("| – |")


def test_input_is_not_mutated(tmp_path: Path, metrics_by_strategy) -> None:
    before = copy.deepcopy(metrics_by_strategy)
    benchmark_table(metrics_by_strategy)
    plot_forgetting_curves(metrics_by_strategy, tmp_path / "curves.png")
    assert metrics_by_strategy == before


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("regression"), "missing 'regression.matrix'"),
        (lambda m: m["regression"].update(matrix=[[0.5, None], [0.5, 0.4]]), "is 2x2 but there are 3"),
        (lambda m: m["regression"]["matrix"][0].__setitem__(1, 0.3), r"regression.matrix\[0\]\[1\]"),
        (lambda m: m["regression"]["matrix"][2].__setitem__(2, None), "must be finite"),
        (lambda m: m.update(strategy="../evil"), "'strategy' must be letters, digits"),
        (lambda m: m.update(strategy="replay@other"), "'strategy' must be letters, digits"),
        (lambda m: m.update(gene_sets="B,T1,T2"), "'gene_sets' must list"),
        (lambda m: m["probe"]["tasks"]["neurons"].update(accuracy=[0.8]), "one value per stage"),
        (lambda m: m["probe"]["tasks"]["neurons"].update(learned_at=5), "learned_at"),
        (lambda m: m.update(probe={"delta": 0.1}), "'probe' must be null or an object"),
    ],
)
def test_malformed_metrics_raise_gil_error(tmp_path: Path, edit, message) -> None:
    metrics = _metrics("finetune", "finetune", 0.1)
    edit(metrics)
    path = _write(tmp_path / "finetune.json", json.dumps(metrics))
    with pytest.raises(GilError, match=message) as raised:
        run_report([path], tmp_path / "report.md", tmp_path / "plots")
    assert str(path) in str(raised.value)
    assert not (tmp_path / "report.md").exists()


def test_unreadable_missing_duplicate_and_inconsistent_files(tmp_path: Path) -> None:
    with pytest.raises(GilError, match="no metrics files found"):
        run_report([], tmp_path / "report.md", tmp_path / "plots")
    with pytest.raises(GilError, match="not found"):
        load_metrics([tmp_path / "absent.json"])
    with pytest.raises(GilError, match="not a readable JSON"):
        load_metrics([_write(tmp_path / "bad.json", "{not json")])
    with pytest.raises(GilError, match="expected a JSON object"):
        load_metrics([_write(tmp_path / "list.json", "[1, 2]")])
    finetune = _write(tmp_path / "a.json", json.dumps(_metrics("finetune", "finetune", 0.1)))
    with pytest.raises(GilError, match="more than one metrics file"):
        load_metrics([finetune, _write(tmp_path / "b.json", json.dumps(_metrics("finetune", "x", 0.1)))])
    other_split = _metrics("replay", "replay", 0.1)
    other_split["gene_sets"] = ["B", "X1", "X2"]
    with pytest.raises(GilError, match="different gene sets"):
        load_metrics([finetune, _write(tmp_path / "c.json", json.dumps(other_split))])


def test_intransigence_is_computed_against_the_joint_run_seed_by_seed() -> None:
    from gil.report import with_intransigence

    def metrics(kind: str, matrices: dict[str, list]) -> dict:
        return {
            "strategy": kind,
            "kind": kind,
            "regression": {"intransigence": None},
            "per_seed": {seed: {"regression": {"matrix": m}} for seed, m in matrices.items()},
        }

    nan = None
    joint = metrics(
        "joint",
        {
            "0": [[0.5, nan, nan], [0.5, 0.4, nan], [0.5, 0.4, 0.3]],
            "1": [[0.5, nan, nan], [0.5, 0.2, nan], [0.5, 0.4, 0.3]],
        },
    )
    finetune = metrics(
        "finetune",
        {
            "0": [[0.5, nan, nan], [0.5, 0.6, nan], [0.5, 0.9, 0.5]],
            "1": [[0.5, nan, nan], [0.5, 0.6, nan], [0.5, 0.9, 0.3]],
        },
    )
    # seed 0: mean(0.6-0.4, 0.5-0.3) = 0.2; seed 1: mean(0.6-0.2, 0.3-0.3) = 0.2
    result = with_intransigence({"joint": joint, "finetune": finetune})
    assert result["finetune"]["regression"]["intransigence_mean"] == pytest.approx(0.2)
    assert result["finetune"]["regression"]["intransigence_std"] == pytest.approx(0.0)
    assert result["joint"]["regression"]["intransigence_mean"] == pytest.approx(0.0)
    assert finetune["regression"]["intransigence"] is None  # input untouched


# ----------------------------------------------------------------------------------------------------
# Paired differences to finetune


def _seeded(strategy: str, kind: str, values: dict[str, list[float]]) -> dict[str, Any]:
    """:func:`_metrics` with per-seed summaries: ``values`` maps ``regression.<key>`` or ``probe.delta``
    to one value per seed "0", "1", "2"."""
    metrics = _metrics(strategy, kind, 0.1)
    for seed, summary in metrics["per_seed"].items():
        summary["probe"] = {"delta": values["probe.delta"][int(seed)]}
        summary["regression"] |= {
            key.removeprefix("regression."): column[int(seed)]
            for key, column in values.items()
            if key.startswith("regression.")
        }
    return metrics


FINETUNE_SEEDS = {
    "regression.delta": [0.30, 0.50, 0.40],
    "regression.final_mse": [1.00, 1.10, 1.20],
    "regression.plasticity": [0.40, 0.42, 0.44],
    "probe.delta": [-0.10, -0.20, -0.15],
}
REPLAY_SEEDS = {
    "regression.delta": [0.10, 0.20, 0.15],  # diffs −0.20, −0.30, −0.25: mean −0.25, sd 0.05
    "regression.final_mse": [1.05, 1.10, 1.30],  # diffs 0.05, 0, 0.10: mean 0.05, sd 0.05
    "regression.plasticity": [0.40, 0.42, 0.44],  # identical: exactly 0
    "probe.delta": [-0.05, -0.10, -0.05],  # diffs 0.05, 0.10, 0.10: mean 0.0833, sd 0.0289
}


def test_paired_section_and_json_by_hand(tmp_path: Path) -> None:
    documents = [_seeded("finetune", "finetune", FINETUNE_SEEDS), _seeded("replay", "replay", REPLAY_SEEDS)]
    paths = [tmp_path / f"{m['strategy']}.json" for m in documents]
    for path, metrics in zip(paths, documents, strict=True):
        write_json(path, metrics)
    out_md = tmp_path / "reports" / "benchmark.md"
    run_report(paths, out_md, tmp_path / "plots")

    # half-widths t(0.975, 2) · sd / √3 with t = 4.302653: sd 0.05 → 0.124207; sd 0.028868 → 0.071714
    report = out_md.read_text()
    section = report.split("## Paired differences to fine-tuning (95 % t interval over seeds)\n\n")[1]
    rows = section.split("\n\n")[0].splitlines()
    assert rows[0] == "| strategy | paired seeds | Δ | final MSE | new-gene MSE | probe Δ | verdict on Δ |"
    assert rows[2:] == [
        "| replay | 3 | −0.250 [−0.374, −0.126] | +0.050 [−0.074, +0.174] | +0.000 [+0.000, +0.000] "
        "| +0.083 [+0.012, +0.155] | resolved: lower than finetune |"
    ]
    paired = json.loads((tmp_path / "reports" / "benchmark_paired.json").read_text())
    assert paired["reference"] == "finetune" and paired["confidence"] == 0.95
    delta = paired["strategies"]["replay"]["delta"]
    assert delta["n"] == 3 and delta["verdict"] == "resolved: lower than finetune"
    assert (delta["mean"], delta["low"], delta["high"]) == pytest.approx(
        (-0.25, -0.374207, -0.125793), abs=1e-6
    )
    assert paired["strategies"]["replay"]["new_gene_mse"] == {
        "mean": 0.0,
        "low": 0.0,
        "high": 0.0,
        "n": 3,
        "verdict": "unresolved",
    }
    assert set(paired["strategies"]) == {"replay"}  # no row for the reference itself


def test_paired_section_pairs_by_seed_and_skips_what_is_missing() -> None:
    from gil.report import paired_document, paired_table

    finetune = _seeded("finetune", "finetune", FINETUNE_SEEDS)
    replay = _seeded("replay", "replay", REPLAY_SEEDS)
    names = ["finetune", "replay"]
    before = paired_table({"finetune": finetune, "replay": replay}, names)
    # Seeds listed in another order: the same pairs, the same table.
    per_seed = replay["per_seed"]
    replay["per_seed"] = dict(reversed(per_seed.items()))
    assert paired_table({"finetune": finetune, "replay": replay}, names) == before
    # The same per-seed values under other seed names: the pairs change, so does the interval.
    replay["per_seed"] = {"0": per_seed["1"], "1": per_seed["2"], "2": per_seed["0"]}
    after = paired_table({"finetune": finetune, "replay": replay}, names)
    assert before != after
    # A quantity no run has (null Δ, no probe) gives no column, not an error.
    for summary in [*finetune["per_seed"].values(), *replay["per_seed"].values()]:
        summary["regression"]["delta"] = None
        del summary["probe"]
    table = paired_table({"finetune": finetune, "replay": replay}, names)
    assert table.splitlines()[0] == "| strategy | paired seeds | final MSE | new-gene MSE | verdict on Δ |"
    assert table.splitlines()[2].endswith("| – |")
    assert set(paired_document({"finetune": finetune, "replay": replay})["strategies"]["replay"]) == {
        "final_mse",
        "new_gene_mse",
    }


def test_paired_section_without_finetune_is_one_line(tmp_path: Path) -> None:
    replay = _seeded("replay", "replay", REPLAY_SEEDS)
    path = tmp_path / "replay.json"
    write_json(path, replay)
    run_report([path], tmp_path / "benchmark.md", tmp_path / "plots")
    report = (tmp_path / "benchmark.md").read_text()
    section = report.split("(95 % t interval over seeds)\n\n")[1].split("\n\n")[0]
    assert section == "No `finetune` run among the strategies: nothing to pair the others with."
    paired = json.loads((tmp_path / "benchmark_paired.json").read_text())
    assert paired["reference_present"] is False and paired["strategies"] == {}


def test_own_genes_probe_rows_and_the_controls_section_by_hand(tmp_path: Path, metrics_by_strategy) -> None:
    from gil.report import OWN_GENES_LABEL, controls_table, probe_table

    finetune = metrics_by_strategy["finetune"]
    finetune["probe"]["tasks"]["neurons"]["own_genes"] = {
        "accuracy": [None, 0.7, 0.5],
        "accuracy_std": [None, 0.02, 0.04],
        "delta": -0.2,
        "delta_se": 0.03,
    }
    finetune["reference"] = {
        "probe": {
            "neurons": {
                "majority_rate": 0.4,
                "raw_accuracy": [0.8, 0.85, 0.9],
                "own_genes_raw_accuracy": [None, 0.75, 0.75],
            }
        }
    }
    table = probe_table(metrics_by_strategy, ["finetune", "replay"])
    assert (
        f"| neurons | finetune, {OWN_GENES_LABEL} | – | 0.700 ± 0.020 | 0.500 ± 0.040 | -0.200 ± 0.030 |"
        in table
    )
    assert f"| neurons | raw-expression probe, {OWN_GENES_LABEL} | – | 0.750 | 0.750 |  |" in table
    assert f"replay, {OWN_GENES_LABEL}" not in table  # a run without the probe gets no row
    controls = {
        "strategy": "finetune",
        "forgotten_sets": ["T1"],
        **{
            f"delta_{n}": v
            for n, v in {
                "intact": 0.2,
                "redrawn": 1.5,
                "collapsed": 0.9,
                "erased": 1.7,
                "negative": 0.0,
            }.items()
        },
        **{
            f"delta_{n}_std": v
            for n, v in {"intact": 0.05, "redrawn": 0.1, "collapsed": 0.2, "negative": 0.0}.items()
        },
        "probe": {
            "neurons": {
                "majority_rate": 0.4,
                "intact_accuracy": 0.6,
                "intact_accuracy_std": 0.01,
                "redrawn_accuracy": 0.58,
                "redrawn_delta": -0.02,
                "collapsed_accuracy": 0.45,
                "collapsed_delta": -0.15,
                "collapsed_delta_std": 0.02,
                "erased_accuracy": 0.42,
                "erased_delta": -0.18,
                "negative_accuracy": 0.6,
                "negative_delta": 0.0,
            }
        },
    }
    from gil.report import probe_judgement

    judged = probe_judgement(metrics_by_strategy, ["finetune"])
    assert (
        "neurons: finetune's probe on task genes only after stage 1: 0.700 (majority 0.400): judgeable"
        in judged
    )
    finetune["probe"]["tasks"]["neurons"]["own_genes"]["accuracy"][1] = 0.5
    assert "**cannot be judged at this scale**" in probe_judgement(metrics_by_strategy, ["finetune"])
    table = controls_table(controls)
    assert "| finetune, final model | 0.200 ± 0.050 | 0.600 ± 0.010 | – |" in table
    assert "| positive control: rows of T1 redrawn | 1.500 ± 0.100 | 0.580 | -0.020 |" in table
    assert (
        "| positive control: rows of T1 collapsed to their mean | 0.900 ± 0.200 | 0.450 | -0.150 ± 0.020 |"
        in table
    )
    erased = "| positive control: rows of T1 erased (all one fresh random row) | 1.700 | 0.420 | -0.180 |"
    assert erased in table
    assert table.index("to their mean") < table.index("erased (all") < table.index("negative control")
    assert "| negative control: the same model twice | 0.000 ± 0.000 | 0.600 | 0.000 |" in table
    paths = []
    for name, metrics in metrics_by_strategy.items():
        paths.append(tmp_path / f"{name}.json")
        write_json(paths[-1], metrics)
    write_json(tmp_path / "controls.json", controls)
    run_report(paths, tmp_path / "report.md", tmp_path / "plots", controls=tmp_path / "controls.json")
    text = (tmp_path / "report.md").read_text()
    assert "## Controls" in text and "positive control: rows of T1 redrawn" in text


def _delta_metrics(per_seed: list[float]) -> dict:
    mean = sum(per_seed) / len(per_seed)
    return {
        "regression": {"delta_mean": mean, "delta_std": 0.0},
        "per_seed": {str(seed): {"regression": {"delta": value}} for seed, value in enumerate(per_seed)},
    }


def test_tuned_rows_are_paired_with_their_defaults_and_ranked_both_ways() -> None:
    """Hand-computed: A's tuned − default per seed is (−0.2, −0.1, −0.15): mean −0.15, sd 0.05,
    half-width t(0.975, 2) · 0.05 / √3 = 4.3027 · 0.028868 = 0.12421; finetune's is +0.1 on every
    seed. At equal tuning A@tuned − finetune@tuned = (0.1, 0.1, 0.1) − (0.2, 0.2, 0.2) = −0.1 on
    every seed. At defaults finetune (0.10) < A (0.25); tuned A (0.10) < finetune (0.20)."""
    from gil.tuned_report import tuned_document, tuned_section

    metrics = {
        "A": _delta_metrics([0.3, 0.2, 0.25]),
        "finetune": _delta_metrics([0.1, 0.1, 0.1]),
        "A@tuned": _delta_metrics([0.1, 0.1, 0.1]),
        "finetune@tuned": _delta_metrics([0.2, 0.2, 0.2]),
    }
    names = list(metrics)
    document = tuned_document(metrics, names)
    assert set(document) == {"A@tuned", "finetune@tuned"}
    a = document["A@tuned"]
    assert a["mean"] == pytest.approx(-0.15) and a["n"] == 3
    assert a["low"] == pytest.approx(-0.15 - 0.12421, abs=1e-5) and a["high"] == pytest.approx(
        -0.02579, abs=1e-5
    )
    assert a["verdict"] == "resolved: lower than A"
    assert a["vs_tuned_reference"]["mean"] == pytest.approx(-0.1)
    assert a["vs_tuned_reference"]["verdict"] == "resolved: lower than finetune@tuned"
    assert document["finetune@tuned"]["verdict"] == "resolved: higher than finetune"
    assert "vs_tuned_reference" not in document["finetune@tuned"]
    section = tuned_section(metrics, names)
    assert (
        "| A | 0.250 ± 0.000 | 0.100 ± 0.000 | −0.150 [−0.274, −0.026] | resolved: lower than A "
        "| −0.100 [−0.100, −0.100] | resolved: lower than finetune@tuned | 2 → 1 |"
    ) in section
    assert (
        "| finetune | 0.100 ± 0.000 | 0.200 ± 0.000 | +0.100 [+0.100, +0.100] | resolved: higher than "
        "finetune | (reference) | – | 1 → 2 |"
    ) in section
    assert "at defaults finetune < A; tuned A < finetune: a different order" in section
    assert tuned_section({"A": metrics["A"]}, ["A"]) == ""  # no tuned row, no section
