"""The floor for `rollback validate fase2`: the same HTTP requests and SQL queries, one after another,
with no framework (no pytest, no plugins, no reports), and the same pass/fail judgments, plainly.

    eval "$(rollback sandbox env)" && python bench/floor_fase2.py
    python bench/floor_fase2.py /v1/leads /v1/appointments     # the profile's endpoints, if fewer

It reads API_BASE_URL, TEST_API_KEY, TEST_BRANCH_API_KEY, TEST_REVOKED_API_KEY and DATABASE_URL
like the checks do, with the checks' default thresholds (p95 alert 1000 ms, error rate 5%,
20 requests per endpoint), and prints one line: checks passed, failed and skipped. Exit 0 when
none failed, 1 otherwise. What `validate fase2` runs without a run context or --allow-writes
is what this runs: the checks that need a run context (the backup comparisons) are skipped
by both, and cost neither any request.

The list endpoints are the contract profile's three, or those given as arguments (the bench
narrows the profile to measure how the time grows with them): the authentication checks knock
on the first, as the checks do (`Profile.auth_path`).

The error rate is judged as the checks judge it: the 20 x 3 sample grows by 20 per endpoint
until the 99% Wilson interval of the rate lies on one side of the 5% limit (up to 600
requests; on a healthy API 180 in all). The one deliberate difference: the floor's requests go
one after another, where the checks send them 8 at a time. The floor is the plainest way to the
same answer.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
import uuid
from typing import Any

import httpx
import psycopg

ENDPOINTS: tuple[str, ...] = ("/v1/leads", "/v1/appointments", "/v1/branches")
USER_AGENT = "rollback-toolkit-validation"
SAMPLE_SIZE, ALERT_MS, ERROR_RATE, ERROR_RATE_CAP = 20, 1000.0, 0.05, 600
TABLES = ("tenants", "branches", "leads", "appointments", "api_keys", "api_key_usage_logs")
ORPHANS = {"api_keys": [("tenant_id", "tenants")], "branches": [("tenant_id", "tenants")],
           "leads": [("tenant_id", "tenants"), ("branch_id", "branches")],
           "appointments": [("tenant_id", "tenants"), ("branch_id", "branches"), ("lead_id", "leads")]}

results: dict[str, bool | None] = {}  # check -> passed (None: skipped)


def check(name: str, passed: bool | None) -> None:
    results[name] = passed


def nonce() -> dict[str, str]:
    return {"_validation_nonce": uuid.uuid4().hex}


def is_error(response: httpx.Response, status: int, code: str | None = None) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return (response.status_code == status and isinstance(body, dict) and set(body) == {"error", "code"}
            and (code is None or body["code"] == code))


def listing(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    ok = response.status_code == 200 and isinstance(body, dict) and \
        {"data", "total", "page", "pageSize", "filters"} <= set(body)
    return body if ok else None


def error_rate_verdict(failed: int, total: int, z: float = 2.575829) -> str:
    """pass, fail or undecided: where the 99% Wilson interval of the rate lies against the limit."""
    rate, z2 = failed / total, z * z
    centre = (rate + z2 / (2 * total)) / (1 + z2 / total)
    half = z * (rate * (1 - rate) / total + z2 / (4 * total * total)) ** 0.5 / (1 + z2 / total)
    if failed and centre - half >= ERROR_RATE:
        return "fail"
    return "pass" if centre + half < ERROR_RATE else "undecided"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def main(endpoints: list[str]) -> int:
    global ENDPOINTS
    started = time.perf_counter()
    ENDPOINTS = tuple(endpoints) or ENDPOINTS
    auth_path = ENDPOINTS[0]
    env = os.environ
    base, key = env["API_BASE_URL"], env["TEST_API_KEY"]
    branch_key, revoked_key, url = env.get("TEST_BRANCH_API_KEY"), env.get("TEST_REVOKED_API_KEY"), \
        env["DATABASE_URL"]
    expired_key = env.get("TEST_EXPIRED_API_KEY")
    ua = {"User-Agent": USER_AGENT}
    api = httpx.Client(base_url=base, headers={**ua, "Authorization": f"Bearer {key}"}, timeout=10)
    anon = httpx.Client(base_url=base, headers=ua, timeout=10)
    db = psycopg.connect(url, autocommit=True, connect_timeout=4, application_name="rollback-validation")
    db.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    db.execute("SET statement_timeout = 24000")
    db.autocommit = False
    db.read_only = True

    def query(text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        rows = db.execute(text.encode(), params).fetchall()
        db.rollback()
        return rows

    # the API
    health = anon.get("/health")
    check("api_is_reachable", anon.get("/health").status_code not in (502, 504))
    body = health.json()
    check("health_reports_ok", health.status_code == 200 and body.get("status") == "ok"
          and body.get("database") == "ok")
    check("deployed_version_is_expected", None)  # no expected version given: inconclusive
    # authentication
    check("valid_key_is_accepted", api.get(auth_path).status_code == 200)
    check("missing_key_is_rejected", is_error(anon.get(auth_path), 401, "UNAUTHORIZED"))
    for name, header in (("not_bearer", "Basic dXNlcjpwYXNz"), ("bad_format", "Bearer not-an-api-key")):
        response = anon.get(auth_path, headers={"Authorization": header})
        check(f"malformed_key_is_rejected[{name}]", is_error(response, 401, "UNAUTHORIZED"))
    unknown = "tis_live_" + secrets.token_hex(16)
    check("unknown_key_is_rejected", is_error(
        anon.get(auth_path, headers={"Authorization": f"Bearer {unknown}"}), 401, "UNAUTHORIZED"))
    for kind, refused in (("revoked", revoked_key), ("expired", expired_key)):
        if refused:
            response = anon.get(auth_path, headers={"Authorization": f"Bearer {refused}"})
            check(f"{kind}_key_is_rejected", is_error(response, 401, "UNAUTHORIZED"))
        else:
            check(f"{kind}_key_is_rejected", None)
    # the key's tenant, and API totals against the database
    found = query("SELECT id::text, tenant_id::text FROM api_keys WHERE key_hash = %s",
                  (hashlib.sha256(key.encode()).hexdigest(),))
    tenant_id = found[0][1]
    query("SELECT id::text FROM branches WHERE tenant_id = %s ORDER BY id", (tenant_id,))
    for path in ENDPOINTS:
        table = path.rsplit("/", 1)[1]
        page = listing(api.get(path, params={"pageSize": 1, **nonce()}))
        count = query(f"SELECT count(*) FROM {table} WHERE tenant_id = %s", (tenant_id,))[0][0]
        check(f"api_total_matches_database[{table}]", page is not None and page["total"] == count)
    # the database
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True, connect_timeout=4,
                         application_name="rollback-validation") as conn:
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        conn.execute("SET statement_timeout = 24000")
        conn.execute("SELECT 1").fetchone()
    check("database_connects_within_limit", (time.perf_counter() - t0) * 1000 <= 2000)
    for table in TABLES:
        query(f"SELECT * FROM {table} LIMIT 1")
        check(f"critical_table_is_readable[{table}]", True)
    for table, refs in ORPHANS.items():
        rows: list[tuple[Any, ...]] = []
        for column, parent in refs:
            rows += query(f"SELECT c.id, '{column}', c.{column} FROM {table} c WHERE c.{column} IS NOT NULL "
                          f"AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = c.{column}) LIMIT 50")
        check(f"no_orphaned_rows[{table}]", not rows)
    for table in ("leads", "appointments"):
        check(f"no_row_points_at_another_tenants_branch[{table}]", not query(
            f"SELECT c.id, c.tenant_id, c.branch_id, b.tenant_id FROM {table} c JOIN branches b "
            "ON b.id = c.branch_id WHERE b.tenant_id <> c.tenant_id LIMIT 50"))
    has_scope = bool(query("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                           "AND table_name = 'api_keys' AND column_name = 'scope_type'"))
    check("api_key_scope_columns_are_consistent", not query(
        "SELECT k.id FROM api_keys k LEFT JOIN branches b ON b.id = k.branch_id "
        "WHERE k.scope_type IS NULL OR k.scope_type NOT IN ('tenant', 'branch') "
        "   OR (k.scope_type = 'tenant' AND k.branch_id IS NOT NULL) "
        "   OR (k.scope_type = 'branch' AND k.branch_id IS NULL) "
        "   OR (k.branch_id IS NOT NULL AND (b.id IS NULL OR b.tenant_id <> k.tenant_id)) LIMIT 50")
        if has_scope else None)
    check("no_duplicate_key_hash", not query(
        "SELECT count(*), array_agg(id ORDER BY id) FROM api_keys GROUP BY key_hash "
        "HAVING count(*) > 1 LIMIT 50"))
    check("no_active_key_is_revoked", not query(
        "SELECT id, tenant_id, revoked_at FROM api_keys WHERE is_active AND revoked_at IS NOT NULL LIMIT 50"))
    # the list endpoints' contract
    for path in ENDPOINTS:
        check(f"list_answers_with_contract_shape[{path}]", listing(api.get(path)) is not None)
    for path in ENDPOINTS:
        def ids(**params: int) -> tuple[list[str], int]:
            page = listing(api.get(path, params=params))  # noqa: B023 (used at once)
            return ([str(r["id"]) for r in page["data"]], int(page["total"])) if page else ([], -1)
        _, total = ids(pageSize=1)
        if total < 2:
            check(f"pagination_is_consistent[{path}]", None)
            continue
        size = min(5, total // 2)
        first, t1 = ids(page=1, pageSize=size)
        second, t2 = ids(page=2, pageSize=size)
        both, _ = ids(page=1, pageSize=2 * size)
        last_page = -(-total // size)
        last, t3 = ids(page=last_page, pageSize=size)
        check(f"pagination_is_consistent[{path}]",
              (len(first), len(second)) == (size, min(size, total - size)) and not set(first) & set(second)
              and first + second == both and t1 == t2 == t3 == total
              and len(last) == total - (last_page - 1) * size)
    check("unknown_route_is_404", is_error(api.get(f"/v1/no-such-route-{uuid.uuid4().hex[:8]}"), 404))
    headers = api.get(auth_path).headers
    check("rate_limit_headers_are_present", all(
        h in headers for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")))
    # latency and error rate: 20 requests to each endpoint, one after another; then, as the
    # error-rate check does, 20 more to each until the rate's 99% Wilson interval lies on one
    # side of the limit, or 600 requests in all
    latencies: dict[str, list[float]] = {path: [] for path in ENDPOINTS}
    sent = failed = 0

    def one_round(record: bool) -> None:
        nonlocal sent, failed
        for _ in range(SAMPLE_SIZE):
            for path in ENDPOINTS:
                t0 = time.perf_counter()
                try:
                    failed += api.get(path).status_code >= 500
                    elapsed = (time.perf_counter() - t0) * 1000
                except httpx.TransportError:
                    failed, elapsed = failed + 1, float("inf")
                sent += 1
                if record:
                    latencies[path].append(elapsed)

    one_round(record=True)
    while (verdict := error_rate_verdict(failed, sent)) == "undecided" and \
            sent + SAMPLE_SIZE * len(ENDPOINTS) <= ERROR_RATE_CAP:
        one_round(record=False)
    if verdict == "undecided":
        verdict = "fail" if failed and failed / sent >= ERROR_RATE else "pass"
    check("synthetic_error_rate_is_below_limit", verdict == "pass")
    for path, values in latencies.items():
        check(f"p95_latency_is_within_limits[{path}]", p95(values) <= ALERT_MS)
    # FASE 2
    has_scope = bool(query("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                           "AND table_name = 'api_keys' AND column_name = 'scope_type'"))
    check("no_branch_scoped_keys_remain", not query(
        "SELECT id, tenant_id, branch_id FROM api_keys WHERE scope_type = 'branch' OR branch_id IS NOT NULL "
        "ORDER BY id LIMIT 50") if has_scope else None)
    for name in ("backup_holds_every_converted_key", "converted_keys_still_exist",
                 "converted_keys_are_unchanged_but_for_scope", "converted_keys_are_still_active",
                 "key_counts_are_unchanged"):
        check(name, None)  # they compare with a run context's backup: none given
    if branch_key:
        found = query("SELECT id::text, tenant_id::text FROM api_keys WHERE key_hash = %s",
                      (hashlib.sha256(branch_key.encode()).hexdigest(),))
        leads = query("SELECT count(*), count(DISTINCT branch_id) FROM leads WHERE tenant_id = %s",
                      (found[0][1],))[0][0]
        response = anon.get("/v1/leads", params={"pageSize": 100, **nonce()},
                            headers={"Authorization": f"Bearer {branch_key}"})
        page = listing(response)
        check("former_branch_key_reads_every_branch", page is not None and page["total"] == leads
              and all(str(r["tenant_id"]) == found[0][1] for r in page["data"]))
    else:
        check("former_branch_key_reads_every_branch", None)
    # tenant isolation
    foreign = query("SELECT id::text FROM branches WHERE tenant_id <> %s ORDER BY id LIMIT 1", (tenant_id,))
    for path in ENDPOINTS:
        page = listing(api.get(path, params={"pageSize": 100, **nonce()}))
        check(f"records_belong_to_the_keys_tenant[{path}]",
              page is not None and all(str(r["tenant_id"]) == tenant_id for r in page["data"]))
    for path in ENDPOINTS:
        response = api.get(path, params={"branch_id": foreign[0][0], "pageSize": 100, **nonce()})
        records = (listing(response) or {}).get("data", []) if response.status_code < 400 else []
        check(f"foreign_branch_id_reads_nothing_of_another_tenant[{path}]",
              response.status_code < 500 and all(str(r["tenant_id"]) == tenant_id for r in records))
    # real traffic (one query per check, as the checks' fixture runs per check)
    for name in ("real_traffic_error_rate_is_below_limit", "real_traffic_p95_is_within_limits"):
        total, errors, p95_ms = query(
            "SELECT count(*), count(*) FILTER (WHERE status_code >= 500), percentile_cont(0.95) "
            "WITHIN GROUP (ORDER BY response_time_ms) FROM api_key_usage_logs "
            "WHERE created_at >= now() - interval '15 minutes' AND user_agent IS DISTINCT FROM %s",
            (USER_AGENT,))[0]
        if total < SAMPLE_SIZE:
            check(name, None)
        elif name.startswith("real_traffic_error"):
            check(name, errors / total < ERROR_RATE or errors == 0)
        else:
            check(name, p95_ms is not None and p95_ms <= ALERT_MS)
    check("lead_can_be_created", None)  # writes only with --allow-writes
    db.close()
    api.close()
    anon.close()

    passed = sum(1 for v in results.values() if v)
    failed_checks = [k for k, v in results.items() if v is False]
    skipped = sum(1 for v in results.values() if v is None)
    print(f"fase2 floor: {passed} passed, {len(failed_checks)} failed, {skipped} skipped in "
          f"{time.perf_counter() - started:.2f} s" + (f" (failed: {', '.join(failed_checks)})"
                                                    if failed_checks else ""))
    return 1 if failed_checks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
