"""The drivers' safety-critical decisions, in-process and at their boundaries: whether a run is
resumed (the journal replayed), how long it worked, whose lock refuses a second run, in which
order FASE 3's objects are dropped, and why a restore refuses a definitions file. No sandbox:
what needs a live database is proved by tests/test_drivers.py and tests/test_reliability_*.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rollback.actions.fase3_objects import DropPlan, ObjectState, Outsider, order_for_drop, restore_run
from rollback.errors import StepFailed, UsageError
from rollback.fase3 import DbObject
from rollback.runs import journal as jr
from rollback.runs.journal import (
    RunRecord,
    all_runs,
    events,
    find_run,
    half_done_elsewhere,
    replay,
    room_line,
    unfinished_run,
)
from rollback.runs.locks import (
    RepoLock,
    describe_holder,
    first_line,
    is_held,
    lock_path,
    pid_alive,
    read_holder,
)

T0 = "2026-01-22T10:15:00.000Z"


def ts(seconds: float) -> str:
    return f"2026-01-22T10:{15 + int(seconds) // 60:02d}:{int(seconds) % 60:02d}.000Z"


def write_journal(logs: Path, run_id: str, *lines: dict[str, Any], phase: str = "fase2",
                  target: str | None = None) -> Path:
    folder = logs / run_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "journal.jsonl"
    start: dict[str, Any] = {"ts": T0, "run_id": run_id, "event": "run_started", "phase": phase,
                             "options": {"phase": phase}}
    if target:
        start["target"] = {"id": target}
    path.write_text("".join(json.dumps(e) + "\n" for e in (start, *lines)))
    return path


def ev(kind: str, at: float = 1, **data: Any) -> dict[str, Any]:
    return {"ts": ts(at), "event": kind, **data}


# --- resume: what the journal says about a run ---------------------------------------------------


@pytest.mark.parametrize(("lines", "state", "changed", "resumable"), [
    ([], "running", False, True),                                        # killed at once
    ([ev("step_finished", step="preflight")], "running", False, True),
    ([ev("step_finished", step="code")], "running", True, True),
    ([ev("step_finished", step="deploy")], "running", True, True),
    ([ev("step_finished", step="database")], "running", True, True),
    ([ev("step_started", step="database")], "running", True, True),     # half-way in the database
    ([ev("step_started", step="database"), ev("step_failed", 2, step="database", error="x")],
     "failed", True, True),
    ([ev("step_failed", step="gate", error="x")], "failed", False, False),   # nothing in place
    ([ev("step_finished", step="code"), ev("step_undone", 2, step="code")], "running", False, True),
    ([ev("step_finished", step="code"), ev("step_undone", 2, step="code"),
      ev("step_failed", 3, step="gate", error="x")], "failed", False, False),  # taken back
    ([ev("step_finished", step="code"), ev("run_finished", 2, state="succeeded")],
     "succeeded", True, False),
    ([ev("run_finished", state="already_done")], "already_done", False, False),
    ([ev("run_abandoned", reason="by hand")], "abandoned", False, False),
    ([ev("step_finished", step="code"), ev("run_finished", 2, state="failed")], "failed", True, True),
    ([ev("run_interrupted", step="deploy")], "interrupted", False, True),
    ([ev("step_failed", step="gate", error="x"), ev("run_resumed", 2)], "running", False, True),
])
def test_which_runs_are_resumed(tmp_path: Path, lines: list[dict[str, Any]], state: str,
                                changed: bool, resumable: bool) -> None:
    record = replay(write_journal(tmp_path, "r1", *lines))
    assert (record.state, record.changed, record.resumable) == (state, changed, resumable)


def test_a_resumed_attempt_forgets_the_failure_and_undone_facts() -> None:
    record = RunRecord("r1", "fase2", Path("j"))
    for event in [ev("run_started", 0), ev("step_finished", 1, step="backup", facts={"a": 1, "b": 2}),
                  ev("step_progress", 2, facts={"c": 3}), ev("step_failed", 3, step="convert", error="boom"),
                  ev("run_interrupted", 4, step="convert"),
                  ev("step_undone", 5, step="backup", reason="r", forget=["a", "zz"])]:
        jr._apply(record, event)
    assert record.facts == {"b": 2, "c": 3} and record.completed == []
    assert record.steps["backup"] == {"state": "undone", "reason": "r"}
    assert (record.state, record.failed_step, record.error, record.interrupted_step) == (
        "interrupted", "convert", "boom", "convert")
    jr._apply(record, ev("run_resumed", 6))
    assert (record.state, record.failed_step, record.error, record.interrupted_step) == (
        "running", None, None, None)


def test_a_step_finished_twice_is_completed_once_and_keeps_its_summary() -> None:
    record = RunRecord("r1", "fase2", Path("j"))
    for n in (1, 2):
        jr._apply(record, ev("step_finished", n, step="code", duration_s=n, summary=f"s{n}"))
    assert record.completed == ["code"]
    assert record.steps["code"] == {"state": "done", "duration_s": 2, "summary": "s2"}


def test_a_run_works_only_while_an_attempt_runs(tmp_path: Path) -> None:
    """Attempt 1 from 0 s to its last line at 10 s, attempt 2 from 100 s to 130 s: 40 s, plus
    the pre-flights' own time; the pause between attempts does not count."""
    path = write_journal(tmp_path, "r1",
                         ev("step_finished", 0, step="preflight", duration_s=2.5),
                         ev("step_finished", 10, step="code"),
                         ev("run_resumed", 100, pid=7, host="h2"),
                         ev("step_finished", 130, step="deploy"))
    record = replay(path)
    assert record.active_s() == pytest.approx(42.5)
    assert record.active_s(datetime(2026, 1, 22, 10, 17, 20, tzinfo=UTC)) == pytest.approx(52.5)
    assert (record.last_pid, record.last_host) == (7, "h2")
    jr._apply(record, {**ev("run_finished", 140), "duration_s": 9})
    assert record.active_s() == pytest.approx(52.5) and record.attempt_started is None
    assert record.active_s(datetime(2026, 1, 22, 11, 0, tzinfo=UTC)) == pytest.approx(52.5)
    assert record.finished_at == datetime(2026, 1, 22, 10, 17, 20, tzinfo=UTC)
    assert record.duration_s == 9 and record.state == "succeeded"


def test_time_before_an_attempt_started_never_counts_negative() -> None:
    record = RunRecord("r1", "fase2", Path("j"),
                       attempt_started=datetime(2026, 1, 22, 10, 15, tzinfo=UTC))
    assert record.active_s(datetime(2026, 1, 22, 10, 14, tzinfo=UTC)) == 0.0
    assert record.active_s() == 0.0


def test_restores_are_recorded_attempt_by_attempt() -> None:
    record = RunRecord("r1", "fase2", Path("j"))
    jr._apply(record, ev("restore_failed", 1, error="lost"))   # no restore started: ignored
    jr._apply(record, ev("restore_started", 2))
    jr._apply(record, ev("restore_failed", 3, error="lost", other="x"))
    jr._apply(record, ev("restore_started", 4))
    jr._apply(record, ev("restore_finished", 5, summary="ok", rows=3))
    assert record.restores == [
        {"started_at": ts(2), "state": "failed", "finished_at": ts(3), "error": "lost"},
        {"started_at": ts(4), "state": "done", "finished_at": ts(5), "summary": "ok", "rows": 3}]


def test_a_failed_run_keeps_its_error_and_a_finished_one_may_add_one() -> None:
    record = RunRecord("r1", "fase2", Path("j"))
    jr._apply(record, ev("step_failed", 1, step="gate", duration_s=3, error="gate failed"))
    assert record.steps["gate"] == {"state": "failed", "duration_s": 3, "error": "gate failed"}
    jr._apply(record, ev("run_finished", 2, state="failed"))
    assert record.error == "gate failed"
    jr._apply(record, ev("run_finished", 3, state="failed", error="later"))
    assert record.error == "later"


def test_the_first_target_named_is_the_runs() -> None:
    record = RunRecord("r1", "fase2", Path("j"))
    jr._apply(record, {**ev("run_started", 0), "target": {"id": "aaaa"}})
    jr._apply(record, {**ev("run_resumed", 1), "target": {"id": "bbbb"}})
    assert record.target_id == "aaaa"
    assert record.of_target("aaaa") and record.of_target(None) and not record.of_target("bbbb")
    legacy = RunRecord("r0", "fase2", Path("j"))
    assert legacy.target_id is None and legacy.of_target("anything")


def test_a_gate_fact_that_is_not_a_table_is_no_gate() -> None:
    assert RunRecord("r", "p", Path("j"), facts={"gate": "passed"}).gate is None
    assert RunRecord("r", "p", Path("j"), facts={"gate": {"passed": True}}).gate == {"passed": True}
    assert RunRecord("r", "p", Path("x/j")).dir == Path("x")


def test_a_journal_must_start_with_its_run(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text(json.dumps(ev("step_started", step="code")) + "\n")
    with pytest.raises(UsageError, match="does not start with run_started"):
        replay(path)
    path.write_text("\n")
    with pytest.raises(UsageError, match="empty journal"):
        replay(path)
    with pytest.raises(UsageError, match="cannot be read"):
        replay(tmp_path / "none.jsonl")


def test_lines_that_are_not_events_are_skipped_and_only_bad_json_counts_as_damage(tmp_path: Path) -> None:
    path = write_journal(tmp_path, "r1")
    with path.open("ab") as handle:
        handle.write(b'{"torn": \n[1, 2]\n{"no_ts": 1}\n\xff\xfe\n'
                     + json.dumps(ev("step_finished", step="code")).encode())
    damaged = [0]
    assert [e["event"] for e in events(path, damaged)] == ["run_started", "step_finished"]
    assert damaged == [2]
    assert replay(path).damaged == 2


def _runs(logs: Path) -> None:
    write_journal(logs, "20260122T101500Z-fase2-aaaa", ev("step_finished", step="code"), target="aaaa")
    write_journal(logs, "20260122T101600Z-fase2-bbbb", ev("step_failed", step="gate", error="x"),
                  target="bbbb")
    write_journal(logs, "20260122T101700Z-fase3-aaaa", ev("run_finished", state="succeeded"),
                  phase="fase3", target="aaaa")
    (logs / "junk").mkdir()
    (logs / "junk" / "journal.jsonl").write_text("not json\n")


def test_only_the_latest_run_of_the_phase_on_the_target_is_resumed(tmp_path: Path) -> None:
    _runs(tmp_path)
    assert [r.run_id for r in all_runs(tmp_path)] == [
        "20260122T101500Z-fase2-aaaa", "20260122T101600Z-fase2-bbbb", "20260122T101700Z-fase3-aaaa"]
    assert all_runs(tmp_path / "missing") == []
    found = unfinished_run(tmp_path, "fase2", "aaaa")
    assert found is not None and found.run_id == "20260122T101500Z-fase2-aaaa"
    assert unfinished_run(tmp_path, "fase2", "bbbb") is None      # its latest failed, nothing in place
    assert unfinished_run(tmp_path, "fase2") is None              # any target: bbbb's is the latest
    assert unfinished_run(tmp_path, "fase3", "aaaa") is None      # finished
    assert unfinished_run(tmp_path, None, "aaaa") is None         # the latest of any phase: finished
    assert unfinished_run(tmp_path, "fase1", "aaaa") is None


def test_a_half_done_run_of_another_phase_blocks_only_its_own_target(tmp_path: Path) -> None:
    _runs(tmp_path)
    other = half_done_elsewhere(tmp_path, "fase3", "aaaa")
    assert other is not None and other.run_id == "20260122T101500Z-fase2-aaaa"
    assert half_done_elsewhere(tmp_path, "fase3", "bbbb") is None   # failed, taken back
    assert half_done_elsewhere(tmp_path, "fase2", "aaaa") is None   # the same phase is resumed instead
    assert half_done_elsewhere(tmp_path, "fase3", "cccc") is None


def test_an_unknown_run_names_the_recent_ones(tmp_path: Path) -> None:
    _runs(tmp_path)
    assert find_run(tmp_path, "20260122T101600Z-fase2-bbbb").state == "failed"
    with pytest.raises(UsageError) as caught:
        find_run(tmp_path, "nope")
    assert str(caught.value) == (
        f"no run 'nope' under {tmp_path} (recent runs: 20260122T101500Z-fase2-aaaa, "
        "20260122T101600Z-fase2-bbbb, 20260122T101700Z-fase3-aaaa); see `rollback history`")
    with pytest.raises(UsageError, match=r"\(recent runs: none\)"):
        find_run(tmp_path / "empty", "nope")


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1024 * 1023, "1023 KiB"),
    (2**20, "1.0 MiB"), (int(1.25 * 2**30), "1.2 GiB"), (5 * 2**40, "5120.0 GiB"),
])
def test_sizes_are_shown_in_the_largest_fitting_unit(size: int, shown: str) -> None:
    assert jr._size(size) == shown


def _free_mb(folder: Path) -> float:
    import shutil

    return shutil.disk_usage(folder).free / 2**20


def test_room_is_looked_at_without_writing(tmp_path: Path) -> None:
    line = room_line(tmp_path / "not" / "yet", 1, "logs")
    assert line.startswith(f"logs {tmp_path / 'not' / 'yet'}: writable, ") and "needs" not in line
    assert not (tmp_path / "not").exists()
    need = round(2 * _free_mb(tmp_path))  # twice what is free: short whatever else writes meanwhile
    assert room_line(tmp_path, need, "logs").endswith(
        f" free (a run needs it writable with {need:g} MiB free)")


def test_room_is_checked_by_writing(tmp_path: Path) -> None:
    assert jr.check_room(tmp_path / "d", 1, "logs").startswith(f"logs {tmp_path / 'd'} writable, ")
    assert list((tmp_path / "d").iterdir()) == []       # the probe file is gone
    need = round(2 * _free_mb(tmp_path))
    with pytest.raises(jr.StorageFault) as caught:
        jr.check_room(tmp_path, need, "logs")
    assert re.fullmatch(
        rf"logs {re.escape(str(tmp_path))} has \d+ MiB free, less than the {need} MiB a run needs "
        r"\(\[paths\] min_free_mb\); nothing was changed; free space or make it writable, then run again",
        str(caught.value)), str(caught.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(jr.StorageFault, match="nothing was changed; free space or make it writable"):
        jr.check_room(tmp_path / "file", 1, "logs")   # not a folder


def test_an_unknown_run_names_the_five_most_recent(tmp_path: Path) -> None:
    for n in range(6):
        write_journal(tmp_path, f"20260122T10150{n}Z-fase2-aaaa")
    with pytest.raises(UsageError) as caught:
        find_run(tmp_path, "nope")
    assert "(recent runs: " + ", ".join(f"20260122T10150{n}Z-fase2-aaaa" for n in range(1, 6)) + ")" in str(
        caught.value)


# --- the repository lock ----------------------------------------------------------------------------


def test_the_lock_file_lives_in_git_when_there_is_one(tmp_path: Path) -> None:
    assert lock_path(tmp_path) == tmp_path / "rollback.lock"
    (tmp_path / ".git").mkdir()
    assert lock_path(tmp_path) == tmp_path / ".git" / "rollback.lock"


@pytest.mark.parametrize(("content", "holder"), [
    ('{"run_id": "r1"}', {"run_id": "r1"}), ("[1]", None), ("{", None), (None, None)])
def test_a_holder_is_a_json_object_or_nobody(tmp_path: Path, content: str | None,
                                            holder: dict[str, Any] | None) -> None:
    if content is not None:
        lock_path(tmp_path).write_text(content)
    assert read_holder(tmp_path) == holder


def test_a_holder_is_described_with_what_it_says_and_question_marks_for_the_rest() -> None:
    assert describe_holder({"run_id": "r1", "pid": 42, "host": "h", "user": "ana", "since": "t"}) == (
        "run r1 (pid 42 on h, user ana, since t)")
    assert describe_holder({}) == "run ? (pid ? on ?, user ?, since ?)"


def test_a_second_taker_is_refused_naming_the_holder_and_the_first_can_take_it_again(tmp_path: Path) -> None:
    first = RepoLock(tmp_path, "r1", "fase2", target="aaaa")
    assert first.acquire() is None and first.held and is_held(tmp_path)
    holder = read_holder(tmp_path)
    assert holder is not None and (holder["run_id"], holder["phase"], holder["target"], holder["pid"]) == (
        "r1", "fase2", "aaaa", os.getpid())
    again = RepoLock(tmp_path, "r1", "fase2")   # the same run, in the same process
    assert again.acquire() is None and again.held and again.fd is None
    other = RepoLock(tmp_path, "r2", "fase3")
    with pytest.raises(StepFailed) as caught:
        other.acquire()
    assert str(caught.value) == (
        f"the repository is locked by {describe_holder(holder)}: wait for it to finish; if that "
        f"process is gone for good, remove {lock_path(tmp_path)}")
    assert not other.held
    again.release()
    assert lock_path(tmp_path).exists()       # only the object holding the file removes it
    first.release()
    assert not lock_path(tmp_path).exists() and not first.held and first.fd is None
    assert not is_held(tmp_path)
    first.release()                            # twice: nothing to do


def test_a_lock_held_by_a_dead_runs_command_says_so(tmp_path: Path) -> None:
    path = lock_path(tmp_path)
    path.write_text(json.dumps({"run_id": "r0", "pid": 2**22 + 12345, "host": socket.gethostname()}))
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)   # a build the dead run started still holds it
        with pytest.raises(StepFailed, match="its process is gone but a command it started"):
            RepoLock(tmp_path, "r1", "fase2").acquire()
        path.write_text(json.dumps({"run_id": "r0", "pid": os.getpid(), "host": "elsewhere"}))
        with pytest.raises(StepFailed, match="wait for it to finish; if that process is gone"):
            RepoLock(tmp_path, "r1", "fase2").acquire()
    finally:
        os.close(fd)


def test_a_lock_taken_but_not_yet_written_says_a_run_is_starting(tmp_path: Path) -> None:
    fd = os.open(lock_path(tmp_path), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lock = RepoLock(tmp_path, "r1", "fase2")
        with pytest.raises(StepFailed) as caught:
            lock.acquire()
        assert str(caught.value) == (
            f"the repository is locked by a run that is starting ({lock.path} is not written yet): "
            "wait for it to finish")
    finally:
        os.close(fd)


def test_a_stale_lock_is_taken_over_and_named(tmp_path: Path) -> None:
    lock_path(tmp_path).write_text(json.dumps({"run_id": "r0", "pid": 1, "host": "h", "user": "u",
                                               "since": "t"}))
    lock = RepoLock(tmp_path, "r1", "fase2")
    assert lock.acquire() == ("took over a stale lock of run r0 (pid 1 on h, user u, since t): "
                              "its process is gone")
    assert json.loads(lock_path(tmp_path).read_text())["run_id"] == "r1"   # written over whole
    lock.release()


def test_a_lock_file_replaced_meanwhile_is_not_removed_by_the_old_holder(tmp_path: Path) -> None:
    lock = RepoLock(tmp_path, "r1", "fase2")
    lock.acquire()
    lock_path(tmp_path).unlink()
    lock_path(tmp_path).write_text("{}")      # someone else's file now
    lock.release()
    assert lock_path(tmp_path).read_text() == "{}"


def test_a_process_is_alive_until_it_is_gone() -> None:
    import subprocess
    import time

    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 12345)
    child = subprocess.Popen(["true"])
    try:
        for _ in range(6000):  # until it has exited and is a zombie (not waited for yet)
            with open(f"/proc/{child.pid}/stat") as handle:
                if handle.read().split(") ", 1)[1][0] == "Z":
                    break
            time.sleep(0.005)
        else:
            pytest.fail("the child never exited")
        assert not pid_alive(child.pid)   # a zombie is not alive
    finally:
        child.wait()


@pytest.mark.parametrize(("exc", "line"), [
    (RuntimeError("first\nsecond"), "first"), (RuntimeError("  \n"), "RuntimeError"),
    (ValueError(), "ValueError"), (RuntimeError("  one  "), "one"),
])
def test_an_error_is_said_by_its_first_line(exc: BaseException, line: str) -> None:
    assert first_line(exc) == line


# --- FASE 3: drop order, the plan's lines, the restore's refusals ----------------------------------

V = DbObject("view", "vw_a")
F = DbObject("function", "fn_a", "uuid")
M = DbObject("materialized view", "mv_a")
I1 = DbObject("index", "idx_1")
I2 = DbObject("index", "idx_2")


@pytest.mark.parametrize(("objects", "edges", "order"), [
    ([I1, M, F, V], set(), [V, F, M, I1]),                  # by kind when nothing depends
    ([I1, I2], set(), [I2, I1]),                            # same kind: the reverse of creation
    ([V, I1], {(I1, V)}, [I1, V]),                          # a dependant first, whatever its kind
    ([M, V, I1], {(V, M), (I1, M)}, [V, I1, M]),
    ([V, F], {(V, F), (F, V)}, [V, F]),                     # a cycle: by kind again
    ([V], {(V, V)}, [V]),                                   # on itself: no wait
    ([I1, I2, V], {(I1, I2)}, [V, I1, I2]),
    ([V, F, I1], {(I1, F), (F, V)}, [I1, F, V]),            # a chain against the kinds' order
])
def test_drop_order(objects: list[DbObject], edges: set[tuple[DbObject, DbObject]],
                    order: list[DbObject]) -> None:
    assert order_for_drop(objects, edges) == order


def test_the_drop_plan_says_what_is_dropped_how_and_what_blocks_it() -> None:
    plan = DropPlan([V, I1, F], {V: ObjectState(V, True), I1: ObjectState(I1, True)},
                    [Outsider("view public.vw_report", "vw_a")])
    assert plan.lines() == [
        "  DROP VIEW vw_a",
        "  DROP INDEX CONCURRENTLY idx_1",
        "  DROP FUNCTION fn_a(uuid)   (not in the database: nothing to drop)",
        "  BLOCKED: view public.vw_report depends on vw_a and is not FASE 3's"]


def test_an_object_state_is_saved_with_its_object() -> None:
    state = ObjectState(F, True, "public.fn_a(uuid)", "CREATE ...", owner="o", acl="{a}",
                        comment="c", oid=5)
    assert state.as_dict() == {"kind": "function", "name": "fn_a", "args": "uuid", "present": True,
                               "identity": "public.fn_a(uuid)", "definition": "CREATE ...",
                               "owner": "o", "acl": "{a}", "comment": "c"}


class _Run:
    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.run_id = "r1"


def test_a_restore_refuses_without_definitions_a_missing_file_or_a_changed_one(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as caught:
        restore_run(_Run({}))  # type: ignore[arg-type]
    assert str(caught.value) == ("run r1 saved no FASE 3 object definitions (was it option 1?): "
                                 "nothing to restore")
    path = tmp_path / "fase3_objects.json"
    with pytest.raises(StepFailed) as caught:
        restore_run(_Run({"fase3_backup": {"file": str(path), "sha256": "0"}}))  # type: ignore[arg-type]
    assert str(caught.value) == f"{path} is missing: the definitions of run r1 are gone"
    path.write_text('{"objects": []}')
    recorded = hashlib.sha256(b'{"objects": [ ]}').hexdigest()
    with pytest.raises(StepFailed) as caught:
        restore_run(_Run({"fase3_backup": {"file": str(path), "sha256": recorded}}))  # type: ignore[arg-type]
    assert str(caught.value) == (f"{path} does not match the checksum recorded by the run: refusing "
                                 "to execute SQL from a file changed since")


# --- FASE 3's object list: the migrations as PostgreSQL's parser reads them -------------------------


@pytest.mark.parametrize(("migrations", "labels"), [
    # an overload dropped by its arguments; the other stays
    (["CREATE FUNCTION f(p uuid) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;"
      "CREATE FUNCTION f(p text, q int) RETURNS int LANGUAGE sql AS $$ SELECT 2 $$;",
      "DROP FUNCTION f(uuid);"], ["f(text, integer)"]),
    (["CREATE FUNCTION f(p uuid) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
      "DROP FUNCTION f(text, integer);"], ["f(uuid)"]),
    (["CREATE FUNCTION f(p uuid) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
      "DROP FUNCTION f;"], []),                                   # no arguments: the only f
    (["CREATE PROCEDURE p(a int) LANGUAGE sql AS $$ SELECT 1 $$;", "DROP PROCEDURE p(int);"], []),
    (["CREATE VIEW v1 AS SELECT 1; CREATE VIEW v2 AS SELECT 2; CREATE VIEW v3 AS SELECT 3;",
      "DROP VIEW v1, v3;"], ["v2"]),
    (["CREATE INDEX idx_a ON leads (a);", "DROP TABLE idx_a;"], ["idx_a"]),   # not the index
    (["CREATE INDEX idx_a ON leads (a);", "ALTER TABLE leads RENAME TO leads_old;"], ["idx_a"]),
    (["CREATE INDEX idx_a ON app.leads (a);", "ALTER INDEX app.idx_a RENAME TO idx_b;"], ["app.idx_b"]),
    (["CREATE INDEX idx_a ON leads (a);", "ALTER INDEX idx_a RENAME TO idx_b;"], ["idx_b"]),
    (["CREATE VIEW idx_a AS SELECT 1; CREATE INDEX idx_a2 ON t (a);",
      "ALTER INDEX idx_a RENAME TO idx_z;"], ["idx_a", "idx_a2"]),  # an index's rename, not the view's
    (["CREATE MATERIALIZED VIEW app.mv AS SELECT 1;",
      "ALTER MATERIALIZED VIEW app.mv RENAME TO mv2;"], ["app.mv2"]),
    (["CREATE FUNCTION app.f(p uuid) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
      "ALTER FUNCTION app.f(uuid) RENAME TO g;"], ["app.g(uuid)"]),
    (["CREATE FUNCTION f(p uuid) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
      "ALTER FUNCTION f(uuid) RENAME TO g;"], ["g(uuid)"]),
    (["CREATE FUNCTION f(p uuid) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
      "ALTER FUNCTION f(text) RENAME TO g;"], ["f(uuid)"]),        # another overload
    (["CREATE FUNCTION f(a uuid, OUT b int, INOUT c text, VARIADIC d int[]) RETURNS record "
      "LANGUAGE sql AS $$ SELECT 1, 'x' $$;"], ["f(uuid, text, integer[])"]),
    (["CREATE FUNCTION f() RETURNS TABLE (a int) LANGUAGE sql AS $$ SELECT 1 $$;"], ["f()"]),
    (["CREATE TABLE t (a int); CREATE SEQUENCE s; ALTER TABLE t ADD b int;"], []),
    (["CREATE VIEW v AS SELECT 1; CREATE OR REPLACE VIEW v AS SELECT 2;"], ["v"]),  # once
])
def test_the_objects_the_migrations_leave(migrations: list[str], labels: list[str]) -> None:
    from rollback.fase3 import apply_migration

    objects: list[DbObject] = []
    for text in migrations:
        objects = apply_migration(text, objects)
    assert [o.label for o in objects] == labels


def test_an_object_is_known_by_kind_name_and_for_a_function_its_arguments() -> None:
    assert DbObject("function", "app.f", "uuid, text").label == "app.f(uuid, text)"
    assert DbObject("view", "app.v", "").label == "app.v"
    assert DbObject("function", "f").as_dict() == {"kind": "function", "name": "f", "args": ""}


def _git(repo: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
                                          "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
                          ).stdout.strip()


def _repo(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    (repo / "migrations").mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    for name, text in files.items():
        (repo / "migrations" / name).write_text(text)
    (repo / "README").write_text("x")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "migrations")
    return repo


def test_objects_come_from_the_migrations_in_file_name_order(tmp_path: Path) -> None:
    from rollback.fase3 import objects_in_repo
    from rollback.profile import load_profile

    repo = _repo(tmp_path, {"030_b.sql": "ALTER INDEX idx_a RENAME TO idx_c;",
                            "030_a.sql": "CREATE INDEX idx_a ON t (a); CREATE VIEW v AS SELECT 1;",
                            "020_other.sql": "CREATE INDEX idx_not_fase3 ON t (a);"})
    head = _git(repo, "rev-parse", "HEAD")
    found = objects_in_repo(load_profile("contract"), repo)
    assert found.labels == ("idx_c", "v")
    assert found.files == ("HEAD:migrations/030_a.sql", "HEAD:migrations/030_b.sql")
    assert objects_in_repo(load_profile("contract"), repo, head).files[0] == f"{head}:migrations/030_a.sql"


def test_migrations_removed_since_are_read_at_their_last_version(tmp_path: Path) -> None:
    from rollback.fase3 import objects_in_repo
    from rollback.profile import load_profile

    repo = _repo(tmp_path, {"030_a.sql": "CREATE INDEX idx_a ON t (a);"})
    (repo / "migrations" / "030_a.sql").write_text("CREATE INDEX idx_a2 ON t (a);")
    _git(repo, "commit", "-q", "-am", "second version")
    last = _git(repo, "rev-parse", "HEAD")
    _git(repo, "rm", "-q", "migrations/030_a.sql")
    _git(repo, "commit", "-q", "-m", "rollback removed it")
    removed = _git(repo, "rev-parse", "HEAD")
    found = objects_in_repo(load_profile("contract"), repo)
    assert found.labels == ("idx_a2",)
    assert found.files == (f"{removed}^:migrations/030_a.sql",)
    assert _git(repo, "rev-parse", f"{removed}^") == last


@pytest.mark.parametrize(("files", "says"), [
    ({"020_a.sql": "CREATE INDEX i ON t (a);"},
     "matches [platform.phases.fase3] migrations (migrations/030_*.sql), at HEAD or in its history"),
    ({"030_a.sql": "CREATE TABLE t (a int);"},
     "no CREATE INDEX/VIEW/FUNCTION in FASE 3's migrations (HEAD:migrations/030_a.sql)"),
    ({"030_a.sql": "CREATE INDEX i ON t (a;"},
     "PostgreSQL's parser cannot read migrations/030_a.sql at HEAD: "),
])
def test_no_object_list_is_guessed(tmp_path: Path, files: dict[str, str], says: str) -> None:
    from rollback.fase3 import objects_in_repo
    from rollback.profile import load_profile

    repo = _repo(tmp_path, files)
    with pytest.raises(StepFailed) as caught:
        objects_in_repo(load_profile("contract"), repo)
    assert says in str(caught.value)


# --- the journal as written: whole lines, a torn tail cut once, runs in the order they started ----


def test_a_torn_tail_is_cut_before_the_next_line_and_whole_lines_are_kept(tmp_path: Path) -> None:
    journal = jr.Journal.create(tmp_path / "a" / "b", "r1")   # its folders made as needed
    journal.write("run_started", phase="fase2")
    journal.write("step_finished", step="code")
    with journal.path.open("ab") as handle:
        handle.write(b'{"ts": "2026-01-22T10:15:00.000Z", "event": "step_fin')   # died mid-line
    later = jr.Journal(journal.path, "r1")                    # the next process
    later.write("run_resumed")
    lines = journal.path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["run_started", "step_finished", "run_resumed"]
    record = replay(journal.path)
    assert record.damaged == 0 and record.path == journal.path and record.run_id == "r1"
    clean = journal.path.read_bytes()
    jr.Journal(journal.path, "r1").write("run_interrupted")   # no torn tail: nothing is cut
    assert journal.path.read_bytes().startswith(clean)


def test_a_journal_that_is_only_a_torn_line_is_cut_to_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"ts": "2026')
    jr.Journal(path, "r1").write("run_started", phase="fase2")
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["run_started"]


def test_a_journal_line_is_the_event_first_then_its_data_as_json(tmp_path: Path) -> None:
    journal = jr.Journal.create(tmp_path, "r1")
    entry = journal.write("step_finished", step="code", facts={
        "at": datetime(2026, 1, 22, 10, 15, tzinfo=UTC), "file": Path("/x/y"), "ids": ("b", "a"),
        "z": 1, "a": 2})
    line = journal.path.read_text()
    assert line.startswith('{"ts": "') and '"run_id": "r1", "event": "step_finished", "step": "code"' in line
    assert json.loads(line)["facts"] == {"at": "2026-01-22T10:15:00.000Z", "file": "/x/y",
                                         "ids": ["b", "a"], "z": 1, "a": 2}
    assert list(json.loads(line)["facts"]) == ["at", "file", "ids", "z", "a"]   # as given, not sorted
    assert entry["run_id"] == "r1" and entry["event"] == "step_finished"
    with pytest.raises(UsageError, match="already exists: run r1 was already started"):
        jr.Journal.create(tmp_path, "r1")
    (tmp_path / "r2").mkdir()
    assert jr.Journal.create(tmp_path, "r2").run_id == "r2"   # its folder may be there already


@pytest.mark.parametrize(("value", "shown"), [
    (datetime(2026, 1, 22, 10, 15, tzinfo=UTC), "2026-01-22T10:15:00.000Z"), (Path("/a/b"), "/a/b"),
    ({1}, [1]), (frozenset({2}), [2]), ((3, 4), [3, 4]), (object, "<class 'object'>"),
])
def test_what_json_cannot_say_is_written_as_text_or_a_list(value: Any, shown: Any) -> None:
    assert jr._json_default(value) == shown


def test_a_blank_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    path = write_journal(tmp_path, "r1")
    with path.open("a") as handle:
        handle.write("\n   \n" + json.dumps(ev("step_finished", step="code")) + "\n")
    assert replay(path).completed == ["code"] and replay(path).damaged == 0
    assert replay(path).started_at == datetime(2026, 1, 22, 10, 15, tzinfo=UTC)


def test_runs_are_listed_in_the_order_they_started_and_a_bad_journal_anywhere_is_skipped(
        tmp_path: Path) -> None:
    (tmp_path / "0-bad").mkdir()
    (tmp_path / "0-bad" / "journal.jsonl").write_text(json.dumps(ev("step_started")) + "\n")
    write_journal(tmp_path, "a-later")
    early = write_journal(tmp_path, "b-earlier")
    text = early.read_text().replace(T0, "2026-01-22T09:00:00.000Z", 1)
    early.write_text(text)
    assert [r.run_id for r in all_runs(tmp_path)] == ["b-earlier", "a-later"]


def test_a_later_attempts_preflight_adds_to_the_work_before_it() -> None:
    record = RunRecord("r1", "fase2", Path("j"))
    for event in [ev("run_started", 0), ev("step_finished", 10, step="code"), ev("run_resumed", 100),
                  ev("step_finished", 100, step="preflight", duration_s=2.5),
                  ev("step_finished", 100, step="preflight")]:   # no duration: nothing to add
        jr._apply(record, event)
    assert record.worked_s == pytest.approx(12.5)


def test_steps_said_without_their_details_keep_empty_ones() -> None:
    record = RunRecord("r1", "fase2", Path("j"))
    jr._apply(record, ev("step_finished", 1, step="a"))
    jr._apply(record, ev("step_failed", 2, step="b"))
    jr._apply(record, ev("step_undone", 3, step="c"))
    jr._apply(record, ev("restore_started", 4))
    assert record.steps == {"a": {"state": "done", "duration_s": None, "summary": ""},
                            "b": {"state": "failed", "duration_s": None, "error": ""},
                            "c": {"state": "undone", "reason": ""}}
    assert record.restores == [{"started_at": ts(4), "state": "running"}]
    jr._apply(record, ev("run_abandoned", 5))
    assert record.state == "abandoned" and record.finished_at == datetime(2026, 1, 22, 10, 15, 5, tzinfo=UTC)


def test_a_stale_lock_file_that_is_no_object_is_taken_over_silently(tmp_path: Path) -> None:
    lock_path(tmp_path).write_text("[1]")
    lock = RepoLock(tmp_path, "r1", "fase2")
    assert lock.acquire() is None and read_holder(tmp_path)["run_id"] == "r1"  # type: ignore[index]
    lock.release()
