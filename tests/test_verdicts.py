"""Every verdict function of the checks, at its boundaries (table-driven) and by its properties
(hypothesis): percentiles, latency thresholds, the error rate at and around its limit, overall
and per endpoint, list shape, own-tenant records, status expectations, orphans per (table, column), FASE 2's
backup comparisons (row counts, compared columns, changed columns), and the pacing that keeps
the toolkit inside its own rate limit.

These run in-process with no sandbox: the network is not the point here (the suite tests in
tests/test_checks_*.py hold the same functions against a real server).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from checks._plugin.verdicts import Inconclusive, NothingSeen
from checks.evidence import Evidence
from checks.expect import (
    backup_differences,
    changed_columns,
    compared_columns,
    decide_error_rate,
    error_rate_verdict,
    expect_backup_matches_csv,
    expect_backup_rows,
    expect_error_body,
    expect_error_rate,
    expect_json,
    expect_latency,
    expect_list_shape,
    expect_no_orphans,
    expect_no_rows,
    expect_own_tenant,
    expect_status,
    expect_total,
    expect_unchanged_but_for_scope,
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
    must fail would otherwise pass here as "skipped".

    How it said it is checked too: a failure is its message alone (`pytrace=False`), and every
    frame of checks/expect.py it came through is hidden from the traceback the person on call
    reads (`__tracebackhide__`, as pytest looks it up)."""
    try:
        call()
    except NothingSeen as exc:
        _hidden(exc)
        return "saw nothing", str(exc.msg)
    except Inconclusive as exc:
        _hidden(exc)
        return "inconclusive", str(exc.msg)
    except Failed as exc:
        _hidden(exc)
        assert exc.pytrace is False, "a verdict's failure must be its message, not a traceback"
        return "fail", str(exc.msg)
    return "pass", ""


def _hidden(exc: BaseException) -> None:
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(os.path.join("checks", "expect.py")):
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    # under mutmut a function's body runs as x_<name>__mutmut_<n>, called by a wrapper that
    # keeps the public name: the bodies are what carry __tracebackhide__
    bodies = [f for f in frames if "__mutmut_" in f.f_code.co_name] or frames
    for frame in bodies:
        assert frame.f_locals.get("__tracebackhide__") is True, (
            f"{frame.f_code.co_name} shows its own frame in the check's traceback")


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


# --- every message and every piece of evidence, word for word --------------------------------------
# What the person on call reads is the verdict's other half: each failing branch once, exactly.

_FULL = dict.fromkeys(LEADS.fields, "x")
_NO_EMAIL = {k: v for k, v in _FULL.items() if k != "email"}
_NO_EMAIL_OR_PHONE = {k: v for k, v in _FULL.items() if k not in ("email", "phone")}
_NOT_JSON = httpx.Response(200, text="<html>", request=httpx.Request("GET", "http://api.test/v1/leads"))
_CONTRACT = "GET /v1/leads 401 body breaks the error contract ("
_CLIENTS = "): clients parsing errors will break; body: "


@pytest.mark.parametrize(("call", "said"), [
    (lambda: expect_status(response(500, {"error": "x"}), 200, "broken"),
     'GET /v1/leads answered 500, expected 200: broken; body: {"error":"x"}'),
    (lambda: expect_status(response(500, {"error": "x"}), 200),
     'GET /v1/leads answered 500, expected 200; body: {"error":"x"}'),
    (lambda: expect_json(_NOT_JSON), "GET /v1/leads answered 200 with a body that is not JSON: <html>"),
    (lambda: expect_error_body(response(401, [1]), 401, "U"),
     f"{_CONTRACT}keys list, expected exactly ['code', 'error']{_CLIENTS}[1]"),
    (lambda: expect_error_body(response(401, {"code": "U", "x": 1}), 401, "U"),
     f"{_CONTRACT}keys ['code', 'x'], expected exactly ['code', 'error']{_CLIENTS}" '{"code":"U","x":1}'),
    (lambda: expect_error_body(response(401, {"error": 3, "code": 5}), 401, None),
     f"{_CONTRACT}error 3 is not a non-empty text; code 5 is not a text{_CLIENTS}" '{"error":3,"code":5}'),
    (lambda: expect_error_body(response(401, {"error": "", "code": "V"}), 401, "U"),
     f"{_CONTRACT}error '' is not a non-empty text; code 'V', expected 'U'{_CLIENTS}"
     '{"error":"","code":"V"}'),
    (lambda: expect_list_shape(response(500, {}), LEADS),
     "GET /v1/leads answered 500, expected 200: the leads list is broken for clients; body: {}"),
    (lambda: expect_list_shape(response(200, [1]), LEADS),
     "GET /v1/leads: list body has keys list, missing ['data', 'filters', 'page', 'pageSize', "
     "'total']: clients reading the list contract will break"),
    (lambda: expect_list_shape(response(200, {"data": [], "total": 0}), LEADS),
     "GET /v1/leads: list body has keys ['data', 'total'], missing ['filters', 'page', 'pageSize']: "
     "clients reading the list contract will break"),
    (lambda: expect_list_shape(response(200, _list(data={}, total="1")), LEADS),
     "GET /v1/leads: data is dict and total is str, expected a list and an integer"),
    # each missing field counted over the records that lack it; a record that is no object lacks all
    (lambda: expect_list_shape(response(200, _list(data=[_NO_EMAIL, _NO_EMAIL_OR_PHONE, _FULL, "junk"])),
                               LEADS),
     "GET /v1/leads: leads records lack fields branch_id (in 1), classification (in 1), created_at "
     "(in 1), email (in 3), id (in 1), name (in 1), phone (in 2), source (in 1), status (in 1), "
     "tenant_id (in 1), updated_at (in 1) of 4 records"),
    (lambda: expect_total(response(404, {"total": 3})),
     'GET /v1/leads answered 404, expected 200; body: {"total":3}'),
    (lambda: expect_own_tenant([{"id": i, "tenant_id": t} for i, t in
                                enumerate(["t1", "t2", "t3", "t4", "t5", None])] + [{"id": 9}],
                               "t1", "GET /v1/leads"),
     "TENANT DATA LEAK: 6 of 7 records from GET /v1/leads belong to other tenants (None, t2, t3), "
     "e.g. ids 1, 2, 3; the key's tenant is t1. Treat as a security incident."),
    (lambda: expect_no_rows([(1, "a")] * 5, "orphan rows", "they point nowhere"),
     "5 orphan rows: they point nowhere. Examples: 1, a; 1, a; 1, a; 1, a; 1, a"),
    (lambda: expect_no_rows([(i, "a") for i in range(7)], "orphan rows", "they point nowhere"),
     "7 orphan rows: they point nowhere. Examples: 0, a; 1, a; 2, a; 3, a; 4, a (and 2 more)"),
])
def test_each_failure_says_what_failed_where_and_what_it_means(call: Any, said: str) -> None:
    assert judged(call) == ("fail", said)


def test_no_records_to_check_for_their_tenant_saw_nothing() -> None:
    assert judged(lambda: expect_own_tenant([], "t1", "GET /v1/leads")) == (
        "saw nothing", "saw nothing: GET /v1/leads returned no records, so none could be checked "
        "for its tenant; use a TEST_API_KEY whose tenant has data")
    assert judged(lambda: expect_own_tenant(iter([]), "t1", "x", require=False)) == ("pass", "")


def test_a_tenant_id_is_compared_as_text_and_records_may_come_as_an_iterator() -> None:
    tenant = uuid.UUID(int=1)
    assert judged(lambda: expect_own_tenant([{"tenant_id": tenant}], str(tenant), "x")) == ("pass", "")
    said, message = judged(lambda: expect_own_tenant(iter([{"id": 1, "tenant_id": "t2"}]), "t1", "x"))
    assert said == "fail" and message.startswith("TENANT DATA LEAK: 1 of 1 records from x")


@pytest.mark.parametrize(("body", "verdict"), [
    ({"total": 3}, 3), ({"total": 0}, 0),
    ({"total": True}, "GET /v1/leads: total is True, expected an integer"),   # a bool is no count
    ({"total": "3"}, "GET /v1/leads: total is '3', expected an integer"),
    ({"total": 3.0}, "GET /v1/leads: total is 3.0, expected an integer"),
    ({}, "GET /v1/leads: total is None, expected an integer"),
    ([3], "GET /v1/leads: total is None, expected an integer"),
])
def test_a_total_is_an_integer(body: Any, verdict: int | str) -> None:
    if isinstance(verdict, int):
        assert expect_total(response(200, body)) == verdict
        return
    assert judged(lambda: expect_total(response(200, body))) == ("fail", verdict)


@pytest.mark.parametrize("rows", [[], ()])
def test_no_rows_pass(rows: Any) -> None:
    assert judged(lambda: expect_no_rows(rows, "orphan rows", "m")) == ("pass", "")


def test_a_body_that_is_json_is_returned_as_parsed() -> None:
    assert expect_json(response(200, {"a": [1]})) == {"a": [1]}


_SLOW = "clients see slow responses; look for a slow query, a missing index or an overloaded database"


def test_latency_evidence_and_messages_over_alert_with_a_timeout() -> None:
    path = "/v1/leads"
    answered = tuple(Outcome(path, path, 200, float(ms)) for ms in range(100, 2000, 100))
    sample = Sample(path, (*answered, Outcome(path, path, None, 10_000.0, "ReadTimeout: timed out"),
                           Outcome(path, path, 429, 1.0)))
    evidence = Evidence()
    assert judged(lambda: expect_latency(sample, Thresholds(warn_ms=500, alert_ms=1000), evidence)) == (
        "fail", f"p95 1900 ms > alert 1000 ms over 20 requests to /v1/leads (1 timed out): {_SLOW}")
    assert evidence.values == {"p95": "1900 ms", "requests": 20, "timed_out": 1,
                               "statuses": {"200": 19, "no answer": 1, "429": 1},
                               "max_answered_ms": 1900.0}
    assert [(s.name, s.values_ms, s.warn_ms, s.alert_ms, s.p95_ms) for s in evidence.series] == [
        (path, tuple(float(ms) for ms in range(100, 2000, 100)), 500.0, 1000.0, 1900.0)]
    assert evidence.warnings == []


def test_latency_beyond_the_timeout_is_said_so_and_charted_without_a_p95() -> None:
    path = "/v1/leads"
    sample = Sample(path, (Outcome(path, path, 200, 12.34),
                           *[Outcome(path, path, None, 10_000.0, "ReadTimeout: timed out")] * 2))
    evidence = Evidence()
    assert judged(lambda: expect_latency(sample, Thresholds(warn_ms=500, alert_ms=1000), evidence)) == (
        "fail", f"p95 beyond the request timeout > alert 1000 ms over 3 requests to /v1/leads "
        f"(2 timed out): {_SLOW}")
    assert evidence.values["p95"] == "beyond the request timeout"
    assert evidence.values["max_answered_ms"] == 12.3
    assert [(s.values_ms, s.p95_ms) for s in evidence.series] == [((12.34,), None)]


def test_latency_between_warn_and_alert_passes_with_its_warning() -> None:
    path = "/v1/leads"
    sample = Sample(path, tuple(Outcome(path, path, 200, ms) for ms in (100.0, 620.44, 700.0)))
    evidence = Evidence()
    assert judged(lambda: expect_latency(sample, Thresholds(warn_ms=500, alert_ms=1000), evidence)) == (
        "pass", "")
    assert evidence.warnings == ["p95 700 ms > warn 500 ms over 3 requests to /v1/leads (alert at 1000 ms)"]
    assert evidence.values == {"p95": "700 ms", "requests": 3, "timed_out": 0, "statuses": {"200": 3},
                               "max_answered_ms": 700.0}


def test_latency_with_nothing_answered_fails_naming_the_first_error() -> None:
    path = "/v1/leads"
    sample = Sample(path, (Outcome(path, path, None, 0.0, "ConnectError: refused"),
                           Outcome(path, path, 500, 3.0, body="boom")))
    said, message = judged(lambda: expect_latency(sample, Thresholds(), Evidence()))
    assert said == "fail" and message.startswith("no request to /v1/leads could be timed")
    assert message.endswith("({'no answer': 1, '500': 1}): ConnectError: refused")


def _error_rate_sample() -> dict[str, list[Outcome]]:
    a = [Outcome("/a", "http://x/a", None, 10_000.0, "ReadTimeout: timed out"),
         Outcome("/a", "http://x/a", None, 0.0, "NotSent (the API was found down by test_x)"),
         Outcome("/a", "http://x/a", None, 5.0, None),
         *[Outcome("/a", "http://x/a", 503, 2.0, body="busy") for _ in range(4)],
         *[Outcome("/a", "http://x/a", 200, 1.0) for _ in range(3)]]
    return {"/a": a, "/b": [Outcome("/b", "http://x/b", 200, 1.0) for _ in range(10)]}


def test_an_error_rate_failure_counts_each_kind_and_shows_the_first_five_requests() -> None:
    evidence = Evidence()
    assert judged(lambda: expect_error_rate(_error_rate_sample(), 0.05, "requests", evidence)) == (
        "fail", "error rate 35.0% >= limit 5.0% (7 of 20 requests failed: 4x 503, 1x NotSent (the API "
        "was found down by test_x), 1x ReadTimeout, 1x no answer; per endpoint /a: 7 of 10 (70.0%)); "
        "first: GET /a -> ReadTimeout: timed out")
    assert evidence.values == {"error_rate": "35.0%", "failed": 7, "requests": 20,
                               "/a failed": "7 of 10", "/b failed": "0 of 10"}
    assert [(r.method, r.url, r.status, r.elapsed_ms, r.body) for r in evidence.requests] == [
        ("GET", "http://x/a", "no answer", 10_000.0, "ReadTimeout: timed out"),
        ("GET", "http://x/a", "not sent", 0.0, "NotSent (the API was found down by test_x)"),
        ("GET", "http://x/a", "no answer", 5.0, ""),
        ("GET", "http://x/a", 503, 2.0, "busy"),
        ("GET", "http://x/a", 503, 2.0, "busy")]


def test_an_error_rate_failure_names_the_first_answer_with_its_body() -> None:
    samples = {"/a": outcomes("/a", 10, 10)}
    assert judged(lambda: expect_error_rate(samples, 0.05, "requests", Evidence())) == (
        "fail", "error rate 50.0% >= limit 5.0% (10 of 20 requests failed: 10x 500; per endpoint "
        "/a: 10 of 20 (50.0%)); first: GET /a -> 500 boom")


def test_an_endpoint_over_the_limit_is_named_with_each_other_one_over_it() -> None:
    samples = {"/a": outcomes("/a", 30, 70), "/b": outcomes("/b", 0, 900), "/c": outcomes("/c", 40, 860)}
    assert judged(lambda: expect_error_rate(samples, 0.05, "requests", Evidence())) == (
        "fail", "error rate 3.7% overall, but over the limit 5.0% at /a: 30 of 100 (30.0%) (70 of 1900 "
        "requests failed: 70x 500); first: GET /a -> 500 boom")


def test_an_error_rate_over_only_429s_says_so() -> None:
    assert judged(lambda: expect_error_rate({"/a": outcomes("/a", 0, 0, limited=3)}, 0.05,
                                            "health checks", Evidence())) == (
        "saw nothing", "saw nothing: no request of the health checks got an answer that is not a "
        "429 (rate limited)")


def test_the_sampler_asks_the_verdict_without_final() -> None:
    for failed, total in [(0, 20), (0, 130), (20, 100), (20, 400), (1, 1)]:
        assert decide_error_rate(failed, total, 0.05) == error_rate_verdict(failed, total, 0.05)
    assert error_rate_verdict(20, 400, 0.05) == "undecided"   # final is off unless asked
    assert decide_error_rate(20, 400, 0.05) == "undecided"
    assert decide_error_rate(40, 400, 0.05) == "fail" and decide_error_rate(8, 400, 0.05) == "pass"


@pytest.mark.parametrize(("failed", "early", "final"), [
    (0, "undecided", "pass"),   # one good answer cannot tell 0% from 5% ...
    (1, "fail", "fail"),        # ... one failure of one is surely over 5% (99% interval from 13%)
])
def test_one_request_is_judged_too(failed: int, early: str, final: str) -> None:
    assert error_rate_verdict(failed, 1, 0.05) == early
    assert error_rate_verdict(failed, 1, 0.05, final=True) == final


def test_the_wilson_interval_of_nothing_is_everything_and_of_one_is_not() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(1, 1)
    assert 0.0 < low < 0.5 and high == pytest.approx(1.0)


@given(st.integers(1, 2000), st.data())
def test_the_wilson_interval_of_failures_mirrors_that_of_successes(total: int, data: Any) -> None:
    failed = data.draw(st.integers(0, total))
    low, high = wilson_interval(failed, total)
    mirror_low, mirror_high = wilson_interval(total - failed, total)
    assert low == pytest.approx(1 - mirror_high, abs=1e-9)
    assert high == pytest.approx(1 - mirror_low, abs=1e-9)


def test_a_limit_exactly_at_an_end_of_the_interval_is_not_surely_passed() -> None:
    low, high = wilson_interval(5, 20)
    assert error_rate_verdict(5, 20, low) == "fail"        # the interval starts at the limit: at it
    assert error_rate_verdict(5, 20, high) == "undecided"  # its top is the limit: not surely under


def test_six_rows_show_five_and_say_one_more() -> None:
    assert judged(lambda: expect_no_rows([(i,) for i in range(6)], "orphan rows", "m")) == (
        "fail", "6 orphan rows: m. Examples: 0; 1; 2; 3; 4 (and 1 more)")


def test_a_list_is_neither_a_list_body_nor_a_record_even_if_it_names_the_keys() -> None:
    assert judged(lambda: expect_list_shape(response(200, ["data", "total"]), LEADS)) == (
        "fail", "GET /v1/leads: list body has keys list, missing ['data', 'filters', 'page', "
        "'pageSize', 'total']: clients reading the list contract will break")
    said, message = judged(lambda: expect_list_shape(response(200, _list(data=[sorted(LEADS.fields)])),
                                                     LEADS))
    assert said == "fail" and "records lack fields branch_id (in 1), classification (in 1)" in message


def test_latency_of_timeouts_only_has_no_answered_maximum() -> None:
    path = "/v1/leads"
    sample = Sample(path, tuple(Outcome(path, path, None, 10_000.0, "ReadTimeout: timed out")
                                for _ in range(2)))
    evidence = Evidence()
    said, _ = judged(lambda: expect_latency(sample, Thresholds(), evidence))
    assert said == "fail" and evidence.values["max_answered_ms"] == 0


def test_every_endpoint_over_the_limit_is_listed() -> None:
    samples = {"/a": outcomes("/a", 30, 70), "/b": outcomes("/b", 40, 60), "/c": outcomes("/c", 0, 900)}
    said, message = judged(lambda: expect_error_rate(samples, 0.05, "requests", Evidence()))
    assert said == "fail" and message.startswith(
        "error rate 6.4% >= limit 5.0% (70 of 1100 requests failed: 70x 500; per endpoint "
        "/a: 30 of 100 (30.0%); /b: 40 of 100 (40.0%)); first: GET /a -> 500 boom"), message


@pytest.mark.parametrize(("answers", "why"), [
    ((Outcome("/v1/leads", "/v1/leads", 500, 3.0, body="boom"),), "({'500': 1}): 500 boom"),
    ((Outcome("/v1/leads", "/v1/leads", 404, 3.0),), "({'404': 1}): 404"),
    ((), "({}): no request was answered"),
])
def test_latency_with_no_successful_answer_says_what_came_instead(answers: tuple[Outcome, ...],
                                                                  why: str) -> None:
    sample = Sample("/v1/leads", answers)
    assert judged(lambda: expect_latency(sample, Thresholds(), Evidence())) == (
        "fail", f"no request to /v1/leads could be timed, none answered successfully {why}")


_ENDS_INCONCLUSIVE = '''
import pytest
from checks._plugin.verdicts import inconclusive, saw_nothing

def test_inconclusive():
    inconclusive("no baseline")

def test_saw_nothing():
    saw_nothing("no rows")

@pytest.mark.expects_inconclusive
def test_declared():
    inconclusive("no baseline")

def test_plain_skip():
    pytest.skip("not this machine")
'''


def test_a_test_ending_inconclusive_fails_unless_it_expects_to(tmp_path: Path) -> None:
    """tests/conftest.py's hook, on a test module of its own: an Inconclusive or NothingSeen
    out of a test's body is a failure (a mutant making a verdict inconclusive is killed), the
    marker makes it the skip it is, and a plain skip stays a skip."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport\n")
    (tmp_path / "test_ends.py").write_text(_ENDS_INCONCLUSIVE)
    root = Path(__file__).resolve().parent.parent
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml")  # its markers, strictly
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                           "test_ends.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    outcomes = dict(line.split("::", 1)[1].split()[:2] for line in done.stdout.splitlines()
                    if line.startswith("test_ends.py::"))
    assert outcomes == {"test_inconclusive": "FAILED", "test_saw_nothing": "FAILED",
                        "test_declared": "SKIPPED", "test_plain_skip": "SKIPPED"}, done.stdout
    assert "the test ended inconclusive (no baseline): mark it expects_inconclusive" in done.stdout



# --- orphans, per (table, column) ---------------------------------------------------------------

ORPHAN_MEANING = ("The API may fail or hide them; something deleted parents without cascading "
                  "(a partial restore or a dropped foreign key?)")


@pytest.mark.parametrize(("found", "verdict", "message"), [
    ({}, "pass", ""),
    ({("tenant_id", "tenants"): [], ("branch_id", "branches"): []}, "pass", ""),
    ({("tenant_id", "tenants"): [], ("branch_id", "branches"): [("l1", "b9")]}, "fail",
     "1 leads rows point at a missing parent: leads.branch_id -> branches: 1 rows (id -> missing "
     f"branches.id: l1 -> b9). {ORPHAN_MEANING}"),
    ({("tenant_id", "tenants"): [("l1", "t9")], ("branch_id", "branches"): [("l1", "b9"),
                                                                          ("l2", "b8")]}, "fail",
     "3 leads rows point at a missing parent: leads.tenant_id -> tenants: 1 rows (id -> missing "
     "tenants.id: l1 -> t9); leads.branch_id -> branches: 2 rows (id -> missing branches.id: "
     f"l1 -> b9; l2 -> b8). {ORPHAN_MEANING}"),
], ids=["nothing asked", "none found", "one column", "two columns, each named"])
def test_orphans_are_judged_and_named_per_table_and_column(
        found: dict[tuple[str, str], list[tuple[str, str]]], verdict: str, message: str) -> None:
    assert judged(lambda: expect_no_orphans("leads", found)) == (verdict, message)


@pytest.mark.parametrize(("count", "shown", "more"), [
    (5, "5 rows", ""), (6, "6 rows", " (and 1 more)"), (49, "49 rows", " (and 44 more)"),
    (50, "at least 50 rows", " (and 45 more)"),
])
def test_orphans_show_five_and_say_at_least_the_limit(count: int, shown: str, more: str) -> None:
    rows = [(f"a{i}", f"p{i}") for i in range(count)]
    verdict, message = judged(lambda: expect_no_orphans("appointments", {("lead_id", "leads"): rows}))
    examples = "; ".join(f"a{i} -> p{i}" for i in range(5))
    assert (verdict, message) == ("fail", (
        f"{count} appointments rows point at a missing parent: appointments.lead_id -> leads: "
        f"{shown} (id -> missing leads.id: {examples}{more}). {ORPHAN_MEANING}"))


def test_the_orphan_limit_is_the_callers() -> None:
    rows = [("a", "p"), ("b", "q")]
    assert "at least 2 rows" in judged(
        lambda: expect_no_orphans("api_keys", {("tenant_id", "tenants"): rows}, limit=2))[1]
    assert ": 2 rows (" in judged(
        lambda: expect_no_orphans("api_keys", {("tenant_id", "tenants"): rows}, limit=3))[1]


REFS = [("tenant_id", "tenants"), ("branch_id", "branches"), ("lead_id", "leads")]


@given(st.lists(st.integers(0, 7), min_size=3, max_size=3))
def test_every_orphaned_column_is_named_and_no_clean_one(counts: list[int]) -> None:
    found = {ref: [(f"r{ref[0]}{i}", f"gone{i}") for i in range(n)]
             for ref, n in zip(REFS, counts, strict=True)}
    verdict, message = judged(lambda: expect_no_orphans("appointments", found))
    assert verdict == ("fail" if any(counts) else "pass")
    for (column, parent), n in zip(REFS, counts, strict=True):
        assert (f"appointments.{column} -> {parent}: {n} rows" in message) == bool(n)
    if any(counts):
        assert message.startswith(f"{sum(counts)} appointments rows point at a missing parent")


# --- FASE 2's backup: counts, compared columns, changed columns ------------------------------------


@pytest.mark.parametrize(("held", "recorded", "message"), [
    (3, 3, ""),
    (0, 0, ""),
    (2, 3, "backup table rb.keys_x holds 2 rows, the run recorded 3: the backup is incomplete, "
           "so an undo would lose keys"),
    (0, 1, "backup table rb.keys_x holds 0 rows, the run recorded 1: the backup is incomplete, "
           "so an undo would lose keys"),
    (4, 3, "backup table rb.keys_x holds 4 rows, the run recorded 3: the backup holds rows the "
           "run did not back up (another run's, or written since)"),
])
def test_a_backup_holds_exactly_the_rows_the_run_recorded(held: int, recorded: int,
                                                          message: str) -> None:
    assert judged(lambda: expect_backup_rows("backup table rb.keys_x", held, recorded)) == (
        ("fail", message) if message else ("pass", ""))


@pytest.mark.parametrize(("backup", "keys", "exempt", "compared"), [
    (["id", "name", "scope_type", "updated_at"], ["name", "id", "scope_type", "updated_at"],
     {"scope_type", "updated_at"}, ["id", "name"]),
    (["name", "id"], ["id", "name"], set(), ["name", "id"]),  # the backup's order
    (["id", "dropped_since"], ["id", "added_since"], set(), ["id"]),  # only what both have
    (["scope_type"], ["scope_type"], {"scope_type"}, []),
    ([], ["id"], set(), []),
])
def test_keys_are_compared_by_the_columns_both_tables_have_but_the_exempt(
        backup: list[str], keys: list[str], exempt: set[str], compared: list[str]) -> None:
    assert compared_columns(backup, iter(keys), iter(exempt)) == compared


@pytest.mark.parametrize(("flags", "changed"), [
    ([False, False, False], []),
    ([True, False, False], ["id"]),
    ([False, True, True], ["name", "key_hash"]),
    ([True, True, True], ["id", "name", "key_hash"]),
])
def test_changed_columns_are_those_flagged(flags: list[bool], changed: list[str]) -> None:
    assert changed_columns(["id", "name", "key_hash"], flags) == changed


@pytest.mark.parametrize("flags", [[True], [True, False, True, False]])
def test_a_flag_for_each_column_or_a_refusal(flags: list[bool]) -> None:
    with pytest.raises(ValueError, match=f"^{len(flags)} flags for 3 columns$"):
        changed_columns(["id", "name", "key_hash"], flags)


UNCHANGED_MEANING = ("the rollback must only widen scope; compare with the backup rb.keys_x and "
                     "restore those columns")


@pytest.mark.parametrize(("rows", "message"), [
    ([], ""),
    ([("k1", [False, True, False])], "1 converted keys changed beyond their scope (id, changed "
     f"columns): {UNCHANGED_MEANING}. Examples: k1, name"),
    ([("k1", [False, True, True]), ("k2", [True, False, False])], "2 converted keys changed "
     f"beyond their scope (id, changed columns): {UNCHANGED_MEANING}. Examples: k1, name, "
     "key_hash; k2, id"),
    ([("k1", [False, False, False])], ""),  # no column differs: not a change
])
def test_a_converted_key_is_unchanged_but_for_scope(rows: list[tuple[str, list[bool]]],
                                                    message: str) -> None:
    said = judged(lambda: expect_unchanged_but_for_scope(
        "rb.keys_x", ["id", "name", "key_hash"], rows))
    assert said == (("fail", message) if message else ("pass", ""))


def test_a_backup_sharing_no_compared_column_fails() -> None:
    assert judged(lambda: expect_unchanged_but_for_scope("rb.keys_x", [], [])) == (
        "fail", "backup table rb.keys_x shares no compared column with api_keys: nothing to "
        "compare a converted key by (is it the backup of another table?)")


COLUMNS = ["id", "tenant_id", "name", "key_hash", "is_active", "revoked_at"]


@given(st.lists(st.lists(st.booleans(), min_size=len(COLUMNS), max_size=len(COLUMNS)),
                max_size=8))
def test_each_changed_key_is_listed_with_exactly_its_changed_columns(
        flags: list[list[bool]]) -> None:
    rows = [(f"k{i}", f) for i, f in enumerate(flags)]
    verdict, message = judged(lambda: expect_unchanged_but_for_scope("rb.keys_x", COLUMNS, rows))
    changed = [(key, [c for c, d in zip(COLUMNS, f, strict=True) if d]) for key, f in rows if any(f)]
    assert verdict == ("fail" if changed else "pass")
    if changed:
        assert message.startswith(f"{len(changed)} converted keys changed beyond their scope")
        shown = message.split("Examples: ", 1)[1].split(" (and ")[0].split("; ")
        assert shown == [", ".join([key, *names]) for key, names in changed[:5]]



# --- FASE 2's backup table against its CSV, key by key --------------------------------------------

HEADER = ["id", "name", "key_hash"]


def _rows(*keys: str, **values: str) -> list[list[str]]:
    """One CSV row a key, in the order given; `values` maps "key.column" to another value."""
    return [[key, values.get(f"{key}.name", f"name {key}"), values.get(f"{key}.key_hash", f"h{key}")]
            for key in keys]


@pytest.mark.parametrize(("table", "file", "found"), [
    (_rows("a", "b", "c"), _rows("a", "b", "c"), []),
    ([], [], []),
    (_rows("a", "b", "c"), _rows("a", "c"), [("b", "only in the table")]),
    (_rows("a", "c"), _rows("a", "b", "c"), [("b", "only in the CSV")]),
    (_rows("b"), _rows("a"), [("a", "only in the CSV"), ("b", "only in the table")]),
    (_rows("a"), _rows("b"), [("a", "only in the table"), ("b", "only in the CSV")]),
    (_rows("a", "b"), [], [("a", "only in the table"), ("b", "only in the table")]),
    ([], _rows("a", "b"), [("a", "only in the CSV"), ("b", "only in the CSV")]),
    (_rows("a", "b", **{"b.name": "renamed"}), _rows("a", "b"), [("b", "name")]),
    (_rows("a", **{"a.name": "x", "a.key_hash": "y"}), _rows("a"), [("a", "name, key_hash")]),
    ([["a", "name a"]], _rows("a"), [("a", "key_hash")]),  # a field missing from one row
    (_rows("a"), [["a", "name a", "ha", "extra"]], [("a", "(extra fields)")]),
], ids=["same", "both empty", "lost from the CSV", "lost from the table", "first only in the CSV",
        "first only in the table", "CSV empty", "table empty", "a value", "two values",
        "a short row", "a long row"])
def test_the_backup_and_its_csv_are_compared_key_by_key(table: list[list[str]], file: list[list[str]],
                                                       found: list[tuple[str, str]]) -> None:
    assert backup_differences(HEADER, iter(table), HEADER, iter(file)) == found


def test_other_columns_are_one_difference() -> None:
    assert backup_differences(HEADER, _rows("a"), ["id", "name"], [["a", "name a"]]) == [
        ("columns", "id, name, key_hash in the table, id, name in the CSV")]


def test_the_key_is_found_by_the_id_column_wherever_it_is() -> None:
    columns = ["name", "id"]
    assert backup_differences(columns, [["x", "a"], ["y", "b"]], columns, [["x", "a"], ["z", "b"]]) == [
        ("b", "name")]


def test_differences_stop_at_the_limit() -> None:
    keys = [f"k{i:02}" for i in range(10)]
    assert backup_differences(HEADER, _rows(*keys), HEADER, [], limit=3) == [
        (k, "only in the table") for k in keys[:3]]
    assert len(backup_differences(HEADER, _rows(*keys), HEADER, [])) == 10  # 50 by default
    many = [f"k{i:03}" for i in range(60)]
    assert len(backup_differences(HEADER, [], HEADER, _rows(*many))) == 50


@given(st.sets(st.sampled_from("abcdefghij")), st.sets(st.sampled_from("abcdefghij")),
       st.sets(st.sampled_from("abcdefghij")))
def test_each_key_only_on_one_side_or_changed_is_named_once(in_table: set[str], in_csv: set[str],
                                                            renamed: set[str]) -> None:
    changed = {f"{k}.name": "renamed" for k in renamed}
    found = backup_differences(HEADER, _rows(*sorted(in_table), **changed), HEADER,
                               _rows(*sorted(in_csv)))
    expected = sorted([(k, "only in the table") for k in in_table - in_csv]
                      + [(k, "only in the CSV") for k in in_csv - in_table]
                      + [(k, "name") for k in in_table & in_csv & renamed])
    assert found == expected


@pytest.mark.parametrize(("differences", "message"), [
    ([], ""),
    ([("k1", "name")], "backup table rb.keys_x and its CSV /r/keys.csv differ in 1 keys (id: what "
     "differs): k1: name. One of them was changed after the backup: an undo restores from the "
     "table, so compare both before restoring"),
    ([(f"k{i}", "only in the CSV") for i in range(6)],
     "backup table rb.keys_x and its CSV /r/keys.csv differ in 6 keys (id: what differs): "
     "k0: only in the CSV; k1: only in the CSV; k2: only in the CSV; k3: only in the CSV; "
     "k4: only in the CSV (and 1 more). One of them was changed after the backup: an undo "
     "restores from the table, so compare both before restoring"),
    ([(f"k{i}", "name") for i in range(5)],
     "backup table rb.keys_x and its CSV /r/keys.csv differ in 5 keys (id: what differs): "
     "k0: name; k1: name; k2: name; k3: name; k4: name. One of them was changed after the "
     "backup: an undo restores from the table, so compare both before restoring"),
])
def test_a_backup_and_its_csv_differing_names_the_keys(differences: list[tuple[str, str]],
                                                       message: str) -> None:
    assert judged(lambda: expect_backup_matches_csv("rb.keys_x", "/r/keys.csv", differences)) == (
        ("fail", message) if message else ("pass", ""))


@pytest.mark.parametrize("total", [22, 27, 38])
def test_the_wilson_interval_of_all_failed_ends_at_one_exactly(total: int) -> None:
    """At these sizes the formula's top is 1 + 2e-16 in floating point: the interval is clamped."""
    low, high = wilson_interval(total, total)
    assert high == 1.0 and 0.0 < low < 1.0
