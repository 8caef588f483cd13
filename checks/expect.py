"""Assertion helpers for the checks. Their frames are hidden from tracebacks, and each message
puts the measured value beside the limit and says what it means for the person on call."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import pytest

from checks._plugin.verdicts import inconclusive, saw_nothing
from checks.evidence import Evidence, excerpt
from checks.probe import Outcome, Sample
from rollback.config import Thresholds
from rollback.profile import Resource

__all__ = [
    "backup_differences",
    "changed_columns",
    "compared_columns",
    "error_rate_verdict",
    "expect_backup_matches_csv",
    "expect_backup_rows",
    "expect_error_body",
    "expect_error_rate",
    "expect_json",
    "expect_latency",
    "expect_list_shape",
    "expect_no_orphans",
    "expect_no_rows",
    "expect_own_tenant",
    "expect_status",
    "expect_total",
    "expect_unchanged_but_for_scope",
    "inconclusive",
    "saw_nothing",
]

LIST_KEYS = {"data", "total", "page", "pageSize", "filters"}


def _where(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"


def expect_status(response: httpx.Response, expected: int, meaning: str = "") -> None:
    __tracebackhide__ = True
    if response.status_code != expected:
        tail = f": {meaning}" if meaning else ""
        pytest.fail(f"{_where(response)} answered {response.status_code}, expected {expected}"
                    f"{tail}; body: {excerpt(response)}", pytrace=False)


def expect_json(response: httpx.Response) -> Any:
    __tracebackhide__ = True
    try:
        return response.json()
    except ValueError:
        pytest.fail(f"{_where(response)} answered {response.status_code} with a body that is not "
                    f"JSON: {excerpt(response)}", pytrace=False)


def expect_error_body(response: httpx.Response, status: int, code: str | None) -> None:
    """Status and the contract's error body, exactly {"error": <text>, "code": <code>}."""
    __tracebackhide__ = True
    expect_status(response, status)
    body = expect_json(response)
    problems = []
    if not isinstance(body, dict) or set(body) != {"error", "code"}:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        problems.append(f"keys {keys}, expected exactly ['code', 'error']")
    else:
        if not isinstance(body["error"], str) or not body["error"]:
            problems.append(f"error {body['error']!r} is not a non-empty text")
        if code is not None and body["code"] != code:
            problems.append(f"code {body['code']!r}, expected {code!r}")
        elif not isinstance(body["code"], str):
            problems.append(f"code {body['code']!r} is not a text")
    if problems:
        pytest.fail(f"{_where(response)} {status} body breaks the error contract ("
                    f"{'; '.join(problems)}): clients parsing errors will break; body: "
                    f"{excerpt(response)}", pytrace=False)


def expect_list_shape(response: httpx.Response, resource: Resource) -> list[dict[str, Any]]:
    """200 and {data, total, page, pageSize, filters} with the resource's fields per record."""
    __tracebackhide__ = True
    expect_status(response, 200, f"the {resource.name} list is broken for clients")
    body = expect_json(response)
    if not isinstance(body, dict) or not set(body) >= LIST_KEYS:
        have = sorted(body) if isinstance(body, dict) else type(body).__name__
        pytest.fail(f"{_where(response)}: list body has keys {have}, missing "
                    f"{sorted(LIST_KEYS - set(body if isinstance(body, dict) else {}))}: "
                    "clients reading the list contract will break", pytrace=False)
    if not isinstance(body["data"], list) or not isinstance(body["total"], int):
        pytest.fail(f"{_where(response)}: data is {type(body['data']).__name__} and total is "
                    f"{type(body['total']).__name__}, expected a list and an integer", pytrace=False)
    missing: dict[str, int] = {}
    for record in body["data"]:
        for name in set(resource.fields) - set(record if isinstance(record, dict) else {}):
            missing[name] = missing.get(name, 0) + 1
    if missing:
        listing = ", ".join(f"{name} (in {n})" for name, n in sorted(missing.items()))
        pytest.fail(f"{_where(response)}: {resource.name} records lack fields {listing} of "
                    f"{len(body['data'])} records", pytrace=False)
    return body["data"]


def expect_total(response: httpx.Response) -> int:
    """200 and an integer `total`, for checks that need only the count."""
    __tracebackhide__ = True
    expect_status(response, 200)
    body = expect_json(response)
    total = body.get("total") if isinstance(body, dict) else None
    if not isinstance(total, int) or isinstance(total, bool):
        pytest.fail(f"{_where(response)}: total is {total!r}, expected an integer", pytrace=False)
    return total


def expect_own_tenant(records: Iterable[Mapping[str, Any]], tenant_id: str, what: str,
                      *, require: bool = True) -> None:
    """Every record carries the key's tenant: anything else is a data leak between tenants.

    No record at all proves nothing: with `require` that is inconclusive (`saw_nothing`).
    """
    __tracebackhide__ = True
    records = list(records)
    if not records and require:
        saw_nothing(f"{what} returned no records, so none could be checked for its tenant; "
                    "use a TEST_API_KEY whose tenant has data")
    foreign = [r for r in records if str(r.get("tenant_id")) != tenant_id]
    if foreign:
        tenants = sorted({str(r.get("tenant_id")) for r in foreign})
        ids = ", ".join(str(r.get("id")) for r in foreign[:3])
        pytest.fail(f"TENANT DATA LEAK: {len(foreign)} of {len(records)} records from {what} "
                    f"belong to other tenants ({', '.join(tenants[:3])}), e.g. ids {ids}; the key's "
                    f"tenant is {tenant_id}. Treat as a security incident.", pytrace=False)


def expect_latency(sample: Sample, thresholds: Thresholds, evidence: Evidence) -> None:
    """p95 under warn passes; between warn and alert passes with a warning; over alert fails."""
    __tracebackhide__ = True
    value = sample.p95_ms
    if value is None:  # latency is timed on successful answers (rollback.probes' rules)
        why = next((o.error or f"{o.status} {o.body}".strip() for o in sample.outcomes
                    if o.error or not o.succeeded), "no request was answered")
        pytest.fail(f"no request to {sample.path} could be timed, none answered successfully "
                    f"({sample.statuses}): {why}", pytrace=False)
    shown = f"{value:.0f} ms" if math.isfinite(value) else "beyond the request timeout"
    answered = [ms for ms in sample.latencies_ms if math.isfinite(ms)]
    evidence.latencies(sample.path, answered, warn_ms=thresholds.warn_ms,
                       alert_ms=thresholds.alert_ms, p95_ms=value if math.isfinite(value) else None)
    evidence.record(p95=shown, requests=sample.size, timed_out=sample.timeouts,
                    statuses=sample.statuses, max_answered_ms=round(max(answered, default=0), 1))
    where = f"over {sample.size} requests to {sample.path}"
    if sample.timeouts:
        where += f" ({sample.timeouts} timed out)"
    if value > thresholds.alert_ms:
        pytest.fail(f"p95 {shown} > alert {thresholds.alert_ms:g} ms {where}: clients see "
                    "slow responses; look for a slow query, a missing index or an overloaded "
                    "database", pytrace=False)
    if value > thresholds.warn_ms:
        evidence.warn(f"p95 {shown} > warn {thresholds.warn_ms:g} ms {where} (alert at "
                      f"{thresholds.alert_ms:g} ms)")


#: z of the two-sided 99% interval an error rate is judged with. 99%, not 95%: the sample is
#: looked at after every batch, and each look is a chance to be wrong (measured by simulation:
#: with 95%, 2% background errors failed 0.9% of runs on one endpoint; with 99%, none of 4000)
Z99 = 2.575829


def wilson_interval(failed: int, total: int, z: float = Z99) -> tuple[float, float]:
    """The Wilson score interval of a rate of `failed` in `total`: (low, high), within [0, 1]."""
    if total <= 0:
        return 0.0, 1.0
    rate = failed / total
    z2 = z * z
    centre = (rate + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(rate * (1 - rate) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def error_rate_verdict(failed: int, total: int, limit: float, *, final: bool = False) -> str:
    """"fail" when the rate is surely at or over `limit` (the 99% interval lies above it),
    "pass" when surely under (the interval's top is under it), else "undecided"; with
    `final` (no more requests to send) the measured rate decides: at or over the limit fails.
    A sample that saw no request is undecided, never a pass."""
    if total <= 0:
        return "undecided"
    low, high = wilson_interval(failed, total)
    if failed and low >= limit:
        return "fail"
    if high < limit:
        return "pass"
    if final:
        return "fail" if failed and failed / total >= limit else "pass"
    return "undecided"


def decide_error_rate(failed: int, total: int, limit: float) -> str:
    """`error_rate_verdict` as `probe.sample_until_decided` asks it: may it stop sampling?"""
    return error_rate_verdict(failed, total, limit)


def expect_error_rate(samples: Mapping[str, Sequence[Outcome]], limit: float, what: str,
                      evidence: Evidence) -> None:
    """Server errors, timeouts and failed connections under `limit`, over all the requests
    and per endpoint (an endpoint failing often is not hidden by healthy others). 429s (the
    toolkit's own rate limit) are left out. A rate fails when the sample shows it surely at
    or over the limit, or, where the sample cannot tell, when the measured rate is."""
    __tracebackhide__ = True
    judged = {path: [o for o in outcomes if o.status != 429] for path, outcomes in samples.items()}
    every = [o for outcomes in judged.values() for o in outcomes]
    if not every:
        saw_nothing(f"no request of the {what} got an answer that is not a 429 (rate limited)")
    failed = [o for o in every if o.failed]
    rate = len(failed) / len(every)
    evidence.record(error_rate=f"{rate:.1%}", failed=len(failed), requests=len(every))
    for path, outcomes in judged.items():
        bad = sum(1 for o in outcomes if o.failed)
        evidence.record(**{f"{path} failed": f"{bad} of {len(outcomes)}"})
    for outcome in failed[:5]:
        evidence.failed_request("GET", outcome.url, outcome.error or outcome.body, outcome.elapsed_ms,
                                status=outcome.status,
                                sent=not (outcome.error or "").startswith("NotSent"))
    overall = error_rate_verdict(len(failed), len(every), limit, final=True)
    worst = [(path, bad, len(outcomes)) for path, outcomes in judged.items()
             if (bad := sum(1 for o in outcomes if o.failed))
             and error_rate_verdict(bad, len(outcomes), limit) == "fail"]
    if overall != "fail" and not worst:
        return
    kinds: dict[str, int] = {}
    for o in failed:
        kind = str(o.status) if o.status else (o.error or "no answer").split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    detail = ", ".join(f"{n}x {k}" for k, n in sorted(kinds.items()))
    first = failed[0]
    where = "; ".join(f"{path}: {bad} of {n} ({bad / n:.1%})" for path, bad, n in worst)
    head = (f"error rate {rate:.1%} >= limit {limit:.1%}" if overall == "fail" else
            f"error rate {rate:.1%} overall, but over the limit {limit:.1%} at {where}")
    pytest.fail(f"{head} ({len(failed)} of {len(every)} {what} failed: {detail}"
                + (f"; per endpoint {where}" if overall == "fail" and worst else "")
                + f"); first: GET {first.path} -> {first.status or first.error} {first.body}".rstrip(),
                pytrace=False)


def expect_no_rows(rows: Sequence[Sequence[Any]], problem: str, meaning: str) -> None:
    """A query that lists violations found none; otherwise show how many and a few examples."""
    __tracebackhide__ = True
    if rows:
        examples = "; ".join(", ".join(str(v) for v in row) for row in rows[:5])
        more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
        pytest.fail(f"{len(rows)} {problem}: {meaning}. Examples: {examples}{more}", pytrace=False)


# --- the database's consistency and FASE 2's backup --------------------------------------------


def expect_no_orphans(table: str, found: Mapping[tuple[str, str], Sequence[tuple[Any, Any]]],
                      *, limit: int = 50) -> None:
    """No row of `table` points at a missing parent. `found` maps each reference, (column,
    parent table), to the (row id, missing parent id) pairs its query found (at most `limit`).

    Each (table, column) is judged and named on its own: a lead whose branch is gone and one
    whose tenant is gone are two different repairs."""
    __tracebackhide__ = True
    orphaned = {ref: rows for ref, rows in found.items() if rows}
    if not orphaned:
        return
    total = sum(len(rows) for rows in orphaned.values())
    parts = []
    for (column, parent), rows in orphaned.items():
        count = f"at least {len(rows)}" if len(rows) >= limit else str(len(rows))
        examples = "; ".join(f"{row_id} -> {missing}" for row_id, missing in rows[:5])
        more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
        parts.append(f"{table}.{column} -> {parent}: {count} rows (id -> missing {parent}.id: "
                     f"{examples}{more})")
    pytest.fail(f"{total} {table} rows point at a missing parent: {'; '.join(parts)}. The API "
                "may fail or hide them; something deleted parents without cascading (a partial "
                "restore or a dropped foreign key?)", pytrace=False)


def compared_columns(backup_columns: Sequence[str], key_columns: Iterable[str],
                     exempt: Iterable[str]) -> list[str]:
    """The columns a converted key is compared by with its backup: those both tables have, in
    the backup's order, but the exempt ones (scope and platform-managed columns)."""
    shared, left_out = set(key_columns), set(exempt)
    return [c for c in backup_columns if c in shared and c not in left_out]


def changed_columns(columns: Sequence[str], differs: Sequence[bool]) -> list[str]:
    """The columns whose flag says the key's value differs from its backup's (one flag a column,
    in the same order: the database's `IS DISTINCT FROM`, so NULL against a value differs)."""
    if len(columns) != len(differs):
        raise ValueError(f"{len(differs)} flags for {len(columns)} columns")
    return [c for c, diff in zip(columns, differs, strict=True) if diff]


def expect_unchanged_but_for_scope(where: str, columns: Sequence[str],
                                   rows: Sequence[tuple[Any, Sequence[bool]]]) -> None:
    """Each converted key equals its backup (`where`) in every compared column. `rows` are the
    keys that differ somewhere, each as (key id, one differs-flag per column)."""
    __tracebackhide__ = True
    if not columns:
        pytest.fail(f"backup table {where} shares no compared column with api_keys: nothing "
                    "to compare a converted key by (is it the backup of another table?)",
                    pytrace=False)
    changed = [(key_id, ", ".join(names)) for key_id, flags in rows
               if (names := changed_columns(columns, flags))]
    expect_no_rows(changed, "converted keys changed beyond their scope (id, changed columns)",
                   "the rollback must only widen scope; compare with the backup "
                   f"{where} and restore those columns")


def expect_backup_rows(what: str, held: int, recorded: int) -> None:
    """The backup (its table, or its CSV) holds as many rows as the run recorded backing up."""
    __tracebackhide__ = True
    if held != recorded:
        lost = ("is incomplete, so an undo would lose keys" if held < recorded else
                "holds rows the run did not back up (another run's, or written since)")
        pytest.fail(f"{what} holds {held} rows, the run recorded {recorded}: the backup {lost}",
                    pytrace=False)


def backup_differences(columns: Sequence[str], table_rows: Iterable[Sequence[str]],
                       csv_columns: Sequence[str], csv_rows: Iterable[Sequence[str]], *,
                       limit: int = 50) -> list[tuple[str, str]]:
    """The backup table's rows and its CSV's, compared key by key: (key id, what differs) for a
    key only in one of them, or the columns whose values differ, up to `limit`. Both are CSV
    rows in id order as COPY writes them (the file is the table's COPY, and uuid text sorts as
    PostgreSQL sorts uuids); a header that differs is one difference, ("columns", ...)."""
    if list(columns) != list(csv_columns):
        return [("columns", f"{', '.join(columns)} in the table, {', '.join(csv_columns)} in "
                            "the CSV")]
    at = list(columns).index("id")
    found: list[tuple[str, str]] = []
    table, file = iter(table_rows), iter(csv_rows)
    ours, theirs = next(table, None), next(file, None)
    while (ours is not None or theirs is not None) and len(found) < limit:
        if theirs is None or (ours is not None and ours[at] < theirs[at]):
            assert ours is not None
            found.append((ours[at], "only in the table"))
            ours = next(table, None)
        elif ours is None or theirs[at] < ours[at]:
            found.append((theirs[at], "only in the CSV"))
            theirs = next(file, None)
        else:
            differ = [c for i, c in enumerate(columns) if _field(ours, i) != _field(theirs, i)]
            if not differ and len(ours) != len(theirs):
                differ = ["(extra fields)"]
            if differ:
                found.append((ours[at], ", ".join(differ)))
            ours, theirs = next(table, None), next(file, None)
    return found


def _field(row: Sequence[str], at: int) -> str | None:
    return row[at] if at < len(row) else None


def expect_backup_matches_csv(where: str, csv: str, differences: Sequence[tuple[str, str]]) -> None:
    """The backup table and its CSV hold the same keys with the same values."""
    __tracebackhide__ = True
    if differences:
        shown = "; ".join(f"{key}: {what}" for key, what in differences[:5])
        more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
        pytest.fail(f"backup table {where} and its CSV {csv} differ in {len(differences)} keys "
                    f"(id: what differs): {shown}{more}. One of them was changed after the "
                    "backup: an undo restores from the table, so compare both before restoring",
                    pytrace=False)
