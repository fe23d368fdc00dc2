"""The dashboard in a real browser: Debian's Chromium, driven by selenium through
chromium-driver, against `pgjobs dashboard` served by uvicorn on a real database.

It signs in, opens every page, retries a dead job and watches it succeed once a real
worker has run it (the page's live refresh shows it), and pauses a queue. The browser
and its driver come from scripts/install-system-deps; without them the test skips,
except under CI, where it fails. Screenshots of the main pages are taken every run;
set PGJOBS_SCREENSHOTS=docs to write them where docs/dashboard.md shows them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pgjobs.ops.devserver import free_port
from tests.dashboard_data import PASSWORD, USER, Seeded, seed
from tests.helpers import WorkerProcess, scalar, wait_until

pytestmark = [pytest.mark.xdist_group("worker"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
T = TypeVar("T")


def browser_binaries() -> tuple[str, str]:
    """Chromium and its WebDriver; skips the test when missing, except under CI."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    reason = "chromium and chromium-driver are not installed (run scripts/install-system-deps)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install them before the tests")
    pytest.skip(reason)


@pytest.fixture
def served(fresh_dsn: str) -> Iterator[tuple[str, str, Seeded]]:
    """`pgjobs dashboard` on a free port of a seeded database: (dsn, base URL, rows)."""
    rows = seed(fresh_dsn)
    port = free_port()
    env = {**os.environ, "PGJOBS_DATABASE_URL": fresh_dsn, "PGJOBS_DASHBOARD_USER": USER,
           "PGJOBS_DASHBOARD_PASSWORD": PASSWORD}
    log = tempfile.NamedTemporaryFile(prefix="pgjobs-dashboard-", suffix=".log")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "pgjobs", "dashboard", "--port", str(port), "--refresh", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(base + "/", timeout=2)
        except urllib.error.HTTPError as refused:
            return refused.code == 401  # serving, and asking who we are
        except OSError:
            assert server.poll() is None, Path(log.name).read_text()
            return False
        return False

    try:
        wait_until(up, timeout=30, what="the dashboard to listen")
        yield fresh_dsn, base, rows
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.fixture
def browser() -> Iterator[object]:
    chromium, driver_path = browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pgjobs-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # As root, offline: no sandbox, no GPU, no network calls of Chromium's own, and a
    # profile of this test's own.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: object, name: str, folder: Path) -> None:
    path = folder / f"dashboard-{name}.png"
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    assert path.read_bytes().startswith(PNG)
    target = os.environ.get("PGJOBS_SCREENSHOTS")
    if target:
        shutil.copy(path, ROOT / target / path.name)


def settled(read: Callable[[], T], timeout: float = 10.0) -> T:
    """`read()` again when the element is not there yet or no longer there: the live refresh
    replaced it between its find and its use (the page swaps its content every second here),
    or a form's POST and its redirect are still loading the next page. Gives up after
    `timeout` seconds with the last error."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except (StaleElementReferenceException, NoSuchElementException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_sign_in_see_every_page_retry_a_dead_job_and_pause_a_queue(
        served: tuple[str, str, Seeded], browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    dsn, base, rows = served
    driver = browser
    find = driver.find_element  # type: ignore[attr-defined]
    go = driver.get  # type: ignore[attr-defined]

    def text(by: str, selector: str) -> str:
        return settled(lambda: find(by, selector).text)  # type: ignore[no-any-return]

    def click(by: str, selector: str) -> None:
        settled(lambda: find(by, selector).click())

    # 1. Sign in: HTTP Basic, given once; the browser keeps it for the origin.
    go(base.replace("http://", f"http://{USER}:{PASSWORD.replace(' ', '%20').replace(':', '%3A')}@")
       + "/")
    assert text(By.TAG_NAME, "h1") == "Queues"
    assert USER in text(By.CSS_SELECTOR, "header .who")

    # 2. Every page, through the navigation and the links a person would follow.
    for label, heading in [("Jobs", "Jobs"), ("Batches", "Batches"),
                           ("Periodic", "Periodic schedules"), ("Workers", "Workers"),
                           ("Queues", "Queues")]:
        click(By.LINK_TEXT, label)
        assert text(By.TAG_NAME, "h1") == heading
        if label != "Queues":
            screenshot(driver, label.lower(), tmp_path)
    go(f"{base}/batches/{rows.batch}")
    assert text(By.TAG_NAME, "h1").startswith(f"Batch {rows.batch}")
    assert "<script>" in text(By.TAG_NAME, "h1")  # shown as text, not run
    go(f"{base}/jobs/{rows.big}")
    assert "Download the full args" in text(By.TAG_NAME, "main")

    # 3. Retry a dead job and watch it succeed after a worker runs it.
    go(f"{base}/jobs?state=dead")
    click(By.CSS_SELECTOR, f'tr[data-job="{rows.dead}"] a')
    assert "dead" in text(By.CSS_SELECTOR, "h1 .state")
    screenshot(driver, "job", tmp_path)
    click(By.CSS_SELECTOR, "button.retry")
    wait_until(lambda: "retried (was dead)" in text(By.TAG_NAME, "main"), timeout=15,
               what="the page that reports the retry")
    click(By.LINK_TEXT, f"Back to job {rows.dead}")
    assert "available" in text(By.CSS_SELECTOR, "h1 .state")
    worker = WorkerProcess(dsn, "--queues", "reports", "--burst", "--poll-interval", "0.2")
    try:
        assert worker.wait() == 0, worker.log()
    finally:
        worker.close()
    assert scalar(dsn, "SELECT result FROM pgjobs.jobs WHERE id = %s", rows.dead) == 42
    # The live refresh (every second here) brings the new state in without a reload.
    wait_until(lambda: "succeeded" in text(By.CSS_SELECTOR, "h1 .state"), timeout=15,
               what="the job page to show the job succeeded")
    assert "42" in text(By.CSS_SELECTOR, "main")

    # 4. Pause a queue and see it marked.
    click(By.LINK_TEXT, "Queues")
    click(By.CSS_SELECTOR, 'tr[data-queue="mail"] button.pause')

    def mail_row() -> tuple[str, str]:
        row = find(By.CSS_SELECTOR, 'tr[data-queue="mail"]')
        return row.get_attribute("class"), row.text

    # The POST redirects back to the overview; wait for the page that shows the new state.
    wait_until(lambda: "paused" in settled(mail_row)[0], timeout=15,
               what="the overview to mark the mail queue paused")
    row_class, row_text = settled(mail_row)
    assert "paused" in row_class and "paused" in row_text
    assert scalar(dsn, "SELECT paused FROM pgjobs.queues WHERE name = 'mail'") is True
    screenshot(driver, "overview", tmp_path)

    # The live refresh can be paused, and stays paused on the next page.
    toggle = find(By.ID, "live-toggle")
    toggle.click()
    assert toggle.text == "Resume live refresh"
    click(By.LINK_TEXT, "Jobs")
    assert text(By.ID, "live-toggle") == "Resume live refresh"
