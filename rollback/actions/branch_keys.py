"""FASE 2's database action: branch keys become tenant keys, resumably, and the undo.

In the backup schema (`[run] backup_schema`, default `rollback_backup`):

    runs                      one row per backup: run id, table, row count, checksum, CSV path,
                              the backup's transaction horizon (`backup_xmin`, see
                              `unchanged_before`), the pages where the walk's parts begin
                              (`walk_starts`, see `walk_parts`)
    fase2_keys_<stamp>        the pre-image of every key the run converts: all api_keys columns,
                              exactly as they were, plus `rollback_run_id`
    fase2_progress            one row per committed batch: run id, batch number, rows
                              converted, where the walk goes on (`next_ctid`) in which part
                              of the table (`lane`), the batch's last key; written in the
                              same transaction as the batch

The backup's checksum is the SHA-256 of its CSV (the table streamed out by one COPY, in id
order). The conversion walks api_keys in physical order (ctid ranges) in batches sized to a lock
budget, on `[run] walk_connections` connections at once, each over its own part of the table,
then sweeps up by id what the walk passed by (rows the API moved meanwhile, keys made
branch-scoped after the backup); a batch and its progress row commit together under `SET LOCAL
lock_timeout`, and a batch that cannot get its locks is retried. A rerun goes on from the last
committed batch (see `convert_branch_keys`). The undo (`restore_fase2`) updates the rows that
are still in `api_keys` in place, by id, from the pre-image: it never inserts a row that is
still there (the original scripts' `\\copy api_keys FROM backup.csv` did).

The step runs before the deploy: the FASE 2 code still live reads a tenant key as a tenant key,
and the reverted code, which no longer knows branch keys, never meets one.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from rollback.actions import DatabaseAction, DatabaseStep
from rollback.errors import StepFailed
from rollback.runs.core import Done, Options, Run, Step, StepPlan, still_locked
from rollback.runs.dbops import (
    RUN_TAG,
    BatchPolicy,
    backoff,
    checksum_columns,
    connect,
    file_sha256,
    has_column,
    read_only,
    rows_checksum,
    table_exists,
    without_parallel_workers,
)
from rollback.runs.locks import first_line

#: the columns the conversion changes (and the undo puts back)
CONVERTED_COLUMNS = ("scope_type", "branch_id", "updated_at")
#: the plan lists keys one by one up to these numbers (its --json form lists all)
MAX_TENANTS_LISTED, MAX_KEYS_LISTED = 200, 25


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
        " created_at timestamptz NOT NULL DEFAULT now(), backup_xmin bigint, walk_starts integer[])"
    ).format(sql.Identifier(schema)))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.fase2_progress ("
        " run_id text NOT NULL, batch integer NOT NULL, last_key_id uuid,"
        " converted integer NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(),"
        " next_ctid tid, lane smallint NOT NULL DEFAULT 0, PRIMARY KEY (run_id, batch))"
    ).format(sql.Identifier(schema)))
    _progress_columns(conn, schema)
    for column, kind in (("backup_xmin", "bigint"), ("walk_starts", "integer[]")):
        if not has_column(conn, "runs", column, schema):  # a registry from before it
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                sql.Identifier(schema, "runs"), sql.Identifier(column), sql.SQL(kind)))


def _progress_columns(conn: psycopg.Connection[Any], schema: str) -> None:
    """A progress table made before the walk by physical order gets its position column (and a
    batch that saw only keys converted meanwhile has no last key); one made before the walk in
    parts, its part column (every row of it is part 0: the one part there was)."""
    progress_table = sql.Identifier(schema, "fase2_progress")
    if not has_column(conn, "fase2_progress", "next_ctid", schema):
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS next_ctid tid").format(progress_table))
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN last_key_id DROP NOT NULL").format(progress_table))
    if not has_column(conn, "fase2_progress", "lane", schema):
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS lane smallint NOT NULL DEFAULT 0"
                             ).format(progress_table))


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


#: the registry's checksum before the backup's CSV is written (a crash in between): matches nothing
CHECKSUM_PENDING = ""


def backup_fase2(conn: psycopg.Connection[Any], *, schema: str, run_id: str, csv_path: Path) -> Fase2Backup:
    """Copy every branch key, as it is, into a table of its own and a CSV; idempotent per run.

    One transaction: the table, its rows and the `runs` row appear together or not at all. The
    table is written in the order the scan reads api_keys (no sort: its primary key orders it
    where an order matters). Then one COPY streams it out, in id order, to the CSV (mode 0600:
    it holds key hashes); the SHA-256 of those bytes is the backup's checksum, registered in
    `runs`. The backup is thus read once after it is written, where a checksum over each row
    as JSON cost more than the copy itself (4-11 s for 200k keys on 2 busy cores). A rerun
    writes the CSV again and refuses a table whose bytes no longer match the registered checksum.
    """
    found = existing_backup(conn, schema, run_id)
    if found is None:
        table = backup_table_name(run_id)
        with conn.transaction():
            without_parallel_workers(conn)
            ensure_backup_schema(conn, schema)
            horizon = snapshot_xmin(conn)  # before the copy's own snapshot: see unchanged_before
            counts = key_counts(conn)
            rows = conn.execute(sql.SQL(
                "CREATE TABLE {bk} AS SELECT k.*, %s::text AS {tag} FROM api_keys k "
                "WHERE k.scope_type = 'branch'").format(
                    bk=sql.Identifier(schema, table), tag=sql.Identifier(RUN_TAG)), (run_id,)).rowcount
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(
                sql.Identifier(schema, table)))
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                sql.Identifier(schema, table),
                sql.Literal(f"pre-image of the api_keys rows converted by rollback run {run_id}")))
            conn.execute(sql.SQL(
                "INSERT INTO {}.runs (run_id, phase, backup_table, row_count, checksum, csv_path, "
                "key_total, key_active, backup_xmin) VALUES (%s, 'fase2', %s, %s, %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(schema)),
                (run_id, table, rows, CHECKSUM_PENDING, str(csv_path), counts.total, counts.active,
                 horizon))
        found = existing_backup(conn, schema, run_id)
        assert found is not None
    conn.commit()
    csv_sha = write_backup_csv(conn, schema, found["table"], csv_path)
    if found["checksum"] == CHECKSUM_PENDING:
        _register(conn, schema, run_id, int(found["row_count"]), csv_sha)
        found["checksum"] = csv_sha
    elif csv_sha != found["checksum"] and not _legacy_checksum_matches(conn, schema, found):
        raise StepFailed(f"backup table {schema}.{found['table']} no longer matches its checksum "
                         f"({csv_sha[:12]} != {found['checksum'][:12]}): it was changed after the "
                         "backup; start over with `rollback run fase2 --new`")
    return Fase2Backup(run_id, schema, found["table"], int(found["row_count"]), found["checksum"],
                       csv_path, csv_sha, KeyCounts(int(found["key_total"]), int(found["key_active"])))


def _register(conn: psycopg.Connection[Any], schema: str, run_id: str, rows: int, checksum: str) -> None:
    conn.execute(sql.SQL("UPDATE {}.runs SET row_count = %s, checksum = %s WHERE run_id = %s").format(
        sql.Identifier(schema)), (rows, checksum, run_id))
    conn.commit()


def _legacy_checksum_matches(conn: psycopg.Connection[Any], schema: str, found: dict[str, Any]) -> bool:
    """A backup registered before checksums were the CSV's: SHA-256 over each row as JSON."""
    table = found["table"]
    legacy = rows_checksum(conn, sql.Identifier(schema, table), checksum_columns(conn, schema, table))
    conn.commit()
    return bool(legacy == found["checksum"])


def _count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()
    return int(row[0]) if row else 0


#: the session settings that fix how COPY writes dates, intervals, floats and bytes: the same
#: table gives the same CSV bytes (and checksum) in any session, whatever the client's locale
_COPY_SETTINGS = (("TimeZone", "UTC"), ("DateStyle", "ISO, MDY"), ("IntervalStyle", "postgres"),
                  ("extra_float_digits", "1"), ("bytea_output", "hex"))


def _copy_backup(conn: psycopg.Connection[Any], schema: str, table: str,
                 sink: Callable[[bytes], object]) -> str:
    """Stream the backup table as CSV with a header, in id order, into `sink`; its SHA-256."""
    digest = hashlib.sha256()
    for name, value in _COPY_SETTINGS:
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))
    without_parallel_workers(conn)
    with conn.cursor() as cur, cur.copy(
        sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)").format(
            sql.Identifier(schema, table))) as copy:
        for chunk in copy:
            data = bytes(chunk)
            sink(data)
            digest.update(data)
    conn.commit()
    return digest.hexdigest()


def backup_checksum(conn: psycopg.Connection[Any], schema: str, table: str) -> str:
    """The backup table's checksum now: the SHA-256 of its CSV, computed without a file."""
    return _copy_backup(conn, schema, table, lambda data: None)


def write_backup_csv(conn: psycopg.Connection[Any], schema: str, table: str, path: Path) -> str:
    """Write the backup table as CSV with a header (mode 0600); returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        sha = _copy_backup(conn, schema, table, handle.write)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return sha


@dataclass
class Conversion:
    batches: int = 0
    converted: int = 0
    retries: int = 0
    resumed_after: int = 0
    #: keys that became branch-scoped after the backup: backed up, then converted, by the sweep
    late_keys: int = 0
    #: keys of the backup the walk passed by because the API moved them (an update gives a row a
    #: new place): converted by the sweep
    moved_keys: int = 0
    remaining: int = 0
    #: the batch sizes the walk settled on, smallest and largest
    sizes: tuple[int, int] = (0, 0)
    #: the connections the walk converted with at once
    connections: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    """What a run's progress rows say: its highest batch number, its batches, the keys they
    converted, and where the walk goes on in each part of the table (lane: a ctid)."""

    last_batch: int = 0
    batches: int = 0
    converted: int = 0
    positions: dict[int, Tid] = field(default_factory=dict)


def progress(conn: psycopg.Connection[Any], schema: str, run_id: str) -> Progress:
    """What this run's batches committed so far. A run's progress rows from before the walk by
    physical order have no position: the walk then starts at the table's first page, which
    converts nothing twice (see `convert_branch_keys`)."""
    if not table_exists(conn, schema, "fase2_progress"):
        return Progress()
    _progress_columns(conn, schema)
    table = sql.Identifier(schema, "fase2_progress")
    row = conn.execute(sql.SQL(
        "SELECT coalesce(max(batch), 0), count(*), coalesce(sum(converted), 0) FROM {} "
        "WHERE run_id = %s").format(table), (run_id,)).fetchone()
    assert row is not None
    positions = {int(lane): Tid.parse(at) for lane, at in conn.execute(sql.SQL(
        "SELECT DISTINCT ON (lane) lane, next_ctid::text FROM {} WHERE run_id = %s "
        "ORDER BY lane, next_ctid DESC NULLS LAST").format(table), (run_id,)) if at is not None}
    return Progress(int(row[0]), int(row[1]), int(row[2]), positions)


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


# --- FASE 2: which keys the backup saw ---------------------------------------------------------

#: how far the transaction counter may have moved since the backup before its horizon is no
#: longer used: `age()` compares 32-bit transaction ids, exact up to 2^31 apart; a wide margin
XID_HORIZON_LIMIT = 2**31 - 2**28


def snapshot_xmin(conn: psycopg.Connection[Any]) -> int | None:
    """The oldest transaction still running for a snapshot taken now (64-bit, with its epoch):
    every transaction before it has ended. None before PostgreSQL 13 (no pg_current_snapshot)."""
    if conn.info.server_version < 130000:
        return None
    row = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()
    return int(row[0]) if row else None


def horizon_xid(backup_xmin: int | None, now_xmin: int | None) -> str | None:
    """The backup's horizon as a 32-bit transaction id for the walk, or None (the walk then looks
    every key up in the backup table): None if either is unknown, or if the counter has moved
    XID_HORIZON_LIMIT or more since (or backwards: another server)."""
    if backup_xmin is None or now_xmin is None or not 0 <= now_xmin - backup_xmin < XID_HORIZON_LIMIT:
        return None
    return str(backup_xmin % 2**32)


def unchanged_before(conn: psycopg.Connection[Any], schema: str, run_id: str) -> str | None:
    """The transaction id before which a row of api_keys is one the backup saw, or None.

    The backup registers `snapshot_xmin` read just before the statement that copies the branch
    keys: every transaction before it had ended before that statement's snapshot, which is no
    older. So a row version written by one of them (`xmin` older than the horizon) is the very
    version the backup copied if it was branch-scoped then, and it is still branch-scoped if it
    still is now (it was not updated: an update writes a new version with a newer `xmin`): its
    pre-image is in the backup table without looking it up. A key updated since the backup (the
    API's last-use update) or made branch-scoped after it has a newer `xmin` and is looked up.
    Frozen rows count as old, which they are."""
    if not has_column(conn, "runs", "backup_xmin", schema):
        return None
    row = conn.execute(sql.SQL("SELECT backup_xmin FROM {} WHERE run_id = %s").format(
        sql.Identifier(schema, "runs")), (run_id,)).fetchone()
    backup_xmin = int(row[0]) if row and row[0] is not None else None
    return horizon_xid(backup_xmin, snapshot_xmin(conn) if backup_xmin is not None else None)


# --- FASE 2: the walk by physical order ---------------------------------------------------------

#: the longest a batch should hold its keys locked: the API's own writes to those rows (the last
#: use of a key) wait for it. The aim is no wait over 1 s; a fifth of that leaves room for a
#: batch that runs five times longer than the one before predicted (the machine got busier)
LOCK_BUDGET_S = 0.2


def lock_budget_s(policy: BatchPolicy) -> float:
    """A batch's lock budget: LOCK_BUDGET_S, or a quarter of `lock_timeout_ms` where that is
    shorter (whoever waits for our rows may wait as long as we would wait for theirs)."""
    return min(LOCK_BUDGET_S, policy.lock_timeout_ms / 4000)


@dataclass(frozen=True, order=True)
class Tid:
    """A row's physical place (`ctid`): page and line pointer. `(p,0)` is before every row of
    page p (line pointers count from 1)."""

    page: int
    line: int = 0

    @classmethod
    def parse(cls, text: str) -> Tid:
        page, line = text.strip("()").split(",")
        return cls(int(page), int(line))

    def __str__(self) -> str:
        return f"({self.page},{self.line})"

    def after(self) -> Tid:
        return Tid(self.page, self.line + 1)


@dataclass
class BatchSizer:
    """How many keys the next batch takes: at most `limit` (`[run] batch_size`), fewer while a
    batch takes longer than `budget_s`.

    After each batch the size is scaled by budget / measured time (halved at least, doubled at
    most, so one slow or fast batch does not swing it): over budget it shrinks at once, under
    half the budget it grows back towards the limit. A batch that waited for a lock counts with
    its wait: a contended table gets smaller batches. `pages_per_key` is how many pages hold one
    branch key, measured as the walk goes; a batch reads a window of pages twice the size it
    should need, so that a batch is rarely cut short by its window.
    """

    limit: int
    budget_s: float
    size: int = 0
    pages_per_key: float = 1.0
    smallest: int = 0
    largest: int = 0

    def __post_init__(self) -> None:
        self.size = self.size or self.limit

    def window(self) -> int:
        return max(1, math.ceil(self.size * self.pages_per_key * 2))

    def measured(self, keys: int, seconds: float) -> None:
        self.smallest = min(self.smallest or keys, keys) if keys else self.smallest
        self.largest = max(self.largest, keys)
        if keys < self.size or seconds <= 0:  # a short batch (end of window) says little
            if seconds > self.budget_s and keys:
                self.size = max(1, int(keys * self.budget_s / seconds))
            return
        if seconds > self.budget_s or seconds < self.budget_s / 2:
            scale = min(2.0, max(0.5, self.budget_s / seconds * 0.8))
            self.size = max(1, min(self.limit, int(self.size * scale)))

    def walked(self, pages: int, keys: int) -> None:
        if keys:
            self.pages_per_key = max(pages / keys, 1 / 400)  # a page holds at most ~290 rows


def _relation_pages(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_relation_size('api_keys') / current_setting('block_size')::int"
                       ).fetchone()
    return int(row[0]) if row else 0


#: what a sweep batch returns when every key it found had changed before it locked them
SWEEP_AGAIN = -2

#: how a walk batch commits: `synchronous_commit` for its own transaction only (set_config(...,
#: true) is SET LOCAL: no session state, so a transaction-mode pooler is no trouble; a user
#: setting, allowed on Supabase). Off, the commit does not wait for its WAL to reach the disk.
#: Why that is safe: a batch's keys and its progress row are one transaction, and WAL is replayed
#: in order, so a server crash can only lose a tail of the latest commits, each whole: the keys
#: of a lost batch are branch-scoped again and its progress row is gone with them, and the resume
#: starts where the last surviving progress row says (`progress`), redoing it. Whatever the API
#: committed durably after seeing a converted key comes later in the WAL, so it is never kept
#: without the batch it saw. Before the step reports done, `make_durable` commits synchronously,
#: which flushes the WAL up to it: every batch before it is on disk before the deploy.
WALK_SYNCHRONOUS_COMMIT = "off"

#: One batch, one statement. A key has a pre-image if its row is older than the backup's horizon
#: (`unchanged_before`, NULL when unknown), else if the backup table has its id: one index probe
#: per key was 1-1.5 s of the backend's CPU at 200k keys. `next` has no ORDER BY ctid: a TID
#: range scan returns the rows of its pages in order already, and with the sort it read the
#: whole window (twice the pages a batch needs) before the LIMIT, so every page twice (1-4 s of
#: backend CPU at 1M keys). Should a plan return them in another order, keys before the batch's
#: last one are left behind the walk and the sweep converts them: slower, never wrong.
_WALK = """
    WITH next AS MATERIALIZED (
        SELECT k.ctid AS tid FROM api_keys k
         WHERE k.ctid >= %(start)s::tid AND k.ctid < %(stop)s::tid AND k.scope_type = 'branch'
         LIMIT %(size)s),
    done AS (
        UPDATE api_keys k SET scope_type = 'tenant', branch_id = NULL, updated_at = now()
         WHERE k.ctid = ANY (ARRAY(SELECT tid FROM next)) AND k.scope_type = 'branch'
           AND (age(k.xmin) > age(%(unchanged_before)s::xid)
                OR EXISTS (SELECT 1 FROM {backup} b WHERE b.id = k.id))
        RETURNING k.id),
    batch AS MATERIALIZED (
        SELECT took.found, took.last, converted.n, converted.last_id,
               CASE WHEN took.found = %(size)s  -- full: go on right after its last key
                    THEN format('(%%s,%%s)', (took.last::text::point)[0]::bigint,
                                (took.last::text::point)[1]::bigint + 1)::tid
                    ELSE %(stop)s::tid END AS next_ctid  -- the window held fewer: after it
          FROM (SELECT count(*) AS found, max(tid) AS last FROM next) took,
               (SELECT count(*) AS n, max(id::text) AS last_id FROM done) converted),
    saved AS (
        INSERT INTO {progress} (run_id, batch, last_key_id, converted, next_ctid, lane)
        SELECT %(run_id)s, %(batch)s, last_id::uuid, n, next_ctid, %(lane)s FROM batch
         WHERE found > 0)
    SELECT found, n, next_ctid::text, set_config('synchronous_commit', %(commit)s, true)
      FROM batch
"""


#: the fewest pages a part of the walk takes: another connection is worth opening for a part
#: that takes a second or more (1000 pages of api_keys hold about 28,000 keys)
MIN_PART_PAGES = 1000


def part_starts(end: int, parts: int) -> list[int]:
    """The first page of each part of a walk over the pages before `end`: `parts` equal parts, or
    fewer where a part would have fewer than MIN_PART_PAGES pages (one, for a small table)."""
    count = max(1, min(parts, end // MIN_PART_PAGES))
    return [end * part // count for part in range(count)]


def part_ranges(starts: Sequence[int], positions: Mapping[int, Tid],
                end: int) -> list[tuple[int, Tid, int]]:
    """(part, where it goes on, the page it stops before) for each part with pages left. A part
    ends where the next one begins, the last at `end` (the table's last page now: it may have
    grown). A part goes on from its furthest committed batch (`positions`), or from its start."""
    ranges = []
    for part, first in enumerate(starts):
        stop = starts[part + 1] if part + 1 < len(starts) else end
        start = max(positions.get(part, Tid(first)), Tid(first))
        if start.page < stop:
            ranges.append((part, start, stop))
    return ranges


def walk_parts(conn: psycopg.Connection[Any], schema: str, run_id: str, committed: Progress,
               parts: int, end: int) -> list[tuple[int, Tid, int]]:
    """The parts of this run's walk still to go (`part_ranges`). A walk without parts registered
    splits the table (`part_starts`) and registers where its parts begin in `runs.walk_starts`
    before its first batch: a resume goes on with the same parts, whatever `[run]
    walk_connections` says then. A run with batches but no parts (from before the walk in
    parts) is split too: its batches are part 0's, which goes on from the furthest of them; a
    part it had walked into already is walked again from its start, finding nothing to convert
    there."""
    runs = sql.Identifier(schema, "runs")
    row = conn.execute(sql.SQL("SELECT walk_starts FROM {} WHERE run_id = %s").format(runs),
                       (run_id,)).fetchone()
    starts = [int(page) for page in row[0]] if row and row[0] else None
    if starts is None:
        starts = part_starts(end, parts)
        conn.execute(sql.SQL("UPDATE {} SET walk_starts = %s WHERE run_id = %s").format(runs),
                     (starts, run_id))
    conn.commit()
    return part_ranges(starts, committed.positions, end)


class BatchNumbers:
    """Batch numbers for the walk's connections and the sweep: each batch takes the next one; a
    batch that found no key gives its number back, and the lowest number given back is taken
    first. With one connection the committed batches are numbered 1, 2, 3, ...; with several,
    a number given back while another connection had taken the next may stay unused."""

    def __init__(self, last: int) -> None:
        self.last = last
        self._free: list[int] = []
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if self._free:
                return heapq.heappop(self._free)
            self.last += 1
            return self.last

    def give_back(self, number: int) -> None:
        with self._lock:
            heapq.heappush(self._free, number)


class Walk:
    """The walk's batches (`_WALK`), over the parts of the table, on one or more connections at
    once: each connection takes the next part not yet walked, walks it batch by batch with a
    batch sizer of its own, then takes the next. A connection that fails stops the others after
    their current batch, and its error is the walk's. With one connection it all happens in the
    calling thread."""

    def __init__(self, statement: sql.Composed, run_id: str, policy: BatchPolicy,
                 horizon: str | None, end: int, backed_up: int, committed: Progress,
                 result: Conversion, log: Callable[[str], None], guard: Callable[[], None]) -> None:
        self.statement, self.run_id, self.policy, self.horizon = statement, run_id, policy, horizon
        self.end, self.backed_up, self.result, self.log, self.guard = end, backed_up, result, log, guard
        self.numbers = BatchNumbers(committed.last_batch)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._parts: list[tuple[int, Tid, int]] = []
        self._sizers: list[BatchSizer] = []

    def run(self, connections: Sequence[psycopg.Connection[Any]],
            parts: Sequence[tuple[int, Tid, int]]) -> None:
        self._parts = list(parts)
        if len(connections) == 1:
            self._walker(connections[0])
            return
        errors: list[BaseException] = []
        threads = [threading.Thread(target=self._thread, args=(c, errors), daemon=True,
                                    name=f"fase2-walk-{n}") for n, c in enumerate(connections)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self.stopping.set()  # an interrupt here: each connection stops after its batch
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]

    def sizes(self) -> tuple[int, int]:
        smallest = [s.smallest for s in self._sizers if s.smallest]
        return (min(smallest, default=0), max((s.largest for s in self._sizers), default=0))

    def _thread(self, conn: psycopg.Connection[Any], errors: list[BaseException]) -> None:
        try:
            self._walker(conn)
        except BaseException as exc:  # the caller's thread raises it
            with self._lock:
                errors.append(exc)

    def _walker(self, conn: psycopg.Connection[Any]) -> None:
        # the walk's statements commit one by one, under the session's lock_timeout (ours alone)
        conn.autocommit = True
        conn.execute(sql.SQL("SET lock_timeout = {}").format(
            sql.Literal(f"{self.policy.lock_timeout_ms}ms")))
        try:
            while not self.stopping.is_set():
                with self._lock:
                    if not self._parts:
                        return
                    part = self._parts.pop(0)
                self._walk_part(conn, *part)
        except BaseException:
            self.stopping.set()  # at once: the others stop after the batch they have in flight
            raise
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("RESET lock_timeout")
                conn.autocommit = False

    def _walk_part(self, conn: psycopg.Connection[Any], part: int, start: Tid, stop: int) -> None:
        sizer = BatchSizer(self.policy.size, lock_budget_s(self.policy))
        sizer.walked(self.end, max(self.backed_up, 1))
        with self._lock:
            self._sizers.append(sizer)
        first_page, seen = start.page, 0
        retries = Conversion()  # this connection's retries, added to the run's below

        def one_batch(number: int) -> int:
            """One statement, its own transaction (autocommit): the keys, their conversion and
            the progress row commit together in one round trip. On two busy cores every round
            trip waits its turn for a CPU: four a batch (SET, UPDATE, INSERT, COMMIT) cost more
            than the UPDATE itself (91 s where one plain UPDATE took 46 s at load average 10)."""
            nonlocal start, seen
            self.guard()
            window_end = Tid(min(start.page + sizer.window(), stop))
            began = time.perf_counter()
            row = conn.execute(self.statement, {
                "start": str(start), "stop": str(window_end), "size": sizer.size,
                "run_id": self.run_id, "batch": number, "lane": part,
                "unchanged_before": self.horizon, "commit": WALK_SYNCHRONOUS_COMMIT}).fetchone()
            assert row is not None
            found, updated, following = int(row[0]), int(row[1]), Tid.parse(row[2])
            sizer.measured(found, time.perf_counter() - began)
            start, seen = following, seen + found
            sizer.walked(start.page - first_page, seen)
            return updated if found else -1

        try:
            while start.page < stop and not self.stopping.is_set():
                number = self.numbers.take()
                try:
                    converted = _retrying(self.policy, f"batch {number}", retries, self.log,
                                          functools.partial(one_batch, number))
                except BaseException:
                    self.numbers.give_back(number)
                    raise
                if converted < 0:
                    self.numbers.give_back(number)
                    continue
                with self._lock:
                    self.result.batches += 1
                    self.result.converted += converted
                    total = self.result.converted
                self.log(f"batch {number}: {converted} keys converted (total {total})")
        finally:
            with self._lock:
                self.result.retries += retries.retries


def convert_branch_keys(conn: psycopg.Connection[Any], *, schema: str, table: str, run_id: str,
                        policy: BatchPolicy, log: Callable[[str], None],
                        guard: Callable[[], None] = lambda: None,
                        connect: Callable[[], psycopg.Connection[Any]] | None = None) -> Conversion:
    """Convert the keys of the backup table to tenant keys, batch by batch, resumable.

    `guard` runs before every attempt at a batch and raises to stop (the run lost its lock).
    `connect` opens another connection to the same database, for the walk's other parts.

    **The walk.** The batches walk api_keys in physical order, from its first page to the page
    it ended at when the walk began: each takes the next branch keys by `ctid` within a window
    of pages (a TID range scan, PostgreSQL 14 or newer; older servers read the whole table for
    each batch) and updates them where they lie (a TID scan), under `SET LOCAL lock_timeout`,
    with its progress row (where the walk goes on, keys converted) in the same transaction. A
    batch by id instead reads 500 random pages for 500 keys, and pages it reads again later; in
    physical order each page is read once, as by one plain UPDATE. The batch size adapts
    (`BatchSizer`) to keep a batch within its lock budget; `[run] batch_size` is its largest.
    With `connect`, the table is split into parts (`walk_parts`: where they begin is registered
    before the first batch) and up to `policy.connections` connections walk them at once, each
    a part at a time (`Walk`): one plain UPDATE keeps one backend busy, two connections keep two.
    Each connection's batches hold only their own keys' locks, under the same lock budget.
    A batch is one statement in its own transaction, progress row included (one round trip),
    committed asynchronously (`WALK_SYNCHRONOUS_COMMIT`); the step ends with a synchronous
    commit (`make_durable`).

    **Correctness does not rest on where rows lie.** A key is converted only if it is still
    branch-scoped and has a pre-image in the backup (the UPDATE's own conditions, rechecked on
    the newest version of a row the API updates meanwhile): its row is older than the backup's
    horizon (`unchanged_before`), or the backup table has its id. So no key is converted twice
    and no key without a pre-image is converted by the walk. A row's place only says when the
    walk gets to it. An update moves a row (a HOT update to another line of its page, any other
    to another page): a key the API updates before the walk reaches it may land behind the walk,
    and a rerun after a crash starts at the recorded position. What the walk passes by, the
    sweep converts.

    **The sweep.** Then, until none remains, every key still branch-scoped is locked (by id,
    FOR NO KEY UPDATE, found before the lock is taken), its pre-image added to the backup if it
    has none (a key made branch-scoped after the backup; a moved key keeps the pre-image it
    has), converted, with a progress row.
    If the sweep added to the backup, the backup's CSV and checksum are written again.
    """
    result = Conversion()
    committed = progress(conn, schema, run_id)
    conn.commit()
    # totals of the run, over every attempt: a resumed run reports all its batches, not its last part
    result.resumed_after, result.batches, result.converted = (
        committed.last_batch, committed.batches, committed.converted)
    if committed.last_batch:
        log(f"continuing after batch {committed.last_batch} ({committed.converted} keys already "
            "converted by this run)")
    backup = sql.Identifier(schema, table)
    progress_table = sql.Identifier(schema, "fase2_progress")
    record = sql.SQL("INSERT INTO {} (run_id, batch, last_key_id, converted, next_ctid) "
                     "VALUES (%s, %s, %s, %s, %s::tid)").format(progress_table)
    end = _relation_pages(conn)
    parts = walk_parts(conn, schema, run_id, committed, policy.connections if connect else 1, end)
    backed_up = _count(conn, schema, table)
    horizon = unchanged_before(conn, schema, run_id)
    conn.commit()
    walk = Walk(sql.SQL(_WALK).format(backup=backup, progress=progress_table), run_id, policy,
                horizon, end, backed_up, committed, result, log, guard)
    connections = [conn]
    try:
        while connect is not None and len(connections) < min(policy.connections, len(parts)):
            try:
                connections.append(connect())
            except (StepFailed, psycopg.OperationalError) as exc:  # a connection limit
                log(f"the walk goes on with {len(connections)} connection(s): another was refused "
                    f"({first_line(exc)})")
                break
        result.connections = len(connections)
        walk.run(connections, parts)
    finally:
        for extra in connections[1:]:
            extra.close()
    result.sizes = walk.sizes()

    def late_batch() -> int:
        """Find the keys without a lock (after the walk the scope index is full of entries of
        converted rows: the search can take seconds), then, in a short transaction, lock those
        still branch-scoped FOR NO KEY UPDATE: the API's usage log rows (a foreign key check,
        FOR KEY SHARE) never wait for it, and its last-use updates wait for one batch only."""
        guard()
        # no ORDER BY: with it the planner, whose statistics still say a fifth of the table is
        # branch-scoped, walks the whole primary key for the first `size` branch keys by id and
        # finds none (6 s at 1M keys); without it, the scope index or one sequential scan. The
        # locks below are still taken in id order
        found = [r[0] for r in conn.execute(
            "SELECT id FROM api_keys WHERE scope_type = 'branch' LIMIT %s",
            (policy.size,)).fetchall()]
        conn.commit()
        if not found:
            return -1
        number = walk.numbers.take()
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{policy.lock_timeout_ms}ms")))
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM api_keys WHERE id = ANY(%s) AND scope_type = 'branch' "
                    "ORDER BY id FOR NO KEY UPDATE", (found,)).fetchall()]
                if not ids:
                    walk.numbers.give_back(number)
                    return SWEEP_AGAIN  # converted or re-scoped by someone else meanwhile
                added = conn.execute(sql.SQL(
                    "INSERT INTO {} SELECT k.*, %s FROM api_keys k WHERE k.id = ANY(%s) "
                    "ON CONFLICT (id) DO NOTHING").format(backup), (run_id, ids)).rowcount
                updated = conn.execute(
                    "UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL, "
                    "updated_at = now() WHERE id = ANY(%s)", (ids,)).rowcount
                conn.execute(record, (run_id, number, max(ids), updated, None))
        except BaseException:
            walk.numbers.give_back(number)
            raise
        result.late_keys += added
        result.moved_keys += updated - added
        return updated

    while True:
        done = _retrying(policy, "late keys", result, log, late_batch)
        if done == SWEEP_AGAIN:
            continue
        if done < 0:
            break
        result.batches += 1
        result.converted += done
        log(f"{done} keys the walk passed by (moved since, or branch-scoped after the backup): "
            "converted, the new ones backed up first")
    row = conn.execute("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'").fetchone()
    conn.commit()
    result.remaining = int(row[0]) if row else 0
    refresh_registry(conn, schema, run_id)
    make_durable(conn, schema, run_id)
    return result


def make_durable(conn: psycopg.Connection[Any], schema: str, run_id: str) -> None:
    """Commit the run's last progress row again, synchronously: the commit waits for the WAL to
    be flushed up to it, and with it every walk batch committed before (asynchronously, see
    WALK_SYNCHRONOUS_COMMIT). `SET LOCAL` so that a session or role default of off changes
    nothing; a transaction that writes nothing would write no commit record to wait for."""
    progress_table = sql.Identifier(schema, "fase2_progress")
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        conn.execute(sql.SQL(
            "UPDATE {p} SET committed_at = committed_at WHERE run_id = %s "
            "AND batch = (SELECT max(batch) FROM {p} WHERE run_id = %s)").format(p=progress_table),
            (run_id, run_id))


def refresh_registry(conn: psycopg.Connection[Any], schema: str, run_id: str) -> None:
    """If the sweep added keys to the backup (also in an attempt that died before it got here),
    write its CSV again and register its row count and checksum."""
    found = existing_backup(conn, schema, run_id)
    if found is None:
        return
    rows = _count(conn, schema, found["table"])
    conn.commit()
    if rows == int(found["row_count"]) and found["checksum"] != CHECKSUM_PENDING:
        return
    if found["csv"]:
        checksum = write_backup_csv(conn, schema, found["table"], Path(found["csv"]))
    else:
        checksum = backup_checksum(conn, schema, found["table"])
    _register(conn, schema, run_id, rows, checksum)


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
    actual = backup_checksum(conn, schema, table)
    if actual != found["checksum"] and not _legacy_checksum_matches(conn, schema, found):
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

# --- the action ----------------------------------------------------------------------------------


def batch_policy(run: Run) -> BatchPolicy:
    settings = run.settings.run
    return BatchPolicy(settings.batch_size, settings.lock_timeout_ms, settings.batch_retries,
                       settings.retry_backoff_s, settings.walk_connections)


class ConvertBranchKeys(DatabaseAction):
    kind: ClassVar[str] = "convert_branch_keys"
    before_deploy: ClassVar[bool] = True

    def active(self, options: Options) -> bool:
        return True

    def pending(self, run: Run, conn: psycopg.Connection[Any]) -> tuple[str, int]:
        return "branch_keys", sum(len(t.keys) for t in branch_keys_now(conn))

    def describe_backup(self, run: Run) -> tuple[list[str], dict[str, Any]]:
        with read_only(run.database_url) as conn:
            keys = sum(len(t.keys) for t in branch_keys_now(conn))
        return ([f"copy the {keys} branch-scoped keys (all columns, as they are) into "
                 f"{run.settings.run.backup_schema}.{backup_table_name(run.run_id)} and "
                 f"{run.dir / 'api_keys_backup.csv'} (mode 0600), with a checksum"], {"keys": keys})

    def backup(self, run: Run) -> tuple[list[str], dict[str, Any]]:
        csv_path = run.dir / "api_keys_backup.csv"
        with connect(run.database_url, application_name=f"rollback {run.run_id}") as conn:
            backup = backup_fase2(conn, schema=run.settings.run.backup_schema, run_id=run.run_id,
                                  csv_path=csv_path)
            tenants, active = affected_counts(conn, backup.schema, backup.table)
        facts = {"fase2_backup": backup.as_facts(),
                 "affected": {"tenants": tenants, "keys": backup.row_count, "active_keys": active}}
        return [f"{backup.row_count} branch keys of {tenants} tenants in {backup.schema}."
                f"{backup.table} and {csv_path.name} (checksum {backup.checksum[:12]})"], facts

    def step(self, run_phase: str) -> Step:
        return ConvertKeys(self.step_name(run_phase))

    def restore(self, run: Run) -> str:
        return restore_run(run)

    def undo_hint(self, run: Run) -> str | None:
        return f"undo the key conversion with `rollback restore fase2 --run {run.run_id}`"


class ConvertKeys(DatabaseStep):
    title = "Convert branch keys"

    def describe(self, run: Run) -> StepPlan:
        settings = run.settings.run
        with read_only(run.database_url) as conn:
            tenants = branch_keys_now(conn)
        keys = sum(len(t.keys) for t in tenants)
        lines = [f"convert {keys} branch keys of {len(tenants)} tenants to tenant keys "
                 f"(scope_type 'tenant', branch_id NULL) in physical order, "
                 + ("on one connection" if settings.walk_connections == 1 else
                    f"on up to {settings.walk_connections} connections at once (one on a table "
                    f"under {2 * MIN_PART_PAGES} pages)")
                 + f", in batches of at most {settings.batch_size} sized to hold their locks under "
                 f"{lock_budget_s(batch_policy(run)) * 1000:.0f} ms, "
                 f"lock_timeout {settings.lock_timeout_ms} ms, {settings.batch_retries} retries; "
                 "no key is deleted or deactivated; before the deploy, so that the reverted "
                 "code never meets a branch key",
                 "these keys will read every branch of their tenant (access widens):"]
        for tenant in tenants[:MAX_TENANTS_LISTED]:
            lines.append(f"  {tenant.name} ({tenant.slug}, {tenant.branches} branches): "
                         f"{len(tenant.keys)} keys")
            lines += [f"    {k.label()}" for k in tenant.keys[:MAX_KEYS_LISTED]]
            if len(tenant.keys) > MAX_KEYS_LISTED:
                lines.append(f"    ... and {len(tenant.keys) - MAX_KEYS_LISTED} more "
                             "(`rollback plan fase2 --json` lists every key)")
        if len(tenants) > MAX_TENANTS_LISTED:
            lines.append(f"  ... and {len(tenants) - MAX_TENANTS_LISTED} more tenants "
                         "(`rollback plan fase2 --json` lists them all)")
        return self.plan(lines, {"keys": keys, "key_ids": sorted(k.id for t in tenants for k in t.keys),
                                 "tenants": {t.slug: len(t.keys) for t in tenants}})

    def run(self, run: Run) -> Done:
        backup = run.facts.get("fase2_backup")
        if not isinstance(backup, dict):
            raise StepFailed("no FASE 2 backup in this run's facts: the backup step must run first")
        try:
            application = f"rollback {run.run_id}"
            with connect(run.database_url, application_name=application) as conn:
                result = convert_branch_keys(
                    conn, schema=backup["schema"], table=backup["table"], run_id=run.run_id,
                    policy=batch_policy(run), log=run.say, guard=lambda: still_locked(run),
                    connect=lambda: connect(run.database_url, application_name=application))
                facts: dict[str, Any] = {"conversion": {
                    "batches": result.batches, "converted": result.converted,
                    "retries": result.retries, "late_keys": result.late_keys,
                    "moved_keys": result.moved_keys, "batch_sizes": list(result.sizes),
                    "walk_connections": result.connections,
                    "resumed_after_batch": result.resumed_after}}
                # the sweep may have added keys to the backup, in this attempt or one that died:
                # the registry (refreshed by the conversion) says what the backup holds now
                found = existing_backup(conn, backup["schema"], run.run_id)
                conn.commit()
                if found is not None and (found["row_count"], found["checksum"]) != (
                        backup.get("row_count"), backup.get("checksum")):
                    facts["fase2_backup"] = {**backup, "row_count": found["row_count"],
                                             "checksum": found["checksum"],
                                             "csv_sha256": found["checksum"]}
        except psycopg.OperationalError as exc:  # the server went away, or ended our session
            raise StepFailed(f"lost the database connection during the key conversion "
                             f"({first_line(exc)}): the batches committed so far stay converted; "
                             f"run `rollback run {run.options.phase}` again to continue from "
                             "there") from None
        if result.remaining:
            raise StepFailed(f"{result.remaining} keys are still branch-scoped after the "
                             "conversion: rerun to continue")
        resumed = f", resumed after batch {result.resumed_after}" if result.resumed_after else ""
        return Done(f"{result.converted} keys converted in {result.batches} batches "
                    f"({result.retries} retries{resumed}); no branch key remains", facts)


def restore_run(run: Run) -> str:
    """`rollback restore fase2`: the run's converted keys put back from its backup, key by key
    where a batch is refused; what could not be put back is named with the reason."""
    backup = run.facts.get("fase2_backup")
    if not isinstance(backup, dict):
        raise StepFailed(f"run {run.run_id} made no FASE 2 backup: nothing to restore")
    csv_path = backup.get("csv")
    if csv_path and backup.get("csv_sha256"):
        path = Path(csv_path)
        if path.is_file() and file_sha256(path) != backup["csv_sha256"]:
            run.say(f"warning: {path} differs from the CSV the run wrote (checksum); the database "
                    "backup table is used, which is verified separately", "yellow")
    with connect(run.database_url, application_name=f"rollback restore {run.run_id}") as conn:
        if not has_column(conn, "api_keys", "scope_type"):
            raise StepFailed("api_keys has no scope_type column (FASE 2's migration was undone): "
                             "re-apply FASE 2's migration before restoring")
        profile = run.settings.platform
        owned = (*profile.managed_columns,
                 *(c for c in profile.fase2.scope_columns if c not in ("scope_type", "branch_id")))
        result = restore_fase2(conn, schema=backup["schema"], run_id=run.run_id,
                               policy=batch_policy(run), log=run.say, platform_owned=owned)
    problems = []
    if result.failed:
        problems.append(f"{len(result.failed)} keys could not be put back and keep their tenant "
                        "scope: " + "; ".join(f"{key_id}: {why}" for key_id, why in result.failed[:5]))
    if result.missing:
        problems.append(f"{len(result.missing)} keys were deleted since and are not re-created "
                        f"({', '.join(result.missing[:5])})")
    if result.changed_since:
        problems.append(f"{len(result.changed_since)} keys were re-scoped by someone else since "
                        f"and were left as they are ({', '.join(result.changed_since[:5])})")
    if not result.verified:
        problems.append("after the restore these keys differ from their pre-image in other "
                        f"columns (changed since the rollback, left as they are): "
                        f"{', '.join(result.differing[:5])}")
    summary = (f"{result.restored} of {result.rows} keys restored to their pre-rollback scope "
               f"({result.unchanged} already were); checksum {result.checksum_after[:12]} "
               + ("equals the backup's" if result.verified else
                  f"differs from the backup's {result.checksum_before[:12]}")
               + " (columns the platform rewrites itself left out)")
    if result.platform_rewrote:
        run.say(f"{len(result.platform_rewrote)} restored keys have columns the platform rewrote "
                f"itself (its triggers and counters, not a mismatch): "
                f"{', '.join(result.platform_rewrote[:3])}")
    if problems:
        raise StepFailed(summary + "; " + "; ".join(problems))
    return summary
