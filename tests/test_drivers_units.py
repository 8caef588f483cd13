"""The drivers' parts on their own, without a sandbox: migration parsing, the journal, the
repository lock, history of reverts, redaction, the communication templates."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rollback.actions.branch_keys import AffectedKey, AffectedTenant, BatchSizer, Tid, lock_budget_s
from rollback.actions.fase3_objects import order_for_drop
from rollback.errors import StepFailed
from rollback.fase3 import (
    KIND_ORDER,
    DbObject,
    MigrationUnreadable,
    apply_migration,
    parse_migration_objects,
)
from rollback.profile import load_profile
from rollback.runs import comms, gitops
from rollback.runs.dbops import BatchPolicy
from rollback.runs.journal import Journal, replay, unfinished_run
from rollback.runs.locks import RepoLock, read_holder

#: the contract profile's manifest: phases found by their Rollback-Phase trailer
TRAILER_MANIFEST = {name: spec.find for name, spec in load_profile("contract").phases.items()}

ROOT = Path(__file__).resolve().parent.parent
FASE3_MIGRATION = ROOT / "sandbox/platform/fase3/migrations/030_fase3_performance.sql"


# --- FASE 3's migration --------------------------------------------------------------------------


def test_migration_parser_finds_every_fase3_object_of_the_contract() -> None:
    objects = parse_migration_objects(FASE3_MIGRATION.read_text())
    by_kind: dict[str, list[str]] = {}
    for obj in objects:
        by_kind.setdefault(obj.kind, []).append(obj.name)
    assert sorted(by_kind["index"]) == sorted([
        "idx_leads_branch_active_statuses", "idx_leads_branch_search",
        "idx_appointments_branch_scheduled", "idx_appointments_branch_scheduled_desc",
        "idx_staff_branches_branch_id", "idx_staff_branches_staff_id",
        "idx_leads_tenant_branch_created", "idx_appointments_tenant_branch_scheduled",
        "idx_leads_branch_covering", "idx_appointments_branch_covering",
        "idx_api_keys_hash_active", "idx_api_keys_branch_scope"])
    assert sorted(by_kind["function"]) == sorted([
        "validate_fase3_indexes", "get_low_stock_items", "get_branch_stats_summary",
        "refresh_branch_performance_metrics"])
    assert sorted(by_kind["view"]) == ["vw_cache_freshness", "vw_fase3_index_usage"]
    assert by_kind["materialized view"] == ["mv_branch_performance_metrics"]


def test_migration_parser_ignores_names_in_comments_strings_and_bodies() -> None:
    text = """
    -- CREATE INDEX idx_in_a_comment ON t (a);
    /* CREATE VIEW vw_in_a_block_comment AS SELECT 1; */
    CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "Idx_Quoted" ON t (a);
    CREATE OR REPLACE FUNCTION f(p_a uuid, p_b timestamp with time zone DEFAULT now())
    RETURNS void LANGUAGE plpgsql AS $body$
    BEGIN
        EXECUTE 'CREATE INDEX idx_in_a_string ON t (b)';
        CREATE TEMP TABLE x AS SELECT 1;  -- CREATE VIEW vw_in_a_body
    END;
    $body$;
    CREATE MATERIALIZED VIEW IF NOT EXISTS app.mv_x AS SELECT 1;
    """
    objects = parse_migration_objects(text)
    assert [(o.kind, o.name) for o in objects] == [
        ("index", "Idx_Quoted"), ("function", "f"), ("materialized view", "app.mv_x")]
    assert objects[1].args == "uuid, timestamp with time zone"


def test_drop_order_puts_dependants_first() -> None:
    objects = parse_migration_objects(FASE3_MIGRATION.read_text())
    kinds = [o.kind for o in order_for_drop(objects, set())]
    assert kinds == sorted(kinds, key=KIND_ORDER.__getitem__)
    names = [o.name for o in order_for_drop(objects, set())]
    # the view reading the materialized view goes before it
    assert names.index("vw_cache_freshness") < names.index("mv_branch_performance_metrics")


def test_migration_parser_follows_drops_and_renames_as_the_files_apply() -> None:
    first = """
    CREATE INDEX idx_a ON leads (a);
    CREATE INDEX idx_b ON leads (b);
    CREATE FUNCTION f(p uuid, OUT total int) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
    CREATE FUNCTION f(p text) RETURNS int LANGUAGE sql AS $$ SELECT 2 $$;
    CREATE VIEW vw_old AS SELECT 1;
    """
    later = """
    DROP INDEX IF EXISTS idx_a;
    DROP FUNCTION f(text);
    ALTER VIEW vw_old RENAME TO vw_new;
    CREATE OR REPLACE FUNCTION f(p uuid, OUT total int) RETURNS int LANGUAGE sql AS $$ SELECT 3 $$;
    """
    objects = apply_migration(later, apply_migration(first))
    assert [o.label for o in objects] == ["idx_b", "vw_new", "f(uuid)"]


def test_a_migration_postgres_cannot_parse_is_refused_not_guessed() -> None:
    with pytest.raises(MigrationUnreadable, match="syntax error"):
        apply_migration("CREATE INDEX idx_x ON leads (a;\n")


def test_drop_order_follows_the_catalogs_dependencies_before_kinds() -> None:
    mv = DbObject("materialized view", "mv")
    idx = DbObject("index", "idx_on_mv")
    fn = DbObject("function", "reads_view", "")
    view = DbObject("view", "vw")
    # an index on the materialized view, a view a function reads, a view on the function
    edges = {(idx, mv), (fn, view), (view, fn)}  # a cycle falls back to kinds
    order = order_for_drop([mv, idx, view, fn], edges | {(view, mv)})
    assert order.index(idx) < order.index(mv) and order.index(view) < order.index(mv)
    assert order_for_drop([mv, idx], set()) == [mv, idx]  # no edge: kinds say views/mviews first


# --- the journal ---------------------------------------------------------------------------------


def _journal(tmp_path: Path, run_id: str = "20260122T101500Z-fase2") -> Journal:
    journal = Journal.create(tmp_path, run_id)
    journal.write("run_started", phase="fase2", options={"phase": "fase2", "db_option": 1,
                                                         "commit": None}, pid=1, host="h")
    return journal


def test_journal_replays_completed_steps_and_their_facts(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.write("step_started", step="backup")
    journal.write("step_finished", step="backup", duration_s=0.5, summary="ok",
                  facts={"fase2_backup": {"table": "t"}})
    journal.write("step_started", step="code")
    journal.write("step_progress", step="code", facts={"rollback_branch": "rollback/x"})
    record = replay(journal.path)
    assert record.state == "running" and record.completed == ["backup"]
    assert record.facts["fase2_backup"] == {"table": "t"}
    assert record.facts["rollback_branch"] == "rollback/x"
    assert record.steps["code"]["state"] == "running"
    assert record.resumable


def test_journal_with_a_torn_last_line_still_replays(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.write("step_finished", step="baseline", facts={})
    with journal.path.open("a") as handle:
        handle.write('{"ts": "2026-01-22T10:15:01Z", "event": "step_fini')  # killed mid-write
    record = replay(journal.path)
    assert record.completed == ["baseline"]


def test_undone_step_is_no_longer_completed_and_forgets_its_facts(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.write("step_finished", step="code", facts={"rollback_branch": "b", "new_head": "x"})
    journal.write("step_undone", step="code", reason="build failed",
                  forget=["rollback_branch", "new_head"])
    journal.write("step_failed", step="build", error="exit 1")
    journal.write("run_finished", state="failed", duration_s=1.0)
    record = replay(journal.path)
    assert "code" not in record.completed and "rollback_branch" not in record.facts
    assert record.state == "failed" and record.failed_step == "build"
    assert not record.changed  # its revert was taken back: over, the next run starts afresh
    assert unfinished_run(tmp_path, "fase2") is None


def test_a_run_that_failed_with_its_change_in_place_is_resumed(tmp_path: Path) -> None:
    from rollback.runs.journal import half_done_elsewhere

    journal = _journal(tmp_path)
    journal.write("step_finished", step="code", facts={"rollback_branch": "b"})
    journal.write("step_finished", step="deploy", facts={})
    journal.write("step_failed", step="gate", error="2 checks failed")
    journal.write("run_finished", state="failed", duration_s=1.0)
    record = unfinished_run(tmp_path, "fase2")
    assert record is not None and record.changed
    blocker = half_done_elsewhere(tmp_path, "fase1")  # blocks the runs of other phases
    assert blocker is not None and blocker.run_id == record.run_id
    assert half_done_elsewhere(tmp_path, "fase2") is None


def test_finished_run_is_not_resumed(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.write("run_finished", state="succeeded", duration_s=1.0)
    assert unfinished_run(tmp_path, "fase2") is None


def test_journal_files_are_private(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    assert (journal.path.stat().st_mode & 0o777) == 0o600
    assert (journal.path.parent.stat().st_mode & 0o777) == 0o700


def test_a_resumed_run_keeps_its_options_unless_others_are_given(tmp_path: Path) -> None:
    from rollback.config import load_settings
    from rollback.errors import UsageError
    from rollback.runs.core import Options
    from rollback.runs.driver import _resumable

    journal = Journal.create(tmp_path, "20260122T101500Z-fase3")
    journal.write("run_started", phase="fase3",
                  options={"phase": "fase3", "db_option": 2, "commit": None})
    journal.write("run_interrupted", step="deploy")
    settings = load_settings({}, overrides={"paths": {"logs_dir": str(tmp_path)}})
    bare = Options("fase3")  # `rollback run fase3`: the run's --db-option 2 holds
    record = _resumable(settings, bare, False, frozenset())
    assert record is not None and record.options["db_option"] == 2
    assert _resumable(settings, Options("fase3", 2), False, frozenset({"db_option"})) is not None
    with pytest.raises(UsageError, match="was started with --db-option 2"):
        _resumable(settings, Options("fase3", 1), False, frozenset({"db_option"}))
    assert _resumable(settings, bare, True, frozenset()) is None  # --new


# --- the repository lock -------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_repo_lock_names_its_holder_and_refuses_a_second_run(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    first = RepoLock(tmp_path, "run-a", "fase2")
    assert first.acquire() is None
    holder = read_holder(tmp_path)
    assert holder is not None
    assert {holder["run_id"], holder["pid"]} == {"run-a", os.getpid()}
    assert {"host", "since", "user"} <= set(holder)
    with pytest.raises(StepFailed, match=r"locked by run run-a \(pid \d+ on"):
        RepoLock(tmp_path, "run-b", "fase2").acquire()
    first.release()
    assert read_holder(tmp_path) is None


def test_stale_repo_lock_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    import socket

    (tmp_path / ".git" / "rollback.lock").write_text(json.dumps(
        {"run_id": "old-run", "pid": _dead_pid(), "host": socket.gethostname(), "since": "x"}))
    lock = RepoLock(tmp_path, "new-run", "fase1")
    note = lock.acquire()
    assert note is not None and "stale lock of run old-run" in note
    assert read_holder(tmp_path)["run_id"] == "new-run"  # type: ignore[index]
    lock.release()


# --- history of reverts --------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_revert_of_a_revert_brings_the_phase_back(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "config", "user.email", "t@example.invalid")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.txt").write_text("base\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "base")
    (tmp_path / "b.txt").write_text("fase1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "FASE 1\n\nRollback-Phase: fase1")
    phase_sha = _git(tmp_path, "rev-parse", "HEAD")
    _git(tmp_path, "revert", "--no-edit", "HEAD")
    history = gitops.read_history(tmp_path, TRAILER_MANIFEST)
    assert history.is_reverted(phase_sha) and history.phases_present() == []
    _git(tmp_path, "revert", "--no-edit", "HEAD")
    history = gitops.read_history(tmp_path, TRAILER_MANIFEST)
    assert not history.is_reverted(phase_sha) and history.phases_present() == ["fase1"]


# --- communication -------------------------------------------------------------------------------


def test_customer_email_names_the_tenants_keys_from_the_backup() -> None:
    tenant = AffectedTenant("t1", "Clínica Uno", "clinica-uno", 3, (
        AffectedKey("k1", "Branch POS integration", "AbCd", True, "b1", "Monterrey 1"),
        AffectedKey("k2", "Old kiosk", "WxYz", False, "b2", "Puebla 2")))
    env = comms.environment()
    text = env.get_template("customer_email_fase2.txt.j2").render(
        product="P", support_email="s@x", support_contact="s@x", run_id="r1",
        finished_at_text="2026-01-22 10:20 UTC", tenant=tenant)
    assert "Hello Clínica Uno" in text
    assert '"Branch POS integration" (ending in ...AbCd), formerly limited to branch "Monterrey 1"' in text
    assert "(inactive)" in text and "all 3 branches" in text


def test_every_template_renders_without_a_missing_fact() -> None:
    facts = {
        "product": "P", "support_email": "s@x", "support_contact": "s@x", "status_page_url": None,
        "help_url": "https://x", "run_id": "r1",
        "phase": "fase2", "phase_title": "FASE 2", "phase_public": "keys", "public_impact": "i",
        "status_title": "t", "operator": "ana", "host": "h", "started_at_text": "a",
        "finished_at_text": "b", "duration_text": "3 s", "commits": [{"sha": "a" * 40, "subject": "s"}],
        "rollback_branch": "rollback/fase2-x", "original_version": "o" * 40,
        "deployed_version": "d" * 40,
        "gate": {"passed": False, "attempts": 2, "passed_checks": 3, "failed_checks": ["x: y"],
                 "report": "r.html"},
        "succeeded": False, "baseline": {"p95_ms": {"/v1/leads": 12.0}, "error_rate": 0.0},
        "backup": {"schema": "s", "table": "t", "checksum": "c" * 64, "row_count": 2, "csv": "f"},
        "affected_tenants": [], "affected_keys": 0, "affected_active": 0, "db_option": 2,
        "dropped": ["x"], "log_path": "l", "timeline": [{"ts": "t", "text": "x"}],
        "endpoints": ["/v1/leads"],
    }
    facts["tenant"] = AffectedTenant("t1", "T", "t", 2, (
        AffectedKey("k1", "K", "AbCd", True, "b1", "B"),))
    env = comms.environment()
    for phase in ("fase1", "fase2", "fase3"):
        extra = ["in_app_notice_fase2.md"] if phase == "fase2" else []
        for name in [*comms.COMMON, f"customer_email_{phase}.txt", *extra]:
            for phases in ([phase], ["fase1", "fase2", "fase3"]):  # its own run; a whole commit
                assert env.get_template(name + ".j2").render(
                    {**facts, "phase": phase, "phases": phases}).strip()


def test_stamp_is_compact_utc() -> None:
    from rollback.runs.journal import stamp

    assert stamp(datetime(2026, 1, 22, 10, 15, tzinfo=UTC)) == "20260122T101500Z"


# --- a step on its own: RevertCode on a scratch repository -----------------------------------------


def _phase_repo(path: Path) -> list[str]:
    """A repository with a baseline and a FASE 1 of two commits; returns their shas."""
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.email", "t@example.invalid")
    _git(path, "config", "user.name", "t")
    (path / "app.py").write_text("base\n")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "baseline")
    shas = []
    for n in (1, 2):
        (path / f"fase1_part{n}.py").write_text(f"part {n}\n")
        _git(path, "add", "-A")
        _git(path, "commit", "-q", "-m", f"FASE 1 part {n}\n\nRollback-Phase: fase1")
        shas.append(_git(path, "rev-parse", "HEAD"))
    return shas


def _run_on(repo: Path, tmp_path: Path, record: object = None) -> object:
    from rollback.config import load_settings
    from rollback.runs.core import Options, Run, SilentUi

    settings = load_settings({}, overrides={"target": {"repo": str(repo)},
                                            "paths": {"logs_dir": str(tmp_path / "logs")}})
    return Run(settings, Options("fase1"), SilentUi(), record=record,  # type: ignore[arg-type]
               started=datetime(2026, 1, 22, 10, 15, tzinfo=UTC))


def test_revert_code_reverts_every_commit_of_the_phase_newest_first(tmp_path: Path) -> None:
    from rollback.runs.steps import RevertCode

    repo = tmp_path / "repo"
    first, second = _phase_repo(repo)
    run = _run_on(repo, tmp_path)
    done = RevertCode().run(run)  # type: ignore[arg-type]
    assert [c["sha"] for c in done.facts["commits_reverted"]] == [second, first]
    assert _git(repo, "branch", "--show-current") == "rollback/fase1-20260122T101500Z"
    log = _git(repo, "log", "--format=%B", "-2")
    assert f"This reverts commit {first}." in log and "Rollback-Run: 20260122T101500Z-fase1" in log
    assert "Rollback-Phase" not in log  # a revert is not mistaken for the phase itself
    assert gitops.read_history(repo, TRAILER_MANIFEST).phases_present() == []


def test_revert_code_resumed_after_a_kill_mid_revert_finishes_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rollback.runs.journal import RunRecord
    from rollback.runs.steps import RevertCode

    repo = tmp_path / "repo"
    first, second = _phase_repo(repo)
    run = _run_on(repo, tmp_path)
    real_revert = gitops.revert

    def killed_on_the_second(repo_: Path, commit: gitops.Commit, run_id: str) -> str:
        if commit.sha == first:  # staged but never committed: the process "dies" here
            _git(repo_, "revert", "--no-commit", commit.sha)
            raise KeyboardInterrupt
        return real_revert(repo_, commit, run_id)

    monkeypatch.setattr(gitops, "revert", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        RevertCode().run(run)  # type: ignore[arg-type]
    monkeypatch.setattr(gitops, "revert", real_revert)
    assert _git(repo, "status", "--porcelain")  # half-done: dirty
    record = RunRecord(run_id="20260122T101500Z-fase1", phase="fase1", path=tmp_path / "j",
                       facts=dict(run.facts), steps={"code": {"state": "running"}},  # type: ignore[attr-defined]
                       started_at=datetime(2026, 1, 22, 10, 15, tzinfo=UTC))
    done = RevertCode().run(_run_on(repo, tmp_path, record))  # type: ignore[arg-type]
    assert sorted(c["sha"] for c in done.facts["commits_reverted"]) == sorted([first, second])
    assert _git(repo, "status", "--porcelain") == ""
    reverts = _git(repo, "log", "--format=%s", "main..HEAD").splitlines()
    assert reverts == ['Revert "FASE 1 part 1"', 'Revert "FASE 1 part 2"']  # each exactly once


# --- FASE 2: the walk's batch sizes ---------------------------------------------------------------


def test_a_batch_over_its_lock_budget_makes_the_next_one_smaller_and_it_grows_back_to_the_limit() -> None:
    sizer = BatchSizer(limit=500, budget_s=0.2)
    assert sizer.size == 500
    sizer.measured(500, 0.8)  # four times over: halved at most, not cut to a quarter in one go
    assert sizer.size == 250
    sizer.measured(250, 0.25)
    assert sizer.size == 160  # 250 * 0.2 / 0.25, less a fifth to land under the budget
    sizer.measured(160, 0.15)  # within budget, over half of it: kept
    assert sizer.size == 160
    for _ in range(5):
        sizer.measured(sizer.size, 0.01)  # far under: doubled each time, never over the limit
    assert sizer.size == 500
    assert (sizer.smallest, sizer.largest) == (160, 500)


def test_a_batch_its_window_cut_short_shrinks_only_if_it_was_slow() -> None:
    sizer = BatchSizer(limit=500, budget_s=0.2)
    sizer.measured(40, 0.01)  # the window held 40 keys: nothing learnt about 500
    assert sizer.size == 500
    sizer.measured(100, 0.4)  # 100 keys already took twice the budget
    assert sizer.size == 50


def test_the_window_covers_twice_the_pages_the_batch_should_need() -> None:
    sizer = BatchSizer(limit=500, budget_s=0.2)
    sizer.walked(pages=36_000, keys=200_000)  # 1M keys, a fifth of them branch-scoped
    assert sizer.window() == math.ceil(500 * 0.18 * 2)
    sizer.walked(pages=0, keys=10)  # no page walked yet: never under 1/400 page a key
    assert sizer.window() == math.ceil(500 / 400 * 2)
    sizer.size = 1
    assert sizer.window() == 1  # and at least one page


def test_the_lock_budget_is_200_ms_or_a_quarter_of_the_lock_timeout() -> None:
    assert lock_budget_s(BatchPolicy(lock_timeout_ms=2000)) == 0.2
    assert lock_budget_s(BatchPolicy(lock_timeout_ms=200)) == 0.05


def test_a_tid_reads_and_orders_as_postgresql_does() -> None:
    tid = Tid.parse("(12,7)")
    assert (tid.page, tid.line, str(tid), str(tid.after())) == (12, 7, "(12,7)", "(12,8)")
    assert Tid(3) < Tid(3, 1) < Tid(3, 200) < Tid(4) and str(Tid(4)) == "(4,0)"
