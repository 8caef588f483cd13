"""One run at a time: runs started together, and locks left behind by runs that died.

Two runs of the same phase, or FASE 2 and FASE 3, started at the same moment against the same
target: exactly one proceeds, the other exits at once naming the holder, while the first still
holds the lock (it never waits for it). A lock left by
a killed run is taken over, but not while a command that run started (a build, a deploy) still
runs. (One run refused while a test holds the locks is in tests/test_drivers.py.)
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from rollback.errors import StepFailed
from rollback.runs.locks import DatabaseLock, RepoLock, is_held, read_holder
from tests.conftest import Sandbox
from tests.reliability import Driver, start
from tests.targets import Target, make_target, state_of

#: a refused run exits at once; this bounds only a run that hangs instead (a clear failure
#: rather than the test's own timeout). Not a speed figure: a loaded machine is far inside it
HANG_LIMIT_S = 45.0


@pytest.fixture
def target(fresh_sandbox: Sandbox, tmp_path: Path) -> Target:
    return make_target(fresh_sandbox, tmp_path / "t")


def race(target: Target, first: list[str], second: list[str],
         folder: Path) -> tuple[Driver, Driver, bool]:
    """Start two runs at once; returns (winner, loser, whether the loser had exited while the
    winner still ran, holding the lock: a loser that waited for the lock exits after it)."""
    a = start(target, *first, folder=folder, name="a")
    b = start(target, *second, folder=folder, name="b")
    first_out: Driver | None = None
    deadline = time.monotonic() + 240
    while any(d.alive() for d in (a, b)):
        if first_out is None:
            ended = [d for d in (a, b) if not d.alive()]
            if len(ended) == 1:
                first_out = ended[0]
        assert time.monotonic() < deadline, "the runs did not finish"
        time.sleep(0.01)
    codes = sorted(d.process.returncode for d in (a, b))
    assert codes == [0, 1], f"exit codes {codes}:\n{a.output()[-2000:]}\n{b.output()[-2000:]}"
    winner, loser = (a, b) if a.process.returncode == 0 else (b, a)
    return winner, loser, first_out is loser


def assert_names_the_holder(loser: Driver, winner: Driver, target: Target) -> None:
    """One line naming the winner's run id, process, host and since when."""
    __tracebackhide__ = True
    lines = [line for line in loser.stderr.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in loser.output(), lines
    journals = list(target.logs.glob("*/journal.jsonl"))
    assert len(journals) == 1, "the refused run must not have started a journal"
    run_id = journals[0].parent.name
    line = lines[0]
    assert f"locked by run {run_id} (pid {winner.pid} on {socket.gethostname()}" in line, line
    since = datetime.fromisoformat(line.split("since ", 1)[1].split(")", 1)[0].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - since) < timedelta(minutes=5), line


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_runs_of_the_same_phase_started_together_one_proceeds_one_names_it(
        target: Target, tmp_path: Path) -> None:
    winner, loser, refused_first = race(target, ["run", "fase1", "--yes"], ["run", "fase1", "--yes"],
                                        tmp_path / "out")
    assert refused_first, "the refused run exited only after the run holding the lock"
    assert_names_the_holder(loser, winner, target)
    record = target.only_run("fase1")
    assert record.state == "succeeded" and record.last_pid == winner.pid
    assert not (target.box.repo / ".git" / "rollback.lock").exists()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fase2_and_fase3_started_together_one_proceeds_one_names_it(target: Target,
                                                                    tmp_path: Path) -> None:
    box = target.box
    before = state_of(box)
    winner, loser, refused_first = race(target, ["run", "fase2", "--yes"],
                                        ["run", "fase3", "--db-option", "2", "--yes"], tmp_path / "out")
    assert refused_first, "the refused run exited only after the run holding the lock"
    assert_names_the_holder(loser, winner, target)
    done = target.runs()
    assert len(done) == 1 and done[0].state == "succeeded"
    after = state_of(box)
    if done[0].phase == "fase2":  # the winner's change and nothing of the loser's
        assert after.branch_keys == 0 and after.fase3_objects == before.fase3_objects
    else:
        assert after.fase3_objects == 0 and after.branch_keys == before.branch_keys


def test_a_run_refused_by_the_database_lock_names_its_holder(sandbox: Sandbox, tmp_path: Path) -> None:
    """Two checkouts of one platform share the database: the advisory lock names the holder too."""
    target = make_target(sandbox, tmp_path)
    before = state_of(sandbox)
    held = DatabaseLock(sandbox.database_url, "20260122T101500Z-fase3")
    held.acquire()
    try:  # the refused run returns while this test still holds the lock: it did not wait for it
        result = target.rollback("run", "fase2", "--yes", timeout=HANG_LIMIT_S)
    finally:
        held.release()
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    name = f"rollback 20260122T101500Z-fase3 pid {os.getpid()} on {socket.gethostname()}"[:63]
    assert f"database is locked by {name} (backend pid" in line, line
    assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line), line
    assert state_of(sandbox) == before


# --- locks left behind ---------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import subprocess, sys
    from pathlib import Path
    from rollback.runs.locks import RepoLock

    lock = RepoLock(Path(sys.argv[1]), "20260122T101500Z-fase2", "fase2")
    lock.acquire()
    # a deploy command that outlives the run, holding the lock it inherited
    deploy = subprocess.Popen(["sleep", "60"], pass_fds=(lock.fd,), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(deploy.pid, flush=True)
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_killed_runs_lock_is_not_taken_while_its_command_still_runs(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    holder = subprocess.run([sys.executable, "-c", _HOLDER, str(tmp_path)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    deploy = int(holder.stdout.split()[0])
    try:
        with pytest.raises(StepFailed, match=r"locked by run 20260122T101500Z-fase2 .*its process is "
                                             r"gone but a command it started .* still runs"):
            RepoLock(tmp_path, "20260122T101600Z-fase3", "fase3").acquire()
        # refused while the command still runs and holds the lock: it did not wait for its end
        assert psutil.pid_exists(deploy) and is_held(tmp_path)
    finally:
        os.kill(deploy, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_held(tmp_path):
        assert time.monotonic() < deadline, "the lock outlived the command holding it"
        time.sleep(0.05)
    lock = RepoLock(tmp_path, "20260122T101600Z-fase3", "fase3")
    note = lock.acquire()
    assert note is not None and "took over a stale lock of run 20260122T101500Z-fase2" in note
    assert read_holder(tmp_path)["run_id"] == "20260122T101600Z-fase3"  # type: ignore[index]
    lock.release()
    assert not (tmp_path / ".git" / "rollback.lock").exists()


def test_a_lock_file_holding_garbage_but_no_lock_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "rollback.lock").write_text('{"run_id": "20260122T10')  # torn write
    lock = RepoLock(tmp_path, "20260122T101600Z-fase1", "fase1")
    assert lock.acquire() is None
    assert read_holder(tmp_path)["run_id"] == "20260122T101600Z-fase1"  # type: ignore[index]
    lock.release()


def test_plan_tells_a_held_lock_from_one_left_behind(sandbox: Sandbox, tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path)
    path = sandbox.repo / ".git" / "rollback.lock"
    path.write_text('{"run_id": "20260122T101500Z-fase1", "pid": 999999999, "host": "h", '
                    '"user": "ana", "since": "2026-01-22T10:15:00.000Z"}')
    try:
        left = target.rollback("plan", "fase1")
    finally:
        path.unlink()
    assert left.returncode == 0, left.stderr
    assert "repository lock: free (left by run 20260122T101500Z-fase1" in left.stdout
    held = RepoLock(sandbox.repo, "20260122T101700Z-fase1", "fase1")
    held.acquire()
    try:
        now = target.rollback("plan", "fase1")
    finally:
        held.release()
    assert "repository lock: held by run 20260122T101700Z-fase1" in now.stdout
