"""Benchmark of the continuous monitor's own cost: CPU share, memory, and schedule drift.

Runs `rollback health --continuous --interval 1 --max-cycles 300 --plain` as a subprocess
against the target in the environment (`eval "$(rollback sandbox env)"`), or against a sandbox
of its own when no API_BASE_URL is set, samples the process with psutil once per interval,
and prints:

    CPU      the monitor's CPU time over wall time (share of one core), and per cycle
    memory   RSS after warm-up and at the end, and its slope over the cycles (must stay ~flat)
    drift    how late each cycle started against its slot, and missed slots

    python bench/monitor.py                    # 300 cycles of 1 s (about 5 minutes)
    python bench/monitor.py --cycles 60        # a quick look

Not run in CI. Exit 1 when memory grows by more than --max-growth-kib per 100 cycles.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def target_environment(work: Path) -> Iterator[dict[str, str]]:
    """The caller's target if the environment names one, else a sandbox of our own."""
    if os.environ.get("API_BASE_URL") and os.environ.get("TEST_API_KEY"):
        yield dict(os.environ)
        return
    from sandbox import control

    print("no API_BASE_URL/TEST_API_KEY: starting a sandbox of its own ...", flush=True)
    root = work / "sandbox"
    control.up(root, shape="contract", log=lambda line: None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACK_")}
    env.update(control.env_values(root))
    try:
        yield env
    finally:
        control.down(root)


def count_cycles(history: Path) -> int:
    with history.open() as handle:
        return sum(1 for line in handle if '"kind":"cycle"' in line)


def slope_per_100(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of value over cycle number, per 100 cycles."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=20, help="cycles before memory is judged")
    parser.add_argument("--max-growth-kib", type=float, default=512.0,
                        help="RSS growth per 100 cycles after warm-up that fails the run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rollback-bench-") as tmp:
        work = Path(tmp)
        with target_environment(work) as env:
            env.pop("ROLLBACK_NOTIFY_URLS", None)
            out = (work / "monitor.out").open("w")
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "rollback", "health", "--continuous", "--plain",
                 "--interval", f"{args.interval:g}", "--max-cycles", str(args.cycles)],
                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
            me = psutil.Process(proc.pid)
            samples: list[tuple[float, int, float, float]] = []  # (t, cycles, cpu s, rss KiB)
            history = None
            while proc.poll() is None:
                time.sleep(args.interval)
                with contextlib.suppress(psutil.Error):
                    cpu = me.cpu_times()
                    rss = me.memory_info().rss / 1024
                    files = list((work / "logs").glob("health-history-*.jsonl"))
                    history = files[0] if files else None
                    cycles = count_cycles(history) if history else 0
                    if rss > 0 and me.status() != psutil.STATUS_ZOMBIE:  # an exited child reads 0
                        samples.append((time.monotonic() - started, cycles, cpu.user + cpu.system, rss))
            wall = time.monotonic() - started
            out.close()
            if proc.returncode not in (0, 1):
                print((work / "monitor.out").read_text()[-3000:])
                print(f"monitor exited {proc.returncode}")
                return 2
            records = []
            for path in sorted((work / "logs").glob("health-history-*.jsonl")):
                records += [json.loads(line) for line in path.open() if '"kind":"cycle"' in line]

    lags = [r["lag_ms"] for r in records]
    durations = [r["duration_ms"] for r in records]
    slots = [r["slot"] for r in records]
    missed = sum(b - a - 1 for a, b in itertools.pairwise(slots))
    warm = [s for s in samples if s[1] >= args.warmup]
    first, last = (warm[0], warm[-1]) if warm else (samples[0], samples[-1])
    steady_cpu = (last[2] - first[2]) / max(last[0] - first[0], 1e-9)
    per_cycle_ms = (last[2] - first[2]) / max(last[1] - first[1], 1) * 1000
    growth = slope_per_100([(s[1], s[3]) for s in warm])
    verdict = growth <= args.max_growth_kib

    print(f"monitor: {len(records)} cycles of {args.interval:g} s in {wall:.0f} s wall "
          f"({missed} slots missed)")
    print(f"CPU:     {samples[-1][2]:.2f} s in total (with start-up); steady state "
          f"{steady_cpu:.1%} of one core, {per_cycle_ms:.1f} ms CPU per cycle")
    quarters = [next((s for s in samples if s[1] >= len(records) * q / 4), samples[-1]) for q in (1, 2, 3, 4)]
    print(f"memory:  RSS {first[3] / 1024:.1f} MiB after {first[1]} cycles, then "
          + ", ".join(f"{s[3] / 1024:.1f} MiB at {s[1]}" for s in quarters)
          + f"; slope {growth:+.0f} KiB per 100 cycles ({'flat' if verdict else 'GROWING'}, "
          f"limit {args.max_growth_kib:g})")
    print(f"drift:   start lag p50 {pct(lags, 50):.1f} ms, p95 {pct(lags, 95):.1f} ms, "
          f"max {max(lags, default=0):.1f} ms; cycle duration p50 {pct(durations, 50):.0f} ms, "
          f"p95 {pct(durations, 95):.0f} ms, max {max(durations, default=0):.0f} ms")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
