"""The monitor's pure parts, without a network: damping, schedule, durations, notices, the report.

The behaviour against a real API, database and webhook receiver is in test_monitor.py.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollback.config import Thresholds
from rollback.errors import ConfigError, UsageError
from rollback.monitor.alerts import AlertBook, EventKind, Policy
from rollback.monitor.checks import CheckResult, Measurements, Status, evaluate
from rollback.monitor.notify import Notifier, compose
from rollback.monitor.report import build_report, render
from rollback.monitor.schedule import Schedule, format_duration, parse_duration
from rollback.monitor.store import History
from rollback.probes import ApiHealth, DatabaseProbe, Outcome, Sample, percentile

T0 = datetime(2026, 1, 22, 10, 0, tzinfo=UTC)


def feed(book: AlertBook, statuses: str, start: int = 0, check: str = "api") -> list[tuple[int, EventKind]]:
    """One cycle per character, a second apart: F fail, P pass, U unknown. Returns (cycle, event)."""
    kinds = {"F": Status.FAIL, "P": Status.PASS, "U": Status.UNKNOWN, "W": Status.WARN}
    events = []
    for i, code in enumerate(statuses, start=start):
        for event in book.observe(T0 + timedelta(seconds=i), {check: CheckResult(check, kinds[code], code)}):
            events.append((i, event.kind))
    return events


# --- damping ---------------------------------------------------------------------------------


def test_alert_fires_after_k_consecutive_failures_only() -> None:
    book = AlertBook(Policy(fire_after=3, resolve_after=2))
    assert feed(book, "FFPFFPFF") == []
    assert feed(book, "F", start=8) == [(8, EventKind.ALERT)]


def test_one_incident_while_the_check_flaps() -> None:
    book = AlertBook(Policy(fire_after=2, resolve_after=2))
    events = feed(book, "FF" + "PF" * 20 + "PP")
    assert events == [(1, EventKind.ALERT), (43, EventKind.RECOVERY)]


def test_recovery_dates_the_end_at_the_first_passing_cycle() -> None:
    book = AlertBook(Policy(fire_after=2, resolve_after=3))
    got = []
    for i, code in enumerate("PPFFFFPPP"):
        got += book.observe(T0 + timedelta(seconds=i),
                            {"api": CheckResult("api", Status.FAIL if code == "F" else Status.PASS, "")})
    recovery_event = got[-1]
    assert recovery_event.kind is EventKind.RECOVERY
    assert recovery_event.incident.started == T0 + timedelta(seconds=2)
    assert recovery_event.incident.ended == T0 + timedelta(seconds=6)
    assert recovery_event.at == T0 + timedelta(seconds=8)
    assert recovery_event.incident.duration() == timedelta(seconds=4)


def test_unknown_cycles_neither_fire_nor_resolve() -> None:
    book = AlertBook(Policy(fire_after=2, resolve_after=2))
    assert feed(book, "FUUUU") == []
    assert feed(book, "F", start=5) == [(5, EventKind.ALERT)]
    assert feed(book, "PUUUP", start=6) == [(10, EventKind.RECOVERY)]


def test_warn_counts_as_passing() -> None:
    book = AlertBook(Policy(fire_after=1, resolve_after=2))
    assert feed(book, "FWW") == [(0, EventKind.ALERT), (2, EventKind.RECOVERY)]


def test_reminders_come_at_most_every_r_minutes_while_failing() -> None:
    book = AlertBook(Policy(fire_after=2, resolve_after=2, remind_every=timedelta(seconds=10)))
    events = feed(book, "F" * 35 + "PP")
    assert events == [(1, EventKind.ALERT), (11, EventKind.REMINDER), (21, EventKind.REMINDER),
                      (31, EventKind.REMINDER), (36, EventKind.RECOVERY)]


def test_each_check_has_its_own_incident() -> None:
    book = AlertBook(Policy(fire_after=2, resolve_after=2))
    feed(book, "FFFF", check="latency")
    feed(book, "FF", check="database")
    assert sorted(i.check for i in book.open_incidents) == ["database", "latency"]


def test_state_survives_a_restart_so_the_recovery_is_still_sent() -> None:
    book = AlertBook(Policy(fire_after=2, resolve_after=2))
    feed(book, "FFF")
    saved = json.loads(json.dumps(book.to_json()))
    restarted = AlertBook.from_json(Policy(fire_after=2, resolve_after=2), saved)
    assert [i.check for i in restarted.open_incidents] == ["api"]
    events = feed(restarted, "PP", start=3)
    assert events == [(4, EventKind.RECOVERY)]
    assert restarted.open_incidents == []


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Policy(fire_after=0)
    with pytest.raises(ValueError):
        Policy(remind_every=timedelta(0))


# --- checks ------------------------------------------------------------------------------------


def sample(path: str, *statuses: int | None, ms: float = 20.0) -> Sample:
    return Sample(path, tuple(Outcome(path, path, s, ms, None if s else "ReadTimeout: timed out")
                              for s in statuses))


OK_API = ApiHealth(True, 3.0, 200, "ok", "ok", "abc")
THRESHOLDS = Thresholds()


def test_api_down_makes_one_failing_check_not_three() -> None:
    checks = evaluate(Measurements(ApiHealth(False, 1.0, reason="connection refused")), THRESHOLDS)
    assert [c.status for c in checks.values()] == [
        Status.FAIL, Status.UNKNOWN, Status.UNKNOWN, Status.SKIPPED]
    assert "connection refused" in checks["api"].detail


def test_latency_over_alert_fails_and_names_the_endpoint_and_limit() -> None:
    m = Measurements(OK_API, [sample("/v1/leads", 200, 200, ms=1240), sample("/v1/branches", 200, ms=10)])
    result = evaluate(m, THRESHOLDS)["latency"]
    assert result.status is Status.FAIL
    assert result.detail == "p95 1240 ms over 2 requests to /v1/leads > alert 1000 ms"


def test_latency_between_warn_and_alert_warns() -> None:
    m = Measurements(OK_API, [sample("/v1/leads", 200, ms=700)])
    assert evaluate(m, THRESHOLDS)["latency"].status is Status.WARN


def test_error_rate_counts_5xx_timeouts_not_429_or_404() -> None:
    m = Measurements(OK_API, [sample("/v1/leads", 200, 500, None, 429, 200, 200, 200, 200, 200, 200)])
    result = evaluate(m, THRESHOLDS)["error_rate"]
    assert result.value == pytest.approx(2 / 9)  # the 429 says nothing about the system: not counted
    assert result.status is Status.FAIL
    assert "1x HTTP 500" in result.detail and "1x timeout" in result.detail


def test_all_errors_leave_latency_unknown_not_failing() -> None:
    m = Measurements(OK_API, [sample("/v1/leads", 500, 500)])
    checks = evaluate(m, THRESHOLDS)
    assert (checks["error_rate"].status, checks["latency"].status) == (Status.FAIL, Status.UNKNOWN)


def test_a_rejected_key_fails_latency_with_a_hint() -> None:
    m = Measurements(OK_API, [sample("/v1/leads", 401, 401)])
    result = evaluate(m, THRESHOLDS)["latency"]
    assert result.status is Status.FAIL and "TEST_API_KEY" in result.detail


def test_slow_database_connect_fails() -> None:
    m = Measurements(OK_API, database=DatabaseProbe(True, 2500.0, 1.0))
    assert evaluate(m, THRESHOLDS)["database"].status is Status.FAIL


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 21))
    assert percentile(values, 95) == 19
    assert percentile(values, 50) == 10
    assert percentile([7.0], 95) == 7.0


# --- schedule ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_slow_cycle_skips_slots_without_shifting_later_ones() -> None:
    clock = FakeClock()
    schedule = Schedule.starting_now(1.0, clock)
    clock.now = 100.3  # cycle 0 took 0.3 s
    assert schedule.next_slot(0) == (1, 0)
    clock.now = 103.5  # cycle 1 started at 101 and took 2.5 s: slots 2 and 3 are gone
    assert schedule.next_slot(1) == (4, 2)
    assert schedule.due(4) == 104.0


@pytest.mark.parametrize(("text", "seconds"), [("20s", 20), ("90m", 5400), ("1h", 3600), ("30", 30),
                                               ("7d", 604800), ("1.5h", 5400), ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5s", "0", "1h30"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(UsageError, match="--interval"):
        parse_duration(text, "--interval")


@pytest.mark.parametrize("text", ["99999999999999h", "366d", "1" + "0" * 400])
def test_durations_beyond_a_year_are_refused_by_name(text: str) -> None:
    with pytest.raises(UsageError, match=r"--duration '[^']+': at most 365 d"):
        parse_duration(text, "--duration")


def test_a_year_is_the_longest_duration() -> None:
    assert parse_duration("365d") == timedelta(days=365)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.25, 42, 185, 7800, 97200)] == [
        "250 ms", "42 s", "3 min 5 s", "2 h 10 min", "1 d 3 h"]


# --- notices -------------------------------------------------------------------------------------


def test_notices_say_what_since_when_and_how_it_ended() -> None:
    book = AlertBook(Policy(fire_after=2, resolve_after=2))
    events = []
    for i, code in enumerate("FFFPP"):
        events += book.observe(T0 + timedelta(seconds=i),
                               {"api": CheckResult("api", Status.FAIL if code == "F" else Status.PASS,
                                                   "/health: connection refused" if code == "F" else "ok")})
    alert, recovery = (compose(e, "production", "https://api.example.com") for e in events)
    assert alert.title == "[ALERT] production: API available failing"
    assert "since 2026-01-22T10:00:00.000Z" in alert.body and "connection refused" in alert.body
    assert recovery.title == "[RECOVERED] production: API available ok again after 3 s"
    assert "https://api.example.com" in recovery.body


def test_unknown_notification_url_is_a_config_error_without_the_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        Notifier("json://127.0.0.1/ok bogus://s3cr3t-token@x", print)
    assert "entry 2" in str(caught.value) and "s3cr3t" not in str(caught.value)


# --- report from a synthetic history --------------------------------------------------------------


def write_history(logs: Path, failing: range, cycles: int = 60) -> None:
    history = History(logs)
    book = AlertBook(Policy(2, 2))
    for i in range(cycles):
        at = T0 + timedelta(seconds=i)
        bad = i in failing
        checks = {"api": CheckResult("api", Status.FAIL if bad else Status.PASS, "x")}
        for event in book.observe(at, checks):
            history.append(event.to_record(), event.at)
        history.append({
            "kind": "cycle", "ts": at.isoformat().replace("+00:00", "Z"), "cycle": i + 1, "slot": i,
            "checks": {"api": {"status": "fail" if bad else "pass"},
                       "latency": {"status": "unknown" if bad else "pass"}},
            "endpoints": {} if bad else {"/v1/leads": {"n": 5, "errors": 0, "p95_ms": 20.0 + i}},
        }, at)
    history.close()


def test_report_shows_uptime_and_the_incident_with_start_end_duration(tmp_path: Path) -> None:
    write_history(tmp_path, failing=range(20, 30))
    report = build_report(History(tmp_path), since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1),
                          thresholds=THRESHOLDS, target="production", api_base_url="https://api.example.com")
    assert report.cycles == 60
    (incident,) = report.incidents
    assert (incident.started, incident.ended) == (T0 + timedelta(seconds=20), T0 + timedelta(seconds=30))
    assert incident.duration == "10 s"
    api = next(u for u in report.uptime if u.check == "api")
    assert (api.ok, api.failed, api.ratio) == (50, 10, pytest.approx(50 / 60))
    html = render(report)
    assert "2026-01-22T10:00:20.000Z" in html and "2026-01-22T10:00:30.000Z" in html
    assert html.count("<svg") >= 3
    assert not re.search(r"<script|<link|\bsrc=|@import", html), "the report must be self-contained"


def test_report_marks_an_incident_still_open(tmp_path: Path) -> None:
    write_history(tmp_path, failing=range(50, 60))
    report = build_report(History(tmp_path), since=T0, until=T0 + timedelta(hours=1), thresholds=THRESHOLDS)
    (incident,) = report.incidents
    assert incident.open and incident.duration == "9 s so far"
    assert "still open" in render(report)


def test_report_of_an_empty_window_says_so(tmp_path: Path) -> None:
    report = build_report(History(tmp_path), since=T0, until=T0 + timedelta(hours=1), thresholds=THRESHOLDS)
    assert report.cycles == 0
    assert "No monitor cycles recorded" in render(report)


def test_history_skips_a_torn_last_line(tmp_path: Path) -> None:
    write_history(tmp_path, failing=range(0), cycles=3)
    (path,) = tmp_path.glob("health-history-*.jsonl")
    with path.open("a") as handle:
        handle.write('{"kind": "cycle", "ts": "2026-01-22T10:')
    assert len(list(History(tmp_path).read(T0 - timedelta(days=1), T0 + timedelta(days=1)))) == 3


def test_report_shows_an_incident_open_since_before_the_window(tmp_path: Path) -> None:
    from rollback.monitor.alerts import Incident

    write_history(tmp_path, failing=range(0), cycles=10)
    day_before = T0 - timedelta(days=1)
    inc = Incident(id="20260121T100000Z-database", check="database", started=day_before, fired=day_before,
                   detail="cannot connect", last_detail="cannot connect", last_notice=day_before)
    report = build_report(History(tmp_path), since=T0, until=T0 + timedelta(hours=1), thresholds=THRESHOLDS,
                          still_open=[inc])
    (row,) = report.incidents
    assert row.open and row.title == "Database connection" and row.duration == "1 d so far"


@pytest.mark.parametrize("statuses", ["F", "FF", "FFF", "FFFP", "FFFPP", "PFPF", "FFFFFFFPF"])
def test_saved_alert_state_reads_back_equal_at_every_point(statuses: str) -> None:
    """Whatever the streaks, the open incident, its times and counts: the state a restarted
    monitor loads is the state it saved (a reader that drops a field loses damping)."""
    policy = Policy(fire_after=2, resolve_after=2, remind_every=timedelta(seconds=3))
    book = AlertBook(policy)
    feed(book, statuses, check="latency")
    feed(book, statuses[::-1], check="database")
    saved = json.loads(json.dumps(book.to_json()))
    restarted = AlertBook.from_json(policy, saved)
    assert restarted.to_json() == book.to_json()
    for check in ("latency", "database"):
        assert restarted.state(check) == book.state(check)
    # and both go on alike
    assert feed(restarted, "FFFFPP", start=len(statuses)) == feed(book, "FFFFPP", start=len(statuses))
    events = [e for e in feed(AlertBook(policy), "FFF")]
    assert events and all(isinstance(kind, EventKind) for _, kind in events)
