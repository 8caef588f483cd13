"""The validation report, read as the person on call reads it: one self-contained file that opens
with the verdict, the failing checks in red with their reasons, the warnings and a latency chart
per endpoint; skips as their reasons; evidence with each request's real status, time and body.

The sandbox is broken on purpose (every leads request answers 500) and the report is read back
from the HTML pytest-html wrote: the summary from the page itself, each row from the JSON the
page carries in its `data-jsonblob`.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from checks._plugin.charts import latency_svg, ticks
from checks.evidence import Series
from rollback.validate import TOOLKIT_ROOT, ValidationResult, run_validation
from tests.conftest import Sandbox
from tests.validations import failing_validation


def rows(page: str) -> list[dict[str, Any]]:
    """pytest-html's rows: the JSON the page's script renders the results table from."""
    blob = re.search(r'data-jsonblob="([^"]*)"', page)
    assert blob, "no data-jsonblob in the report"
    tests = json.loads(html.unescape(blob.group(1)))["tests"]
    return [row for runs in tests.values() for row in runs]


def summary(page: str) -> str:
    found = re.search(r'<div class="rollback-summary" id="rollback-summary">(.*?)</div>'
                      r'\s*<p class="run-count"', page, re.S)
    assert found, "no summary at the top of the report"
    return found.group(1)


@pytest.fixture(scope="module")
def failing(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> ValidationResult:
    return failing_validation(sandbox, tmp_path_factory.mktemp("reports"))


def test_the_report_opens_with_the_verdict_and_the_failing_checks_with_their_reasons(
    failing: ValidationResult,
) -> None:
    assert failing.exit_code == 1
    page = failing.html.read_text(encoding="utf-8")
    top = summary(page)
    assert page.index('id="rollback-summary"') < page.index('id="results-table"')
    assert re.search(r"FAIL: \d+ check\(s\) failed", top)
    failed = [c for c in failing.checks if c.verdict == "fail"]
    assert failed
    listed = re.findall(r'<li style="color:#a61b1b"><b>([^<]+)</b>: ([^<]+)</li>', top)
    assert {name for name, _ in listed} == {c.nodeid for c in failed}
    reasons = dict(listed)
    error_rate = next(name for name in reasons if "test_synthetic_error_rate_is_below_limit" in name)
    assert re.match(r"error rate [\d.]+% >= limit 5\.0% \(.*500", html.unescape(reasons[error_rate]))
    # failing rows are red in the table too, their reason a column of its own, the
    # traceback (if any) folded below the reason
    assert "tbody.failed > tr.collapsible > td" in page
    reason = html.unescape(reasons[error_rate])
    row = next(r for r in rows(page) if r["testId"] == error_rate)
    assert f'<td class="col-reason">{html.escape(reason)}</td>' in row["resultsTableRow"]
    assert row["log"].startswith(f'<b style="color:#a61b1b">{html.escape(reason)}</b>')
    assert "<details><summary>traceback and output</summary>" in row["log"]


def test_the_summary_draws_a_latency_chart_per_endpoint_with_labelled_axes(
    failing: ValidationResult, sandbox: Sandbox,
) -> None:
    top = summary(failing.html.read_text(encoding="utf-8"))
    charts = re.findall(r'<svg [^>]*class="latency-chart".*?</svg>', top, re.S)
    # one per endpoint that answered: the leads path only failed (chaos), so it has nothing to time
    assert len(charts) == len(sandbox.profile.endpoints) - 1, top
    for chart in charts:
        assert "response time (ms)" in chart and "request, in the order sent" in chart
        assert re.search(r">warn 500 ms</text>", chart) and re.search(r">alert 1000 ms</text>", chart)
        assert re.search(r'text-anchor="end">1000</text>', chart)  # a numbered y axis up to alert


def test_error_rate_evidence_shows_the_500s_as_answered(failing: ValidationResult) -> None:
    statuses: dict[str, set[str]] = {}
    for row in rows(failing.html.read_text(encoding="utf-8")):
        evidence = html.unescape("".join(e["content"] for e in row["extras"]
                                         if e["format_type"] == "html"))
        requests = re.findall(r"<tr><td[^>]*>GET (\S+)\s*</td>\s*<td[^>]*>([^<]*)</td>\s*"
                              r"<td[^>]*>([^<]*)</td>", evidence)
        statuses[row["testId"]] = {status for _, status, _ in requests}
        for _, status, ms in requests:  # an answered 500 is timed; a held-back one is not sent
            assert status in ("500", "not sent") or status.isdigit(), (row["testId"], status)
            assert status == "not sent" or ms.strip().isdigit(), (row["testId"], ms)
    # the first check to meet the 500s says so, as answers
    assert [c for c in failing.checks if "answered 500" in (c.message or "")], statuses
    assert not [t for t, s in statuses.items() if "no answer" in s], statuses
    # once the path is known failing, later checks hold their requests back (fail fast)
    rate = next(s for t, s in statuses.items() if t.endswith("test_synthetic_error_rate_is_below_limit"))
    assert rate <= {"500", "not sent"} and rate, rate


def test_skips_show_their_reason_not_a_tuple(sandbox: Sandbox, tmp_path: Path) -> None:
    env = sandbox.env()
    del env["TEST_REVOKED_API_KEY"]
    result = run_validation("health", reports_root=tmp_path, env=env, extra_args=["-k", "revoked"])
    page = result.html.read_text(encoding="utf-8")
    skipped = [r for r in rows(page) if r["result"].lower() == "skipped"]
    assert skipped
    for row in skipped:
        assert not row["log"].startswith("("), row["log"]
        assert "TEST_REVOKED_API_KEY is not set" in row["log"]
        assert "inconclusive: TEST_REVOKED_API_KEY is not set" in "".join(row["resultsTableRow"])
    assert "Skipped or inconclusive" in summary(page)


def test_plain_pytest_with_an_html_path_writes_one_self_contained_file(sandbox: Sandbox,
                                                                      tmp_path: Path) -> None:
    report = tmp_path / "r.html"
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "health", "-k", "reachable or latency",
                           "--html", str(report), "-p", "no:randomly"],
                          cwd=TOOLKIT_ROOT, env=sandbox.env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no assets/ beside it
    page = report.read_text(encoding="utf-8")
    assert "assets/style.css" not in page and "<style" in page
    assert "PASS" in summary(page)


def test_the_chart_scale_and_lines() -> None:
    assert ticks(1000) == [0, 200, 400, 600, 800, 1000]
    assert ticks(1240) == [0, 500, 1000, 1500]
    svg = latency_svg(Series("/v1/leads", (12.0, 30.0, 1240.0), 500, 1000, 1240.0))
    assert svg.count("<rect") == 4  # the plot area and one bar per request
    assert ">p95 1240 ms</text>" in svg and ">1500</text>" in svg
    assert 'fill="#c0392b"><title>request 3: 1240 ms' in svg
