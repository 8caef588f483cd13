"""A webhook receiver on 127.0.0.1 (and Pushgateway stand-in): what Apprise POSTs and
prometheus_client PUTs to it, kept for the test to read. The `receiver` fixture of
tests/conftest.py starts one per test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: the password in the receiver's Apprise URL: it must never show up in a log or on screen
SECRET = "s3cr3t-hook-pw"


@dataclass
class Receiver:
    port: int
    notices: list[dict[str, Any]] = field(default_factory=list)
    puts: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "hooks/rollback") -> str:
        """An Apprise URL with a password in it: it must never show up in a log or on screen."""
        return f"json://hook:{SECRET}@127.0.0.1:{self.port}/{path}"

    @property
    def titles(self) -> list[str]:
        with self.lock:
            return [str(n.get("title")) for n in self.notices]


@contextmanager
def serve_receiver() -> Iterator[Receiver]:
    """A webhook endpoint on 127.0.0.1 that keeps every JSON notice Apprise POSTs to it."""
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def _body(self) -> str:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()

        def do_POST(self) -> None:
            notice = json.loads(self._body())
            with box[0].lock:
                box[0].notices.append({"path": self.path, **notice})
            self.send_response(200)
            self.end_headers()

        def do_PUT(self) -> None:  # what prometheus_client's push_to_gateway sends
            body = self._body()
            with box[0].lock:
                box[0].puts.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
