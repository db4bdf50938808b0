"""Starting or joining Ray: ``local``, ``auto`` or ``HOST:PORT``, with the project's security defaults.

Why one place: sweeps (``gil sweep --address``) and the benchmark's Ray backend
(``compute.address``) must mean the same by an address and treat token authentication the same way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import ray

from gil.errors import GilError


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Start or join Ray for the block; an already initialised session (tests, notebooks) is reused.

    ``local`` starts Ray on this machine bound to 127.0.0.1 with all its cores, without the
    dashboard; ``auto`` or ``HOST:PORT`` joins a running cluster (``ray start --head``). Ray is
    shut down (left, for a cluster) when the block ends, also on an error or Ctrl-C.
    """
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address == "local":
        # address="local" always starts a new Ray: without it, ray.init joins whatever cluster
        # /tmp/ray/ray_current_cluster names (someone else's, or a dead one).
        ray.init(
            address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1"
        )
    else:
        # Ray 2.60 heads use token auth by default (token in ~/.ray/auth_token), but ray.init with
        # an explicit address only sends it when RAY_AUTH_MODE=token was set before Ray was
        # imported. Ray's own rule for address="auto" fixes that: token mode when RAY_AUTH_MODE
        # is unset and a token exists (a private function; ray is pinned to 2.60.x).
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError) as error:
            raise GilError(
                f"cannot connect to the Ray cluster at {address!r} ({error}); is `ray start "
                f"--head` running there, and is RAY_AUTH_MODE the same as on the head?"
            ) from None
    try:
        yield
    finally:
        ray.shutdown()
