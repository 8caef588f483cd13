"""`rollback demo`: the newcomer's first command, end to end on its own embedded sandbox."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import run_cli


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(300)
def test_demo_rolls_back_all_three_phases_green_and_stops(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = run_cli("demo", "--dir", str(folder), cwd=tmp_path, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    table = result.stdout[result.stdout.index("rollback demo: 3 phases rolled back"):]
    for phase in ("fase3 (option 2)", "fase2", "fase1"):
        assert phase in table
    assert table.count("passed") == 3, table
    assert "What `rollback run fase3 --db-option 2` would do" in result.stdout

    journals = sorted((folder / "logs").glob("*/journal.jsonl"))
    # run ids are <UTC stamp>-<phase>-<target id>
    assert [p.parent.name.split("-")[1] for p in journals] == ["fase3", "fase2", "fase1"]
    for journal in journals:
        events = [json.loads(line)["event"] for line in journal.read_text().splitlines()]
        assert events[-1] == "run_finished"
    reports = list((tmp_path / "reports").glob("*-fase*-*/gate/*/report.html"))
    assert len(reports) == 3
    assert list((tmp_path / "reports").glob("*-fase2-*/communication/*")), "FASE 2 communication written"

    def left() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline", "status"])
                if any(str(folder) in part for part in p.info["cmdline"] or [])
                and p.info["status"] != psutil.STATUS_ZOMBIE]

    # a postgres backend may still be on its way out when the postmaster has answered "stopped";
    # a process that is really left behind is still there after the wait
    deadline = time.monotonic() + 15
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left(), "the demo stops its sandbox unless --keep"
