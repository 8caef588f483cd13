"""Three verdicts (pass, warn, fail), inconclusive skips, and the --gate rule.

- warn: a check that passes but called `evidence.warn(...)`. Shown as `W`/`WARN` in the
  terminal (counted as "warned" in the last line and listed in the summary), as "Passed (warn)"
  in the HTML report, and as JUnit properties `verdict=warn` and `warning=<text>`.
- skip: the check could not run. Two kinds, told apart by the exception:
  * a *required* check skipped (a missing TEST_API_KEY or DATABASE_URL, a missing run context
    that the check needs): under `--gate` it becomes a failure, because the gate cannot vouch
    for what it did not check;
  * an *inconclusive* skip (`inconclusive(...)`): optional input absent or nothing to judge
    (no TEST_REVOKED_API_KEY, no baseline, no traffic in the window, a single-tenant database,
    a `write` check without --allow-writes). The gate accepts it;
  * *saw nothing* (`saw_nothing(...)`): the check inspected no rows or records where some must
    exist (an empty api_keys, an endpoint that lists nothing for the test key). It is
    inconclusive, never a pass, and the gate fails it.
Every check's verdict is also a JUnit property `verdict` (pass|warn|fail|skip|inconclusive).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import NoReturn

import pytest

from checks._plugin.options import SUITE, is_check
from checks.evidence import Evidence

EVIDENCE = pytest.StashKey[Evidence]()
VERDICT = pytest.StashKey[str]()


class Inconclusive(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A skip that --gate accepts: the input is optional, or there is nothing to judge."""


class NothingSeen(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A skip --gate fails: the check saw nothing where something must exist."""


def saw_nothing(reason: str) -> NoReturn:
    """Stop this check as inconclusive because it inspected nothing; --gate fails it."""
    __tracebackhide__ = True
    raise NothingSeen(f"saw nothing: {reason}")


def inconclusive(reason: str) -> NoReturn:
    """Skip this check without failing the gate; the reason says what was missing."""
    __tracebackhide__ = True
    raise Inconclusive(reason)


def evidence_of(item: pytest.Item) -> Evidence:
    if EVIDENCE not in item.stash:
        suite = item.config.stash.get(SUITE, None)
        item.stash[EVIDENCE] = Evidence(redact=suite.redactor if suite else (lambda s: s))
    return item.stash[EVIDENCE]


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_setup(item: pytest.Item) -> None:
    suite = item.config.stash.get(SUITE, None)
    if item.get_closest_marker("write") and not (suite and suite.allow_writes):
        raise Inconclusive("writes to the target: run with --allow-writes to include it",
                           _use_item_location=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if not is_check(item):
        return report
    suite = item.config.stash.get(SUITE, None)
    if suite is not None and report.failed:
        # A failure text may quote a response or an exception: never let a secret through.
        text = str(report.longrepr)
        if suite.redactor.contains_secret(text):
            report.longrepr = suite.redactor(text)
    verdict = item.stash.get(VERDICT, "pass")
    if report.skipped:
        reason = _skip_reason(report)
        raised = call.excinfo.value if call.excinfo is not None else None
        if isinstance(raised, NothingSeen) and suite is not None and suite.gate:
            report.outcome = "failed"
            report.longrepr = (f"--gate: inconclusive, {raised.msg}\n"
                               "A check that saw nothing has not passed.")
            verdict = "fail"
        elif isinstance(raised, Inconclusive | NothingSeen):
            reason = str(raised.msg)
            report.longrepr = (*report.longrepr[:2], f"Skipped: {reason}")  # type: ignore[index]
            verdict = "inconclusive"
        elif suite is not None and suite.gate:
            report.outcome = "failed"
            report.longrepr = (
                f"--gate: required check skipped: {reason}\n"
                "A gate cannot vouch for what it did not check: provide the missing input, or "
                "run without --gate."
            )
            verdict = "fail"
        else:
            verdict = "skip"
    elif report.failed:
        verdict = "fail"
    elif report.when == "call":
        evidence = item.stash.get(EVIDENCE, None)
        if evidence is not None and evidence.warnings:
            verdict = "warn"
            for message in evidence.warnings:
                report.user_properties.append(("warning", message))
                item.user_properties.append(("warning", message))
    item.stash[VERDICT] = verdict
    if report.when == "teardown":
        report.user_properties.append(("verdict", verdict))
    return report


def _warnings(report: pytest.TestReport) -> list[str]:
    return [str(value) for name, value in report.user_properties if name == "warning"]


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    if report.when == "call" and report.passed and _warnings(report):
        return "warned", "W", ("WARN", {"yellow": True})
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    warned = terminalreporter.stats.get("warned", [])
    if not warned:
        return
    terminalreporter.section("checks that passed with a warning", sep="-", yellow=True)
    for report in warned:
        for message in _warnings(report):
            terminalreporter.line(f"WARN {report.nodeid}: {message}")
