"""Helpers of the reliability tests (`test_reliability_*.py`): drivers run as real processes that
the tests kill, block and starve, and what the journal and the database say afterwards.

Built on `tests/targets.py`: its `make_target` (a sandbox seen through a rollback.toml of
the test's own) and `state_of` (what an operator can observe of the target).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import ROOT, Sandbox
from tests.targets import Target

#: api_keys as a checksum, without what traffic bumps (last use, daily count) and without
#: updated_at, which the conversion sets to the time it ran: two runs differ only there
KEYS_CHECKSUM = """
    SELECT encode(sha256(convert_to(string_agg(to_jsonb(k)::text, E'\\n' ORDER BY k.id), 'UTF8')), 'hex')
      FROM (SELECT id, tenant_id, created_by, name, description, key_hash, key_hint, key_prefix,
                   environment, scopes, rate_limit_rpm, rate_limit_daily, ip_whitelist,
                   expires_at, is_active, revoked_at, revoked_by, revoke_reason, metadata,
                   created_at, branch_id, scope_type, branch_context
              FROM api_keys) k
"""


def keys_checksum(box: Sandbox) -> str:
    return str(box.sql(KEYS_CHECKSUM)[0][0])


@dataclass
class Driver:
    """`rollback ARGS` running in the background, its output in files (a full pipe would block it)."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 240) -> int:
        return self.process.wait(timeout=timeout)

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def start(target: Target, *args: str, folder: Path, name: str, **env: str) -> Driver:
    """Start `rollback ARGS` against `target`; stdout and stderr go to `folder/name.{out,err}`."""
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / f"{name}.out", folder / f"{name}.err"
    with out.open("wb") as o, err.open("wb") as e:
        process = subprocess.Popen(target.command(*args), cwd=ROOT, env=target.env(**env),
                                   stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    return Driver(process, out, err)


def gate_checks(driver: Driver) -> list[psutil.Process]:
    """The processes running the checks of the driver's gate (or of `health`), if it runs them
    now: the driver itself while it writes a pytest.log (`rollback.validate` runs pytest in its
    own process), or a `python -m pytest checks ...` child (with `-n`)."""
    found = []
    for process in driver.children():
        try:
            if process.cmdline()[1:4] == ["-m", "pytest", "checks"]:
                found.append(process)
        except psutil.Error:
            continue
    try:
        itself = psutil.Process(driver.pid)
        if any(Path(f.path).name == "pytest.log" for f in itself.open_files()):
            found.append(itself)
    except psutil.Error:
        pass
    return found


def wait_until(condition: Callable[[], Any], what: str, driver: Driver | None = None,
               timeout: float = 90, every: float = 0.02) -> Any:
    """Poll `condition` until it is truthy; fail early if the driver exits first."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if driver is not None and not driver.alive():
            raise AssertionError(f"the driver exited ({driver.process.returncode}) before {what}:\n"
                                 + driver.output()[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def journal_events(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a journal (a torn last line is left out, as the driver does)."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def journal_of(target: Target) -> Path | None:
    found = sorted(target.logs.glob("*/journal.jsonl"))
    return found[-1] if found else None


def attempt_events(target: Target, pid: int) -> list[dict[str, Any]]:
    """The journal lines written by the attempt of process `pid` (from its run_started/resumed on)."""
    path = journal_of(target)
    events = journal_events(path) if path else []
    starts = [i for i, e in enumerate(events)
              if e.get("event") in ("run_started", "run_resumed") and e.get("pid") == pid]
    return events[starts[-1]:] if starts else []


def step_started(target: Target, driver: Driver, step: str) -> bool:
    return any(e.get("event") == "step_started" and e.get("step") == step
               for e in attempt_events(target, driver.pid))


def kill(driver: Driver) -> list[psutil.Process]:
    """SIGKILL the driver alone (no handler runs); returns the children it leaves behind.

    It is stopped (SIGSTOP) first, so that no child is forked between listing them and the kill:
    a command missed so would hold the repository lock it inherits while the test goes on."""
    driver.process.send_signal(signal.SIGSTOP)
    orphans = driver.children()
    driver.process.kill()
    driver.process.wait(timeout=10)
    return orphans


def wait_gone(processes: list[psutil.Process], timeout: float = 60) -> None:
    __tracebackhide__ = True
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"still running after {timeout} s: {[p.pid for p in alive]}"


def waiting_on_a_lock(box: Sandbox, application_name: str) -> bool:
    """Whether a session of that name waits for a lock (a blocked batch or DROP)."""
    rows = box.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                   "AND wait_event_type = 'Lock'", (application_name[:63],))
    return bool(rows[0][0])


@contextmanager
def row_locked(box: Sandbox, statement: str, params: Any = None) -> Iterator[None]:
    """Hold the locks `statement` takes, in an open transaction, for the block."""
    import psycopg

    conn = psycopg.connect(box.database_url)
    try:
        conn.execute(statement, params)
        yield
    finally:
        conn.rollback()
        conn.close()


class SilentHook:
    """A TCP endpoint that accepts a request and never answers: a notification that hangs."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.received = threading.Event()
        self._clients: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self._clients.append(client)
            client.recv(65536)
            self.received.set()

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.server.close()


class FakeApi:
    """An HTTP endpoint that answers every request badly, in one of these ways:

    html     200 with an HTML page (a proxy's or a login page)
    error    500 with a JSON error body
    silent   accepts the connection and never answers
    endless  200 headers, then a chunked body that never ends (a byte every 50 ms)
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self._open.append(client)
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client: socket.socket) -> None:
        try:
            client.recv(65536)
            if self.mode == "html":
                body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
                               + str(len(body)).encode() + b"\r\n\r\n" + body)
            elif self.mode == "error":
                body = b'{"error": "Internal error", "code": "DATABASE_ERROR", "status": "error"}'
                client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                               b"application/json\r\nContent-Length: " + str(len(body)).encode()
                               + b"\r\n\r\n" + body)
            elif self.mode == "endless":
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
                while not self._stop.wait(0.05):
                    client.sendall(b"1\r\n \r\n")
            else:  # silent
                self._stop.wait()
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        for client in self._open:
            client.close()
        self.server.close()
