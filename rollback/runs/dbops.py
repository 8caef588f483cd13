"""The drivers' database toolbox, shared by every phase's database action (`rollback/actions/`):
connections (read-only ones for plans and checks), catalog look-ups, row checksums, and the
batch policy with its backoff.

Checksums are SHA-256 over the MD5 of each row (as JSON) in id order, without the columns that
every request changes (`last_used_at`, `last_used_endpoint`, `usage_count_today`): traffic
between a backup and a restore must not make an exact restore look inexact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from rollback.errors import StepFailed
from rollback.runs.locks import first_line

#: columns that traffic changes on every request; left out of checksums and never restored
USAGE_COLUMNS = ("last_used_at", "last_used_endpoint", "usage_count_today")
RUN_TAG = "rollback_run_id"


def connect(url: str, *, application_name: str = "rollback", autocommit: bool = False,
            timeout: int = 10) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=timeout,
                               application_name=application_name[:63])
    except psycopg.Error as exc:
        raise StepFailed(f"cannot connect to the database: {first_line(exc)}") from None


@contextmanager
def read_only(url: str) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(url, application_name="rollback plan")
    conn.read_only = True
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def without_parallel_workers(conn: psycopg.Connection[Any]) -> None:
    """For the transaction under way (SET LOCAL: no session state, a transaction-mode pooler
    is no trouble): no parallel workers for its scans, sorts and index builds. A bulk statement
    of a step that runs while the API serves (FASE 2's backup: the key counts, the primary key
    of the pre-image table, the sorted COPY) would otherwise take three processes, every core of
    a small database server, and the API's queries would queue behind them."""
    conn.execute("SELECT set_config('max_parallel_workers_per_gather', '0', true), "
                 "set_config('max_parallel_maintenance_workers', '0', true)")


def has_column(conn: psycopg.Connection[Any], table: str, column: str,
               schema: str | None = None) -> bool:
    """Whether `table` in `schema` (the session's current schema by default) has `column`."""
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = coalesce(%s, current_schema()) "
        "AND table_name = %s AND column_name = %s", (schema, table, column)).fetchone()
    return row is not None


def table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    # quoted by psycopg: a name with a double quote in it stays one name
    row = conn.execute("SELECT to_regclass(%s)",
                       (sql.Identifier(schema, table).as_string(conn),)).fetchone()
    return bool(row and row[0])


def columns_of(conn: psycopg.Connection[Any], table: str, schema: str | None = None) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = coalesce(%s, current_schema()) AND table_name = %s "
        "ORDER BY ordinal_position", (schema, table)).fetchall()
    return [r[0] for r in rows]


def checksum_columns(conn: psycopg.Connection[Any], schema: str | None = None,
                     table: str = "api_keys") -> list[str]:
    """The columns a checksum covers: all of the table's but usage counters and our run tag."""
    return [c for c in columns_of(conn, table, schema) if c not in (*USAGE_COLUMNS, RUN_TAG)]


def rows_checksum(conn: psycopg.Connection[Any], relation: sql.Composable, columns: list[str],
                  where: sql.Composable | None = None) -> str:
    """SHA-256 over `columns` of the rows of `relation`, ordered by id, as JSON lines."""
    where = where if where is not None else sql.SQL("")
    # one md5 per row, then SHA-256 over them: 32 bytes a row in memory, not the whole rows
    query = sql.SQL(
        "SELECT encode(sha256(convert_to(coalesce(string_agg(md5(to_jsonb(r)::text), '' "
        "ORDER BY r.id), ''), 'UTF8')), 'hex') FROM (SELECT {cols} FROM {rel} {where}) r"
    ).format(cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns), rel=relation, where=where)
    row = conn.execute(query).fetchone()
    assert row is not None
    return str(row[0])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


# --- batches ---------------------------------------------------------------------------------


@dataclass
class BatchPolicy:
    size: int = 500
    lock_timeout_ms: int = 2000
    retries: int = 5
    backoff_s: float = 0.5
    #: the database connections a walk over the table may use at once ([run] walk_connections)
    connections: int = 1



#: the longest wait between two attempts: doubling from [run] retry_backoff_s, up to 100 retries
#: ([run] batch_retries) would otherwise wait for ages
MAX_BACKOFF_S = 30.0


def backoff(base_s: float, attempt: int) -> float:
    """Seconds to wait before retry `attempt` + 1 (0-based): doubling, capped."""
    return min(base_s * 2.0 ** min(attempt, 32), MAX_BACKOFF_S)
