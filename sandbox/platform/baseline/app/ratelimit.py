"""Per-key rate limits held in memory: fixed 60-second windows plus a UTC-day counter.

In memory is enough for one process; a restart (deploy) starts every window afresh.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from uuid import UUID

WINDOW_S = 60
DAY_S = 86_400


@dataclass(frozen=True)
class Usage:
    limit: int
    remaining: int
    reset_epoch: int
    retry_after_s: int | None  # set when the request is over a limit

    @property
    def exceeded(self) -> bool:
        return self.retry_after_s is not None

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_epoch),
        }
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class RateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minute: dict[UUID, tuple[int, int]] = {}  # key -> (window start, count)
        self._day: dict[UUID, tuple[int, int]] = {}  # key -> (day start, count)

    def hit(self, key_id: UUID, rpm: int, daily: int) -> Usage:
        """Count one request; the result says whether it is over a limit."""
        now = time.time()
        window = int(now // WINDOW_S) * WINDOW_S
        day = int(now // DAY_S) * DAY_S
        with self._lock:
            start, minute_count = self._minute.get(key_id, (window, 0))
            if start != window:
                minute_count = 0
            start, day_count = self._day.get(key_id, (day, 0))
            if start != day:
                day_count = 0
            minute_count += 1
            day_count += 1
            self._minute[key_id] = (window, minute_count)
            self._day[key_id] = (day, day_count)
        reset = window + WINDOW_S
        retry_after: int | None = None
        if day_count > daily:
            retry_after = max(1, math.ceil(day + DAY_S - now))
        elif minute_count > rpm:
            retry_after = max(1, math.ceil(reset - now))
        return Usage(
            limit=rpm,
            remaining=max(0, rpm - minute_count),
            reset_epoch=reset,
            retry_after_s=retry_after,
        )


def rate_limited(usage: Usage) -> str:
    return f"Rate limit exceeded: retry in {usage.retry_after_s} s"
