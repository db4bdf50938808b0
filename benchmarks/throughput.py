"""Training and evaluation throughput of a model preset (what ``gil bench`` prints).

Usage: ``.venv/bin/python benchmarks/throughput.py [--preset bench] [--steps 120] [--json] [--threads N]``
"""

from __future__ import annotations

import argparse

from gil.bench import run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    args = parser.parse_args()
    print(
        run_bench(args.preset, json_out=args.json, steps=args.steps, device=args.device, threads=args.threads)
    )


if __name__ == "__main__":
    main()
