"""Where seed workers come from: a fork server that imported the workers' module once.

Why: a spawned worker imports torch, scikit-learn and gil again, ~5 s of CPU each (measured with
``python -X importtime``), three at once on 2 cores, in every training and evaluation command.
Forked from a server that imported them once, workers start at once. The server is a fresh process
that only imported modules (no OpenMP pool runs there, so forking it cannot deadlock, unlike a fork
of the command's own process). Where there is no fork server (Windows), workers are spawned.

Standard library only, so that a command can start the server before its own heavy imports.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext

# The process whose fork server this module uses (None: none started yet).
_server_owner: int | None = None


def worker_context(module: str) -> BaseContext:
    """The multiprocessing context of workers running code of ``module`` (imported by the server).

    The module only takes effect when this call starts the server: a running one keeps what it
    imported, and a worker imports anything else it needs itself.

    A fork of a process whose server runs (mutmut forks each mutant's test process from one that
    ran the tests once) spawns its workers: multiprocessing would reuse the parent's server, whose
    workers carry the parent's environment (not the mutant's), and on Python 3.11 its liveness
    check fails there with ``ChildProcessError``.
    """
    global _server_owner
    if _server_owner is None:
        _server_owner = os.getpid()
    if "forkserver" not in multiprocessing.get_all_start_methods() or _server_owner != os.getpid():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([module])
    return context


def start_worker_server(module: str) -> None:
    """Start the fork server now, importing ``module`` on another core while the command does its
    own imports, instead of after them (~5 s less per command on 2 cores)."""
    if worker_context(module).get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
