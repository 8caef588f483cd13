"""SQL safety: names that reach SQL from configuration or from a migration are identifiers,
composed with psycopg's `sql` module, never text pasted into a statement.

Two lines of defence, each proved on its own:

1. the configuration refuses a `[run] backup_schema` that is not a plain lowercase name, with
   one line and exit 2, before anything touches the database;
2. below it, the library quotes whatever name it is given: a backup, a conversion, its undo and
   the checks that read the backup all work in a schema named like an injection, and FASE 3
   objects named like one are inspected, dropped and recreated as themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from checks.run_context import Fase2Backup, KeyCounts, RunContext
from rollback.actions import branch_keys, fase3_objects
from rollback.fase3 import parse_migration_objects
from rollback.runs import dbops
from rollback.validate import run_validation
from tests.conftest import Sandbox
from tests.targets import make_target, state_of

HOSTILE_SCHEMAS = [
    'rb"; DROP TABLE api_keys; --',
    "rb'; DELETE FROM api_keys; --",
    "Backup Schema",
    "public.api_keys",
    "x" * 80,
    "",
]
#: a schema name that would drop tables if it were pasted into SQL, in the library tests
SCHEMA = 'rb"; DROP TABLE api_keys; --'
RUN_ID = "20260101T000000Z-fase2'); DROP TABLE tenants; --"


def _tables(box: Sandbox) -> set[str]:
    return {r[0] for r in box.sql("SELECT relname FROM pg_class WHERE relkind = 'r' "
                                  "AND relnamespace = 'public'::regnamespace")}


def _schemas(box: Sandbox) -> set[str]:
    return {r[0] for r in box.sql("SELECT nspname FROM pg_namespace")}


@pytest.mark.parametrize("schema", HOSTILE_SCHEMAS, ids=range(len(HOSTILE_SCHEMAS)))
def test_configuration_refuses_a_hostile_backup_schema_in_one_line(schema: str, sandbox: Sandbox,
                                                                   tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path, run={"backup_schema": schema})
    before, schemas = state_of(sandbox), _schemas(sandbox)
    result = target.rollback("run", "fase2", "--yes")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "[run] backup_schema" in lines[0] and "Traceback" not in result.stderr
    assert state_of(sandbox) == before and _schemas(sandbox) == schemas


@pytest.mark.slow
def test_a_hostile_schema_name_is_quoted_through_backup_conversion_checks_and_undo(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    box = fresh_sandbox
    tables = _tables(box)
    keys_before = box.sql("SELECT id::text, scope_type, branch_id::text FROM api_keys ORDER BY id")
    branch_count = sum(1 for _, scope, _ in keys_before if scope == "branch")
    policy = dbops.BatchPolicy(size=7, lock_timeout_ms=2000, retries=0, backoff_s=0)
    with psycopg.connect(box.database_url) as conn:
        backup = branch_keys.backup_fase2(conn, schema=SCHEMA, run_id=RUN_ID,
                                    csv_path=tmp_path / "backup.csv")
        assert backup.row_count == branch_count
        done = branch_keys.convert_branch_keys(conn, schema=SCHEMA, table=backup.table, run_id=RUN_ID,
                                         policy=policy, log=lambda line: None)
        assert done.converted == branch_count and done.remaining == 0
    assert SCHEMA in _schemas(box), "the schema exists under its literal name"
    assert _tables(box) == tables, "no table was dropped or added in public"
    assert box.sql("SELECT count(*) FROM api_keys")[0][0] == len(keys_before)

    # the validation suite reads the same backup through a run context
    context = tmp_path / "run-context.json"
    RunContext(run_id=RUN_ID, phase="fase2", fase2_backup=Fase2Backup(
        schema=SCHEMA, table=backup.table, row_count=backup.row_count,
        key_counts_before=KeyCounts(backup.key_counts_before.total, backup.key_counts_before.active),
        csv=tmp_path / "backup.csv")).write(context)
    checks = run_validation("fase2", reports_root=tmp_path / "reports", gate=True,
                            run_context=context, env=box.env(), timeout_s=120,
                            extra_args=["-k", "backup or converted_keys or key_counts or "
                                              "no_branch_scoped"])
    assert checks.exit_code == 0 and checks.failed == 0, checks.log.read_text()[-3000:]
    assert checks.passed == 6, checks.summary()

    with psycopg.connect(box.database_url) as conn:
        undone = branch_keys.restore_fase2(conn, schema=SCHEMA, run_id=RUN_ID, policy=policy,
                                     log=lambda line: None)
    assert undone.verified and undone.restored == branch_count
    assert box.sql("SELECT id::text, scope_type, branch_id::text FROM api_keys ORDER BY id") == keys_before


HOSTILE_MIGRATION = """
CREATE INDEX "idx_leads; DROP TABLE leads; --" ON leads (phone);
CREATE VIEW "vw_x'); DELETE FROM leads; --" AS SELECT id FROM leads;
CREATE FUNCTION "fn; DROP TABLE tenants"(p_id uuid) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
"""


def test_fase3_objects_named_like_injections_are_dropped_and_recreated_as_themselves(
        sandbox: Sandbox) -> None:
    box = sandbox
    objects = parse_migration_objects(HOSTILE_MIGRATION)
    assert [o.name for o in objects] == ["idx_leads; DROP TABLE leads; --",
                                         "vw_x'); DELETE FROM leads; --", "fn; DROP TABLE tenants"]
    tables, leads = _tables(box), box.sql("SELECT count(*) FROM leads")[0][0]
    box.sql(HOSTILE_MIGRATION)
    try:
        with psycopg.connect(box.database_url, autocommit=True) as conn:
            states = [fase3_objects.inspect_object(conn, o) for o in objects]
            assert all(s.present for s in states), [s.as_dict() for s in states]
            saved = json.loads(json.dumps([s.as_dict() for s in states]))  # as Backup saves them
            for state in reversed(states):
                fase3_objects.drop_object(conn, state, 2000)
            assert not any(fase3_objects.inspect_object(conn, o).present for o in objects)
            assert _tables(box) == tables and box.sql("SELECT count(*) FROM leads")[0][0] == leads
            for item in saved:
                fase3_objects.recreate_object(conn, item, 2000)
            assert all(fase3_objects.inspect_object(conn, o).present for o in objects)
            assert _tables(box) == tables and box.sql("SELECT count(*) FROM leads")[0][0] == leads
    finally:
        box.sql('DROP VIEW IF EXISTS "vw_x\'); DELETE FROM leads; --"; '
                'DROP INDEX IF EXISTS "idx_leads; DROP TABLE leads; --"; '
                'DROP FUNCTION IF EXISTS "fn; DROP TABLE tenants"(uuid)')
