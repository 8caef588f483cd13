"""The database: reachable in time, its critical tables readable, its data whole and consistent.

Every query runs in a READ ONLY transaction (see the `db` fixture); nothing here writes.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from checks.database import connect_read_only, has_column, require_rows
from checks.evidence import Evidence
from checks.expect import expect_no_orphans, expect_no_rows, inconclusive
from checks.phases import ALL_PHASES
from rollback.config import Settings
from rollback.errors import ConfigError
from rollback.profile import Profile

pytestmark = ALL_PHASES

CRITICAL_TABLES = ("tenants", "branches", "leads", "appointments", "api_keys", "usage_logs")

#: child table -> (column, parent table), by their [platform.tables] roles: references whose
#: parent row must exist
ORPHANS = {
    "api_keys": [("tenant_id", "tenants")],
    "branches": [("tenant_id", "tenants")],
    "leads": [("tenant_id", "tenants"), ("branch_id", "branches")],
    "appointments": [("tenant_id", "tenants"), ("branch_id", "branches"), ("lead_id", "leads")],
}
#: orphans listed per (table, column): enough to repair from, few enough to read
ORPHAN_LIMIT = 50



def test_database_connects_within_limit(target: Settings, evidence: Evidence) -> None:
    try:
        target.require_database_url()
    except ConfigError as exc:
        pytest.skip(str(exc))
    limit = target.thresholds.db_connect_ms
    started = time.perf_counter()
    try:
        conn = connect_read_only(target)
    except psycopg.Error as exc:
        pytest.fail(f"cannot connect to the database: {exc}".strip(), pytrace=False)
    with conn:
        conn.execute("SELECT 1").fetchone()
    elapsed = (time.perf_counter() - started) * 1000
    evidence.record(connect_ms=round(elapsed, 1), limit_ms=limit)
    assert elapsed <= limit, (
        f"connecting and a first query took {elapsed:.0f} ms > limit {limit:g} ms: the database "
        "or its pooler is saturated; the API will time out too"
    )


@pytest.mark.parametrize("role", CRITICAL_TABLES)
def test_critical_table_is_readable(db: psycopg.Connection, role: str, profile: Profile,
                                    evidence: Evidence) -> None:
    table = getattr(profile.tables, role)
    try:
        db.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(table))).fetchall()
    except psycopg.Error as exc:
        pytest.fail(f"table {table} cannot be read: {type(exc).__name__}: {exc}".strip(),
                    pytrace=False)
    evidence.record(table=table)


@pytest.mark.parametrize("role", list(ORPHANS))
def test_no_orphaned_rows(db: psycopg.Connection, role: str, profile: Profile,
                          evidence: Evidence) -> None:
    table = getattr(profile.tables, role)
    require_rows(db, table, "finding no orphans")
    found: dict[tuple[str, str], list[tuple[object, object]]] = {}
    for column, parent_role in ORPHANS[role]:
        parent = getattr(profile.tables, parent_role)
        query = sql.SQL(
            "SELECT c.id, c.{col} FROM {child} c "
            "WHERE c.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = c.{col}) "
            "ORDER BY c.id LIMIT {limit}"
        ).format(col=sql.Identifier(column), child=sql.Identifier(table),
                 parent=sql.Identifier(parent), limit=sql.Literal(ORPHAN_LIMIT))
        found[(column, parent)] = [(row[0], row[1]) for row in db.execute(query).fetchall()]
    evidence.record(**{f"{table}.{column} orphans": len(rows)
                       for (column, _), rows in found.items()})
    expect_no_orphans(table, found, limit=ORPHAN_LIMIT)


@pytest.mark.parametrize("role", ["leads", "appointments"])
def test_no_row_points_at_another_tenants_branch(db: psycopg.Connection, role: str,
                                                 profile: Profile, evidence: Evidence) -> None:
    table = getattr(profile.tables, role)
    require_rows(db, table, "finding no cross-tenant branch")
    rows = db.execute(sql.SQL(
        "SELECT c.id, c.tenant_id, c.branch_id, b.tenant_id FROM {} c "
        "JOIN {} b ON b.id = c.branch_id WHERE b.tenant_id <> c.tenant_id LIMIT 50"
    ).format(sql.Identifier(table), sql.Identifier(profile.tables.branches))).fetchall()
    evidence.record(violations=len(rows))
    expect_no_rows(rows, f"{table} rows point at a branch of another tenant (id, tenant, branch, "
                   "branch's tenant)", "branch filters and branch keys would show them to the "
                   "wrong tenant")


def test_api_key_scope_columns_are_consistent(db: psycopg.Connection, profile: Profile,
                                              evidence: Evidence) -> None:
    keys = profile.tables.api_keys
    if not has_column(db, keys, "scope_type"):
        inconclusive(f"{keys} has no scope_type column: FASE 2 was never applied here, so "
                     "there are no scope columns to check")
    require_rows(db, keys, "finding no inconsistent scope")
    query = sql.SQL(
        "SELECT k.id, k.scope_type, k.branch_id, "
        "  CASE WHEN k.scope_type NOT IN ('tenant', 'branch') THEN 'unknown scope_type' "
        "       WHEN k.scope_type = 'tenant' AND k.branch_id IS NOT NULL THEN 'tenant key with a branch' "
        "       WHEN k.scope_type = 'branch' AND k.branch_id IS NULL THEN 'branch key without a branch' "
        "       WHEN b.id IS NULL THEN 'branch does not exist' "
        "       ELSE 'branch of another tenant' END "
        "FROM {keys} k LEFT JOIN {branches} b ON b.id = k.branch_id "
        "WHERE k.scope_type IS NULL OR k.scope_type NOT IN ('tenant', 'branch') "
        "   OR (k.scope_type = 'tenant' AND k.branch_id IS NOT NULL) "
        "   OR (k.scope_type = 'branch' AND k.branch_id IS NULL) "
        "   OR (k.branch_id IS NOT NULL AND (b.id IS NULL OR b.tenant_id <> k.tenant_id)) "
        "LIMIT 50"
    ).format(keys=sql.Identifier(keys), branches=sql.Identifier(profile.tables.branches))
    rows = db.execute(query).fetchall()
    evidence.record(violations=len(rows))
    expect_no_rows(rows, "api_keys have inconsistent scope columns (id, scope_type, branch_id, "
                   "problem)", "such a key may read more or less than its scope says")


def test_no_duplicate_key_hash(db: psycopg.Connection, profile: Profile,
                               evidence: Evidence) -> None:
    keys = profile.tables.api_keys
    require_rows(db, keys, "finding no duplicated key_hash")
    rows = db.execute(sql.SQL(
        "SELECT count(*), array_agg(id ORDER BY id) FROM {} GROUP BY key_hash "
        "HAVING count(*) > 1 LIMIT 50"
    ).format(sql.Identifier(keys))).fetchall()
    evidence.record(duplicated_hashes=len(rows))
    expect_no_rows(rows, "key_hash values are shared by several keys (count, key ids)",
                   "one raw key authenticates as whichever row the lookup finds first: a "
                   "restore probably inserted rows that were still there")


def test_no_active_key_is_revoked(db: psycopg.Connection, profile: Profile,
                                  evidence: Evidence) -> None:
    keys = profile.tables.api_keys
    require_rows(db, keys, "finding no revoked key active")
    rows = db.execute(sql.SQL(
        "SELECT id, tenant_id, revoked_at FROM {} "
        "WHERE is_active AND revoked_at IS NOT NULL LIMIT 50"
    ).format(sql.Identifier(keys))).fetchall()
    evidence.record(violations=len(rows))
    expect_no_rows(rows, "keys are active but have revoked_at set (id, tenant, revoked_at)",
                   "a key its owner revoked may work again: a rollback or restore re-activated it")
