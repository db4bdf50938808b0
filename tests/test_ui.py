"""The MLflow UI is the leaderboard: ``gil ui`` over a tiny tracked benchmark, seen in a real browser.

A real ``gil ui`` process on a free 127.0.0.1 port, a real headless Chromium (Debian's ``chromium``
and ``chromium-driver``, driven by selenium): what could break is MLflow's UI itself, which reads
the leaderboard view gil saves on the experiment and decides between its GenAI and training pages.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _mlflow_helpers import isolated_mlflow
from factories import make_config, make_processed, make_split
from mlflow.tracking import MlflowClient

from gil.evaluate import evaluate_strategy
from gil.tracking.leaderboard import fetch_leaderboard
from gil.tracking.mlflow_tracker import MlflowTracker
from gil.tracking.server import free_port
from gil.train.loop import train_strategy

pytestmark = pytest.mark.slow

EXPERIMENT = "gil-test"
STRATEGIES = ["finetune", "replay", "ewc"]
SEEDS = [0, 1]
UI_TIMEOUT = 90.0
# The runs table is an AG Grid: one row element per run or group (same row-index in the pinned
# and scrolled parts), one cell per column id. The test reads it the way a user reads the screen.
_GRID_JS = """
const rows = {};
for (const cell of document.querySelectorAll('[role="row"] [role="gridcell"]')) {
  const index = cell.closest('[role="row"]').getAttribute('row-index');
  (rows[index] = rows[index] || {})[cell.getAttribute('col-id')] = cell.innerText;
}
return Object.keys(rows).sort((a, b) => a - b).map((index) => rows[index]);
"""
NAME_COLUMN = "attributes.`Run Name`"
FORGETTING_COLUMN = "metrics.`forgetting`"


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Three strategies x two seeds trained and evaluated into a SQLite store (the tiny benchmark)."""
    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    data = make_processed(n_cells=120, n_genes=30)
    split = make_split(data, genes_per_stage=5)
    config = make_config(train={**make_config().train.model_dump(), "seeds": SEEDS, "epochs_per_stage": 1})
    with isolated_mlflow():
        tracker = MlflowTracker(uri, EXPERIMENT)
        for strategy in STRATEGIES:
            checkpoints = root / "checkpoints" / strategy
            train_strategy(config, strategy, data, split, checkpoints, tracker=tracker, progress=False)
            evaluate_strategy(config, strategy, data, split, checkpoints, tracker=tracker)
    yield uri, root


def _browser():  # noqa: ANN202 - selenium's WebDriver
    """Headless Chromium through chromedriver; fails (never skips) without them: CI must run this."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail("chromium and chromium-driver are needed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def _start_ui(
    params: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """``gil ui`` on a free port; returns the process and the links it printed (label -> URL)."""
    command = [sys.executable, "-m", "gil.cli", "ui", "--params", str(params), "--port", str(free_port())]
    process = subprocess.Popen(
        [*command, *options], stdout=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    links: dict[str, str] = {}
    assert process.stdout is not None
    for line in process.stdout:  # the links follow the server's start; gil ui flushes them
        label, _, link = line.strip().partition(": ")
        if link.startswith("http://127.0.0.1:") and "#/experiments/" in link:
            links[label] = link
        if len(links) == 2 or process.poll() is not None:
            break
    return process, links


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM ``gil ui`` by its PID (it stops its server's process group), SIGKILL if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_for(condition, timeout: float = UI_TIMEOUT):  # noqa: ANN001, ANN202
    """Poll ``condition`` until it returns something truthy (the UI renders asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("the MLflow UI did not show the expected page in time")


def _grid_rows(browser) -> list[dict[str, str]]:  # noqa: ANN001
    """The runs table's rows once every strategy's group row is rendered."""
    rows = browser.execute_script(_GRID_JS)
    return rows if sum("Group: " in row.get(NAME_COLUMN, "") for row in rows) == len(STRATEGIES) else []


def _previews(browser) -> set[str]:  # noqa: ANN001
    """The images the artifact previews show (the UI loads artifacts as blobs), once both runs'
    previews replaced the "Select a file to preview" placeholders."""
    if "Select a file to preview" in browser.find_element("tag name", "body").text:
        return set()
    sources = {image.get_attribute("src") or "" for image in browser.find_elements("tag name", "img")}
    blobs = {source for source in sources if source.startswith("blob:")}
    return blobs if len(blobs) >= 2 else set()


def _assert_leaderboard_run(uri: str, ranked: list[str]) -> None:
    """The leaderboard run holds the ranked table as HTML (shown as a table by the UI), the
    ranking figure and the report's forgetting curves."""
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (board,) = client.search_runs([experiment_id], "tags.`gil.kind` = 'leaderboard'")
    artifacts = {item.path for item in client.list_artifacts(board.info.run_id)}
    assert {"leaderboard.html", "ranking.png", "forgetting_curves.png"} <= artifacts
    html = Path(client.download_artifacts(board.info.run_id, "leaderboard.html")).read_text()
    cells = [f"<td>{strategy}</td>" for strategy in ranked]
    assert "<table" in html and sorted(cells, key=html.index) == cells


def _seed0_run(uri: str, strategy: str) -> str:
    """The current seed-0 parent run of ``strategy``."""
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    condition = (
        f"tags.`gil.kind` = 'parent' and tags.`gil.strategy` = '{strategy}' and tags.`gil.seed` = '0' "
        "and tags.`gil.superseded` = 'false'"
    )
    (run,) = client.search_runs([experiment_id], condition)
    return run.info.run_id


def test_gil_ui_opens_the_leaderboard_and_training_pages(
    benchmark: tuple[str, Path], tiny_params: dict, write_params, run_cli, tmp_path: Path
) -> None:
    uri, root = benchmark
    tiny_params["tracking"] = {"uri": uri, "experiment": EXPERIMENT}
    params = write_params(tiny_params)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "forgetting_curves.png").write_bytes(b"a figure of gil report")
    printed = run_cli("leaderboard", "--params", params, "--out", tmp_path / "reports", "--plots", plots)
    assert printed.code == 0, printed.stderr
    expected = fetch_leaderboard(uri, EXPERIMENT)
    _assert_leaderboard_run(uri, list(expected["strategy"]))

    process, links = _start_ui(params)
    browser = None
    try:
        assert set(links) == {"Leaderboard", f"Experiment {EXPERIMENT}"}, links
        board = links["Leaderboard"]
        assert board.endswith("/runs?viewStateShareKey=gil-leaderboard&workflowType=machine_learning")
        assert board.split("#", 1)[1] in printed.stdout  # gil leaderboard prints the same view
        browser = _browser()

        browser.get(board)
        rows = _wait_for(lambda: _grid_rows(browser))
        assert "/runs?" in browser.current_url
        # One collapsed row per strategy (no seed rows, no leaderboard run), in leaderboard order,
        # showing the mean over seeds of the ranking metrics, the first columns (the grid renders
        # only the columns in the window).
        shown = [row[NAME_COLUMN].split("Group: ")[1].split("\n")[0] for row in rows]
        assert shown == list(expected["strategy"])
        for row, (_, strategy) in zip(rows, expected.iterrows(), strict=True):
            for metric in ("forgetting", "final_mse"):
                value, label = row[f"metrics.`{metric}`"].split()
                assert label == "(average)"
                assert math.isclose(float(value), strategy[f"{metric}_mean"], rel_tol=1e-9)

        # Two strategies' forgetting curves side by side on MLflow's run comparison page.
        base, experiment_id = board.split("/#/experiments/")[0], board.split("/experiments/")[1].split("/")[0]
        compared = [_seed0_run(uri, strategy) for strategy in expected["strategy"][:2]]
        browser.get(
            f'{base}/#/compare-runs?runs={json.dumps(compared)}&experiments=["{experiment_id}"]'
            "&workflowType=machine_learning"
        )
        listed = _wait_for(lambda: browser.find_elements("xpath", "//*[text()='forgetting.png']"))
        browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click()", listed[0])
        assert len(_wait_for(lambda: _previews(browser))) == 2  # one forgetting.png per run

        browser.get(links[f"Experiment {EXPERIMENT}"])
        _wait_for(lambda: "/runs" in browser.current_url)
        page = browser.find_element("tag name", "body").text
        assert "/overview" not in browser.current_url and "Detect issues in your traces" not in page
    finally:
        if browser is not None:
            browser.quit()
        _stop(process)
    assert process.returncode is not None


def test_gil_ui_open_opens_the_leaderboard_link(
    benchmark: tuple[str, Path], tiny_params: dict, write_params, tmp_path: Path
) -> None:
    """``--open`` hands the printed leaderboard link to the user's browser (``$BROWSER`` here, a
    command that writes down what it was given)."""
    uri, _ = benchmark
    tiny_params["tracking"] = {"uri": uri, "experiment": EXPERIMENT}
    opened = tmp_path / "opened"
    browser = f"sh -c 'echo \"$0\" > {opened}' %s"
    process, links = _start_ui(write_params(tiny_params), "--open", env={**os.environ, "BROWSER": browser})
    try:
        given = _wait_for(lambda: opened.is_file() and opened.read_text().strip(), timeout=30)
        assert given == links["Leaderboard"]
    finally:
        _stop(process)
