"""Helpers of the driver tests: a sandbox seen through a rollback.toml of the test's own, what an
operator can observe of it, and the CLI run on a pseudo-terminal as an operator types into it.

Shared by the test modules that drive `rollback run / restore / health` (no test module imports
another's helpers: they live here).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from rollback.runs.journal import RunRecord, all_runs
from tests.conftest import ROOT, Sandbox

FASE3_OBJECTS = (
    "idx_leads_branch_active_statuses", "idx_leads_branch_search",
    "idx_appointments_branch_scheduled", "idx_appointments_branch_scheduled_desc",
    "idx_staff_branches_branch_id", "idx_staff_branches_staff_id",
    "idx_leads_tenant_branch_created", "idx_appointments_tenant_branch_scheduled",
    "idx_leads_branch_covering", "idx_appointments_branch_covering",
    "idx_api_keys_hash_active", "idx_api_keys_branch_scope", "vw_fase3_index_usage",
    "validate_fase3_indexes", "get_low_stock_items", "get_branch_stats_summary",
    "refresh_branch_performance_metrics", "mv_branch_performance_metrics", "vw_cache_freshness",
)
#: api_keys without the columns every request bumps (last use, daily count)
KEYS_CHECKSUM = """
    SELECT encode(sha256(convert_to(string_agg(to_jsonb(k)::text, E'\\n' ORDER BY k.id), 'UTF8')), 'hex')
      FROM (SELECT id, tenant_id, created_by, name, description, key_hash, key_hint, key_prefix,
                   environment, scopes, rate_limit_rpm, rate_limit_daily, ip_whitelist,
                   expires_at, is_active, revoked_at, revoked_by, revoke_reason, metadata,
                   created_at, updated_at, branch_id, scope_type, branch_context
              FROM api_keys) k
"""


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Sections of flat values as TOML (strings and paths quoted, booleans as TOML spells them,
    the rest as Python writes them)."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(str(v) if isinstance(v, str | Path) else v)}"
                  if isinstance(v, str | Path | bool) else f"{key} = {v}" for key, v in values.items()]
        lines.append("")
    return "\n".join(lines)


@dataclass
class Target:
    """A sandbox seen through a rollback.toml of this test's own."""

    box: Sandbox
    config: Path
    logs: Path
    reports: Path

    def env(self, **extra: str) -> dict[str, str]:
        return self.box.env(ROLLBACK_CONFIG=str(self.config), **extra)

    def command(self, *args: str) -> list[str]:
        """`rollback ARGS`, as `python -m rollback` (the console script's twin)."""
        return [sys.executable, "-m", "rollback", *args]

    def rollback(self, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), cwd=ROOT, env=self.env(**env), text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False)

    def runs(self) -> list[RunRecord]:
        return all_runs(self.logs)

    def only_run(self, phase: str) -> RunRecord:
        found = [r for r in self.runs() if r.phase == phase]
        assert len(found) == 1, [r.run_id for r in found]
        return found[0]


def make_target(box: Sandbox, folder: Path, **sections: dict[str, Any]) -> Target:
    """The sandbox's rollback.toml, with logs and reports under `folder`, a fast gate (one green
    pass) and `sections` merged over it."""
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, dict[str, Any]] = tomllib.loads(box.config_file.read_text())
    data.setdefault("target", {}).update(sections.pop("target", {}))
    data["paths"] = {"logs_dir": folder / "logs", "reports_dir": folder / "reports"}
    data["gate"] = {"passes_required": 1, "deadline_s": 60, "interval_s": 0,
                    **sections.pop("gate", {})}
    data["run"] = {"retry_backoff_s": 0.1, **sections.pop("run", {})}
    data.update(sections)
    config = folder / "rollback.toml"
    config.write_text(to_toml(data))
    return Target(box, config, folder / "logs", folder / "reports")


# --- what the target looks like ------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@dataclass(frozen=True)
class State:
    head: str
    branch: str
    dirty: str
    rollback_branches: str
    served: str
    branch_keys: int
    keys_checksum: str
    fase3_objects: int


def state_of(box: Sandbox) -> State:
    version = httpx.get(f"{box.api_base_url}/health", timeout=5).json()["version"]
    branch_keys, checksum = box.sql("SELECT (SELECT count(*) FROM api_keys WHERE scope_type = "
                                    "'branch'), (" + KEYS_CHECKSUM + ")")[0]
    return State(git(box.repo, "rev-parse", "HEAD"), git(box.repo, "branch", "--show-current"),
                 git(box.repo, "status", "--porcelain"),
                 git(box.repo, "branch", "--list", "rollback/*"), version, int(branch_keys),
                 str(checksum), fase3_objects_present(box))


def fase3_objects_present(box: Sandbox) -> int:
    rows = box.sql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE n.nspname = 'public' AND c.relname = ANY(%(n)s)", {"n": list(FASE3_OBJECTS)})
    funcs = box.sql("SELECT count(*) FROM pg_proc WHERE proname = ANY(%(n)s)", {"n": list(FASE3_OBJECTS)})
    return int(rows[0][0]) + int(funcs[0][0])


# --- an operator at a terminal -------------------------------------------------------------------


class TerminalRun(NamedTuple):
    code: int
    output: str
    #: wall time from the start of the process to its exit
    wall_s: float


def run_in_terminal(target: Target, args: list[str], answer: str, *, wait_s: float = 0.0,
                    timeout: float = 60) -> TerminalRun:
    """Run the CLI with a pseudo-terminal as stdin, stdout and stderr, and type `answer` `wait_s`
    seconds after its confirmation prompt ("... to proceed") shows."""
    master, slave = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(target.command(*args), cwd=ROOT, env=target.env(), stdin=slave,
                               stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    output, asked_at, sent = b"", None, False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if asked_at is not None and not sent and time.monotonic() - asked_at >= wait_s:
                os.write(master, answer.encode() + b"\r")
                sent = True
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
                if asked_at is None and b"to proceed" in output:
                    asked_at = time.monotonic()
            elif process.poll() is not None:
                break
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        os.close(master)
    return TerminalRun(code, output.decode(errors="replace"), time.monotonic() - started)
