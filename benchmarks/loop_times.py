"""Where the two loops spend their time: `dvc repro` per stage, and the test suite per file.

Run (from the repository root, on a quiet machine: every other busy process skews both):

    .venv/bin/python benchmarks/loop_times.py pipeline [--force] [--json OUT] [TARGET ...]
    .venv/bin/python benchmarks/loop_times.py tests [--json OUT] [-- PYTEST ARGS ...]
    .venv/bin/python benchmarks/loop_times.py compare BEFORE.json AFTER.json
    .venv/bin/python benchmarks/loop_times.py metrics BEFORE_DIR AFTER_DIR

``pipeline`` runs ``dvc repro`` (``--force``: every stage, as after a code change) and times each stage
from the moment DVC announces it to the next announcement (stages DVC skips take ~0 s). ``tests`` runs
pytest with a JUnit report and sums the test times (setup, call and teardown) per file; fixtures shared
by a session are charged to the first test that asks for them. Both print a table sorted by time and,
with ``--json``, write ``{"kind", "total_s", "items": {name: seconds}}`` that ``compare`` puts side by side.
``metrics`` checks that a speed change changed no result: it compares every number of the ``*.json``
files of two ``metrics/`` folders (two checkouts' pipelines) and exits 1 if one differs; keys that only
one side has (settings a later version echoes) are counted, not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def time_pipeline(targets: list[str], force: bool) -> tuple[float, dict[str, float]]:
    """Wall time of ``dvc repro`` and of each stage it ran, echoing DVC's output as it comes."""
    command = ["dvc", "repro", *(["--force"] if force else []), *targets]
    start = time.perf_counter()
    stages: dict[str, float] = {}
    current, since = "(before the first stage)", start
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            match = STAGE_LINE.match(line)
            if match:
                now = time.perf_counter()
                stages[current] = stages.get(current, 0.0) + now - since
                current, since = match.group(1), now
    end = time.perf_counter()
    stages[current] = stages.get(current, 0.0) + end - since
    if process.returncode:
        sys.exit(f"dvc repro failed (exit {process.returncode}); times above are partial")
    return end - start, stages


def time_tests(pytest_args: list[str], slowest: int = 15) -> tuple[float, dict[str, float]]:
    """Wall time of pytest and the summed time of each test file's tests; prints the ``slowest`` tests."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", f"--junitxml={report}", *pytest_args])
        wall = time.perf_counter() - start
        per_file: Counter[str] = Counter()
        per_test: Counter[str] = Counter()
        for case in ET.parse(report).iter("testcase"):
            module = (case.get("classname") or "?").split(".")
            name = next((part for part in module if part.startswith("test_")), module[-1])
            seconds = float(case.get("time") or 0.0)
            per_file[f"{name}.py"] += seconds
            per_test[f"{name}.py::{case.get('name')}"] += seconds
    if result.returncode:
        print(f"pytest exited {result.returncode}: times below include failing tests", file=sys.stderr)
    print(f"slowest {slowest} tests (setup + call + teardown, s):")
    for test, seconds in per_test.most_common(slowest):
        print(f"{seconds:8.1f}  {test}")
    return wall, dict(per_file)


def table(kind: str, total: float, items: dict[str, float]) -> str:
    lines = [f"| {kind} | seconds | share |", "|---|---|---|"]
    for name, seconds in sorted(items.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {seconds:.1f} | {seconds / total:.0%} |")
    lines.append(f"| **total (wall)** | **{total:.1f}** | |")
    return "\n".join(lines)


def compare(before: dict, after: dict) -> str:
    names = sorted(set(before["items"]) | set(after["items"]), key=lambda n: -before["items"].get(n, 0.0))
    lines = [f"| {before['kind']} | before (s) | after (s) | after / before |", "|---|---|---|---|"]
    for name in [*names, "total"]:
        old = before["total_s"] if name == "total" else before["items"].get(name)
        new = after["total_s"] if name == "total" else after["items"].get(name)
        ratio = f"{new / old:.2f}" if old and new is not None else "–"
        cells = [f"{value:.1f}" if value is not None else "–" for value in (old, new)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines)


def _numbers(value: object, path: str = "") -> dict[str, float]:
    """Every number in a JSON value, by its path (``/key`` and ``[index]``)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(item, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _numbers(item, f"{path}[{i}]").items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {path: float(value)}
    return {}


def compare_metrics(before: Path, after: Path) -> tuple[str, int]:
    """A report of the numbers that differ between the metrics files of two folders, and their count."""
    compared = one_side = 0
    differing: list[str] = []
    missing: list[str] = []
    for old_file in sorted(before.glob("*.json")):
        new_file = after / old_file.name
        if not new_file.exists():
            missing.append(f"{old_file.name}: missing in {after}")
            continue
        old, new = (_numbers(json.loads(f.read_text())) for f in (old_file, new_file))
        one_side += len(old.keys() ^ new.keys())
        for key in sorted(old.keys() & new.keys()):
            compared += 1
            a, b = old[key], new[key]
            if a != b and not (math.isnan(a) and math.isnan(b)):
                differing.append(f"{old_file.name}{key}: {a!r} -> {b!r}")
    lines = [f"{compared - len(differing)} of {compared} numbers identical; {one_side} keys on one side only"]
    return "\n".join(lines + missing + differing), len(missing) + len(differing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pipeline = commands.add_parser("pipeline", help="time `dvc repro` per stage")
    pipeline.add_argument("targets", nargs="*", help="dvc.yaml files or stages (default: dvc.yaml)")
    pipeline.add_argument("--force", action="store_true", help="rerun every stage (dvc repro --force)")
    pipeline.add_argument("--json", type=Path, help="write the figures here")
    tests = commands.add_parser("tests", help="time the test suite per file")
    tests.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: arguments for pytest")
    tests.add_argument("--json", type=Path, help="write the figures here")
    both = commands.add_parser("compare", help="two --json outputs side by side")
    both.add_argument("before", type=Path)
    both.add_argument("after", type=Path)
    metrics = commands.add_parser("metrics", help="are two metrics/ folders' numbers identical?")
    metrics.add_argument("before", type=Path)
    metrics.add_argument("after", type=Path)
    args = parser.parse_args()

    if args.command == "metrics":
        report, n_differing = compare_metrics(args.before, args.after)
        print(report)
        sys.exit(1 if n_differing else 0)

    if args.command == "compare":
        print(compare(json.loads(args.before.read_text()), json.loads(args.after.read_text())))
        return
    if args.command == "pipeline":
        kind, (total, items) = "stage", time_pipeline(args.targets, args.force)
    else:
        kind, (total, items) = "test file", time_tests([a for a in args.pytest_args if a != "--"])
    print(table(kind, total, items))
    if args.json:
        args.json.write_text(json.dumps({"kind": kind, "total_s": total, "items": items}, indent=1) + "\n")


if __name__ == "__main__":
    main()
