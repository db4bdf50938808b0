"""``gil tune``: every strategy swept with the same budget, the winners written as ``NAME@tuned``.

Why a protocol of its own: a tuned method beside an untuned baseline measures the tuning, not the
method. So every strategy of ``benchmark`` gets the same search (``sweep.num_samples`` trials,
scheduler, objective and sampler seed, each over its own ``sweep.spaces`` entry), every trial starts
from the pipeline's shared base stage and is scored on the split's *validation* cells, and the
chosen values go to a tuned params file (``tuned.path``; the sweep pipeline writes ``reports/tuned.yaml``
and ``make tune`` promotes it),
never into the user's ``params.yaml``. Its ``NAME@tuned`` entries are the strategy's own entry with
the chosen values (``train.*`` values as that entry's ``train`` overrides), so the default pipeline
trains and reports them as rows beside the defaults, on the same seeds and test cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gil.config import TUNED_SUFFIX, Config
from gil.errors import GilError
from gil.files import read_json, write_text
from gil.sweep.space import strategy_entry

REPORT_DIR = Path("reports/sweeps")
_HEADER = """\
# Tuned strategies: written by `gil tune` (or `make tune`: the sweep pipeline, promoted); do not edit.
# Every strategy was swept with the budget below, from the shared base stage, scored on the
# split's validation cells (never the test cells the benchmark reports). params.yaml's `tuned.path`
# names this file; its entries join `strategies`; those named in `tuned.rows` are reported.
"""


def tuned_document(config: Config, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The tuned params file's content from each strategy's sweep report.

    Refuses reports made under different budgets (or not on validation cells): the file's promise
    is one protocol for every row.
    """
    budgets = {name: summary.get("budget") for name, summary in summaries.items()}
    first_name, first = next(iter(budgets.items()))
    for name, summary in summaries.items():
        if summary.get("scored_on") != "validation" or summary.get("interrupted"):
            raise GilError(
                f"{REPORT_DIR / (name + '.json')}: not a finished sweep scored on validation cells; "
                f"rerun `gil sweep -s {name}`"
            )
        if budgets[name] != first:
            raise GilError(
                f"the sweeps of {first_name!r} and {name!r} ran with different budgets; rerun them with the "
                "same sweep settings (`gil tune`)"
            )
        if summary["best"] is None:
            raise GilError(
                f"the sweep of {name!r} has no trial that finished every stage; raise sweep.num_samples "
                "and rerun `gil tune`"
            )
    return {
        "budget": first,
        "sweeps": {
            name: {
                "sweep_name": summary["sweep_name"],
                "trials": summary["n_trials"],
                "complete": summary["n_complete"],
                "stopped_early": summary["n_stopped_early"],
                "failed": summary["n_failed"],
                "wall_s": summary.get("wall_s"),
                "best_trial": summary["best"]["trial_id"],
                "best_score": summary["best"]["metrics"]["score"],
                "base": summary.get("base"),
            }
            for name, summary in summaries.items()
        },
        "strategies": {
            f"{name}{TUNED_SUFFIX}": strategy_entry(config, name, summary["best"]["params"])
            for name, summary in summaries.items()
        },
    }


def collect_tuned(config: Config, strategies: list[str], out: Path, report_dir: Path = REPORT_DIR) -> str:
    """Write the tuned params file from ``<report_dir>/<strategy>.json``; return a one-line summary."""
    if not strategies:
        raise GilError("no strategy to tune: list them in 'benchmark' (or pass --strategy)")
    summaries = {}
    for name in strategies:
        path = report_dir / f"{name}.json"
        if not path.is_file():
            raise GilError(f"{path} not found; run `gil sweep -s {name}` (or `gil tune`) first")
        summaries[name] = read_json(path)
    document = tuned_document(config, summaries)
    write_text(out, _HEADER + yaml.safe_dump(document, sort_keys=False, width=4096))
    return f"wrote {len(strategies)} tuned strategies ({', '.join(document['strategies'])}) to {out}"
