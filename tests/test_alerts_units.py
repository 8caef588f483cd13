"""The monitor's alert damping (`rollback.monitor.alerts`) cycle by cycle: when an alert fires,
when a reminder is due, when an incident ends and what each notice and record carries. A cycle
is one letter: F fails, P passes, W passes with a warning, U could not be measured, S skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rollback.monitor.alerts import AlertBook, AlertEvent, CheckState, EventKind, Incident, Policy
from rollback.monitor.checks import CheckResult, Status

T0 = datetime(2026, 1, 22, 10, 15, tzinfo=UTC)
LETTERS = {"F": Status.FAIL, "P": Status.PASS, "W": Status.WARN, "U": Status.UNKNOWN,
           "S": Status.SKIPPED}


def feed(book: AlertBook, cycles: str, every: timedelta = timedelta(minutes=1),
         check: str = "api") -> list[str]:
    """The notices, as `<kind>@<cycle>`, that `cycles` call for, one cycle every `every`."""
    said = []
    for i, letter in enumerate(cycles):
        for event in book.observe(T0 + i * every, {check: CheckResult(check, LETTERS[letter], f"d{i}")}):
            said.append(f"{event.kind}@{i}")
    return said


@pytest.mark.parametrize(("fire", "resolve", "cycles", "said"), [
    (2, 2, "F", []),
    (2, 2, "FF", ["alert@1"]),
    (2, 2, "FPF", []),                        # not two in a row
    (2, 2, "FUF", ["alert@2"]),               # an unknown cycle leaves the streak as it is
    (2, 2, "FSF", ["alert@2"]),
    (1, 2, "F", ["alert@0"]),
    (3, 2, "FFPFF", []),
    (3, 2, "FFF", ["alert@2"]),
    (2, 2, "FFP", ["alert@1"]),               # one pass does not end it ...
    (2, 2, "FFPP", ["alert@1", "recovery@3"]),  # ... two in a row do
    (2, 2, "FFWW", ["alert@1", "recovery@3"]),  # a warning passes
    (2, 2, "FFPFPP", ["alert@1", "recovery@5"]),  # flapping: one incident
    (2, 2, "FFPUP", ["alert@1", "recovery@4"]),
    (2, 1, "FFP", ["alert@1", "recovery@2"]),
    (2, 3, "FFPP", ["alert@1"]),
    (2, 2, "FFPPFF", ["alert@1", "recovery@3", "alert@5"]),  # a new incident after recovery
    (2, 2, "PP", []),                         # passing without an incident: nothing to say
])
def test_alerts_fire_and_resolve_by_streaks(fire: int, resolve: int, cycles: str, said: list[str]) -> None:
    assert feed(AlertBook(Policy(fire, resolve, timedelta(hours=1))), cycles) == said


@pytest.mark.parametrize(("minutes", "cycles", "said"), [
    (15, 16, ["alert@1"]),                                # 14 min after the alert: not yet
    (15, 17, ["alert@1", "reminder@16"]),                 # at exactly remind_every: due
    (5, 17, ["alert@1", "reminder@6", "reminder@11", "reminder@16"]),  # from the last notice
])
def test_reminders_come_every_interval_after_the_last_notice(minutes: int, cycles: int,
                                                             said: list[str]) -> None:
    book = AlertBook(Policy(2, 2, timedelta(minutes=minutes)))
    assert feed(book, "F" * cycles) == said
    incident = book.open_incidents[0]
    assert incident.reminders == len(said) - 1
    assert incident.failing_cycles == cycles


def test_an_incident_records_its_span_details_and_counts() -> None:
    book = AlertBook(Policy(2, 2, timedelta(minutes=3)))
    events: list[AlertEvent] = []
    for i, letter in enumerate("PFUFFFFPFPP"):
        result = CheckResult("api", LETTERS[letter], f"d{i}")
        events += book.observe(T0 + timedelta(minutes=i), {"api": result})
    alert, reminder, recovery = events
    assert [e.kind for e in events] == [EventKind.ALERT, EventKind.REMINDER, EventKind.RECOVERY]
    assert alert.at == T0 + timedelta(minutes=3) and reminder.at == T0 + timedelta(minutes=6)
    inc = recovery.incident
    assert inc is alert.incident
    assert inc.id == "20260122T101600Z-api" and inc.check == "api" and inc.title == "API available"
    assert inc.started == T0 + timedelta(minutes=1)   # its first failing cycle, not when it fired
    assert inc.fired == T0 + timedelta(minutes=3) and inc.detail == "d3"
    assert inc.last_notice == T0 + timedelta(minutes=6) and inc.reminders == 1
    assert inc.failing_cycles == 6                     # F F F F F F (the U in between does not count)
    assert inc.ended == T0 + timedelta(minutes=9)      # the first pass of the streak that resolved it
    assert inc.resolved == T0 + timedelta(minutes=10) and inc.last_detail == "d10"
    assert inc.duration() == timedelta(minutes=8)
    assert book.open_incidents == []
    state = book.state("api")
    assert (state.fail_streak, state.pass_streak, state.failing_since, state.passing_since,
            state.last_success) == (0, 2, None, T0 + timedelta(minutes=9), T0 + timedelta(minutes=10))


def test_while_failing_the_state_counts_the_streak_from_its_first_failure() -> None:
    book = AlertBook(Policy(3, 2))
    feed(book, "PPF")
    state = book.state("api")
    assert (state.fail_streak, state.pass_streak, state.failing_since, state.passing_since) == (
        1, 0, T0 + timedelta(minutes=2), None)
    assert state.last_success == T0 + timedelta(minutes=1)
    feed(book, "F")  # a second feed starts at T0 again: the streak goes on
    assert book.state("api").fail_streak == 2 and book.state("api").failing_since == T0 + timedelta(minutes=2)


def test_a_duration_runs_to_now_while_open() -> None:
    inc = Incident("i", "api", T0, T0, "d", "d", T0 + timedelta(minutes=5))
    assert inc.duration() == timedelta(minutes=5)
    assert inc.duration(T0 + timedelta(minutes=7)) == timedelta(minutes=7)
    inc.ended = T0 + timedelta(minutes=2)
    assert inc.duration(T0 + timedelta(minutes=7)) == timedelta(minutes=2)
    assert Incident("i", "custom", T0, T0, "d", "d", T0).title == "custom"


def test_each_notice_records_what_it_is_about() -> None:
    book = AlertBook(Policy(1, 1, timedelta(minutes=1)))
    alert = book.observe(T0, {"latency": CheckResult("latency", Status.FAIL, "p95 1200 ms")})[0]
    assert alert.to_record() == {
        "kind": "event", "event": "alert", "ts": "2026-01-22T10:15:00.000Z", "check": "latency",
        "incident": "20260122T101500Z-latency", "started": "2026-01-22T10:15:00.000Z", "ended": None,
        "duration_s": 0.0, "detail": "p95 1200 ms", "reminders": 0}
    reminder = book.observe(T0 + timedelta(seconds=61.5),
                            {"latency": CheckResult("latency", Status.FAIL, "p95 1300 ms")})[0]
    assert reminder.to_record()["detail"] == "p95 1300 ms"
    assert reminder.to_record()["duration_s"] == 61.5 and reminder.to_record()["reminders"] == 1
    recovery = book.observe(T0 + timedelta(seconds=90),
                            {"latency": CheckResult("latency", Status.PASS, "p95 80 ms")})[0]
    assert recovery.to_record() == {
        "kind": "event", "event": "recovery", "ts": "2026-01-22T10:16:30.000Z", "check": "latency",
        "incident": "20260122T101500Z-latency", "started": "2026-01-22T10:15:00.000Z",
        "ended": "2026-01-22T10:16:30.000Z", "duration_s": 90.0, "detail": "p95 80 ms",
        "reminders": 1}


def test_the_state_survives_a_restart_exactly() -> None:
    book = AlertBook(Policy(2, 2))
    feed(book, "PFF", check="database")
    feed(book, "PW", check="api")
    data = book.to_json()
    assert data["version"] == 1
    assert data["checks"]["database"] == {
        "fail_streak": 2, "pass_streak": 0, "failing_since": "2026-01-22T10:16:00.000Z",
        "passing_since": None, "last_success": "2026-01-22T10:15:00.000Z",
        "incident": {"id": "20260122T101600Z-database", "check": "database",
                     "started": "2026-01-22T10:16:00.000Z", "fired": "2026-01-22T10:17:00.000Z",
                     "detail": "d2", "last_detail": "d2", "last_notice": "2026-01-22T10:17:00.000Z",
                     "reminders": 0, "failing_cycles": 2, "ended": None, "resolved": None,
                     "title": "Database connection"}}
    assert data["checks"]["api"] == {
        "fail_streak": 0, "pass_streak": 2, "failing_since": None,
        "passing_since": "2026-01-22T10:15:00.000Z", "last_success": "2026-01-22T10:16:00.000Z",
        "incident": None}
    again = AlertBook.from_json(Policy(2, 2), data)
    assert again.to_json() == data
    assert again.states == book.states
    # the restarted monitor sends the recovery of the incident the first one alerted
    assert feed(again, "PP", check="database") == ["recovery@1"]


def test_an_empty_or_old_state_starts_clean() -> None:
    assert AlertBook.from_json(Policy(), {}).states == {}
    assert AlertBook.from_json(Policy(), {"checks": None}).states == {}
    assert CheckState.from_json({}) == CheckState()


@pytest.mark.parametrize(("fire", "resolve", "remind", "says"), [
    (0, 2, timedelta(minutes=1), "fire_after and resolve_after must be at least 1"),
    (2, 0, timedelta(minutes=1), "fire_after and resolve_after must be at least 1"),
    (2, 2, timedelta(0), "remind_every must be positive"),
    (2, 2, timedelta(seconds=-1), "remind_every must be positive"),
])
def test_a_policy_that_would_never_or_always_notify_is_refused(fire: int, resolve: int,
                                                               remind: timedelta, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        Policy(fire, resolve, remind)
    assert str(caught.value) == says


def test_the_smallest_policy_is_accepted_and_the_default_is_two_two_fifteen() -> None:
    assert Policy(1, 1, timedelta(microseconds=1)).fire_after == 1
    assert Policy() == Policy(2, 2, timedelta(minutes=15))


def test_several_checks_in_one_cycle_each_have_their_own_state() -> None:
    book = AlertBook(Policy(1, 1))
    events = book.observe(T0, {"api": CheckResult("api", Status.FAIL, "x"),
                               "latency": CheckResult("latency", Status.PASS, "y"),
                               "database": CheckResult("database", Status.FAIL, "z")})
    assert [(e.kind, e.incident.check) for e in events] == [(EventKind.ALERT, "api"),
                                                            (EventKind.ALERT, "database")]
    assert [i.check for i in book.open_incidents] == ["api", "database"]


def test_a_resolved_incident_survives_a_round_trip_and_its_title_is_not_stored() -> None:
    inc = Incident("i", "api", T0, T0, "d", "d2", T0 + timedelta(minutes=1), reminders=1,
                   failing_cycles=3, ended=T0 + timedelta(minutes=2), resolved=T0 + timedelta(minutes=3))
    data = inc.to_json()
    assert data["ended"] == "2026-01-22T10:17:00.000Z" and data["title"] == "API available"
    assert Incident.from_json(data) == inc
    del data["title"]                       # a record written before titles were stored
    assert Incident.from_json(data) == inc
