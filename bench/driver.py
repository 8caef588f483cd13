"""The rollback driver's own FASE 2 database steps, called as the driver calls them.

`rollback run fase2` runs Preflight, Baseline, Backup, RevertCode, Build, Deploy, ConvertKeys,
Gate and Communicate. The benchmark times the two that touch `api_keys` at scale, on a `Run`
built from the sandbox's settings exactly as the driver builds it:

    Backup       pre-image of every branch key in `rollback_backup.fase2_keys_<run>`, its
                 checksum, the CSV copy, and the affected tenants (rollback/runs/steps.py)
    ConvertKeys  the batched, resumable conversion with a progress row per batch
                 (rollback/actions/branch_keys.py)

They run in a process of their own, as `rollback run` does: in the benchmark's process they
would share its interpreter lock with the read load's threads, and the load would time the
driver's Python work as API latency. The run's log and its backup CSV go into the work folder.

    python -m bench.driver WORK RUN_ID ['{"batch_size": 2000}']   # target from the environment
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ROOT, BenchError, tail


@dataclass
class DriverTiming:
    run_id: str
    backup_s: float
    convert_s: float
    rows: int
    batches: int
    retries: int
    batch_size: int
    lock_timeout_ms: int
    backup_rows: int
    batch_sizes: list[int] = field(default_factory=list)  # the adaptive batches: smallest, largest
    connections: int = 1  # the walk's connections at once ([run] walk_connections, parts of the table)
    started: float = 0.0  # time.monotonic() (system-wide on Linux) when Backup started
    ended: float = 0.0  # and when ConvertKeys returned

    @property
    def total_s(self) -> float:
        return self.backup_s + self.convert_s

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.total_s if self.total_s else 0.0


def convert_with_driver(env: Mapping[str, str], work: Path, run_id: str,
                        run_settings: Mapping[str, Any] | None = None) -> DriverTiming:
    """Run the driver's Backup then ConvertKeys steps in this process, against the target `env`
    names. `run_settings` overrides the `[run]` section (e.g. batch_size), as rollback.toml would."""
    from rollback.actions.branch_keys import ConvertKeys
    from rollback.config import load_settings
    from rollback.runs.core import Options, Run, SilentUi
    from rollback.runs.steps import Backup

    settings = load_settings(env, overrides={"paths": {"logs_dir": str(work / "logs"),
                                                       "reports_dir": str(work / "reports")},
                                             "run": dict(run_settings or {})})
    run = Run(settings, Options("fase2"), SilentUi(), run_id=run_id)
    started = time.monotonic()
    backup = Backup().run(run)
    run.facts.update(backup.facts)
    backed_up = time.monotonic()
    converted = ConvertKeys().run(run)
    ended = time.monotonic()
    run.facts.update(converted.facts)
    conversion = converted.facts.get("conversion", {})
    return DriverTiming(
        run_id=run_id,
        backup_s=backed_up - started,
        convert_s=ended - backed_up,
        rows=int(conversion.get("converted", 0)),
        batches=int(conversion.get("batches", 0)),
        retries=int(conversion.get("retries", 0)),
        batch_size=settings.run.batch_size,
        lock_timeout_ms=settings.run.lock_timeout_ms,
        backup_rows=int(run.facts.get("fase2_backup", {}).get("row_count", 0)),
        batch_sizes=list(conversion.get("batch_sizes", [])),
        connections=int(conversion.get("walk_connections", 1)),
        started=started,
        ended=ended,
    )


def convert_in_subprocess(env: Mapping[str, str], work: Path, run_id: str,
                          run_settings: Mapping[str, Any] | None = None,
                          timeout_s: float = 900) -> DriverTiming:
    """convert_with_driver() in a child process (`python -m bench.driver`)."""
    command = [sys.executable, "-m", "bench.driver", str(work), run_id, json.dumps(dict(run_settings or {}))]
    try:
        result = subprocess.run(command, cwd=ROOT, env=dict(env), capture_output=True, text=True,
                                timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the driver's conversion took over {timeout_s:g} s") from None
    if result.returncode != 0:
        raise BenchError(f"the driver's Backup/ConvertKeys failed (exit {result.returncode}): "
                         f"{tail(result.stderr or result.stdout)}")
    return DriverTiming(**json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> int:
    import os

    work, run_id = Path(argv[0]), argv[1]
    run_settings = json.loads(argv[2]) if len(argv) > 2 else {}
    timing = convert_with_driver(os.environ, work, run_id, run_settings)
    print(json.dumps(asdict(timing)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
