"""Time to a verdict when the target is broken: `rollback validate all` and `rollback health`
(once) against a sandbox with one fault at a time, each the real command in a subprocess.

    api_down        API_BASE_URL points at a port nobody listens on
    db_down         the sandbox's PostgreSQL is stopped (the API then fails or hangs on its
                    database), started again afterwards
    api_500         every API request answered 500, /health reporting a database error
                    (the sandbox's chaos switch: {"error_rate": 1.0, "health": "db_error"})
    endpoint_hung   one list endpoint never answers (chaos latency of 10 minutes on it)

Each case records the wall time, the exit code (1 expected) and whether `rollback health`
still wrote its report. The aim is a verdict within 15 s (issue 13); with the default
request_timeout_s (10 s) a hung path costs one timeout for the first check that meets it (two
when the health path does not answer meanwhile either), so that case is measured with the
default and with request_timeout_s = 5.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Log, rollback_command
from bench.sandboxes import Sandbox

AIM_S = 15.0
CASES = ("api_down", "db_down", "api_500", "endpoint_hung", "endpoint_hung_timeout_5s")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(args: list[str], env: dict[str, str], reports: Path) -> dict[str, Any]:
    reports.mkdir(parents=True, exist_ok=True)
    before = set(reports.rglob("report.html"))
    started = time.perf_counter()
    done = subprocess.run([*rollback_command(), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "exit_code": done.returncode,
            "report_written": bool(set(reports.rglob("report.html")) - before),
            "thread_dumps": "Timeout >" in done.stdout or "Stack of" in done.stdout}


def measure(sbx: Sandbox, work: Path, log: Log) -> dict[str, Any]:
    config = work / "rollback.toml"
    work.mkdir(parents=True, exist_ok=True)
    base = sbx.state.config_file.read_text() + f'\n[paths]\nreports_dir = "{work / "reports"}"\n' \
        f'logs_dir = "{work / "logs"}"\n'
    config.write_text(base)
    quick = work / "rollback-timeout-5.toml"
    quick.write_text(sbx.state.config_file.read_text().replace(
        "[target]\n", "[target]\nrequest_timeout_s = 5\n", 1)
        + f'\n[paths]\nreports_dir = "{work / "reports"}"\nlogs_dir = "{work / "logs"}"\n')
    chaos = sbx.state.chaos_file
    leads = "/v1/leads"
    results: dict[str, Any] = {}
    for case in CASES:
        env = sbx.env(ROLLBACK_CONFIG=str(quick if case.endswith("5s") else config))
        server = sbx.state.postgres()
        try:
            if case == "api_down":
                env["API_BASE_URL"] = f"http://127.0.0.1:{_closed_port()}"
            elif case == "db_down" and server is not None:
                server.stop()
            elif case == "api_500":
                chaos.write_text(json.dumps({"error_rate": 1.0, "health": "db_error"}))
            elif case.startswith("endpoint_hung"):
                chaos.write_text(json.dumps({"latency_ms": 600_000, "paths": [leads]}))
            figures = {
                "validate_all": _timed(["validate", "all", "--reports", str(work / case / "v")], env,
                                       work / case / "v"),
                "health_once": _timed(["health"], env, work / "reports"),
            }
        finally:
            chaos.unlink(missing_ok=True)
            if case == "db_down" and server is not None:
                server.start()
        results[case] = figures
        log(f"  {case}: validate all {figures['validate_all']['seconds']} s "
            f"(exit {figures['validate_all']['exit_code']}), health {figures['health_once']['seconds']} s "
            f"(exit {figures['health_once']['exit_code']}, report "
            f"{'written' if figures['health_once']['report_written'] else 'MISSING'})")
    results["aim_s"] = AIM_S
    results["met"] = {case: all(f["seconds"] <= AIM_S and f["exit_code"] == 1
                                for f in results[case].values()) for case in CASES}
    return results
