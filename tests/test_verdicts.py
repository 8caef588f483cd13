"""Every verdict function of the checks, at its boundaries (table-driven) and by its properties
(hypothesis): percentiles, latency thresholds, the error rate at and around its limit, overall
and per endpoint, list shape, own-tenant records, status expectations, and the pacing that keeps
the toolkit inside its own rate limit.

These run in-process with no sandbox: the network is not the point here (the suite tests in
tests/test_checks_*.py hold the same functions against a real server).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from checks._plugin.verdicts import Inconclusive, NothingSeen
from checks.evidence import Evidence
from checks.expect import (
    error_rate_verdict,
    expect_error_body,
    expect_error_rate,
    expect_latency,
    expect_list_shape,
    expect_own_tenant,
    expect_status,
    wilson_interval,
)
from checks.probe import Budget, Outcome, Pacer, Sample
from rollback.config import Thresholds
from rollback.probes import percentile
from rollback.profile import load_profile

# no deadline (a loaded machine is slow, not wrong) and no example database in the repository
settings.register_profile("loaded-machine", deadline=None, database=None,
                          max_examples=25 if os.environ.get("MUTANT_UNDER_TEST") else 200)
settings.load_profile("loaded-machine")
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hypothesis-"))  # its caches, out of the checkout

Failed = pytest.fail.Exception


def judged(call: Any) -> tuple[str, str]:
    """What a verdict function said: ("pass", ""), ("fail", its message), ("saw nothing", ...)
    or ("inconclusive", ...). Never a skip of this test: a weakened verdict that skips where it
    must fail would otherwise pass here as "skipped"."""
    try:
        call()
    except NothingSeen as exc:
        return "saw nothing", str(exc.msg)
    except Inconclusive as exc:
        return "inconclusive", str(exc.msg)
    except Failed as exc:
        return "fail", str(exc.msg)
    return "pass", ""


def response(status: int, body: Any = None, path: str = "/v1/leads",
             headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("GET", f"http://api.test{path}")
    if body is None:
        return httpx.Response(status, request=request, headers=headers)
    return httpx.Response(status, json=body, request=request, headers=headers)


def outcomes(path: str, failed: int, ok: int, limited: int = 0) -> list[Outcome]:
    return ([Outcome(path, path, 500, 1.0, body="boom") for _ in range(failed)]
            + [Outcome(path, path, 200, 1.0) for _ in range(ok)]
            + [Outcome(path, path, 429, 1.0) for _ in range(limited)])


# --- percentiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([1.0], 95, 1.0),
    ([1.0, 2.0], 95, 2.0),
    (list(range(1, 21)), 95, 19),     # nearest rank: ceil(0.95 * 20) = 19th
    (list(range(1, 21)), 50, 10),
    (list(range(1, 101)), 95, 95),
    (list(range(1, 101)), 100, 100),
    ([5.0, 1.0, 3.0], 95, 5.0),       # order of the sample does not matter
])
def test_percentile_is_the_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile([], 95)


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300), st.floats(1, 100), st.floats(1, 100))
def test_percentile_is_a_value_of_the_sample_and_grows_with_q(values: list[float], q1: float,
                                                              q2: float) -> None:
    low, high = sorted((q1, q2))
    assert percentile(values, low) in values
    assert percentile(values, low) <= percentile(values, high) <= max(values)


def test_timeouts_count_as_infinitely_slow_and_429s_not_at_all() -> None:
    path = "/v1/leads"
    slow = [Outcome(path, path, None, 10_000.0, "ReadTimeout: x") for _ in range(2)]
    sample = Sample(path, (*outcomes(path, 0, 18), *slow, *outcomes(path, 0, 0, limited=5)))
    assert sample.size == 20 and sample.rate_limited == 5
    assert sample.p95_ms == math.inf


# --- latency thresholds --------------------------------------------------------------------------


@pytest.mark.parametrize(("ms", "verdict"), [
    (499.9, "pass"), (500.0, "pass"), (500.1, "warn"), (1000.0, "warn"), (1000.1, "fail"),
])
def test_p95_against_warn_and_alert(ms: float, verdict: str) -> None:
    path = "/v1/leads"
    sample = Sample(path, tuple(Outcome(path, path, 200, ms) for _ in range(20)))
    evidence = Evidence()
    thresholds = Thresholds(warn_ms=500, alert_ms=1000)
    said, message = judged(lambda: expect_latency(sample, thresholds, evidence))
    if verdict == "fail":
        assert said == "fail" and f"p95 {ms:.0f} ms > alert 1000 ms over 20 requests" in message
        return
    assert said == "pass", message
    assert bool(evidence.warnings) == (verdict == "warn")


# --- error rate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("failed", "total", "final", "verdict"), [
    (0, 0, False, "undecided"),     # saw nothing: never a pass
    (0, 0, True, "undecided"),
    (0, 20, False, "undecided"),    # 0 of 20 cannot tell 0% from 10% ...
    (0, 80, False, "undecided"),
    (0, 130, False, "pass"),        # ... 0 of 130 can (99%)
    (0, 20, True, "pass"),
    (1, 20, True, "fail"),          # 5.0% is the limit: 1 of 20 is at it, and fails
    (1, 21, True, "pass"),          # just under it
    (2, 40, True, "fail"),
    (3, 60, True, "fail"),
    (2, 41, True, "pass"),          # just under it
    (20, 100, False, "fail"),       # surely over
    (8, 400, False, "pass"),        # 2%: surely under
    (40, 400, False, "fail"),       # 10%: surely over
    (20, 400, False, "undecided"),  # 5%: cannot tell ...
    (20, 400, True, "fail"),        # ... and at the end it is at the limit
])
def test_error_rate_at_and_around_the_limit(failed: int, total: int, final: bool, verdict: str) -> None:
    assert error_rate_verdict(failed, total, 0.05, final=final) == verdict


@given(st.integers(0, 2000), st.integers(1, 2000), st.floats(0.001, 0.5))
def test_wilson_interval_holds_the_measured_rate(failed: int, total: int, z_limit: float) -> None:
    failed = min(failed, total)
    low, high = wilson_interval(failed, total)
    assert 0.0 <= low <= failed / total + 1e-12 and failed / total - 1e-12 <= high <= 1.0


@given(st.integers(0, 500), st.integers(1, 500), st.floats(0.0, 1.0), st.booleans())
def test_more_failures_never_turn_a_fail_into_a_pass(failed: int, total: int, limit: float,
                                                     final: bool) -> None:
    failed = min(failed, total - 1)
    order = {"pass": 0, "undecided": 1, "fail": 2}
    before = error_rate_verdict(failed, total, limit, final=final)
    after = error_rate_verdict(failed + 1, total, limit, final=final)
    assert order[after] >= order[before]
    if final:
        assert before != "undecided"


@pytest.mark.parametrize(("per_path", "fails", "says"), [
    ({"/a": (0, 100), "/b": (0, 100)}, False, ""),
    ({"/a": (3, 97), "/b": (0, 100)}, False, ""),                      # 1.5% overall, 3% at /a
    ({"/a": (6, 54), "/b": (0, 60)}, True, "error rate 5.0% >= limit 5.0%"),
    ({"/a": (30, 70), "/b": (0, 900), "/c": (0, 900)}, True,           # 1.6% overall, 30% at /a
     "error rate 1.6% overall, but over the limit 5.0% at /a: 30 of 100 (30.0%)"),
    ({"/a": (0, 20, 80)}, False, ""),                                  # 429s are left out
])
def test_error_rate_is_judged_overall_and_per_endpoint(per_path: dict[str, tuple[int, ...]],
                                                       fails: bool, says: str) -> None:
    samples = {path: outcomes(path, *counts) for path, counts in per_path.items()}
    evidence = Evidence()
    said, message = judged(lambda: expect_error_rate(samples, 0.05, "requests", evidence))
    assert said == ("fail" if fails else "pass") and says in message, message
    assert evidence.values["requests"] == sum(c[0] + c[1] for c in per_path.values())


def test_an_error_rate_over_nothing_saw_nothing() -> None:
    assert judged(lambda: expect_error_rate({"/a": outcomes("/a", 0, 0, limited=20)}, 0.05,
                                            "requests", Evidence()))[0] == "saw nothing"


# --- status, error body, list shape, own tenant ---------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 404, 500])
def test_a_refusal_must_be_401(status: int) -> None:
    said, message = judged(lambda: expect_error_body(
        response(status, {"error": "no", "code": "UNAUTHORIZED"}), 401, "UNAUTHORIZED"))
    assert said == "fail" and f"GET /v1/leads answered {status}, expected 401" in message


@pytest.mark.parametrize(("body", "problem"), [
    ({"error": "no", "code": "OTHER"}, "code 'OTHER', expected 'UNAUTHORIZED'"),
    ({"error": "", "code": "UNAUTHORIZED"}, "is not a non-empty text"),
    ({"error": "no"}, "expected exactly"),
    ({"error": "no", "code": "UNAUTHORIZED", "extra": 1}, "expected exactly"),
])
def test_the_error_body_is_exact(body: dict[str, Any], problem: str) -> None:
    said, message = judged(lambda: expect_error_body(response(401, body), 401, "UNAUTHORIZED"))
    assert said == "fail" and problem in message and "breaks the error contract" in message
    assert judged(lambda: expect_error_body(response(401, {"error": "no", "code": "UNAUTHORIZED"}),
                                            401, "UNAUTHORIZED")) == ("pass", "")


def test_expect_status_names_both_codes() -> None:
    assert judged(lambda: expect_status(response(200, {}), 200)) == ("pass", "")
    said, message = judged(lambda: expect_status(response(201, {}, ), 200, "it is broken"))
    assert said == "fail" and message.startswith("GET /v1/leads answered 201, expected 200: it is broken")


LEADS = load_profile("contract").resource_at("/v1/leads")


def _list(**overrides: Any) -> dict[str, Any]:
    record = dict.fromkeys(LEADS.fields, "x")
    return {"data": [record], "total": 1, "page": 1, "pageSize": 20, "filters": {}, **overrides}


@pytest.mark.parametrize(("body", "problem"), [
    ({"data": []}, "missing"),
    (_list(data={}), "expected a list and an integer"),
    (_list(total="1"), "expected a list and an integer"),
    (_list(data=[{"id": 1}]), "records lack fields"),
])
def test_list_shape(body: dict[str, Any], problem: str) -> None:
    said, message = judged(lambda: expect_list_shape(response(200, body), LEADS))
    assert said == "fail" and problem in message
    assert judged(lambda: expect_list_shape(response(200, _list()), LEADS)) == ("pass", "")
    assert len(expect_list_shape(response(200, _list()), LEADS)) == 1


@pytest.mark.parametrize(("tenants", "verdict"), [
    ([], "saw nothing"),
    (["t1"], "pass"),
    (["t1", "t1", "t1"], "pass"),
    (["t2"], "leak"),
    (["t1", "t1", "t2"], "leak"),   # the last record too, not only the first
    (["t2", "t1", "t1"], "leak"),
])
def test_every_record_must_be_the_keys_tenant(tenants: list[str], verdict: str) -> None:
    records = [{"id": n, "tenant_id": t} for n, t in enumerate(tenants)]
    said, message = judged(lambda: expect_own_tenant(records, "t1", "GET /v1/leads"))
    if verdict == "leak":
        foreign = [r for r in records if r["tenant_id"] != "t1"]
        assert said == "fail" and message.startswith(
            f"TENANT DATA LEAK: 1 of {len(records)} records from GET /v1/leads belong to other "
            f"tenants (t2), e.g. ids {foreign[0]['id']}; the key's tenant is t1"), message
    else:
        assert said == verdict, message
    assert judged(lambda: expect_own_tenant([], "t1", "x", require=False)) == ("pass", "")


# --- pacing by the key's rate limit ----------------------------------------------------------------


def _limits(remaining: int, reset_in: float, limit: int = 100) -> httpx.Response:
    return response(200, {}, headers={"X-RateLimit-Limit": str(limit),
                                      "X-RateLimit-Remaining": str(remaining),
                                      "X-RateLimit-Reset": str(time.time() + reset_in)})


def test_the_pacer_counts_down_and_waits_for_the_reset_within_the_budget() -> None:
    budget = Budget()
    budget.start(30)
    pacer = Pacer(budget)
    pacer.observe(_limits(2, 0.3))
    pacer.before()
    pacer.before()
    assert pacer.remaining == 0 and pacer.waited_s == 0
    pacer.before()  # spent: waits for the reset, 0.3 s away
    assert 0 < pacer.waited_s < 5 and pacer.remaining == 99


def test_the_pacer_does_not_wait_beyond_the_budget() -> None:
    budget = Budget()
    budget.start(5)  # 4 s to spend
    pacer = Pacer(budget)
    pacer.observe(_limits(0, 30))
    pacer.before()
    assert pacer.waited_s == 0
    assert pacer.retry_after(response(429, {}, headers={"Retry-After": "30"})) is None
    assert pacer.retry_after(response(429, {}, headers={"Retry-After": "0"})) is not None


def test_a_later_window_replaces_the_counts_and_a_stale_answer_does_not_raise_them() -> None:
    pacer = Pacer(Budget())
    pacer.observe(_limits(10, 30))
    pacer.observe(_limits(50, 20))  # an older answer arriving late: same window, more left
    assert pacer.remaining == 10
    pacer.observe(_limits(99, 90))  # the next window
    assert pacer.remaining == 99
