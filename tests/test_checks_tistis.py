"""What the checks must handle only on the real platform's shape (`sandbox up --shape tistis`):
the /health redirect and its "degraded" word, versions known only to Vercel, the realm of
every 401, row level security, a cache that sets no header, checks that saw nothing.

The shared checks' behaviour on both shapes is in test_checks_breakage, _contract, _phases and
_suite; this file holds what has no counterpart on the API reference's shape.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from rollback.runs import gitops
from rollback.validate import ValidationResult, run_validation
from tests.conftest import Sandbox, SandboxFactory, run_cli
from tests.validations import deploy_patched, failed, leads_arriving, roll_back_code

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_tistis(sandbox_factory: SandboxFactory) -> Iterator[Sandbox]:
    """A tistis sandbox of this test's own, started for it and destroyed afterwards."""
    box = sandbox_factory.make(shape="tistis")
    yield box
    sandbox_factory.destroy(box)


def validate(box: Sandbox, tmp_path: Path, selection: str, *args: str, gate: bool = False,
             **env: str) -> ValidationResult:
    return run_validation(selection, reports_root=tmp_path, env=box.env(**env),  # type: ignore[arg-type]
                          gate=gate, extra_args=list(args))


def verdicts(result: ValidationResult) -> dict[str, str]:
    return {c.nodeid.split("::")[1]: c.verdict for c in result.checks}


# --- the platform as it is -------------------------------------------------------------------


def test_health_redirects_and_row_level_security_is_on(tistis_sandbox: Sandbox) -> None:
    # curl -si $API_BASE_URL/health
    moved = httpx.get(f"{tistis_sandbox.api_base_url}/health", follow_redirects=False, timeout=10)
    assert (moved.status_code, moved.headers.get("location")) == (308, "/api/health")
    body = httpx.get(f"{tistis_sandbox.api_base_url}/health", follow_redirects=True, timeout=10).json()
    assert body["status"] == "healthy" and body["version"] == "4.6.0" and "database" not in body
    # psql: SELECT relrowsecurity FROM pg_class WHERE relname = 'api_keys'
    tables = tistis_sandbox.profile.tables.all()
    rows = tistis_sandbox.sql("SELECT relname, relrowsecurity FROM pg_class WHERE relkind = 'r' "
                              "AND relnamespace = 'public'::regnamespace AND relname = ANY(%s)",
                              (list(tables),))
    assert dict(rows) == dict.fromkeys(tables, True)


def test_fresh_sandbox_passes_the_health_gate(fresh_tistis: Sandbox, tmp_path: Path) -> None:
    production = gitops.out(fresh_tistis.repo, "rev-parse", "HEAD")  # what `up` deployed
    result = validate(fresh_tistis, tmp_path, "health", "--expected-version", production,
                      gate=True)
    bad = {c.nodeid: c.message for c in result.checks if c.verdict in ("fail", "skip")}
    assert result.exit_code == 0 and not bad, bad or result.log.read_text()[-3000:]
    # 28 general checks, the version (from `vercel inspect`), 6 about the one list endpoint
    assert result.passed == 35
    # `vercel inspect` was started before the first check, and read by the last one
    assert result.checks[-1].nodeid.endswith("::test_deployed_version_is_expected")
    assert "before the first check" in result.html.read_text()
    # What a fresh sandbox cannot judge, and the gate accepts: no real traffic in the window
    # (the seed's ends 30 minutes ago and the toolkit's own requests do not count), and the
    # write check without --allow-writes.
    assert {name for name, verdict in verdicts(result).items() if verdict == "inconclusive"} == {
        "test_real_traffic_error_rate_is_below_limit", "test_real_traffic_p95_is_within_limits",
        "test_lead_can_be_created",
    }


def test_slow_database_makes_health_degraded_a_warning(tistis_sandbox: Sandbox,
                                                      tmp_path: Path) -> None:
    # /api/health calls itself "degraded" (still 200) when the database answers in over 1 s
    with tistis_sandbox.chaos(latency_ms=1200, paths=["/api/health"]):
        result = validate(tistis_sandbox, tmp_path, "health", "-k", "health_reports")
    outcome = result.check("test_health_reports_healthy")
    assert outcome.verdict == "warn" and result.exit_code == 0, outcome
    assert "/health -> /api/health reports status='degraded'" in outcome.warnings[0]


def test_version_needs_vercel_on_path(tistis_sandbox: Sandbox, tmp_path: Path) -> None:
    head = gitops.out(tistis_sandbox.repo, "rev-parse", "HEAD")
    plain_path = str(Path(tistis_sandbox.env()["PATH"].split(":", 1)[1]))  # without the stand-in
    result = validate(tistis_sandbox, tmp_path, "health", "-k", "version",
                      "--expected-version", head, PATH=plain_path)
    failed(result, "test_deployed_version_is_expected", "the deployed version cannot be read",
           "vercel inspect 127.0.0.1:", "command not found (is it on PATH?)")


def test_missing_realm_and_moved_health_fail_their_checks(fresh_tistis: Sandbox,
                                                         tmp_path: Path) -> None:
    deploy_patched(fresh_tistis, [
        ("app/auth.py", '{"WWW-Authenticate": TISTIS_REALM} if status == 401 else None', "None"),
        ("app/tistis.py", 'Route("/health", redirect_to_health,', 'Route("/healthz", redirect_to_health,'),
    ])
    result = validate(fresh_tistis, tmp_path, "health", "-k", "auth or reachable")
    for check, what in (("test_missing_key_is_rejected", "a request without a key"),
                        ("test_malformed_key_is_rejected[not-bearer]", "a malformed key (not-bearer)"),
                        ("test_malformed_key_is_rejected[bad-key-format]",
                         "a malformed key (bad-key-format)"),
                        ("test_unknown_key_is_rejected", "an unknown key"),
                        ("test_revoked_key_is_rejected", "a revoked key"),
                        ("test_expired_key_is_rejected", "an expired key")):
        failed(result, check, f"refused {what} with 401 but WWW-Authenticate is None",
               "expected it to start with 'Bearer realm='")
    assert result.check("test_valid_key_is_accepted").verdict == "pass"
    failed(result, "test_api_is_reachable", "GET /health answered 404",
           "the health endpoint is not where the profile says")


# --- row level security ----------------------------------------------------------------------


@contextlib.contextmanager
def reader(box: Sandbox, bypass: bool) -> Iterator[tuple[str, str]]:
    """A login role that may SELECT every table of the public schema, neither superuser nor
    (unless `bypass`) BYPASSRLS: (its name, a DATABASE_URL connecting as it)."""
    role, password = f"reader_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    box.sql(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER {}").format(
        sql.Identifier(role), sql.Literal(password),
        sql.SQL("BYPASSRLS" if bypass else "NOBYPASSRLS")).as_string(None))
    try:
        box.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        where = urlsplit(box.database_url)
        yield role, urlunsplit(where._replace(
            netloc=f"{role}:{password}@{where.hostname}:{where.port}"))
    finally:
        box.sql(f"DROP OWNED BY {role}")  # its grants in this database; roles are cluster-wide
        box.sql(f"DROP ROLE {role}")


def test_role_that_rls_blinds_is_refused_before_any_check(tistis_sandbox: Sandbox,
                                                          tmp_path: Path) -> None:
    with reader(tistis_sandbox, bypass=False) as (role, url):
        with psycopg.connect(url) as conn:  # what it would have judged: nothing, silently
            seen = conn.execute("SELECT count(*) FROM api_keys").fetchone()
        assert seen == (0,)
        done = run_cli("validate", "all", "--reports", str(tmp_path),
                       env=tistis_sandbox.env(DATABASE_URL=url))
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    naming = [line for line in output.splitlines() if role in line]
    assert len(naming) == 1, output
    assert naming[0].startswith("ERROR: DATABASE_URL connects as role")
    assert "neither superuser nor BYPASSRLS" in naming[0]
    assert "Connect as the service role (service_role) or a reader with BYPASSRLS" in naming[0]
    # no check ran, so none passed: pytest stopped before collecting, and left no JUnit file
    assert not re.search(r"\b[1-9]\d* passed", output) and "PASSED" not in output, output
    assert not list(tmp_path.rglob("junit.xml")), output


def test_role_with_bypassrls_is_accepted(tistis_sandbox: Sandbox, tmp_path: Path) -> None:
    with reader(tistis_sandbox, bypass=True) as (_, url):
        result = validate(tistis_sandbox, tmp_path, "health", "-k", "test_database", gate=True,
                          DATABASE_URL=url)
    assert result.exit_code == 0, result.log.read_text()[-3000:]
    assert result.passed == 16 and result.failed == 0


# --- saw nothing -----------------------------------------------------------------------------

_SAW_NOTHING = {
    # an empty table: every integrity check over it would find no violation
    "test_no_orphaned_rows[appointments]": "saw nothing: appointments holds no rows",
    "test_no_row_points_at_another_tenants_branch[appointments]":
        "saw nothing: appointments holds no rows",
    # a test tenant with no leads: nothing listed to look at, zero agreeing with zero
    "test_list_answers_with_contract_shape[leads]": "saw nothing: /api/v1/leads listed no record",
    "test_api_total_matches_database[leads]": "saw nothing: the test key's tenant has no leads",
    "test_records_belong_to_the_keys_tenant[leads]": "saw nothing: GET /api/v1/leads returned "
                                                     "no records",
}


def test_check_that_saw_nothing_is_inconclusive_and_fails_the_gate(fresh_tistis: Sandbox,
                                                                   tmp_path: Path) -> None:
    # Nothing the API needs: it serves no appointments, and the tenant keeps its keys.
    fresh_tistis.sql("DELETE FROM appointments")
    fresh_tistis.sql("DELETE FROM leads WHERE tenant_id = %s", (fresh_tistis.tenant_id,))
    k = ("valid_key or orphaned or another_tenants_branch or contract_shape or matches_database "
         "or belong_to")
    relaxed = validate(fresh_tistis, tmp_path, "health", "-k", k)
    assert relaxed.exit_code == 0, relaxed.log.read_text()[-3000:]
    for check, reason in _SAW_NOTHING.items():
        outcome = relaxed.check(check)
        assert outcome.verdict == "inconclusive" and reason in outcome.message, (check, outcome)
    others = {name: v for name, v in verdicts(relaxed).items() if name not in _SAW_NOTHING}
    assert others and set(others.values()) == {"pass"}, others  # the API works; leads elsewhere
    gated = validate(fresh_tistis, tmp_path, "health", "-k", k, gate=True)
    assert gated.exit_code == 1
    for check, reason in _SAW_NOTHING.items():
        failed(gated, check, "--gate: inconclusive, " + reason)


# --- FASE 3's cache, which sets no header ----------------------------------------------------


def test_staleness_check_sees_the_live_cache_and_passes_after_rollback(fresh_tistis: Sandbox,
                                                                       tmp_path: Path) -> None:
    staleness = "test_answers_are_not_staler_than_the_database[leads]"
    quiet = validate(fresh_tistis, tmp_path, "fase3", "-k", "staler", gate=True)
    assert verdicts(quiet) == {staleness: "inconclusive"}  # no data change: nothing to see
    assert "no leads of the test tenant changed in 5 s" in quiet.check(staleness).message
    with leads_arriving(fresh_tistis):
        live = validate(fresh_tistis, tmp_path, "fase3", "-k", "staler", gate=True)
    failed(live, staleness, "GET /api/v1/leads answers total",
           "while the same request made unique answers", "a response cache is still serving",
           "the rollback's deploy did not take, or the revert missed the cache")
    roll_back_code(fresh_tistis, "fase3")
    with leads_arriving(fresh_tistis):
        gone = validate(fresh_tistis, tmp_path, "fase3", "-k", "staler or listed_at_once",
                        "--allow-writes", gate=True)
    assert gone.exit_code == 0, gone.log.read_text()[-3000:]
    assert verdicts(gone) == {staleness: "pass", "test_created_lead_is_listed_at_once": "pass"}


def test_write_probe_fails_while_the_cache_is_live(tistis_sandbox: Sandbox, tmp_path: Path) -> None:
    try:
        result = validate(tistis_sandbox, tmp_path, "fase3", "-k", "listed_at_once",
                          "--allow-writes")
    finally:
        tistis_sandbox.sql("DELETE FROM leads WHERE full_name LIKE %s", ("rollback-cache-probe-%",))
    failed(result, "test_created_lead_is_listed_at_once", "a response cache is still serving")
