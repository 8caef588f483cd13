"""The validation suite as a whole against the real sandbox, of both shapes: verdicts, gate,
reports, xdist, usage.

Each test runs the suite the way the CLI does, through `rollback.validate.run_validation`
(`pytest.main` in the test's process; with `-n`, a `python -m pytest` subprocess), and reads
the verdicts back from its JUnit file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from rollback.errors import UsageError
from rollback.profile import SHIPPED, Profile
from rollback.validate import TOOLKIT_ROOT, ValidationResult, run_validation
from tests.conftest import Sandbox

pytestmark = pytest.mark.slow


def verdicts(result: ValidationResult) -> dict[str, str]:
    return {c.nodeid: c.verdict for c in result.checks}


def health_checks(profile: Profile) -> int:
    """How many health checks pass on a healthy target with TEST_API_KEY and DATABASE_URL:
    28 about the API as a whole and the database, 6 per list endpoint (shape, pagination,
    total against the database, two isolation checks, p95)."""
    return 28 + 6 * len(profile.resources)


def test_healthy_sandbox_passes_every_health_check_under_the_gate(any_sandbox: Sandbox,
                                                                  tmp_path: Path) -> None:
    # A short traffic window: real traffic that other tests caused on this sandbox is not ours.
    result = run_validation("health", reports_root=tmp_path, gate=True, env=any_sandbox.env(),
                            extra_args=["--traffic-window", "0.05"])
    bad = {c.nodeid: c.message for c in result.checks if c.verdict in ("fail", "skip")}
    assert result.exit_code == 0 and not bad, bad or result.log.read_text()
    assert result.passed == health_checks(any_sandbox.profile) and result.failed == 0
    # the API answered at the start: the shared sample was taken beside the first checks
    assert "in the background, beside the first checks" in result.html.read_text()
    # What the gate accepts without failing: optional input absent, nothing to judge.
    assert {c.nodeid.split("::")[1] for c in result.checks if c.verdict == "inconclusive"} <= {
        "test_deployed_version_is_expected", "test_real_traffic_error_rate_is_below_limit",
        "test_real_traffic_p95_is_within_limits", "test_lead_can_be_created",
    }


@pytest.mark.parametrize("profile", SHIPPED)
def test_fase2_selection_collects_at_least_25_checks(profile: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ROLLBACK_"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "fase2"],
                          cwd=TOOLKIT_ROOT, capture_output=True, text=True, check=False,
                          env={**env, "ROLLBACK_PROFILE": profile})
    collected = [line for line in done.stdout.splitlines() if line.startswith("checks/")]
    assert len(collected) >= 25, done.stdout[-2000:]
    assert any("test_fase2.py" in line for line in collected)
    assert any("test_database.py" in line for line in collected)  # general checks ride along
    assert not any("test_fase1.py" in line or "test_fase3.py" in line for line in collected)


def test_crossing_warn_threshold_passes_with_warnings_everywhere(any_sandbox: Sandbox,
                                                                 tmp_path: Path) -> None:
    result = run_validation("health", reports_root=tmp_path, env=any_sandbox.env(),
                            extra_args=["--warn-ms", "0.01", "-k", "latency"])
    assert result.exit_code == 0, result.log.read_text()
    warned = [c for c in result.checks if c.verdict == "warn"]
    endpoints = len(any_sandbox.profile.endpoints)
    assert len(warned) == endpoints
    assert all("> warn 0.01 ms" in c.warnings[0] and "over 20 requests" in c.warnings[0]
               for c in warned)
    console = result.log.read_text()
    assert f"{endpoints} warned" in console and "checks that passed with a warning" in console
    html = result.html.read_text()
    assert "Passed (warn)" in html and "passed with a warning" in html
    assert "&lt;svg" in html or "<svg" in html  # the latency chart, inline


def test_crossing_alert_threshold_fails(any_sandbox: Sandbox, tmp_path: Path) -> None:
    profile = any_sandbox.profile
    result = run_validation("health", reports_root=tmp_path, env=any_sandbox.env(),
                            extra_args=["--warn-ms", "0.01", "--alert-ms", "0.02", "-k", "latency"])
    assert result.exit_code == 1
    assert result.failed == len(profile.endpoints)
    assert f"> alert 0.02 ms over 20 requests to {profile.leads_path}" in result.check(
        "test_p95_latency_is_within_limits[leads]").message


def test_missing_database_url_skips_naming_it_and_fails_the_gate(any_sandbox: Sandbox,
                                                                 tmp_path: Path) -> None:
    # (a missing TEST_API_KEY is refused before any check: tests/test_checks_target.py)
    env = any_sandbox.env()
    del env["DATABASE_URL"]
    relaxed = run_validation("health", reports_root=tmp_path, env=env, extra_args=["-k", "auth or orphaned"])
    assert relaxed.exit_code == 0
    messages = {c.nodeid.split("::")[1]: c.message for c in relaxed.checks if c.verdict == "skip"}
    assert "DATABASE_URL is not set" in messages["test_no_orphaned_rows[leads]"]
    gated = run_validation("health", reports_root=tmp_path, env=env, gate=True,
                           extra_args=["-k", "auth or orphaned"])
    assert gated.exit_code == 1
    assert "--gate: required check skipped: DATABASE_URL is not set" in gated.check(
        "test_no_orphaned_rows[leads]").message
    assert gated.check("test_valid_key_is_accepted").verdict == "pass"  # needs no database


def test_xdist_gives_the_same_verdicts(any_sandbox: Sandbox, tmp_path: Path) -> None:
    args = ["--warn-ms", "0.01", "-k", "not real_traffic"]  # every latency check warns, always
    serial = run_validation("fase2", reports_root=tmp_path, env=any_sandbox.env(), extra_args=args)
    parallel = run_validation("fase2", reports_root=tmp_path, env=any_sandbox.env(),
                              extra_args=[*args, "-n", "2"])
    assert verdicts(serial) == verdicts(parallel)
    assert serial.exit_code == parallel.exit_code == 1  # FASE 2 is not rolled back here


def test_reports_hold_no_secret(any_sandbox: Sandbox, tmp_path: Path) -> None:
    env = any_sandbox.env()
    result = run_validation("all", reports_root=tmp_path, env=env, extra_args=["-l"], allure=True)
    secrets = [env["TEST_API_KEY"], env["TEST_BRANCH_API_KEY"], env["TEST_REVOKED_API_KEY"],
               env["TEST_EXPIRED_API_KEY"], urllib.parse.urlsplit(env["DATABASE_URL"]).password]
    assert all(secrets)
    files = [p for p in result.report_dir.rglob("*") if p.is_file()]
    assert result.html in files and result.junit_xml in files and result.log in files
    assert result.allure_results is not None
    assert any(p.parent == result.allure_results for p in files)
    for path in files:
        text = path.read_text(errors="replace")
        leaked = [s[-6:] for s in secrets if s and s in text]
        assert not leaked, f"{path.name} holds secrets ending {leaked}"


def test_plain_pytest_leaves_an_html_report_under_reports(any_sandbox: Sandbox,
                                                         tmp_path: Path) -> None:
    # [paths] reports_dir (default "reports") points at tmp_path, to leave the repo clean.
    config = tmp_path / "rollback.toml"
    config.write_text(any_sandbox.config_file.read_text() + f'\n[paths]\nreports_dir = "{tmp_path}"\n')
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "fase2", "-k", "reachable"],
                          cwd=TOOLKIT_ROOT, env=any_sandbox.env(ROLLBACK_CONFIG=str(config)),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:]
    reports = list(tmp_path.glob("*-pytest/report.html"))
    assert len(reports) == 1 and reports[0].stat().st_size > 10_000
    assert f"Generated html report: {reports[0].as_uri()}" in done.stdout


def test_bad_usage_exits_2(any_sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox = any_sandbox
    with pytest.raises(UsageError, match="unknown selection"):
        run_validation("fase4", reports_root=tmp_path)  # type: ignore[arg-type]
    nothing = run_validation("fase1", reports_root=tmp_path, env=sandbox.env(),
                             extra_args=["-k", "no_such_check"])
    assert nothing.exit_code == 2
    contradiction = run_validation("health", reports_root=tmp_path, env=sandbox.env(),
                                   extra_args=["--warn-ms", "2000"])
    assert contradiction.exit_code == 2
    assert "warn_ms (2000) must be below alert_ms (1000)" in contradiction.log.read_text()


def test_hung_api_fails_in_bounded_time(any_sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox = any_sandbox
    config = tmp_path / "rollback.toml"
    config.write_text(sandbox.config_file.read_text() + "request_timeout_s = 0.5\n"
                      "\n[thresholds]\ncheck_timeout_s = 5\n")
    with sandbox.chaos(latency_ms=3000):
        result = run_validation("health", reports_root=tmp_path,
                                env=sandbox.env(ROLLBACK_CONFIG=str(config)),
                                extra_args=["-k", "latency or valid_key"])
    assert result.exit_code == 1
    # bounded by the configured timeouts, not by a wall clock: no check ran into its own
    # pytest-timeout (check_timeout_s), each ended on the request timeout it was given
    assert "Timeout >" not in result.log.read_text()
    assert "20 timed out" in result.check("test_p95_latency_is_within_limits[leads]").message
    assert "no answer within" in result.check("test_valid_key_is_accepted").message
