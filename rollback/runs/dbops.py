"""Database work of the drivers: FASE 2's key conversion and its undo, FASE 3's objects.

FASE 2, in the backup schema (`[run] backup_schema`, default `rollback_backup`):

    runs                      one row per backup: run id, table, row count, checksum, CSV path
    fase2_keys_<stamp>        the pre-image of every key the run converts: all api_keys columns,
                              exactly as they were, plus `rollback_run_id`
    fase2_progress            one row per committed batch: run id, batch number, last key id,
                              rows converted; written in the same transaction as the batch

The conversion walks the backup table by id in batches; a batch and its progress row commit
together under `SET LOCAL lock_timeout`, and a batch that cannot get its locks is retried. A
rerun starts after the last committed batch. The undo (`restore_fase2`) updates the rows that
are still in `api_keys` in place, by id, from the pre-image: it never inserts a row that is
still there (the original scripts' `\\copy api_keys FROM backup.csv` did).

Checksums are SHA-256 over the MD5 of each row (as JSON) in id order, without the columns that
every request changes (`last_used_at`, `last_used_endpoint`, `usage_count_today`): traffic
between the backup and a restore must not make an exact restore look inexact.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from rollback.errors import StepFailed
from rollback.runs.locks import first_line

#: columns that traffic changes on every request; left out of checksums and never restored
USAGE_COLUMNS = ("last_used_at", "last_used_endpoint", "usage_count_today")
#: the columns the conversion changes (and the undo puts back)
CONVERTED_COLUMNS = ("scope_type", "branch_id", "updated_at")
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


def has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = %s AND column_name = %s", (table, column)).fetchone()
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


# --- FASE 2: what will change ----------------------------------------------------------------


@dataclass(frozen=True)
class KeyCounts:
    total: int
    active: int


def key_counts(conn: psycopg.Connection[Any]) -> KeyCounts:
    row = conn.execute("SELECT count(*), count(*) FILTER (WHERE is_active) FROM api_keys").fetchone()
    assert row is not None
    return KeyCounts(int(row[0]), int(row[1]))


@dataclass(frozen=True)
class AffectedKey:
    id: str
    name: str
    hint: str
    active: bool
    branch_id: str | None
    branch_name: str | None

    def label(self) -> str:
        state = "" if self.active else " (inactive)"
        return f"{self.name} …{self.hint}{state}, branch {self.branch_name or self.branch_id}"


@dataclass(frozen=True)
class AffectedTenant:
    tenant_id: str
    name: str
    slug: str
    branches: int
    keys: tuple[AffectedKey, ...]

    @property
    def active_keys(self) -> int:
        return sum(1 for k in self.keys if k.active)

    def as_dict(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "name": self.name, "slug": self.slug,
                "branches": self.branches, "keys": len(self.keys), "active_keys": self.active_keys,
                "key_list": [k.__dict__ for k in self.keys]}


_AFFECTED = """
    SELECT t.id::text, t.name, t.slug,
           (SELECT count(*) FROM branches x WHERE x.tenant_id = t.id),
           k.id::text, k.name, k.key_hint, k.is_active AND k.revoked_at IS NULL,
           k.branch_id::text, b.name
      FROM {keys} k
      JOIN tenants t ON t.id = k.tenant_id
      LEFT JOIN branches b ON b.id = k.branch_id
     {where}
     ORDER BY t.slug, k.name, k.id
"""


def _tenants_from(rows: list[tuple[Any, ...]]) -> list[AffectedTenant]:
    grouped: dict[str, tuple[tuple[str, str, int], list[AffectedKey]]] = {}
    for tid, tname, slug, branches, kid, kname, hint, active, bid, bname in rows:
        entry = grouped.setdefault(tid, ((tname, slug, int(branches)), []))
        entry[1].append(AffectedKey(kid, kname, hint, bool(active), bid, bname))
    return [AffectedTenant(tid, meta[0], meta[1], meta[2], tuple(keys))
            for tid, (meta, keys) in grouped.items()]


def branch_keys_now(conn: psycopg.Connection[Any]) -> list[AffectedTenant]:
    """Every branch-scoped key now, by tenant: what the conversion will widen."""
    if not has_column(conn, "api_keys", "scope_type"):
        return []
    query = sql.SQL(_AFFECTED).format(keys=sql.Identifier("api_keys"),
                                      where=sql.SQL("WHERE k.scope_type = 'branch'"))
    return _tenants_from(conn.execute(query).fetchall())


def affected_from_backup(conn: psycopg.Connection[Any], schema: str, table: str) -> list[AffectedTenant]:
    """The keys a run converted, by tenant, read from its backup (never from recent updates)."""
    query = sql.SQL(_AFFECTED).format(keys=sql.Identifier(schema, table), where=sql.SQL(""))
    return _tenants_from(conn.execute(query).fetchall())


def affected_counts(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[int, int]:
    """(tenants, active keys) a run converted, counted in the database from its backup: the
    backup step needs only these, and one GROUP BY costs a fraction of building every key."""
    row = conn.execute(sql.SQL(
        "SELECT count(DISTINCT tenant_id), count(*) FILTER (WHERE is_active AND revoked_at IS NULL) "
        "FROM {}").format(sql.Identifier(schema, table))).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _next_batch(conn: psycopg.Connection[Any], backup: sql.Identifier, after: str | None,
                policy: BatchPolicy) -> list[Any]:
    """In the batch's transaction: its lock_timeout, and the next keys of the backup by id."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
        sql.Literal(f"{policy.lock_timeout_ms}ms")))
    return [r[0] for r in conn.execute(sql.SQL(
        "SELECT id FROM {} WHERE %s::uuid IS NULL OR id > %s::uuid ORDER BY id LIMIT %s"
    ).format(backup), (after, after, policy.size)).fetchall()]


# --- FASE 2: backup --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fase2Backup:
    run_id: str
    schema: str
    table: str
    row_count: int
    checksum: str
    csv: Path | None
    csv_sha256: str | None
    key_counts_before: KeyCounts

    def as_facts(self) -> dict[str, Any]:
        return {"schema": self.schema, "table": self.table, "row_count": self.row_count,
                "checksum": self.checksum, "csv": str(self.csv) if self.csv else None,
                "csv_sha256": self.csv_sha256,
                "key_counts_before": {"total": self.key_counts_before.total,
                                      "active": self.key_counts_before.active}}


def backup_table_name(run_id: str) -> str:
    return "fase2_keys_" + re.sub(r"[^a-z0-9_]", "_", run_id.lower())[:40]


def ensure_backup_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(schema)))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.runs ("
        " run_id text PRIMARY KEY, phase text NOT NULL, backup_table text NOT NULL,"
        " row_count integer NOT NULL, checksum text NOT NULL, csv_path text,"
        " key_total integer NOT NULL, key_active integer NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now())").format(sql.Identifier(schema)))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.fase2_progress ("
        " run_id text NOT NULL, batch integer NOT NULL, last_key_id uuid NOT NULL,"
        " converted integer NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (run_id, batch))").format(sql.Identifier(schema)))


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


def api_keys_checksum(conn: psycopg.Connection[Any], ids_from: tuple[str, str] | None = None) -> str:
    """Checksum of api_keys (without usage columns); only the ids of a backup table if given."""
    where: sql.Composable = sql.SQL("")
    if ids_from:
        where = sql.SQL("WHERE id IN (SELECT id FROM {})").format(sql.Identifier(*ids_from))
    return rows_checksum(conn, sql.Identifier("api_keys"), checksum_columns(conn), where)


def existing_backup(conn: psycopg.Connection[Any], schema: str, run_id: str) -> dict[str, Any] | None:
    if not table_exists(conn, schema, "runs"):
        return None
    row = conn.execute(sql.SQL(
        "SELECT backup_table, row_count, checksum, csv_path, key_total, key_active "
        "FROM {}.runs WHERE run_id = %s").format(sql.Identifier(schema)), (run_id,)).fetchone()
    if row is None:
        return None
    return {"table": row[0], "row_count": row[1], "checksum": row[2], "csv": row[3],
            "key_total": row[4], "key_active": row[5]}


def backup_fase2(conn: psycopg.Connection[Any], *, schema: str, run_id: str, csv_path: Path) -> Fase2Backup:
    """Copy every branch key, as it is, into a table of its own and a CSV; idempotent per run.

    One transaction: the table, its rows and the `runs` row appear together or not at all. The
    CSV (mode 0600: it holds key hashes) is written from the table afterwards, also on a rerun.
    """
    found = existing_backup(conn, schema, run_id)
    if found is None:
        table = backup_table_name(run_id)
        with conn.transaction():
            ensure_backup_schema(conn, schema)
            counts = key_counts(conn)
            conn.execute(sql.SQL(
                "CREATE TABLE {bk} AS SELECT k.*, %s::text AS {tag} FROM api_keys k "
                "WHERE k.scope_type = 'branch' ORDER BY k.id").format(
                    bk=sql.Identifier(schema, table), tag=sql.Identifier(RUN_TAG)), (run_id,))
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(
                sql.Identifier(schema, table)))
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                sql.Identifier(schema, table),
                sql.Literal(f"pre-image of the api_keys rows converted by rollback run {run_id}")))
            rows = _count(conn, schema, table)
            checksum = rows_checksum(conn, sql.Identifier(schema, table),
                                     checksum_columns(conn, schema, table))
            conn.execute(sql.SQL(
                "INSERT INTO {}.runs (run_id, phase, backup_table, row_count, checksum, csv_path, "
                "key_total, key_active) VALUES (%s, 'fase2', %s, %s, %s, %s, %s, %s)").format(
                    sql.Identifier(schema)),
                (run_id, table, rows, checksum, str(csv_path), counts.total, counts.active))
        found = existing_backup(conn, schema, run_id)
        assert found is not None
    conn.commit()
    csv_sha = write_backup_csv(conn, schema, found["table"], csv_path)
    return Fase2Backup(run_id, schema, found["table"], int(found["row_count"]), found["checksum"],
                       csv_path, csv_sha, KeyCounts(int(found["key_total"]), int(found["key_active"])))


def _count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()
    return int(row[0]) if row else 0


def write_backup_csv(conn: psycopg.Connection[Any], schema: str, table: str, path: Path) -> str:
    """Write the backup table as CSV with a header (mode 0600); returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as handle, conn.cursor() as cur, cur.copy(
        sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)").format(
            sql.Identifier(schema, table))) as copy:
        for chunk in copy:
            handle.write(chunk)
            digest.update(chunk)
    conn.commit()
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


# --- FASE 2: conversion in batches -------------------------------------------------------------


@dataclass
class BatchPolicy:
    size: int = 500
    lock_timeout_ms: int = 2000
    retries: int = 5
    backoff_s: float = 0.5


@dataclass
class Conversion:
    batches: int = 0
    converted: int = 0
    retries: int = 0
    resumed_after: int = 0
    late_keys: int = 0
    remaining: int = 0
    notes: list[str] = field(default_factory=list)


def progress(conn: psycopg.Connection[Any], schema: str, run_id: str) -> tuple[int, str | None, int]:
    """(last batch number, last key id, rows converted) committed so far by this run."""
    if not table_exists(conn, schema, "fase2_progress"):
        return 0, None, 0
    row = conn.execute(sql.SQL(
        "SELECT coalesce(max(batch), 0), (SELECT last_key_id::text FROM {p} WHERE run_id = %s "
        "ORDER BY batch DESC LIMIT 1), coalesce(sum(converted), 0) FROM {p} WHERE run_id = %s"
    ).format(p=sql.Identifier(schema, "fase2_progress")), (run_id, run_id)).fetchone()
    assert row is not None
    return int(row[0]), row[1], int(row[2])


#: the longest wait between two attempts: doubling from [run] retry_backoff_s, up to 100 retries
#: ([run] batch_retries) would otherwise wait for ages
MAX_BACKOFF_S = 30.0


def backoff(base_s: float, attempt: int) -> float:
    """Seconds to wait before retry `attempt` + 1 (0-based): doubling, capped."""
    return min(base_s * 2.0 ** min(attempt, 32), MAX_BACKOFF_S)


def _retrying(policy: BatchPolicy, what: str, result: Conversion,
              log: Callable[[str], None], action: Callable[[], int]) -> int:
    attempt = 0
    while True:
        try:
            return action()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
                psycopg.errors.SerializationFailure, psycopg.errors.QueryCanceled) as exc:
            attempt += 1
            result.retries += 1
            if attempt > policy.retries:
                raise StepFailed(
                    f"{what}: still blocked after {policy.retries} retries ({first_line(exc)}); the "
                    "batches committed so far stay converted: rerun to continue, or raise "
                    "[run] lock_timeout_ms") from None
            wait = backoff(policy.backoff_s, attempt - 1)
            log(f"{what}: {first_line(exc)}; retry {attempt}/{policy.retries} in {wait:.1f} s")
            time.sleep(wait)


def convert_branch_keys(conn: psycopg.Connection[Any], *, schema: str, table: str, run_id: str,
                        policy: BatchPolicy, log: Callable[[str], None],
                        guard: Callable[[], None] = lambda: None) -> Conversion:
    """Convert the keys of the backup table to tenant keys, batch by batch, resumable.

    `guard` runs before every attempt at a batch and raises to stop (the run lost its lock).

    Each batch: SET LOCAL lock_timeout, UPDATE the next `policy.size` keys (by id, after the last
    committed batch) that are still branch-scoped, INSERT its progress row, COMMIT. Then keys that
    became branch-scoped after the backup (none, normally) are backed up and converted the same
    way, so that no branch key remains.
    """
    result = Conversion()
    batch, last_id, converted = progress(conn, schema, run_id)
    conn.commit()
    # totals of the run, over every attempt: a resumed run reports all its batches, not its last part
    result.resumed_after, result.batches, result.converted = batch, batch, converted
    if batch:
        log(f"continuing after batch {batch} ({converted} keys already converted by this run)")
    backup = sql.Identifier(schema, table)
    progress_table = sql.Identifier(schema, "fase2_progress")

    def one_batch() -> int:
        nonlocal batch, last_id
        guard()
        with conn.transaction():
            ids = _next_batch(conn, backup, last_id, policy)
            if not ids:
                return -1
            updated = conn.execute(
                "UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL, updated_at = now() "
                "WHERE id = ANY(%s) AND scope_type = 'branch'", (ids,)).rowcount
            conn.execute(sql.SQL(
                "INSERT INTO {} (run_id, batch, last_key_id, converted) VALUES (%s, %s, %s, %s)"
            ).format(progress_table), (run_id, batch + 1, ids[-1], updated))
        batch, last_id = batch + 1, str(ids[-1])
        return updated

    while True:
        done = _retrying(policy, f"batch {batch + 1}", result, log, one_batch)
        if done < 0:
            break
        result.batches += 1
        result.converted += done
        log(f"batch {batch}: {done} keys converted (total {result.converted})")

    def late_batch() -> int:
        nonlocal batch
        guard()
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{policy.lock_timeout_ms}ms")))
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM api_keys WHERE scope_type = 'branch' ORDER BY id LIMIT %s "
                "FOR UPDATE", (policy.size,)).fetchall()]
            if not ids:
                return -1
            conn.execute(sql.SQL(
                "INSERT INTO {} SELECT k.*, %s FROM api_keys k WHERE k.id = ANY(%s) "
                "ON CONFLICT (id) DO NOTHING").format(backup), (run_id, ids))
            updated = conn.execute(
                "UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL, updated_at = now() "
                "WHERE id = ANY(%s)", (ids,)).rowcount
            conn.execute(sql.SQL(
                "INSERT INTO {} (run_id, batch, last_key_id, converted) VALUES (%s, %s, %s, %s)"
            ).format(progress_table), (run_id, batch + 1, max(ids), updated))
            _refresh_registry(conn, schema, table, run_id)
        batch += 1
        return updated

    while True:
        done = _retrying(policy, "late keys", result, log, late_batch)
        if done < 0:
            break
        result.batches += 1
        result.converted += done
        result.late_keys += done
        log(f"{done} keys became branch-scoped after the backup: backed up and converted")
    row = conn.execute("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'").fetchone()
    conn.commit()
    result.remaining = int(row[0]) if row else 0
    return result


def _refresh_registry(conn: psycopg.Connection[Any], schema: str, table: str, run_id: str) -> None:
    rows = _count(conn, schema, table)
    checksum = rows_checksum(conn, sql.Identifier(schema, table), checksum_columns(conn, schema, table))
    conn.execute(sql.SQL("UPDATE {}.runs SET row_count = %s, checksum = %s WHERE run_id = %s").format(
        sql.Identifier(schema)), (rows, checksum, run_id))


# --- FASE 2: undo ------------------------------------------------------------------------------


@dataclass
class Fase2Restore:
    rows: int = 0
    restored: int = 0
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)       # keys deleted since the backup
    changed_since: list[str] = field(default_factory=list)  # scope changed by someone else since
    checksum_before: str = ""
    checksum_after: str = ""
    differing: list[str] = field(default_factory=list)  # keys changed since, other than scope
    #: keys that could not be put back, with the database's reason (e.g. their branch is gone)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: keys whose platform-owned columns (its triggers and counters) differ: never a mismatch
    platform_rewrote: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.checksum_before == self.checksum_after


def verify_backup(conn: psycopg.Connection[Any], schema: str, run_id: str) -> dict[str, Any]:
    """The backup's registry row, after checking its table still matches its checksum."""
    found = existing_backup(conn, schema, run_id)
    if found is None:
        raise StepFailed(f"run {run_id} has no FASE 2 backup in {schema}.runs: nothing to restore")
    table = found["table"]
    if not table_exists(conn, schema, table):
        raise StepFailed(f"backup table {schema}.{table} of run {run_id} is gone: restore from the "
                         f"CSV ({found['csv']}) by hand")
    actual = rows_checksum(conn, sql.Identifier(schema, table), checksum_columns(conn, schema, table))
    if actual != found["checksum"]:
        raise StepFailed(f"backup table {schema}.{table} does not match its checksum "
                         f"({actual[:12]} != {found['checksum'][:12]}): it was changed after the "
                         "backup; refusing to restore from it")
    return found


def restore_fase2(conn: psycopg.Connection[Any], *, schema: str, run_id: str, policy: BatchPolicy,
                  log: Callable[[str], None],
                  platform_owned: Sequence[str] = ()) -> Fase2Restore:
    """Put the converted keys back from the pre-image, in place, in batches; verify by checksum.

    Only the columns the conversion changed are written back (scope, branch, updated_at); a key
    someone revoked or renamed since stays revoked and renamed. A key whose scope was changed by
    someone else since the rollback is left alone and reported; a deleted key is not re-created.

    `platform_owned` are columns the platform rewrites itself (the profile's managed columns and
    what its triggers set, such as `branch_context`): the verification leaves them out and
    reports the keys whose values there changed apart, never as a mismatch. A batch the
    database refuses (a key whose branch was deleted since: the foreign key, or the platform's
    own branch trigger) is retried key by key: each refused key is reported with the reason and
    the others are restored.
    """
    found = verify_backup(conn, schema, run_id)
    conn.commit()
    table = found["table"]
    backup = sql.Identifier(schema, table)
    result = Fase2Restore(rows=int(found["row_count"]), checksum_before=found["checksum"])
    result.missing = [r[0] for r in conn.execute(sql.SQL(
        "SELECT b.id::text FROM {} b WHERE NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = b.id) "
        "ORDER BY b.id").format(backup)).fetchall()]
    result.changed_since = [r[0] for r in conn.execute(sql.SQL(
        "SELECT b.id::text FROM {} b JOIN api_keys k ON k.id = b.id "
        "WHERE NOT (k.scope_type = 'tenant' AND k.branch_id IS NULL) "
        "AND (k.scope_type, k.branch_id) IS DISTINCT FROM (b.scope_type, b.branch_id) ORDER BY b.id"
    ).format(backup)).fetchall()]
    conn.commit()
    counter = Conversion()
    last_id: str | None = None

    put_back = sql.SQL(
        "UPDATE api_keys k SET scope_type = b.scope_type, branch_id = b.branch_id, "
        "updated_at = b.updated_at FROM {} b "
        "WHERE b.id = k.id AND k.id = ANY(%s) "
        "AND k.scope_type = 'tenant' AND k.branch_id IS NULL "
        "AND (k.scope_type, k.branch_id, k.updated_at) IS DISTINCT FROM "
        "    (b.scope_type, b.branch_id, b.updated_at)").format(backup)

    def one_batch() -> int:
        nonlocal last_id
        with conn.transaction():
            ids = _next_batch(conn, backup, last_id, policy)
            if not ids:
                return -1
            try:
                with conn.transaction():  # a savepoint: a refused batch is redone key by key
                    updated = conn.execute(put_back, (ids,)).rowcount
            except (psycopg.errors.IntegrityError, psycopg.errors.RaiseException) as exc:
                log(f"a batch was refused ({first_line(exc)}): restoring its keys one by one")
                updated = 0
                for key_id in ids:
                    try:
                        with conn.transaction():
                            updated += conn.execute(put_back, ([key_id],)).rowcount
                    except (psycopg.errors.IntegrityError, psycopg.errors.RaiseException) as one:
                        result.failed.append((str(key_id), first_line(one)))
        last_id = str(ids[-1])
        return updated

    while True:
        done = _retrying(policy, "restore batch", counter, log, one_batch)
        if done < 0:
            break
        result.restored += done
        if done:
            log(f"restored {result.restored} keys so far")
    present = result.rows - len(result.missing) - len(result.changed_since) - len(result.failed)
    result.unchanged = present - result.restored
    # verification: the rows still there equal their pre-image, column for column, but for the
    # usage counters and what the platform rewrites itself (its triggers run on the restore too)
    owned = set(platform_owned)
    cols = [c for c in checksum_columns(conn, schema, table) if c not in owned]
    skip = result.missing + result.changed_since + [key_id for key_id, _ in result.failed]
    where = sql.SQL("WHERE NOT (id::text = ANY({}))").format(sql.Literal(skip))
    result.checksum_before = rows_checksum(conn, backup, cols, where)
    result.checksum_after = rows_checksum(
        conn, sql.Identifier("api_keys"), cols,
        sql.SQL("WHERE id IN (SELECT id FROM {}) AND NOT (id::text = ANY({}))").format(
            backup, sql.Literal(skip)))
    if result.checksum_after != result.checksum_before:
        result.differing = differing_keys(conn, backup, cols, skip)
    rewritten = [c for c in checksum_columns(conn, schema, table) if c in owned]
    if rewritten:
        result.platform_rewrote = differing_keys(conn, backup, rewritten, skip)
    conn.commit()
    return result


def differing_keys(conn: psycopg.Connection[Any], backup: sql.Composable, cols: list[str],
                   skip: Sequence[str] = ()) -> list[str]:
    """Keys whose row differs from the pre-image in one of `cols`, with those columns."""
    found = []
    rows = conn.execute(sql.SQL(
        "SELECT b.id::text, to_jsonb(b), to_jsonb(k) FROM {} b JOIN api_keys k ON k.id = b.id "
        "ORDER BY b.id").format(backup)).fetchall()
    for key_id, before, after in rows:
        if key_id in skip:
            continue
        changed = [c for c in cols if before.get(c) != after.get(c)]
        if changed:
            found.append(f"{key_id} ({', '.join(changed)})")
    return found


# --- FASE 3: objects of the migration ----------------------------------------------------------

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"({_IDENT}(?:\s*\.\s*{_IDENT})?)"
_CREATE = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?"
    r"(?P<kind>(?:UNIQUE\s+)?INDEX|MATERIALIZED\s+VIEW|(?:TEMP(?:ORARY)?\s+|RECURSIVE\s+)*VIEW|FUNCTION|PROCEDURE)"
    r"\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?" + _QUALIFIED,
    re.IGNORECASE,
)
KIND_ORDER = {"view": 0, "function": 1, "materialized view": 2, "index": 3}


@dataclass(frozen=True)
class DbObject:
    kind: str          # index | view | materialized view | function
    name: str          # as written in the migration, unquoted, without arguments
    args: str = ""     # a function's argument list as written

    @property
    def label(self) -> str:
        return f"{self.name}({self.args})" if self.kind == "function" else self.name

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "args": self.args}


def _strip_sql(text: str) -> str:
    """Comments and string/dollar-quoted bodies blanked, so only statements remain."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif text[i] == '"':  # a quoted identifier, kept as it is: `--` in it is no comment
            j = i + 1
            while j < n and not (text[j] == '"' and not text.startswith('""', j)):
                j += 2 if text.startswith('""', j) else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text[i] == "'":
            j = i + 1
            while j < n and not (text[j] == "'" and not text.startswith("''", j)):
                j += 2 if text.startswith("''", j) else 1
            out.append("''")
            i = j + 1
        elif text[i] == "$" and (m := _DOLLAR.match(text, i)):
            end = text.find(m.group(0), m.end())
            out.append("$$$$")
            i = n if end < 0 else end + len(m.group(0))
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _unquote(name: str) -> str:
    parts = [p.strip() for p in re.split(r"\.(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", name)]
    return ".".join(p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts)


def parse_migration_objects(text: str) -> list[DbObject]:
    """The indexes, views, materialized views and functions a migration creates, in its order."""
    clean = _strip_sql(text)
    found: list[DbObject] = []
    for match in _CREATE.finditer(clean):
        kind = re.sub(r"\s+", " ", match.group("kind").lower())
        kind = "index" if kind.endswith("index") else "view" if kind.endswith("view") and \
            not kind.startswith("materialized") else kind
        if kind == "procedure":
            kind = "function"
        name = _unquote(match.group(2))
        args = ""
        if kind == "function":
            rest = clean[match.end():]
            if rest.lstrip().startswith("("):
                start = rest.index("(")
                depth, j = 0, start
                while j < len(rest):
                    depth += {"(": 1, ")": -1}.get(rest[j], 0)
                    if depth == 0:
                        break
                    j += 1
                args = " ".join(rest[start + 1:j].split())
        obj = DbObject(kind, name, args)
        if obj not in found:
            found.append(obj)
    return found


@dataclass
class ObjectState:
    obj: DbObject
    present: bool
    identity: str | None = None   # schema-qualified name, or regprocedure for a function
    definition: str | None = None
    valid: bool = True
    #: what a definition does not carry, saved with it and put back on restore
    owner: str | None = None
    acl: str | None = None        # the aclitem[] as text (NULL: the owner's defaults)
    comment: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**self.obj.as_dict(), "present": self.present, "identity": self.identity,
                "definition": self.definition, "owner": self.owner, "acl": self.acl,
                "comment": self.comment}


_REL_EXTRAS = ("SELECT pg_get_userbyid(c.relowner), c.relacl::text, obj_description(c.oid, 'pg_class') "
               "FROM pg_class c WHERE c.oid = %s")
_FUNC_EXTRAS = ("SELECT pg_get_userbyid(p.proowner), p.proacl::text, obj_description(p.oid, 'pg_proc') "
                "FROM pg_proc p WHERE p.oid = %s::regprocedure")


def _extras(conn: psycopg.Connection[Any], query: str, oid: Any) -> tuple[str | None, ...]:
    row = conn.execute(query, (oid,)).fetchone()  # type: ignore[call-overload]
    return (None, None, None) if row is None else (row[0], row[1], row[2])


def _regtype(conn: psycopg.Connection[Any], text: str) -> str | None:
    try:
        with conn.transaction():
            row = conn.execute("SELECT to_regtype(%s)::text", (text,)).fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row and row[0] else None


def _function_identity(conn: psycopg.Connection[Any], obj: DbObject) -> str | None:
    """The regprocedure of a function named in the migration, resolving argument names away.

    Each argument is `[mode] [name] type [DEFAULT ...]`; PostgreSQL itself decides which words
    form the type. If that fails, a function with that name and no overloads is taken."""
    types: list[str] = []
    for raw in _split_args(obj.args):
        words = re.sub(r"\s+(DEFAULT\b.*|=.*)$", "", raw, flags=re.IGNORECASE | re.DOTALL).split()
        if words and words[0].upper() in ("IN", "OUT", "INOUT", "VARIADIC"):
            if words[0].upper() == "OUT":
                continue
            words = words[1:]
        options = [" ".join(words[1:]), " ".join(words)] if len(words) > 1 else [" ".join(words)]
        resolved = next((t for t in (_regtype(conn, o) for o in options if o) if t), None)
        if resolved is None:
            types = []
            break
        types.append(resolved)
    else:
        try:
            with conn.transaction():
                row = conn.execute("SELECT to_regprocedure(%s)::text",
                                   (f"{_quoted(obj.name)}({', '.join(types)})",)).fetchone()
            if row and row[0]:
                return str(row[0])
        except psycopg.Error:
            pass
    schema, _, name = obj.name.rpartition(".")
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proname = %s AND (n.nspname = %s "
        "OR (%s = '' AND n.nspname = ANY(current_schemas(false))))",
        (name, schema, schema)).fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None


def _quoted(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _split_args(args: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in args:
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def inspect_object(conn: psycopg.Connection[Any], obj: DbObject) -> ObjectState:
    """Is the object there, and what is its definition (to recreate it exactly)?"""
    if obj.kind == "function":
        identity = _function_identity(conn, obj)
        if identity is None:
            return ObjectState(obj, False)
        row = conn.execute("SELECT pg_get_functiondef(%s::regprocedure)", (identity,)).fetchone()
        owner, acl, comment = _extras(conn, _FUNC_EXTRAS, identity)
        return ObjectState(obj, True, identity, row[0] if row else None,
                           owner=owner, acl=acl, comment=comment)
    relkind = {"index": "i", "view": "v", "materialized view": "m"}[obj.kind]
    row = conn.execute(
        "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)", (_quoted(obj.name),)).fetchone()
    if row is None or row[2] != relkind:
        return ObjectState(obj, False)
    oid, identity = row[0], row[1]
    owner, acl, comment = _extras(conn, _REL_EXTRAS, oid)
    if obj.kind == "index":
        d = conn.execute("SELECT pg_get_indexdef(%s), i.indisvalid FROM pg_index i "
                         "WHERE i.indexrelid = %s", (oid, oid)).fetchone()
        assert d is not None
        return ObjectState(obj, True, identity, d[0], bool(d[1]), comment=comment)
    d = conn.execute("SELECT pg_get_viewdef(%s, true)", (oid,)).fetchone()
    assert d is not None
    body = str(d[0]).rstrip().rstrip(";")
    if obj.kind == "view":
        definition = f"CREATE OR REPLACE VIEW {identity} AS\n{body}"
    else:
        definition = f"CREATE MATERIALIZED VIEW {identity} AS\n{body}\nWITH DATA"
    return ObjectState(obj, True, identity, definition, owner=owner, acl=acl, comment=comment)


def drop_order(objects: list[DbObject]) -> list[DbObject]:
    """Dependants first: views, functions, materialized views, then indexes; each kind in the
    reverse of its creation order."""
    ranked = list(enumerate(objects))
    return [o for _, o in sorted(ranked, key=lambda p: (KIND_ORDER[p[1].kind], -p[0]))]


def drop_object(conn: psycopg.Connection[Any], state: ObjectState, lock_timeout_ms: int) -> None:
    """Drop one object (an index CONCURRENTLY, so tables stay writable). `conn` is autocommit."""
    assert state.identity is not None
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")))
    statement = {
        "index": "DROP INDEX CONCURRENTLY IF EXISTS {}",
        "view": "DROP VIEW IF EXISTS {}",
        "materialized view": "DROP MATERIALIZED VIEW IF EXISTS {}",
        "function": "DROP FUNCTION IF EXISTS {}",
    }[state.obj.kind]
    conn.execute(sql.SQL(statement).format(sql.SQL(state.identity)))


def recreate_object(conn: psycopg.Connection[Any], definition: dict[str, Any], lock_timeout_ms: int) -> None:
    """Recreate one object from its saved definition (indexes CONCURRENTLY). `conn` is autocommit."""
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")))
    text = str(definition["definition"])
    if definition["kind"] == "index":
        text = re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY IF NOT EXISTS ", text)
    conn.execute(text.encode("utf-8"))
    restore_extras(conn, definition)


_KEYWORD = {"index": "INDEX", "view": "VIEW", "materialized view": "MATERIALIZED VIEW",
            "function": "FUNCTION"}


def restore_extras(conn: psycopg.Connection[Any], definition: Mapping[str, Any]) -> None:
    """Owner, grants and comment as they were saved: a definition alone carries none of them,
    and a recreated object would otherwise get whatever the default privileges give."""
    identity, kind = definition.get("identity"), str(definition["kind"])
    if not identity:
        return
    target = sql.SQL(identity)
    keyword = sql.SQL(_KEYWORD[kind])
    if kind != "index" and definition.get("owner"):
        conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(
            keyword, target, sql.Identifier(definition["owner"])))
    if kind != "index" and "acl" in definition:
        on = sql.SQL("FUNCTION" if kind == "function" else "TABLE")
        now = conn.execute(sql.SQL(
            "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END "
            "FROM aclexplode(({})) a").format(_acl_of(kind, identity))).fetchall()
        for (grantee,) in now:
            conn.execute(sql.SQL("REVOKE ALL ON {} {} FROM {}").format(
                on, target, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC")))
        saved = definition.get("acl")
        if saved is None and definition.get("owner"):  # it had the owner's default privileges
            row = conn.execute("SELECT acldefault(%s, (SELECT oid FROM pg_roles WHERE rolname = %s))"
                               "::text", ("f" if kind == "function" else "r",
                                          definition["owner"])).fetchone()
            saved = row[0] if row else None
        if saved:
            grants = conn.execute(
                "SELECT CASE WHEN grantee = 0 THEN NULL ELSE pg_get_userbyid(grantee) END, "
                "privilege_type, is_grantable FROM aclexplode(%s::aclitem[])", (saved,)).fetchall()
            for grantee, privilege, grantable in grants:
                conn.execute(sql.SQL("GRANT {} ON {} {} TO {}{}").format(
                    sql.SQL(privilege), on, target,
                    sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                    sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    if definition.get("comment") is not None:
        conn.execute(sql.SQL("COMMENT ON {} {} IS {}").format(
            keyword, target, sql.Literal(definition["comment"])))


def _acl_of(kind: str, identity: str) -> sql.Composable:
    if kind == "function":
        return sql.SQL("SELECT proacl FROM pg_proc WHERE oid = {}::regprocedure").format(
            sql.Literal(identity))
    return sql.SQL("SELECT relacl FROM pg_class WHERE oid = {}::regclass").format(sql.Literal(identity))
