"""FASE 2's walk in parts: several connections at once, each over its own part of api_keys
(`[run] walk_connections`). Proved on both shapes (the real platform's triggers fire on every
update), on a sandbox whose small table is split in two as a large one would be (`halves`):
every key converted once, each batch numbered once, a walk stopped mid-way
going on with the same parts, each from its own furthest batch, and a refused connection
leaving the walk to the ones it has. Where a table is split at all is proved in
tests/test_branch_keys_units.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rollback.actions import branch_keys
from rollback.errors import StepFailed
from rollback.runs import dbops
from tests.conftest import Sandbox

SCHEMA, RUN_ID = "rb_parts", "20260101T000000Z-fase2"
#: small batches, so that each part takes several
POLICY = dbops.BatchPolicy(size=3, lock_timeout_ms=2000, retries=0, backoff_s=0, connections=2)


@pytest.fixture(autouse=True)
def halves(monkeypatch: pytest.MonkeyPatch, any_fresh_sandbox: Sandbox) -> None:
    """Two parts, split where the branch keys are (a large table's parts are MIN_PART_PAGES or
    more): the sandbox seeds them in its first pages, so that an even split of its few pages
    could leave a part without one."""
    pages = [int(r[0]) for r in any_fresh_sandbox.sql(
        "SELECT (ctid::text::point)[0] FROM api_keys WHERE scope_type = 'branch' ORDER BY ctid")]
    middle = pages[len(pages) // 2] if pages else 0
    assert middle > 0, f"the sandbox's branch keys all lie on page {middle}: nothing to split"
    monkeypatch.setattr(branch_keys, "part_starts", lambda end, parts: [0, middle])


def _backup(box: Sandbox, tmp_path: Path) -> branch_keys.Fase2Backup:
    with psycopg.connect(box.database_url) as conn:
        return branch_keys.backup_fase2(conn, schema=SCHEMA, run_id=RUN_ID,
                                        csv_path=tmp_path / "backup.csv")


def _convert(box: Sandbox, backup: branch_keys.Fase2Backup, *,
             guard: Callable[[], None] = lambda: None,
             connect: Callable[[], psycopg.Connection[Any]] | None = None,
             log: Callable[[str], None] = lambda line: None) -> branch_keys.Conversion:
    with psycopg.connect(box.database_url) as conn:
        return branch_keys.convert_branch_keys(
            conn, schema=SCHEMA, table=backup.table, run_id=RUN_ID, policy=POLICY, log=log,
            guard=guard, connect=connect or (lambda: psycopg.connect(box.database_url)))


def _rows(box: Sandbox) -> list[tuple[int, int, int, str | None]]:
    """(batch, part, keys converted, where its part goes on) of every progress row, by batch."""
    return [(int(b), int(lane), int(n), at) for b, lane, n, at in box.sql(sql.SQL(
        "SELECT batch, lane, converted, next_ctid::text FROM {} WHERE run_id = %s ORDER BY batch"
    ).format(sql.Identifier(SCHEMA, "fase2_progress")), (RUN_ID,))]


def _starts(box: Sandbox) -> list[int]:
    return list(box.sql(sql.SQL("SELECT walk_starts FROM {} WHERE run_id = %s").format(
        sql.Identifier(SCHEMA, "runs")), (RUN_ID,))[0][0])


def _branch_keys(box: Sandbox) -> int:
    return int(box.sql("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'")[0][0])


def _assert_parts_kept_apart(rows: list[tuple[int, int, int, str | None]], starts: list[int]) -> None:
    """A part's batches go on inside it: before the next part's first page (a window that ends
    there says so with that page), from its own first page on."""
    __tracebackhide__ = True
    for _, part, _, at in rows:
        if at is None:  # a sweep batch
            continue
        page = branch_keys.Tid.parse(at).page
        assert page >= starts[part], f"part {part} went on at {at}, before its first page"
        if part + 1 < len(starts):
            assert page <= starts[part + 1], f"part {part} went on at {at}, into part {part + 1}"


def test_two_connections_convert_every_key_once_each_in_its_own_part(any_fresh_sandbox: Sandbox,
                                                                     tmp_path: Path) -> None:
    box = any_fresh_sandbox
    backup = _backup(box, tmp_path)
    assert backup.row_count >= 12, "the sandbox needs branch keys for several batches a part"

    done = _convert(box, backup)

    assert done.remaining == 0 and _branch_keys(box) == 0
    assert done.connections == 2
    starts = _starts(box)
    assert len(starts) == 2 and starts[0] == 0 < starts[1], f"walk_starts {starts}: not two parts"
    rows = _rows(box)
    assert {part for _, part, n, _ in rows if n} == {0, 1}, "one connection did all the work"
    numbers = [b for b, *_ in rows]  # unique (the primary key); one unused where a part ended
    assert len(numbers) <= numbers[-1] <= len(numbers) + 1, f"batch numbers {numbers}"
    assert sum(n for _, _, n, _ in rows) == done.converted == backup.row_count
    assert done.batches == len(rows)
    _assert_parts_kept_apart(rows, starts)


def test_a_walk_stopped_mid_way_goes_on_with_the_same_parts(any_fresh_sandbox: Sandbox,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One connection fails (here: its guard, as when the run loses its lock): the other stops
    after its batch, the error is the walk's; the rerun, whose split would now be another,
    walks the registered parts, each from where it left off, and converts each key once."""
    box = any_fresh_sandbox
    backup = _backup(box, tmp_path)
    calls, at_failure, lock = [0], [], threading.Lock()

    def guard() -> None:  # fails once, in one connection's thread: the other could go on
        with lock:
            calls[0] += 1
            if calls[0] == 5:
                at_failure.append(len(_rows(box)))
                raise StepFailed("lost the database lock of this run")

    with pytest.raises(StepFailed, match="lost the database lock"):
        _convert(box, backup, guard=guard)
    first = _rows(box)
    starts = _starts(box)
    assert first and _branch_keys(box) == backup.row_count - sum(n for _, _, n, _ in first)
    # the other connection may commit the batch it had in flight and, had it just passed its
    # check of the walk's state, one more; never the rest of its part
    assert len(first) <= at_failure[0] + 2, (
        f"{len(first)} batches committed, {at_failure[0]} when one connection failed: the "
        "other went on walking its part")
    furthest = {part: max((branch_keys.Tid.parse(at) for _, p, _, at in first if p == part and at),
                          default=branch_keys.Tid(starts[part])) for part in (0, 1)}

    monkeypatch.setattr(branch_keys, "part_starts", lambda end, parts: [0])
    done = _convert(box, backup)

    assert done.remaining == 0 and _branch_keys(box) == 0
    assert _starts(box) == starts, "the rerun split the table again"
    assert done.resumed_after == max(b for b, *_ in first)
    rows = _rows(box)
    assert sum(n for _, _, n, _ in rows) == backup.row_count == done.converted
    for _, part, _, at in rows[len(first):]:
        if at is not None:
            assert branch_keys.Tid.parse(at) > furthest[part], (
                f"part {part} went back to {at}, behind its furthest batch {furthest[part]}")
    _assert_parts_kept_apart(rows, starts)


def test_a_refused_connection_leaves_the_walk_to_the_ones_it_has(any_fresh_sandbox: Sandbox,
                                                                tmp_path: Path) -> None:
    """The server or a pooler refuses the second connection (its connection limit): the one
    connection walks both parts, one after the other, and says so."""
    box = any_fresh_sandbox
    backup = _backup(box, tmp_path)
    lines: list[str] = []

    done = _convert(box, backup, log=lines.append, connect=_refused)

    assert done.remaining == 0 and _branch_keys(box) == 0 and done.connections == 1
    assert any("goes on with 1 connection(s)" in line and "too many clients" in line
               for line in lines), lines
    rows = _rows(box)
    assert {part for _, part, n, _ in rows if n} == {0, 1}, "a part was left to the sweep"
    assert [b for b, *_ in rows] == list(range(1, len(rows) + 1)), "one connection: no gap"
    assert sum(n for _, _, n, _ in rows) == backup.row_count == done.converted
    _assert_parts_kept_apart(rows, _starts(box))


def _refused() -> psycopg.Connection[Any]:
    raise StepFailed("cannot connect to the database: FATAL: sorry, too many clients already")
