"""The HTTP client every part of the toolkit talks to the target's API with: each answer bounded.

    bounded_client(base_url, timeout_s)  -> httpx.Client   the drivers' steps and the monitor
    BoundedTransport(total_s)                               what bounds it, for a client of your own

httpx's timeouts bound each read, not an answer: a body that trickles on for ever (a proxy
that streams, a server stuck in a loop) would hang a rollback's pre-flight or a monitor's cycle,
and with it any stop the operator asks for. Here an answer that has not ended within `total_s`,
or grows past MAX_RESPONSE_BYTES, ends as an `httpx.ReadTimeout`, which the probes report as
'timeout' like any other.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterator, Mapping

import httpx

__all__ = ["MAX_RESPONSE_BYTES", "BoundedTransport", "bounded_client"]

#: the most an answer of the API may weigh: /health and a page of a list are a few kB
MAX_RESPONSE_BYTES = 8 << 20


class _BoundedBody(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, request: httpx.Request, deadline: float) -> None:
        self._inner, self._request, self._deadline = inner, request, deadline

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        for chunk in self._inner:
            size += len(chunk)
            if time.monotonic() > self._deadline or size > MAX_RESPONSE_BYTES:
                raise httpx.ReadTimeout(f"the answer did not end in time (or within "
                                        f"{MAX_RESPONSE_BYTES >> 20} MB)", request=self._request)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _Trust:
    """httpx's verifying TLS context (its CA bundle: certifi's, or SSL_CERT_FILE / SSL_CERT_DIR),
    one per process and loaded at the first https request: reading the bundle takes 50-90 ms,
    which every process paid with its first client, and a run against an http:// target (a
    sandbox) needs none of it. Until loaded, the context trusts nothing: it cannot verify, so it cannot
    connect."""

    def __init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname checked, cert required
        self._loaded = False
        self._lock = threading.Lock()

    def load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                if os.environ.get("SSL_CERT_FILE"):
                    self.context.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
                elif os.environ.get("SSL_CERT_DIR"):
                    self.context.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
                else:
                    import certifi

                    self.context.load_verify_locations(cafile=certifi.where())
                self._loaded = True


_TRUST = _Trust()


class BoundedTransport(httpx.HTTPTransport):
    """Bounds a whole answer, body included, by `total_s` and MAX_RESPONSE_BYTES.

    The body is checked as each chunk arrives; the client's own timeout still bounds each
    wait for one, so a body that stops sending ends as a read timeout too.
    """

    def __init__(self, total_s: float, limits: httpx.Limits | None = None) -> None:
        super().__init__(limits=limits or httpx.Limits(), verify=_TRUST.context)
        self.total_s = total_s

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.total_s
        if request.url.scheme == "https":
            _TRUST.load()
        response = super().handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_BoundedBody(response.stream, request, deadline),
                              extensions=response.extensions)


def bounded_client(base_url: str, timeout_s: float, *, headers: Mapping[str, str] | None = None,
                   max_connections: int | None = None) -> httpx.Client:
    """A client for `base_url` whose every answer ends within `timeout_s` (body included).

    max_connections: the size of its connection pool, for a client shared by threads
    (httpx's default, 100, otherwise).
    """
    limits = (httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
              if max_connections is not None else None)
    return httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers,
                        transport=BoundedTransport(timeout_s, limits))
