"""``gil serve`` (gil.command_server): a served command behaves as a fresh process, or is not served."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import project_environment

from gil.command_server import ENV_VAR, decline_reason, import_time_environment, source_stamp


def _gil(args: list, env: dict, cwd: Path, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gil.cli", *map(str, args)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _finished(args: list, env: dict, cwd: Path) -> tuple[int, str, str]:
    out, err = (process := _gil(args, env, cwd)).communicate(timeout=300)
    return process.returncode, out, err


def _log(server: Path) -> str:
    return server.with_name("serve.log").read_text()


def _wait_for(server: Path, pattern: str, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(pattern, _log(server)):
            return match
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the server's log:\n{_log(server)}")


@pytest.fixture
def envs(command_server: Path) -> tuple[dict, dict]:
    """(fresh, served): the same environment without and with the session's server."""
    fresh = project_environment()
    return fresh, {**fresh, ENV_VAR: str(command_server)}


@pytest.mark.slow  # starts a server (~8 s of imports)
def test_a_served_command_writes_prints_and_exits_as_a_fresh_one(
    envs,
    command_server: Path,
    tiny_params: dict,
    tiny_processed: Path,
    write_params: Callable,
    tmp_path: Path,
) -> None:
    """Same files (relative paths: the client's working directory), output and exit status, for a
    command that works and for a user error; and the served one really ran in the server."""
    fresh, served = envs
    params = write_params(tiny_params)
    for name, env in (("fresh", fresh), ("served", served)):
        (tmp_path / name).mkdir()
        code, out, err = _finished(
            ["split", "-p", params, "--processed", tiny_processed, "--out", "split"], env, tmp_path / name
        )
        assert code == 0, err
        bad = _finished(["split", "-p", "missing.yaml"], env, tmp_path / name)
        assert bad[0] == 2 and bad[2].count("\n") == 1 and "missing.yaml" in bad[2]
        results = {
            "output": (code, out, err),
            "user error": bad,
            "files": {p.name: p.read_bytes() for p in (tmp_path / name / "split").iterdir()},
        }
        if name == "fresh":
            expected = results
    assert results == expected
    assert f"ran 'gil split -p {params} --processed {tiny_processed} --out split'" in _log(command_server)
    assert "ran 'gil split -p missing.yaml'" in _log(command_server)


@pytest.fixture
def long_training(tiny_params, write_params, tiny_processed, tiny_split, tmp_path) -> Callable[[str], list]:
    """Arguments of a ``gil train`` that runs until interrupted, writing to ``tmp_path/NAME``."""
    tiny_params["strategies"] = {"finetune": {"kind": "finetune"}}
    tiny_params["train"]["epochs_per_stage"] = 100_000

    def args(name: str) -> list:
        params = write_params(tiny_params, f"{name}.yaml")
        out = tmp_path / name
        return [
            "train",
            "-s",
            "finetune",
            "-p",
            params,
            "--processed",
            tiny_processed,
            "--split",
            tiny_split,
            "--out",
            out,
        ]

    return args


@pytest.mark.slow  # starts a server (~8 s of imports)
@pytest.mark.parametrize(("number", "returncode"), [(signal.SIGINT, 130), (signal.SIGTERM, -15)])
def test_a_signal_to_the_client_reaches_the_command_and_the_client_ends_as_it_does(
    envs,
    command_server: Path,
    long_training,
    tmp_path: Path,
    number: int,
    returncode: int,
    request: pytest.FixtureRequest,
) -> None:
    """Ctrl-C: the command stops and exits 130, as a fresh ``gil train`` does; SIGTERM: the command
    dies of it, and so does the client (what DVC, waiting on the client, sees)."""
    _, served = envs
    args = long_training(f"signal{number}")
    client = _gil(args, served, tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    request.addfinalizer(client.kill)  # a failure must not leave a training running
    pid = int(
        _wait_for(command_server, rf"running 'gil train .*/signal{number}.yaml.*' \(pid (\d+)\)").group(1)
    )
    time.sleep(1.0)  # inside the training loop
    client.send_signal(number)
    _, err = client.communicate(timeout=120)
    assert client.returncode == returncode and "Traceback" not in err, err
    _wait_for(
        command_server, rf"\(pid {pid}\) in [\d.]+ s: \{{'{'exit' if number == signal.SIGINT else 'signal'}'"
    )
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.slow  # starts a server (~8 s of imports)
def test_killing_the_client_kills_the_command(
    envs, command_server: Path, long_training, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """SIGKILL cannot be forwarded: the server sees the client's connection close and kills the
    command's process group, as killing a fresh process ends its command."""
    _, served = envs
    client = _gil(long_training("killed"), served, tmp_path)
    request.addfinalizer(client.kill)  # a failure must not leave a training running
    pid = int(_wait_for(command_server, r"running 'gil train .*/killed.yaml.*' \(pid (\d+)\)").group(1))
    client.kill()
    client.communicate(timeout=60)
    _wait_for(command_server, rf"client of .*\(pid {pid}\) ended; killing the command")
    _wait_for(command_server, rf"\(pid {pid}\) in [\d.]+ s: \{{'signal': 9\}}")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.slow  # starts a server (~8 s of imports)
def test_a_client_whose_import_time_environment_differs_runs_the_command_itself(
    envs, command_server: Path, tmp_path: Path
) -> None:
    _, served = envs
    code, out, _ = _finished(["--help"], {**served, "OMP_NUM_THREADS": "7"}, tmp_path)
    assert code == 0 and "Usage" in out
    assert "declined 'gil --help': environment variable OMP_NUM_THREADS differs" in _log(command_server)


def test_without_a_listening_server_the_command_runs_here(tmp_path: Path) -> None:
    env = {**project_environment(), ENV_VAR: str(tmp_path / "nobody.sock")}
    code, out, err = _finished(["--help"], env, tmp_path)
    assert code == 0 and "Usage" in out and err == ""


def test_what_a_fork_would_run_differently_is_declined() -> None:
    """The decision, case by case: only the same Python, import-time variables and sources pass."""
    own = dict(os.environ)
    stamp = source_stamp()
    request = {"python": sys.executable, "env": {**own, "ANYTHING_ELSE": "x"}}
    assert decline_reason(request, import_time_environment(own), stamp) is None  # other variables pass
    for name in ("PYTHONBREAKPOINT", "TORCHINDUCTOR_CACHE_DIR"):  # read when used: they pass
        assert (
            decline_reason({**request, "env": {**own, name: "set"}}, import_time_environment(own), stamp)
            is None
        )
    assert "the client runs /other/python" in decline_reason(
        {**request, "python": "/other/python"}, import_time_environment(own), stamp
    )
    for name in ("TQDM_DISABLE", "PYTHONHASHSEED", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "KMP_AFFINITY"):
        changed = {**request, "env": {**own, name: "changed-value"}}
        assert f"environment variable {name} differs" in decline_reason(
            changed, import_time_environment(own), stamp
        )
    older = {**stamp, next(iter(stamp)): 0}
    assert "gil's source changed" in decline_reason(request, import_time_environment(own), older)
    assert "gil's source changed" in decline_reason(request, import_time_environment(own), {})


def test_serve_refuses_a_taken_path_and_a_missing_folder(run_cli, tmp_path: Path) -> None:
    taken = tmp_path / "taken.sock"
    taken.write_text("")
    result = run_cli("serve", "--socket", taken)
    assert result.code == 2 and result.stderr.count("\n") == 1 and "already exists" in result.stderr
    assert taken.read_text() == ""  # left as it was
    result = run_cli("serve", "--socket", tmp_path / "no" / "such.sock")
    assert result.code == 2 and "is not a directory" in result.stderr


@pytest.mark.slow  # starts a server (~8 s of imports)
def test_serve_wraps_a_command_serves_its_gil_commands_and_exits_with_its_status(tmp_path: Path) -> None:
    """``gil serve -- COMMAND`` (what ``make run`` does): the command's gil processes are served, its
    exit status is the server's, and the socket is gone afterwards."""
    log = tmp_path / "serve.log"
    script = f"{sys.executable} -m gil.cli --help > help.txt && exit 3"
    code, _, err = _finished(
        ["serve", "--log", log, "--", "sh", "-c", script], project_environment(), tmp_path
    )
    assert code == 3, err
    assert "Usage" in (tmp_path / "help.txt").read_text()
    served = re.search(
        r"ready on (\S+): .*\nrunning 'gil --help' .*\nran 'gil --help' .*\{'exit': 0\}",
        log.read_text().replace("gil serve: ", ""),
    )
    assert served, log.read_text()
    assert not Path(served.group(1)).exists()


def test_serve_refuses_a_command_not_on_path(run_cli, tmp_path: Path) -> None:
    result = run_cli("serve", "--socket", tmp_path / "s.sock", "--", "no-such-program-here")
    assert (
        result.code == 2
        and result.stderr.count("\n") == 1
        and "command not found: no-such-program-here" in result.stderr
    )
    assert list(tmp_path.iterdir()) == []
    result = run_cli("serve")
    assert result.code == 2 and "give --socket PATH" in result.stderr
    result = run_cli("serve", "--socket", tmp_path / "s.sock", "--log", tmp_path / "no" / "log")
    assert result.code == 2 and "is not a directory" in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # starts a server (~8 s of imports)
def test_a_stopped_server_kills_its_commands_and_their_clients_say_so(long_training, tmp_path: Path) -> None:
    socket, log = tmp_path / "s.sock", tmp_path / "serve.log"
    env = project_environment()
    server = _gil(["serve", "--socket", socket, "--log", log], env, tmp_path)

    def logged(pattern: str) -> re.Match:
        deadline = time.monotonic() + 120
        while not (log.exists() and (match := re.search(pattern, log.read_text()))):
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.05)
        return match

    client = None
    try:
        logged("ready on")
        client = _gil(long_training("orphan"), {**env, ENV_VAR: str(socket)}, tmp_path)
        pid = int(logged(r"running .* \(pid (\d+)\)").group(1))
        server.terminate()
        assert server.wait(timeout=60) == 0
        _, err = client.communicate(timeout=60)
    finally:
        for process in (server, client):
            if process is not None and process.poll() is None:
                process.kill()
    assert client.returncode == 1 and "stopped before the command ended" in err
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not socket.exists()


@pytest.mark.parametrize(
    ("code", "status", "stderr"), [("7", 7, ""), ("None", 0, ""), ("'boom'", 1, "boom\n")]
)
def test_a_finished_fork_exits_as_the_interpreter_would(
    tmp_path: Path, code: str, status: int, stderr: str
) -> None:
    """Thread pools left open are shut down (a plain join of their threads would wait forever), atexit
    handlers run, and the status is what ``SystemExit(code)`` gives."""
    marker = tmp_path / "atexit"
    script = (
        "import atexit, concurrent.futures, time\n"
        "from gil.command_server import _exit_without_teardown\n"
        "pool = concurrent.futures.ThreadPoolExecutor(1)\n"
        "pool.submit(time.sleep, 0.1)\n"
        f"atexit.register(open({str(marker)!r}, 'w').write, 'ran')\n"
        f"_exit_without_teardown({code})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (status, stderr)
    assert marker.read_text() == "ran"
