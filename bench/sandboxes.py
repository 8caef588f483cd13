"""Sandboxes of the benchmark's own, started with the real `rollback sandbox up` (timed: that is
the start-up figure) and always stopped again, whatever happens in between."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, clean_env, rollback_command, tail
from sandbox import control
from sandbox.postgres import EmbeddedPostgres


@dataclass
class Sandbox:
    """A running sandbox: its state (ports, database URL, known keys) and how long `up` took."""

    root: Path
    state: control.State
    up_s: float
    keys: int | None

    @property
    def database_url(self) -> str:
        return self.state.database_url

    @property
    def api_base_url(self) -> str:
        return self.state.api_base_url

    def admin_url(self, database: str = "postgres") -> str:
        return self.state.database_url.rsplit("/", 1)[0] + "/" + database

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment pointing at this sandbox, as `eval "$(rollback sandbox env)"` does."""
        env = clean_env()
        env.update(control.env_values(self.root, env.get("PATH", "")))
        env.update(extra)
        return env


def stop(root: Path) -> None:
    """Stop what a sandbox folder runs: the API, then PostgreSQL (also when `up` died half-way)."""
    with contextlib.suppress(Exception):
        control.down(root)
    data = root / "postgres" / "data"
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(Exception):
            EmbeddedPostgres(root / "postgres", 0, "").stop()


@contextlib.contextmanager
def running(root: Path, *, keys: int | None = None, timeout_s: float = 300,
            shape: str = "contract", tenants: int | None = None) -> Iterator[Sandbox]:
    """`rollback sandbox up --dir root [--keys N] [--tenants N]`, timed; stopped on the way out."""
    root.parent.mkdir(parents=True, exist_ok=True)
    # the benchmarks and their plain-script floors are written for the contract shape
    command = [*rollback_command(), "sandbox", "up", "--shape", shape, "--dir", str(root)]
    if keys:
        command += ["--keys", str(keys)]
    if tenants:
        command += ["--tenants", str(tenants)]
    try:
        started = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=root.parent, env=clean_env(), capture_output=True,
                                    text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchError(f"`rollback sandbox up --dir {root}` took over {timeout_s:g} s") from None
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise BenchError(f"`rollback sandbox up --dir {root}` exited {result.returncode}: "
                             f"{tail(result.stderr or result.stdout)}")
        yield Sandbox(root, control.require(root), elapsed, keys)
    finally:
        stop(root)
