"""Reports: the default HTML report, each check's evidence in it (and in Allure), redaction.

A run that collects the checks and names no `--html` writes a self-contained report to
`<reports_dir>/<UTC timestamp>-pytest/report.html`. Only the controller writes reports; xdist
workers send their reports (with evidence already rendered into `extras`) to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
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
from checks.evidence import Evidence
from rollback.config import ENV_VARS

_TEMPLATE = Environment(autoescape=True).from_string("""\
<div class="rollback-evidence">
{% for message in evidence.warnings %}<p style="color:#b9770e"><b>WARN</b> {{ message }}</p>{% endfor %}
{% if evidence.values %}<table style="border-collapse:collapse;margin:4px 0">
{% for name, value in evidence.values.items() %}<tr>
<th style="text-align:left;padding:1px 8px">{{ name }}</th>
<td style="padding:1px 8px">{{ value }}</td></tr>{% endfor %}</table>{% endif %}
{% for svg in charts %}<div>{{ svg }}</div>{% endfor %}
{% if evidence.requests %}<table style="border-collapse:collapse;margin:4px 0;font-size:90%">
<tr><th>request</th><th>status</th><th>ms</th><th>body</th></tr>
{% for r in evidence.requests %}<tr><td style="padding:1px 8px">{{ r.method }} {{ r.url }}
{%- if r.note %} ({{ r.note }}){% endif %}</td>
<td style="padding:1px 8px">{{ r.status }}</td>
<td style="padding:1px 8px">{{ "%.0f"|format(r.elapsed_ms) if r.elapsed_ms is not none else "" }}</td>
<td style="padding:1px 8px"><code>{{ r.body }}</code></td></tr>{% endfor %}</table>{% endif %}
</div>""")


HTML_WARNINGS = pytest.StashKey["WarningsInHtml"]()


def render_evidence(evidence: Evidence) -> str:
    from markupsafe import Markup

    charts = [Markup(latency_svg(series)) for series in evidence.series]
    return _TEMPLATE.render(evidence=evidence, charts=charts)


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
    config.stash[HTML_WARNINGS] = WarningsInHtml(config)
    config.pluginmanager.register(config.stash[HTML_WARNINGS], "rollback-html-warnings")
    if getattr(config.option, "htmlpath", "absent") is None and not config.option.collectonly:
        config.option.htmlpath = str(_default_html_path(config))
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
    _attach_to_allure(evidence)
    return report


def _attach_to_allure(evidence: Evidence) -> None:
    try:
        import allure
    except ImportError:
        return
    # A no-op unless allure-pytest is recording (--alluredir).
    allure.attach(json.dumps(evidence.to_json(), indent=2, default=str), name="evidence",
                  attachment_type=allure.attachment_type.JSON)
    for series in evidence.series:
        allure.attach(latency_svg(series), name=f"latency {series.name}",
                      attachment_type=allure.attachment_type.SVG)


class WarningsInHtml:
    """Controller-side: marks warned checks in the HTML table and lists them in its summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.warned: list[tuple[str, list[str]]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed:
            messages = [str(v) for k, v in report.user_properties if k == "warning"]
            if messages:
                self.warned.append((report.nodeid, messages))

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        markers = self.config.option.markexpr or "all checks"
        report.title = f"Validation: {markers}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        if report.when == "call" and report.passed and any(
            k == "warning" for k, _ in report.user_properties
        ):
            cells[0] = '<td class="col-result" style="color:#b9770e">Passed (warn)</td>'

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        if not self.warned:
            return
        items = "".join(
            f"<li><b>{escape(nodeid)}</b>: {escape('; '.join(messages))}</li>"
            for nodeid, messages in self.warned
        )
        prefix.append(
            f'<div style="color:#b9770e"><p><b>{len(self.warned)} check(s) passed with a '
            f"warning</b></p><ul>{items}</ul></div>"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(HTML_WARNINGS, None)
    if plugin is not None:
        config.pluginmanager.unregister(plugin)
        del config.stash[HTML_WARNINGS]
