"""Run ``gil`` commands in forks of one process that imported the heavy libraries once.

Why: every stage of a pipeline is a fresh ``gil`` process that imports torch, MLflow, scikit-learn
and gil and loads what torch and MLflow load on first use, 5–7 s of CPU, before work that takes
under a second on a small dataset (a tiny ``gil leaderboard`` took 7.3 s fresh and 0.5 s forked).
``gil serve --socket PATH`` does those imports once and forks a child per command; a ``gil``
started with ``GIL_COMMAND_SERVER=PATH`` in its environment hands the server its arguments,
working directory, environment and standard streams, and ends as the child ends.

A served command gets what a fresh process gets: the client's argv, working directory and
environment (``os.environ`` is replaced before the command runs), its stdin, stdout and stderr (the
file descriptors themselves, passed over the socket), fresh random seeds, and signals (the client
forwards SIGINT, SIGTERM and SIGHUP to the command's process group; killing the client kills the
group). The client exits with the command's status, or dies of the signal that killed it.

What a fork cannot get is what libraries read from the environment while they were imported
(thread counts of OpenMP and BLAS, ``TQDM_*``, ``PYTHON*``, ...). So the server runs a command
only when the variables of :data:`IMPORT_TIME_PREFIXES` equal its own, the client runs the same
Python, and gil's source files are unchanged since the server started; otherwise it declines, with
a line in its own log, and the client runs the command itself, as without a server.

Standard library only: the client side runs before the command's own imports.
"""

from __future__ import annotations

import gc
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ENV_VAR = "GIL_COMMAND_SERVER"

# Environment variables that libraries read when imported (the server's values stick in its forks).
IMPORT_TIME_PREFIXES = (
    "CUDA_",
    "GOTO",
    "KMP_",
    "LD_",
    "MKL_",
    "OMP_",
    "OPENBLAS_",
    "PYTHON",
    "PYTORCH_",
    "TORCH",
    "TQDM_",
)
# ... except these, which are read each time they are used.
READ_WHEN_USED = frozenset(
    {
        "PYTHONBREAKPOINT",  # set by ray.init in the driver's environment
        "TORCHINDUCTOR_CACHE_DIR",  # set by torch's compiler when it first compiles
    }
)

# What the server imports before serving: the heavy libraries and the modules of every command.
PRELOAD = (
    "torch",
    "torch._dynamo",  # imported by the first torch optimizer: ~1.3 s in every training command
    "sklearn.linear_model",
    "anndata",
    "matplotlib.figure",
    "gil.cli",
    "gil.data.prepare",
    "gil.train.loop",
    "gil.evaluate",
    "gil.controls",
    "gil.report",
    "gil.tracking.mlflow_tracker",
    "gil.tracking.leaderboard",
)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def import_time_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environment`` that imports may have read (:data:`IMPORT_TIME_PREFIXES`)."""
    return {
        key: value
        for key, value in environment.items()
        if key.startswith(IMPORT_TIME_PREFIXES) and key not in READ_WHEN_USED
    }


def source_stamp() -> dict[str, int]:
    """Modification time of each of gil's source files: a changed one makes the server's imports stale."""
    package = Path(__file__).parent
    return {str(path): path.stat().st_mtime_ns for path in sorted(package.rglob("*.py"))}


# ---------------------------------------------------------------------------------------------------
# The client: the ``gil`` entry point when GIL_COMMAND_SERVER is set


def run_served(argv: list[str]) -> int | None:
    """Run the command ``argv`` on the server that ``GIL_COMMAND_SERVER`` names and return its exit
    status (a command killed by a signal kills this process with it). ``None`` when no server runs
    it (none named, none listening, or it declined): the caller runs the command itself."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "python": sys.executable}
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        socket.send_fds(connection, [b"R"], [0, 1, 2])
        connection.sendall(json.dumps(request).encode() + b"\n")
        replies = connection.makefile("rb")
        started = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        connection.close()
        return None
    if "pgid" not in started:
        connection.close()
        return None
    with _signals_forwarded_to(started["pgid"]):
        ended = replies.readline()
    connection.close()
    if not ended:
        sys.stderr.write(
            f"error: the gil command server at {path} stopped before the command ended; "
            f"run the command again (unset {ENV_VAR} to run commands without a server)\n"
        )
        return 1
    outcome = json.loads(ended)
    if "signal" in outcome:  # die as a fresh process would have died
        signal.signal(outcome["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), outcome["signal"])
    return int(outcome["exit"])


class _signals_forwarded_to:
    """Within the block, SIGINT, SIGTERM and SIGHUP received here go to process group ``pgid``."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.previous: dict[int, object] = {}

    def _forward(self, number: int, _frame: object) -> None:
        try:
            os.killpg(self.pgid, number)
        except ProcessLookupError:
            pass  # the command has just ended

    def __enter__(self) -> None:
        for number in FORWARDED_SIGNALS:
            self.previous[number] = signal.signal(number, self._forward)

    def __exit__(self, *_exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# The server: ``gil serve``


def preload(log: Callable[[str], None]) -> None:
    """Import :data:`PRELOAD`, the strategies and what MLflow imports on first use; a module that
    fails to import is left to the commands."""
    import importlib

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - an optional library may be missing: not fatal
            log(f"not preloaded: {module} ({type(error).__name__}: {error})")
    from gil.strategies import registry
    from gil.tracking.mlflow_tracker import import_lazy_parts

    registry()
    import_lazy_parts()
    gc.freeze()  # forks neither scan nor copy what the server imported when they collect


def decline_reason(
    request: Mapping, own_environment: Mapping[str, str], stamp: Mapping[str, int]
) -> str | None:
    """Why a fork of this server would not run ``request`` as a fresh process would; ``None`` if it would."""
    if request["python"] != sys.executable:
        return f"the client runs {request['python']}, the server {sys.executable}"
    theirs = import_time_environment(request["env"])
    if theirs != own_environment:
        names = sorted(set(theirs.items()) ^ set(own_environment.items()))
        return (
            f"environment variable {names[0][0]} differs from the server's (read when libraries are imported)"
        )
    if source_stamp() != stamp:
        return "gil's source changed since the server started; restart it"
    return None


class CommandServer:
    """Accepts commands on a Unix socket and runs each in a fork; see the module's docstring."""

    def __init__(
        self, path: Path, run: Callable[[], None], log: Callable[[str], None], environment: Mapping[str, str]
    ) -> None:
        """``environment``: the server's environment before it preloaded (imports may add variables,
        e.g. ``KMP_DUPLICATE_LIB_OK``; a command gets those unless its client sets them itself)."""
        self.path, self.run, self.log = path, run, log
        self.owner = os.getpid()
        self.environment_before = dict(environment)
        self.environment = import_time_environment(environment)
        self.set_by_imports = {key: value for key, value in os.environ.items() if key not in environment}
        self.wrapped: int | None = None  # pid of the command `gil serve -- COMMAND` runs
        self.wrapped_status = 0
        self.stamp = source_stamp()
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.children: dict[int, tuple[socket.socket, str, float]] = {}  # pid: (client, command, start)
        self.stopping = False

    def serve_forever(self, wrapped: list[str] | None = None) -> int:
        """Serve until SIGTERM or SIGINT, or, given ``wrapped``, while that command runs with
        ``GIL_COMMAND_SERVER`` set (Ctrl-C is then the command's to handle, not the server's); then
        kill the commands still running and remove the socket. The wrapped command's exit status
        (128 + N for a command killed by signal N), else 0."""
        previous_mask = os.umask(0o177)  # the socket is the owner's only
        try:
            self.listener.bind(str(self.path))
        finally:
            os.umask(previous_mask)
        self.listener.listen()
        self.selector.register(self.listener, selectors.EVENT_READ)
        if wrapped is not None:
            self.wrapped = _spawn(wrapped, {**self.environment_before, ENV_VAR: str(self.path)})
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop if wrapped is None else _ignore)
        self.log(f"ready on {self.path}: a gil started with {ENV_VAR}={self.path} runs here")
        try:
            while not self.stopping:
                for key, _ in self.selector.select(timeout=0.05):
                    try:
                        if key.fileobj is self.listener:
                            self._accept()
                        else:
                            self._client_event(key.data)
                    except OSError as error:  # one client's broken connection must not end the server
                        self.log(f"connection error: {error}")
                self._reap()
        finally:
            if os.getpid() == self.owner:  # a command's fork unwinds through here too
                for pid in list(self.children):
                    _kill_group(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                if self.wrapped is not None:
                    os.kill(self.wrapped, signal.SIGTERM)
                self.path.unlink(missing_ok=True)
        return self.wrapped_status

    def _stop(self, _number: int, _frame: object) -> None:
        self.stopping = True

    def _accept(self) -> None:
        connection, _ = self.listener.accept()
        try:
            request, fds = self._read_request(connection)
        except (OSError, ValueError) as error:
            self.log(f"bad request: {error}")
            connection.close()
            return
        command = " ".join(["gil", *request["argv"][1:]])
        reason = decline_reason(request, self.environment, self.stamp)
        if reason is not None:
            self.log(f"declined {command!r}: {reason}")
            for fd in fds:
                os.close(fd)
            connection.sendall(b'{"declined": true}\n')
            connection.close()
            return
        pid = os.fork()
        if pid == 0:
            self._become_command(request, fds, connection)
        for fd in fds:
            os.close(fd)
        _set_group(pid)
        self.children[pid] = (connection, f"{command!r} (pid {pid})", time.perf_counter())
        self.selector.register(connection, selectors.EVENT_READ, pid)
        try:
            connection.sendall(json.dumps({"pgid": pid}).encode() + b"\n")
        except OSError:
            pass  # the client is gone already: the selector reports its end next
        self.log(f"running {command!r} (pid {pid})")

    def _read_request(self, connection: socket.socket) -> tuple[dict, list[int]]:
        if hasattr(socket, "SO_PEERCRED"):  # Linux: only the server's user may run commands
            credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", credentials)[1] != os.getuid():
                raise ValueError("a client of another user")
        header, fds, _, _ = socket.recv_fds(connection, 1, 3)
        if header != b"R" or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise ValueError("not a gil client")
        line = connection.makefile("rb").readline()
        return json.loads(line), fds

    def _become_command(self, request: dict, fds: list[int], connection: socket.socket) -> None:
        """In the fork: drop the server's state, take the client's streams, place and environment,
        run the command, and exit (:func:`_exit_without_teardown`)."""
        _set_group(0)
        self.selector.close()
        self.listener.close()
        connection.close()
        for client, _, _ in self.children.values():
            client.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=stream.isatty() or stream is sys.stderr)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**self.set_by_imports, **request["env"]})
        sys.argv = request["argv"]
        _reseed()
        code: object = 0
        try:
            self.run()
        except SystemExit as exit_:
            code = exit_.code
        _exit_without_teardown(code)

    def _client_event(self, pid: int) -> None:
        connection, command, _ = self.children[pid]
        try:
            data = connection.recv(1)
        except OSError:
            data = b""
        if not data:  # the client is gone (killed): so goes its command, as a fresh process would
            self.log(f"client of {command} ended; killing the command")
            self.selector.unregister(connection)
            _kill_group(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self.children or self.wrapped is not None:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid == self.wrapped:
                self.wrapped, self.wrapped_status, self.stopping = (
                    None,
                    code if code >= 0 else 128 - code,
                    True,
                )
                continue
            connection, command, start = self.children.pop(pid)
            outcome = {"signal": -code} if code < 0 else {"exit": code}
            self.log(f"ran {command} in {time.perf_counter() - start:.1f} s: {outcome}")
            if connection.fileno() != -1:
                try:
                    self.selector.unregister(connection)
                except KeyError:
                    pass  # unregistered when its client ended
                try:
                    connection.sendall(json.dumps(outcome).encode() + b"\n")
                except OSError:
                    pass  # the client is gone
                connection.close()


def _spawn(command: list[str], environment: Mapping[str, str]) -> int:
    """Start ``command`` (looked up on PATH) in the server's process group, which a terminal's Ctrl-C
    reaches; its pid."""
    return os.posix_spawnp(command[0], command, environment)


def _ignore(_number: int, _frame: object) -> None:
    """SIGINT while wrapping a command: the command and its clients handle Ctrl-C."""


def _set_group(pid: int) -> None:
    """The command leads its own process group (set on both sides of the fork, whichever runs first)."""
    try:
        os.setpgid(pid, 0 if pid == 0 else pid)
    except (PermissionError, ProcessLookupError):
        pass  # the child already set it, or already ended


def _kill_group(pgid: int, number: int) -> None:
    try:
        os.killpg(pgid, number)
    except ProcessLookupError:
        pass


def _exit_without_teardown(code: object) -> None:
    """End the fork as the interpreter ends, minus its teardown: threading's shutdown (thread pools'
    exit hooks, then a join of non-daemon threads), the atexit handlers, a flush of the streams, and
    exit with ``code`` as ``SystemExit`` gives it. Why: tearing down every module the server imported
    takes ~2 s, and its decrefs copy the memory the fork shares with the server."""
    import atexit
    import threading

    # What Py_Finalize calls, in its order; neither has a public spelling.
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream: nothing more can be written to it
    os._exit(status)


def _reseed() -> None:
    """Fresh seeds for the global generators, as a fresh interpreter has (forks share the server's)."""
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def serve(
    path: Path, run: Callable[[], None], log_to: Path | None = None, wrapped: list[str] | None = None
) -> int:
    """Preload, then serve commands on ``path`` (:meth:`CommandServer.serve_forever`), logging to
    ``log_to`` or stderr; the wrapped command's exit status, else 0."""
    sink = sys.stderr if log_to is None else log_to.open("a", buffering=1)

    def log(message: str) -> None:
        sink.write(f"gil serve: {message}\n")
        sink.flush()

    environment = dict(os.environ)
    preload(log)
    return CommandServer(path, run, log, environment).serve_forever(wrapped)
