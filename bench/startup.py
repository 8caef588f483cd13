"""Start-up: wall time of `rollback sandbox up` (default size) and of `rollback demo`.

The sandboxes the other sections start are timed as they come up (bench/sandboxes.py); this
section reports those and starts one of its own only when no other section did. `rollback demo`
is timed when the command exists (in a scratch folder, with `--dir` there; whatever sandbox it
leaves in that folder is stopped afterwards), and reported as skipped with a note when it does
not.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import Log, clean_env, rollback_command, tail
from bench.sandboxes import running, stop
from bench.stats import median, rounded

DEMO_TIMEOUT_S = 300


def demo_exists() -> bool:
    result = subprocess.run([*rollback_command(), "demo", "--help"], capture_output=True, text=True,
                            env=clean_env(), timeout=60)
    return result.returncode == 0


def time_demo(work: Path, log: Log) -> dict[str, Any]:
    if not demo_exists():
        return {"demo_s": None, "demo_note": "skipped: `rollback demo` does not exist yet "
                                              "(`rollback demo --help` fails)"}
    folder = work / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    log("  rollback demo ...")
    started = time.perf_counter()
    try:
        result = subprocess.run([*rollback_command(), "demo", "--dir", str(folder / ".sandbox-demo")],
                                cwd=folder, env=clean_env(),
                                capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"demo_s": None, "demo_note": f"`rollback demo` took over {DEMO_TIMEOUT_S} s: stopped"}
    finally:
        for state in folder.rglob("sandbox.json"):
            stop(state.parent)
    elapsed = time.perf_counter() - started
    note = "" if result.returncode == 0 else \
        f"`rollback demo` exited {result.returncode}: {tail(result.stderr or result.stdout, 1)[:300]}"
    return {"demo_s": round(elapsed, 2), "demo_exit_code": result.returncode, "demo_note": note}


def measure(samples: list[float], keyed: dict[str, float], work: Path, log: Log) -> dict[str, Any]:
    """`samples`: default-size `sandbox up` times the other sections measured (may be empty)."""
    samples = list(samples)
    if not samples:
        with running(work / "sbx") as sbx:
            samples.append(sbx.up_s)
    return {
        "sandbox_up_s": rounded(median(samples), 2),
        "sandbox_up_samples_s": [round(s, 2) for s in samples],
        "sandbox_up_with_keys_s": {k: round(v, 2) for k, v in keyed.items()},
        **time_demo(work, log),
    }
