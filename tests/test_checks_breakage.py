"""Each general check fails when the sandbox is broken the way that check guards against, and
its message names the cause. Tests put back what they break (or use `fresh_sandbox`).

Every run goes through `rollback.validate.run_validation`, narrowed with `-k` to the checks at
stake so that each case costs about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rollback.validate import ValidationResult, run_validation

pytestmark = pytest.mark.slow


def validate(sandbox, tmp_path: Path, k: str, *args: str, selection: str = "health",
             **env: str) -> ValidationResult:
    return run_validation(selection, reports_root=tmp_path, env=sandbox.env(**env),  # type: ignore[arg-type]
                          extra_args=["-k", k, *args])


def failed(result: ValidationResult, check: str, *fragments: str) -> None:
    """`check` failed and its message holds every fragment."""
    __tracebackhide__ = True
    outcome = result.check(check)
    assert outcome.verdict == "fail", f"{check} is {outcome.verdict}; log:\n{result.log.read_text()[-3000:]}"
    for fragment in fragments:
        assert fragment in outcome.message, f"{fragment!r} not in {outcome.message!r}"


@contextlib.contextmanager
def altered(sandbox, change: str, restore: str, params: object = None) -> Iterator[None]:
    """Run `change` as the superuser (triggers and FK checks off), and `restore` afterwards.

    Each is one or more statements separated by "; "."""
    def run(statements: str) -> None:
        with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            for statement in statements.split("; "):
                conn.execute(statement, params if "%(" in statement else None)  # type: ignore[arg-type]

    run(change)
    try:
        yield
    finally:
        run(restore)


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def other_tenant_branch(sandbox) -> str:
    return str(sandbox.sql("SELECT id FROM branches WHERE tenant_id <> %s ORDER BY id LIMIT 1",
                           (sandbox.tenant_id,))[0][0])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- API -------------------------------------------------------------------------------------


def test_unreachable_api_fails_reachability(sandbox, tmp_path: Path) -> None:
    result = validate(sandbox, tmp_path, "reachable",
                      API_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    failed(result, "test_api_is_reachable", "cannot reach the API", "ConnectError")


def test_database_error_in_health_fails_health_check(sandbox, tmp_path: Path) -> None:
    with sandbox.chaos(health="db_error"):
        result = validate(sandbox, tmp_path, "health_reports")
    failed(result, "test_health_reports_healthy", "answered 503",
           "database='error'", "cannot reach its database")


def test_other_version_fails_version_check(sandbox, tmp_path: Path) -> None:
    wrong = validate(sandbox, tmp_path, "version", "--expected-version", "0000000deadbeef")
    failed(wrong, "test_deployed_version_is_expected", "expected '0000000deadbeef'",
           "deploy is not live")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=sandbox.repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    right = validate(sandbox, tmp_path, "version", "--expected-version", head)
    assert right.check("test_deployed_version_is_expected").verdict == "pass"


def test_slow_endpoint_fails_its_latency_check_only(sandbox, tmp_path: Path) -> None:
    with sandbox.chaos(latency_ms=400, paths=["/v1/leads"]):
        result = validate(sandbox, tmp_path, "latency", "--warn-ms", "100", "--alert-ms", "300",
                          "--sample-size", "8")
    failed(result, "test_p95_latency_is_within_limits[leads]",
           "> alert 300 ms over 8 requests to /v1/leads")
    assert result.check("test_p95_latency_is_within_limits[branches]").verdict == "pass"


def test_server_errors_fail_synthetic_error_rate(sandbox, tmp_path: Path) -> None:
    with sandbox.chaos(error_rate=0.5, paths=["/v1/appointments"]):
        result = validate(sandbox, tmp_path, "synthetic")
    failed(result, "test_synthetic_error_rate_is_below_limit", ">= limit 5.0%", "500",
           "/v1/appointments")


# --- authentication --------------------------------------------------------------------------


def test_refused_validation_key_fails_valid_key_check(sandbox, tmp_path: Path) -> None:
    result = validate(sandbox, tmp_path, "valid_key", TEST_API_KEY="tis_live_" + "x" * 32)
    failed(result, "test_valid_key_is_accepted", "answered 401, expected 200", "locked out")


def test_revoked_key_that_works_fails_revoked_check(sandbox, tmp_path: Path) -> None:
    digest = sha(sandbox.keys["revoked"])
    before = sandbox.sql("SELECT is_active, revoked_at FROM api_keys WHERE key_hash = %s",
                         (digest,))[0]
    with altered(sandbox, "UPDATE api_keys SET is_active = true, revoked_at = NULL "
                 "WHERE key_hash = %(h)s",
                 "UPDATE api_keys SET is_active = %(a)s, revoked_at = %(r)s WHERE key_hash = %(h)s",
                 {"h": digest, "a": before[0], "r": before[1]}):
        result = validate(sandbox, tmp_path, "revoked")
    failed(result, "test_revoked_key_is_rejected", "answered 200, expected 401")


def test_write_check_runs_only_with_allow_writes(sandbox, tmp_path: Path) -> None:
    plain = validate(sandbox, tmp_path, "lead_can_be_created")
    assert plain.check("test_lead_can_be_created").verdict == "inconclusive"
    with sandbox.chaos(error_rate=1.0, paths=["/v1/leads"]):
        broken = validate(sandbox, tmp_path, "lead_can_be_created", "--allow-writes")
    failed(broken, "test_lead_can_be_created", "answered 500, expected 201")
    working = validate(sandbox, tmp_path, "lead_can_be_created", "--allow-writes")
    assert working.check("test_lead_can_be_created").verdict == "pass"
    sandbox.sql("DELETE FROM leads WHERE source = 'rollback-validation'")


# --- database --------------------------------------------------------------------------------


def test_unreachable_database_fails_connect_check(sandbox, tmp_path: Path) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{closed_port()}/platform"
    result = validate(sandbox, tmp_path, "connects", DATABASE_URL=url)
    failed(result, "test_database_connects_within_limit", "cannot connect to the database")


def test_slow_connect_fails_connect_check(sandbox, tmp_path: Path) -> None:
    config = tmp_path / "rollback.toml"
    config.write_text(sandbox.config_file.read_text() + "\n[thresholds]\ndb_connect_ms = 0.01\n")
    result = validate(sandbox, tmp_path, "connects", ROLLBACK_CONFIG=str(config))
    failed(result, "test_database_connects_within_limit", "> limit 0.01 ms")


def test_missing_table_fails_readable_check(sandbox, tmp_path: Path) -> None:
    with altered(sandbox, "ALTER TABLE api_key_usage_logs RENAME TO api_key_usage_logs_gone",
                 "ALTER TABLE api_key_usage_logs_gone RENAME TO api_key_usage_logs"):
        result = validate(sandbox, tmp_path, "readable")
    failed(result, "test_critical_table_is_readable[usage_logs]",
           "api_key_usage_logs cannot be read", "UndefinedTable")
    assert result.check("test_critical_table_is_readable[leads]").verdict == "pass"


ORPHANS = {
    "api_keys": "INSERT INTO api_keys (id, tenant_id, name, key_hash, key_hint, key_prefix) "
                "VALUES (%(id)s::uuid, gen_random_uuid(), 'orphan', md5(%(id)s::text) || "
                "md5(%(id)s::text), 'abcd', 'tis_live_')",
    "branches": "INSERT INTO branches (id, tenant_id, name, slug) "
                "VALUES (%(id)s, gen_random_uuid(), 'orphan', 'orphan')",
    "leads": "INSERT INTO leads (id, tenant_id, branch_id, phone) "
             "VALUES (%(id)s, %(tenant)s, gen_random_uuid(), '+5200')",
    "appointments": "INSERT INTO appointments (id, tenant_id, lead_id, scheduled_at) "
                    "VALUES (%(id)s, %(tenant)s, gen_random_uuid(), now())",
}


@pytest.mark.parametrize("table", list(ORPHANS))
def test_orphaned_row_fails_orphan_check(sandbox, tmp_path: Path, table: str) -> None:
    row_id = str(uuid.uuid4())
    with altered(sandbox, ORPHANS[table], f"DELETE FROM {table} WHERE id = %(id)s",
                 {"id": row_id, "tenant": sandbox.tenant_id}):
        result = validate(sandbox, tmp_path, "orphaned")
    failed(result, f"test_no_orphaned_rows[{table}]", f"1 {table} rows point at a missing parent",
           row_id)
    others = [t for t in ORPHANS if t != table]
    assert all(result.check(f"test_no_orphaned_rows[{t}]").verdict == "pass" for t in others)


@pytest.mark.parametrize("table", ["leads", "appointments"])
def test_row_on_foreign_branch_fails_cross_tenant_check(sandbox, tmp_path: Path,
                                                        table: str) -> None:
    row_id, branch = sandbox.sql(f"SELECT id, branch_id FROM {table} WHERE tenant_id = %s "
                                 "ORDER BY id LIMIT 1", (sandbox.tenant_id,))[0]
    with altered(sandbox, f"UPDATE {table} SET branch_id = %(to)s WHERE id = %(id)s",
                 f"UPDATE {table} SET branch_id = %(back)s WHERE id = %(id)s",
                 {"id": row_id, "to": other_tenant_branch(sandbox), "back": branch}):
        result = validate(sandbox, tmp_path, "another_tenants_branch")
    failed(result, f"test_no_row_points_at_another_tenants_branch[{table}]",
           f"1 {table} rows point at a branch of another tenant", str(row_id))


def test_branch_key_of_foreign_branch_fails_scope_check(sandbox, tmp_path: Path) -> None:
    digest = sha(sandbox.keys["branch"])
    branch = sandbox.sql("SELECT branch_id FROM api_keys WHERE key_hash = %s", (digest,))[0][0]
    with altered(sandbox, "UPDATE api_keys SET branch_id = %(to)s WHERE key_hash = %(h)s",
                 "UPDATE api_keys SET branch_id = %(back)s WHERE key_hash = %(h)s",
                 {"h": digest, "to": other_tenant_branch(sandbox), "back": branch}):
        result = validate(sandbox, tmp_path, "scope_columns")
    failed(result, "test_api_key_scope_columns_are_consistent", "1 api_keys have inconsistent "
           "scope columns", "branch of another tenant")


def test_duplicate_key_hash_fails_duplicate_check(sandbox, tmp_path: Path) -> None:
    copy = str(uuid.uuid4())
    with altered(
        sandbox,
        "ALTER TABLE api_keys DROP CONSTRAINT api_keys_key_hash_key; "
        "INSERT INTO api_keys (id, tenant_id, name, key_hash, key_hint, key_prefix) "
        "SELECT %(copy)s, tenant_id, 'copy', key_hash, key_hint, key_prefix FROM api_keys "
        "WHERE tenant_id <> %(tenant)s ORDER BY id LIMIT 1",
        "DELETE FROM api_keys WHERE id = %(copy)s; "
        "ALTER TABLE api_keys ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)",
        {"copy": copy, "tenant": sandbox.tenant_id},
    ):
        result = validate(sandbox, tmp_path, "duplicate")
    failed(result, "test_no_duplicate_key_hash", "1 key_hash values are shared", copy)


def test_active_revoked_key_fails_revoked_consistency_check(sandbox, tmp_path: Path) -> None:
    digest = sha(sandbox.keys["revoked"])
    with altered(sandbox, "UPDATE api_keys SET is_active = true WHERE key_hash = %(h)s",
                 "UPDATE api_keys SET is_active = false WHERE key_hash = %(h)s", {"h": digest}):
        result = validate(sandbox, tmp_path, "active_key_is_revoked")
    failed(result, "test_no_active_key_is_revoked", "1 keys are active but have revoked_at set")


# --- real traffic ----------------------------------------------------------------------------

_TRAFFIC = (
    "INSERT INTO api_key_usage_logs (tenant_id, endpoint, method, request_path, status_code, "
    "response_time_ms, user_agent) SELECT %(tenant)s, '/v1/leads', 'GET', '/v1/leads', "
    "CASE WHEN n <= %(errors)s THEN 500 ELSE 200 END, %(ms)s, 'traffic-test' "
    "FROM generate_series(1, 40) AS n"
)


def test_real_traffic_errors_and_slowness_fail_traffic_checks(sandbox, tmp_path: Path) -> None:
    with altered(sandbox, _TRAFFIC, "DELETE FROM api_key_usage_logs WHERE user_agent = 'traffic-test'",
                 {"tenant": sandbox.tenant_id, "errors": 8, "ms": 1500}):
        result = validate(sandbox, tmp_path, "real_traffic", "--traffic-window", "0.5")
    failed(result, "test_real_traffic_error_rate_is_below_limit",
           "real traffic error rate 20.0% >= limit 5.0% (8 of 40 requests answered 5xx")
    failed(result, "test_real_traffic_p95_is_within_limits",
           "real traffic p95 1500 ms over 40 requests", "> alert 1000 ms")


def test_healthy_real_traffic_passes_and_none_is_inconclusive(sandbox, tmp_path: Path) -> None:
    # Short windows: traffic other tests caused on this sandbox must not count here.
    quiet = validate(sandbox, tmp_path, "real_traffic", "--gate", "--traffic-window", "0.05")
    assert quiet.exit_code == 0  # inconclusive does not fail the gate
    assert "inconclusive: no traffic in the last 0.05 min" in quiet.check(
        "test_real_traffic_error_rate_is_below_limit").message
    with altered(sandbox, _TRAFFIC, "DELETE FROM api_key_usage_logs WHERE user_agent = 'traffic-test'",
                 {"tenant": sandbox.tenant_id, "errors": 0, "ms": 40}):
        busy = validate(sandbox, tmp_path, "real_traffic", "--traffic-window", "0.5")
    assert {c.verdict for c in busy.checks} == {"pass"}
