"""`rollback sandbox ...` as a user types it: the embedded database, the env lines, deploy, down."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from sandbox import control, seed
from tests.conftest import ROOT, Sandbox, SandboxFactory, run_cli


def _exports(stdout: str) -> dict[str, str]:
    values = {}
    for line in stdout.splitlines():
        name, value = line.removeprefix("export ").split("=", 1)
        values[name] = shlex.split(value)[0]
    return values


def _processes_under(folder: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(folder) in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_embedded_sandbox_from_up_to_down_leaves_no_process(tmp_path: Path) -> None:
    folder = tmp_path / "sbx"
    up = run_cli("sandbox", "up", "--shape", "contract", "--dir", str(folder), "--tenants", "8")
    try:
        assert up.returncode == 0, up.stderr
        assert "sandbox up at http://127.0.0.1:" in up.stdout

        again = run_cli("sandbox", "up", "--dir", str(folder))
        assert again.returncode == 0 and "already running" in again.stdout

        env = _exports(run_cli("sandbox", "env", "--dir", str(folder)).stdout)
        assert set(env) == {"API_BASE_URL", "TEST_API_KEY", "TEST_BRANCH_API_KEY",
                            "TEST_REVOKED_API_KEY", "TEST_EXPIRED_API_KEY", "DATABASE_URL",
                            "ROLLBACK_CONFIG"}
        listed = httpx.get(f"{env['API_BASE_URL']}/v1/leads",
                           headers={"Authorization": f"Bearer {env['TEST_API_KEY']}"})
        assert listed.status_code == 200
        assert set(listed.json()) == {"data", "total", "page", "pageSize", "filters"}
        anonymous = httpx.get(f"{env['API_BASE_URL']}/v1/leads")
        assert anonymous.status_code == 401
        assert set(anonymous.json()) == {"error", "code"} and anonymous.json()["code"] == "UNAUTHORIZED"

        state = control.require(folder)
        assert (folder / "sandbox.json").stat().st_mode & 0o077 == 0, "state holds secrets: owner only"
        assert state.embedded and _processes_under(folder)
    finally:
        down = run_cli("sandbox", "down", "--dir", str(folder))
    assert down.returncode == 0, down.stderr
    leftover = _processes_under(folder)
    assert not leftover, f"processes left after down: {[(p.pid, p.cmdline()) for p in leftover]}"


def test_env_points_pytest_and_commands_at_the_sandbox(sandbox: Sandbox) -> None:
    env = sandbox.env()
    assert env["API_BASE_URL"] == sandbox.api_base_url
    assert env["ROLLBACK_CONFIG"] == str(sandbox.config_file)
    config = sandbox.config_file.read_text()
    assert str(sandbox.repo) in config and "sandbox deploy" in config
    assert sandbox.keys["tenant"] not in config, "secrets never go into the config file"


def test_up_refuses_a_database_that_holds_tables(sandbox: Sandbox, tmp_path: Path) -> None:
    result = run_cli("sandbox", "up", "--dir", str(tmp_path / "other"),
                     "--database-url", sandbox.database_url)
    assert result.returncode == 2
    assert "already holds tables" in result.stderr and "--reset" in result.stderr
    assert "Traceback" not in result.stderr
    assert sandbox.sql("SELECT count(*) FROM tenants")[0][0] > 0, "nothing was dropped"


def test_up_never_reads_production_database_url(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    # With DATABASE_URL pointing somewhere unreachable, `up` still uses its own embedded database.
    env = {**os.environ, "DATABASE_URL": "postgresql://prod:secret@203.0.113.1:1/prod"}
    folder = tmp_path / "sbx"
    try:
        result = run_cli("sandbox", "up", "--dir", str(folder), "--tenants", "2", env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "203.0.113.1" not in control.require(folder).database_url
    finally:
        run_cli("sandbox", "down", "--dir", str(folder))


def test_deploy_serves_the_checkout_and_reports_its_version(sandbox: Sandbox) -> None:
    head = subprocess.run(["git", "-C", str(sandbox.repo), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    result = run_cli("sandbox", "deploy", "--dir", str(sandbox.dir))
    assert result.returncode == 0, result.stderr
    assert httpx.get(f"{sandbox.api_base_url}/health").json()["version"] == head


def test_status_names_the_phases_in_the_checkout(sandbox: Sandbox) -> None:
    result = run_cli("sandbox", "status", "--dir", str(sandbox.dir))
    assert result.returncode == 0, result.stderr
    assert "['fase1', 'fase2', 'fase3']" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["sandbox", "env", "--dir", "/nonexistent/sbx"], "no sandbox in /nonexistent/sbx"),
    (["sandbox", "deploy", "--dir", "/nonexistent/sbx"], "no sandbox in /nonexistent/sbx"),
    (["sandbox", "up", "--tenants", "0"], "--tenants"),
    (["sandbox", "up", "--port", "70000"], "--port"),
])
def test_bad_sandbox_input_gets_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args, cwd=ROOT)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_phase_commits_carry_the_trailer(sandbox: Sandbox) -> None:
    trailers = "--format=%(trailers:key=Rollback-Phase,valueonly)"
    log = subprocess.run(["git", "-C", str(sandbox.repo), "log", trailers],
                         capture_output=True, text=True, check=True).stdout.split()
    assert sorted(log) == ["fase1", "fase2", "fase3"]
    remote = subprocess.run(["git", "-C", str(sandbox.repo), "ls-remote", "origin", "main"],
                            capture_output=True, text=True, check=True).stdout
    assert remote.split()[0] == subprocess.run(["git", "-C", str(sandbox.repo), "rev-parse", "HEAD"],
                                               capture_output=True, text=True, check=True).stdout.strip()


def test_seed_is_deterministic_for_a_seed(pg_cluster: object, sandbox_factory: SandboxFactory) -> None:
    first = sandbox_factory.make(tenants=5, seed_value=7)
    second = sandbox_factory.make(tenants=5, seed_value=7)
    try:
        query = "SELECT md5(string_agg(key_hash || tenant_id::text, ',' ORDER BY key_hash)) FROM api_keys"
        assert first.sql(query) == second.sql(query)
        assert first.keys == second.keys
        leads = "SELECT md5(string_agg(id::text || phone, ',' ORDER BY id)) FROM leads"
        assert first.sql(leads) == second.sql(leads)
    finally:
        sandbox_factory.destroy(first)
        sandbox_factory.destroy(second)


def test_seed_shape_matches_the_platform(sandbox: Sandbox) -> None:
    tenants, multi = sandbox.sql(
        "SELECT count(*), count(*) FILTER (WHERE n > 1) FROM "
        "(SELECT t.id, count(b.id) AS n FROM tenants t JOIN branches b ON b.tenant_id = t.id "
        "GROUP BY t.id) x")[0]
    assert tenants == 50
    assert 0.15 <= multi / tenants <= 0.20
    kinds = dict(sandbox.sql(
        "SELECT kind, count(*) FROM (SELECT CASE WHEN NOT is_active THEN 'revoked' "
        "WHEN expires_at < now() THEN 'expired' WHEN environment = 'test' THEN 'test' "
        "ELSE scope_type END AS kind FROM api_keys) k GROUP BY kind"))
    assert set(kinds) == {"tenant", "branch", "revoked", "expired", "test"}
    hashed = sandbox.sql("SELECT count(*) FROM api_keys WHERE key_hash = %s",
                         (seed.key_hash(sandbox.keys["tenant"]),))
    assert hashed == [(1,)], "keys are stored as their SHA-256 only"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_keys_grow_to_the_requested_count(sandbox_factory: SandboxFactory) -> None:
    box = sandbox_factory.make(tenants=10, keys=20_000)
    try:
        total, branch = box.sql(
            "SELECT count(*), count(*) FILTER (WHERE scope_type = 'branch') FROM api_keys")[0]
        assert total == 20_000
        assert 0.15 <= branch / total <= 0.25
        with psycopg.connect(box.database_url) as conn:
            assert seed.grow_keys(conn, 20_000) == 0, "growing to the current size adds nothing"
    finally:
        sandbox_factory.destroy(box)
