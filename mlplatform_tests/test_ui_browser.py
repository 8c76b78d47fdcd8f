"""The Dagster UI as a user meets it: `mlplatform ui`, driven in Debian's headless Chromium by Playwright.

Needs /usr/bin/chromium (`.ci/run` installs Debian's package; nothing downloads a browser of
its own). Without it the test is skipped, unless MLPLATFORM_REQUIRE_BROWSER=1 (CI) makes that
a failure. Screenshots of every step are kept under the test's tmp dir; their folder is in
the failure message.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlplatform.lib.settings import REPO_DIR

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WEEK = "2011-03-07"
HISTORY = ("2011-02-21", "2011-02-28")  # weeks the UI-launched week trains on (its window holds 8; 2 keep it quick)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"`mlplatform ui` exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`mlplatform ui` on a free loopback port with a fresh MLPLATFORM_HOME; every process it started is stopped."""
    if not CHROMIUM.exists():
        if os.environ.get("MLPLATFORM_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium); CI requires the browser test")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    home = tmp_path / "state"
    env = {**os.environ, "MLPLATFORM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    env.pop("MLPLATFORM_SPECS", None)
    subprocess.run([sys.executable, "-m", "mlplatform.cli", "prepare"], cwd=REPO_DIR, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    # The weeks before WEEK, with the README's CLI backfill command: the UI-launched week then trains a model.
    subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "mlplatform.definitions",
         "--select", "bike_demand/raw,bike_demand/staged,bike_demand/features",
         "--partition-range", f"{HISTORY[0]}...{HISTORY[1]}"],
        cwd=REPO_DIR, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
    )
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlplatform.cli", "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_DIR, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/server_info", process, log)
        yield base, tmp_path
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: dagster dev shuts its children down
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        try:  # the webserver and daemon children share the session: none may outlive the test
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            pass
        else:
            os.killpg(process.pid, signal.SIGKILL)


def test_materialize_a_week_from_the_ui_and_read_its_checks(ui_server):
    from playwright.sync_api import expect, sync_playwright

    base, folder = ui_server
    shots = folder / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)
        step = "start"

        def shot(name: str) -> None:
            """Screenshot of the step just done; the failure message names the last one that worked."""
            nonlocal step
            step = name
            page.screenshot(path=str(shots / f"{len(list(shots.iterdir())):02d}_{name}.png"))

        try:
            # The asset graph: one group per model, the lifecycle inside each.
            page.goto(f"{base}/asset-groups", wait_until="networkidle")
            _dismiss_welcome(page)
            expect(page.get_by_text("bike_demand").first).to_be_visible()
            expect(page.get_by_text("car_loan").first).to_be_visible()
            shot("lineage")
            page.goto(f"{base}/locations/mlplatform.definitions/asset-groups/bike_demand", wait_until="networkidle")
            _dismiss_welcome(page)
            for asset in ("raw", "staged", "features", "model", "evaluation", "drift", "backtest"):
                expect(page.get_by_text(asset, exact=True).first).to_be_visible()
            shot("group")

            # Launch one week of the whole group from the materialize dialog.
            page.get_by_role("button", name="Materialize all").click()
            dialog = page.get_by_role("dialog")
            partitions = dialog.get_by_placeholder("ex: 2010-12-27")
            partitions.fill(WEEK)
            partitions.press("Enter")
            expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
            shot("launch_dialog")
            dialog.get_by_role("button", name="Launch 1 run").click()

            # Follow the toast to the run and watch it finish, as a user would.
            toast = page.get_by_text("Launched run").first
            expect(toast).to_be_visible()
            shot("launched")
            run_id = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)
            page.goto(f"{base}/runs", wait_until="networkidle")
            page.get_by_role("link", name=run_id).first.click()
            page.wait_for_url(f"**/runs/{run_id}*")
            expect(page.get_by_text(f"partition: {WEEK}").first).to_be_visible()
            status = _wait_for_run_status(page, timeout=420)
            shot("run")
            assert status == "Success", f"the run ended in {status}"

            # The checks: the data gate passed; the model gates say why, per week.
            page.goto(f"{base}/assets/bike_demand/features?view=checks", wait_until="networkidle")
            expect(page.get_by_text("schema", exact=True).first).to_be_visible()
            expect(page.get_by_text("Passed").first).to_be_visible()
            expect(page.get_by_text("rows match the schema").first).to_be_visible()
            shot("features_checks")
            page.goto(f"{base}/assets/bike_demand/model?view=checks", wait_until="networkidle")
            for gate in ("absolute_threshold", "beat_champion", "prediction_sanity", "training_data_drift"):
                expect(page.get_by_text(gate, exact=True).first).to_be_visible()
            page.get_by_text("absolute_threshold", exact=True).first.click()
            expect(page.get_by_text("the bar <= 90").first).to_be_visible()
            expect(page.get_by_text(WEEK).first).to_be_visible()
            shot("model_checks")
        except Exception as error:
            last_good = step
            shot("failure")
            raise AssertionError(f"browser test failed after step '{last_good}' ({error}); screenshots in {shots}") from error
        finally:
            browser.close()


def _dismiss_welcome(page) -> None:
    """Dagster greets a new browser with a newsletter dialog once; skip it when it shows."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.click(timeout=3000)
    except Exception:  # noqa: BLE001 - not shown
        pass


def _wait_for_run_status(page, timeout: float) -> str:
    """On a run's page, wait until its status tag shows a final state; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for status in ("Success", "Failure", "Canceled"):
            if page.get_by_text(status, exact=True).count():
                return status
        page.wait_for_timeout(2000)
    raise AssertionError(f"the run did not finish within {timeout:.0f} s")
