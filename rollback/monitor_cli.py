"""`rollback health` and `rollback logs prune`: options in, library calls, one line per error out.

Registered on the `rollback` group by `rollback/cli.py`, which adds every command of `COMMANDS`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from rollback.console import edge, err, out
from rollback.errors import StepFailed, UsageError

MIN_INTERVAL_S = 0.1

#: `rollback health` (once) may take as long as this many checks at [thresholds] check_timeout_s
#: (90 s by default): a healthy run takes seconds, but against a hung API each of its ~50 checks
#: would wait out its own timeout, minutes in all
ONCE_BUDGET_CHECKS = 3


def _only_with(flag: str, given: dict[str, Any]) -> None:
    named = [name for name, value in given.items() if value not in (None, False)]
    if named:
        raise UsageError(f"{', '.join(named)} only applies with {flag}")


@click.command("health")
@click.option("--continuous", is_flag=True, help="Keep checking on a fixed schedule until stopped.")
@click.option("--interval", metavar="DURATION",
              help="Time between cycle starts: 30, 30s, 5m, up to 365d (default [health] interval_s, 30 s).")
@click.option("--duration", metavar="DURATION", help="Stop after this long: 20s, 90m, 1h, up to 365d.")
@click.option("--max-cycles", type=click.IntRange(min=1), metavar="N", help="Stop after N cycles.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve Prometheus metrics on this port while running.")
@click.option("--pushgateway", metavar="URL",
              help="Push metrics to this Prometheus Pushgateway after each cycle (or the one run).")
@click.option("--plain", is_flag=True, help="Plain lines instead of the live view, even on a terminal.")
@click.option("--report", is_flag=True, help="Write the HTML health report from the monitor's history.")
@click.option("--since", metavar="DURATION", help="With --report: the window, back from now (default 24h).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="With --report: the file to write (default reports/health-report-<UTC stamp>.html).")
@click.option("-v", "--verbose", is_flag=True, help="Once: show the checks' pytest output as it runs.")
@edge
def health(continuous: bool, interval: str | None, duration: str | None, max_cycles: int | None,
           metrics_port: int | None, pushgateway: str | None, plain: bool, report: bool,
           since: str | None, output: Path | None, verbose: bool) -> None:
    """Check the API and database: once (the health checks, an HTML report, exit 0 or 1; stopped
    after 3 x [thresholds] check_timeout_s, 90 s by default), continuously with alerts and
    metrics, or report on what the monitor recorded.

    \b
    Once:        rollback health
    After a rollback, every 30 s for an hour, with Prometheus metrics:
                 rollback health --continuous --duration 1h --metrics-port 9109
    Normal operation, every 5 minutes, pushing to a Pushgateway:
                 rollback health --continuous --interval 5m --pushgateway http://pushgateway:9091
    The last day as an HTML report:
                 rollback health --report --since 24h

    Alerts go to every Apprise URL in ROLLBACK_NOTIFY_URLS (slack://..., pagerduty://...,
    mailtos://..., json://...) and to logs/health-alert-*.json. Durations (30, 500ms, 20s,
    90m, 1h, 7d) go up to 365 days.

    Ctrl-C or SIGTERM stops the continuous monitor after the cycle in progress (a second
    Ctrl-C at once) and prints its summary; it stops a single run and its checks at once.
    Exit: 0 healthy, 1 a check failed (continuous: an incident still open at the end),
    2 bad usage, 130 a single run interrupted.
    """
    from rollback.config import load_settings
    from rollback.monitor.schedule import parse_duration

    if report:
        if continuous:
            raise UsageError("--report reads the history; run it apart from --continuous")
        _only_with("--continuous", {"--interval": interval, "--duration": duration,
                                    "--max-cycles": max_cycles, "--metrics-port": metrics_port,
                                    "--pushgateway": pushgateway, "--plain": plain})
        window = parse_duration(since or "24h", "--since")
        _write_report(load_settings(), window.total_seconds(), output)
        return
    _only_with("--report", {"--since": since, "--output": output})
    if not continuous:
        _only_with("--continuous", {"--interval": interval, "--duration": duration,
                                    "--max-cycles": max_cycles, "--metrics-port": metrics_port,
                                    "--plain": plain})
        _once(load_settings(), pushgateway, verbose)
        return
    # Parse every option before touching the network: a typo costs nothing.
    every = parse_duration(interval, "--interval").total_seconds() if interval else None
    if every is not None and every < MIN_INTERVAL_S:
        raise UsageError(f"--interval {interval}: at least {MIN_INTERVAL_S * 1000:.0f} ms, "
                         "or the monitor would spend its time probing")
    stop_after = parse_duration(duration, "--duration").total_seconds() if duration else None
    settings = load_settings()
    _continuous(settings, every or settings.health.interval_s, stop_after, max_cycles, metrics_port,
                pushgateway, plain)


def _once(settings: Any, pushgateway: str | None, verbose: bool) -> None:
    from rollback.runs.core import sigterm_as_interrupt
    from rollback.validate import run_validation

    budget = ONCE_BUDGET_CHECKS * settings.thresholds.check_timeout_s
    out.print(f"running the health checks against {settings.target.api_base_url} ...", markup=False)
    with sigterm_as_interrupt():  # a stopped job stops its checks too, and says so (exit 130)
        result = run_validation("health", reports_root=settings.paths.reports_dir,
                                echo=sys.stdout if verbose else None, timeout_s=budget)
    if result.usage_error:  # nothing was checked: say why in one line (exit 2)
        err.print(f"error: {escape(result.usage_error)}", soft_wrap=True)
        sys.exit(result.exit_code)
    for check in result.checks:
        if check.verdict == "fail":  # whole, on one line: copied from a log as it is
            reason = " ".join(check.message.split())
            out.print(f"[bold red]FAIL[/] {escape(check.nodeid)}: {escape(reason)}", soft_wrap=True)
        for warning in check.warnings:
            out.print(f"[yellow]WARN[/] {escape(check.nodeid)}: {escape(warning)}", soft_wrap=True)
    if result.duration_s >= budget and not result.healthy:  # stopped by the budget
        out.print("[bold red]STOPPED[/] " + escape(
            f"the health checks did not finish within {budget:g} s ({ONCE_BUDGET_CHECKS} x "
            "[thresholds] check_timeout_s): is the API or the database hung? The checks not "
            "reached are missing from the report"), soft_wrap=True)
    colour = "green" if result.healthy else "bold red"
    verdict = "healthy" if result.healthy else "unhealthy"
    out.print(f"[{colour}]{verdict}[/] {escape(result.summary())}", soft_wrap=True)
    if pushgateway:
        from rollback.monitor.metrics import push_validation

        push_validation(pushgateway, settings.target.name,
                        [(c.nodeid.rsplit("::", 1)[-1], c.verdict != "fail") for c in result.checks
                         if c.verdict in ("pass", "warn", "fail")],
                        result.healthy, lambda line: err.print(line, soft_wrap=True, markup=False))
    sys.exit(result.exit_code)


def _continuous(settings: Any, interval: float, duration: float | None, max_cycles: int | None,
                metrics_port: int | None, pushgateway: str | None, plain: bool) -> None:
    from rollback.monitor import Monitor, Options
    from rollback.monitor.view import LiveView, PlainView, View

    view: View
    if out.is_terminal and not plain:
        view = LiveView(out, f"{settings.target.name} {settings.target.api_base_url}", interval)
    else:
        view = PlainView(out)
    monitor = Monitor(settings, Options(interval, duration, max_cycles, metrics_port, pushgateway), view)
    summary = monitor.run()
    for line in summary.lines():
        out.print(line, soft_wrap=True, markup=False)
    sys.exit(summary.exit_code)


def _write_report(settings: Any, window_s: float, output: Path | None) -> None:
    from datetime import timedelta

    from rollback.monitor.alerts import AlertBook, Policy
    from rollback.monitor.report import build_report, default_path, write_report
    from rollback.monitor.store import History, load_state

    now = datetime.now(UTC)
    logs = settings.paths.logs_dir
    still_open = AlertBook.from_json(Policy(), load_state(logs, settings.identity.id) or {}).open_incidents
    report = build_report(History(logs), since=now - timedelta(seconds=window_s), until=now,
                          thresholds=settings.thresholds, target=settings.target.name,
                          api_base_url=settings.target.api_base_url, still_open=still_open)
    path = write_report(report, output or default_path(settings.paths.reports_dir, now))
    opened = sum(1 for r in report.incidents if r.open)
    out.print(f"health report {path}: {report.cycles} cycles over {report.window}, "
              f"{len(report.incidents)} incidents ({opened} open)", soft_wrap=True, markup=False)
    if not report.cycles:
        err.print(f"no monitor history under {settings.paths.logs_dir} in that window: "
                  "run `rollback health --continuous` first", soft_wrap=True, markup=False)


@click.group("logs")
def logs() -> None:
    """Files the toolkit writes under logs/ and reports/."""


@logs.command("prune")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@edge
def prune(dry_run: bool) -> None:
    """Remove logs and reports older than the retention policy ([retention] in rollback.toml).

    Rollback runs are kept 90 days, validation reports 30, health logs 7 (the guide's policy).
    Only the toolkit's own files are touched, dated by the date in their name.

    \b
    Example:
      rollback logs prune --dry-run
      rollback logs prune
    """
    from rollback import retention
    from rollback.config import load_settings

    settings = load_settings()
    r = settings.retention
    policy = (f"rollback runs {r.rollback_days} d, validation {r.validation_days} d, "
              f"health {r.health_days} d")
    entries = retention.plan(settings)
    if not entries:
        out.print(f"nothing to prune in {settings.paths.logs_dir}/ and {settings.paths.reports_dir}/ "
                  f"({policy})", soft_wrap=True, markup=False)
        return
    failed = [] if dry_run else retention.remove(entries)
    failed_paths = {item.path for item, _ in failed}
    verb = "would remove" if dry_run else "removed"
    for item in entries:
        if item.path not in failed_paths:
            out.print(f"{verb} {item.describe()}", soft_wrap=True, markup=False)
    for item, why in failed:
        err.print(f"could not remove {item.path}: {why}", soft_wrap=True, markup=False)
    done = len(entries) - len(failed)
    out.print(f"{done} {'would be removed' if dry_run else 'removed'} ({policy})", soft_wrap=True)
    if failed:
        raise StepFailed(f"{len(failed)} expired entries could not be removed (see above)")


COMMANDS: list[click.Command] = [health, logs]
