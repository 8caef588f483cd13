"""Each general check fails when the sandbox is broken the way that check guards against, and
its message names the cause. Every test runs on both shapes of the platform (`any_sandbox`:
the API reference's and the real one's), with paths, codes and tables from the sandbox's
profile. Tests put back what they break.

Every run goes through `rollback.validate.run_validation`, narrowed with `-k` to the checks at
stake so that each case costs about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rollback.runs import gitops
from rollback.validate import ValidationResult, run_validation
from tests.conftest import Sandbox
from tests.validations import failed

pytestmark = pytest.mark.slow


def validate(box: Sandbox, tmp_path: Path, k: str, *args: str, selection: str = "health",
             **env: str) -> ValidationResult:
    return run_validation(selection, reports_root=tmp_path, env=box.env(**env),  # type: ignore[arg-type]
                          extra_args=["-k", k, *args])


def verdict(result: ValidationResult, check: str) -> str:
    return result.check(check).verdict


@contextlib.contextmanager
def altered(box: Sandbox, change: str, restore: str, params: object = None) -> Iterator[None]:
    """Run `change` as the superuser (triggers and FK checks off), and `restore` afterwards.

    Each is one or more statements separated by "; "."""
    def run(statements: str) -> None:
        with psycopg.connect(box.database_url, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            for statement in statements.split("; "):
                conn.execute(statement, params if "%(" in statement else None)  # type: ignore[arg-type]

    run(change)
    try:
        yield
    finally:
        run(restore)


def clone(table: str, where: str, **columns: str) -> str:
    """INSERT a copy of the first row of `table` matching `where`, with `columns` replaced by
    SQL expressions. A copy carries every NOT NULL and CHECKed column of either shape's schema."""
    changes = ", ".join(f"'{name}', {expr}" for name, expr in columns.items())
    return (f"INSERT INTO {table} SELECT (jsonb_populate_record(NULL::{table}, "
            f"to_jsonb(r) || jsonb_build_object({changes}))).* FROM {table} r "
            f"WHERE {where} ORDER BY r.id LIMIT 1")


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def other_tenant_branch(box: Sandbox) -> str:
    return str(box.sql("SELECT id FROM branches WHERE tenant_id <> %s ORDER BY id LIMIT 1",
                       (box.tenant_id,))[0][0])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- API -------------------------------------------------------------------------------------


def test_unreachable_api_fails_reachability(any_sandbox: Sandbox, tmp_path: Path) -> None:
    result = validate(any_sandbox, tmp_path, "reachable",
                      API_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    failed(result, "test_api_is_reachable", "cannot reach the API", "ConnectError")


#: what the failed health check says, by shape: the contract's body names the database; the
#: real one answers 503 "unhealthy" at the end of the /health redirect, with no database field
HEALTH_DOWN = {
    "contract": ("GET /health answered 503", "database='error'", "cannot reach its database"),
    "tistis": ("GET /health -> /api/health answered 503", "status='unhealthy'",
               "expected 200, status one of ['healthy']"),
}


def test_database_error_in_health_fails_health_check(any_sandbox: Sandbox, tmp_path: Path) -> None:
    with any_sandbox.chaos(health="db_error"):
        result = validate(any_sandbox, tmp_path, "health_reports")
    failed(result, "test_health_reports_healthy", *HEALTH_DOWN[any_sandbox.shape])
    assert verdict(validate(any_sandbox, tmp_path, "health_reports"),
                   "test_health_reports_healthy") == "pass"


def test_other_version_fails_version_check(any_sandbox: Sandbox, tmp_path: Path) -> None:
    # contract: the health body's version; tistis: `vercel inspect` (the stand-in on PATH)
    source = any_sandbox.profile.version.describe().split("{")[0]
    wrong = validate(any_sandbox, tmp_path, "version", "--expected-version", "0000000deadbeef")
    failed(wrong, "test_deployed_version_is_expected", source, "expected '0000000deadbeef'",
           "deploy is not live")
    head = gitops.out(any_sandbox.repo, "rev-parse", "HEAD")
    right = validate(any_sandbox, tmp_path, "version", "--expected-version", head)
    assert verdict(right, "test_deployed_version_is_expected") == "pass"


def test_slow_endpoint_fails_its_latency_check_only(any_sandbox: Sandbox, tmp_path: Path) -> None:
    profile = any_sandbox.profile
    slow = profile.leads_path
    with any_sandbox.chaos(latency_ms=400, paths=[slow]):
        result = validate(any_sandbox, tmp_path, "latency or valid_key", "--warn-ms", "100",
                          "--alert-ms", "300", "--sample-size", "8")
    failed(result, "test_p95_latency_is_within_limits[leads]",
           f"> alert 300 ms over 8 requests to {slow}")
    for resource in profile.resources:
        if profile.path_of(resource) != slow:
            assert verdict(result, f"test_p95_latency_is_within_limits[{resource.name}]") == "pass"
    # slow is not down: the valid key is still let in (one request, no p95)
    assert verdict(result, "test_valid_key_is_accepted") == "pass"


def test_server_errors_fail_synthetic_error_rate(any_sandbox: Sandbox, tmp_path: Path) -> None:
    failing = any_sandbox.profile.endpoints[-1]
    with any_sandbox.chaos(error_rate=0.5, paths=[failing]):
        result = validate(any_sandbox, tmp_path, "synthetic")
    failed(result, "test_synthetic_error_rate_is_below_limit", ">= limit 5.0%", "500", failing)
    # a path that fails its first request: the checks sample it in their turn, not beforehand
    with any_sandbox.chaos(error_rate=1.0, paths=[failing]):
        result = validate(any_sandbox, tmp_path, "synthetic")
    failed(result, "test_synthetic_error_rate_is_below_limit", ">= limit 5.0%", "500", failing)
    assert "by this check and the first that needed it" in result.html.read_text()


# --- authentication --------------------------------------------------------------------------


def test_refused_validation_key_fails_valid_key_check(any_sandbox: Sandbox, tmp_path: Path) -> None:
    result = validate(any_sandbox, tmp_path, "valid_key", TEST_API_KEY="tis_live_" + "x" * 32)
    failed(result, "test_valid_key_is_accepted", "answered 401, expected 200", "locked out")


@pytest.mark.parametrize("kind", ["revoked", "expired"])
def test_refused_key_that_works_fails_its_check(any_sandbox: Sandbox, tmp_path: Path,
                                                kind: str) -> None:
    digest = sha(any_sandbox.keys[kind])
    before = any_sandbox.sql("SELECT is_active, revoked_at, expires_at FROM api_keys "
                             "WHERE key_hash = %s", (digest,))[0]
    with altered(any_sandbox, "UPDATE api_keys SET is_active = true, revoked_at = NULL, "
                 "expires_at = NULL WHERE key_hash = %(h)s",
                 "UPDATE api_keys SET is_active = %(a)s, revoked_at = %(r)s, expires_at = %(e)s "
                 "WHERE key_hash = %(h)s",
                 {"h": digest, "a": before[0], "r": before[1], "e": before[2]}):
        result = validate(any_sandbox, tmp_path, f"{kind}_key")
    failed(result, f"test_{kind}_key_is_rejected", "answered 200, expected 401")
    assert verdict(validate(any_sandbox, tmp_path, f"{kind}_key"),
                   f"test_{kind}_key_is_rejected") == "pass"


def test_write_check_runs_only_with_allow_writes(any_sandbox: Sandbox, tmp_path: Path) -> None:
    box = any_sandbox
    plain = validate(box, tmp_path, "lead_can_be_created")
    assert verdict(plain, "test_lead_can_be_created") == "inconclusive"
    try:
        with box.chaos(error_rate=1.0, paths=[box.profile.leads_path]):
            broken = validate(box, tmp_path, "lead_can_be_created", "--allow-writes")
        failed(broken, "test_lead_can_be_created", "answered 500, expected 201")
        # twice: a second run must not trip over the lead the first one left (the real
        # platform answers 409 DUPLICATE_LEAD to a phone the tenant already has)
        for _ in range(2):
            working = validate(box, tmp_path, "lead_can_be_created", "--allow-writes")
            assert verdict(working, "test_lead_can_be_created") == "pass", \
                working.check("test_lead_can_be_created").message
    finally:
        box.sql("DELETE FROM leads WHERE full_name LIKE %s", ("rollback-validation-%",))


# --- database --------------------------------------------------------------------------------


def test_unreachable_database_fails_connect_check(any_sandbox: Sandbox, tmp_path: Path) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{closed_port()}/platform"
    result = validate(any_sandbox, tmp_path, "connects", DATABASE_URL=url)
    failed(result, "test_database_connects_within_limit", "cannot connect to the database")


def test_slow_connect_fails_connect_check(any_sandbox: Sandbox, tmp_path: Path) -> None:
    config = tmp_path / "rollback.toml"
    config.write_text(any_sandbox.config_file.read_text() + "\n[thresholds]\ndb_connect_ms = 0.01\n")
    result = validate(any_sandbox, tmp_path, "connects", ROLLBACK_CONFIG=str(config))
    failed(result, "test_database_connects_within_limit", "> limit 0.01 ms")


def test_missing_table_fails_readable_check(any_sandbox: Sandbox, tmp_path: Path) -> None:
    logs = any_sandbox.profile.tables.usage_logs
    with altered(any_sandbox, f"ALTER TABLE {logs} RENAME TO {logs}_gone",
                 f"ALTER TABLE {logs}_gone RENAME TO {logs}"):
        result = validate(any_sandbox, tmp_path, "readable")
    failed(result, "test_critical_table_is_readable[usage_logs]", f"{logs} cannot be read",
           "UndefinedTable")
    assert verdict(result, "test_critical_table_is_readable[leads]") == "pass"


#: a copy of a row of the test tenant whose parent is gone (FK checks are off in `altered`)
ORPHANS = {
    "api_keys": clone("api_keys", "r.tenant_id = %(tenant)s AND r.branch_id IS NULL",
                      id="%(id)s::text", tenant_id="gen_random_uuid()", name="'orphan'",
                      key_hash="md5(%(id)s::text) || md5(%(id)s::text)"),
    "branches": clone("branches", "r.tenant_id = %(tenant)s", id="%(id)s::text",
                      tenant_id="gen_random_uuid()", slug="'orphan'"),
    "leads": clone("leads", "r.tenant_id = %(tenant)s", id="%(id)s::text",
                   branch_id="gen_random_uuid()"),
    "appointments": clone("appointments", "r.tenant_id = %(tenant)s", id="%(id)s::text",
                          lead_id="gen_random_uuid()"),
}


@pytest.mark.parametrize("table", list(ORPHANS))
def test_orphaned_row_fails_orphan_check(any_sandbox: Sandbox, tmp_path: Path, table: str) -> None:
    row_id = str(uuid.uuid4())
    with altered(any_sandbox, ORPHANS[table], f"DELETE FROM {table} WHERE id = %(id)s",
                 {"id": row_id, "tenant": any_sandbox.tenant_id}):
        result = validate(any_sandbox, tmp_path, "orphaned")
    failed(result, f"test_no_orphaned_rows[{table}]", f"1 {table} rows point at a missing parent",
           row_id)
    others = [t for t in ORPHANS if t != table]
    assert all(verdict(result, f"test_no_orphaned_rows[{t}]") == "pass" for t in others)


@pytest.mark.parametrize("table", ["leads", "appointments"])
def test_row_on_foreign_branch_fails_cross_tenant_check(any_sandbox: Sandbox, tmp_path: Path,
                                                        table: str) -> None:
    row_id, branch = any_sandbox.sql(f"SELECT id, branch_id FROM {table} WHERE tenant_id = %s "
                                     "AND branch_id IS NOT NULL ORDER BY id LIMIT 1",
                                     (any_sandbox.tenant_id,))[0]
    with altered(any_sandbox, f"UPDATE {table} SET branch_id = %(to)s WHERE id = %(id)s",
                 f"UPDATE {table} SET branch_id = %(back)s WHERE id = %(id)s",
                 {"id": row_id, "to": other_tenant_branch(any_sandbox), "back": branch}):
        result = validate(any_sandbox, tmp_path, "another_tenants_branch")
    failed(result, f"test_no_row_points_at_another_tenants_branch[{table}]",
           f"1 {table} rows point at a branch of another tenant", str(row_id))


def test_branch_key_of_foreign_branch_fails_scope_check(any_sandbox: Sandbox,
                                                        tmp_path: Path) -> None:
    digest = sha(any_sandbox.keys["branch"])
    branch = any_sandbox.sql("SELECT branch_id FROM api_keys WHERE key_hash = %s", (digest,))[0][0]
    with altered(any_sandbox, "UPDATE api_keys SET branch_id = %(to)s WHERE key_hash = %(h)s",
                 "UPDATE api_keys SET branch_id = %(back)s WHERE key_hash = %(h)s",
                 {"h": digest, "to": other_tenant_branch(any_sandbox), "back": branch}):
        result = validate(any_sandbox, tmp_path, "scope_columns")
    failed(result, "test_api_key_scope_columns_are_consistent", "1 api_keys have inconsistent "
           "scope columns", "branch of another tenant")


def test_duplicate_key_hash_fails_duplicate_check(any_sandbox: Sandbox, tmp_path: Path) -> None:
    copy = str(uuid.uuid4())
    with altered(
        any_sandbox,
        "ALTER TABLE api_keys DROP CONSTRAINT api_keys_key_hash_key; "
        + clone("api_keys", "r.tenant_id <> %(tenant)s", id="%(copy)s::text",
                name="'copy ' || %(copy)s::text"),
        "DELETE FROM api_keys WHERE id = %(copy)s; "
        "ALTER TABLE api_keys ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)",
        {"copy": copy, "tenant": any_sandbox.tenant_id},
    ):
        result = validate(any_sandbox, tmp_path, "duplicate")
    failed(result, "test_no_duplicate_key_hash", "1 key_hash values are shared", copy)


def test_active_revoked_key_fails_revoked_consistency_check(any_sandbox: Sandbox,
                                                            tmp_path: Path) -> None:
    digest = sha(any_sandbox.keys["revoked"])
    with altered(any_sandbox, "UPDATE api_keys SET is_active = true WHERE key_hash = %(h)s",
                 "UPDATE api_keys SET is_active = false WHERE key_hash = %(h)s", {"h": digest}):
        result = validate(any_sandbox, tmp_path, "active_key_is_revoked")
    failed(result, "test_no_active_key_is_revoked", "1 keys are active but have revoked_at set")


# --- real traffic ----------------------------------------------------------------------------

# api_key_id is NOT NULL on the real platform: the traffic is the test key's
_TRAFFIC = (
    "INSERT INTO api_key_usage_logs (api_key_id, tenant_id, endpoint, method, request_path, "
    "status_code, response_time_ms, user_agent) "
    "SELECT (SELECT id FROM api_keys WHERE key_hash = %(key)s), %(tenant)s, %(path)s::text, 'GET', "
    "%(path)s::text, CASE WHEN n <= %(errors)s THEN 500 ELSE 200 END, %(ms)s, 'traffic-test' "
    "FROM generate_series(1, 40) AS n"
)
_NO_TRAFFIC = "DELETE FROM api_key_usage_logs WHERE user_agent = 'traffic-test'"


def _traffic(box: Sandbox, errors: int, ms: int) -> dict[str, object]:
    return {"key": sha(box.keys["tenant"]), "tenant": box.tenant_id,
            "path": box.profile.leads_path, "errors": errors, "ms": ms}


def test_real_traffic_errors_and_slowness_fail_traffic_checks(any_sandbox: Sandbox,
                                                              tmp_path: Path) -> None:
    with altered(any_sandbox, _TRAFFIC, _NO_TRAFFIC, _traffic(any_sandbox, 8, 1500)):
        result = validate(any_sandbox, tmp_path, "real_traffic", "--traffic-window", "0.5")
    failed(result, "test_real_traffic_error_rate_is_below_limit",
           "real traffic error rate 20.0% >= limit 5.0% (8 of 40 requests answered 5xx")
    failed(result, "test_real_traffic_p95_is_within_limits",
           "real traffic p95 1500 ms over 40 requests", "> alert 1000 ms")


def test_healthy_real_traffic_passes_and_none_is_inconclusive(any_sandbox: Sandbox,
                                                              tmp_path: Path) -> None:
    # Short windows: traffic other tests caused on this sandbox must not count here.
    quiet = validate(any_sandbox, tmp_path, "real_traffic", "--gate", "--traffic-window", "0.05")
    assert quiet.exit_code == 0  # inconclusive does not fail the gate
    assert "inconclusive: no traffic in the last 0.05 min" in quiet.check(
        "test_real_traffic_error_rate_is_below_limit").message
    with altered(any_sandbox, _TRAFFIC, _NO_TRAFFIC, _traffic(any_sandbox, 0, 40)):
        busy = validate(any_sandbox, tmp_path, "real_traffic", "--traffic-window", "0.5")
    assert {c.verdict for c in busy.checks} == {"pass"}
    assert len(busy.checks) == 2
