"""Reports: the HTML report for the person on call, each check's evidence in it (and in Allure).

A run that collects the checks writes one self-contained pytest-html file: to the `--html` path
when given, otherwise to `<reports_dir>/<UTC timestamp>-pytest/report.html`. It opens with a
summary (`HtmlSummary`): the verdict, each failing check in red with its one-line reason, the
warnings, then a latency chart per endpoint; the table below gives every check its reason
(failure, skip or warning) in a column of its own, a skip as its reason rather than pytest's
tuple, and a failure's traceback folded under its reason.

Only the controller writes reports; xdist workers send their reports to it, with the evidence
already rendered into `extras` and the latency series as the report attribute `SERIES_ATTR`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import pytest
from jinja2 import Environment

from checks._plugin.charts import latency_svg
from checks._plugin.options import SUITE, is_check, runs_checks
from checks._plugin.redact import SECRET_NAME, Redactor, safe_url
from checks._plugin.verdicts import EVIDENCE
from checks.evidence import Evidence, Series
from rollback.config import ENV_VARS

#: a check's call report carries its latency series under this name (plain dicts: xdist sends it)
SERIES_ATTR = "rollback_latency"
RED, AMBER, GREEN, GREY = "#a61b1b", "#9a6206", "#1e7b34", "#555"

_TEMPLATE = Environment(autoescape=True).from_string("""\
<div class="rollback-evidence">
{% for message in evidence.warnings %}<p style="color:#b9770e"><b>WARN</b> {{ message }}</p>{% endfor %}
{% if evidence.values %}<table style="border-collapse:collapse;margin:4px 0">
{% for name, value in evidence.values.items() %}<tr>
<th style="text-align:left;padding:1px 8px">{{ name }}</th>
<td style="padding:1px 8px">{{ value }}</td></tr>{% endfor %}</table>{% endif %}
{% for series in evidence.series %}<p style="margin:2px 0">latency chart of {{ series.name }}:
in the summary at the top</p>{% endfor %}
{% if evidence.requests %}<table style="border-collapse:collapse;margin:4px 0;font-size:90%">
<tr><th>request</th><th>status</th><th>time (ms)</th><th>body</th></tr>
{% for r in evidence.requests %}<tr><td style="padding:1px 8px">{{ r.method }} {{ r.url }}
{%- if r.note %} ({{ r.note }}){% endif %}</td>
<td style="padding:1px 8px">{{ r.status }}</td>
<td style="padding:1px 8px">{{ "%.0f"|format(r.elapsed_ms) if r.elapsed_ms is not none else "" }}</td>
<td style="padding:1px 8px"><code>{{ r.body }}</code></td></tr>{% endfor %}</table>{% endif %}
</div>""")


HTML_SUMMARY = pytest.StashKey["HtmlSummary"]()


def render_evidence(evidence: Evidence) -> str:
    return _TEMPLATE.render(evidence=evidence)


def _default_html_path(config: pytest.Config) -> Path:
    suite = config.stash.get(SUITE, None)
    reports = suite.settings.paths.reports_dir if suite else Path("reports")
    if not reports.is_absolute():
        reports = config.rootpath / reports
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return reports / f"{stamp}-pytest" / "report.html"


def pytest_configure(config: pytest.Config) -> None:
    # Not tryfirst: runs after options.pytest_configure (tryfirst) built the SuiteConfig, and,
    # registered later than pytest-html, before pytest-html's own pytest_configure reads --html.
    if hasattr(config, "workerinput") or not runs_checks(config):
        return
    config.stash[HTML_SUMMARY] = HtmlSummary(config)
    config.pluginmanager.register(config.stash[HTML_SUMMARY], "rollback-html-summary")
    if getattr(config.option, "htmlpath", "absent") is None and not config.option.collectonly:
        config.option.htmlpath = str(_default_html_path(config))
    if getattr(config.option, "htmlpath", None):
        # one file to mail, attach or archive: no assets/ folder beside it
        config.option.self_contained_html = True
    _describe_target(config)


def _describe_target(config: pytest.Config) -> None:
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    suite = config.stash.get(SUITE, None)
    if suite is None or metadata_key not in config.stash:
        return
    metadata = config.stash[metadata_key]
    metadata["Target"] = f"{suite.settings.target.name}: {safe_url(suite.settings.target.api_base_url)}"
    metadata["Thresholds"] = repr(suite.thresholds)
    metadata["Gate"] = "on" if suite.gate else "off"
    if suite.run_context is not None:
        metadata["Rollback run"] = f"{suite.run_context.run_id} ({suite.run_context.phase})"


def _environment_redactor() -> Redactor:
    names = [name for name, (section, _) in ENV_VARS.items() if section == "secrets"]
    return Redactor(os.environ[name] for name in names if os.environ.get(name))


@pytest.hookimpl(optionalhook=True)
def pytest_metadata(metadata: dict[str, Any], config: pytest.Config) -> None:
    """The HTML environment table: no value of a secret-looking name, no secret anywhere."""
    redact = _environment_redactor()

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "***" if SECRET_NAME.search(str(k)) else clean(v) for k, v in value.items()}
        if isinstance(value, str):
            return redact(value)
        return value

    for name in list(metadata):
        metadata[name] = "***" if SECRET_NAME.search(str(name)) else clean(metadata[name])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    evidence = item.stash.get(EVIDENCE, None)
    if report.when != "call" or evidence is None or not is_check(item):
        return report
    try:
        from pytest_html import extras
    except ImportError:
        pass
    else:
        html = extras.html(render_evidence(evidence))
        report.extras = [*getattr(report, "extras", []), html]  # type: ignore[attr-defined]
    setattr(report, SERIES_ATTR, [series_to_json(series) for series in evidence.series])
    if getattr(item.config.option, "allure_report_dir", None):  # allure-pytest records (--alluredir)
        _attach_to_allure(evidence)
    return report


def series_to_json(series: Series) -> dict[str, Any]:
    return {"name": series.name, "values_ms": list(series.values_ms), "warn_ms": series.warn_ms,
            "alert_ms": series.alert_ms, "p95_ms": series.p95_ms}


def series_from_json(data: dict[str, Any]) -> Series:
    return Series(str(data["name"]), tuple(float(v) for v in data["values_ms"]),
                  float(data["warn_ms"]), float(data["alert_ms"]),
                  None if data.get("p95_ms") is None else float(data["p95_ms"]))


def reason_of(report: pytest.TestReport) -> str:
    """One line saying why a check failed or was skipped: pytest's own message, not its tuple
    or traceback ("Failed: " and "Skipped: " dropped)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    elif (crash := getattr(longrepr, "reprcrash", None)) is not None:
        text = str(crash.message)
    else:
        text = str(longrepr or "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    for prefix in ("Skipped: ", "Failed: ", "AssertionError: "):
        first = first.removeprefix(prefix)
    return first


def _attach_to_allure(evidence: Evidence) -> None:
    try:
        import allure
    except ImportError:
        return
    allure.attach(json.dumps(evidence.to_json(), indent=2, default=str), name="evidence",
                  attachment_type=allure.attachment_type.JSON)
    for series in evidence.series:
        allure.attach(latency_svg(series), name=f"latency {series.name}",
                      attachment_type=allure.attachment_type.SVG)


@dataclass
class CheckRow:
    """What the summary says about one check, gathered from its reports as they arrive."""

    nodeid: str
    verdict: str = "pass"
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)


_STYLE = f"""<style>
tbody.failed > tr.collapsible > td, tbody.error > tr.collapsible > td {{
  color: {RED}; background: #fdecea; font-weight: bold; }}
tbody.skipped > tr.collapsible > td.col-reason {{ color: {GREY}; }}
td.col-reason {{ max-width: 60em; white-space: normal; }}
.rollback-summary {{ border: 1px solid #ccc; padding: 8px 14px; margin: 8px 0 14px; }}
.rollback-summary h3 {{ margin: 10px 0 4px; }}
.rollback-summary ul {{ margin: 2px 0; padding-left: 1.4em; }}
.rollback-summary li {{ margin: 2px 0; }}
.rollback-verdict {{ font-size: 130%; font-weight: bold; margin: 4px 0; }}
.rollback-charts {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.rollback-charts figure {{ margin: 0; }}
.rollback-charts figcaption {{ font-size: 85%; color: {GREY}; }}
</style>"""


class HtmlSummary:
    """Controller-side: the summary at the top of the HTML report and the reason column."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rows: dict[str, CheckRow] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self.rows.setdefault(report.nodeid, CheckRow(report.nodeid))
        if report.failed:
            row.verdict = "fail"
            row.reason = row.reason or reason_of(report)
        elif report.skipped:
            row.verdict = "skip"
            row.reason = reason_of(report)
        if report.when == "call":
            row.warnings += [str(v) for k, v in report.user_properties if k == "warning"]
            row.series += [series_from_json(d) for d in getattr(report, SERIES_ATTR, None) or []]
        recorded = [str(v) for k, v in report.user_properties if k == "verdict"]
        if recorded:
            row.verdict = recorded[-1]
        elif row.verdict == "pass" and row.warnings:
            row.verdict = "warn"

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        markers = self.config.option.markexpr or "all checks"
        report.title = f"Validation: {markers}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.insert(2, '<th class="sortable" data-column-type="reason">Reason</th>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        row = self.rows.get(report.nodeid)
        warned = report.when == "call" and report.passed and any(
            k == "warning" for k, _ in report.user_properties)
        if warned:
            cells[0] = f'<td class="col-result" style="color:{AMBER}">Passed (warn)</td>'
        reason = ""
        if report.failed or report.skipped:
            reason = reason_of(report)
        elif warned:
            reason = "; ".join(str(v) for k, v in report.user_properties if k == "warning")
        if row is not None and row.verdict == "inconclusive" and report.skipped:
            reason = f"inconclusive: {reason}"
        cells.insert(2, f'<td class="col-reason">{escape(reason)}</td>')

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_html(self, report: pytest.TestReport, data: list[str]) -> None:
        """A skip is its reason; a failure is its reason first, its traceback folded below."""
        if report.skipped:
            data[:] = [escape(reason_of(report))]
        elif report.failed:
            details = "".join(data)
            data[:] = [f'<b style="color:{RED}">{escape(reason_of(report))}</b>\n',
                       f"<details><summary>traceback and output</summary>{details}</details>"]

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        prefix.append(_STYLE + self.summary_html())

    def summary_html(self) -> str:
        rows = list(self.rows.values())
        failed = [r for r in rows if r.verdict == "fail"]
        warned = [r for r in rows if r.verdict == "warn"]
        passed = [r for r in rows if r.verdict in ("pass", "warn")]
        skipped = [r for r in rows if r.verdict in ("skip", "inconclusive")]
        counts = (f"{len(passed)} passed ({len(warned)} with a warning), {len(failed)} failed, "
                  f"{len(skipped)} skipped or inconclusive, of {len(rows)} checks")
        if failed:
            verdict, colour = f"FAIL: {len(failed)} check(s) failed", RED
        elif not passed:
            verdict, colour = "NOTHING CHECKED: no check passed or failed", RED
        elif warned:
            verdict, colour = f"PASS with {len(warned)} warning(s)", AMBER
        else:
            verdict, colour = "PASS", GREEN
        parts = ['<div class="rollback-summary" id="rollback-summary">',
                 f'<p class="rollback-verdict" style="color:{colour}">{escape(verdict)}</p>',
                 f"<p>{escape(counts)}</p>"]
        if failed:
            parts.append(f'<h3 style="color:{RED}">Failing checks</h3><ul class="rollback-failed">')
            parts += [f'<li style="color:{RED}"><b>{escape(r.nodeid)}</b>: {escape(r.reason)}</li>'
                      for r in failed]
            parts.append("</ul>")
        if warned:
            parts.append(f'<h3 style="color:{AMBER}">Warnings: checks that passed with a warning</h3>'
                         '<ul class="rollback-warned">')
            parts += [f'<li style="color:{AMBER}"><b>{escape(r.nodeid)}</b>: '
                      f"{escape('; '.join(r.warnings))}</li>" for r in warned]
            parts.append("</ul>")
        charts = [(r.nodeid, series) for r in rows for series in r.series]
        if charts:
            parts.append('<h3>Latency per endpoint</h3><div class="rollback-charts">')
            parts += [f"<figure>{latency_svg(series)}<figcaption>{escape(nodeid)}</figcaption></figure>"
                      for nodeid, series in charts]
            parts.append("</div>")
        if skipped:
            parts.append(f'<h3 style="color:{GREY}">Skipped or inconclusive</h3><ul>')
            parts += [f'<li style="color:{GREY}">{escape(r.nodeid)}: {escape(r.reason)}</li>'
                      for r in skipped]
            parts.append("</ul>")
        parts.append("</div>")
        return "".join(parts)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(HTML_SUMMARY, None)
    if plugin is not None:
        config.pluginmanager.unregister(plugin)
        del config.stash[HTML_SUMMARY]
