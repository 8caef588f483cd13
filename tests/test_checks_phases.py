"""The phase checks against real rollbacks of fresh sandboxes of both shapes: each passes after
its rollback (under --gate) and fails, naming the cause, when the rollback is missing or went
wrong.

The rollbacks here are done by hand with a run context written the way the drivers write it,
so that these tests prove the checks independently of the drivers. The code goes back the way
the profile's phase manifest says: on the contract shape a `git revert` of the commit with the
phase's trailer; on the real platform's, where FASE 1, 2 and 3 shipped in one commit, the
phase's own files and hunks of that commit (`rollback.runs.phasecode`). FASE 3's objects are
dropped by the names its migrations give them (`rollback.fase3.objects_in_repo`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from checks.run_context import Baseline, Fase2Backup, KeyCounts, RunContext
from rollback.fase3 import DbObject, objects_in_repo
from rollback.validate import ValidationResult, run_validation
from tests.conftest import Sandbox
from tests.validations import failed, leads_arriving, roll_back_code

pytestmark = pytest.mark.slow

BACKUP_SCHEMA, BACKUP_TABLE = "rollback_backup", "api_keys_test_run"
#: branch-scoped keys the seed gives each shape (seed 42, 50 tenants)
SEEDED_BRANCH_KEYS = {"contract": 31, "tistis": 38}


_DROP_ORDER = ("view", "materialized view", "function", "index")


def drop_objects(box: Sandbox, objects: tuple[DbObject, ...]) -> None:
    """FASE 3 option 2 by hand: views before the materialized view they read, whose indexes
    go with it."""
    for obj in sorted(objects, key=lambda o: _DROP_ORDER.index(o.kind)):
        target = f"{obj.name}({obj.args})" if obj.kind == "function" else obj.name
        box.sql(f"DROP {obj.kind.upper()} IF EXISTS {target}")


@contextlib.contextmanager
def altered(box: Sandbox, change: str, restore: str) -> Iterator[None]:
    with psycopg.connect(box.database_url, autocommit=True) as conn:
        conn.execute(change)
    try:
        yield
    finally:
        with psycopg.connect(box.database_url, autocommit=True) as conn:
            conn.execute(restore)


def all_passed(result: ValidationResult) -> None:
    __tracebackhide__ = True
    bad = {c.nodeid: c.message for c in result.checks if c.verdict in ("fail", "skip")}
    assert result.exit_code == 0 and not bad, bad or result.log.read_text()[-3000:]


def test_phase_checks_fail_while_the_phase_is_live(any_sandbox: Sandbox, tmp_path: Path) -> None:
    box, profile = any_sandbox, any_sandbox.profile
    leads = profile.leads_path
    with leads_arriving(box):
        result = run_validation("all", reports_root=tmp_path, env=box.env(),
                                extra_args=["-k", "test_fase1 or test_fase2 or test_fase3"])
    failed(result, "test_no_fase1_headers[leads]", f"FASE 1 is still live on {leads}",
           "X-Branch-Filter-Warning")
    failed(result, "test_branch_filter_is_not_applied[leads]", "branch filter is still applied")
    failed(result, "test_legacy_params_get_200_and_own_data[foreign-branch]", "answered 403")
    failed(result, "test_legacy_params_get_200_and_own_data[garbage-branch]", "answered 400")
    failed(result, "test_no_branch_scoped_keys_remain", "keys are still branch-scoped")
    failed(result, "test_former_branch_key_reads_every_branch", "it is still branch-scoped for the API")
    if profile.fase3.cache == "header":
        failed(result, f"test_no_cache_header[{profile.resources[-1].name}]", "X-Cache",
               "response cache is live")
    else:  # the real cache sets no header: its answers fall behind the arriving leads
        failed(result, "test_answers_are_not_staler_than_the_database[leads]",
               f"GET {leads} answers total", "a response cache is still serving",
               "FASE 3's cache sets no header")


def test_fase1_rollback_passes_the_fase1_gate(any_fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    box, profile = any_fresh_sandbox, any_fresh_sandbox.profile
    roll_back_code(box, "fase1")
    result = run_validation("fase1", reports_root=tmp_path, env=box.env(), gate=True,
                            extra_args=["-k", "test_fase1"])
    all_passed(result)
    # 5 kinds of legacy parameters, the headers on every list, the filter where there is one
    branch_lists = [r for r in profile.resources if r.branch_filter]
    assert result.passed == 5 + len(profile.resources) + len(branch_lists) + 1


def _roll_back_fase2(box: Sandbox, context_path: Path) -> RunContext:
    """What the FASE 2 driver does: back up the branch keys, convert them, take the code back,
    deploy. On the real platform the UPDATE fires the api_keys triggers (updated_at, the daily
    reset, branch_context): the checks must leave those columns out."""
    with psycopg.connect(box.database_url, autocommit=True) as conn:
        total, active = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE is_active) FROM api_keys").fetchone()
        conn.execute(f"CREATE SCHEMA {BACKUP_SCHEMA}")
        conn.execute(f"CREATE TABLE {BACKUP_SCHEMA}.{BACKUP_TABLE} AS "
                     "SELECT * FROM api_keys WHERE scope_type = 'branch'")
        rows = conn.execute(f"SELECT count(*) FROM {BACKUP_SCHEMA}.{BACKUP_TABLE}").fetchone()[0]
        conn.execute("UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL, "
                     "updated_at = now() WHERE scope_type = 'branch'")
    roll_back_code(box, "fase2")
    context = RunContext(
        run_id="test-fase2", phase="fase2",
        fase2_backup=Fase2Backup(schema=BACKUP_SCHEMA, table=BACKUP_TABLE, row_count=rows,
                                 key_counts_before=KeyCounts(total=total, active=active)),
    )
    context.write(context_path)
    return context


@pytest.mark.timeout(900)  # seven validations: a loaded machine must not fail it on time
def test_fase2_rollback_passes_and_every_loss_is_caught(any_fresh_sandbox: Sandbox,
                                                        tmp_path: Path) -> None:
    box = any_fresh_sandbox
    context_path = tmp_path / "run-context.json"
    context = _roll_back_fase2(box, context_path)
    backed_up = SEEDED_BRANCH_KEYS[box.shape]
    assert context.fase2_backup is not None and context.fase2_backup.row_count == backed_up

    def run() -> ValidationResult:
        return run_validation("fase2", reports_root=tmp_path, env=box.env(), gate=True,
                              run_context=context_path, extra_args=["-k", "test_fase2"])

    first = run()
    all_passed(first)
    assert first.passed == 7
    backup = f"{BACKUP_SCHEMA}.{BACKUP_TABLE}"
    # tistis names branch keys uniquely per tenant: "Branch POS integration <branch slug>"
    victim, name = (str(v) for v in box.sql(
        f"SELECT id, name FROM {backup} WHERE name LIKE %s ORDER BY id LIMIT 1",
        ("Branch POS integration%",))[0])
    with altered(box, f"DELETE FROM api_keys WHERE id = '{victim}'",
                 f"INSERT INTO api_keys SELECT * FROM {backup} WHERE id = '{victim}'; "
                 f"UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL WHERE id = '{victim}'"):
        lost = run()
    failed(lost, "test_converted_keys_still_exist", "1 keys of the backup", "no longer exist", victim)
    failed(lost, "test_key_counts_are_unchanged", "keys were lost or deactivated")
    with altered(box, f"UPDATE api_keys SET name = 'renamed' WHERE id = '{victim}'",
                 f"UPDATE api_keys SET name = '{name}' WHERE id = '{victim}'"):
        renamed = run()
    failed(renamed, "test_converted_keys_are_unchanged_but_for_scope", f"{victim}, name")
    with altered(box, f"UPDATE api_keys SET is_active = false WHERE id = '{victim}'",
                 f"UPDATE api_keys SET is_active = true WHERE id = '{victim}'"):
        deactivated = run()
    failed(deactivated, "test_converted_keys_are_still_active", "now inactive or revoked", victim)
    failed(deactivated, "test_key_counts_are_unchanged", "active")
    with altered(box, f"UPDATE api_keys SET scope_type = 'branch', branch_id = "
                 f"(SELECT branch_id FROM {backup} WHERE id = '{victim}') WHERE id = '{victim}'",
                 f"UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL WHERE id = '{victim}'"):
        unconverted = run()
    failed(unconverted, "test_no_branch_scoped_keys_remain", "1 keys are still branch-scoped", victim)
    with altered(box, f"CREATE TABLE {backup}_copy AS SELECT * FROM {backup}; "
                 f"DELETE FROM {backup} WHERE id = '{victim}'",
                 f"INSERT INTO {backup} SELECT * FROM {backup}_copy WHERE id = '{victim}'; "
                 f"DROP TABLE {backup}_copy"):
        short = run()
    failed(short, "test_backup_holds_every_converted_key",
           f"holds {backed_up - 1} rows, the run recorded {backed_up}")
    all_passed(run())  # everything put back


def test_fase2_checks_without_run_context_fail_only_under_the_gate(any_fresh_sandbox: Sandbox,
                                                                   tmp_path: Path) -> None:
    box = any_fresh_sandbox
    _roll_back_fase2(box, tmp_path / "unused.json")
    relaxed = run_validation("fase2", reports_root=tmp_path, env=box.env(),
                             extra_args=["-k", "test_fase2"])
    assert relaxed.exit_code == 0 and relaxed.skipped == 5
    gated = run_validation("fase2", reports_root=tmp_path, env=box.env(), gate=True,
                           extra_args=["-k", "test_fase2"])
    failed(gated, "test_key_counts_are_unchanged", "--gate: required check skipped: no run context")


@pytest.mark.timeout(900)  # several validations: a loaded machine must not fail it on time
def test_fase3_rollback_option2_passes_and_leftovers_are_caught(any_fresh_sandbox: Sandbox,
                                                                tmp_path: Path) -> None:
    box, profile = any_fresh_sandbox, any_fresh_sandbox.profile
    objects = objects_in_repo(profile, box.repo).objects
    count = len(objects)
    assert "idx_leads_branch_search" in {o.name for o in objects}
    roll_back_code(box, "fase3")
    drop_objects(box, objects)
    context_path = RunContext(
        run_id="test-fase3", phase="fase3", fase3_db_option=2,
        baseline=Baseline(p95_ms=dict.fromkeys(profile.endpoints, 1000.0)),
    ).write(tmp_path / "run-context.json")

    def run(*args: str, context: Path = context_path) -> ValidationResult:
        return run_validation("fase3", reports_root=tmp_path, env=box.env(), gate=True,
                              run_context=context, extra_args=["-k", "test_fase3", *args])

    with leads_arriving(box):  # a cache that sets no header shows only when data change
        rolled_back = run("--allow-writes")
    all_passed(rolled_back)
    no_cache = ["test_created_lead_is_listed_at_once"] + (
        ["test_answers_are_not_staler_than_the_database[leads]"]
        if profile.fase3.cache == "staleness" else
        [f"test_no_cache_header[{r.name}]" for r in profile.resources])
    assert {name: rolled_back.check(name).verdict for name in no_cache} == dict.fromkeys(
        no_cache, "pass")
    with altered(box, "CREATE INDEX idx_leads_branch_search ON leads (branch_id)",
                 "DROP INDEX idx_leads_branch_search"):
        leftover = run()
    failed(leftover, "test_database_objects_match_chosen_option",
           f"left 1 of {count} in place: idx_leads_branch_search")
    option1 = RunContext(run_id="test-fase3", phase="fase3", fase3_db_option=1).write(
        tmp_path / "option1.json")
    failed(run(context=option1), "test_database_objects_match_chosen_option",
           f"option 1 (keep FASE 3's database objects): {count} of {count} missing")
    slowest = profile.resources[-1]
    slow = RunContext(run_id="test-fase3", phase="fase3", fase3_db_option=2,
                      baseline=Baseline(p95_ms={profile.path_of(slowest): 0.01})).write(
        tmp_path / "slow.json")
    result = run("--warn-ms", "0.02", "--alert-ms", "5000", context=slow)
    failed(result, f"test_p95_within_expected_slowdown[{slowest.name}]", "the pre-rollback 0 ms",
           "> 3x expected")
    for resource in profile.resources[:-1]:  # no baseline for them in this context
        assert result.check(f"test_p95_within_expected_slowdown[{resource.name}]"
                            ).verdict == "inconclusive"


def test_invalid_fase3_index_fails_option1(any_sandbox: Sandbox, tmp_path: Path) -> None:
    context = RunContext(run_id="test-fase3", phase="fase3", fase3_db_option=1).write(
        tmp_path / "run-context.json")

    def run() -> ValidationResult:
        return run_validation("fase3", reports_root=tmp_path, env=any_sandbox.env(),
                              run_context=context, extra_args=["-k", "database_objects"])

    assert run().check("test_database_objects_match_chosen_option").verdict == "pass"
    flag = "UPDATE pg_index SET indisvalid = {} WHERE indexrelid = 'idx_leads_branch_search'::regclass"
    with altered(any_sandbox, flag.format("false"), flag.format("true")):
        failed(run(), "test_database_objects_match_chosen_option", "indexes not valid",
               "idx_leads_branch_search")
