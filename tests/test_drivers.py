"""`rollback plan / run / restore / history` on real sandboxes, as an operator types them.

Every test gets its own logs and reports folders and a copy of the sandbox's rollback.toml
with a fast gate (one green pass needed). Tests that change the target use `fresh_sandbox`;
tests whose whole point is that nothing changes use the shared `sandbox`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg
import pytest

from rollback.runs.journal import RunRecord
from rollback.runs.locks import DatabaseLock, RepoLock
from sandbox import control
from tests.conftest import ROOT, Sandbox
from tests.targets import (
    FASE3_OBJECTS,
    Target,
    fase3_objects_present,
    git,
    make_target,
    run_in_terminal,
    state_of,
)


@pytest.fixture
def target(fresh_sandbox: Sandbox, tmp_path: Path) -> Target:
    return make_target(fresh_sandbox, tmp_path / "t")


# --- what the target looks like ------------------------------------------------------------------


def backup_ids(box: Sandbox, record: RunRecord) -> list[str]:
    backup = record.facts["fase2_backup"]
    rows = box.sql(f'SELECT id::text FROM "{backup["schema"]}"."{backup["table"]}" ORDER BY id')
    return [r[0] for r in rows]


def assert_plan_matches_run(plan: dict[str, Any], record: RunRecord, box: Sandbox) -> None:
    """What `plan` said is what `run` did: steps, commits, commands, keys, objects."""
    __tracebackhide__ = True
    steps = {s["name"]: s for s in plan["steps"]}
    assert list(steps) == record.completed, f"plan steps {list(steps)} != run steps {record.completed}"
    facts = record.facts
    assert steps["code"]["data"]["commits"] == [c["sha"] for c in facts["commits_reverted"]]
    assert steps["code"]["data"]["branch"].rsplit("-", 1)[0] == facts["rollback_branch"].rsplit("-", 1)[0]
    assert steps["build"]["data"]["command"] == facts["build"]["command"]
    if record.phase == "fase2":
        assert steps["database"]["data"]["key_ids"] == backup_ids(box, record)
        assert steps["database"]["data"]["keys"] == facts["conversion"]["converted"]
    if record.phase == "fase3":
        assert steps["database"]["data"]["objects"] == facts["fase3_dropped"]


# --- the full way back -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(240)
def test_fase3_then_fase2_then_fase1_roll_back_with_green_gates(target: Target) -> None:
    box = target.box
    for phase, extra in (("fase3", ["--db-option", "2"]), ("fase2", []), ("fase1", [])):
        planned = target.rollback("plan", phase, *extra, "--json")
        assert planned.returncode == 0, planned.stderr
        done = target.rollback("run", phase, "--yes", *extra)
        assert done.returncode == 0, f"{phase}: {done.stderr}\n{done.stdout[-3000:]}"
        record = target.only_run(phase)
        assert record.state == "succeeded" and record.gate and record.gate["passed"]
        assert Path(record.gate["report"]).is_file() and record.gate["report"].endswith(".html")
        assert_plan_matches_run(json.loads(planned.stdout), record, box)
        assert (target.logs / f"rollback-{phase}-{record.run_id.split('-')[0]}.log").is_file()

    assert control.phases_present(box.repo) == []
    end = state_of(box)
    assert end.branch_keys == 0 and end.fase3_objects == 0 and end.dirty == ""
    assert end.served == end.head
    key = box.keys["tenant"]
    legacy = httpx.get(f"{box.api_base_url}/v1/leads", params={"branch_id": "not-a-uuid"},
                       headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert legacy.status_code == 200 and "X-Filtered-Branch-ID" not in legacy.headers

    again = target.rollback("run", "fase1", "--yes")
    assert again.returncode == 0 and "already rolled back" in again.stdout

    history = target.rollback("history")
    assert history.returncode == 0
    assert history.stdout.count("succeeded") == 3 and "gate passed" in history.stdout


def test_no_secret_reaches_logs_journals_or_messages(target: Target) -> None:
    box = target.box
    done = target.rollback("run", "fase2", "--yes")
    assert done.returncode == 0, done.stderr
    password = psycopg.conninfo.conninfo_to_dict(box.database_url).get("password")
    secrets = [box.keys["tenant"], box.keys["branch"], box.keys["revoked"], str(password)]
    record = target.only_run("fase2")
    files = [p for p in target.logs.rglob("*") if p.is_file()]
    files += [p for p in (target.reports / record.run_id / "communication").rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        text = path.read_text(errors="replace")
        leaked = [s[:6] + "…" for s in secrets if s and s in text]
        assert not leaked, f"{path} holds secrets starting {leaked}"
    for output in (done.stdout, done.stderr):
        assert not any(s and s in output for s in secrets)
    csv = Path(record.facts["fase2_backup"]["csv"])
    assert (csv.stat().st_mode & 0o777) == 0o600


# --- nothing changes without a confirmed run --------------------------------------------------------


def test_plan_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path)
    before = state_of(sandbox)
    for args in (["fase1"], ["fase2"], ["fase3", "--db-option", "2"]):
        result = target.rollback("plan", *args)
        assert result.returncode == 0, result.stderr
    assert state_of(sandbox) == before
    assert not target.logs.exists() and not target.reports.exists()
    assert not (sandbox.repo / ".git" / "rollback.lock").exists()


def test_plan_lists_commits_keys_per_tenant_and_objects(sandbox: Sandbox, tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path)
    fase2 = target.rollback("plan", "fase2").stdout
    branch_keys = sandbox.sql("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'")[0][0]
    assert f"convert {branch_keys} branch keys" in fase2
    assert "Sandbox branch test key" in fase2 and "(sandbox-000, 3 branches)" in fase2
    assert "FASE 2: branch-specific API keys" in fase2
    fase3 = target.rollback("plan", "fase3", "--db-option", "2").stdout
    assert all(name in fase3 for name in FASE3_OBJECTS)
    assert "DROP INDEX CONCURRENTLY idx_leads_branch_search" in fase3


def test_commit_option_overrides_the_trailer_search(sandbox: Sandbox, tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path)
    baseline = git(sandbox.repo, "rev-list", "--max-parents=0", "HEAD")
    planned = json.loads(target.rollback("plan", "fase1", "--commit", baseline[:10], "--json").stdout)
    code = next(s for s in planned["steps"] if s["name"] == "code")
    assert code["data"]["commits"] == [baseline]
    unknown = target.rollback("plan", "fase1", "--commit", "0badc0de")
    assert unknown.returncode == 2 and "no such commit" in unknown.stderr


def test_commit_option_naming_another_phases_commit_is_refused(sandbox: Sandbox,
                                                                tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path)
    fase2 = git(sandbox.repo, "log", "--format=%H", "--grep", "Rollback-Phase: fase2")
    refused = target.rollback("plan", "fase1", "--commit", fase2[:10])
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "carries fase2 too" in refused.stderr and "without --commit" in refused.stderr


def test_run_without_a_terminal_needs_yes(sandbox: Sandbox, tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path)
    before = state_of(sandbox)
    result = target.rollback("run", "fase2")
    assert result.returncode == 2 and "pass --yes" in result.stderr
    assert state_of(sandbox) == before
    assert not list(target.logs.glob("*/journal.jsonl"))


def test_any_other_confirmation_cancels_with_nothing_changed(sandbox: Sandbox, tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path)
    before = state_of(sandbox)
    code, output, _ = run_in_terminal(target, ["run", "fase2"], "rollback fase2")
    assert "Type ROLLBACK FASE2 to proceed" in output
    assert code == 1 and "cancelled" in output and "nothing was changed" in output
    assert state_of(sandbox) == before
    assert not list(target.logs.glob("*/journal.jsonl"))
    assert not (sandbox.repo / ".git" / "rollback.lock").exists()


def test_a_second_run_is_refused_while_another_holds_the_locks(sandbox: Sandbox, tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path)
    before = state_of(sandbox)
    repo_lock = RepoLock(sandbox.repo, "20260122T101500Z-fase1", "fase1")
    repo_lock.acquire()
    try:
        result = target.rollback("run", "fase1", "--yes")
    finally:
        repo_lock.release()
    assert result.returncode == 1
    assert "locked by run 20260122T101500Z-fase1 (pid" in result.stderr
    db_lock = DatabaseLock(sandbox.database_url, "20260122T101500Z-fase2")
    db_lock.acquire()
    try:
        result = target.rollback("run", "fase2", "--yes")
    finally:
        db_lock.release()
    assert result.returncode == 1
    assert "database is locked by rollback 20260122T101500Z-fase2" in result.stderr
    assert state_of(sandbox) == before


# --- failures leave the repository and the database consistent ---------------------------------------


@pytest.mark.slow
def test_revert_conflict_aborts_and_names_files_and_later_phases(target: Target) -> None:
    box = target.box
    hotfix = box.repo / "app/ext/fase1_branch_filter.py"
    hotfix.write_text(hotfix.read_text() + "\n# hotfix made after FASE 3 shipped\n")
    git(box.repo, "commit", "-qam", "Hotfix the branch filter")
    before = state_of(box)
    result = target.rollback("run", "fase1", "--yes")
    assert result.returncode == 1
    assert "conflicts in app/ext/fase1_branch_filter.py" in result.stderr
    assert "depend on fase1: fase2, fase3" in result.stderr
    assert state_of(box) == before
    record = target.only_run("fase1")
    assert record.state == "failed" and record.failed_step == "code"


@pytest.mark.slow
def test_failing_build_stops_before_deploy_with_nothing_changed(target: Target) -> None:
    box = target.box
    broken = make_target(box, target.config.parent, target={
        "build_command": f"{sys.executable} -c \"print('app/x.py: SyntaxError'); raise SystemExit(3)\""})
    before = state_of(box)
    result = broken.rollback("run", "fase2", "--yes")
    assert result.returncode == 1
    assert "exited with 3" in result.stderr and "app/x.py: SyntaxError" in result.stderr
    assert "nothing was deployed" in result.stderr
    assert state_of(box) == before  # repository back, old version served, keys untouched
    failed = target.only_run("fase2")
    assert failed.state == "failed" and failed.failed_step == "build" and not failed.changed

    time.sleep(1)  # a run id is a UTC second
    fixed = make_target(box, target.config.parent).rollback("run", "fase2", "--yes")
    assert fixed.returncode == 0, fixed.stderr
    assert "resuming" not in fixed.stdout  # it put everything back: the next run is a new one
    assert [r.state for r in target.runs()] == ["failed", "succeeded"]
    assert state_of(box).branch_keys == 0


@pytest.mark.slow
def test_deploy_that_never_reports_its_version_fails_and_takes_the_revert_back(target: Target) -> None:
    box = target.box
    silent = make_target(box, target.config.parent, target={"deploy_command": "true",
                                                            "deploy_timeout_s": 2})
    before = state_of(box)
    result = silent.rollback("run", "fase1", "--yes")
    assert result.returncode == 1
    assert "did not report" in result.stderr and "still serves the original" in result.stderr
    assert "nothing changed" in result.stderr
    assert state_of(box) == before
    assert target.only_run("fase1").failed_step == "deploy"


@pytest.mark.slow
def test_fase2_converts_the_keys_before_the_deploy_so_a_failed_deploy_says_how_to_undo(
        target: Target) -> None:
    box = target.box
    silent = make_target(box, target.config.parent, target={"deploy_command": "true",
                                                            "deploy_timeout_s": 2})
    result = silent.rollback("run", "fase2", "--yes")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "still serves the original" in line and "nothing changed" not in line, line
    failed = target.only_run("fase2")
    assert f"rollback restore fase2 --run {failed.run_id}" in line, line
    # the conversion ran before the deploy: the code still live (FASE 2's) reads tenant keys
    assert failed.failed_step == "deploy" and "database" in failed.completed
    assert state_of(box).branch_keys == 0 and state_of(box).branch == failed.facts["rollback_branch"]
    resumed = make_target(box, target.config.parent).rollback("run", "fase2", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "Convert branch keys: done before, skipped" in resumed.stdout
    assert target.only_run("fase2").state == "succeeded"


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP endpoint for Apprise's json:// notifications, and what it received."""
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"json://127.0.0.1:{server.server_port}/hook", _Hook.received
    server.shutdown()


@pytest.mark.slow
def test_failing_gate_fails_the_run_says_what_next_and_notifies(
        target: Target, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    box = target.box
    url, received = webhook
    quick = make_target(box, target.config.parent, gate={"deadline_s": 1})
    with box.chaos(error_rate=1.0, paths=["/v1/leads"]):
        result = quick.rollback("run", "fase2", "--yes", ROLLBACK_NOTIFY_URLS=url)
    assert result.returncode == 1
    assert "gate failed" in result.stderr and "Next:" in result.stderr
    assert "rollback restore fase2 --run" in result.stderr
    record = target.only_run("fase2")
    assert record.state == "failed" and record.failed_step == "gate"
    assert record.gate and not record.gate["passed"] and Path(record.gate["report"]).is_file()
    incidents = Path(record.facts["communication"]["dir"]) / "slack_incidents.md"
    assert "validation FAILING" in incidents.read_text()
    assert received and "NEEDS ATTENTION" in received[0]["title"]
    assert url not in (target.logs / record.run_id / "journal.jsonl").read_text()
    # consistent: the reverted code is what runs, every backed-up key is converted, none left
    now = state_of(box)
    assert now.dirty == "" and now.served == now.head == record.facts["new_head"]
    assert now.branch_keys == 0
    assert record.facts["conversion"]["converted"] == len(backup_ids(box, record))


@pytest.mark.slow
def test_fase3_option_1_keeps_the_database_objects(target: Target) -> None:
    done = target.rollback("run", "fase3", "--yes")
    assert done.returncode == 0, done.stderr
    assert fase3_objects_present(target.box) == len(FASE3_OBJECTS)
    record = target.only_run("fase3")
    assert record.options["db_option"] == 1 and record.gate and record.gate["passed"]
    context = json.loads(Path(record.gate["run_context"]).read_text())
    assert context["fase3_db_option"] == 1 and len(context["fase3_objects"]) == len(FASE3_OBJECTS)
    cache = httpx.get(f"{target.box.api_base_url}/v1/branches", timeout=10,
                      headers={"Authorization": f"Bearer {target.box.keys['tenant']}"})
    assert "X-Cache" not in cache.headers


# --- undo ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_restore_fase2_returns_api_keys_to_their_checksum_before_the_rollback(target: Target) -> None:
    box = target.box
    before = state_of(box).keys_checksum
    assert target.rollback("run", "fase2", "--yes").returncode == 0
    assert state_of(box).keys_checksum != before
    run_id = target.only_run("fase2").run_id
    restored = target.rollback("restore", "fase2", "--run", run_id, "--yes")
    assert restored.returncode == 0, restored.stderr
    assert "equals the backup's" in restored.stdout
    assert state_of(box).keys_checksum == before
    key_hashes = box.sql("SELECT count(*), count(DISTINCT key_hash) FROM api_keys")[0]
    assert key_hashes[0] == key_hashes[1]  # no row inserted twice (the originals' \copy did)
    again = target.rollback("restore", "fase2", "--run", run_id, "--yes")
    assert again.returncode == 0 and state_of(box).keys_checksum == before


@pytest.mark.slow
def test_restore_fase3_recreates_every_dropped_object(target: Target) -> None:
    box = target.box
    assert target.rollback("run", "fase3", "--yes", "--db-option", "2").returncode == 0
    assert fase3_objects_present(box) == 0
    run_id = target.only_run("fase3").run_id
    restored = target.rollback("restore", "fase3", "--run", run_id, "--yes")
    assert restored.returncode == 0, restored.stderr
    assert fase3_objects_present(box) == len(FASE3_OBJECTS)
    rows = box.sql("SELECT index_name, is_present, is_valid FROM validate_fase3_indexes()")
    assert len(rows) == 12 and all(present and valid for _, present, valid in rows)
    assert box.sql("SELECT count(*) FROM get_branch_stats_summary(%s, NULL)", (box.tenant_id,))[0][0] > 0


# --- interrupted runs ---------------------------------------------------------------------------------


def _wait_for_step(target: Target, step: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for journal in target.logs.glob("*/journal.jsonl"):
            if f'"event": "step_started", "step": "{step}"' in journal.read_text():
                return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"step {step} never started")


def _as_from_a_terminal() -> None:
    """The child's Ctrl-C as a terminal's foreground command has it. A test session started in
    the background by a shell without job control (`cmd &`) ignores SIGINT, and every process
    it starts inherits that: the run would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_next_run_resumes_under_the_same_run_id(target: Target) -> None:
    box = target.box
    deploy = tomllib.loads(target.config.read_text())["target"]["deploy_command"]
    # the deploy says it has begun, then waits until the test lets it go: the Ctrl-C lands in
    # the deploy command however slowly a busy machine lets the test send it
    begun, go = target.config.parent / "deploy-begun", target.config.parent / "deploy-may-go"
    slow = make_target(box, target.config.parent, target={
        "deploy_command": f"touch {begun}; while [ ! -e {go} ]; do sleep 0.1; done; {deploy}"})
    process = subprocess.Popen(slow.command("run", "fase2", "--yes"), cwd=ROOT, env=slow.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL, preexec_fn=_as_from_a_terminal)
    _wait_for_step(target, "deploy", process)
    deadline = time.monotonic() + 60
    while not begun.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "resume" in stderr
    interrupted = target.only_run("fase2")
    assert interrupted.state == "interrupted" and interrupted.interrupted_step == "deploy"
    assert not (box.repo / ".git" / "rollback.lock").exists()
    assert state_of(box).branch_keys == 0  # converted before the deploy, which was cut short

    go.touch()
    resumed = target.rollback("run", "fase2", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run {interrupted.run_id}" in resumed.stdout
    record = target.only_run("fase2")
    assert record.run_id == interrupted.run_id and record.state == "succeeded"
    end = state_of(box)
    assert end.branch_keys == 0 and end.served == end.head and end.dirty == ""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_run_mid_conversion_is_taken_over_and_continues_its_batches(target: Target) -> None:
    box = target.box
    small = make_target(box, target.config.parent,
                        run={"batch_size": 5, "lock_timeout_ms": 200, "batch_retries": 100,
                             "retry_backoff_s": 0.05})
    # the conversion walks the table in physical order: the 13th key it meets is in its third batch
    keys = [r[0] for r in box.sql("SELECT id FROM api_keys WHERE scope_type = 'branch' "
                                  "ORDER BY ctid")]
    blocked = keys[12]
    holder = psycopg.connect(box.database_url)
    holder.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (blocked,))
    try:
        process = subprocess.Popen(small.command("run", "fase2", "--yes"), cwd=ROOT,
                                   env=small.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        _wait_for_step(target, "database", process)
        deadline = time.monotonic() + 30
        while box.sql("SELECT count(*) FROM rollback_backup.fase2_progress")[0][0] < 2:
            assert time.monotonic() < deadline, "the first batches never committed"
            time.sleep(0.05)
        process.kill()  # SIGKILL: no handler, no journal line, the lock file stays behind
        process.communicate(timeout=10)
    finally:
        holder.rollback()
        holder.close()
    assert (box.repo / ".git" / "rollback.lock").exists()
    killed = target.only_run("fase2")
    assert killed.steps["database"]["state"] == "running"

    # a batch is one statement: the dead driver's session may still commit the one in flight
    deadline = time.monotonic() + 30
    while box.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                  (f"rollback {killed.run_id}",))[0][0]:
        assert time.monotonic() < deadline, "the dead driver's sessions never went away"
        time.sleep(0.05)
    committed = box.sql("SELECT count(*) FROM rollback_backup.fase2_progress")[0][0]
    resumed = small.rollback("run", "fase2", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert "took over a stale lock" in resumed.stdout and f"resuming run {killed.run_id}" in resumed.stdout
    assert committed >= 2 and f"continuing after batch {committed}" in resumed.stdout
    batches = box.sql("SELECT batch, converted FROM rollback_backup.fase2_progress "
                      "WHERE run_id = %s ORDER BY batch", (killed.run_id,))
    assert [b for b, _ in batches] == list(range(1, len(batches) + 1))
    assert sum(n for _, n in batches) == len(keys)
    assert state_of(box).branch_keys == 0
    assert target.only_run("fase2").state == "succeeded"


def test_history_lists_nothing_before_the_first_run(sandbox: Sandbox, tmp_path: Path) -> None:
    result = make_target(sandbox, tmp_path).rollback("history")
    assert result.returncode == 0 and "no rollback runs yet" in result.stdout


def test_restore_of_an_unknown_run_is_bad_usage(sandbox: Sandbox, tmp_path: Path) -> None:
    result = make_target(sandbox, tmp_path).rollback("restore", "fase2", "--run", "nope", "--yes")
    assert result.returncode == 2 and "no run 'nope'" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_git_mode_pushes_the_deploy_branch_and_a_git_integrated_host_deploys_it(target: Target) -> None:
    box = target.box
    deploy = tomllib.loads(target.config.read_text())["target"]["deploy_command"]
    # the origin deploys what is pushed to it, as a git-integrated Vercel project does
    hook = box.dir / "origin.git" / "hooks" / "post-receive"
    hook.write_text(f"#!/bin/sh\nunset GIT_DIR\n(cd '{box.repo}' && {deploy}) >/dev/null 2>&1 &\n")
    hook.chmod(0o755)
    pushed = make_target(box, target.config.parent, target={"deploy_mode": "git"})
    planned = pushed.rollback("plan", "fase1")
    assert "push main to origin" in planned.stdout and "done by the deploy" in planned.stdout
    done = pushed.rollback("run", "fase1", "--yes")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    record = target.only_run("fase1")
    assert record.facts["published"]["remote"] == "origin"
    end = state_of(box)
    assert end.branch == "main" and end.served == end.head
    assert git(box.dir / "origin.git", "rev-parse", "main") == end.head
