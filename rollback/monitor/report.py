"""The health report: a self-contained HTML page drawn from the monitor's history under `logs/`.

    report = build_report(History(logs_dir), since=now - 24h, until=now, thresholds=...)
    path = write_report(report, reports_dir / "health-report-<stamp>.html")

It shows uptime per check, p95 per endpoint and the error rate over time as inline SVG (no
script, no external CSS or fonts: the file can be mailed or archived as is), a status strip per
check, and every incident with start, end and duration. The geometry of the charts is computed
here; the template (`templates/health_report.html.j2`) only draws it.

An incident comes from the alert events in the history: an `alert` opens it, its `recovery`
closes it; one whose recovery is not in the window is shown as still open (or, if the monitor
stopped, as open when it was last seen). A check's uptime counts only cycles in which it could
be measured.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from rollback.config import Thresholds
from rollback.monitor.alerts import Incident
from rollback.monitor.checks import CHECKS
from rollback.monitor.schedule import format_duration
from rollback.monitor.store import History
from rollback.monitor.timefmt import iso, parse_iso, stamp

__all__ = ["HealthReport", "build_report", "default_path", "render", "write_report"]

WIDTH, HEIGHT = 760, 200  # plot area of a chart, in SVG units
LEFT, TOP, BOTTOM = 56, 12, 26  # margins for axis labels
MAX_BUCKETS = 360
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf")
_RANK = {"fail": 4, "unknown": 3, "warn": 2, "pass": 1, "skipped": 0}
STATUS_COLOURS = {"fail": "#d62728", "unknown": "#b0b0b0", "warn": "#e8a33d", "pass": "#3aa35b",
                  "skipped": "#eeeeee"}


@dataclass(frozen=True)
class Uptime:
    check: str
    title: str
    ok: int
    failed: int
    unknown: int
    skipped: int

    @property
    def measured(self) -> int:
        return self.ok + self.failed

    @property
    def ratio(self) -> float | None:
        return self.ok / self.measured if self.measured else None


@dataclass
class IncidentRow:
    id: str
    check: str
    title: str
    started: datetime
    ended: datetime | None  # None: still open at the end of the window
    alerted: datetime | None
    detail: str
    reminders: int = 0
    last_seen: datetime | None = None

    @property
    def open(self) -> bool:
        return self.ended is None

    @property
    def duration(self) -> str:
        end = self.ended or self.last_seen
        if end is None:
            return "?"
        lasted = format_duration((end - self.started).total_seconds())
        return lasted if self.ended else f"{lasted} so far"


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    paths: tuple[str, ...]  # one "x,y x,y ..." per unbroken run of points
    dots: tuple[tuple[float, float], ...] = ()  # lone points that no line joins


@dataclass(frozen=True)
class Chart:
    title: str
    series: tuple[Series, ...]
    y_ticks: tuple[tuple[float, str], ...]
    x_ticks: tuple[tuple[float, str], ...]
    limits: tuple[tuple[float, str, str], ...]  # (y, label, colour) threshold lines
    spans: tuple[tuple[float, float, str], ...]  # (x, width, label) incidents
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    bottom: int = BOTTOM
    empty: bool = False


@dataclass(frozen=True)
class Strip:
    check: str
    title: str
    cells: tuple[tuple[float, float, str, str], ...]  # (x, width, colour, tooltip)


@dataclass
class HealthReport:
    target: str
    api_base_url: str
    generated: datetime
    since: datetime
    until: datetime
    thresholds: Thresholds
    cycles: int = 0
    first: datetime | None = None
    last: datetime | None = None
    uptime: list[Uptime] = field(default_factory=list)
    overall: float | None = None  # share of cycles with no failing check
    incidents: list[IncidentRow] = field(default_factory=list)
    latency: Chart | None = None
    errors: Chart | None = None
    strips: list[Strip] = field(default_factory=list)
    missed: int = 0

    @property
    def window(self) -> str:
        return format_duration((self.until - self.since).total_seconds())


@dataclass
class _Bucket:
    start: float
    p95: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    status: dict[str, str] = field(default_factory=dict)
    cycles: int = 0


def _worse(a: str | None, b: str) -> str:
    return b if a is None or _RANK.get(b, 0) > _RANK.get(a, 0) else a


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def _ticks(top: float, fmt: str) -> tuple[tuple[float, str], ...]:
    return tuple((HEIGHT - HEIGHT * i / 4, fmt.format(top * i / 4)) for i in range(5))


class _Timeline:
    """Maps times in [first, last] to x in [0, WIDTH]."""

    def __init__(self, first: datetime, last: datetime) -> None:
        self.first = first
        self.span = max((last - first).total_seconds(), 1.0)

    def x(self, moment: datetime) -> float:
        return max(0.0, min(WIDTH, (moment - self.first).total_seconds() / self.span * WIDTH))

    def ticks(self) -> tuple[tuple[float, str], ...]:
        fmt = "%H:%M:%S" if self.span <= 3600 else "%d %H:%M"
        return tuple(
            (WIDTH * i / 4, (self.first + timedelta(seconds=self.span * i / 4)).strftime(fmt))
            for i in range(5)
        )


def _series(label: str, colour: str, points: Sequence[tuple[float, float | None]]) -> Series:
    paths: list[str] = []
    dots: list[tuple[float, float]] = []
    run: list[tuple[float, float]] = []
    for x, y in [*points, (0.0, None)]:
        if y is not None:
            run.append((x, y))
            continue
        if len(run) == 1:
            dots.append(run[0])
        elif run:
            paths.append(" ".join(f"{px:.1f},{py:.1f}" for px, py in run))
        run = []
    return Series(label, colour, tuple(paths), tuple(dots))


def build_report(history: History, *, since: datetime, until: datetime, thresholds: Thresholds,
                 target: str = "", api_base_url: str = "",
                 still_open: Sequence[Incident] = ()) -> HealthReport:
    """Read the window's history once and reduce it to what the page shows.

    `still_open`: incidents the monitor's saved state has open; one that began before the
    window and sent nothing within it is still shown.
    """
    report = HealthReport(target, api_base_url, until, since, until, thresholds)
    counts: dict[str, dict[str, int]] = {name: {} for name in CHECKS}
    cycles: list[dict[str, Any]] = []
    incidents: dict[str, IncidentRow] = {}
    healthy = 0
    for record in history.read(since, until):
        if record.get("kind") == "event":
            _apply_event(incidents, record)
            continue
        if record.get("kind") != "cycle":
            continue
        checks = record.get("checks") or {}
        for name, result in checks.items():
            status = str(result.get("status"))
            counts.setdefault(name, {})[status] = counts.setdefault(name, {}).get(status, 0) + 1
        if not any(str(r.get("status")) == "fail" for r in checks.values()):
            healthy += 1
        cycles.append(record)
    report.cycles = len(cycles)
    report.uptime = [
        Uptime(name, CHECKS.get(name, name), c.get("pass", 0) + c.get("warn", 0), c.get("fail", 0),
               c.get("unknown", 0), c.get("skipped", 0))
        for name, c in counts.items()
    ]
    report.overall = healthy / len(cycles) if cycles else None
    if cycles:
        report.first, report.last = parse_iso(cycles[0]["ts"]), parse_iso(cycles[-1]["ts"])
        report.missed = sum(1 for a, b in itertools.pairwise(cycles)
                            if isinstance(a.get("slot"), int) and isinstance(b.get("slot"), int)
                            and b["slot"] > a["slot"] + 1)
    for inc in still_open:
        if inc.id not in incidents and inc.started <= until:
            incidents[inc.id] = IncidentRow(inc.id, inc.check, inc.title, inc.started, None, inc.fired,
                                            inc.last_detail, inc.reminders)
    for row in incidents.values():
        if row.ended is None:
            row.last_seen = report.last or until
    report.incidents = sorted(incidents.values(), key=lambda r: r.started)
    if cycles:
        _draw(report, cycles)
    return report


def _apply_event(incidents: dict[str, IncidentRow], record: dict[str, Any]) -> None:
    key = str(record.get("incident"))
    check = str(record.get("check"))
    row = incidents.get(key)
    if row is None:
        row = incidents[key] = IncidentRow(
            id=key, check=check, title=CHECKS.get(check, check), started=parse_iso(record["started"]),
            ended=None, alerted=None, detail=str(record.get("detail") or ""),
        )
    event = record.get("event")
    if event == "alert":
        row.alerted = parse_iso(record["ts"])
        row.detail = str(record.get("detail") or row.detail)
    elif event == "reminder":
        row.reminders = int(record.get("reminders") or row.reminders)
    elif event == "recovery":
        row.ended = parse_iso(record["ended"]) if record.get("ended") else parse_iso(record["ts"])


def _draw(report: HealthReport, cycles: list[dict[str, Any]]) -> None:
    assert report.first is not None and report.last is not None
    line = _Timeline(report.first, report.last)
    size = line.span / min(MAX_BUCKETS, len(cycles))
    buckets: list[_Bucket | None] = [None] * min(MAX_BUCKETS, len(cycles))
    endpoints: list[str] = []
    for record in cycles:
        moment = parse_iso(record["ts"])
        index = min(len(buckets) - 1, int((moment - report.first).total_seconds() / size))
        bucket = buckets[index] or _Bucket(index * size)
        buckets[index] = bucket
        bucket.cycles += 1
        for path, sample in (record.get("endpoints") or {}).items():
            if path not in endpoints:
                endpoints.append(path)
            p95 = sample.get("p95_ms")
            if isinstance(p95, int | float):
                bucket.p95[path] = max(bucket.p95.get(path, 0.0), float(p95))
            bucket.requests += int(sample.get("n") or 0)
            bucket.errors += int(sample.get("errors") or 0)
        for name, result in (record.get("checks") or {}).items():
            bucket.status[name] = _worse(bucket.status.get(name), str(result.get("status")))

    def x_of(b: _Bucket) -> float:
        return (b.start + size / 2) / line.span * WIDTH

    spans = tuple(
        (line.x(r.started), max(2.0, line.x(r.ended or report.last) - line.x(r.started)), r.title)
        for r in report.incidents
        if (r.ended or report.last) >= report.first and r.started <= report.last
    )
    t = report.thresholds
    peak = max((v for b in buckets if b for v in b.p95.values()), default=0.0)
    top_ms = _nice_ceiling(max(peak, t.warn_ms) * 1.1)
    report.latency = Chart(
        title="p95 response time per endpoint (ms)",
        series=tuple(
            _series(path, COLOURS[i % len(COLOURS)],
                    [(x_of(b), HEIGHT - b.p95[path] / top_ms * HEIGHT) if path in b.p95 else (x_of(b), None)
                     for b in buckets if b])
            for i, path in enumerate(endpoints)
        ),
        y_ticks=_ticks(top_ms, "{:.0f}"),
        x_ticks=line.ticks(),
        limits=((HEIGHT - t.alert_ms / top_ms * HEIGHT, f"alert {t.alert_ms:g} ms", "#d62728"),
                (HEIGHT - t.warn_ms / top_ms * HEIGHT, f"warn {t.warn_ms:g} ms", "#e8a33d")),
        spans=spans,
        empty=peak == 0.0,
    )
    rates = [(b, b.errors / b.requests) for b in buckets if b and b.requests]
    top_rate = _nice_ceiling(max([r for _, r in rates] + [t.error_rate * 2]))
    report.errors = Chart(
        title="error rate of the synthetic sample (5xx, timeouts, failed connections)",
        series=(_series("error rate", "#d62728",
                        [(x_of(b), HEIGHT - r / top_rate * HEIGHT) for b, r in rates]),),
        y_ticks=_ticks(top_rate * 100, "{:.1f}%"),
        x_ticks=line.ticks(),
        limits=((HEIGHT - t.error_rate / top_rate * HEIGHT, f"alert {t.error_rate:.0%}", "#d62728"),),
        spans=spans,
        empty=not rates,
    )
    width = WIDTH / len(buckets)
    report.strips = [
        Strip(name, title, tuple(
            (b.start / line.span * WIDTH, width + 0.3, STATUS_COLOURS.get(b.status[name], "#eeeeee"),
             f"{b.status[name]} ({b.cycles} cycles from "
             f"{(report.first + timedelta(seconds=b.start)).strftime('%H:%M:%S')})")
            for b in buckets if b and name in b.status
        ))
        for name, title in CHECKS.items()
    ]


_ENV = Environment(loader=PackageLoader("rollback", "templates"),
                   autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


_ENV.filters["iso"] = lambda d: iso(d) if d else ""
_ENV.filters["percent"] = lambda v, digits=2: "n/a" if v is None else f"{v * 100:.{digits}f}%"


def render(report: HealthReport) -> str:
    return _ENV.get_template("health_report.html.j2").render(report=report, colours=STATUS_COLOURS)


def write_report(report: HealthReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(render(report), encoding="utf-8")
    partial.replace(path)
    return path


def default_path(reports_dir: Path, moment: datetime) -> Path:
    return reports_dir / f"health-report-{stamp(moment)}.html"
