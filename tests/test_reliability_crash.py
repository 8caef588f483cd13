"""Crash matrix: drivers killed with SIGKILL at every step boundary and in the middle of their
database work, SIGTERM during the gate, the database connection cut from the server side.

After each crash the next `rollback run` resumes the same run and finishes it; the target ends
exactly as an uninterrupted run leaves it, the backup is complete, and the journal says what
happened (which step each dead process was in). Tests that only need one kill mid-conversion
or one Ctrl-C are in tests/test_drivers.py; these go further.
"""

from __future__ import annotations

import csv
import hashlib
import math
import signal
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rollback.actions import branch_keys
from rollback.runs import dbops
from rollback.runs.journal import RunRecord
from tests.conftest import Sandbox, SandboxFactory
from tests.reliability import (
    Driver,
    SilentHook,
    gate_checks,
    journal_events,
    keys_checksum,
    kill,
    row_locked,
    start,
    step_started,
    wait_gone,
    wait_until,
    waiting_on_a_lock,
)
from tests.targets import (
    FASE3_OBJECTS,
    Target,
    fase3_objects_present,
    git,
    make_target,
    state_of,
)

#: small batches that give up a blocked lock quickly and retry for long enough to be killed
BATCHES = {"batch_size": 5, "lock_timeout_ms": 200, "batch_retries": 8, "retry_backoff_s": 0.05}


@pytest.fixture
def twin(fresh_sandbox: Sandbox, sandbox_factory: SandboxFactory) -> Iterator[Sandbox]:
    """A second sandbox from the same seed as `fresh_sandbox`, for an uninterrupted run.

    The seed places expiry dates relative to the time it runs; they are aligned so that the two
    api_keys tables start out equal, checksum for checksum.
    """
    box = sandbox_factory.make()
    for key_id, expires_at in fresh_sandbox.sql("SELECT id, expires_at FROM api_keys "
                                                "WHERE expires_at IS NOT NULL"):
        box.sql("UPDATE api_keys SET expires_at = %s WHERE id = %s", (expires_at, key_id))
    yield box
    sandbox_factory.destroy(box)


@pytest.fixture
def target(fresh_sandbox: Sandbox, tmp_path: Path) -> Target:
    return make_target(fresh_sandbox, tmp_path / "t")


def run_id_of(target: Target) -> str:
    found = list(target.logs.glob("*/journal.jsonl"))
    assert len(found) == 1, found
    return found[0].parent.name


def application(target: Target) -> str:
    """The application_name the run's database sessions carry."""
    return f"rollback {run_id_of(target)}"


def progress_rows(box: Sandbox, run_id: str) -> list[tuple[int, int]]:
    if not box.sql("SELECT to_regclass('rollback_backup.fase2_progress')")[0][0]:
        return []
    return [(int(b), int(n)) for b, n in box.sql(
        "SELECT batch, converted FROM rollback_backup.fase2_progress WHERE run_id = %s ORDER BY batch",
        (run_id,))]


def walk_order(box: Sandbox, run_id: str) -> list[str]:
    """The branch keys still to convert, in the order the conversion's walk meets them: by
    physical place (ctid), from where the run's last committed batch says the walk goes on."""
    rows = progress_rows(box, run_id) and box.sql(
        "SELECT next_ctid::text FROM rollback_backup.fase2_progress WHERE run_id = %s "
        "ORDER BY batch DESC LIMIT 1", (run_id,))
    start = rows[0][0] if rows and rows[0][0] else "(0,0)"
    return [r[0] for r in box.sql("SELECT id::text FROM api_keys WHERE scope_type = 'branch' "
                                  "AND ctid >= %s::tid ORDER BY ctid", (start,))]


@contextmanager
def locked_in_walk(box: Sandbox, run_id: str, pick: Callable[[list[str]], str]) -> Iterator[str]:
    """Hold the lock of the key `pick` chooses from `walk_order`, for the block. The key is
    chosen again if it moved before the lock was taken (the API's last-use update of a key it
    serves gives the row a new place): a locked row stays where it is."""
    conn = psycopg.connect(box.database_url)
    try:
        for _ in range(20):
            key = pick(walk_order(box, run_id))
            conn.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (key,))
            if pick(walk_order(box, run_id)) == key:
                yield key
                return
            conn.rollback()
        raise AssertionError("the keys kept moving: no kill point could be locked")
    finally:
        conn.rollback()
        conn.close()


def assert_killed_in(record: RunRecord, done: list[str], step: str) -> None:
    """What the journal of a SIGKILLed run says: no last word, these steps done, that one running."""
    __tracebackhide__ = True
    assert record.state == "running", f"journal of a killed run says {record.state}"
    assert record.completed == done, f"completed {record.completed}, expected {done}"
    assert record.steps.get(step, {}).get("state") == "running", \
        f"step {step} is {record.steps.get(step)} in the journal, expected running"


def resume_events(target: Target) -> list[dict[str, Any]]:
    path = next(target.logs.glob("*/journal.jsonl"))
    return [e for e in journal_events(path) if e["event"] == "run_resumed"]


def test_retry_waits_double_but_never_exceed_the_cap() -> None:
    waits = [dbops.backoff(0.5, attempt) for attempt in range(100)]  # [run] batch_retries <= 100
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(waits) == dbops.MAX_BACKOFF_S == 30.0


# --- FASE 2: eleven kills, one run ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fase2_killed_at_every_step_and_mid_conversion_ends_like_an_uninterrupted_run(
        fresh_sandbox: Sandbox, twin: Sandbox, tmp_path: Path) -> None:
    box, out = fresh_sandbox, tmp_path / "out"
    assert keys_checksum(box) == keys_checksum(twin), "the two sandboxes must start out equal"
    reference = start(make_target(twin, tmp_path / "reference", run=BATCHES), "run", "fase2", "--yes",
                      folder=out, name="reference")
    target = make_target(box, tmp_path / "crash", run=BATCHES)
    before = dict(box.sql("SELECT id::text, is_active FROM api_keys WHERE scope_type = 'branch'"))
    ids = sorted(before)
    size = BATCHES["batch_size"]
    batches = math.ceil(len(ids) / size)
    assert batches >= 6, f"{len(ids)} branch keys: too few to kill the conversion three times"
    config = tomllib.loads(target.config.read_text())["target"]
    killed: list[int] = []

    def crash(name: str, step: str, done: list[str], until: Any,
              during: AbstractContextManager[Any] | None = None, keep_orphans: bool = True,
              **env: str) -> None:
        """Run (resume) FASE 2 `during` a hindrance, SIGKILL it once `until(driver)` holds, and
        check that its journal says it died in `step` with `done` finished."""
        with during or nullcontext():
            driver = start(target, "run", "fase2", "--yes", folder=out, name=name, **env)
            wait_until(lambda: until(driver), f"{name}: the kill point", driver)
            orphans = kill(driver)
        killed.append(driver.pid)
        if keep_orphans:
            wait_gone(orphans)  # what the dead driver started (a build, a deploy) finishes
        else:
            for orphan in orphans:
                orphan.kill()
        assert_killed_in(target.only_run("fase2"), done, step)
        assert (box.repo / ".git" / "rollback.lock").exists(), "a SIGKILL leaves the lock file"

    # FASE 2's conversion comes before the deploy: the reverted code never meets a branch key
    steps = ["preflight", "baseline", "backup", "code", "build", "database", "deploy", "publish",
             "gate", "communicate"]

    crash("1-baseline", "baseline", steps[:1], lambda d: step_started(target, d, "baseline"),
          box.chaos(latency_ms=300, paths=["/v1"]))
    crash("2-backup", "backup", steps[:2], lambda d: step_started(target, d, "backup"),
          box.chaos(latency_ms=1000, paths=["/health"]))
    assert not box.sql("SELECT to_regclass('rollback_backup.runs')")[0][0], "backup began early"

    hook = box.repo / ".git" / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\nsleep 10\n")
    hook.chmod(0o755)
    crash("3-code", "code", steps[:3],
          lambda d: step_started(target, d, "code") and git(box.repo, "branch", "--list", "rollback/*"),
          keep_orphans=False)  # the hook is the test's, not the driver's: stop it
    hook.unlink()
    run_id = run_id_of(target)
    assert box.sql("SELECT row_count FROM rollback_backup.runs WHERE run_id = %s", (run_id,)) == \
        [(len(ids),)]

    # a build and a deploy that take their time; the dead driver's command finishes on its own
    make_target(box, target.config.parent, run=BATCHES,
                target={"build_command": f"sleep 3; {config['build_command']}"})
    crash("4-build", "build", steps[:4], lambda d: step_started(target, d, "build"))
    make_target(box, target.config.parent, run=BATCHES)  # the sandbox's own commands again

    # the conversion walks the table in physical order: a kill point is a key locked where the
    # walk will meet it, `batch` batches of `size` on (fewer, should a busy machine make a batch
    # overrun its lock budget and the walk take smaller ones), or the very last key
    app = f"rollback {run_id}"
    depths = []
    for name, batch in (("5-database", 0), ("6-batch-2", 2), ("7-batch-4", 4),
                        ("8-last-batch", None)):
        done = len(progress_rows(box, run_id))
        locked = locked_in_walk(box, run_id, lambda order, b=batch, n=done: order[-1] if b is None
                                else order[min((b - n) * size, len(order) - 1)])
        with locked:
            crash(name, "database", steps[:5], lambda d: waiting_on_a_lock(box, app))
        # a batch is one statement in its own transaction: the dead driver's server session may
        # still finish the one it had sent, once the lock is free, conversion and progress row
        # together. Wait for its sessions to be gone, then the state is what a resume finds.
        wait_until(lambda: not box.sql("SELECT count(*) FROM pg_stat_activity "
                                       "WHERE application_name = %s", (app,))[0][0],
                   f"{name}: the dead driver's sessions gone")
        rows = progress_rows(box, run_id)
        # a key the API moves meanwhile (its last-use update) may shift the blocked batch by one,
        # and the batch in flight may have committed
        assert batch is None or done <= len(rows) <= batch + 2, (name, done, len(rows))
        depths.append(len(rows))
        left = box.sql("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'")[0][0]
        assert left == len(ids) - sum(n for _, n in rows), "keys converted and progress rows disagree"
    assert depths[0] <= 2 and depths == sorted(depths) and depths[-1] > depths[0], \
        f"kills at batches {depths}: not deeper"

    make_target(box, target.config.parent, run=BATCHES,
                target={"deploy_command": f"sleep 1; {config['deploy_command']}"})
    crash("9-deploy", "deploy", steps[:6], lambda d: step_started(target, d, "deploy"))
    make_target(box, target.config.parent, run=BATCHES)

    crash("10-gate", "gate", steps[:8], gate_checks)
    hook_server = SilentHook()
    try:
        crash("11-communicate", "communicate", steps[:9], lambda d: hook_server.received.is_set(),
              ROLLBACK_NOTIFY_URLS=hook_server.url)
    finally:
        hook_server.close()

    final = start(target, "run", "fase2", "--yes", folder=out, name="12-final")
    assert final.wait() == 0, final.output()[-3000:]
    assert f"resuming run {run_id}" in final.output()
    assert "took over a stale lock" in final.output()

    # the run: one, finished, under its first id
    record = target.only_run("fase2")
    assert record.run_id == run_id and record.state == "succeeded"
    assert record.completed == steps

    # the journal tells the story: each dead process and the step it died in, each step done once
    resumed = resume_events(target)
    assert [e["previous"]["pid"] for e in resumed] == killed
    assert [e["previous"]["step"] for e in resumed] == [
        "baseline", "backup", "code", "build", "database", "database", "database", "database",
        "deploy", "gate", "communicate"]
    assert {e["previous"]["state"] for e in resumed} == {"killed"}
    events = journal_events(next(target.logs.glob("*/journal.jsonl")))
    finished = [e["step"] for e in events if e["event"] == "step_finished"]
    assert finished.count("preflight") == len(killed) + 1  # pre-flight runs on every attempt
    assert sorted(s for s in finished if s != "preflight") == sorted(steps[1:])
    conversion = record.facts["conversion"]
    assert conversion["converted"] == len(ids)
    assert conversion["batches"] == len(progress_rows(box, run_id)) >= batches
    assert conversion["resumed_after_batch"] == depths[-1] >= conversion["batches"] - 1
    postmortem = (Path(record.facts["communication"]["dir"]) / "postmortem.md").read_text()
    assert "killed during database" in postmortem

    # the batches: contiguous, each key converted exactly once
    rows = progress_rows(box, run_id)
    assert [b for b, _ in rows] == list(range(1, conversion["batches"] + 1))
    assert sum(n for _, n in rows) == len(ids)

    # the backup: every key, as it was, in the table and the CSV
    backup = record.facts["fase2_backup"]
    table = sql.Identifier(backup["schema"], backup["table"])
    rows_of = box.sql(sql.SQL("SELECT id::text, scope_type FROM {} ORDER BY id").format(table))
    assert rows_of == [(key, "branch") for key in ids]
    with psycopg.connect(box.database_url) as conn:  # its table still matches its checksum
        assert branch_keys.verify_backup(conn, backup["schema"], run_id)["row_count"] == len(ids)
    csv_path = Path(backup["csv"])
    with csv_path.open(newline="") as handle:
        assert sorted(r["id"] for r in csv.DictReader(handle)) == ids
    assert hashlib.sha256(csv_path.read_bytes()).hexdigest() == backup["csv_sha256"]
    assert csv_path.stat().st_mode & 0o777 == 0o600

    # every backed-up key is there, as active as before, and tenant-scoped
    now = dict(box.sql("SELECT id::text, is_active FROM api_keys WHERE id::text = ANY(%s) "
                       "AND scope_type = 'tenant' AND branch_id IS NULL", (ids,)))
    assert now == before

    # the same api_keys as the uninterrupted run's
    assert reference.wait() == 0, reference.output()[-3000:]
    assert keys_checksum(box) == keys_checksum(twin)

    end = state_of(box)
    assert end.branch_keys == 0 and end.dirty == "" and end.served == end.head
    assert not (box.repo / ".git" / "rollback.lock").exists()


# --- FASE 3 option 2: killed while dropping -----------------------------------------------------


def present(box: Sandbox, name: str) -> bool:
    rows = box.sql("SELECT (SELECT count(*) FROM pg_class WHERE relname = %(n)s) + "
                   "(SELECT count(*) FROM pg_proc WHERE proname = %(n)s)", {"n": name})
    return bool(rows[0][0])


def sessions(box: Sandbox, application_name: str) -> int:
    return int(box.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                       (application_name[:63],))[0][0])


def invalid_indexes(box: Sandbox) -> list[str]:
    return [r[0] for r in box.sql("SELECT c.relname FROM pg_index i JOIN pg_class c ON "
                                  "c.oid = i.indexrelid WHERE NOT i.indisvalid")]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fase3_option_2_killed_while_dropping_objects_resumes_and_drops_them_all(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    box, out = fresh_sandbox, tmp_path / "out"
    target = make_target(box, tmp_path / "t", run=BATCHES)
    killed = []

    def crash(name: str, blocker: str, until: Any) -> None:
        with row_locked(box, blocker):
            driver = start(target, "run", "fase3", "--db-option", "2", "--yes", folder=out, name=name)
            wait_until(lambda: until() and waiting_on_a_lock(box, application(target)),
                       f"{name}: a DROP waiting for the test's lock", driver, timeout=120)
            kill(driver)
            # the server ends the dead client's sessions once its DROP times out on our lock;
            # released earlier, that DROP would still complete: the state would be a race
            wait_until(lambda: not sessions(box, application(target)), "its sessions to end")
        killed.append(driver.pid)
        assert_killed_in(target.only_run("fase3"),
                         ["preflight", "baseline", "backup", "code", "build", "deploy", "publish"],
                         "database")

    # dependants first: the views, the functions, the materialized view, then the indexes
    crash("1-second-view", "LOCK TABLE vw_fase3_index_usage IN ACCESS SHARE MODE",
          lambda: not present(box, "vw_cache_freshness"))
    assert present(box, "vw_fase3_index_usage") and present(box, "validate_fase3_indexes")
    crash("2-materialized-view", "SELECT count(*) FROM mv_branch_performance_metrics",
          lambda: not present(box, "validate_fase3_indexes"))
    assert present(box, "mv_branch_performance_metrics")
    # a reader of appointments: DROP INDEX CONCURRENTLY marks the index invalid, then waits for it
    crash("3-index-half-dropped", "SELECT count(*) FROM appointments",
          lambda: not present(box, "idx_api_keys_hash_active"))
    assert present(box, "idx_appointments_branch_covering")
    assert invalid_indexes(box) == ["idx_appointments_branch_covering"]  # marked invalid, not gone

    final = start(target, "run", "fase3", "--yes", folder=out, name="4-final")
    assert final.wait() == 0, final.output()[-3000:]
    record = target.only_run("fase3")
    assert record.state == "succeeded" and record.options["db_option"] == 2
    assert fase3_objects_present(box) == 0 and invalid_indexes(box) == []

    # the journal: every object the run dropped, over all its attempts, and each crash
    dropped = record.facts["fase3_dropped"]
    assert sorted(o.split("(")[0] for o in dropped) == sorted(FASE3_OBJECTS)
    assert dropped[:2] == ["vw_cache_freshness", "vw_fase3_index_usage"]
    resumed = resume_events(target)
    assert [(e["previous"]["pid"], e["previous"]["step"]) for e in resumed] == \
        [(pid, "database") for pid in killed]

    # the backup is complete: a restore brings back every object, valid
    saved = Path(record.facts["fase3_backup"]["file"])
    assert saved.stat().st_mode & 0o777 == 0o600
    restored = target.rollback("restore", "fase3", "--run", record.run_id, "--yes")
    assert restored.returncode == 0, restored.stderr
    assert fase3_objects_present(box) == len(FASE3_OBJECTS) and invalid_indexes(box) == []


# --- SIGTERM during the gate ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_during_the_gate_stops_its_pytest_too_and_exits_130(target: Target,
                                                                     tmp_path: Path) -> None:
    driver = start(target, "run", "fase1", "--yes", folder=tmp_path, name="run")
    checks = wait_until(lambda: gate_checks(driver), "the gate's pytest", driver)
    with target.box.chaos(latency_ms=20_000, paths=["/v1"]):  # checks that print nothing for long
        time.sleep(1)
        driver.process.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=30) == 130, driver.output()
        wait_gone(checks, timeout=3)
    assert "interrupted during validation gate" in driver.stderr.read_text()
    record = target.only_run("fase1")
    assert record.state == "interrupted" and record.interrupted_step == "gate"
    assert not (target.box.repo / ".git" / "rollback.lock").exists()


# --- the database sessions ended from the server side ---------------------------------------------


def only_error_line(driver: Driver) -> str:
    """The driver's stderr: exactly one line, `error: ...`, and no traceback anywhere."""
    __tracebackhide__ = True
    lines = [line for line in driver.stderr.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in driver.output()
    return lines[0]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sessions_ended_mid_conversion_stop_the_run_with_one_line_and_it_resumes(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    box = fresh_sandbox
    target = make_target(box, tmp_path / "t", run=BATCHES)
    ids = [r[0] for r in box.sql("SELECT id::text FROM api_keys WHERE scope_type = 'branch' ORDER BY id")]
    lock_key = "SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE"

    size = BATCHES["batch_size"]

    def cut(name: str, batch: int, sessions: str) -> tuple[int, str]:
        """Run until the walk is blocked on a key `batch` batches in (fewer should a busy machine
        make a batch overrun its lock budget and the walk take smaller ones), then end the run's
        `sessions` on the server; returns the batches committed and the run's one error line."""
        runs = target.runs()
        done = len(progress_rows(box, runs[0].run_id)) if runs else 0
        order = walk_order(box, runs[0].run_id) if runs else [r[0] for r in box.sql(
            "SELECT id::text FROM api_keys WHERE scope_type = 'branch' ORDER BY ctid")]
        key = order[min((batch - done) * size, len(order) - 1)]
        with row_locked(box, lock_key, (key,)):
            driver = start(target, "run", "fase2", "--yes", folder=tmp_path, name=name)
            wait_until(lambda: list(target.logs.glob("*/journal.jsonl")), "a journal", driver)
            app = application(target)
            wait_until(lambda: waiting_on_a_lock(box, app), f"the walk blocked at {key}", driver)
            depth = len(progress_rows(box, run_id_of(target)))
            ended = box.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE application_name LIKE %s AND {sessions}", (app + "%",))
            assert ended, f"no session matched {sessions}"
            # the run stops while the batch's row is still locked: it does not wait for the row
            # (nor retry into it) once its sessions are gone. 60 s only bounds a hung run
            assert driver.wait(timeout=60) == 1, driver.output()[-2000:]
        failed = target.only_run("fase2")
        assert failed.state == "failed" and failed.failed_step == "database" and failed.resumable
        rows = progress_rows(box, run_id_of(target))
        assert done <= depth == len(rows), (done, depth, len(rows))  # nothing half-done
        left = box.sql("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'")[0][0]
        assert left == len(ids) - sum(n for _, n in rows), "keys converted and progress rows disagree"
        return depth, only_error_line(driver)

    # the advisory lock's session alone: the run must not go on unprotected
    first, line = cut("1-lock-session", 2, "state = 'idle'")
    assert "lost the database lock" in line and "rollback run fase2" in line
    # every session of the run, as a restarting server does. A lock timeout longer than the test
    # keeps the batch inside its blocked statement, so that its ended session is what it meets:
    # with the short one the end can land between two attempts (more often on a loaded
    # machine), where the lost lock is found first
    make_target(box, tmp_path / "t", run={**BATCHES, "lock_timeout_ms": 120_000})
    second, line = cut("2-all-sessions", 4, "true")
    assert "lost the database connection during the key conversion" in line
    assert "rollback run fase2" in line
    assert 0 < first < second, (first, second)  # each cut deeper in the walk than the last
    make_target(box, tmp_path / "t", run=BATCHES)

    run_id = run_id_of(target)
    resumed = target.rollback("run", "fase2", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run {run_id}" in resumed.stdout
    assert f"continuing after batch {second}" in resumed.stdout
    assert [(e["previous"]["state"], e["previous"]["step"]) for e in resume_events(target)] == \
        [("failed", "database"), ("failed", "database")]
    rows = progress_rows(box, run_id)
    assert [b for b, _ in rows] == list(range(1, len(rows) + 1)) and sum(n for _, n in rows) == len(ids)
    assert state_of(box).branch_keys == 0
