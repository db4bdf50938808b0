"""The order in which pytest-xdist hands test files to its workers (``make test``: ``--dist loadfile``).

Why: xdist hands out files with the most tests first, so the few-test end-to-end files, which take
most of the time (``benchmarks/loop_times.py tests`` prints the time per file), came last and one
worker ran the tail alone. Here the files measured heaviest go first, the rest by number of tests as
before, and files that share an expensive session fixture run on the same worker, which builds it
once (each worker has its own session).
"""

from __future__ import annotations

from collections import Counter

from xdist.scheduler import LoadFileScheduling

# The end-to-end files, heaviest first (per-file times of `benchmarks/loop_times.py tests`, quiet,
# 2026-12-03, with the DVC projects' stages served by `gil serve`; test_pipeline.py's worker also
# runs test_notebook.py); a file missing here only loses its place at the front.
HEAVY_FILES = (
    "tests/test_pipeline.py",
    "tests/test_sweep.py",
    "tests/test_cluster.py",
    "tests/test_scgpt.py",
    "tests/test_suite.py",
    "tests/test_ui.py",
    "tests/test_faults.py",
    "tests/test_tracking_pipeline.py",
    "tests/test_soma.py",
    "tests/test_command_server.py",
)

# Files whose tests use the session fixture of another file's: run with that file.
SHARED_WITH = {"tests/test_notebook.py": "tests/test_pipeline.py"}  # dvc_project


class HeaviestFilesFirst(LoadFileScheduling):
    """``--dist loadfile`` with :data:`HEAVY_FILES` first and :data:`SHARED_WITH` files together."""

    def _split_scope(self, nodeid: str) -> str:
        scope = super()._split_scope(nodeid)
        return SHARED_WITH.get(scope, scope)

    def schedule(self) -> None:
        if self.collection is None and self.registered_collections:
            # xdist queues the files in collection order when not reordering by test count.
            sizes = Counter(map(self._split_scope, next(iter(self.registered_collections.values()))))
            rank = {scope: position for position, scope in enumerate(HEAVY_FILES)}

            def turn(nodeid: str) -> tuple[int, int]:
                scope = self._split_scope(nodeid)
                return rank.get(scope, len(rank)), -sizes[scope]

            for node, collection in self.registered_collections.items():
                self.registered_collections[node] = sorted(collection, key=turn)
            self.config.option.loadscopereorder = False
        super().schedule()
