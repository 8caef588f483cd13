"""Read-only access to the target database, and what it says about the keys the checks use."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from checks._plugin.verdicts import saw_nothing
from rollback.config import Settings
from rollback.profile import Resource
from rollback.runs.dbops import has_column  # one has_column for the drivers and the checks

__all__ = ["KeyTenant", "connect_read_only", "find_key", "has_column", "require_rows",
           "tenant_rows"]


@dataclass(frozen=True)
class KeyTenant:
    """A key's id, its tenant and that tenant's branches, as the database knows them."""

    tenant_id: str
    key_id: str
    branch_ids: tuple[str, ...]


def find_key(conn: psycopg.Connection, raw_key: str, name: str) -> KeyTenant:
    """Look a raw key up by key_hash = sha256(key); fail if the database does not know it."""
    __tracebackhide__ = True
    digest = hashlib.sha256(raw_key.encode()).hexdigest()
    row = conn.execute("SELECT id::text, tenant_id::text FROM api_keys WHERE key_hash = %s",
                       (digest,)).fetchone()
    if row is None:
        conn.rollback()
        pytest.fail(f"{name} (ending ...{raw_key[-4:]}) matches no api_keys row by key_hash: "
                    "DATABASE_URL and API_BASE_URL may point at different environments",
                    pytrace=False)
    branches = conn.execute("SELECT id::text FROM branches WHERE tenant_id = %s ORDER BY id",
                            (row[1],)).fetchall()
    conn.rollback()
    return KeyTenant(tenant_id=row[1], key_id=row[0], branch_ids=tuple(b[0] for b in branches))


def connect_read_only(target: Settings) -> psycopg.Connection:
    """A connection whose every transaction is READ ONLY, with bounded connect and statements."""
    url = target.require_database_url()
    limits = target.thresholds
    conn = psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=max(2, math.ceil(2 * limits.db_connect_ms / 1000)),
        application_name="rollback-validation",
    )
    statement_ms = int(limits.check_timeout_s * 1000 * 0.8)
    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    conn.execute(f"SET statement_timeout = {statement_ms}")
    conn.autocommit = False
    # Also BEGIN READ ONLY per transaction, which survives transaction-mode poolers.
    conn.read_only = True
    return conn


def require_rows(db: psycopg.Connection, table: str, what: str) -> None:
    """A check over `table` that would find no violation in an empty table has seen nothing."""
    __tracebackhide__ = True
    row = db.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
                     ).fetchone()
    if not (row and row[0]):
        saw_nothing(f"{table} holds no rows, so {what} proves nothing: is DATABASE_URL the "
                    "platform's database?")


def tenant_rows(db: psycopg.Connection, resource: Resource, tenant_id: str,
                *, branches: bool = False) -> tuple[int, int]:
    """(rows, distinct branches if asked, else 0) of the resource's table for one tenant,
    counted as the API counts them (the profile's `count_where`: trusted configuration, never
    user input)."""
    extra = sql.SQL(f" AND ({resource.count_where})") if resource.count_where else sql.SQL("")
    spread = sql.SQL("count(DISTINCT branch_id)" if branches else "0")
    row = db.execute(sql.SQL("SELECT count(*), {} FROM {} WHERE tenant_id = %s{}").format(
        spread, sql.Identifier(resource.table), extra), (tenant_id,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
