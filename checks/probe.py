"""Requests the checks make: one at a time with clear failures, or concurrent samples.

`get()` turns a missing answer or a spent rate limit into a failure that says what it means;
`sample()` sends `size` requests to each path concurrently and keeps every outcome, so the
latency and error-rate checks judge a percentile over many requests, never one.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from checks.evidence import Evidence, excerpt
from rollback.probes import percentile

MAX_WORKERS = 8
#: every validation request says who it is, so the real-traffic checks can leave them out
USER_AGENT = "rollback-toolkit-validation"


def cache_buster() -> dict[str, str]:
    """A query parameter the API ignores but a response cache keys on: never served from cache."""
    return {"_validation_nonce": uuid.uuid4().hex}


def get(
    client: httpx.Client,
    path: str,
    params: Mapping[str, Any] | None = None,
    *,
    evidence: Evidence | None = None,
    note: str = "",
    headers: Mapping[str, str] | None = None,
    follow_redirects: bool = False,
) -> httpx.Response:
    """GET path; a transport error or a 429 fails the check with what it means for on-call."""
    __tracebackhide__ = True
    started = time.perf_counter()
    try:
        response = client.get(path, params=params, headers=headers,
                              follow_redirects=follow_redirects)
    except httpx.TimeoutException as exc:
        elapsed = (time.perf_counter() - started) * 1000
        if evidence is not None:
            evidence.failed_request("GET", f"{client.base_url}{path}", repr(exc), elapsed)
        pytest.fail(f"GET {path}: no answer within {elapsed / 1000:.1f} s ({type(exc).__name__}): "
                    f"the API at {client.base_url} is hung or overloaded", pytrace=False)
    except httpx.TransportError as exc:
        if evidence is not None:
            evidence.failed_request("GET", f"{client.base_url}{path}", repr(exc), None)
        pytest.fail(f"GET {path}: cannot reach the API at {client.base_url} "
                    f"({type(exc).__name__}: {exc}): is it up and is API_BASE_URL right?",
                    pytrace=False)
    if evidence is not None:
        evidence.request(response, note)
    if response.status_code == 429:
        pytest.fail(f"GET {path}: 429 rate limited (limit {response.headers.get('X-RateLimit-Limit')}"
                    " per minute): the validation key's rate limit is spent, so this check "
                    "proves nothing; give the key a higher rate_limit_rpm or lower --sample-size",
                    pytrace=False)
    return response


@dataclass(frozen=True)
class Outcome:
    """One request of a sample: its status, or the transport error that replaced it."""

    path: str
    url: str
    status: int | None
    elapsed_ms: float
    error: str | None = None
    body: str = ""

    @property
    def timed_out(self) -> bool:
        return self.error is not None and "Timeout" in self.error

    @property
    def failed(self) -> bool:
        """A server error, a timeout or a failed connection: what the error rate counts."""
        return self.status is None or self.status >= 500


@dataclass(frozen=True)
class Sample:
    path: str
    outcomes: tuple[Outcome, ...]

    @property
    def size(self) -> int:
        return len(self.outcomes)

    @property
    def latencies_ms(self) -> list[float]:
        """Time to each answer; a request that timed out counts as infinitely slow."""
        return [math.inf if o.timed_out else o.elapsed_ms for o in self.outcomes]

    @property
    def p95_ms(self) -> float:
        """May be infinite: more than 5% of the sample got no answer in time."""
        return percentile(self.latencies_ms, 95)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def statuses(self) -> dict[str, int]:
        return dict(Counter(str(o.status) if o.status else "no answer" for o in self.outcomes))

    @property
    def timeouts(self) -> int:
        return sum(1 for o in self.outcomes if o.timed_out)


def _one(client: httpx.Client, path: str) -> Outcome:
    started = time.perf_counter()
    try:
        response = client.get(path)
    except httpx.TransportError as exc:
        return Outcome(path, f"{client.base_url}{path}", None,
                       (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}")
    return Outcome(path, str(response.request.url), response.status_code,
                   (time.perf_counter() - started) * 1000,
                   body=excerpt(response) if response.status_code >= 400 else "")


def sample(client: httpx.Client, paths: Sequence[str], size: int) -> dict[str, Sample]:
    """`size` GETs to each path, interleaved and concurrent (MAX_WORKERS at a time)."""
    order = [path for _ in range(size) for path in paths]
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(order))) as pool:
        outcomes = list(pool.map(lambda path: _one(client, path), order))
    return {path: Sample(path, tuple(o for o in outcomes if o.path == path)) for path in paths}
