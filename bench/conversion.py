"""The FASE 2 conversion at scale, while the API keeps serving.

    1. `rollback sandbox up --keys N` (N >= 1,000,000 by default: about 20% branch-scoped)
    2. known keys for the read load: bulk keys spread over the conversion's id order (bench/keys.py)
    3. API stopped; two identical copies, `CREATE DATABASE bench_floor[_quiet] TEMPLATE platform`;
       API started again
    4. the read load (bench/load.py) runs for a baseline period, then on while the driver's Backup
       and ConvertKeys steps convert every branch key (bench/driver.py, in a process of its own
       as `rollback run` is), then on while the floor,
       one plain UPDATE of the same rows, runs on the first copy; the lock sampler runs throughout
    5. the same UPDATE on the second copy with nothing else running (the quiet floor), then the
       driver's two steps on a third copy, also with nothing else running (the quiet driver)

Each measured run (baseline, driver or floor) starts after `settle()` (os.sync): the copies' and
the previous run's dirty pages would otherwise be written back during the next run, not its own.
(Before 2026-12-02 the baseline did not: the copies' writes could land in it, raising the p99
that the conversion's p99 is divided by.)

The throughput aim compares the driver with the floor under the same read load (the machine is
then equally busy for both); the quiet floor is reported beside it, and the quiet driver against
it (the same comparison without the load).

Scale (`scale()`): how the conversion's rows/s grow with the table, at each of --scale-keys
(default 100,000 and 1,000,000; 5,000,000 on request: its sandbox alone takes 10 minutes here).
Each size is a ratio against its own floor measured in the same run, with nothing else running:
the quiet driver and quiet floor of the main measurement at its size, and for each other size a
sandbox of its own, one copy, the driver on the sandbox and the floor on the copy.

Figures: rows per second of the driver (backup included) and of the floors; the load's errors,
p50/p99 and throughput before and during the conversion; the longest lock wait of an API
session; the machine's CPU use in each window; the API's own lock timeouts on `last_used_at`
(it logs and swallows them).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from bench import load as loadgen
from bench.common import BenchError, Log
from bench.driver import DriverTiming, convert_in_subprocess
from bench.keys import adopt_keys, mint_tenant_keys
from bench.sandboxes import Sandbox, running
from bench.stats import median, rounded
from sandbox import control

FLOOR_DATABASE, QUIET_DATABASE = "bench_floor", "bench_floor_quiet"
#: the third copy, converted by the driver with nothing else running
QUIET_DRIVER_DATABASE = "bench_driver_quiet"
#: with --conversion-rounds over 1: the database as it was before the first round, copied back
#: over the sandbox's database and the floor's copy before each further round
SOURCE_DATABASE = "bench_source"
FLOOR_UPDATE = "UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL WHERE scope_type = 'branch'"
API_LOCK_TIMEOUT_LINE = "could not update last use of key"


def _count(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), count(*) FILTER (WHERE scope_type = 'branch') "
                           "FROM api_keys").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def settle() -> float:
    """Write the machine's dirty pages back now (os.sync); seconds taken. Three copies of a 1M-key
    database leave about 2 GB of them, which the kernel writes back some 30 s later: in the
    middle of the driver's run, while the floor, which runs after it, met none. Called before
    each measured run, so that each starts with none of the previous one's writes pending."""
    started = time.perf_counter()
    os.sync()
    return time.perf_counter() - started


def copy_database(sbx: Sandbox, names: Sequence[str], source: str | None = None) -> float:
    """Identical copies of the sandbox's database (or of `source`), made while the API is stopped;
    seconds taken. A copy of `source` may replace the sandbox's database itself: the API, started
    again, serves the copy."""
    source = source or sbx.database_url.rsplit("/", 1)[1]
    control.stop_api(sbx.state)
    try:
        with psycopg.connect(sbx.admin_url(), autocommit=True) as conn:
            started = time.perf_counter()
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                for attempt in range(20):
                    try:
                        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(name), sql.Identifier(source)))
                        break
                    except psycopg.errors.ObjectInUse:
                        # an autovacuum worker may still be on the freshly seeded database
                        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = %s AND pid <> pg_backend_pid()", (source,))
                        time.sleep(0.25 * (attempt + 1))
                else:
                    raise BenchError(f"could not copy database {source}: it stayed in use")
            copied = time.perf_counter() - started
            settle()
            return copied
    finally:
        control.start_api(sbx.state)


def drop_database(sbx: Sandbox, name: str) -> None:
    with psycopg.connect(sbx.admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def floor_update(url: str) -> dict[str, Any]:
    """The floor: one plain UPDATE of every branch key, committed."""
    with psycopg.connect(url, application_name="bench floor") as conn:
        started = time.perf_counter()
        rows = conn.execute(FLOOR_UPDATE).rowcount
        conn.commit()
        seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds) if seconds else None}


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def long_lock_waits(sbx: Sandbox, since: int) -> dict[str, Any]:
    """Lock waits PostgreSQL itself logged after `since` (a byte offset of its log): with
    log_lock_waits on (PostgreSQL 18's default), every wait longer than deadlock_timeout (1 s)
    is logged, and its end with the exact duration. Exact where the sampler only samples."""
    path = sbx.root / "postgres" / "postgres.log"
    still, acquired = 0, []
    if path.is_file():
        with path.open("rb") as handle:
            handle.seek(since)
            for raw in handle:
                line = raw.decode(errors="replace")
                if " still waiting for " in line:
                    still += 1
                elif (match := re.search(r" acquired \w+ on .* after ([\d.]+) ms", line)):
                    acquired.append(float(match.group(1)))
    return {"waits_over_deadlock_timeout": still,
            "longest_acquired_after_ms": max(acquired, default=None)}


def _api_lock_timeouts(sbx: Sandbox) -> int:
    log = sbx.root / "api.log"
    if not log.is_file():
        return 0
    with log.open(errors="replace") as handle:
        return sum(1 for line in handle if API_LOCK_TIMEOUT_LINE in line)


def measure(root: Path, work: Path, *, keys: int, baseline_s: float, log: Log,
            lookup_keys: int = 64, batch_size: int | None = None,
            walk_connections: int | None = None, rounds: int = 1) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    log(f"  rollback sandbox up --keys {keys} ...")
    with running(root, keys=keys, timeout_s=420) as sbx:
        log(f"  sandbox with {keys:,} keys up in {sbx.up_s:.1f} s")
        rng = random.Random(11)
        branch_share = lookup_keys * 3 // 4  # most traffic on keys the conversion will lock
        lookup = adopt_keys(sbx.database_url, scope_type="branch", count=branch_share, rng=rng)
        lookup += adopt_keys(sbx.database_url, scope_type="tenant", count=lookup_keys - branch_share, rng=rng)
        list_key = mint_tenant_keys(sbx.database_url, sbx.state.tenant_id, 1, rng)[0]
        total, branch = _count(sbx.database_url)
        copies = [FLOOR_DATABASE, QUIET_DATABASE, QUIET_DRIVER_DATABASE] + (
            [SOURCE_DATABASE] if rounds > 1 else [])
        run_settings = {name: value for name, value in (("batch_size", batch_size),
                                                        ("walk_connections", walk_connections))
                        if value}
        try:
            copy_s = copy_database(sbx, copies)
            log(f"  {len(copies)} identical copies made in {copy_s:.1f} s; {branch:,} of {total:,} "
                "keys branch-scoped")
            measured = []
            for number in range(1, rounds + 1):
                if number > 1:
                    log(f"  round {number} of {rounds}: the database and its copy again as they were ...")
                    copy_database(sbx, [sbx.database_url.rsplit("/", 1)[1], FLOOR_DATABASE],
                                  source=SOURCE_DATABASE)
                measured.append(_under_load(
                    sbx, work, lookup, list_key, baseline_s, log, run_settings,
                    run_id="bench-conversion" + (f"-{number}" if rounds > 1 else ""),
                    floor_first=number % 2 == 0))
            result = median_round(measured)
            settle()
            quiet = floor_update(sbx.admin_url(QUIET_DATABASE))
            log(f"  quiet floor: one UPDATE of {quiet['rows']:,} rows in {quiet['seconds']} s")
            settle()
            quiet_driver = convert_in_subprocess(
                sbx.env(DATABASE_URL=sbx.admin_url(QUIET_DRIVER_DATABASE)), work,
                "bench-conversion-quiet", run_settings)
            log(f"  quiet driver: backup {quiet_driver.backup_s:.1f} s + conversion "
                f"{quiet_driver.convert_s:.1f} s for {quiet_driver.rows:,} keys")
        finally:
            for name in copies:
                drop_database(sbx, name)
    driver: DriverTiming = result.pop("driver_timing")
    floor = result.pop("floor")
    return {
        "requested_keys": keys,
        "keys_total": total,
        "branch_keys": branch,
        "branch_share": round(branch / total, 3) if total else None,
        "sandbox_up_s": round(sbx.up_s, 2),
        "copy_s": round(copy_s, 2),
        "driver": {**_timing(driver), "steps": "Backup + ConvertKeys (rollback/runs/steps.py)"},
        "floor": {**floor, "statement": FLOOR_UPDATE, "conditions": "same read load on the API"},
        "floor_quiet": {**quiet, "conditions": "nothing else running"},
        "driver_quiet": {**_timing(quiet_driver), "conditions": "nothing else running, on a copy"},
        "quiet_throughput_ratio": rounded(quiet_driver.rows_per_s / quiet["rows_per_s"], 3)
        if quiet["rows_per_s"] else None,
        "throughput_ratio_to_quiet_floor": rounded(driver.rows_per_s / quiet["rows_per_s"], 3)
        if quiet["rows_per_s"] else None,
        **result,
    }


def _timing(driver: DriverTiming) -> dict[str, Any]:
    return {
        "rows": driver.rows,
        "backup_s": round(driver.backup_s, 2),
        "convert_s": round(driver.convert_s, 2),
        "total_s": round(driver.total_s, 2),
        "rows_per_s": round(driver.rows_per_s),
        "batches": driver.batches,
        "retries": driver.retries,
        "batch_size": driver.batch_size,
        "batch_sizes": driver.batch_sizes,
        "connections": driver.connections,
        "lock_timeout_ms": driver.lock_timeout_ms,
    }


def scale_point(root: Path, work: Path, *, keys: int, log: Log) -> dict[str, Any]:
    """One size of the scale figures: a sandbox of `keys` keys, one copy, the driver's Backup and
    ConvertKeys on the sandbox and one plain UPDATE on the copy, nothing else running."""
    work.mkdir(parents=True, exist_ok=True)
    log(f"  rollback sandbox up --keys {keys} ...")
    with running(root, keys=keys, timeout_s=max(420, keys / 2500)) as sbx:
        total, branch = _count(sbx.database_url)
        log(f"  sandbox with {total:,} keys ({branch:,} branch-scoped) up in {sbx.up_s:.1f} s")
        try:
            copy_database(sbx, [FLOOR_DATABASE])
            driver = convert_in_subprocess(sbx.env(), work, f"bench-scale-{keys}", {},
                                           timeout_s=max(900, keys / 500))
            settle()
            floor = floor_update(sbx.admin_url(FLOOR_DATABASE))
        finally:
            drop_database(sbx, FLOOR_DATABASE)
    return _point(total, branch, _timing(driver), floor, sbx.up_s)


def _point(total: int, branch: int, driver: dict[str, Any], floor: dict[str, Any],
           up_s: float | None = None) -> dict[str, Any]:
    return {"keys_total": total, "branch_keys": branch, "sandbox_up_s": rounded(up_s, 1),
            "driver": driver, "floor": floor,
            "ratio": rounded(driver["rows_per_s"] / floor["rows_per_s"], 3)
            if floor.get("rows_per_s") else None}


def scale(root: Path, work: Path, *, sizes: Sequence[int], log: Log,
          measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rows/s of the driver and of its floor at each size, nothing else running; the size of the
    main measurement (`measured`, the conversion section) is taken from its quiet runs."""
    points = []
    for keys in sizes:
        if measured and "error" not in measured and measured.get("requested_keys") == keys:
            point = _point(measured["keys_total"], measured["branch_keys"],
                           measured["driver_quiet"], measured["floor_quiet"])
            point["from"] = "the conversion section's quiet driver and quiet floor"
        else:
            point = scale_point(root / f"sbx-{keys}", work / f"scale-{keys}", keys=keys, log=log)
        points.append(point)
        log(f"  {point['keys_total']:,} keys: driver {point['driver']['rows_per_s']:,} rows/s, "
            f"floor {point['floor']['rows_per_s']:,} rows/s ({point['ratio']}x)")
    first = points[0] if points else None
    for point in points:
        point["driver_rows_per_s_vs_smallest"] = rounded(
            point["driver"]["rows_per_s"] / first["driver"]["rows_per_s"], 2) \
            if first and first["driver"]["rows_per_s"] else None
    return {"sizes": list(sizes), "points": points,
            "conditions": "nothing else running; each ratio against a floor of the same size, "
                          "same run"}


def median_round(measured: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One round's figures, that of the median throughput ratio (the lower of the middle two),
    judged on the medians of every round's two ratios (throughput, p99): one round is one
    sample of a machine whose floor alone took 11.8-18.2 s within 13 minutes (2026-12-02)."""
    ordered = sorted(measured, key=lambda r: r["throughput_ratio"] or 0.0)
    chosen = ordered[(len(ordered) - 1) // 2]
    if len(measured) == 1:
        return chosen
    chosen["rounds"] = [{
        "round": number, "floor_first": r["floor_first"], "rows": r["driver_timing"].rows,
        "throughput_ratio": r["throughput_ratio"], "p99_ratio": r["load"]["p99_ratio"],
        "driver_s": round(r["driver_timing"].total_s, 2), "floor_s": r["floor"]["seconds"],
        "baseline_p99_ms": r["load"]["baseline"]["p99_ms"],
        "during_p99_ms": r["load"]["during_conversion"]["p99_ms"]}
        for number, r in enumerate(measured, 1)]
    chosen["round_shown"] = measured.index(chosen) + 1
    chosen["medians"] = {
        "throughput_ratio": chosen["throughput_ratio"],
        "p99_ratio": rounded(median([r["load"]["p99_ratio"] for r in measured
                                     if r["load"]["p99_ratio"] is not None]), 2)}
    return chosen


def _under_load(sbx: Sandbox, work: Path, lookup: list[str], list_key: str, baseline_s: float,
                log: Log, run_settings: dict[str, Any], *, run_id: str = "bench-conversion",
                floor_first: bool = False) -> dict[str, Any]:
    """The baseline, then the driver and the floor under the same read load; `floor_first`
    swaps the two, so that rounds in turn cancel a drift of the machine's speed."""
    load = loadgen.ReadLoad(sbx.api_base_url, lookup, list_key, max_seconds=baseline_s + 900)
    sampler = loadgen.LockSampler(sbx.database_url)
    timeouts_before = _api_lock_timeouts(sbx)
    pg_log_at = _log_size(sbx.root / "postgres" / "postgres.log")
    with psycopg.connect(sbx.database_url, autocommit=True) as conn:
        # our own sandbox: have PostgreSQL log every lock wait longer than deadlock_timeout (1 s,
        # the aim's limit) and its exact end, so that no block over 1 s can slip between samples
        conn.execute("ALTER SYSTEM SET log_lock_waits = on")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)
        settings = {str(name): str(value) for name, value in conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('log_lock_waits', 'deadlock_timeout')")}
    settle()  # the copies' writes, else written back during the baseline: a high baseline p99
    with loadgen.running(load, sampler):
        time.sleep(min(2.0, baseline_s / 3))  # warm-up: connections, the API's pool, caches
        psutil.cpu_percent()
        base_start = time.monotonic()
        time.sleep(baseline_s)
        base_end = time.monotonic()
        settle()
        cpu_before = psutil.cpu_percent()
        log(f"  baseline: {len(load.between(base_start, base_end))} requests in {baseline_s:g} s; "
            + ("the floor, then the driver ..." if floor_first else "the driver converts ..."))

        def run_floor() -> tuple[dict[str, Any], float, float, float]:
            started = time.monotonic()
            floor = floor_update(sbx.admin_url(FLOOR_DATABASE))
            ended, cpu = time.monotonic(), psutil.cpu_percent()
            log(f"  floor under the same load: one UPDATE of {floor['rows']:,} rows in {floor['seconds']} s")
            return floor, started, ended, cpu

        if floor_first:
            floor, floor_start, floor_end, cpu_floor = run_floor()
            settle()
            psutil.cpu_percent()  # the driver's CPU share from here
        driver = convert_in_subprocess(sbx.env(), work, run_id, run_settings)
        # the steps' own clock (CLOCK_MONOTONIC is system-wide), not the child's start-up
        conv_start, conv_end = driver.started, driver.ended
        backup_end = conv_start + driver.backup_s
        cpu_during = psutil.cpu_percent()
        log(f"  driver: backup {driver.backup_s:.1f} s + conversion {driver.convert_s:.1f} s for "
            f"{driver.rows:,} keys ({driver.batches} batches, {driver.retries} retries)")
        if not floor_first:
            settle()
            floor, floor_start, floor_end, cpu_floor = run_floor()
    if sampler.error:
        raise BenchError(f"lock sampler failed: {sampler.error}")
    baseline = loadgen.summarize(load.between(base_start, base_end), base_end - base_start)
    during = loadgen.summarize(load.between(conv_start, conv_end), conv_end - conv_start)
    p99_ratio = (during["p99_ms"] / baseline["p99_ms"]) if baseline["p99_ms"] else None
    gaps = sorted(sampler.sample_gaps_ms)
    return {
        "driver_timing": driver,
        "floor": floor,
        "floor_first": floor_first,
        "throughput_ratio": rounded(driver.rows_per_s / floor["rows_per_s"], 3)
        if floor["rows_per_s"] else None,
        "branch_keys_after": _count(sbx.database_url)[1],
        "cpu_busy_percent": {"baseline": cpu_before, "during_conversion": cpu_during,
                             "during_floor": cpu_floor},
        "load": {
            "offered_requests_per_s": load.offered_rate,
            "known_keys": len(lookup) + 1,
            "baseline": baseline,
            "during_conversion": during,
            "during_backup_step": loadgen.summarize(load.between(conv_start, backup_end),
                                                    backup_end - conv_start),
            "during_convert_keys_step": loadgen.summarize(load.between(backup_end, conv_end),
                                                          conv_end - backup_end),
            "during_floor_on_copy": loadgen.summarize(load.between(floor_start, floor_end),
                                                      floor_end - floor_start),
            "p99_ratio": rounded(p99_ratio, 2),
            "max_excess_over_baseline_p50_ms": rounded(
                (during["max_ms"] or 0) - (baseline["p50_ms"] or 0), 1),
        },
        "locks": {
            "sample_interval_ms": sampler.interval_s * 1000,
            "samples": sampler.samples,
            "sample_gap_p99_ms": rounded(gaps[int(0.99 * (len(gaps) - 1))], 1) if gaps else None,
            "api_baseline": loadgen.summarize_waits(sampler.between(base_start, base_end)),
            "api_during_conversion": loadgen.summarize_waits(sampler.between(conv_start, conv_end)),
            "driver_waits": loadgen.summarize_waits(sampler.between(conv_start, conv_end, driver=True)),
            "api_lock_timeouts_logged": _api_lock_timeouts(sbx) - timeouts_before,
            "postgres_log": {"log_lock_waits": settings.get("log_lock_waits"),
                             "deadlock_timeout_ms": settings.get("deadlock_timeout"),
                             **long_lock_waits(sbx, pg_log_at)},
        },
    }
