"""The toolkit's HTTP client verifies TLS as httpx does, with its CA bundle read only at the first
https request (rollback.http._Trust): against a real local https server whose certificate is
self-signed, it refuses to connect unless that certificate is the trusted one (SSL_CERT_FILE),
and an http:// target never reads the bundle."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from rollback import http


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "healthy"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{server.server_address[0]}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert, key


@pytest.fixture
def https_url(certificate: tuple[Path, Path]) -> Iterator[str]:
    cert, key = certificate
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for address in _serve(server):
        yield f"https://localhost:{address.rsplit(':', 1)[1]}"


@pytest.fixture
def http_url() -> Iterator[str]:
    for address in _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Hello)):
        yield f"http://{address}"


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch) -> http._Trust:
    """A process's trust as it starts: nothing read yet, no SSL_CERT_FILE / SSL_CERT_DIR."""
    fresh = http._Trust()
    monkeypatch.setattr(http, "_TRUST", fresh)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return fresh


def test_an_http_target_never_reads_the_ca_bundle(trust: http._Trust, http_url: str) -> None:
    with http.bounded_client(http_url, 5.0) as client:
        assert client.get("/health").status_code == 200
    assert not trust._loaded


def test_a_certificate_nobody_trusts_is_refused(trust: http._Trust, https_url: str) -> None:
    with http.bounded_client(https_url, 5.0) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get("/health")
    assert trust._loaded  # certifi's bundle, which does not hold this certificate


def test_the_trusted_certificate_is_accepted(trust: http._Trust, https_url: str,
                                             certificate: tuple[Path, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with http.bounded_client(https_url, 5.0) as client:
        response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "healthy"}


def test_a_trusted_certificate_directory_is_honoured(trust: http._Trust, https_url: str,
                                                     certificate: tuple[Path, Path],
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SSL_CERT_DIR, as OpenSSL reads it: certificates under their subject-hash names."""
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "local.pem").write_bytes(certificate[0].read_bytes())
    subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("SSL_CERT_DIR", str(folder))
    with http.bounded_client(https_url, 5.0) as client:
        assert client.get("/health").status_code == 200
