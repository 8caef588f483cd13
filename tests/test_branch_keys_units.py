"""FASE 2's conversion, its parts that need no database: the batch sizer's boundaries, the row
places the walk resumes from, the backup's names, facts and horizon, the plan's key labels, the
restore's checksum verdict, the retry of a blocked batch and how the walk's commits are made
durable.

What reads or writes PostgreSQL (the walk, the sweep, the backup's COPY and checksums) is proved
by the sandbox suites (`tests/test_drivers.py`, `tests/test_reliability_*.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollback.actions import branch_keys
from rollback.actions.branch_keys import (
    MIN_PART_PAGES,
    XID_HORIZON_LIMIT,
    AffectedKey,
    AffectedTenant,
    BatchNumbers,
    BatchSizer,
    Conversion,
    Fase2Backup,
    Fase2Restore,
    KeyCounts,
    Tid,
    _retrying,
    _tenants_from,
    backup_table_name,
    horizon_xid,
    lock_budget_s,
    part_ranges,
    part_starts,
)
from rollback.errors import StepFailed
from rollback.runs.dbops import BatchPolicy

# --- the backup's horizon: used only while age() can compare it -----------------------------


@pytest.mark.parametrize(("backup_xmin", "now_xmin", "expected"), [
    (None, 10, None),                          # a backup from before the horizon
    (10, None, None),                          # a server without pg_current_snapshot
    (10, 10, "10"),
    (2**32 + 7, 2**32 + 900, "7"),             # the 32-bit id, its epoch dropped
    (10, 9, None),                             # the counter went back: another server
    (10, 10 + XID_HORIZON_LIMIT - 1, "10"),
    (10, 10 + XID_HORIZON_LIMIT, None),        # too far apart for age() to compare
])
def test_the_horizon_is_used_only_while_age_can_compare_it(backup_xmin: int | None,
                                                           now_xmin: int | None,
                                                           expected: str | None) -> None:
    assert horizon_xid(backup_xmin, now_xmin) == expected


# --- the walk in parts: where each begins, where it goes on, how batches are numbered ------------


@pytest.mark.parametrize(("end", "parts", "expected"), [
    (0, 2, [0]),                      # an empty table: one part, nothing to walk
    (MIN_PART_PAGES * 2 - 1, 2, [0]),  # a part would be short of MIN_PART_PAGES: one part
    (MIN_PART_PAGES * 2, 2, [0, MIN_PART_PAGES]),
    (MIN_PART_PAGES * 3, 2, [0, MIN_PART_PAGES * 3 // 2]),
    (MIN_PART_PAGES * 2 + 1, 2, [0, MIN_PART_PAGES]),  # whole pages: the odd one to the last part
    (MIN_PART_PAGES * 3, 5, [0, MIN_PART_PAGES, MIN_PART_PAGES * 2]),  # fewer, each long enough
    (MIN_PART_PAGES * 10, 1, [0]),    # one connection: one part
], ids=lambda v: str(v))
def test_a_table_is_split_into_parts_of_at_least_min_part_pages(end: int, parts: int,
                                                               expected: list[int]) -> None:
    assert part_starts(end, parts) == expected


def test_each_part_goes_on_from_its_own_furthest_batch_and_stops_where_the_next_begins() -> None:
    starts = [0, 100, 200]
    assert part_ranges(starts, {}, 300) == [(0, Tid(0), 100), (1, Tid(100), 200), (2, Tid(200), 300)]
    # part 0 half done, part 1 done (its last window ended on the next part's first page),
    # part 2 not begun; the table grew meanwhile: the last part walks to its end now
    positions = {0: Tid(40, 7), 1: Tid(200)}
    assert part_ranges(starts, positions, 350) == [(0, Tid(40, 7), 100), (2, Tid(200), 350)]
    # a position before its part's start (never written so) does not send a part backwards
    assert part_ranges([0, 100], {1: Tid(50)}, 150) == [(0, Tid(0), 100), (1, Tid(100), 150)]
    assert part_ranges([0], {0: Tid(9, 3)}, 10) == [(0, Tid(9, 3), 10)]
    assert part_ranges([0], {0: Tid(10)}, 10) == []


def test_a_batch_that_finds_no_key_gives_its_number_back() -> None:
    numbers = BatchNumbers(last=4)  # a resumed run: batches 1-4 committed
    first, second = numbers.take(), numbers.take()
    assert (first, second) == (5, 6)
    numbers.give_back(first)  # its window held no key: no progress row for 5
    assert numbers.take() == 5, "a number given back is taken again before a new one"
    assert numbers.take() == 7 and numbers.last == 7


# --- the batch sizer: each boundary of `measured`, one batch at a time --------------------------


@pytest.mark.parametrize(("size", "keys", "seconds", "after"), [
    (500, 500, 0.2, 500),     # exactly the budget: kept (over it shrinks)
    (100, 100, 0.1, 100),     # exactly half the budget: kept (under half grows)
    (100, 100, 0.08, 200),    # under half: 0.2 / 0.08 * 0.8 = 2.0, doubled
    (100, 100, 0.01, 200),    # far under: doubled at most, not 16 times
    (100, 100, 0.3, 53),      # over: 0.2 / 0.3 * 0.8 = 0.53
    (500, 500, 0.0, 500),     # no time measured: nothing learnt
    (1, 1, 10.0, 1),          # halved from one key: still one
    (400, 400, 0.01, 500),    # doubled, but never over the limit
    (500, 100, 0.2, 500),     # a short batch at exactly the budget: kept
    (500, 100, 0.4, 50),      # a short batch over it: 100 keys * 0.2 / 0.4
    (500, 1, 100.0, 1),       # a short batch far over it: never under one key
    (500, 0, 1.0, 500),       # an empty batch (nothing left in the window) says nothing
    (500, 499, 0.01, 500),    # one key short of the size: a short batch, not grown from
], ids=lambda v: str(v))
def test_one_measured_batch_sets_the_next_size(size: int, keys: int, seconds: float, after: int) -> None:
    sizer = BatchSizer(limit=500, budget_s=0.2, size=size)
    sizer.measured(keys, seconds)
    assert sizer.size == after


def test_the_sizer_starts_at_the_limit_unless_given_a_size() -> None:
    assert BatchSizer(limit=300, budget_s=0.2).size == 300
    assert BatchSizer(limit=300, budget_s=0.2, size=7).size == 7


def test_the_smallest_and_largest_batch_count_only_batches_that_held_keys() -> None:
    sizer = BatchSizer(limit=500, budget_s=0.2)
    assert (sizer.smallest, sizer.largest) == (0, 0)
    sizer.measured(300, 0.15)
    assert (sizer.smallest, sizer.largest) == (300, 300)
    sizer.measured(0, 0.0)  # an empty window: not the smallest batch
    assert (sizer.smallest, sizer.largest) == (300, 300)
    sizer.measured(120, 0.05)
    sizer.measured(200, 0.05)
    assert (sizer.smallest, sizer.largest) == (120, 300)


@pytest.mark.parametrize(("pages", "keys", "size", "window"), [
    (0, 100, 100_000, 500),      # no page walked: 1/400 page a key, 100000 * 2 / 400
    (1, 400, 100_000, 500),      # exactly 1/400
    (3, 100, 500, 30),           # 0.03 page a key: 500 * 0.03 * 2
    (10, 0, 500, 1000),          # no key seen: the first guess, a page a key
    (0, 100, 1, 1),              # at least one page
])
def test_the_window_covers_twice_the_pages_measured(pages: int, keys: int, size: int, window: int) -> None:
    sizer = BatchSizer(limit=100_000, budget_s=0.2, size=size)
    sizer.walked(pages=pages, keys=keys)
    assert sizer.window() == window


def test_the_lock_budget_is_the_shorter_of_200_ms_and_a_quarter_of_the_lock_timeout() -> None:
    assert lock_budget_s(BatchPolicy(lock_timeout_ms=1000)) == 0.2 == branch_keys.LOCK_BUDGET_S
    assert lock_budget_s(BatchPolicy(lock_timeout_ms=600)) == 0.15
    assert lock_budget_s(BatchPolicy(lock_timeout_ms=10_000)) == 0.2


# --- where the walk resumes ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "page", "line"), [
    ("(0,1)", 0, 1), ("(12,7)", 12, 7), ("(4294967294,291)", 4294967294, 291)])
def test_a_ctid_reads_back_as_it_is_written(text: str, page: int, line: int) -> None:
    tid = Tid.parse(text)
    assert (tid.page, tid.line) == (page, line) and str(tid) == text
    assert tid.after() == Tid(page, line + 1) and tid < tid.after()


def test_a_page_start_is_before_its_first_row_and_after_the_last_of_the_page_before() -> None:
    assert Tid(5) == Tid(5, 0) and Tid(4, 291) < Tid(5) < Tid(5, 1)


# --- the backup's names and facts ------------------------------------------------------------------


@pytest.mark.parametrize(("run_id", "table"), [
    ("20260122T101500Z-fase2", "fase2_keys_20260122t101500z_fase2"),
    ("Run.With Spaces/and-ÑÜ", "fase2_keys_run_with_spaces_and___"),
    ("a" * 45, "fase2_keys_" + "a" * 40),  # cut at 40: the name stays under PostgreSQL's 63
])
def test_a_backup_table_is_named_after_its_run_in_lower_case_identifier_characters(
        run_id: str, table: str) -> None:
    assert backup_table_name(run_id) == table


def test_a_backup_records_its_facts_with_or_without_a_csv() -> None:
    backup = Fase2Backup("r1", "rollback_backup", "fase2_keys_r1", 3, "abc", Path("/tmp/k.csv"),
                         "f00", KeyCounts(total=10, active=7))
    assert backup.as_facts() == {
        "schema": "rollback_backup", "table": "fase2_keys_r1", "row_count": 3, "checksum": "abc",
        "csv": "/tmp/k.csv", "csv_sha256": "f00", "key_counts_before": {"total": 10, "active": 7}}
    without = Fase2Backup("r1", "s", "t", 0, "", None, None, KeyCounts(0, 0)).as_facts()
    assert without["csv"] is None and without["csv_sha256"] is None


# --- what the plan and the customer emails list ------------------------------------------------------


def test_a_key_is_labelled_by_name_hint_state_and_branch() -> None:
    assert AffectedKey("k1", "POS", "AbCd", True, "b1", "Centro").label() == "POS …AbCd, branch Centro"
    assert (AffectedKey("k2", "Kiosk", "WxYz", False, "b2", None).label()
            == "Kiosk …WxYz (inactive), branch b2")


def test_rows_are_grouped_by_tenant_in_their_order_with_active_keys_counted() -> None:
    rows = [("t1", "Uno", "uno", 3, "k1", "A", "h1", True, "b1", "B1"),
            ("t1", "Uno", "uno", 3, "k2", "B", "h2", None, "b2", None),
            ("t2", "Dos", "dos", "1", "k3", "C", "h3", 1, None, None)]
    first, second = _tenants_from(rows)
    assert (first.tenant_id, first.name, first.slug, first.branches) == ("t1", "Uno", "uno", 3)
    assert [k.id for k in first.keys] == ["k1", "k2"] and first.active_keys == 1
    assert first.keys[1] == AffectedKey("k2", "B", "h2", False, "b2", None)
    assert (second.tenant_id, second.branches, second.active_keys) == ("t2", 1, 1)
    assert second.keys[0].active is True
    assert first.as_dict() == {
        "tenant_id": "t1", "name": "Uno", "slug": "uno", "branches": 3, "keys": 2, "active_keys": 1,
        "key_list": [{"id": "k1", "name": "A", "hint": "h1", "active": True, "branch_id": "b1",
                      "branch_name": "B1"},
                     {"id": "k2", "name": "B", "hint": "h2", "active": False, "branch_id": "b2",
                      "branch_name": None}]}
    assert _tenants_from([]) == []


def test_a_tenant_with_no_active_key_counts_none() -> None:
    tenant = AffectedTenant("t", "T", "t", 1, (AffectedKey("k", "K", "h", False, None, None),))
    assert tenant.active_keys == 0 and tenant.as_dict()["active_keys"] == 0


# --- the restore's verdict ---------------------------------------------------------------------------


@pytest.mark.parametrize(("before", "after", "verified"), [
    ("abc", "abc", True), ("abc", "abd", False), ("", "abc", False), ("", "", True)])
def test_a_restore_is_verified_only_when_the_checksums_match(before: str, after: str,
                                                              verified: bool) -> None:
    assert Fase2Restore(checksum_before=before, checksum_after=after).verified is verified


# --- a blocked batch is retried, then refused ---------------------------------------------------------


class _Blocked:
    """An action that raises `errors` in turn, then returns 7."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return 7


@pytest.mark.parametrize("error", [psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
                                   psycopg.errors.SerializationFailure, psycopg.errors.QueryCanceled])
def test_a_batch_blocked_by_a_lock_or_a_conflict_is_retried_within_its_retries(
        error: type[Exception]) -> None:
    result, said = Conversion(), []
    action = _Blocked(error("canceling statement due to lock timeout\nCONTEXT: x"), error("again"))
    policy = BatchPolicy(retries=2, backoff_s=0.0)
    assert _retrying(policy, "batch 3", result, said.append, action) == 7
    assert action.calls == 3 and result.retries == 2
    assert said == ["batch 3: canceling statement due to lock timeout; retry 1/2 in 0.0 s",
                    "batch 3: again; retry 2/2 in 0.0 s"]


def test_a_batch_still_blocked_after_its_retries_fails_the_step_saying_what_to_do() -> None:
    result, said = Conversion(), []
    action = _Blocked(*(psycopg.errors.LockNotAvailable(f"lock {n}") for n in range(3)))
    with pytest.raises(StepFailed) as failed:
        _retrying(BatchPolicy(retries=2, backoff_s=0.0), "batch 9", result, said.append, action)
    assert str(failed.value) == (
        "batch 9: still blocked after 2 retries (lock 2); the batches committed so far stay "
        "converted: rerun to continue, or raise [run] lock_timeout_ms")
    assert action.calls == 3 and result.retries == 3 and len(said) == 2


def test_another_database_error_is_not_retried() -> None:
    action = _Blocked(psycopg.errors.UniqueViolation("duplicate"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        _retrying(BatchPolicy(retries=5, backoff_s=0.0), "batch 1", Conversion(), print, action)
    assert action.calls == 1


def test_the_retries_back_off_doubling_from_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(branch_keys.time, "sleep", slept.append)
    action = _Blocked(*(psycopg.errors.LockNotAvailable("x") for _ in range(3)))
    _retrying(BatchPolicy(retries=3, backoff_s=0.25), "b", Conversion(), lambda _: None, action)
    assert slept == [0.25, 0.5, 1.0]


# --- the walk's commits: asynchronous batches, one synchronous commit at the end -------------------


class _Recorder:
    """A connection stand-in that records each statement and where its transaction begins and ends."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.log.append("BEGIN")
        yield
        self.log.append("COMMIT")

    def execute(self, query: Any, params: Any = None) -> None:
        self.log.append((query if isinstance(query, str) else query.as_string(None), params))


def test_the_conversion_ends_with_a_synchronous_commit_that_writes_a_record() -> None:
    conn = _Recorder()
    branch_keys.make_durable(conn, "rollback_backup", "r1")  # type: ignore[arg-type]
    progress = '"rollback_backup"."fase2_progress"'
    assert conn.log == [
        "BEGIN",
        ("SET LOCAL synchronous_commit = on", None),
        (f"UPDATE {progress} SET committed_at = committed_at WHERE run_id = %s "
         f"AND batch = (SELECT max(batch) FROM {progress} WHERE run_id = %s)", ("r1", "r1")),
        "COMMIT"]


def test_each_walk_batch_commits_asynchronously_in_its_own_transaction_only() -> None:
    assert branch_keys.WALK_SYNCHRONOUS_COMMIT == "off"
    assert "set_config('synchronous_commit', %(commit)s, true)" in branch_keys._WALK
