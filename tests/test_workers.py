"""Where seed workers come from (``gil.train.workers``): a fork server, and spawn in a fork."""

from __future__ import annotations

import os

from factories import make_config, make_processed, make_split

from gil.train.parallel import SeedJob, run_seeds_in_processes, seed_jobs

MARKER = "GIL_TEST_FORKED_CHILD"


def _marker_seen(job: SeedJob) -> str:
    """What a worker reads of the marker variable (at module level: workers import it by name)."""
    return os.environ.get(MARKER, "unset")


def test_a_fork_of_a_process_that_ran_workers_still_runs_its_own(tmp_path) -> None:
    """mutmut forks each mutant's test process from one that already ran workers: the fork must run
    its own workers (with its environment), not reuse the parent's fork server."""
    data = make_processed(n_cells=60, n_genes=20)
    config = make_config(train={"seeds": [0, 1], "device": "cpu"}, compute={"jobs": 2})
    jobs = seed_jobs(
        config, [0, 1], data, strategy_name="finetune", split=make_split(data), checkpoints=tmp_path
    )

    def seen() -> list[str]:
        return [result for _, result in run_seeds_in_processes(_marker_seen, jobs, "jobs", False)]

    assert seen() == ["unset", "unset"]  # this process's fork server runs from here on
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        try:
            os.environ[MARKER] = "child"
            os._exit(0 if seen() == ["child", "child"] else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
