"""Terminal output that copies well when it is not a terminal (a log, a pipe, CI): the demo's
closing summary keeps every path whole, and `rollback validate` / `rollback health` give one
line per failing check with its whole reason (pytest's own summary cuts it to the width)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from rollback.demo import PhaseResult, print_closing
from tests.conftest import Sandbox, run_cli
from tests.validations import put_back

DEEP = "/var/lib/ci/builds/a-long-project-name/run-20260122T101500Z/reports/20260122T101500Z-fase3"


def results() -> list[PhaseResult]:
    return [PhaseResult(f"fase{n}", f"20260122T10150{n}Z-fase{n}", 12.5, "passed",
                        f"{DEEP}-{n}/gate/1/report.html",
                        [f"{DEEP}-{n}/communication/status_page.md",
                         f"{DEEP}-{n}/communication/postmortem.md"]) for n in (3, 2, 1)]


def test_the_demo_summary_off_a_terminal_is_one_line_per_phase_with_whole_paths() -> None:
    sink = io.StringIO()
    print_closing(Console(file=sink, width=80), results(), 41.2, "tistis")
    lines = sink.getvalue().splitlines()
    assert lines[0] == "rollback demo: 3 phases rolled back in 41 s (tistis shape)"
    assert len(lines) == 4
    for n, line in zip((3, 2, 1), lines[1:], strict=True):
        assert line.startswith(f"  fase{n}: 12.5 s, gate passed; ")
        assert f"report {DEEP}-{n}/gate/1/report.html;" in line
        assert f"communication: 2 files in {DEEP}-{n}/communication" in line


def test_the_demo_summary_on_a_terminal_is_a_table() -> None:
    sink = io.StringIO()
    print_closing(Console(file=sink, width=120, force_terminal=True, color_system=None), results(),
                  41.2, "tistis")
    text = sink.getvalue()
    assert "┃ phase" in text and "communication" in text


def test_validate_and_health_off_a_terminal_print_each_failing_check_whole_on_one_line(
    sandbox: Sandbox, tmp_path: Path,
) -> None:
    try:
        with sandbox.chaos(error_rate=1.0, paths=[sandbox.profile.leads_path]):
            validate = run_cli("validate", "health", "--reports", str(tmp_path), env=sandbox.env(),
                               cwd=tmp_path)
            health = run_cli("health", env=sandbox.env(), cwd=tmp_path)
    finally:
        put_back(sandbox)
    assert validate.returncode == 1 and health.returncode == 1
    for output in (validate.stderr, health.stdout):
        fails = [line for line in output.splitlines() if line.startswith("FAIL ")]
        assert fails, output
        error_rate = next(line for line in fails if "test_synthetic_error_rate_is_below_limit" in line)
        assert re.match(r"FAIL checks/test_error_rate\.py::test_synthetic_error_rate_is_below_limit: "
                        r"error rate [\d.]+% >= limit 5\.0% \(.*\); first: GET /v1/leads -> "
                        r"(500 \{.*\}|NotSent .*)$",
                        error_rate), error_rate
