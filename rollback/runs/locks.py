"""Two locks keep a second run away: a file in the repository's `.git` and a PostgreSQL advisory lock.

The lock file (`.git/rollback.lock`, so the working tree stays clean) names its holder and
its target (the run id ends with the target's id too):

    {"run_id": "20260122T101500Z-fase2-3f9a1c0b", "phase": "fase2", "target": "3f9a1c0b",
     "pid": 4242, "host": "ops-1", "user": "ana", "since": "2026-01-22T10:15:00.000Z"}

Both locks are the target's own: the file lives in the target's repository and the advisory
lock in its database (PostgreSQL scopes advisory locks to one database), so a run of one target
never waits for another's.

The file is locked with flock(2): the kernel lets go of it when the holder dies, so a file left
by a killed run is stale and the next run takes it over and says so (a build or deploy command
the dead run started keeps it locked until that command ends too). The advisory lock is held
by one session for the whole run, so it goes away by itself when the process dies or its
connection drops; the session's `application_name` names the run, which is how a refused run
learns who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
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


def is_held(repo: Path) -> bool:
    """Whether a live process holds the repository lock now (not just a file left behind)."""
    try:
        fd = os.open(lock_path(repo), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@dataclass
class RepoLock:
    """The local lock on the repository. `acquire` returns a note when it took over a stale lock.

    The lock is an flock(2) on the file, which the kernel drops when the last process holding it
    is gone (a SIGKILL, a crash, a closed laptop lid are all the same): a file left behind is
    taken over, never a lock still held, and two takers cannot both win. Commands the run starts
    (build, deploy) may inherit `fd`: a killed run's lock is then kept until they end too.
    """

    repo: Path
    run_id: str
    phase: str
    held: bool = False
    fd: int | None = None
    target: str | None = None

    @property
    def path(self) -> Path:
        return lock_path(self.repo)

    def acquire(self) -> str | None:
        content = json.dumps({"run_id": self.run_id, "phase": self.phase, "target": self.target,
                              **who(), "since": iso(utc_now())})
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._wait_for_holder()
                if holder and holder.get("pid") == os.getpid() and holder.get("run_id") == self.run_id:
                    self.held = True  # this process holds it already, through another object
                    return None
                raise StepFailed(self._refusal(holder)) from None
            if not _same_file(fd, self.path):  # its holder released (removed) it meanwhile
                os.close(fd)
                continue
            left = _read_holder_fd(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, content.encode("utf-8"), 0)
            os.fsync(fd)
            self.fd, self.held = fd, True
            if left:
                return f"took over a stale lock of {describe_holder(left)}: its process is gone"
            return None
        raise StepFailed(f"could not take the lock {self.path}: other runs keep taking it")

    def _wait_for_holder(self, patience_s: float = 1.0) -> dict[str, Any] | None:
        """The holder, as its file names it; a run that has just taken the lock writes its name
        a moment later (the lock comes first, so that two runs never both write it)."""
        deadline = time.monotonic() + patience_s
        while (holder := read_holder(self.repo)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return holder

    def _refusal(self, holder: dict[str, Any] | None) -> str:
        if holder is None:
            return (f"the repository is locked by a run that is starting ({self.path} is not "
                    "written yet): wait for it to finish")
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            return (f"the repository is locked by {describe_holder(holder)}: its process is gone "
                    "but a command it started (a build or a deploy) still runs and holds the lock; "
                    "wait for it to end, then run again to take the lock over")
        return (f"the repository is locked by {describe_holder(holder)}: wait for it to finish; "
                f"if that process is gone for good, remove {self.path}")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)  # while still locked: no one can be half-way in
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_holder_fd(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class DatabaseLock:
    """A session-level advisory lock on its own connection, held until `release` or process exit."""

    def __init__(self, database_url: str, run_id: str, connect_timeout: int = 10) -> None:
        self._url = database_url
        self._timeout = connect_timeout
        self.run_id = run_id
        self.conn: psycopg.Connection[Any] | None = None

    def acquire(self) -> None:
        try:
            # the name says who holds the lock to a run it refuses (63 characters at most)
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout,
                                   application_name=(f"rollback {self.run_id} pid {os.getpid()} "
                                                     f"on {socket.gethostname()}")[:63])
        except psycopg.Error as exc:
            raise StepFailed(f"database lock: cannot connect ({first_line(exc)})") from None
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", ADVISORY_KEYS).fetchone()
        if not row or not row[0]:
            holder = conn.execute(
                """SELECT a.application_name, a.pid, a.client_addr::text, a.backend_start
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s
                      AND l.granted AND l.database = (SELECT oid FROM pg_database
                                                       WHERE datname = current_database())""",
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
            WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        (ADVISORY_KEYS[0] & 0xFFFFFFFF, ADVISORY_KEYS[1]),
    ).fetchone()
    return (row[0] or "an unnamed session") if row else None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
