"""How long ``gil`` takes to refuse an MLflow server that does not answer (it should fail fast).

Run: ``.venv/bin/python benchmarks/unreachable_server.py``. Prints the seconds taken by
``check_reachable`` and by ``open_tracker`` on a free (closed) 127.0.0.1 port, best of 3.
"""

from __future__ import annotations

import time

from gil.config import TrackingConfig
from gil.errors import GilError
from gil.tracking.mlflow_tracker import open_tracker
from gil.tracking.server import check_reachable, free_port


def seconds_to_refuse(action) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        try:
            action()
        except GilError:
            best = min(best, time.perf_counter() - started)
        else:
            raise SystemExit("expected a refusal")
    return best


def main() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    print(f"check_reachable: {seconds_to_refuse(lambda: check_reachable(uri)):.3f} s")
    config = TrackingConfig(uri=uri)
    print(f"open_tracker:    {seconds_to_refuse(lambda: open_tracker(config, 'bench')):.3f} s")


if __name__ == "__main__":
    main()
