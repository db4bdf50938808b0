"""Summarise a ``mutmut run`` (``make mutants``): kill rate per module, surviving mutants listed.

Run after ``mutmut run`` in the project root: ``.venv/bin/python benchmarks/mutants_report.py``.
Reads ``mutants/**/*.meta`` (mutmut's per-file results). Mutants named in
``benchmarks/mutants_equivalent.txt`` (one ``name  # why`` per line, reviewed by hand: mutants that
change no behaviour) leave the denominator. Kill rate = killed / (killed + survived + no tests);
a mutant no selected test executes counts as surviving.

``--skip-equivalents`` (``make mutants``, between mutmut's first run, which generates the mutants,
and its second) records the reviewed equivalents as skipped (mutmut's exit code 34), so mutmut does
not test them: an equivalent survives by definition, and a survivor runs every test mapped to its
function (30-40 s for an evaluation function). It prints the listed names that no longer exist
(renumbered after an edit): review those again.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "benchmarks" / "mutants_equivalent.txt"
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def equivalent_mutants() -> set[str]:
    if not EQUIVALENT.exists():
        return set()
    lines = (line.split("#")[0].strip() for line in EQUIVALENT.read_text().splitlines())
    return {line for line in lines if line}


def module_of(mutant: str) -> str:
    """``gil.metrics.continual.x_forgetting__mutmut_3`` → ``gil.metrics.continual``."""
    return mutant.split("__mutmut_")[0].rsplit(".", 1)[0]


SKIPPED = 34  # mutmut's exit code for a mutant it does not test


def skip_equivalents(metas: list[Path], equivalent: set[str]) -> int:
    """Mark every listed equivalent that is not tested yet as skipped; report stale names."""
    found: set[str] = set()
    for meta in metas:
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        mine = equivalent & codes.keys()
        found |= mine
        for mutant in mine:
            if codes[mutant] is None:
                codes[mutant] = SKIPPED
        if mine:
            meta.write_text(json.dumps(data, indent=4))
    print(f"{len(found)} reviewed equivalents marked skipped")
    for name in sorted(equivalent - found):
        print(f"not a mutant any more (review it again): {name}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--skip-equivalents", action="store_true", help="mark the reviewed equivalents skipped before testing"
    )
    args = parser.parse_args(argv)
    metas = sorted((ROOT / "mutants").rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 2
    equivalent = equivalent_mutants()
    if args.skip_equivalents:
        return skip_equivalents(metas, equivalent)
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for meta in metas:
        for mutant, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            module = module_of(mutant)
            status = "equivalent" if mutant in equivalent else status_by_exit_code[code]
            counts[module][status] += 1
            if status in {"survived", "no tests"}:
                survivors[module].append(mutant)
    print("| module | mutants | killed | survived | no tests | equivalent | not checked | kill rate |")
    print("|---|---|---|---|---|---|---|---|")
    total: Counter = Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        print(_row(module, c))
    print(_row("**all**", total))
    print()
    for module in sorted(survivors):
        names = ", ".join(name.split(".")[-1] for name in sorted(survivors[module]))
        print(f"Surviving in {module}: {names}")
    return 0


def _row(module: str, c: Counter) -> str:
    killed = sum(c[status] for status in KILLED)
    scored = killed + c["survived"] + c["no tests"]
    rate = f"{100 * killed / scored:.1f} %" if scored else "–"
    return (
        f"| {module} | {sum(c.values())} | {killed} | {c['survived']} | {c['no tests']} | "
        f"{c['equivalent']} | {c['not checked']} | {rate} |"
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
