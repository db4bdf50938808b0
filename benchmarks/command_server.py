"""Fresh against served: single pipeline stages as fresh ``gil`` processes and through ``gil serve``.

Run from a repository whose pipeline has run once (``make run``), on a quiet machine:

    .venv/bin/python benchmarks/command_server.py [STAGE ...]

Each stage is rerun with ``dvc repro --force --single-item STAGE``, first as DVC starts it (a fresh
``gil`` process), then with ``GIL_COMMAND_SERVER`` naming a ``gil serve`` this script starts. Prints
the seconds of each and whether the stage's outputs came out the same (the md5s DVC records in
``dvc.lock``; checkpoints are left out: they record wall-clock timings). The reruns leave the outputs
as they were, except the checkpoints' timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

DEFAULT_STAGES = (
    "prepare",
    "split",
    "reference",
    "train@finetune",
    "evaluate@finetune",
    "controls",
    "report",
    "leaderboard",
)


def rerun(stage: str, environment: dict[str, str]) -> tuple[float, dict[str, str]]:
    """Seconds of ``dvc repro -f -s STAGE`` and the md5 of each output DVC then records (no checkpoints)."""
    start = time.perf_counter()
    subprocess.run(
        ["dvc", "repro", "--force", "--single-item", stage], env=environment, check=True, capture_output=True
    )
    seconds = time.perf_counter() - start
    record = yaml.safe_load(Path("dvc.lock").read_text())["stages"][stage]
    outputs = {
        out["path"]: out["md5"] for out in record.get("outs", []) if not out["path"].startswith("checkpoints")
    }
    return seconds, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="*", default=list(DEFAULT_STAGES))
    stages = parser.parse_args().stages
    fresh_env = {key: value for key, value in os.environ.items() if key != "GIL_COMMAND_SERVER"}
    folder = Path(tempfile.mkdtemp(prefix="gil-bench-serve-"))
    socket = folder / "gil.sock"
    with (folder / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gil.cli", "serve", "--socket", str(socket)], env=fresh_env, stderr=log
        )
    try:
        while not socket.exists():
            if server.poll() is not None:
                sys.exit(f"gil serve failed:\n{(folder / 'serve.log').read_text()}")
            time.sleep(0.1)
        served_env = {**fresh_env, "GIL_COMMAND_SERVER": str(socket)}
        print("| stage | fresh (s) | served (s) | saved (s) | same outputs |\n|---|---|---|---|---|")
        totals = [0.0, 0.0]
        for stage in stages:
            fresh, fresh_outputs = rerun(stage, fresh_env)
            served, served_outputs = rerun(stage, served_env)
            totals[0] += fresh
            totals[1] += served
            same = "yes" if fresh_outputs == served_outputs else "NO"
            print(f"| {stage} | {fresh:.1f} | {served:.1f} | {fresh - served:.1f} | {same} |", flush=True)
        print(
            f"| **total** | **{totals[0]:.1f}** | **{totals[1]:.1f}** | **{totals[0] - totals[1]:.1f}** | |"
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    declined = [line for line in (folder / "serve.log").read_text().splitlines() if "declined" in line]
    if declined:
        print("\nThe server declined (those stages ran fresh both times):\n" + "\n".join(declined))


if __name__ == "__main__":
    main()
