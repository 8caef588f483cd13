"""The checks' requests against a real local HTTP server: a path that never answers is told from
a busy machine by a control request to the health path, and the sampler counts every outcome.

No sandbox: a threaded `http.server` whose paths sleep or answer on demand, and the checks'
own client (`checks.probe.CheckClient`) with a short timeout.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from checks.evidence import Evidence
from checks.probe import Budget, CheckClient, get

TIMEOUT_S = 0.5


class Server:
    """Paths in `slow` sleep that long before answering 200; the rest answer 200 at once."""

    def __init__(self) -> None:
        self.slow: dict[str, float] = {}
        self.seen: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.seen[path] += 1
                time.sleep(server.slow.get(path, 0.0))
                body = b'{"status": "ok"}'
                try:
                    self.send_response(200)
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
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
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
    assert "is hung" in message and "GET /health answered 200" in message, message
    assert server.seen["/leads"] == 1 and server.seen["/health"] == 1
    assert "/leads" in client.breaker.hung
    # the control request is in the evidence, beside the request that got nothing
    notes = [r["note"] for r in evidence.to_json()["requests"]]
    assert any(n.startswith("control") for n in notes), notes
    # the next check does not send it again
    with _client(server) as later, pytest.raises(pytest.fail.Exception) as refused:
        later.breaker = client.breaker
        get(later, "/leads")
    assert "not sent" in str(refused.value) and server.seen["/leads"] == 1


@pytest.mark.parametrize("control", ["/health", None], ids=["health-also-slow", "no-control-path"])
def test_without_a_prompt_control_answer_a_timeout_is_tried_once_more(server: Server,
                                                                      control: str | None) -> None:
    server.slow["/leads"] = 5 * TIMEOUT_S
    server.slow["/health"] = 5 * TIMEOUT_S  # a busy machine, or an API that is slow everywhere
    with _client(server, control) as client, pytest.raises(pytest.fail.Exception) as failed:
        get(client, "/leads")
    assert "sent 2 times" in str(failed.value) and "hung or overloaded" in str(failed.value)
    assert server.seen["/leads"] == 2


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
