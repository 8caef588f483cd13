"""Requests the checks make: one at a time with clear failures, or concurrent samples.

`get()` turns a missing answer into a failure that says what it means; `sample()` sends
`size` requests to each path concurrently and keeps every outcome, so the latency and
error-rate checks judge a percentile over many requests, never one.

No false alarm from the toolkit's own requests:

- a single request that meets a transient server error (5xx), a timeout or a failed
  connection is sent once more if the check's deadline (`Budget`) leaves room for it, and
  every attempt goes into the evidence. No answer twice (down, hung) fails the check. A
  second server error has the request sampled: sent up to RESAMPLE more times, the first
  answer that is not a server error is judged; RESAMPLE + 2 server errors in a row are the
  API failing at that request, judged as such. So a normal background error rate (2%) never
  fails a single-request check; the error-rate checks judge it over their sample;
- every client of a check is paced by its key's rate limit (`Pacer`): it reads
  `X-RateLimit-Remaining` and `X-RateLimit-Reset` from each answer and, once the window is
  spent, waits for its reset when the check's deadline allows. A 429 that still comes is the
  toolkit being rate limited: it is waited out (Retry-After) within the deadline, or the check
  is inconclusive. Never a failure of the system.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from checks._plugin.verdicts import inconclusive
from checks.evidence import Evidence, excerpt
from rollback import probes
from rollback.http import BoundedTransport
from rollback.probes import Outcome, Sample

__all__ = [
    "Breaker",
    "Budget",
    "CheckClient",
    "Outcome",
    "Pacer",
    "Sample",
    "SharedSample",
    "cache_buster",
    "get",
    "make_room",
    "sample",
    "sample_until_decided",
]
#: every validation request says who it is, so the real-traffic checks can leave them out
USER_AGENT = "rollback-toolkit-validation"
#: the share of a check's timeout its requests may use, waits included: the rest is its margin
BUDGET_SHARE = 0.8
#: never wait longer than this for a rate-limit window to reset (the windows are a minute)
MAX_RATE_WAIT_S = 65.0


class Budget:
    """The time the check under way may still spend on requests and waits (its deadline).

    `start(timeout_s)` is called as each check starts (see conftest.py); outside a check the
    budget is unbounded."""

    def __init__(self, breaker: Breaker | None = None) -> None:
        self._deadline = math.inf
        #: the node id of the check under way, for the findings it makes (see Breaker)
        self.check = "a fixture before the first check"
        #: the target's health as the session's checks found it (given: another budget's)
        self.breaker = breaker if breaker is not None else Breaker(self)

    def start(self, timeout_s: float, check: str = "") -> None:
        self._deadline = time.monotonic() + timeout_s * BUDGET_SHARE
        self.check = check or self.check

    def left(self) -> float:
        return self._deadline - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return seconds <= self.left()

    def __repr__(self) -> str:
        left = self.left()
        return f"Budget({left:.1f} s left)" if math.isfinite(left) else "Budget(unbounded)"


class Pacer:
    """One key's rate limit as the API reports it, to stay inside it.

    observe(response) reads X-RateLimit-Limit/-Remaining/-Reset (the reset as epoch seconds);
    before() is called before each request and, when the window is spent, sleeps until its
    reset if the budget allows (else lets the request go: a 429 then says why)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self.limit: int | None = None
        self.remaining: int | None = None
        self.reset_epoch: float | None = None
        self.waited_s = 0.0

    def observe(self, response: httpx.Response) -> None:
        headers = response.headers
        try:
            limit = int(headers["X-RateLimit-Limit"])
            remaining = int(headers["X-RateLimit-Remaining"])
            reset = float(headers["X-RateLimit-Reset"])
        except (KeyError, ValueError):
            return
        with self._lock:
            if self.reset_epoch is None or reset > self.reset_epoch:  # a new window
                self.limit, self.remaining, self.reset_epoch = limit, remaining, reset
            elif self.remaining is None or remaining < self.remaining:
                self.remaining = remaining

    def before(self, request: httpx.Request | None = None) -> None:
        with self._lock:
            if self.remaining is None or self.reset_epoch is None:
                return
            if self.remaining > 0:
                self.remaining -= 1  # counted now: concurrent requests see it at once
                return
            wait = self.reset_epoch - time.time() + 0.2
            if wait <= 0 or wait > MAX_RATE_WAIT_S or not self.budget.allows(wait + 1):
                return
            self.waited_s += wait
            time.sleep(wait)  # holding the lock: every request of this key waits for the reset
            self.remaining = (self.limit or 1) - 1
            self.reset_epoch = None

    def retry_after(self, response: httpx.Response) -> float | None:
        """Seconds to wait before a 429's request may be sent again, if the budget allows it."""
        try:
            wait = float(response.headers.get("Retry-After", ""))
        except ValueError:
            wait = (self.reset_epoch - time.time()) if self.reset_epoch else math.inf
        wait = max(0.0, wait) + 0.2
        return wait if wait <= MAX_RATE_WAIT_S and self.budget.allows(wait + 1) else None


@dataclass(frozen=True)
class Finding:
    """What a check saw that the others need not see again: who, and what."""

    by: str
    saw: str


class Breaker:
    """The target's health as the checks found it, one per session, like a circuit breaker.

    Once the API refused connections twice, it is down: every later request fails at once,
    naming the check that found it and what it saw. Once a path gave no answer in time, it is
    hung (two timeouts), and once it answered only server errors three or more times in a row (see `get`), it
    is failing: later requests to it fail at once the same way; and, as the API is now known to
    hang, a later first timeout elsewhere is not waited for twice. The rest carries on."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self.api_down: Finding | None = None
        self.hung: dict[str, Finding] = {}
        self.failing: dict[str, Finding] = {}
        self.slow_errors: dict[str, int] = {}
        self.timeouts: dict[str, int] = {}
        self.refusals = 0

    @property
    def hangs(self) -> bool:
        return bool(self.hung)

    def refuse(self, path: str) -> str | None:
        """Why a request to `path` is not sent, or None."""
        found = self.api_down or self.hung.get(path) or self.failing.get(path)
        if found is None:
            return None
        state = ("is down" if found is self.api_down else f"does not answer at {path}"
                 if path in self.hung else f"fails at {path}")
        return (f"GET {path}: not sent, the API {state}: {found.saw} (found by {found.by}); "
                "fix that first")

    def slow_error(self, path: str, what: str, *, by: str | None = None) -> None:
        """A server error that took RESAMPLE_S or more to come; the second one at a path (in a
        sample) makes it failing: the API is struggling there, not failing now and then.
        `by`: who saw it, when not the check under way (the shared sample, see SharedSample)."""
        with self._lock:
            self.slow_errors[path] = self.slow_errors.get(path, 0) + 1
            if self.slow_errors[path] >= 2:
                self.failing.setdefault(path, Finding(by or self.budget.check, what + ", twice"))

    def fails(self, path: str, what: str) -> None:
        """`path` answered nothing but server errors, several times in a row. Two paths so:
        the API is failing as a whole, and counts as down."""
        with self._lock:
            self.failing.setdefault(path, Finding(self.budget.check, what))
            if len(self.failing) >= 2 and self.api_down is None:
                paths = " and ".join(sorted(self.failing))
                self.api_down = Finding(self.budget.check,
                                        f"nothing but server errors at {paths}; {what}")

    def saw(self, path: str, error: Exception, *, surely: bool = False, because: str | None = None,
            by: str | None = None) -> None:
        """A request that got no answer. A path is hung after its second timeout (one timeout
        on a busy machine is not a hung API), or its first when `surely` (the API is already
        known to hang, or answered its control path at once meanwhile: `because`); the API is
        down after two refused connections in a row."""
        with self._lock:
            what = f"GET {path}: {type(error).__name__}: {error}".rstrip(": ")
            if because:
                what += f", while {because}"
            if isinstance(error, httpx.TimeoutException):
                self.timeouts[path] = self.timeouts.get(path, 0) + 1
                if surely or self.timeouts[path] >= 2:
                    self.hung.setdefault(path, Finding(by or self.budget.check, what))
            else:
                self.refusals += 1
                if self.refusals >= 2 and self.api_down is None:
                    self.api_down = Finding(by or self.budget.check, what)

    def answered(self) -> None:
        with self._lock:
            self.refusals = 0


class CheckClient(httpx.Client):
    """The checks' httpx client: each answer bounded (`rollback.http`), paced by its key's
    rate limit, aware of the check's deadline and of what the other checks found (Breaker)."""

    def __init__(self, *, budget: Budget, timeout_s: float, control_path: str | None = None,
                 **kwargs: Any) -> None:
        self.budget = budget
        self.breaker = budget.breaker
        self.pacer = Pacer(budget)
        #: a cheap path (the profile's health path) asked after a first timeout elsewhere
        self.control_path = control_path
        super().__init__(timeout=timeout_s, transport=BoundedTransport(timeout_s),
                         event_hooks={"request": [self.pacer.before],
                                      "response": [self.pacer.observe]}, **kwargs)


def make_room(base_url: str, key: str, path: str, needed: int, timeout_s: float) -> str | None:
    """Before the checks start: ask the API (one GET of `path` with `key`) how much of the key's
    rate-limit window is left; if less than `needed`, wait for the window to reset (at most
    MAX_RATE_WAIT_S) and return a line saying so. Any failure here is left to the checks."""
    try:
        with httpx.Client(base_url=base_url, timeout=timeout_s,
                          headers={"User-Agent": USER_AGENT, "Authorization": f"Bearer {key}"},
                          transport=BoundedTransport(timeout_s)) as client:
            response = client.get(path)
    except (httpx.HTTPError, ValueError):
        return None
    pacer = Pacer(Budget())
    pacer.observe(response)
    if pacer.remaining is None or pacer.reset_epoch is None or pacer.remaining >= needed:
        return None
    wait = pacer.reset_epoch - time.time() + 0.2
    if response.status_code == 429:
        wait = pacer.retry_after(response) or wait
    if not 0 < wait <= MAX_RATE_WAIT_S:
        return None
    time.sleep(wait)
    return (f"rate limit: TEST_API_KEY had {pacer.remaining} of {pacer.limit} requests left in "
            f"its window, the checks need about {needed}: waited {wait:.0f} s for the reset")


def _budget(client: httpx.Client) -> Budget:
    return client.budget if isinstance(client, CheckClient) else Budget()


#: how long the control request after a first timeout may take (see `responsive`)
CONTROL_TIMEOUT_S = 2.0


def responsive(client: httpx.Client, path: str, evidence: Evidence | None) -> str | None:
    """After `path` gave no answer within the client's timeout: does the API answer its control
    path (the health path) at once? If so (any HTTP answer within CONTROL_TIMEOUT_S), the API
    serves and `path` is hung: no second wait of a whole timeout, whose only use is telling a
    busy machine from a hung endpoint. Returns what the control request saw, or None (no
    control path, `path` is the control path, or no prompt answer: then a busy machine is
    possible and the request is tried again)."""
    control = client.control_path if isinstance(client, CheckClient) else None
    if not control or control == path:
        return None
    timeout = min(CONTROL_TIMEOUT_S, (client.timeout.read or 10.0) / 2)
    started = time.perf_counter()
    try:
        response = client.get(control, timeout=timeout)
    except httpx.TransportError:
        return None
    elapsed = (time.perf_counter() - started) * 1000
    if evidence is not None:
        evidence.request(response, f"control: is the API answering while {path} is not?")
    return f"GET {control} answered {response.status_code} in {elapsed:.0f} ms meanwhile"


def _transient(outcome: httpx.Response | Exception) -> bool:
    """A server error, a timeout or a failed connection: worth one more try."""
    if isinstance(outcome, Exception):
        return True
    return outcome.status_code >= 500


def _rate_limited(client: httpx.Client, path: str, response: httpx.Response) -> float | None:
    """How long to wait for the key's rate limit before trying `path` again, or None."""
    if response.status_code != 429:
        return None
    if isinstance(client, CheckClient):
        return client.pacer.retry_after(response)
    return None


def cache_buster() -> dict[str, str]:
    """A query parameter the API ignores but a response cache keys on: never served from cache."""
    return {"_validation_nonce": uuid.uuid4().hex}


#: after a second server error, how many more times a single request is sent (see `get`),
#: within RESAMPLE_S seconds of the first try: slow server errors are not waited for 12 times
RESAMPLE = 10
RESAMPLE_S = 2.0


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
    """GET path, and judge what it answered; a transient failure or a 429 is tried again
    within the check's deadline (see the module docstring). Every attempt is in `evidence`."""
    __tracebackhide__ = True
    budget = _budget(client)
    breaker = client.breaker if isinstance(client, CheckClient) else Breaker(budget)
    url = f"{client.base_url}{path}"
    timeout_s = client.timeout.read or 10.0
    attempts: list[httpx.Response | Exception] = []
    resampling_since = math.inf
    while True:
        refused = breaker.refuse(path)
        if refused is not None:
            if evidence is not None:
                evidence.failed_request("GET", url, refused, None, sent=False)
            pytest.fail(refused, pytrace=False)
        hung_before, failing_before = breaker.hangs, bool(breaker.failing)
        started = time.perf_counter()
        try:
            outcome: httpx.Response | Exception = client.get(
                path, params=params, headers=headers, follow_redirects=follow_redirects)
        except httpx.TransportError as exc:
            outcome = exc
        elapsed = (time.perf_counter() - started) * 1000
        attempts.append(outcome)
        control = None
        if isinstance(outcome, httpx.TimeoutException) and not hung_before and len(attempts) == 1:
            control = responsive(client, path, evidence)
        if isinstance(outcome, Exception):  # the first of two timeouts in a row counts too
            breaker.saw(path, outcome, surely=hung_before or control is not None, because=control)
        elif isinstance(outcome, httpx.Response):
            breaker.answered()
        wait = _rate_limited(client, path, outcome) if isinstance(outcome, httpx.Response) else None
        if len(attempts) == 1:
            resampling_since = time.monotonic() - elapsed / 1000  # when the first try began
        slow_error = (isinstance(outcome, httpx.Response) and outcome.status_code >= 500
                      and elapsed / 1000 >= RESAMPLE_S)
        if slow_error and failing_before:  # the API is known to struggle: no second slow wait
            breaker.fails(path, f"GET {path} answered {outcome.status_code} after "  # type: ignore[union-attr]
                                f"{elapsed / 1000:.1f} s")
        again = (_again(attempts, budget, timeout_s, time.monotonic() - resampling_since)
                 and not (isinstance(outcome, httpx.TimeoutException)
                          and (hung_before or control is not None))
                 and not (slow_error and failing_before)
                 ) or (wait is not None and len(attempts) == 1)
        label = note
        if len(attempts) > 1 or again:
            label = f"attempt {len(attempts)}" + (f"; {note}" if note else "")
        if evidence is not None:
            if isinstance(outcome, httpx.Response):
                evidence.request(outcome, label)
            else:
                evidence.failed_request("GET", url, f"{type(outcome).__name__}: {outcome}"
                                        + (f" ({label})" if label else ""), elapsed)
        if not again:
            break
        if wait is not None:
            time.sleep(wait)
    last = attempts[-1]
    if (isinstance(last, httpx.Response) and last.status_code >= 500 and len(attempts) >= 2
            and all(isinstance(a, httpx.Response) and a.status_code >= 500 for a in attempts)
            and (len(attempts) >= 3 or time.monotonic() - resampling_since >= RESAMPLE_S)):
        breaker.fails(path, f"GET {path} answered {last.status_code} {len(attempts)} times in a row")
    tried = f" (sent {len(attempts)} times, each in the evidence)" if len(attempts) > 1 else ""
    if isinstance(last, httpx.TimeoutException):
        if control is not None:
            pytest.fail(f"GET {path}: no answer within {timeout_s:g} s ({type(last).__name__}), "
                        f"while {control}: {path} is hung at {client.base_url}", pytrace=False)
        pytest.fail(f"GET {path}: no answer within {timeout_s:g} s ({type(last).__name__}){tried}: "
                    f"the API at {client.base_url} is hung or overloaded", pytrace=False)
    if isinstance(last, Exception):
        pytest.fail(f"GET {path}: cannot reach the API at {client.base_url} "
                    f"({type(last).__name__}: {last}){tried}: is it up and is API_BASE_URL right?",
                    pytrace=False)
    if last.status_code == 429:
        inconclusive(f"GET {path}: 429, the validation key's rate limit (X-RateLimit-Limit "
                     f"{last.headers.get('X-RateLimit-Limit')} per minute) is spent and its reset "
                     "is beyond this check's deadline: the toolkit is rate limited, which says "
                     "nothing about the system; give the key a higher rate_limit_rpm or lower "
                     "--sample-size")
    return last


def _again(attempts: Sequence[httpx.Response | Exception], budget: Budget, timeout_s: float,
           resampling_s: float) -> bool:
    """Whether to send the request once more: after a first transient failure (5xx, timeout,
    failed connection), and after a second server error up to RESAMPLE more times within
    RESAMPLE_S, so that the error rate of that one request decides, not one unlucky answer.
    No answer twice is the API down or hung: no more tries. Each try must fit in the check's
    deadline."""
    last = attempts[-1]
    if not _transient(last) or not budget.allows(timeout_s + 1):
        return False
    if len(attempts) == 1:
        return True
    return (isinstance(last, httpx.Response) and len(attempts) < 2 + RESAMPLE
            and resampling_s < RESAMPLE_S)


def _once(client: httpx.Client, path: str, *, may_wait: bool = True) -> Outcome:
    """One request of a sample, as the checks send it: held back when the breaker knows the path
    failing (counted as failed; a hung path as no answer in time), told to the breaker, and
    waited for once when the key's rate-limit window is spent."""
    breaker = client.breaker if isinstance(client, CheckClient) else None
    by = client.budget.check if isinstance(client, CheckClient) else None
    refused = breaker.refuse(path) if breaker is not None else None
    if refused is not None:
        kind = "Timeout" if breaker is not None and path in breaker.hung else "NotSent"
        return Outcome(path, f"{client.base_url}{path}", None, 0.0, f"{kind} ({refused})")
    started = time.perf_counter()
    try:
        response = client.get(path)
    except httpx.TransportError as exc:
        if breaker is not None:
            breaker.saw(path, exc, by=by)
        return Outcome.unanswered(path, f"{client.base_url}{path}", exc,
                                  (time.perf_counter() - started) * 1000)
    elapsed_s = time.perf_counter() - started
    if breaker is not None and response.status_code >= 500 and elapsed_s >= RESAMPLE_S:
        breaker.slow_error(path, f"GET {path} answered {response.status_code} after "
                                 f"{elapsed_s:.1f} s", by=by)
    wait = _rate_limited(client, path, response) if may_wait else None
    if wait is not None:  # the key's window is spent: wait for it once, within the deadline
        time.sleep(wait)
        return _once(client, path, may_wait=False)
    return Outcome.answered(path, response, elapsed_s * 1000,
                            body=excerpt(response) if response.status_code >= 400 else "")


def sample(client: httpx.Client, paths: Sequence[str], size: int) -> dict[str, Sample]:
    """`size` GETs to each path, interleaved and concurrent: the one sampler
    (`rollback.probes.sample`) sending each request as the checks do (`_once`)."""
    return probes.sample(paths, size, lambda path: _once(client, path))


#: the most requests the error-rate check sends in all, its first sample included
ERROR_RATE_CAP = 600


def sample_until_decided(client: httpx.Client, first: Mapping[str, Sample], limit: float,
                         decide: Any, *, cap: int = ERROR_RATE_CAP) -> dict[str, Sample]:
    """Grow `first` (the shared sample) batch by batch, as large as it was, until
    `decide(failed, total, limit)` is no longer "undecided" over all of it, `cap` requests
    are reached, or the check's deadline leaves no room for another batch."""
    samples = dict(first)
    paths = list(samples)
    batch = max(1, max((s.size for s in samples.values()), default=1))
    budget = _budget(client)
    timeout_s = client.timeout.read or 10.0
    while True:
        judged = [o for s in samples.values() for o in s.judged]
        failed = sum(1 for o in judged if o.failed)
        if decide(failed, len(judged), limit) != "undecided":
            return samples
        if len(judged) + batch * len(paths) > cap or not budget.allows(timeout_s + 2):
            return samples
        more = sample(client, paths, batch)
        samples = {path: samples[path].plus(more[path]) for path in paths}


class SharedSample:
    """The list endpoints' sample that the latency and error-rate checks share, taken in the
    background beside the first checks, so that its requests (180 for a healthy API: the error
    rate's 99% interval needs them) do not wait for their turn after 40 other checks.

    It starts only when every path answers one request (below 500, within CONTROL_TIMEOUT_S)
    first: an API that is down, failing or slow is sampled by the checks in their turn, as
    each check's own deadline allows, and the fail-fast findings stay theirs. Its requests go
    through a client of its own (`client`: its own deadline, `timeout_s` from its start, and the
    session's Breaker, so what it finds the checks see), sampled as `sample` and grown as
    `sample_until_decided` (`grow`) would in the check. `first()` and `grown()` wait for it
    within the calling check's deadline; `None` when it did not start."""

    LABEL = "the latency and error-rate checks' shared sample (taken in the background)"

    def __init__(self, client: CheckClient, paths: Sequence[str], size: int,
                 grow: Any, timeout_s: float) -> None:
        self.client, self.paths, self.size = client, list(paths), size
        self._grow, self._timeout_s = grow, timeout_s
        self._first: Future[dict[str, Sample] | None] = Future()
        self._grown: Future[dict[str, Sample] | None] = Future()
        self._thread = threading.Thread(target=self._run, name="shared-sample", daemon=True)

    def start(self) -> SharedSample:
        self._thread.start()
        return self

    def _answers(self) -> bool:
        for path in self.paths:
            try:
                if self.client.get(path, timeout=CONTROL_TIMEOUT_S).status_code >= 500:
                    return False
            except httpx.HTTPError:
                return False
        return True

    def _run(self) -> None:
        try:
            self.client.budget.start(self._timeout_s, self.LABEL)
            if not self.paths or not self._answers():
                self._first.set_result(None)
                self._grown.set_result(None)
                return
            first = sample(self.client, self.paths, self.size)
            self._first.set_result(first)
            self._grown.set_result(self._grow(self.client, first))
        except Exception as exc:  # handed to the check that waits for it
            for future in (self._first, self._grown):
                if not future.done():
                    future.set_exception(exc)

    @staticmethod
    def _wait(future: Future[dict[str, Sample] | None], budget: Budget
              ) -> dict[str, Sample] | None:
        left = budget.left()
        try:
            return future.result(timeout=max(0.0, left) if math.isfinite(left) else None)
        except FutureTimeout:
            inconclusive(f"{SharedSample.LABEL} had not finished when this check's deadline "
                         f"came ({budget}): the API answers too slowly to be sampled in time")

    def first(self, budget: Budget) -> dict[str, Sample] | None:
        return self._wait(self._first, budget)

    def grown(self, budget: Budget) -> dict[str, Sample] | None:
        return self._wait(self._grown, budget)

    def close(self) -> None:
        self.client.close()
