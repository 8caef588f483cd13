"""The reports in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
opens a failing validation report and the monitor's health report as a person would, and
asserts what must be seen without a click: the failing check's name and reason, each latency
chart drawn. A full-page screenshot of each goes into the test's output folder (its tmp_path,
named in the JUnit properties as `screenshot`).

Without Chromium or Playwright the tests skip, loudly: `.ci/run` installs Chromium through
apt-get when it can, and says so when it cannot.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sandbox
from tests.validations import failing_validation, put_back

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
RED = "rgb(166, 27, 27)"  # the summary's #a61b1b


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if executable is None:
        pytest.skip("BROWSER TESTS SKIPPED: no Chromium on PATH (apt-get install -y chromium; "
                    ".ci/run does it when it runs as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # a dev dependency: its absence is a broken install, not this machine's lack
        pytest.fail("Playwright is not installed, though the dev extra requires it: "
                    "pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's own sandbox refuses to start
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Any, tmp_path: Path,
              record_property: Callable[[str, object], None]) -> Iterator[Callable[[Path], Any]]:
    pages: list[tuple[Any, str]] = []

    def open_file(path: Path) -> Any:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(path.resolve().as_uri())
        pages.append((page, path.stem))
        return page

    yield open_file
    for page, name in pages:  # the screenshot, whatever the assertions said
        shot = tmp_path / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        record_property("screenshot", str(shot))
        page.close()


def test_a_failing_validation_report_shows_the_failure_and_the_charts_without_a_click(
    sandbox: Sandbox, tmp_path: Path, open_page: Callable[[Path], Any],
) -> None:
    result = failing_validation(sandbox, tmp_path / "reports")
    failed = [c for c in result.checks if c.verdict == "fail"]
    assert failed
    page = open_page(result.html)
    page.wait_for_selector("#results-table tbody.results-table-row")  # pytest-html's script ran
    verdict = page.locator(".rollback-verdict")
    assert verdict.is_visible() and verdict.inner_text().startswith("FAIL:")
    error_rate = next(c for c in failed if c.nodeid.endswith("test_synthetic_error_rate_is_below_limit"))
    def failing_item(nodeid: str) -> Any:  # its own line, not one naming it as who found a fault
        return page.locator("ul.rollback-failed li", has_text=re.compile("^" + re.escape(nodeid + ":")))

    item = failing_item(error_rate.nodeid)
    assert item.is_visible()
    assert re.search(r"error rate [\d.]+% >= limit 5\.0%", item.inner_text())
    assert item.evaluate("e => getComputedStyle(e).color") == RED
    for check in failed:  # every failing check, named with its reason, in view of the summary
        assert failing_item(check.nodeid).is_visible()
    # in the table too: the failing row is red and its reason is shown in its own column
    row = page.locator("tbody.failed", has_text=error_rate.nodeid).locator("tr.collapsible")
    assert re.match(r"error rate [\d.]+% >= limit 5\.0%", row.locator("td.col-reason").inner_text())
    assert row.locator("td.col-reason").evaluate("e => getComputedStyle(e).color") == RED
    charts = page.locator(".rollback-charts svg.latency-chart")
    # one per endpoint that answered: the leads path only failed (chaos), so it has nothing to time
    assert charts.count() == len(sandbox.profile.endpoints) - 1
    for i in range(charts.count()):
        chart = charts.nth(i)
        box = chart.bounding_box()
        assert chart.is_visible() and box and box["width"] > 300 and box["height"] > 150, box
        assert chart.locator("rect").count() > 1  # the bars are drawn
        assert chart.get_by_text("response time (ms)").count() == 1


def test_the_monitors_health_report_shows_the_incident_and_draws_its_charts(
    sandbox: Sandbox, tmp_path: Path, open_page: Callable[[Path], Any],
) -> None:
    env = sandbox.env()

    def rollback(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rollback", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    try:
        with sandbox.chaos(error_rate=1.0):
            broken = rollback("health", "--continuous", "--interval", "0.3", "--max-cycles", "3", "--plain")
        healthy = rollback("health", "--continuous", "--interval", "0.3", "--max-cycles", "3", "--plain")
    finally:
        put_back(sandbox)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    output = tmp_path / "health-report.html"
    done = rollback("health", "--report", "--since", "1h", "--output", str(output))
    assert done.returncode == 0, done.stdout + done.stderr
    page = open_page(output)
    incident = page.locator("table tr", has_text="Error rate").filter(has_text="500")
    assert incident.first.is_visible()
    charts = page.locator("figure.chart svg")
    assert charts.count() >= 2
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box and box["width"] > 300 and box["height"] > 100, box
