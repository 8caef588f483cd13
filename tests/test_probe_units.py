"""The checks' requests against a real local HTTP server: a path that never answers is told from
a busy machine by a control request to the health path, and the sampler counts every outcome.

No sandbox: a threaded `http.server` whose paths sleep or answer on demand, and the checks'
own client (`checks.probe.CheckClient`) with a short timeout.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from checks import probe
from checks._plugin.verdicts import Inconclusive
from checks.evidence import Evidence
from checks.probe import (
    Budget,
    CheckClient,
    Pacer,
    Sample,
    _again,
    get,
    make_room,
    sample,
    sample_until_decided,
)

TIMEOUT_S = 0.5


class Server:
    """Paths in `slow` sleep that long before answering; a path in `answers` answers those
    statuses in turn, then 200; `headers` are sent with every answer of their path."""

    def __init__(self) -> None:
        self.slow: dict[str, float] = {}
        self.answers: dict[str, list[int]] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.seen: Counter[str] = Counter()
        self.asked_with: dict[str, dict[str, str]] = {}  # the last request's headers, by path
        self.queries: dict[str, str] = {}  # the last request's query string, by path
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.seen[path] += 1
                server.asked_with[path] = dict(self.headers.items())
                server.queries[path] = self.path.partition("?")[2]
                if path in server.slow:
                    time.sleep(server.slow[path])
                queued = server.answers.get(path)
                status = queued.pop(0) if queued else 200
                body = b'{"status": "ok"}'
                try:
                    self.send_response(status)
                    for name, value in server.headers.get(path, {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up meanwhile
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    # polled every 10 ms, so that shutting it down after each test takes no half second
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _client(server: Server, control: str | None = "/health") -> CheckClient:
    return CheckClient(base_url=server.url, budget=Budget(), timeout_s=TIMEOUT_S,
                       control_path=control)


def test_a_path_that_never_answers_while_health_does_is_hung_after_one_timeout(server: Server) -> None:
    server.slow["/leads"] = 5 * TIMEOUT_S
    evidence = Evidence()
    with _client(server) as client, pytest.raises(pytest.fail.Exception) as failed:
        get(client, "/leads", evidence=evidence)
    message = str(failed.value)
    assert message.startswith("GET /leads: no answer within 0.5 s (ReadTimeout), while GET /health "
                              "answered 200 in "), message
    assert message.endswith(f" ms meanwhile: /leads is hung at {server.url}"), message
    assert server.seen["/leads"] == 1 and server.seen["/health"] == 1
    assert "/leads" in client.breaker.hung and failed.value.pytrace is False
    assert client.breaker.hung["/leads"].saw.startswith(
        "GET /leads: ReadTimeout: timed out, while GET /health answered 200 in ")
    # the control request is in the evidence, beside the request that got nothing
    records = evidence.to_json()["requests"]
    assert any(r["note"].startswith("control") for r in records), records
    leads = [r for r in records if r["url"] == f"{server.url}/leads"]
    assert [(r["method"], r["status"], r["body"]) for r in leads] == [
        ("GET", "no answer", "ReadTimeout: timed out")]  # one try: no attempt number
    assert leads[0]["elapsed_ms"] >= TIMEOUT_S * 1000 * 0.9
    # the next check does not send it again
    with _client(server) as later, pytest.raises(pytest.fail.Exception) as refused:
        later.breaker = client.breaker
        get(later, "/leads")
    assert "not sent" in str(refused.value) and server.seen["/leads"] == 1
    assert refused.value.pytrace is False


@pytest.mark.parametrize("control", ["/health", None], ids=["health-also-slow", "no-control-path"])
def test_without_a_prompt_control_answer_a_timeout_is_tried_once_more(server: Server,
                                                                      control: str | None) -> None:
    server.slow["/leads"] = 5 * TIMEOUT_S
    server.slow["/health"] = 5 * TIMEOUT_S  # a busy machine, or an API that is slow everywhere
    with _client(server, control) as client, pytest.raises(pytest.fail.Exception) as failed:
        get(client, "/leads")
    assert "sent 2 times" in str(failed.value) and "hung or overloaded" in str(failed.value)
    assert server.seen["/leads"] == 2


def test_a_timeout_with_no_room_for_a_second_try_fails_at_once(server: Server) -> None:
    server.slow["/leads"] = 5 * TIMEOUT_S
    with (CheckClient(base_url=server.url, budget=Countdown(0), timeout_s=TIMEOUT_S) as client,
          pytest.raises(pytest.fail.Exception) as failed):
        get(client, "/leads")
    assert str(failed.value) == (f"GET /leads: no answer within 0.5 s (ReadTimeout): the API at "
                                 f"{server.url} is hung or overloaded")
    assert failed.value.pytrace is False and server.seen["/leads"] == 1


def test_the_control_request_waits_at_most_half_the_timeout(server: Server) -> None:
    server.slow["/leads"] = 5 * TIMEOUT_S
    server.slow["/health"] = 0.35  # answers, but after the control's 0.25 s
    with _client(server) as client, pytest.raises(pytest.fail.Exception) as failed:
        get(client, "/leads")
    assert "sent 2 times" in str(failed.value) and "hung or overloaded" in str(failed.value)
    assert (server.seen["/leads"], server.seen["/health"]) == (2, 1)


def test_a_plain_httpx_client_has_no_control_path(server: Server) -> None:
    server.slow["/leads"] = 5 * TIMEOUT_S
    with (httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client,
          pytest.raises(pytest.fail.Exception) as failed):
        get(client, "/leads")
    assert "sent 2 times" in str(failed.value) and server.seen["/health"] == 0


def test_a_check_client_paces_itself_by_its_answers_rate_limit(server: Server) -> None:
    server.headers["/leads"] = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "5",
                                "X-RateLimit-Reset": str(time.time() + 30)}
    with _client(server) as client:
        get(client, "/leads")
        assert (client.pacer.limit, client.pacer.remaining) == (60, 5)  # read from the answer
        get(client, "/other")
        assert client.pacer.remaining == 4  # counted as it was sent


def test_a_request_is_sent_with_its_parameters_and_headers(server: Server) -> None:
    with _client(server) as client:
        get(client, "/leads", {"page": 2}, headers={"X-Tenant": "t1"})
    assert server.queries["/leads"] == "page=2" and server.asked_with["/leads"]["X-Tenant"] == "t1"


def test_a_redirect_is_the_answer_unless_asked_to_follow_it(server: Server) -> None:
    server.answers["/old"] = [302, 302]
    server.headers["/old"] = {"Location": "/new"}
    with _client(server) as client:
        assert get(client, "/old").status_code == 302
        assert get(client, "/old", follow_redirects=True).status_code == 200
    assert (server.seen["/old"], server.seen["/new"]) == (2, 1)


def test_the_control_path_itself_is_not_its_own_control(server: Server) -> None:
    server.slow["/health"] = 5 * TIMEOUT_S
    with _client(server) as client, pytest.raises(pytest.fail.Exception):
        get(client, "/health")
    assert server.seen["/health"] == 2  # two tries of its own, no extra control request


def test_a_slow_answer_within_the_timeout_passes_with_no_control_request(server: Server) -> None:
    server.slow["/leads"] = TIMEOUT_S / 5
    with _client(server) as client:
        assert get(client, "/leads").status_code == 200
    assert server.seen["/health"] == 0


# --- a single request's retry and resample decisions, by what the server answers -------------------


class Countdown(Budget):
    """A deadline that allows `tries` more waits, then none: the budget's answers without a clock."""

    def __init__(self, tries: int) -> None:
        super().__init__()
        self.tries = tries

    def allows(self, seconds: float) -> bool:
        self.tries -= 1
        return self.tries >= 0


class Deadline(Budget):
    """A deadline with `left_s` seconds left, whatever the clock says."""

    def __init__(self, left_s: float) -> None:
        super().__init__()
        self.left_s = left_s

    def allows(self, seconds: float) -> bool:
        return seconds <= self.left_s


@pytest.mark.parametrize(("answers", "sent", "status"), [
    ([], 1, 200),
    ([404], 1, 404),             # a client error is the answer: judged, not tried again
    ([499], 1, 499),
    ([500], 2, 200),             # one transient server error: sent once more
    ([503, 404], 2, 404),
    ([500, 500], 3, 200),        # a second one: sampled, the first other answer is judged
    ([500, 502, 404], 3, 404),
    ([500] * 11, 12, 200),       # RESAMPLE (10) more after the second
    ([500] * 12, 12, 500),       # RESAMPLE + 2 server errors in a row: the API fails there
    ([500] * 20, 12, 500),
], ids=lambda v: str(v) if not isinstance(v, list) else f"{len(v)}x{v[:1]}")
def test_a_server_error_is_tried_again_then_sampled_until_another_answer(
        server: Server, answers: list[int], sent: int, status: int) -> None:
    server.answers["/leads"] = list(answers)
    with _client(server) as client:
        assert get(client, "/leads").status_code == status
    assert server.seen["/leads"] == sent
    failing = client.breaker.failing.get("/leads")
    if sent == 12 and status == 500:
        assert failing is not None and failing.saw == "GET /leads answered 500 12 times in a row"
        assert failing.by == "a fixture before the first check"
    else:
        assert failing is None


@pytest.mark.parametrize(("tries", "sent", "failing"), [
    (0, 1, None), (1, 2, None), (2, 3, "GET /leads answered 500 3 times in a row")])
def test_the_deadline_stops_the_tries_and_three_server_errors_are_the_api_failing(
        server: Server, tries: int, sent: int, failing: str | None) -> None:
    server.answers["/leads"] = [500] * 20
    budget = Countdown(tries)
    with CheckClient(base_url=server.url, budget=budget, timeout_s=TIMEOUT_S) as client:
        assert get(client, "/leads").status_code == 500
    assert server.seen["/leads"] == sent
    found = budget.breaker.failing.get("/leads")
    assert (found.saw if found else None) == failing


@pytest.mark.parametrize(("left_s", "sent"), [(1.5, 2), (1.49, 1)])
def test_a_server_error_is_tried_again_only_if_a_timeout_and_a_second_fit_the_deadline(
        server: Server, left_s: float, sent: int) -> None:
    server.answers["/leads"] = [500]
    with CheckClient(base_url=server.url, budget=Deadline(left_s), timeout_s=TIMEOUT_S) as client:
        get(client, "/leads")
    assert server.seen["/leads"] == sent


def test_every_attempt_is_in_the_evidence_labelled_with_its_number_and_note(server: Server) -> None:
    server.answers["/leads"] = [500, 500]
    evidence = Evidence()
    with _client(server) as client:
        get(client, "/leads", evidence=evidence, note="list")
        get(client, "/once", evidence=evidence, note="list")
        get(client, "/bare", evidence=evidence)
    requests = evidence.to_json()["requests"]
    assert [(r["note"], r["status"]) for r in requests] == [
        ("attempt 1; list", 500), ("attempt 2; list", 500), ("attempt 3; list", 200),
        ("list", 200), ("", 200)]


def test_a_plain_httpx_client_is_retried_too_but_not_paced(server: Server) -> None:
    server.answers["/leads"] = [500]
    server.answers["/limited"] = [429]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
        assert get(client, "/leads").status_code == 200
        with pytest.raises(Inconclusive):
            probe.get(client, "/limited")
    assert (server.seen["/leads"], server.seen["/limited"]) == (2, 1)


def test_a_429_is_waited_out_once_then_the_check_is_inconclusive(server: Server) -> None:
    server.answers["/leads"] = [429]
    server.answers["/spent"] = [429, 429, 429]
    server.headers["/spent"] = {"X-RateLimit-Limit": "60", "Retry-After": "0"}
    server.headers["/leads"] = {"Retry-After": "0"}
    with _client(server) as client:
        assert get(client, "/leads").status_code == 200
        with pytest.raises(Inconclusive) as spent:
            probe.get(client, "/spent")
    assert (server.seen["/leads"], server.seen["/spent"]) == (2, 2)
    assert str(spent.value).startswith(
        "GET /spent: 429, the validation key's rate limit (X-RateLimit-Limit 60 per minute) is "
        "spent and its reset is beyond this check's deadline")


def test_a_429_whose_wait_is_beyond_the_deadline_is_not_waited_for(server: Server) -> None:
    server.answers["/leads"] = [429]
    server.headers["/leads"] = {"Retry-After": "30"}
    with (CheckClient(base_url=server.url, budget=Countdown(0), timeout_s=TIMEOUT_S) as client,
          pytest.raises(Inconclusive)):
        probe.get(client, "/leads")
    assert server.seen["/leads"] == 1


def test_an_api_that_refuses_connections_twice_is_down_for_every_later_request() -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        evidence = Evidence()
        with CheckClient(base_url=url, budget=Budget(), timeout_s=TIMEOUT_S) as client:
            with pytest.raises(pytest.fail.Exception) as failed:
                get(client, "/leads", evidence=evidence)
            message = str(failed.value)
            assert failed.value.pytrace is False
            assert message.startswith(f"GET /leads: cannot reach the API at {url} (ConnectError: ")
            assert message.endswith(
                "(sent 2 times, each in the evidence): is it up and is API_BASE_URL right?")
            assert client.breaker.api_down is not None
            with pytest.raises(pytest.fail.Exception) as refused:
                get(client, "/other", evidence=evidence)
    assert str(refused.value).startswith("GET /other: not sent, the API is down: GET /leads: ")
    seen = [(r["status"], r["body"]) for r in evidence.to_json()["requests"]]
    assert [status for status, _ in seen] == ["no answer", "no answer", "not sent"]
    assert seen[0][1].startswith("ConnectError: ") and seen[0][1].endswith(" (attempt 1)")
    assert seen[1][1].endswith(" (attempt 2)") and seen[2][1] == str(refused.value)
    records = evidence.to_json()["requests"]
    assert [(r["method"], r["url"]) for r in records] == [
        ("GET", f"{url}/leads"), ("GET", f"{url}/leads"), ("GET", f"{url}/other")]
    assert [r["elapsed_ms"] is None for r in records] == [False, False, True]


def test_a_slow_server_error_where_the_api_already_struggles_is_not_waited_for_twice(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "RESAMPLE_S", 0.05)
    server.answers["/leads"] = [500, 500]
    server.slow["/leads"] = 0.1
    with _client(server) as client:
        client.breaker.fails("/other", "GET /other answered 500 12 times in a row")
        assert get(client, "/leads").status_code == 500
    assert server.seen["/leads"] == 1
    saw = client.breaker.failing["/leads"].saw
    assert saw.startswith("GET /leads answered 500 after 0.") and saw.endswith(" s"), saw
    assert client.breaker.api_down is not None


def test_a_slow_answer_or_a_quick_server_error_where_the_api_struggles_is_not_a_failure(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "RESAMPLE_S", 0.05)
    server.slow["/slow"] = 0.1
    server.answers["/quick"] = [500]
    with _client(server) as client:
        client.breaker.fails("/other", "GET /other answered 500 12 times in a row")
        assert get(client, "/slow").status_code == 200
        assert get(client, "/quick").status_code == 200
    assert (server.seen["/slow"], server.seen["/quick"]) == (1, 2)
    assert list(client.breaker.failing) == ["/other"]


def test_server_errors_past_the_resample_window_are_the_api_failing(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "RESAMPLE_S", 0.0)  # every resample is already past its window
    server.answers["/leads"] = [500, 500, 500]
    with _client(server) as client:
        assert get(client, "/leads").status_code == 500
    assert server.seen["/leads"] == 2
    assert client.breaker.failing["/leads"].saw == "GET /leads answered 500 2 times in a row"


# --- the deadline, the pacer and the breaker, without a server --------------------------------------


def _answer(status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers={k.replace("_", "-"): v for k, v in headers.items()})


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Both clocks stopped at 1000 s; `time.sleep` records its waits instead of waiting."""
    slept: list[float] = []
    monkeypatch.setattr(probe.time, "monotonic", lambda: 1000.0)
    monkeypatch.setattr(probe.time, "time", lambda: 1000.0)
    monkeypatch.setattr(probe.time, "sleep", slept.append)
    return slept


def test_a_budget_is_a_share_of_the_checks_timeout(clock: list[float]) -> None:
    budget = Budget()
    assert repr(budget) == "Budget(unbounded)" and budget.allows(math.inf)
    budget.start(10.0, "checks/test_api.py::test_health")
    assert repr(budget) == "Budget(8.0 s left)" and budget.left() == 8.0
    assert budget.allows(8.0) and not budget.allows(8.01)
    assert budget.check == "checks/test_api.py::test_health"
    budget.start(5.0)
    assert budget.check == "checks/test_api.py::test_health" and budget.left() == 4.0


def test_the_pacer_reads_a_window_and_keeps_its_lowest_remaining(clock: list[float]) -> None:
    pacer = Pacer(Budget())
    pacer.observe(_answer(X_RateLimit_Limit="60", X_RateLimit_Remaining="5"))  # no reset: ignored
    pacer.observe(_answer(X_RateLimit_Limit="60", X_RateLimit_Remaining="x", X_RateLimit_Reset="1"))
    assert (pacer.limit, pacer.remaining, pacer.reset_epoch) == (None, None, None)
    pacer.before()  # nothing known: sent at once
    pacer.observe(_answer(X_RateLimit_Limit="60", X_RateLimit_Remaining="5", X_RateLimit_Reset="1030"))
    assert (pacer.limit, pacer.remaining, pacer.reset_epoch) == (60, 5, 1030.0)
    pacer.observe(_answer(X_RateLimit_Limit="60", X_RateLimit_Remaining="9", X_RateLimit_Reset="1030"))
    assert pacer.remaining == 5  # an answer sent before the others: not more room
    pacer.observe(_answer(X_RateLimit_Limit="60", X_RateLimit_Remaining="3", X_RateLimit_Reset="1030"))
    assert pacer.remaining == 3
    pacer.observe(_answer(X_RateLimit_Limit="90", X_RateLimit_Remaining="89", X_RateLimit_Reset="1090"))
    assert (pacer.limit, pacer.remaining, pacer.reset_epoch) == (90, 89, 1090.0)  # a new window
    pacer.before()
    assert pacer.remaining == 88 and clock == []


@pytest.mark.parametrize(("reset", "timeout_s", "slept"), [
    (1005.0, None, [5.2]),      # spent: wait for the reset (and 0.2 s)
    (1064.8, None, [65.0]),     # the longest wait
    (1070.0, None, []),         # longer than a window: sent, its 429 says why
    (999.0, None, []),          # the reset is past
    (1005.0, 8.375, [5.2]),     # 6.7 s left: room for the wait and a second
    (1005.0, 7.5, []),          # 6.0 s left: not
], ids=lambda v: str(v))
def test_a_spent_window_is_waited_for_within_the_deadline(
        clock: list[float], reset: float, timeout_s: float | None, slept: list[float]) -> None:
    budget = Budget()
    if timeout_s is not None:
        budget.start(timeout_s)
    pacer = Pacer(budget)
    pacer.observe(_answer(X_RateLimit_Limit="60", X_RateLimit_Remaining="0", X_RateLimit_Reset=str(reset)))
    pacer.before()
    assert clock == pytest.approx(slept) and pacer.waited_s == pytest.approx(sum(slept))
    if slept:  # the next window: this request is its first
        assert (pacer.remaining, pacer.reset_epoch) == (59, None)
    else:
        assert (pacer.remaining, pacer.reset_epoch) == (0, reset)


def test_the_pacer_adds_up_its_waits(clock: list[float]) -> None:
    pacer = Pacer(Budget())
    for reset in ("1005", "1010"):
        pacer.observe(_answer(X_RateLimit_Limit="60", X_RateLimit_Remaining="0", X_RateLimit_Reset=reset))
        pacer.before()
    assert clock == pytest.approx([5.2, 10.2]) and pacer.waited_s == pytest.approx(15.4)


@pytest.mark.parametrize(("headers", "reset", "timeout_s", "wait"), [
    ({"Retry-After": "3"}, None, None, 3.2),
    ({"Retry-After": "-5"}, None, None, 0.2),
    ({"Retry-After": "64.8"}, None, None, 65.0),
    ({"Retry-After": "65"}, None, None, None),     # beyond a window
    ({}, 1010.0, None, 10.2),                      # no Retry-After: the window's reset
    ({"Retry-After": "soon"}, None, None, None),   # neither: no wait known
    ({"Retry-After": "3"}, None, 5.25, 3.2),       # 4.2 s left: the wait and a second fit
    ({"Retry-After": "3"}, None, 5.0, None),       # 4.0 s left: not
], ids=lambda v: str(v))
def test_a_429_is_waited_for_as_long_as_it_says_within_the_deadline(
        clock: list[float], headers: dict[str, str], reset: float | None, timeout_s: float | None,
        wait: float | None) -> None:
    budget = Budget()
    if timeout_s is not None:
        budget.start(timeout_s)
    pacer = Pacer(budget)
    pacer.reset_epoch = reset
    got = pacer.retry_after(httpx.Response(429, headers=headers))
    assert got == (pytest.approx(wait) if wait is not None else None)


@pytest.mark.parametrize(("attempts", "resampling_s", "again"), [
    ([200], 0.0, False),
    ([499], 0.0, False),
    ([500], 0.0, True),
    (["timeout"], 0.0, True),
    (["refused"], 0.0, True),
    ([500, 500], 0.0, True),
    ([500, 500], 1.99, True),
    ([500, 500], 2.0, False),           # past RESAMPLE_S: the error rate has spoken
    ([500, "timeout"], 0.0, False),     # no answer after a server error: not sampled
    (["timeout", "timeout"], 0.0, False),
    ([500] * 11, 0.0, True),
    ([500] * 12, 0.0, False),           # RESAMPLE + 2 in all
    ([500, 200], 0.0, False),
], ids=lambda v: str(v) if not isinstance(v, list) else f"{len(v)}x{v[-1]}")
def test_again_after_a_first_failure_and_while_sampling_server_errors(
        attempts: list[int | str], resampling_s: float, again: bool) -> None:
    made = [httpx.Response(a) if isinstance(a, int) else
            httpx.ReadTimeout("slow") if a == "timeout" else httpx.ConnectError("refused")
            for a in attempts]
    assert _again(made, Budget(), TIMEOUT_S, resampling_s) is again


@pytest.mark.parametrize(("timeout_s", "again"), [(7.0, True), (7.01, False)])
def test_again_only_when_one_more_timeout_and_a_second_fit_the_deadline(
        clock: list[float], timeout_s: float, again: bool) -> None:
    budget = Budget()
    budget.start(10.0)  # 8 s left
    assert _again([httpx.Response(500)], budget, timeout_s, 0.0) is again


def test_the_breaker_finds_a_path_hung_after_two_timeouts_or_one_when_sure() -> None:
    breaker = Budget().breaker
    breaker.budget.check = "checks/test_api.py::test_leads"
    breaker.saw("/a", httpx.ReadTimeout("timed out"))
    assert breaker.refuse("/a") is None and not breaker.hangs
    breaker.saw("/a", httpx.ReadTimeout("timed out"))
    assert breaker.hangs and breaker.refuse("/a") == (
        "GET /a: not sent, the API does not answer at /a: GET /a: ReadTimeout: timed out "
        "(found by checks/test_api.py::test_leads); fix that first")
    breaker.saw("/b", httpx.ReadTimeout(""), surely=True, because="GET /health answered 200")
    assert breaker.hung["/b"].saw == "GET /b: ReadTimeout, while GET /health answered 200"
    breaker.saw("/x", httpx.ReadTimeout("read MAX"), surely=True)  # only ': ' is cut from the end
    assert breaker.hung["/x"].saw == "GET /x: ReadTimeout: read MAX"
    assert breaker.refuse("/c") is None and breaker.api_down is None


def test_the_breaker_finds_the_api_down_after_two_refusals_in_a_row_only() -> None:
    breaker = Budget().breaker
    breaker.saw("/a", httpx.ConnectError("refused"))
    breaker.answered()
    breaker.saw("/b", httpx.ConnectError("refused"))
    assert breaker.api_down is None and breaker.refuse("/b") is None
    breaker.saw("/c", httpx.ConnectError("again"))
    assert breaker.api_down is not None and breaker.api_down.saw == "GET /c: ConnectError: again"
    breaker.saw("/d", httpx.ConnectError("later"))
    assert breaker.api_down.saw == "GET /c: ConnectError: again"  # the first finding stays
    assert breaker.refuse("/z") == ("GET /z: not sent, the API is down: GET /c: ConnectError: again "
                                    "(found by a fixture before the first check); fix that first")


def test_the_breaker_finds_a_path_failing_and_two_failing_paths_the_api_down() -> None:
    breaker = Budget().breaker
    breaker.slow_error("/a", "GET /a answered 503 after 2.5 s")
    assert breaker.refuse("/a") is None
    breaker.slow_error("/a", "GET /a answered 500 after 3.0 s")
    assert breaker.failing["/a"].saw == "GET /a answered 500 after 3.0 s, twice"
    assert breaker.refuse("/a") == ("GET /a: not sent, the API fails at /a: GET /a answered 500 "
                                    "after 3.0 s, twice (found by a fixture before the first "
                                    "check); fix that first")
    assert breaker.api_down is None and not breaker.hangs
    breaker.fails("/a", "later")
    assert breaker.failing["/a"].saw.endswith("twice") and breaker.api_down is None
    breaker.fails("/b", "GET /b answered 500 12 times in a row")
    assert breaker.api_down is not None and breaker.api_down.saw == (
        "nothing but server errors at /a and /b; GET /b answered 500 12 times in a row")
    assert breaker.api_down.by == "a fixture before the first check"
    breaker.fails("/c", "x")
    assert breaker.api_down.saw.startswith("nothing but server errors at /a and /b;")


# --- a sample's requests, and a sample grown until the error rate is decided -----------------------


def test_a_sample_keeps_every_outcome_and_holds_back_what_the_breaker_refuses(server: Server) -> None:
    server.answers["/a"] = [500, 400, 399]
    server.slow["/a"] = 0.1
    with _client(server) as client:
        client.breaker.saw("/hung", httpx.ReadTimeout("timed out"), surely=True)
        client.breaker.fails("/bad", "GET /bad answered 500 12 times in a row")
        got = sample(client, ["/a", "/hung", "/bad"], 4)
    bodies = {o.status: o.body for o in got["/a"].outcomes}
    assert sorted(bodies) == [200, 399, 400, 500]
    assert bodies[200] == bodies[399] == "" and bodies[400] and bodies[500]  # >= 400: its body
    assert all(o.elapsed_ms >= 100 for o in got["/a"].outcomes)  # the server's 0.1 s, in ms
    hung, bad = got["/hung"].outcomes[0], got["/bad"].outcomes[0]
    assert hung.error == f"Timeout ({client.breaker.refuse('/hung')})" and hung.timed_out
    assert bad.error == f"NotSent ({client.breaker.refuse('/bad')})" and not bad.sent
    assert (hung.status, hung.elapsed_ms, hung.url) == (None, 0.0, f"{server.url}/hung")
    assert server.seen["/a"] == 4 and server.seen["/hung"] == server.seen["/bad"] == 0


def test_a_sample_request_that_gets_no_answer_is_told_to_the_breaker() -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with CheckClient(base_url=url, budget=Budget(), timeout_s=TIMEOUT_S) as client:
            got = sample(client, ["/a"], 2)
    assert [o.error.split(":")[0] for o in got["/a"].outcomes] == ["ConnectError"] * 2
    assert all(o.url == f"{url}/a" for o in got["/a"].outcomes)
    assert client.breaker.refusals == 2 and client.breaker.api_down is not None
    assert client.breaker.api_down.saw.startswith("GET /a: ConnectError: ")


def test_a_sample_request_timing_out_is_timed_and_told_to_the_breaker(server: Server) -> None:
    server.slow["/a"] = 5 * TIMEOUT_S
    with _client(server) as client:
        (outcome,) = sample(client, ["/a"], 1)["/a"].outcomes
    assert outcome.timed_out and outcome.elapsed_ms >= TIMEOUT_S * 1000 * 0.9
    assert client.breaker.timeouts == {"/a": 1}


def test_a_sample_through_a_plain_httpx_client_has_no_breaker(server: Server) -> None:
    server.answers["/a"] = [500]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
        got = sample(client, ["/a"], 2)
    assert sorted(o.status for o in got["/a"].outcomes) == [200, 500]


def test_slow_server_errors_in_a_sample_make_the_path_failing(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "RESAMPLE_S", 0.05)
    server.answers["/a"] = [500, 500]
    server.answers["/b"] = [404, 404]
    server.slow["/a"] = server.slow["/b"] = 0.1
    with _client(server) as client:
        sample(client, ["/a", "/b"], 2)
    assert client.breaker.failing["/a"].saw.startswith("GET /a answered 500 after 0.")
    assert client.breaker.failing["/a"].saw.endswith(" s, twice")
    assert "/b" not in client.breaker.failing and "/b" not in client.breaker.slow_errors


def test_a_sample_request_met_by_a_429_is_sent_once_more_after_the_wait(server: Server) -> None:
    server.answers["/a"] = [429, 429, 429]
    server.headers["/a"] = {"Retry-After": "0"}
    with _client(server) as client:
        first = sample(client, ["/a"], 1)["/a"].outcomes[0]
        second = sample(client, ["/a"], 1)["/a"].outcomes[0]
    assert (first.status, second.status, server.seen["/a"]) == (429, 200, 4)


class Decider:
    """`decide` for sample_until_decided: undecided until `total` requests, and what it was asked."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.asked: list[tuple[int, int, float]] = []

    def __call__(self, failed: int, total: int, limit: float) -> str:
        self.asked.append((failed, total, limit))
        return "pass" if total >= self.total else "undecided"


@pytest.mark.parametrize(("decided_at", "cap", "tries", "asked_totals"), [
    (4, 600, 99, [4]),                 # decided by the first sample: nothing more sent
    (12, 600, 99, [4, 8, 12]),         # a batch as large as the first, until decided
    (99, 12, 99, [4, 8, 12]),          # 12 requests at most: no batch past the cap
    (99, 11, 99, [4, 8]),
    (99, 600, 1, [4, 8]),              # the deadline leaves room for one batch
], ids=lambda v: str(v))
def test_a_sample_grows_batch_by_batch_until_decided_capped_or_out_of_time(
        server: Server, decided_at: int, cap: int, tries: int, asked_totals: list[int]) -> None:
    server.answers["/a"] = [500]
    with CheckClient(base_url=server.url, budget=Countdown(tries), timeout_s=TIMEOUT_S) as client:
        first = sample(client, ["/a", "/b"], 2)
        decide = Decider(decided_at)
        grown = sample_until_decided(client, first, 0.05, decide, cap=cap)
    assert [total for _, total, _ in decide.asked] == asked_totals
    assert all(failed == 1 and limit == 0.05 for failed, _, limit in decide.asked)
    assert grown["/a"].size + grown["/b"].size == asked_totals[-1]
    assert server.seen["/a"] + server.seen["/b"] == asked_totals[-1]


@pytest.mark.parametrize(("left_s", "asked_totals"), [(2.5, [2, 4]), (2.49, [2])])
def test_a_sample_grows_only_while_a_batch_and_two_seconds_fit_the_deadline(
        server: Server, left_s: float, asked_totals: list[int]) -> None:
    with CheckClient(base_url=server.url, budget=Deadline(left_s), timeout_s=TIMEOUT_S) as client:
        decide = Decider(4)
        sample_until_decided(client, sample(client, ["/a"], 2), 0.05, decide)
    assert [total for _, total, _ in decide.asked] == asked_totals  # a batch: 0.5 s timeout + 2 s


def test_an_empty_sample_is_decided_as_it_is() -> None:
    decide = Decider(0)
    with httpx.Client(base_url="http://127.0.0.1:9", timeout=TIMEOUT_S) as client:
        assert sample_until_decided(client, {}, 0.05, decide) == {}
    assert decide.asked == [(0, 0, 0.05)]


def test_sample_until_decided_counts_only_judged_requests_and_batches_of_at_least_one(
        server: Server) -> None:
    with _client(server) as client:
        decide = Decider(3)
        grown = sample_until_decided(client, {"/a": Sample("/a", ())}, 0.05, decide, cap=10)
    assert [total for _, total, _ in decide.asked] == [0, 1, 2, 3] and grown["/a"].size == 3


# --- before the checks: room in the key's rate-limit window ------------------------------------------


@pytest.mark.parametrize(("status", "headers", "needed", "wait"), [
    (200, {}, 50, None),                                                   # no rate limit told
    (200, {"X-RateLimit-Remaining": "50", "reset_in": "30"}, 50, None),    # room enough
    (200, {"X-RateLimit-Remaining": "49", "reset_in": "30"}, 50, 30.2),    # the reset, and 0.2 s
    (200, {"X-RateLimit-Remaining": "0", "reset_in": "90"}, 50, None),     # beyond a window
    (200, {"X-RateLimit-Remaining": "0", "reset_in": "-5"}, 50, None),     # already reset
    (200, {"X-RateLimit-Remaining": "0", "reset_in": "0.5"}, 50, 0.7),     # under a second
    (429, {"X-RateLimit-Remaining": "0", "reset_in": "30", "Retry-After": "5"}, 50, 5.2),
    (429, {"X-RateLimit-Remaining": "0", "reset_in": "30", "Retry-After": "90"}, 50, 30.2),
    (429, {"X-RateLimit-Remaining": "0", "reset_in": "30", "Retry-After": "64.8"}, 50, 65.0),
], ids=lambda v: str(v))
def test_make_room_waits_for_the_windows_reset_when_the_checks_need_more(
        server: Server, monkeypatch: pytest.MonkeyPatch, status: int, headers: dict[str, str],
        needed: int, wait: float | None) -> None:
    slept: list[float] = []
    monkeypatch.setattr(probe.time, "sleep", slept.append)
    monkeypatch.setattr(probe.time, "time", lambda: 1000.0)
    sent = dict(headers)
    if "reset_in" in sent:
        sent["X-RateLimit-Reset"] = str(1000.0 + float(sent.pop("reset_in")))
        sent["X-RateLimit-Limit"] = "120"
    server.answers["/health"] = [status]
    server.headers["/health"] = sent
    said = make_room(server.url, "k", "/health", needed, TIMEOUT_S)
    if wait is None:
        assert said is None and slept == []
    else:
        assert said == (f"rate limit: TEST_API_KEY had {headers['X-RateLimit-Remaining']} of 120 "
                        f"requests left in its window, the checks need about {needed}: waited "
                        f"{wait:.0f} s for the reset")
        assert slept == [pytest.approx(wait)]
    assert server.asked_with["/health"]["User-Agent"] == probe.USER_AGENT
    assert server.asked_with["/health"]["Authorization"] == "Bearer k"


def test_make_room_leaves_an_unreachable_api_to_the_checks() -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        assert make_room(f"http://127.0.0.1:{closed.getsockname()[1]}", "k", "/health", 5,
                         TIMEOUT_S) is None


# --- the shared sample, taken in the background (SharedSample) ---------------------------------


def _shared(server: Server, paths: list[str], size: int, total: int,
            breaker: probe.Breaker | None = None) -> probe.SharedSample:
    client = CheckClient(base_url=server.url, budget=Budget(breaker=breaker), timeout_s=TIMEOUT_S)
    decide = Decider(total)
    return probe.SharedSample(client, paths, size,
                              lambda c, first: sample_until_decided(c, first, 0.05, decide),
                              timeout_s=30.0)


def _within(seconds: float) -> Budget:
    budget = Budget()
    budget.start(seconds / probe.BUDGET_SHARE)
    return budget


def test_the_shared_sample_is_taken_in_the_background_then_grown_until_decided(
        server: Server) -> None:
    shared = _shared(server, ["/a", "/b"], 3, total=12).start()
    first, grown = shared.first(_within(30)), shared.grown(_within(30))
    shared.close()
    assert first is not None and [s.size for s in first.values()] == [3, 3]
    assert grown is not None and [s.size for s in grown.values()] == [6, 6]
    # one request to each path before it starts, then the sample and the batch that decided it
    assert server.seen == Counter({"/a": 7, "/b": 7})
    assert shared.client.budget.check == probe.SharedSample.LABEL
    assert shared._thread.daemon  # a sample still under way never holds the process at its exit


def test_the_shared_sample_starts_when_every_path_answers_below_500_and_waits_unbounded(
        server: Server) -> None:
    server.answers["/a"] = [499]
    shared = _shared(server, ["/a"], 2, total=2).start()
    first = shared.first(Budget())  # outside a check: no deadline, it waits as long as it takes
    shared.close()
    assert first is not None and first["/a"].size == 2


@pytest.mark.parametrize(("failing", "status"), [("/a", 503), ("/b", 500)])
def test_the_shared_sample_does_not_start_when_a_path_answers_a_server_error_first(
        server: Server, failing: str, status: int) -> None:
    server.answers[failing] = [status]
    shared = _shared(server, ["/a", "/b"], 3, total=12).start()
    assert shared.first(_within(30)) is None and shared.grown(_within(30)) is None
    shared.close()
    assert sum(server.seen.values()) == (1 if failing == "/a" else 2)  # no sample was sent


def test_the_shared_sample_does_not_start_when_a_path_answers_late_or_not_at_all(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # /a must answer within it, also on a loaded machine: a wide margin, not a tight clock
    monkeypatch.setattr(probe, "CONTROL_TIMEOUT_S", 0.5)
    server.slow["/b"] = 1.5
    shared = _shared(server, ["/a", "/b"], 3, total=12).start()
    assert shared.first(_within(30)) is None
    shared.close()
    assert server.seen == Counter({"/a": 1, "/b": 1})
    unreachable = probe.SharedSample(
        CheckClient(base_url="http://127.0.0.1:9", budget=Budget(), timeout_s=TIMEOUT_S),
        ["/a"], 3, lambda c, first: first, timeout_s=30.0).start()
    assert unreachable.first(_within(30)) is None and unreachable.grown(_within(30)) is None


def test_a_check_that_cannot_wait_for_the_shared_sample_is_inconclusive(server: Server) -> None:
    server.slow["/a"] = 0.3
    shared = _shared(server, ["/a"], 2, total=2).start()
    with pytest.raises(Inconclusive, match=r"shared sample .* had not finished when this "
                                           r"check's deadline came"):
        shared.first(_within(0.05))
    assert shared.first(_within(30)) is not None  # it goes on: a later check gets it
    shared.close()


def test_what_the_shared_sample_finds_is_the_sessions_and_says_who_found_it(server: Server) -> None:
    session = Budget()
    session.check = "checks/test_auth.py::test_valid_key_is_accepted"
    shared = _shared(server, ["/a"], 2, total=2, breaker=session.breaker)
    shared.client.budget.start(30, probe.SharedSample.LABEL)
    server.slow["/a"] = 2 * TIMEOUT_S
    sample(shared.client, ["/a"], 2)
    shared.close()
    found = session.breaker.hung["/a"]
    assert found.by == probe.SharedSample.LABEL and "ReadTimeout" in found.saw


def test_an_error_in_the_background_reaches_the_check_that_waits_for_it(server: Server) -> None:
    def broken(client: httpx.Client, first: dict[str, Sample]) -> dict[str, Sample]:
        raise RuntimeError("grow broke")

    client = CheckClient(base_url=server.url, budget=Budget(), timeout_s=TIMEOUT_S)
    shared = probe.SharedSample(client, ["/a"], 2, broken, timeout_s=30.0).start()
    assert shared.first(_within(30)) is not None
    with pytest.raises(RuntimeError, match="grow broke"):
        shared.grown(_within(30))
    shared.close()
