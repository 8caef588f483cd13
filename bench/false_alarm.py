"""False alarms and false greens of `rollback validate all`, measured on a sandbox of its own.

    python -m bench.false_alarm                      # 30 runs at 2% chaos, 30 at 10%, 20 back to back
    python -m bench.false_alarm --runs 5 --back-to-back 5          # a quick look
    python -m bench.false_alarm --shape tistis --work /tmp

The sandbox first has FASE 3 (option 2), 2 and 1 rolled back by the real drivers (`rollback
run`, as the demo does), so that `validate all` has every phase's checks to pass. Then three
series of the real command (`rollback validate all`, each a subprocess, one key for all):

    chaos 2%     the sandbox answers 2% of API requests 500 at random (`.sandbox/chaos.json`
                 {"error_rate": 0.02}), a normal background rate: no run may fail
    chaos 10%    a failing API: every run must fail, through the error-rate check
                 (test_synthetic_error_rate_is_below_limit)
    back to back no chaos, one run after another with the same key: the toolkit must pace itself
                 within the key's rate limit, and no run may fail

Prints a table and writes reports/bench/false-alarm-<UTC stamp>.json. Outside CI (it takes
several minutes: the back-to-back runs wait for the key's rate-limit window when it is spent).
Exit 0 when every figure was measured (a missed aim is printed, not a failure), 1 otherwise.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bench.common import ROOT, rollback_command
from bench.sandboxes import running

ERROR_RATE_CHECK = "test_synthetic_error_rate_is_below_limit"


def _failed_checks(report_dir: Path) -> list[str]:
    junit = report_dir / "junit.xml"
    if not junit.is_file():
        return []
    failed = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name", "?"))
    return failed


def _roll_back_every_phase(sandbox: Any, folder: Path) -> Path:
    """FASE 3 (option 2), 2 and 1 rolled back with a quick gate; returns the rollback.toml
    the validations use (the sandbox's, with logs and reports in `folder`)."""
    import subprocess

    config = folder / "rollback.toml"
    config.write_text(sandbox.state.config_file.read_text()
                      + f'\n[paths]\nlogs_dir = "{folder / "logs"}"\nreports_dir = "{folder / "reports"}"\n'
                      + "\n[gate]\npasses_required = 1\ndeadline_s = 120\ninterval_s = 1\n")
    for phase, option in (("fase3", ["--db-option", "2"]), ("fase2", []), ("fase1", [])):
        started = time.perf_counter()
        done = subprocess.run([*rollback_command(), "run", phase, "--yes", *option], cwd=ROOT,
                              env=sandbox.env(ROLLBACK_CONFIG=str(config)), capture_output=True,
                              text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise SystemExit(f"`rollback run {phase}` exited {done.returncode}: "
                             f"{(done.stderr or done.stdout)[-1500:]}")
        click.echo(f"rolled back {phase} in {time.perf_counter() - started:.1f} s")
    return config


def _series(sandbox: Any, config: Path, reports: Path, runs: int, chaos: dict[str, Any] | None,
            label: str) -> dict[str, Any]:
    import subprocess

    chaos_file = sandbox.state.chaos_file
    if chaos:
        chaos_file.write_text(json.dumps(chaos))
    else:
        chaos_file.unlink(missing_ok=True)
    results = []
    try:
        for number in range(1, runs + 1):
            folder = reports / f"{label}-{number:02d}"
            started = time.perf_counter()
            done = subprocess.run([*rollback_command(), "validate", "all", "--reports", str(folder)],
                                  cwd=ROOT, env=sandbox.env(ROLLBACK_CONFIG=str(config)),
                                  capture_output=True, text=True,
                                  timeout=600, check=False)
            seconds = time.perf_counter() - started
            dirs = sorted(folder.glob("*-all*"))
            failed = _failed_checks(dirs[-1]) if dirs else []
            results.append({"run": number, "exit_code": done.returncode, "seconds": round(seconds, 1),
                            "failed_checks": failed,
                            "paced": "rate limit:" in done.stdout})
            click.echo(f"{label} run {number}/{runs}: exit {done.returncode} in {seconds:.1f} s"
                       + (f"; failed: {', '.join(failed)}" if failed else ""))
    finally:
        chaos_file.unlink(missing_ok=True)
    exits = [r["exit_code"] for r in results]
    return {
        "chaos": chaos,
        "runs": len(results),
        "failed_runs": sum(1 for e in exits if e == 1),
        "other_exit_runs": sum(1 for e in exits if e not in (0, 1)),
        "failed_through_error_rate": sum(1 for r in results if ERROR_RATE_CHECK in r["failed_checks"]),
        "failed_other_checks": sorted({c for r in results for c in r["failed_checks"]
                                       if c != ERROR_RATE_CHECK}),
        "paced_runs": sum(1 for r in results if r["paced"]),
        "total_s": round(sum(r["seconds"] for r in results), 1),
        "details": results,
    }


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--runs", type=click.IntRange(1, 1000), default=30, show_default=True,
              help="Runs at each chaos rate.")
@click.option("--back-to-back", type=click.IntRange(0, 1000), default=20, show_default=True,
              help="Runs with no chaos, one after another with the same key.")
@click.option("--shape", type=click.Choice(["contract", "tistis"]), default="contract",
              show_default=True, help="The sandbox's shape.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp"),
              show_default=True, help="Where the work folder (sandbox, reports) is made.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=ROOT / "reports" / "bench", show_default=True, help="Where the JSON goes.")
def main(runs: int, back_to_back: int, shape: str, work: Path, out: Path) -> None:
    """Measure false alarms at 2% chaos, alarms at 10%, and back-to-back runs (see the module)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(tempfile.mkdtemp(prefix="fa-", dir=work))
    figures: dict[str, Any] = {"stamp": stamp, "shape": shape}
    signal.signal(signal.SIGTERM, _interrupt)  # stop the sandbox on `kill` too
    try:
        with running(folder / "sbx", shape=shape) as sandbox:
            config = _roll_back_every_phase(sandbox, folder)
            reports = folder / "validations"
            figures["chaos_2pct"] = _series(sandbox, config, reports, runs, {"error_rate": 0.02},
                                            "chaos2")
            figures["chaos_10pct"] = _series(sandbox, config, reports, runs, {"error_rate": 0.10},
                                             "chaos10")
            if back_to_back:
                figures["back_to_back"] = _series(sandbox, config, reports, back_to_back, None, "b2b")
    except KeyboardInterrupt:
        click.echo("interrupted: the sandbox was stopped")
        sys.exit(130)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"false-alarm-{stamp}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    two, ten = figures["chaos_2pct"], figures["chaos_10pct"]
    click.echo("")
    others = ", ".join(two["failed_other_checks"])
    click.echo(f"chaos 2%:   {two['failed_runs']} of {two['runs']} runs failed (aim 0)"
               + (f": {others}" if others else ""))
    click.echo(f"chaos 10%:  {ten['failed_runs']} of {ten['runs']} runs failed, "
               f"{ten['failed_through_error_rate']} through the error-rate check (aim all)")
    if back_to_back:
        b2b = figures["back_to_back"]
        click.echo(f"back to back: {b2b['failed_runs']} of {b2b['runs']} runs failed (aim 0), "
                   f"{b2b['paced_runs']} waited for the rate limit, {b2b['total_s']} s in all")
    click.echo(f"written: {path}")
    sys.exit(0)


if __name__ == "__main__":
    main(prog_name="python -m bench.false_alarm")
