"""Small measurements of the target, each returning a typed result with the values it measured.

    probe_api_health(client)                 -> ApiHealth       GET /health: up? database? version?
    sample_endpoints(client, key, paths, n)  -> EndpointSample  n concurrent GETs per path:
                                                                p50/p95, errors, rate limiting
    probe_database(url, timeout_s)           -> DatabaseProbe   connect time and SELECT 1, read-only

They never raise for what they measure (a refused connection is a result, not an exception),
only send GETs, and open the database session read-only. They are cheap enough to run every
second: the continuous monitor calls them each cycle instead of starting pytest, and the
pytest checks may call the same functions.

Error rate, as the guide's alert trigger counts it: server errors (5xx), timeouts and failed
connections over all requests of a sample. A 429 is the probe's own rate limit being spent, not
the API failing: it is counted apart (`rate_limited`) and tells the operator to slow down.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import httpx
import psycopg

from rollback.profile import HealthShape, Profile, VersionUnknown, deployed_version, dig

__all__ = [
    "ApiHealth",
    "DatabaseProbe",
    "EndpointSample",
    "Request",
    "error_rate",
    "percentile",
    "probe_api_health",
    "probe_database",
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


# --- latency and error rate --------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One GET of a sample: its status, or the transport error that replaced it."""

    path: str
    elapsed_ms: float
    status: int | None = None
    error: str | None = None  # 'timeout', 'connection refused', ...
    cache_hit: bool = False
    rate_limit: int | None = None  # X-RateLimit-Limit, per minute

    @property
    def failed(self) -> bool:
        """A server error, a timeout or a failed connection: what the error rate counts."""
        return self.status is None or self.status >= 500

    @property
    def outcome(self) -> str:
        return (self.error or "no answer") if self.status is None else f"HTTP {self.status}"


@dataclass(frozen=True)
class EndpointSample:
    """`requests` concurrent GETs to one path. Latency percentiles count only 2xx answers."""

    path: str
    requests: int
    errors: int  # 5xx, timeouts, connection failures
    rate_limited: int  # 429
    other: int  # other non-2xx answers (401, 403, 404, ...): the probe itself is misconfigured
    outcomes: dict[str, int] = field(default_factory=dict)  # 'HTTP 200' -> 4, 'timeout' -> 1
    p50_ms: float | None = None
    p95_ms: float | None = None
    max_ms: float | None = None
    cache_hits: int = 0
    rate_limit: int | None = None

    @property
    def succeeded(self) -> int:
        return self.requests - self.errors - self.rate_limited - self.other

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, path: str, requests: Sequence[Request]) -> EndpointSample:
        ok = [r.elapsed_ms for r in requests if r.status is not None and 200 <= r.status < 300]
        errors = sum(1 for r in requests if r.failed)
        limited = sum(1 for r in requests if r.status == 429)
        limits = [r.rate_limit for r in requests if r.rate_limit is not None]
        return cls(
            path=path,
            requests=len(requests),
            errors=errors,
            rate_limited=limited,
            other=len(requests) - len(ok) - errors - limited,
            outcomes=dict(Counter(r.outcome for r in requests)),
            p50_ms=percentile(ok, 50) if ok else None,
            p95_ms=percentile(ok, 95) if ok else None,
            max_ms=max(ok) if ok else None,
            cache_hits=sum(1 for r in requests if r.cache_hit),
            rate_limit=min(limits) if limits else None,
        )


def error_rate(samples: Sequence[EndpointSample]) -> float:
    """Errors over all requests of the samples (0.0 for no requests)."""
    total = sum(s.requests for s in samples)
    return sum(s.errors for s in samples) / total if total else 0.0


def _get(client: httpx.Client, path: str, headers: dict[str, str], bypass_cache: bool) -> Request:
    params = {"_monitor_nonce": uuid.uuid4().hex} if bypass_cache else None
    started = time.perf_counter()
    try:
        response = client.get(path, headers=headers, params=params)
    except httpx.TransportError as exc:
        return Request(path, (time.perf_counter() - started) * 1000, error=_reason(exc))
    elapsed = (time.perf_counter() - started) * 1000
    limit = response.headers.get("X-RateLimit-Limit")
    return Request(
        path,
        elapsed,
        status=response.status_code,
        cache_hit=response.headers.get("X-Cache", "").upper() == "HIT",
        rate_limit=int(limit) if limit and limit.isdigit() else None,
    )


def sample_endpoints(
    client: httpx.Client,
    api_key: str,
    paths: Sequence[str],
    per_path: int,
    *,
    pool: Executor | None = None,
    bypass_cache: bool = False,
) -> list[EndpointSample]:
    """`per_path` GETs to each path with the key, interleaved, concurrent through `pool`.

    Pass a long-lived executor (and a long-lived client) when calling this repeatedly: the
    connections and threads are then reused instead of being built for every sample.
    `bypass_cache` adds a parameter the API ignores but a response cache keys on; it also fills
    that cache with entries nobody reads again, so it is off by default.
    """
    headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
    order = [path for _ in range(per_path) for path in paths]
    if pool is None:
        results = [_get(client, path, headers, bypass_cache) for path in order]
    else:
        results = list(pool.map(lambda path: _get(client, path, headers, bypass_cache), order))
    return [EndpointSample.of(path, [r for r in results if r.path == path]) for path in paths]


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
