"""Summarise a ``mutmut run`` (``make mutants``): kill rate per module, surviving mutants listed.

Run after ``mutmut run`` in the project root: ``.venv/bin/python benchmarks/mutants_report.py``.
Reads ``mutants/**/*.meta`` (mutmut's per-file results). Mutants named in
``benchmarks/mutants_equivalent.txt`` (one ``name  # why`` per line, reviewed by hand: mutants that
change no behaviour) leave the denominator. Kill rate = killed / (killed + survived + no tests);
a mutant no selected test executes counts as surviving.
"""

from __future__ import annotations

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


def main() -> int:
    metas = sorted((ROOT / "mutants").rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 2
    equivalent = equivalent_mutants()
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
    raise SystemExit(main())
