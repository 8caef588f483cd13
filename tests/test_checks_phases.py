"""The phase checks against real rollbacks of fresh sandboxes: each passes after its rollback
(under --gate) and fails, naming the cause, when the rollback is missing or went wrong.

The rollbacks here are done by hand (git revert + SQL) with a run context written the way the
drivers write it, so that these tests prove the checks independently of the drivers.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from checks.run_context import Baseline, Fase2Backup, KeyCounts, RunContext
from rollback.validate import ValidationResult, run_validation

pytestmark = pytest.mark.slow

BACKUP_SCHEMA, BACKUP_TABLE = "rollback_backup", "api_keys_test_run"


def revert_phase(sandbox, phase: str) -> None:
    """Revert the phase's commit (found by its Rollback-Phase trailer) and deploy."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    commit = subprocess.run([*git, "log", "--format=%H", f"--grep=Rollback-Phase: {phase}"],
                            cwd=sandbox.repo, capture_output=True, text=True, check=True).stdout.split()[0]
    subprocess.run([*git, "revert", "--no-edit", commit], cwd=sandbox.repo, capture_output=True,
                   check=True)
    sandbox.deploy()


@contextlib.contextmanager
def altered(sandbox, change: str, restore: str) -> Iterator[None]:
    with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
        conn.execute(change)
    try:
        yield
    finally:
        with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
            conn.execute(restore)


def failed(result: ValidationResult, check: str, *fragments: str) -> None:
    __tracebackhide__ = True
    outcome = result.check(check)
    assert outcome.verdict == "fail", f"{check} is {outcome.verdict}; log:\n{result.log.read_text()[-3000:]}"
    for fragment in fragments:
        assert fragment in outcome.message, f"{fragment!r} not in {outcome.message!r}"


def all_passed(result: ValidationResult) -> None:
    __tracebackhide__ = True
    bad = {c.nodeid: c.message for c in result.checks if c.verdict in ("fail", "skip")}
    assert result.exit_code == 0 and not bad, bad or result.log.read_text()[-3000:]


def test_phase_checks_fail_while_the_phase_is_live(sandbox, tmp_path: Path) -> None:
    result = run_validation("all", reports_root=tmp_path, env=sandbox.env(),
                            extra_args=["-k", "test_fase1 or test_fase2 or test_fase3"])
    failed(result, "test_no_fase1_headers[leads]", "FASE 1 is still live on /v1/leads",
           "X-Branch-Filter-Warning")
    failed(result, "test_branch_filter_is_not_applied[leads]", "branch filter is still applied")
    failed(result, "test_legacy_params_get_200_and_own_data[foreign-branch]", "answered 403")
    failed(result, "test_legacy_params_get_200_and_own_data[garbage-branch]", "answered 400")
    failed(result, "test_no_branch_scoped_keys_remain", "keys are still branch-scoped")
    failed(result, "test_former_branch_key_reads_every_branch", "it is still branch-scoped for the API")
    failed(result, "test_no_cache_header[branches]", "X-Cache", "response cache is live")


def test_fase1_rollback_passes_the_fase1_gate(fresh_sandbox, tmp_path: Path) -> None:
    revert_phase(fresh_sandbox, "fase1")
    result = run_validation("fase1", reports_root=tmp_path, env=fresh_sandbox.env(), gate=True,
                            extra_args=["-k", "test_fase1"])
    all_passed(result)
    assert result.passed >= 10


def _roll_back_fase2(sandbox, context_path: Path) -> RunContext:
    """What the FASE 2 driver does: back up the branch keys, convert them, revert, deploy."""
    with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
        total, active = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE is_active) FROM api_keys").fetchone()
        conn.execute(f"CREATE SCHEMA {BACKUP_SCHEMA}")
        conn.execute(f"CREATE TABLE {BACKUP_SCHEMA}.{BACKUP_TABLE} AS "
                     "SELECT * FROM api_keys WHERE scope_type = 'branch'")
        rows = conn.execute(f"SELECT count(*) FROM {BACKUP_SCHEMA}.{BACKUP_TABLE}").fetchone()[0]
        conn.execute("UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL, "
                     "updated_at = now() WHERE scope_type = 'branch'")
    revert_phase(sandbox, "fase2")
    context = RunContext(
        run_id="test-fase2", phase="fase2",
        fase2_backup=Fase2Backup(schema=BACKUP_SCHEMA, table=BACKUP_TABLE, row_count=rows,
                                 key_counts_before=KeyCounts(total=total, active=active)),
    )
    context.write(context_path)
    return context


def test_fase2_rollback_passes_and_every_loss_is_caught(fresh_sandbox, tmp_path: Path) -> None:
    context_path = tmp_path / "run-context.json"
    context = _roll_back_fase2(fresh_sandbox, context_path)
    assert context.fase2_backup is not None and context.fase2_backup.row_count == 31

    def run() -> ValidationResult:
        return run_validation("fase2", reports_root=tmp_path, env=fresh_sandbox.env(), gate=True,
                              run_context=context_path, extra_args=["-k", "test_fase2"])

    all_passed(run())
    backup = f"{BACKUP_SCHEMA}.{BACKUP_TABLE}"
    victim = str(fresh_sandbox.sql(f"SELECT id FROM {backup} WHERE name = 'Branch POS integration' "
                                   "ORDER BY id LIMIT 1")[0][0])
    with altered(fresh_sandbox, f"DELETE FROM api_keys WHERE id = '{victim}'",
                 f"INSERT INTO api_keys SELECT * FROM {backup} WHERE id = '{victim}'; "
                 f"UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL WHERE id = '{victim}'"):
        lost = run()
    failed(lost, "test_converted_keys_still_exist", "1 keys of the backup", "no longer exist", victim)
    failed(lost, "test_key_counts_are_unchanged", "keys were lost or deactivated")
    with altered(fresh_sandbox, f"UPDATE api_keys SET name = 'renamed' WHERE id = '{victim}'",
                 f"UPDATE api_keys SET name = 'Branch POS integration' WHERE id = '{victim}'"):
        renamed = run()
    failed(renamed, "test_converted_keys_are_unchanged_but_for_scope", f"{victim}, name")
    with altered(fresh_sandbox, f"UPDATE api_keys SET is_active = false WHERE id = '{victim}'",
                 f"UPDATE api_keys SET is_active = true WHERE id = '{victim}'"):
        deactivated = run()
    failed(deactivated, "test_converted_keys_are_still_active", "now inactive or revoked", victim)
    failed(deactivated, "test_key_counts_are_unchanged", "active")
    with altered(fresh_sandbox, f"UPDATE api_keys SET scope_type = 'branch', branch_id = "
                 f"(SELECT branch_id FROM {backup} WHERE id = '{victim}') WHERE id = '{victim}'",
                 f"UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL WHERE id = '{victim}'"):
        unconverted = run()
    failed(unconverted, "test_no_branch_scoped_keys_remain", "1 keys are still branch-scoped", victim)
    with altered(fresh_sandbox, f"CREATE TABLE {backup}_copy AS SELECT * FROM {backup}; "
                 f"DELETE FROM {backup} WHERE id = '{victim}'",
                 f"INSERT INTO {backup} SELECT * FROM {backup}_copy WHERE id = '{victim}'; "
                 f"DROP TABLE {backup}_copy"):
        short = run()
    failed(short, "test_backup_holds_every_converted_key", "holds 30 rows, the run recorded 31")
    all_passed(run())  # everything put back


def test_fase2_checks_without_run_context_fail_only_under_the_gate(fresh_sandbox,
                                                                   tmp_path: Path) -> None:
    _roll_back_fase2(fresh_sandbox, tmp_path / "unused.json")
    relaxed = run_validation("fase2", reports_root=tmp_path, env=fresh_sandbox.env(),
                             extra_args=["-k", "test_fase2"])
    assert relaxed.exit_code == 0 and relaxed.skipped == 5
    gated = run_validation("fase2", reports_root=tmp_path, env=fresh_sandbox.env(), gate=True,
                           extra_args=["-k", "test_fase2"])
    failed(gated, "test_key_counts_are_unchanged", "--gate: required check skipped: no run context")


def test_fase3_rollback_option2_passes_and_leftovers_are_caught(fresh_sandbox,
                                                                tmp_path: Path) -> None:
    down = (fresh_sandbox.repo / "migrations" / "030_fase3_performance.down.sql").read_text()
    revert_phase(fresh_sandbox, "fase3")
    fresh_sandbox.sql(down)
    context_path = RunContext(
        run_id="test-fase3", phase="fase3", fase3_db_option=2,
        baseline=Baseline(p95_ms={"/v1/leads": 1000.0, "/v1/appointments": 1000.0,
                                  "/v1/branches": 1000.0}),
    ).write(tmp_path / "run-context.json")

    def run(*args: str, context: Path = context_path) -> ValidationResult:
        return run_validation("fase3", reports_root=tmp_path, env=fresh_sandbox.env(), gate=True,
                              run_context=context, extra_args=["-k", "test_fase3", *args])

    all_passed(run())
    with altered(fresh_sandbox, "CREATE INDEX idx_leads_branch_search ON leads (branch_id)",
                 "DROP INDEX idx_leads_branch_search"):
        leftover = run()
    failed(leftover, "test_database_objects_match_chosen_option", "left 1 of 19 in place: "
           "idx_leads_branch_search")
    option1 = RunContext(run_id="test-fase3", phase="fase3", fase3_db_option=1).write(
        tmp_path / "option1.json")
    failed(run(context=option1), "test_database_objects_match_chosen_option",
           "option 1 (keep FASE 3's database objects): 19 of 19 missing")
    slow = RunContext(run_id="test-fase3", phase="fase3", fase3_db_option=2,
                      baseline=Baseline(p95_ms={"/v1/branches": 0.01})).write(tmp_path / "slow.json")
    result = run("--warn-ms", "0.02", "--alert-ms", "5000", context=slow)
    failed(result, "test_p95_within_expected_slowdown[branches]", "the pre-rollback 0 ms",
           "> 3x expected")
    assert result.check("test_p95_within_expected_slowdown[leads]").verdict == "inconclusive"


def test_invalid_fase3_index_fails_option1(sandbox, tmp_path: Path) -> None:
    context = RunContext(run_id="test-fase3", phase="fase3", fase3_db_option=1).write(
        tmp_path / "run-context.json")

    def run() -> ValidationResult:
        return run_validation("fase3", reports_root=tmp_path, env=sandbox.env(),
                              run_context=context, extra_args=["-k", "database_objects"])

    assert run().check("test_database_objects_match_chosen_option").verdict == "pass"
    flag = "UPDATE pg_index SET indisvalid = {} WHERE indexrelid = 'idx_leads_branch_search'::regclass"
    with altered(sandbox, flag.format("false"), flag.format("true")):
        failed(run(), "test_database_objects_match_chosen_option", "indexes not valid",
               "idx_leads_branch_search")
