"""Time to verdict: `rollback validate fase2` (the real command, a subprocess) against a sandbox,
next to bench/floor_fase2.py making the same requests and queries with no framework.

The sandbox is the state right after the database step of a FASE 2 rollback: its branch keys
were converted by the driver's own Backup and ConvertKeys steps, so a healthy verdict is the
expected answer (both print it). Every run gets a tenant-wide key of its own (see bench/keys.py),
so that no run is slowed or failed by the rate limit the previous runs spent. One warm-up of
each comes first and is not counted; then validate and floor alternate, so that both see the
same machine.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BenchError, Log, rollback_command, tail
from bench.driver import convert_in_subprocess
from bench.keys import mint_tenant_keys
from bench.sandboxes import Sandbox
from bench.stats import median, ratio, rounded

FLOOR_SCRIPT = Path(__file__).resolve().parent / "floor_fase2.py"
RUN_TIMEOUT_S = 180


@dataclass
class Timed:
    seconds: float
    exit_code: int
    summary: str


@dataclass
class VerdictResult:
    runs: int
    validate: list[Timed] = field(default_factory=list)
    floor: list[Timed] = field(default_factory=list)
    warmup: dict[str, float] = field(default_factory=dict)
    keys_converted_first: int = 0

    def figures(self) -> dict[str, Any]:
        validate_s = [t.seconds for t in self.validate]
        floor_s = [t.seconds for t in self.floor]
        v, f = median(validate_s), median(floor_s)
        return {
            "runs": self.runs,
            "validate_median_s": rounded(v),
            "floor_median_s": rounded(f),
            "ratio": rounded(ratio(v, f), 2),
            "validate_runs_s": [rounded(s) for s in validate_s],
            "floor_runs_s": [rounded(s) for s in floor_s],
            "validate_exit_codes": [t.exit_code for t in self.validate],
            "floor_exit_codes": [t.exit_code for t in self.floor],
            "validate_verdict": self.validate[-1].summary if self.validate else None,
            "floor_verdict": self.floor[-1].summary if self.floor else None,
            "warmup_s": {k: rounded(s) for k, s in self.warmup.items()},
            "branch_keys_converted_before": self.keys_converted_first,
            "command": "rollback validate fase2",
            "floor_command": f"python {FLOOR_SCRIPT.relative_to(FLOOR_SCRIPT.parent.parent)}",
        }


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> Timed:
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(command[-2:])}` took over {RUN_TIMEOUT_S} s") from None
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise BenchError(f"`{' '.join(command)}` exited {result.returncode}: "
                         f"{tail(result.stderr or result.stdout)}")
    lines = [line for line in result.stdout.strip().splitlines() if line.startswith("fase2")]
    summary = lines[-1] if lines else tail(result.stdout, 1)
    return Timed(elapsed, result.returncode, summary.split("; report ")[0])


def measure(sbx: Sandbox, work: Path, runs: int, log: Log) -> VerdictResult:
    work.mkdir(parents=True, exist_ok=True)
    result = VerdictResult(runs=runs)
    timing = convert_in_subprocess(sbx.env(), work, "bench-verdict")
    result.keys_converted_first = timing.rows
    keys = mint_tenant_keys(sbx.database_url, sbx.state.tenant_id, runs + 1, random.Random(7))
    validate = [*rollback_command(), "validate", "fase2", "--reports", str(work / "reports")]
    floor = [sys.executable, str(FLOOR_SCRIPT)]
    for i, key in enumerate(keys):
        env = sbx.env(TEST_API_KEY=key)
        v = _timed(validate, env, work)
        f = _timed(floor, env, work)
        if i == 0:
            result.warmup = {"validate": v.seconds, "floor": f.seconds}
            log(f"  warm-up: validate {v.seconds:.2f} s, floor {f.seconds:.2f} s")
            continue
        result.validate.append(v)
        result.floor.append(f)
        log(f"  run {i}/{runs}: validate {v.seconds:.2f} s (exit {v.exit_code}), "
            f"floor {f.seconds:.2f} s (exit {f.exit_code})")
    return result

