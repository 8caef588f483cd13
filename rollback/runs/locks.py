"""Two locks keep a second run away: a file in the repository's `.git` and a PostgreSQL advisory lock.

The lock file (`.git/rollback.lock`, so the working tree stays clean) names its holder:

    {"run_id": "20260122T101500Z-fase2", "phase": "fase2", "pid": 4242, "host": "ops-1",
     "user": "ana", "since": "2026-01-22T10:15:00.000Z"}

A lock whose holder ran on this host and whose pid is gone is stale: the next run takes it over
and says so. The advisory lock is held by one session for the whole run, so it goes away by
itself when the process dies or its connection drops; the session's `application_name` names
the run, which is how a refused run learns who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from rollback.errors import StepFailed
from rollback.runs.journal import iso, utc_now, who

LOCK_NAME = "rollback.lock"
#: the two keys of pg_advisory_lock(int, int): "rollback toolkit", "one run at a time"
ADVISORY_KEYS = (0x726F6C6C, 1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def lock_path(repo: Path) -> Path:
    git_dir = repo / ".git"
    return (git_dir if git_dir.is_dir() else repo) / LOCK_NAME


def read_holder(repo: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(lock_path(repo).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: dict[str, Any]) -> str:
    return (f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, user {holder.get('user', '?')}, since {holder.get('since', '?')})")


def holder_is_stale(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


@dataclass
class RepoLock:
    """The local lock on the repository. `acquire` returns a note when it took over a stale lock."""

    repo: Path
    run_id: str
    phase: str
    held: bool = False

    @property
    def path(self) -> Path:
        return lock_path(self.repo)

    def acquire(self) -> str | None:
        content = json.dumps({"run_id": self.run_id, "phase": self.phase, **who(),
                              "since": iso(utc_now())})
        note = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                holder = read_holder(self.repo)
                if holder is None:
                    raise StepFailed(
                        f"{self.path} exists but cannot be read: another run may be starting; "
                        "if none is, remove the file and retry") from None
                if holder.get("pid") == os.getpid() and holder.get("run_id") == self.run_id:
                    self.held = True
                    return None
                if not holder_is_stale(holder):
                    raise StepFailed(
                        f"the repository is locked by {describe_holder(holder)}: wait for it to "
                        f"finish; if that process is gone for good, remove {self.path}") from None
                self.path.unlink(missing_ok=True)
                note = f"took over a stale lock of {describe_holder(holder)}: its process is gone"
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            self.held = True
            return note
        raise StepFailed(f"could not take the lock {self.path}: another run took it first")

    def release(self) -> None:
        if not self.held:
            return
        holder = read_holder(self.repo)
        if holder and holder.get("pid") == os.getpid() and holder.get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)
        self.held = False


class DatabaseLock:
    """A session-level advisory lock on its own connection, held until `release` or process exit."""

    def __init__(self, database_url: str, run_id: str, connect_timeout: int = 10) -> None:
        self._url = database_url
        self._timeout = connect_timeout
        self.run_id = run_id
        self.conn: psycopg.Connection[Any] | None = None

    def acquire(self) -> None:
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout,
                                   application_name=f"rollback {self.run_id}"[:63])
        except psycopg.Error as exc:
            raise StepFailed(f"database lock: cannot connect ({first_line(exc)})") from None
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", ADVISORY_KEYS).fetchone()
        if not row or not row[0]:
            holder = conn.execute(
                """SELECT a.application_name, a.pid, a.client_addr::text, a.backend_start
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s
                      AND l.granted""",
                (ADVISORY_KEYS[0] & 0xFFFFFFFF, ADVISORY_KEYS[1]),
            ).fetchone()
            conn.close()
            who_holds = (f"{holder[0] or 'an unnamed session'} (backend pid {holder[1]}, "
                         f"since {holder[3]:%Y-%m-%d %H:%M:%S})") if holder else "another session"
            raise StepFailed(f"the database is locked by {who_holds}: another rollback is "
                             "changing it; wait for it to finish")
        self.conn = conn

    def held(self) -> bool:
        if self.conn is None or self.conn.closed:
            return False
        try:
            row = self.conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = "
                "pg_backend_pid() AND classid = %s AND objid = %s AND granted",
                (ADVISORY_KEYS[0] & 0xFFFFFFFF, ADVISORY_KEYS[1]),
            ).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    def release(self) -> None:
        if self.conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", ADVISORY_KEYS)
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        self.conn = None


def advisory_holder(conn: psycopg.Connection[Any]) -> str | None:
    """Who holds the run lock now, for the read-only plan; None when it is free."""
    row = conn.execute(
        """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted""",
        (ADVISORY_KEYS[0] & 0xFFFFFFFF, ADVISORY_KEYS[1]),
    ).fetchone()
    return (row[0] or "an unnamed session") if row else None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
