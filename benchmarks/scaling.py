"""Peak RSS of ``gil prepare`` and of training on 50k vs 200k synthetic cells (20k genes, ~1,000 per cell).

Usage: ``.venv/bin/python benchmarks/scaling.py [--json]``. Needs ~4 GB of free disk in the temp directory.
"""

from __future__ import annotations

import argparse

from gil.bench import run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    args = parser.parse_args()
    print(run_bench(json_out=args.json, scaling=True))


if __name__ == "__main__":
    main()
