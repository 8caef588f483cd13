"""Alert damping: one alert per incident, a reminder now and then, one recovery notice.

Per check, every cycle's status moves a small state machine:

    ok ──K failing cycles in a row──> firing ──M passing cycles in a row──> ok
               (ALERT)                  │  still failing R minutes after     (RECOVERY)
                                        └─ the last notice: REMINDER

- An UNKNOWN or SKIPPED cycle neither fails nor passes: it leaves both streaks as they are.
- A passing cycle while firing does not end the incident by itself: M passing in a row do, and
  a failure in between starts the count again (a flapping check stays one incident).
- The incident starts at its first failing cycle, not when the alert fired, and ends at the
  first cycle of the passing streak that resolved it.

`AlertBook.to_json()` / `from_json()` carry the state across runs, so that a restarted monitor
(or one started by cron for a single cycle) still sends the recovery of an incident it alerted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rollback.monitor.checks import CHECKS, CheckResult, Status
from rollback.monitor.timefmt import iso, parse_iso, stamp


class EventKind(enum.StrEnum):
    ALERT = "alert"
    REMINDER = "reminder"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class Policy:
    fire_after: int = 2
    resolve_after: int = 2
    remind_every: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        if self.fire_after < 1 or self.resolve_after < 1:
            raise ValueError("fire_after and resolve_after must be at least 1")
        if self.remind_every <= timedelta(0):
            raise ValueError("remind_every must be positive")


@dataclass
class Incident:
    id: str
    check: str
    started: datetime  # first failing cycle
    fired: datetime
    detail: str  # what the check said when the alert fired
    last_detail: str
    last_notice: datetime
    reminders: int = 0
    failing_cycles: int = 0
    ended: datetime | None = None  # first passing cycle of the streak that resolved it
    resolved: datetime | None = None  # when the recovery was declared

    @property
    def title(self) -> str:
        return CHECKS.get(self.check, self.check)

    def duration(self, now: datetime | None = None) -> timedelta:
        return (self.ended or now or self.last_notice) - self.started

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = iso(value)
        data["title"] = self.title
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Incident:
        fields = dict(data)
        fields.pop("title", None)
        for key in ("started", "fired", "last_notice", "ended", "resolved"):
            if fields.get(key):
                fields[key] = parse_iso(fields[key])
        return cls(**fields)


@dataclass(frozen=True)
class AlertEvent:
    kind: EventKind
    incident: Incident
    at: datetime

    def to_record(self) -> dict[str, Any]:
        inc = self.incident
        return {
            "kind": "event", "event": str(self.kind), "ts": iso(self.at), "check": inc.check,
            "incident": inc.id, "started": iso(inc.started),
            "ended": iso(inc.ended) if inc.ended else None,
            "duration_s": round(inc.duration(self.at).total_seconds(), 3),
            "detail": inc.last_detail if self.kind is not EventKind.ALERT else inc.detail,
            "reminders": inc.reminders,
        }


@dataclass
class CheckState:
    fail_streak: int = 0
    pass_streak: int = 0
    failing_since: datetime | None = None  # first failure of the current failing streak
    passing_since: datetime | None = None  # first pass of the current passing streak
    last_success: datetime | None = None
    incident: Incident | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "fail_streak": self.fail_streak, "pass_streak": self.pass_streak,
            "failing_since": iso(self.failing_since) if self.failing_since else None,
            "passing_since": iso(self.passing_since) if self.passing_since else None,
            "last_success": iso(self.last_success) if self.last_success else None,
            "incident": self.incident.to_json() if self.incident else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckState:
        def when(key: str) -> datetime | None:
            return parse_iso(data[key]) if data.get(key) else None

        return cls(
            fail_streak=int(data.get("fail_streak", 0)),
            pass_streak=int(data.get("pass_streak", 0)),
            failing_since=when("failing_since"),
            passing_since=when("passing_since"),
            last_success=when("last_success"),
            incident=Incident.from_json(data["incident"]) if data.get("incident") else None,
        )


@dataclass
class AlertBook:
    """The damping state of every check, fed one cycle at a time."""

    policy: Policy
    states: dict[str, CheckState] = field(default_factory=dict)

    def state(self, check: str) -> CheckState:
        return self.states.setdefault(check, CheckState())

    @property
    def open_incidents(self) -> list[Incident]:
        return [s.incident for s in self.states.values() if s.incident is not None]

    def observe(self, at: datetime, results: Mapping[str, CheckResult]) -> list[AlertEvent]:
        """Feed one cycle (started at `at`); returns the notices it calls for, usually none."""
        events: list[AlertEvent] = []
        for name, result in results.items():
            event = self._observe_one(self.state(name), name, at, result)
            if event is not None:
                events.append(event)
        return events

    def _observe_one(self, st: CheckState, name: str, at: datetime, result: CheckResult) -> AlertEvent | None:
        policy = self.policy
        if result.status is Status.FAIL:
            if st.fail_streak == 0:
                st.failing_since = at
            st.fail_streak += 1
            st.pass_streak, st.passing_since = 0, None
            inc = st.incident
            if inc is None:
                if st.fail_streak >= policy.fire_after:
                    assert st.failing_since is not None
                    inc = Incident(
                        id=f"{stamp(st.failing_since)}-{name}", check=name, started=st.failing_since,
                        fired=at, detail=result.detail, last_detail=result.detail, last_notice=at,
                        failing_cycles=st.fail_streak,
                    )
                    st.incident = inc
                    return AlertEvent(EventKind.ALERT, inc, at)
                return None
            inc.failing_cycles += 1
            inc.last_detail = result.detail
            if at - inc.last_notice >= policy.remind_every:
                inc.last_notice = at
                inc.reminders += 1
                return AlertEvent(EventKind.REMINDER, inc, at)
            return None
        if result.status.passing:
            st.last_success = at
            if st.pass_streak == 0:
                st.passing_since = at
            st.pass_streak += 1
            st.fail_streak, st.failing_since = 0, None
            inc = st.incident
            if inc is not None and st.pass_streak >= policy.resolve_after:
                inc.ended, inc.resolved, inc.last_detail = st.passing_since, at, result.detail
                st.incident = None
                return AlertEvent(EventKind.RECOVERY, inc, at)
        return None

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "checks": {name: s.to_json() for name, s in self.states.items()}}

    @classmethod
    def from_json(cls, policy: Policy, data: Mapping[str, Any]) -> AlertBook:
        checks = data.get("checks") or {}
        return cls(policy, {name: CheckState.from_json(s) for name, s in checks.items()})
