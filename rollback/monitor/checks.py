"""The four checks of a cycle, one per alert trigger of the guide, judged from the probes' results.

    api         API available        GET /health answers 200 with status ok
    latency     Response time        worst endpoint p95 <= alert_ms (warn above warn_ms)
    error_rate  Error rate           5xx, timeouts and failed connections <= error_rate
    database    Database connection  connect + SELECT 1 succeeds within db_connect_ms

A check that cannot be measured this cycle is UNKNOWN, never FAIL: when the API is down its
latency and error rate are not sampled, so one outage raises one alert (API unavailable), not
three. A check with nothing to measure against (no DATABASE_URL) is SKIPPED.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rollback.config import Thresholds
from rollback.probes import ApiHealth, DatabaseProbe, Sample, error_rate


class Status(enum.StrEnum):
    PASS = "pass"
    WARN = "warn"  # passes, but over the warning level: shown, never alerted
    FAIL = "fail"
    UNKNOWN = "unknown"  # could not be measured this cycle
    SKIPPED = "skipped"  # not configured

    @property
    def passing(self) -> bool:
        return self in (Status.PASS, Status.WARN)


SLOW_DOWN = "raise --interval or lower [health] samples_per_endpoint"

CHECKS: dict[str, str] = {
    "api": "API available",
    "latency": "Response time",
    "error_rate": "Error rate",
    "database": "Database connection",
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str  # one line, the observed value beside its limit
    value: float | None = None  # the measured figure: ms for latency/database, a ratio for errors

    @property
    def title(self) -> str:
        return CHECKS.get(self.name, self.name)


@dataclass(frozen=True)
class Measurements:
    """What the probes returned in one cycle."""

    api: ApiHealth
    samples: Sequence[Sample] = ()
    database: DatabaseProbe | None = None

    @property
    def error_rate(self) -> float | None:
        return error_rate(self.samples) if self.samples else None

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.samples)

    @property
    def rate_limited(self) -> int:
        return sum(s.rate_limited for s in self.samples)

    def worst_p95(self) -> Sample | None:
        measured = [s for s in self.samples if s.p95_ms is not None]
        return max(measured, key=lambda s: s.p95_ms or 0.0) if measured else None

    def to_record(self) -> dict[str, Any]:
        api = self.api
        db = self.database
        return {
            "api": {"available": api.available, "ms": _r(api.elapsed_ms), "status_code": api.status_code,
                    "database": api.database, "version": api.version, "reason": api.reason},
            "endpoints": {
                s.path: {"n": s.requests, "errors": s.errors, "rate_limited": s.rate_limited,
                         "other": s.other, "p50_ms": _r(s.p50_ms), "p95_ms": _r(s.p95_ms),
                         "timeouts": s.timeouts, "cache_hits": s.cache_hits}
                for s in self.samples
            },
            "error_rate": None if self.error_rate is None else round(self.error_rate, 4),
            "database": None if db is None else {"ok": db.ok, "connect_ms": _r(db.connect_ms),
                                                  "reason": db.reason},
        }


def _r(value: float | None) -> float | None:
    """Rounded for a record; an infinite p95 (timeouts) is kept as None, the timeouts counted."""
    return None if value is None or not math.isfinite(value) else round(value, 1)


def _api(m: Measurements) -> CheckResult:
    if m.api.available:
        return CheckResult("api", Status.PASS, m.api.describe(), m.api.elapsed_ms)
    return CheckResult("api", Status.FAIL, f"/health: {m.api.describe()}", m.api.elapsed_ms)


def _latency(m: Measurements, t: Thresholds, errors_failing: bool) -> CheckResult:
    if not m.api.available:
        return CheckResult("latency", Status.UNKNOWN, "not measured: API unavailable")
    worst = m.worst_p95()
    if worst is None or worst.p95_ms is None:
        outcomes = _outcomes(m.samples)
        if errors_failing or not m.samples:
            return CheckResult("latency", Status.UNKNOWN, f"no successful request ({outcomes})")
        if m.rate_limited and m.rate_limited == m.requests:
            return CheckResult("latency", Status.UNKNOWN,
                               f"every request rate limited (429): {SLOW_DOWN}")
        # 401/403/404 on a known-good GET: the monitor cannot measure, someone must look.
        return CheckResult("latency", Status.FAIL,
                           f"no successful request ({outcomes}): check TEST_API_KEY and its scopes")
    p95 = worst.p95_ms
    shown = f"{p95:.0f} ms" if math.isfinite(p95) else "beyond the request timeout"
    where = f"p95 {shown} over {worst.succeeded + worst.timeouts} requests to {worst.path}"
    if worst.timeouts:
        where += f" ({worst.timeouts} timed out)"
    value = p95 if math.isfinite(p95) else None
    if p95 > t.alert_ms:
        return CheckResult("latency", Status.FAIL, f"{where} > alert {t.alert_ms:g} ms", value)
    if p95 > t.warn_ms:
        return CheckResult("latency", Status.WARN, f"{where} > warn {t.warn_ms:g} ms", value)
    return CheckResult("latency", Status.PASS, f"{where} <= warn {t.warn_ms:g} ms", value)


def _error_rate(m: Measurements, t: Thresholds) -> CheckResult:
    if not m.api.available:
        return CheckResult("error_rate", Status.UNKNOWN, "not measured: API unavailable")
    rate = m.error_rate
    if rate is None:
        return CheckResult("error_rate", Status.UNKNOWN, "no request sent")
    errors = sum(s.errors for s in m.samples)
    detail = f"{rate:.1%} ({errors} of {m.requests} requests failed"
    failed_outcomes = {k: v for k, v in _merged(m.samples).items() if _is_failure(k)}
    if failed_outcomes:
        detail += ": " + ", ".join(f"{n}x {k}" for k, n in failed_outcomes.items())
    detail += ")"
    if rate > t.error_rate:
        return CheckResult("error_rate", Status.FAIL, f"{detail} > {t.error_rate:.1%}", rate)
    return CheckResult("error_rate", Status.PASS, f"{detail} <= {t.error_rate:.1%}", rate)


def _database(m: Measurements, t: Thresholds) -> CheckResult:
    db = m.database
    if db is None:
        return CheckResult("database", Status.SKIPPED, "DATABASE_URL not set")
    if not db.ok:
        return CheckResult("database", Status.FAIL, db.describe(), db.connect_ms)
    assert db.connect_ms is not None
    if db.connect_ms > t.db_connect_ms:
        return CheckResult("database", Status.FAIL,
                           f"connect {db.connect_ms:.0f} ms > limit {t.db_connect_ms:g} ms", db.connect_ms)
    return CheckResult("database", Status.PASS, db.describe(), db.connect_ms)


def evaluate(m: Measurements, thresholds: Thresholds) -> dict[str, CheckResult]:
    """Judge one cycle's measurements; keys in the order of CHECKS."""
    errors = _error_rate(m, thresholds)
    return {
        "api": _api(m),
        "latency": _latency(m, thresholds, errors.status is Status.FAIL),
        "error_rate": errors,
        "database": _database(m, thresholds),
    }


def _is_failure(outcome: str) -> bool:
    if not outcome.startswith("HTTP "):
        return True
    code = outcome.removeprefix("HTTP ")
    return code.isdigit() and int(code) >= 500


def _merged(samples: Sequence[Sample]) -> Mapping[str, int]:
    total: dict[str, int] = {}
    for s in samples:
        for outcome, n in s.labels.items():
            total[outcome] = total.get(outcome, 0) + n
    return dict(sorted(total.items(), key=lambda item: -item[1]))


def _outcomes(samples: Sequence[Sample]) -> str:
    return ", ".join(f"{n}x {k}" for k, n in _merged(samples).items()) or "nothing sent"




@dataclass(frozen=True)
class Cycle:
    """One cycle: when it ran, what the probes measured, and how each check judged it."""

    number: int  # 1 for the first cycle this run
    slot: int  # its place on the schedule: started due at t0 + slot * interval
    started: datetime
    lag_ms: float  # how late it started against its slot
    duration_ms: float
    measurements: Measurements
    checks: dict[str, CheckResult]

    @property
    def failing(self) -> list[CheckResult]:
        return [c for c in self.checks.values() if c.status is Status.FAIL]

    @property
    def healthy(self) -> bool:
        return not self.failing
