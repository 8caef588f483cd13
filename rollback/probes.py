"""Small measurements of the target, each returning a typed result with the values it measured.

    probe_api_health(client)                 -> ApiHealth       GET /health: up? database? version?
    sample_endpoints(client, key, paths, n)  -> [Sample]        n concurrent GETs per path:
                                                                p50/p95, errors, rate limiting
    sample(paths, n, send)                   -> {path: Sample}  the one sampler, which the
                                                                checks use too (checks/probe.py)
    probe_database(url, timeout_s)           -> DatabaseProbe   connect time and SELECT 1, read-only

They never raise for what they measure (a refused connection is a result, not an exception),
only send GETs, and open the database session read-only. They are cheap enough to run every
second: the continuous monitor calls them each cycle instead of starting pytest, and the
pytest checks may call the same functions.

Error rate, as the guide's alert trigger counts it: server errors (5xx), timeouts and failed
connections over the requests of a sample but its 429s. A 429 is the probe's own rate limit
being spent, not the API failing: it is counted apart (`rate_limited`) and tells the operator
to slow down. Latency is the time to the successful answers, a timeout infinitely slow.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import psycopg

from rollback.profile import HealthShape, Profile, VersionUnknown, deployed_version, dig

__all__ = [
    "ApiHealth",
    "DatabaseProbe",
    "Outcome",
    "Sample",
    "error_rate",
    "percentile",
    "probe_api_health",
    "probe_database",
    "request",
    "sample",
    "sample_endpoints",
]

USER_AGENT = "rollback-toolkit-monitor"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 < q <= 100) by nearest rank: a value of the sample, never interpolated."""
    if not values:
        raise ValueError("percentile of an empty sample")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _reason(exc: BaseException) -> str:
    """A transport error as an operator reads it: 'timeout', 'connection refused', ..."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    text = str(exc).strip() or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return f"{type(exc).__name__}: {text}"[:200]


# --- API health --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiHealth:
    """What GET /health answered: `available` is True only for a 200 that says status ok."""

    available: bool
    elapsed_ms: float
    status_code: int | None = None
    status: str | None = None
    database: str | None = None
    version: str | None = None
    reason: str | None = None  # why it is not available

    def describe(self) -> str:
        if self.available:
            return f"ok in {self.elapsed_ms:.0f} ms (version {(self.version or '?')[:12]})"
        return self.reason or "unavailable"


def probe_api_health(client: httpx.Client, shape: HealthShape | None = None, *,
                     version_field: str = "version", version_header: str | None = None) -> ApiHealth:
    """GET the health path once, as the profile's HealthShape describes it.

    Unreachable, a timeout, a non-200, a status word that fails, or a database status that is
    not ok: not available. A warning word (`degraded`) is available.
    """
    shape = shape or HealthShape()
    started = time.perf_counter()
    try:
        response = client.get(shape.path, follow_redirects=shape.follow_redirects)
    except httpx.TransportError as exc:
        return ApiHealth(False, (time.perf_counter() - started) * 1000, reason=_reason(exc))
    elapsed = (time.perf_counter() - started) * 1000
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        where = f" at {response.url.path}" if response.url.path != shape.path else ""
        return ApiHealth(False, elapsed, response.status_code,
                         reason=f"HTTP {response.status_code}{where} without a JSON health body")

    def text(value: object) -> str | None:
        return None if value is None else str(value)

    status = text(dig(body, shape.status_field))
    database = text(dig(body, shape.database_field)) if shape.database_field else None
    version = (response.headers.get(version_header) if version_header
               else text(dig(body, version_field)))
    database_ok = not shape.database_field or database in shape.database_ok
    available = response.status_code == 200 and shape.verdict(status) != "fail" and database_ok
    reason = None
    if not available:
        reason = f"HTTP {response.status_code}, status {status or '?'}"
        if not database_ok:
            reason += f", database {database or 'not reported'}"
    return ApiHealth(available, elapsed, response.status_code, status, database, version, reason)


def probe_served(client: httpx.Client, profile: Profile, api_base_url: str) -> ApiHealth:
    """Health as the profile describes it, with `version` read from the profile's version
    source (a health field, a header, a command such as `vercel inspect`, or none)."""
    source = profile.version
    result = probe_api_health(client, profile.health, version_field=source.field,
                              version_header=source.header if source.source == "header" else None)
    if source.source in ("health_field", "header"):
        return result
    version = None
    if source.source == "command" and result.available:
        try:
            version = deployed_version(profile, api_base_url)
        except VersionUnknown as exc:
            return ApiHealth(result.available, result.elapsed_ms, result.status_code, result.status,
                             result.database, None, f"version unknown: {exc}")
    return ApiHealth(result.available, result.elapsed_ms, result.status_code, result.status,
                     result.database, version, result.reason)


# --- latency and error rate: the one sampler -----------------------------------------------------
#
# The checks (checks/probe.py, with their breaker and pacing) and the monitor both sample
# through `sample()` into `Sample`s, and judge them by the same rules:
#
# - latency is the time to each successful (2xx) answer; a request that got no answer in time
#   counts as infinitely slow; server errors, other answers (401, 404, ...), 429s and requests
#   not sent are not timed: the error rate and the status checks judge those;
# - percentiles by nearest rank (`percentile`): a value of the sample, never interpolated;
# - the error rate counts server errors (5xx), timeouts and failed connections over the
#   requests that say something about the system: all but the 429s (the sampler's own key over
#   its limit).

MAX_WORKERS = 8


@dataclass(frozen=True)
class Outcome:
    """One GET of a sample: its status, or the transport error that replaced it."""

    path: str
    url: str
    status: int | None
    elapsed_ms: float
    #: 'ReadTimeout: timed out', 'ConnectError: ...', or 'NotSent (why)' for a request the
    #: checks' breaker held back
    error: str | None = None
    body: str = ""  # an excerpt of an answer >= 400
    cache_hit: bool = False
    rate_limit: int | None = None  # X-RateLimit-Limit, per minute

    @classmethod
    def answered(cls, path: str, response: httpx.Response, elapsed_ms: float, body: str = ""
                 ) -> Outcome:
        limit = response.headers.get("X-RateLimit-Limit")
        return cls(path, str(response.request.url), response.status_code, elapsed_ms, body=body,
                   cache_hit=response.headers.get("X-Cache", "").upper() == "HIT",
                   rate_limit=int(limit) if limit and limit.isdigit() else None)

    @classmethod
    def unanswered(cls, path: str, url: str, exc: BaseException, elapsed_ms: float) -> Outcome:
        return cls(path, url, None, elapsed_ms, f"{type(exc).__name__}: {exc}"[:300])

    @property
    def timed_out(self) -> bool:
        return self.error is not None and "Timeout" in self.error

    @property
    def sent(self) -> bool:
        return not (self.error or "").startswith("NotSent")

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def failed(self) -> bool:
        """A server error, a timeout or a failed connection: what the error rate counts."""
        return self.status is None or self.status >= 500

    @property
    def rate_limited(self) -> bool:
        """A 429: the sampler's own key was over its limit; it says nothing about the system."""
        return self.status == 429

    @property
    def label(self) -> str:
        """As an operator reads it: 'HTTP 200', 'timeout', 'connection refused', 'not sent'."""
        if self.status is not None:
            return f"HTTP {self.status}"
        if self.timed_out:
            return "timeout"
        if not self.sent:
            return "not sent"
        text = self.error or "no answer"
        return "connection refused" if "refused" in text.lower() else text[:200]


def _stat(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


@dataclass(frozen=True)
class Sample:
    """The outcomes of the GETs to one path, and what they say (see the rules above)."""

    path: str
    outcomes: tuple[Outcome, ...]

    @property
    def judged(self) -> tuple[Outcome, ...]:
        """The outcomes that say something about the system: all but the 429s."""
        return tuple(o for o in self.outcomes if not o.rate_limited)

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def size(self) -> int:
        return len(self.judged)

    @property
    def latencies_ms(self) -> list[float]:
        """Time to each successful answer; a request that timed out is infinitely slow."""
        return [math.inf if o.timed_out else o.elapsed_ms for o in self.judged
                if o.succeeded or (o.timed_out and o.sent)]

    @property
    def p50_ms(self) -> float | None:
        return _stat(self.latencies_ms, 50)

    @property
    def p95_ms(self) -> float | None:
        """None when nothing could be timed; infinite when more than 5% of the timed requests
        got no answer in time."""
        return _stat(self.latencies_ms, 95)

    @property
    def max_ms(self) -> float | None:
        return max(self.latencies_ms, default=None)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def errors(self) -> int:
        return len(self.failures)

    @property
    def error_rate(self) -> float:
        return self.errors / self.size if self.size else 0.0

    @property
    def rate_limited(self) -> int:
        return sum(1 for o in self.outcomes if o.rate_limited)

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes if o.succeeded)

    @property
    def other(self) -> int:
        """Answers neither successful nor server errors nor 429s (401, 403, 404, redirects):
        the sampler itself is misconfigured."""
        return self.size - self.succeeded - self.errors

    @property
    def statuses(self) -> dict[str, int]:
        return dict(Counter(str(o.status) if o.status else "no answer" for o in self.outcomes))

    @property
    def labels(self) -> dict[str, int]:
        return dict(Counter(o.label for o in self.outcomes))

    @property
    def timeouts(self) -> int:
        return sum(1 for o in self.outcomes if o.timed_out)

    @property
    def cache_hits(self) -> int:
        return sum(1 for o in self.outcomes if o.cache_hit)

    @property
    def rate_limit(self) -> int | None:
        return min((o.rate_limit for o in self.outcomes if o.rate_limit is not None), default=None)

    def plus(self, more: Sample) -> Sample:
        return Sample(self.path, self.outcomes + more.outcomes)


def error_rate(samples: Sequence[Sample]) -> float:
    """Errors over the judged requests of all samples (0.0 for none)."""
    total = sum(s.size for s in samples)
    return sum(s.errors for s in samples) / total if total else 0.0


def request(client: httpx.Client, path: str, *, headers: Mapping[str, str] | None = None,
            params: Mapping[str, str] | None = None) -> Outcome:
    """One GET, its outcome; never raises for a transport error."""
    started = time.perf_counter()
    try:
        response = client.get(path, headers=headers, params=params)
    except httpx.TransportError as exc:
        return Outcome.unanswered(path, f"{client.base_url}{path}", exc,
                                  (time.perf_counter() - started) * 1000)
    return Outcome.answered(path, response, (time.perf_counter() - started) * 1000)


def sample(paths: Sequence[str], size: int, send: Callable[[str], Outcome], *,
           pool: Executor | None = None) -> dict[str, Sample]:
    """`size` GETs to each path through `send`, interleaved and concurrent: through `pool`, or
    MAX_WORKERS threads of its own. Every outcome is kept, in path order."""
    order = [path for _ in range(size) for path in paths]
    if not order:
        return {path: Sample(path, ()) for path in paths}
    if pool is None:
        with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(order))) as own:
            outcomes = list(own.map(send, order))
    else:
        outcomes = list(pool.map(send, order))
    return {path: Sample(path, tuple(o for o in outcomes if o.path == path)) for path in paths}


def sample_endpoints(
    client: httpx.Client,
    api_key: str,
    paths: Sequence[str],
    per_path: int,
    *,
    pool: Executor | None = None,
    bypass_cache: bool = False,
) -> list[Sample]:
    """The monitor's and the baseline's sample: `per_path` GETs to each path with the key.

    Pass a long-lived executor (and a long-lived client) when calling this repeatedly: the
    connections and threads are then reused instead of being built for every sample.
    `bypass_cache` adds a parameter the API ignores but a response cache keys on; it also fills
    that cache with entries nobody reads again, so it is off by default.
    """
    headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}

    def send(path: str) -> Outcome:
        params = {"_monitor_nonce": uuid.uuid4().hex} if bypass_cache else None
        return request(client, path, headers=headers, params=params)

    return list(sample(paths, per_path, send, pool=pool).values())


# --- database ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseProbe:
    """A fresh connection and `SELECT 1` in a read-only session."""

    ok: bool
    connect_ms: float | None = None
    query_ms: float | None = None
    reason: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"connect {self.connect_ms:.0f} ms, SELECT 1 {self.query_ms:.1f} ms"
        return self.reason or "failed"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def probe_database(url: str, timeout_s: float = 5.0) -> DatabaseProbe:
    """Connect (measuring how long it takes), run SELECT 1, disconnect. Never writes.

    The error text is psycopg's first line, which names host and port but never the password.
    """
    started = time.perf_counter()
    try:
        conn = psycopg.connect(
            url,
            connect_timeout=max(1, math.ceil(timeout_s)),
            autocommit=True,
            application_name="rollback-health-monitor",
            options="-c default_transaction_read_only=on -c statement_timeout=5000",
        )
    except psycopg.Error as exc:
        return DatabaseProbe(False, reason=f"cannot connect: {_first_line(exc)}")
    connect_ms = (time.perf_counter() - started) * 1000
    try:
        with conn:
            started = time.perf_counter()
            row = conn.execute("SELECT 1").fetchone()
            query_ms = (time.perf_counter() - started) * 1000
    except psycopg.Error as exc:
        return DatabaseProbe(False, connect_ms, reason=f"SELECT 1 failed: {_first_line(exc)}")
    if row != (1,):
        return DatabaseProbe(False, connect_ms, reason=f"SELECT 1 returned {row!r}")
    return DatabaseProbe(True, connect_ms, query_ms)
