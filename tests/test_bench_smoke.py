"""`python -m bench --quick` end to end: every section runs on small sandboxes, the JSON and the
Markdown report hold every figure, and no process is left behind. No timing is asserted, ever:
the benchmark reports how fast things are, a slow machine must never fail a test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from bench.common import TARGET_VARIABLES
from bench.report import MACHINE, REQUIRED, lookup
from tests.conftest import ROOT


def _processes_under(folder: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(folder) in part for part in cmdline):
            found.append(" ".join(cmdline))
    return found


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(900)
def test_quick_benchmark_reports_every_figure_and_stops_every_sandbox(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    # short: each sandbox holds PostgreSQL's socket, and a socket path has at most 107 bytes
    work = Path(tempfile.mkdtemp(prefix="bench-smoke-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    try:
        result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out),
                                 "--work", str(work), "--conversion-rounds", "2"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=870)
        left = _processes_under(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert left == [], "the benchmark left processes running"

    report = json.loads((out / "latest.json").read_text())
    stamped = json.loads((out / f"bench-{report['stamp']}.json").read_text())
    assert stamped == report
    assert report["missing_figures"] == []
    for field in MACHINE:
        assert report["machine"][field], f"machine.{field} is empty"
    for section, paths in REQUIRED.items():
        assert "error" not in report[section], report[section]
        for path in paths:
            value = lookup(report[section], path)  # KeyError names a missing figure
            if value is None:  # allowed only where the report says why
                assert section == "startup" and path == "demo_s" and report["startup"]["demo_note"], path
    conversion = report["conversion"]
    assert conversion["driver"]["rows"] == conversion["branch_keys"] == conversion["floor"]["rows"]
    assert conversion["branch_keys_after"] == 0
    # two rounds: the second converted every key again, so the database was copied back first
    assert [(r["round"], r["floor_first"], r["rows"]) for r in conversion["rounds"]] == [
        (1, False, conversion["branch_keys"]), (2, True, conversion["branch_keys"])]
    assert conversion["medians"]["p99_ratio"] is not None
    assert {a["name"] for a in report["aims"]} == {
        "no request fails", "p99 under twice the baseline", "no block over one second",
        "throughput at least 0.8x the floor"}
    scale = conversion["scale"]["points"]  # --quick: its one size, from the quiet runs
    assert [p["keys_total"] for p in scale] == [conversion["keys_total"]] and scale[0]["ratio"]
    assert report["verdict"]["runs"] == 1 and len(report["verdict"]["validate_runs_s"]) == 1

    markdown = (out / "latest.md").read_text()
    assert markdown.startswith(f"# Benchmark {report['stamp']}")
    for heading in ("1. Time to verdict", "2. FASE 2 conversion", "3. Monitor cost", "4. Start-up"):
        assert heading in markdown
    assert "rollback benchmark" in result.stdout  # the table's title
