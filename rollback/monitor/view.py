"""What the operator sees each cycle: a live rich table on a terminal, plain lines otherwise.

Both views show the same facts: overall status, each check with its observed value beside its
limit, p95 per endpoint, error rate, and for a failing check since when it fails and whether an
alert is out. `cycle_line()` is also the line written to `logs/health-check-YYYYMMDD.log`.
"""

from __future__ import annotations

import math
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rollback.monitor.alerts import AlertBook
from rollback.monitor.checks import Cycle, Status
from rollback.monitor.schedule import format_duration
from rollback.monitor.timefmt import clock, iso

_STYLE = {
    Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red",
    Status.UNKNOWN: "dim", Status.SKIPPED: "dim",
}


def overall(cycle: Cycle) -> str:
    if cycle.failing:
        return "FAIL"
    return "WARN" if any(c.status is Status.WARN for c in cycle.checks.values()) else "OK"


def endpoints_line(cycle: Cycle) -> str:
    m = cycle.measurements
    if not m.samples:
        return "p95 not measured"
    parts = [f"{s.path} {s.p95_ms:.0f} ms" if s.p95_ms is not None and math.isfinite(s.p95_ms)
             else f"{s.path} timeout" if s.p95_ms is not None else f"{s.path} -" for s in m.samples]
    rate = m.error_rate or 0.0
    line = "p95 " + ", ".join(parts) + f" · errors {rate:.1%} of {m.requests}"
    if m.rate_limited:
        line += f" · {m.rate_limited} rate limited (429)"
    return line


def cycle_line(cycle: Cycle, book: AlertBook) -> str:
    """One line per cycle: time, verdict, each check, and what fails since when."""
    checks = " ".join(f"{name}={c.status}" for name, c in cycle.checks.items())
    line = (f"{iso(cycle.started)} cycle={cycle.number} {overall(cycle)} {checks} "
            f"({endpoints_line(cycle)}; {cycle.duration_ms:.0f} ms)")
    for c in cycle.failing:
        since = book.state(c.name).failing_since
        alerted = " [alert sent]" if book.state(c.name).incident else ""
        line += f" | {c.name} failing since {clock(since) if since else '?'}{alerted}: {c.detail}"
    return line


class View(Protocol):
    def start(self) -> None: ...
    def cycle(self, cycle: Cycle, book: AlertBook, missed_total: int) -> None: ...
    def note(self, line: str) -> None: ...
    def stop(self) -> None: ...


class PlainView:
    """Not a terminal (cron, systemd, CI, a pipe): the log line each cycle, notes as they come."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def start(self) -> None:
        pass

    def cycle(self, cycle: Cycle, book: AlertBook, missed_total: int) -> None:
        self.console.print(cycle_line(cycle, book), soft_wrap=True, markup=False, highlight=False)

    def note(self, line: str) -> None:
        self.console.print(line, soft_wrap=True, markup=False, highlight=False)

    def stop(self) -> None:
        pass


class LiveView:
    """A table redrawn once per cycle (no background refresh: the monitor's CPU stays its own)."""

    def __init__(self, console: Console, title: str, interval: float) -> None:
        self.console, self.title, self.interval = console, title, interval
        self._live: Live | None = None

    def start(self) -> None:
        self._live = Live(Text(f"{self.title}: first cycle running..."), console=self.console,
                          auto_refresh=False, transient=False, redirect_stdout=False,
                          redirect_stderr=False)
        self._live.start(refresh=True)

    def cycle(self, cycle: Cycle, book: AlertBook, missed_total: int) -> None:
        if self._live is None:
            return
        verdict = overall(cycle)
        colour = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}[verdict]
        head = Text.assemble(
            (f"{verdict} ", colour), (f"{self.title} · cycle {cycle.number} at {clock(cycle.started)} "
                                      f"in {cycle.duration_ms:.0f} ms · every {self.interval:g} s", ""),
            (f" · {missed_total} missed" if missed_total else "", "yellow"),
        )
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        table.add_column("check")
        table.add_column("status")
        table.add_column("observed")
        table.add_column("failing since")
        for name, c in cycle.checks.items():
            state = book.state(name)
            since = ""
            if c.status is Status.FAIL and state.failing_since:
                lasted = format_duration((cycle.started - state.failing_since).total_seconds())
                since = f"{clock(state.failing_since)} ({lasted})"
                since += " · ALERT SENT" if state.incident else ""
            elif state.incident:
                since = f"recovering ({state.pass_streak} ok)"
            table.add_row(c.title, Text(str(c.status), _STYLE[c.status]), c.detail, since)
        self._live.update(Group(head, table, Text(endpoints_line(cycle), "dim")), refresh=True)

    def note(self, line: str) -> None:
        """Printed above the table, where it stays when the table is redrawn."""
        self.console.print(line, soft_wrap=True, markup=False, highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
