"""A fixed schedule, and the durations users type (`20s`, `90m`, `1h`, `7d`), up to a year.

Cycle k is due at t0 + k * interval. A cycle that runs past the next slot does not push every
later cycle back: the slots it overran are skipped and counted, and the next cycle starts on
the first slot still ahead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from rollback.errors import UsageError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}

#: the longest duration accepted: a monitor's run, interval or report window beyond a year is a
#: typo, and far beyond it the number no longer fits a timedelta or a timer
MAX_DURATION = timedelta(days=365)


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """'20s', '90m', '1h', '7d', '1.5h' or plain seconds ('30'), up to MAX_DURATION;
    UsageError names `what` otherwise."""
    match = _DURATION.match(text or "")
    if not match:
        raise UsageError(f"{what} {text!r}: expected a number with a unit, such as 20s, 90m, 1h or 7d")
    seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
    if seconds <= 0:
        raise UsageError(f"{what} {text!r}: must be more than zero")
    if seconds > MAX_DURATION.total_seconds():  # also catches inf: '1000...0' with 400 digits
        raise UsageError(f"{what} {text!r}: at most {format_duration(MAX_DURATION.total_seconds())}")
    return timedelta(seconds=seconds)


def format_duration(seconds: float) -> str:
    """A short human duration: '850 ms', '42 s', '3 min 5 s', '2 h 10 min', '3 d 4 h'."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@dataclass
class Schedule:
    """Slots on a fixed grid from `t0`, read from a monotonic clock."""

    interval: float
    t0: float
    clock: Callable[[], float]

    @classmethod
    def starting_now(cls, interval: float, clock: Callable[[], float]) -> Schedule:
        if interval <= 0:
            raise UsageError(f"interval must be more than zero, got {interval:g}")
        return cls(interval, clock(), clock)

    def due(self, slot: int) -> float:
        return self.t0 + slot * self.interval

    def next_slot(self, done: int) -> tuple[int, int]:
        """After slot `done` finished: the next slot to run and how many were skipped."""
        now = self.clock()
        ahead = max(done + 1, math.ceil((now - self.t0) / self.interval - 1e-9))
        return ahead, ahead - done - 1
