"""A steady read load on the API, and a sampler of the locks its database sessions wait for.

ReadLoad runs threads at fixed request rates (an open schedule: a slow answer delays that
thread's next request, it never causes a burst to catch up), each with its own connection to
the API on 127.0.0.1, and records every request: when it started, how long it took, what came
back. Two kinds of request:

    lookup   GET /v1/branches?pageSize=1, each with the next of many known keys: the API looks
             the key up and updates its `last_used_at` row, the row a conversion batch locks
    list     GET /v1/leads, /v1/appointments, /v1/branches (pageSize 20) with one tenant key

LockSampler polls pg_stat_activity every ~20 ms for client sessions waiting on a lock, and
keeps, per wait (backend pid + statement start), how long it has been waiting and who holds
the lock. The longest wait of an API session is the longest time a lock blocked the load.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from bench.stats import percentile, rounded

ENDPOINTS = ("/v1/leads", "/v1/appointments", "/v1/branches")
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Request:
    kind: str
    started: float  # time.monotonic()
    latency_ms: float
    status: int | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status != 200


def summarize(requests: Sequence[Request], seconds: float) -> dict[str, Any]:
    """Count, errors by kind, p50/p99/max latency and throughput of a window of requests."""
    latencies = [r.latency_ms for r in requests]
    errors = Counter(str(r.status) if r.status is not None else (r.error or "error")
                     for r in requests if r.failed)
    return {
        "requests": len(requests),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "p50_ms": rounded(percentile(latencies, 50), 1),
        "p99_ms": rounded(percentile(latencies, 99), 1),
        "max_ms": rounded(max(latencies, default=0.0), 1),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(requests) / seconds, 1) if seconds > 0 else None,
        "by_kind": {kind: len([r for r in requests if r.kind == kind]) for kind in ("lookup", "list")},
    }


class ReadLoad:
    """Fixed-rate read threads against `base_url`; bounded by `max_requests` and `max_seconds`."""

    def __init__(self, base_url: str, lookup_keys: Sequence[str], list_key: str, *,
                 lookup_threads: int = 3, lookup_rate: float = 15.0, list_threads: int = 1,
                 list_rate: float = 8.0, max_requests: int = 50_000, max_seconds: float = 300.0) -> None:
        if not base_url.startswith(("http://127.0.0.1:", "http://localhost:")):
            raise ValueError(f"the read load only runs against a loopback sandbox, not {base_url}")
        self.base_url = base_url
        self.lookup_keys = list(lookup_keys)
        self.list_key = list_key
        self.plan = [("lookup", i, lookup_threads, lookup_rate) for i in range(lookup_threads)] + \
                    [("list", i, list_threads, list_rate) for i in range(list_threads)]
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def offered_rate(self) -> float:
        return sum(rate for *_, rate in self.plan)

    def start(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        for kind, index, of, rate in self.plan:
            thread = threading.Thread(target=self._run, args=(kind, index, of, rate),
                                      name=f"load-{kind}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)

    def between(self, start: float, end: float) -> list[Request]:
        return [r for r in self.requests if start <= r.started < end]

    def _requests_of(self, kind: str, index: int, of: int) -> itertools.cycle[tuple[str, str]]:
        if kind == "lookup":
            mine = self.lookup_keys[index::of] or self.lookup_keys
            return itertools.cycle([("/v1/branches?pageSize=1", key) for key in mine])
        return itertools.cycle([(f"{path}?pageSize=20", self.list_key) for path in ENDPOINTS])

    def _run(self, kind: str, index: int, of: int, rate: float) -> None:
        period = 1.0 / rate
        jobs = self._requests_of(kind, index, of)
        next_at = time.monotonic() + period * index / max(of, 1)  # spread the threads' phases
        with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S,
                          headers={"User-Agent": "rollback-bench-load"}) as client:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= self._deadline or len(self.requests) >= self.max_requests:
                    return
                if next_at > now:
                    self._stop.wait(next_at - now)
                    continue
                path, key = next(jobs)
                started = time.monotonic()
                status, error = None, None
                try:
                    status = client.get(path, headers={"Authorization": f"Bearer {key}"}).status_code
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                self.requests.append(Request(kind, started, (time.monotonic() - started) * 1000,
                                             status, error))
                next_at = max(next_at + period, time.monotonic() - period)


@dataclass
class LockWait:
    pid: int
    first_seen: float  # time.monotonic()
    waited_ms: float
    query: str
    blockers: set[str] = field(default_factory=set)
    driver: bool = False  # the waiting session is the driver's (blocked by the API)


_WAITING = """
    SELECT a.pid, a.query_start, 1000 * extract(epoch FROM clock_timestamp() - a.query_start),
           a.application_name LIKE 'rollback %', left(a.query, 120),
           (SELECT array_agg(coalesce(nullif(b.application_name, ''), 'api'))
              FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid)))
      FROM pg_stat_activity a
     WHERE a.datname = current_database() AND a.backend_type = 'client backend'
       AND a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()
"""


class LockSampler:
    """Samples lock waits of the database's client sessions every `interval_s` in a thread."""

    def __init__(self, database_url: str, interval_s: float = 0.02) -> None:
        self.url = database_url
        self.interval_s = interval_s
        self.waits: dict[tuple[int, Any], LockWait] = {}
        self.samples = 0
        self.sample_gaps_ms: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True, application_name="bench lock sampler") as conn:
                last = time.monotonic()
                while not self._stop.is_set():
                    now = time.monotonic()
                    for pid, query_start, waited, driver, query, blockers in conn.execute(_WAITING):
                        wait = self.waits.setdefault((pid, query_start),
                                                     LockWait(pid, now, 0.0, query, driver=bool(driver)))
                        wait.waited_ms = max(wait.waited_ms, float(waited))
                        wait.blockers.update(blockers or [])
                    self.samples += 1
                    self.sample_gaps_ms.append((now - last) * 1000)
                    last = now
                    self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - now)))
        except psycopg.Error as exc:
            self.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"

    def between(self, start: float, end: float, *, driver: bool = False) -> list[LockWait]:
        return [w for w in self.waits.values() if start <= w.first_seen < end and w.driver == driver]


def summarize_waits(waits: Sequence[LockWait]) -> dict[str, Any]:
    longest = max(waits, key=lambda w: w.waited_ms, default=None)
    return {
        "waits_seen": len(waits),
        "longest_ms": rounded(longest.waited_ms, 1) if longest else 0.0,
        "over_1s": sum(1 for w in waits if w.waited_ms > 1000),
        "longest_query": longest.query if longest else None,
        "longest_blocked_by": sorted(longest.blockers) if longest else [],
    }


@contextlib.contextmanager
def running(load: ReadLoad, sampler: LockSampler) -> Any:
    sampler.start()
    load.start()
    try:
        yield load, sampler
    finally:
        load.stop()
        sampler.stop()
