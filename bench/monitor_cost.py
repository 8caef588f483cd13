"""The monitor's own cost, measured by bench/monitor.py (its owner's benchmark), against a sandbox
of ours: CPU share and resident memory of `rollback health --continuous --interval 1` over N
cycles, and the drift of cycle start times.

bench/monitor.py offers its command line only (figures printed, not returned), so it runs as a
subprocess in a session of its own (stopped as a group if we are interrupted) and its four
summary lines are read back into figures, one pattern per figure. A figure it no longer prints
in that form becomes a missing figure with a note, never a crash.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import BenchError, Log, tail
from bench.sandboxes import Sandbox

SCRIPT = Path(__file__).resolve().parent / "monitor.py"
N = r"([-+]?\d+(?:\.\d+)?)"

#: one pattern per figure, searched in bench/monitor.py's summary lines; the last match counts
#: (its memory line lists RSS at several points: the last is the end of the run)
PATTERNS: dict[str, str] = {
    "cycles": rf"monitor: {N} cycles",
    "wall_s": rf"in {N} s wall",
    "missed_slots": rf"\({N} slots missed\)",
    "cpu_total_s": rf"CPU:\s+{N} s in total",
    "cpu_share_percent": rf"steady state {N}% of one core",
    "cpu_ms_per_cycle": rf"{N} ms CPU per cycle",
    "rss_mib_after_warmup": rf"RSS {N} MiB after",
    "rss_mib_at_end": rf"{N} MiB (?:at|after) \d+(?:;|$)",
    "rss_slope_kib_per_100_cycles": rf"slope {N} KiB per 100 cycles",
    "start_lag_p50_ms": rf"start lag p50 {N} ms",
    "start_lag_p95_ms": rf"start lag p50 [^,]*, p95 {N} ms",
    "start_lag_max_ms": rf"start lag p50 [^;]*max {N} ms",
    "cycle_p50_ms": rf"cycle duration p50 {N} ms",
    "cycle_p95_ms": rf"cycle duration p50 [^,]*, p95 {N} ms",
    "cycle_max_ms": rf"cycle duration p50 [^;]*max {N} ms",
}
SUMMARY = ("monitor", "CPU", "memory", "drift")
#: fewer cycles than this give no memory verdict worth the name (bench/monitor.py warms up 20)
MEMORY_CYCLES = 60


def parse(output: str) -> tuple[dict[str, float | None], list[str]]:
    """Figures from bench/monitor.py's summary, and a note naming those it did not print."""
    figures: dict[str, float | None] = {}
    lines = [line for line in output.splitlines() if line.split(":")[0] in SUMMARY]
    for name, pattern in PATTERNS.items():
        found = [m.group(1) for line in lines for m in re.finditer(pattern, line)]
        figures[name] = float(found[-1]) if found else None
    missing = [name for name, value in figures.items() if value is None]
    notes = [f"bench/monitor.py's summary did not show {', '.join(missing)} in the expected form"] \
        if missing else []
    return figures, notes


def measure(sbx: Sandbox, work: Path, cycles: int, log: Log) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    warmup = 20 if cycles >= 60 else max(1, cycles // 3)
    command = [sys.executable, str(SCRIPT), "--cycles", str(cycles), "--interval", "1",
               "--warmup", str(warmup)]
    log(f"  python bench/monitor.py --cycles {cycles} (about {cycles} s) ...")
    process = subprocess.Popen(command, cwd=work, env=sbx.env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=cycles * 1.0 + 180)
    except subprocess.TimeoutExpired:
        raise BenchError(f"bench/monitor.py did not finish {cycles} cycles in {cycles + 180} s") from None
    finally:
        if process.poll() is None:  # interrupted or timed out: the monitor goes with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    if process.returncode not in (0, 1):
        raise BenchError(f"bench/monitor.py exited {process.returncode}: {tail(output)}")
    figures, notes = parse(output)
    if cycles < MEMORY_CYCLES:
        verdict = f"too few cycles ({cycles}) to judge memory growth"
    else:
        verdict = "memory flat" if process.returncode == 0 else "memory GROWING (bench/monitor.py exit 1)"
    return {**figures, "exit_code": process.returncode, "memory_verdict": verdict,
            "summary": [line for line in output.splitlines() if line.split(":")[0] in SUMMARY],
            "command": f"rollback health --continuous --plain --interval 1 --max-cycles {cycles}",
            "notes": notes}
