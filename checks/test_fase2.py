"""After a FASE 2 rollback: no branch-scoped key remains, and no key was lost or changed beyond
its scope. The run context (`fase2_backup`) names the backup the driver took before converting.

Compared with the backup, a converted key may differ only in its scope columns
([platform.fase2] scope_columns: `scope_type`, `branch_id`, `branch_context`) and the columns
the platform itself changes ([platform] managed_columns: `updated_at` and the usage counters
the API bumps on every request; on Supabase also `usage_count`, `last_used_ip` and the
`usage_reset_date` its daily-reset trigger rewrites).

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from checks._plugin.options import SuiteConfig
from checks.database import find_key, has_column, require_rows, tenant_rows
from checks.evidence import Evidence
from checks.expect import (
    backup_differences,
    compared_columns,
    expect_backup_matches_csv,
    expect_backup_rows,
    expect_list_shape,
    expect_no_rows,
    expect_own_tenant,
    expect_unchanged_but_for_scope,
    inconclusive,
)
from checks.probe import cache_buster, get
from checks.run_context import Fase2Backup, RunContext
from rollback.config import Settings
from rollback.profile import Profile
from rollback.runs.dbops import columns_of, file_sha256

pytestmark = pytest.mark.fase2

@pytest.fixture(scope="module")
def backup(run_context: RunContext) -> Fase2Backup:
    if run_context.fase2_backup is None:
        if run_context.phase == "fase2":
            pytest.fail(f"run context {run_context.run_id} is a FASE 2 run without fase2_backup: "
                        "the driver recorded no backup, so there is no undo and nothing to "
                        "compare with", pytrace=False)
        inconclusive(f"run context {run_context.run_id} is a {run_context.phase} run: no FASE 2 "
                     "backup to compare with")
    return run_context.fase2_backup


def _backup_table(backup: Fase2Backup) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(backup.schema), sql.Identifier(backup.table))


def _compared_columns(db: psycopg.Connection, backup: Fase2Backup, profile: Profile) -> list[str]:
    return compared_columns(columns_of(db, backup.table, backup.schema),
                            columns_of(db, profile.tables.api_keys), profile.compared_exempt)


def _keys(profile: Profile) -> sql.Identifier:
    return sql.Identifier(profile.tables.api_keys)


def test_no_branch_scoped_keys_remain(db: psycopg.Connection, suite: SuiteConfig,
                                      profile: Profile, evidence: Evidence) -> None:
    context = suite.run_context
    backup = context.fase2_backup if context else None
    if not has_column(db, profile.tables.api_keys, "scope_type"):
        assert not (backup and backup.row_count), (
            f"the run backed up {backup.row_count if backup else 0} branch keys, but api_keys "
            "here has no scope_type column: DATABASE_URL is not the database the rollback changed"
        )
        inconclusive("api_keys has no scope_type column: FASE 2 was never applied to this "
                     "database, so no key can be branch-scoped")
    require_rows(db, profile.tables.api_keys, "finding no branch-scoped key")
    rows = db.execute(sql.SQL(
        "SELECT id, tenant_id, branch_id FROM {} "
        "WHERE scope_type = 'branch' OR branch_id IS NOT NULL ORDER BY id LIMIT 50"
    ).format(_keys(profile))).fetchall()
    evidence.record(branch_scoped=len(rows))
    expect_no_rows(rows, "keys are still branch-scoped (id, tenant, branch)",
                   "the FASE 2 rollback did not convert them, so they still see one branch only; "
                   "re-run the conversion step")


def test_backup_holds_every_converted_key(db: psycopg.Connection, backup: Fase2Backup,
                                          evidence: Evidence) -> None:
    where = f"{backup.schema}.{backup.table}"
    row = db.execute("SELECT to_regclass(%s)", (_backup_table(backup).as_string(db),)).fetchone()
    assert row and row[0] is not None, (
        f"backup table {where} does not exist: there is no undo for the FASE 2 conversion"
    )
    count = db.execute(sql.SQL("SELECT count(*) FROM {}").format(_backup_table(backup))).fetchone()
    in_table = int(count[0]) if count else 0
    evidence.record(backup_table=where, rows=in_table, expected=backup.row_count)
    expect_backup_rows(f"backup table {where}", in_table, backup.row_count)
    if backup.csv is not None:
        assert backup.csv.is_file(), f"backup CSV {backup.csv} is missing"
        with backup.csv.open(newline="", encoding="utf-8") as handle:
            in_csv = max(0, sum(1 for _ in csv.reader(handle)) - 1)  # minus the header
        evidence.record(csv=str(backup.csv), csv_rows=in_csv)
        expect_backup_rows(f"backup CSV {backup.csv}", in_csv, backup.row_count)
        _expect_table_matches_csv(db, backup, where, evidence)


def _expect_table_matches_csv(db: psycopg.Connection, backup: Fase2Backup, where: str,
                              evidence: Evidence) -> None:
    """By content: the table streamed as the driver streamed it into the CSV gives the same
    bytes; if not, the two are compared key by key (a second COPY, to a temporary file)."""
    # the driver's own COPY (its settings fix the bytes); imported here, where a FASE 2 backup
    # is checked, not by every selection that collects this module
    from rollback.actions.branch_keys import backup_checksum, write_backup_csv

    assert backup.csv is not None
    table_sha, csv_sha = backup_checksum(db, backup.schema, backup.table), file_sha256(backup.csv)
    evidence.record(table_sha256=table_sha[:12], csv_sha256=csv_sha[:12])
    if table_sha == csv_sha:
        return
    with tempfile.TemporaryDirectory(prefix="fase2-backup-") as folder:
        now = Path(folder) / "table.csv"
        write_backup_csv(db, backup.schema, backup.table, now)
        with now.open(newline="", encoding="utf-8") as ours, \
                backup.csv.open(newline="", encoding="utf-8") as theirs:
            table_rows, csv_rows = csv.reader(ours), csv.reader(theirs)
            differences = backup_differences(next(table_rows, []), table_rows,
                                             next(csv_rows, []), csv_rows)
    if not differences:  # the same rows, other bytes (a CSV written with other settings)
        differences = [("file", f"SHA-256 {csv_sha[:12]}, the table's {table_sha[:12]}")]
    expect_backup_matches_csv(where, str(backup.csv), differences)


def test_converted_keys_still_exist(db: psycopg.Connection, backup: Fase2Backup,
                                    profile: Profile, evidence: Evidence) -> None:
    rows = db.execute(sql.SQL(
        "SELECT b.id, b.tenant_id, b.name FROM {} b WHERE NOT EXISTS "
        "(SELECT 1 FROM {} k WHERE k.id = b.id) ORDER BY b.id LIMIT 50"
    ).format(_backup_table(backup), _keys(profile))).fetchall()
    evidence.record(missing=len(rows), backed_up=backup.row_count)
    expect_no_rows(rows, f"keys of the backup ({backup.schema}.{backup.table}) no longer exist "
                   "(id, tenant, name)", "their integrations are locked out; restore them from "
                   "the backup")


def test_converted_keys_are_unchanged_but_for_scope(db: psycopg.Connection, backup: Fase2Backup,
                                                    profile: Profile, evidence: Evidence) -> None:
    columns = _compared_columns(db, backup, profile)
    where = f"{backup.schema}.{backup.table}"
    rows: list[tuple[object, list[bool]]] = []
    if columns:
        ident = [sql.Identifier(c) for c in columns]
        pairs = sql.SQL(", ").join(
            sql.SQL("b.{c} IS DISTINCT FROM k.{c}").format(c=c) for c in ident)
        rows = db.execute(sql.SQL(
            "SELECT b.id, ARRAY[{pairs}] FROM {table} b JOIN {keys} k ON k.id = b.id "
            "WHERE ({b_cols}) IS DISTINCT FROM ({k_cols}) ORDER BY b.id LIMIT 50"
        ).format(pairs=pairs, table=_backup_table(backup), keys=_keys(profile),
                 b_cols=sql.SQL(", ").join(sql.SQL("b.{}").format(c) for c in ident),
                 k_cols=sql.SQL(", ").join(sql.SQL("k.{}").format(c) for c in ident))).fetchall()
    evidence.record(compared_columns=", ".join(columns), changed_keys=len(rows))
    expect_unchanged_but_for_scope(where, columns, rows)


def test_converted_keys_are_still_active(db: psycopg.Connection, backup: Fase2Backup,
                                         profile: Profile, evidence: Evidence) -> None:
    rows = db.execute(sql.SQL(
        "SELECT k.id, k.tenant_id, k.is_active, k.revoked_at FROM {} b "
        "JOIN {} k ON k.id = b.id "
        "WHERE b.is_active AND b.revoked_at IS NULL AND (NOT k.is_active OR k.revoked_at IS NOT NULL) "
        "ORDER BY k.id LIMIT 50").format(_backup_table(backup), _keys(profile))).fetchall()
    evidence.record(deactivated=len(rows))
    expect_no_rows(rows, "keys active before the rollback are now inactive or revoked (id, "
                   "tenant, is_active, revoked_at)", "their integrations are locked out; "
                   "re-activate them")


def test_former_branch_key_reads_every_branch(branch_api: httpx.Client, target: Settings,
                                              profile: Profile, _db_session: psycopg.Connection,
                                              evidence: Evidence) -> None:
    secret = target.secrets.test_branch_api_key
    assert secret is not None
    key = find_key(_db_session, secret.get_secret_value(), "TEST_BRANCH_API_KEY")
    path = profile.leads_path
    resource = profile.resource_at(path)
    response = get(branch_api, path, params={"pageSize": 100, **cache_buster()}, evidence=evidence)
    records = expect_list_shape(response, resource)
    expect_own_tenant(records, key.tenant_id, f"GET {path} with TEST_BRANCH_API_KEY")
    total = int(response.json()["total"])
    in_db, branches = tenant_rows(_db_session, resource, key.tenant_id, branches=True)
    _db_session.rollback()
    evidence.record(api_total=total, db_total=in_db, branches_with_records=branches,
                    tenant_id=key.tenant_id)
    if branches < 2:
        inconclusive(f"the former branch key's tenant has {resource.table} in {branches} "
                     "branch(es): a branch scope can only be seen with several")
    assert total == in_db, (
        f"the former branch key reads {total} of its tenant's {in_db} {resource.table} (over "
        f"{branches} branches): it is still branch-scoped for the API (a stale cache, or FASE 2 "
        "code still deployed)"
    )


def test_key_counts_are_unchanged(db: psycopg.Connection, backup: Fase2Backup,
                                  profile: Profile, evidence: Evidence) -> None:
    row = db.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE is_active) FROM {}")
                     .format(_keys(profile))).fetchone()
    total, active = (int(row[0]), int(row[1])) if row else (0, 0)
    before = backup.key_counts_before
    evidence.record(total_before=before.total, total_after=total, active_before=before.active,
                    active_after=active)
    assert (total, active) == (before.total, before.active), (
        f"api_keys: {total} keys ({active} active) now, {before.total} ({before.active} active) "
        "before the rollback: keys were lost or deactivated (or created/revoked meanwhile: check "
        "created_at and revoked_at since the run started)"
    )
