"""The API answers, reports itself healthy, and runs the version the rollback deployed.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import httpx
import pytest

from checks._plugin.options import SuiteConfig
from checks.evidence import Evidence
from checks.expect import expect_json, inconclusive
from checks.phases import ALL_PHASES
from checks.probe import get
from rollback.profile import (
    Profile,
    VersionCommand,
    VersionUnknown,
    deployed_version,
    dig,
    version_matches,
)

pytestmark = ALL_PHASES


@pytest.fixture(scope="module")
def health(anon_api: httpx.Client, profile: Profile) -> httpx.Response:
    return get(anon_api, profile.health.path, follow_redirects=profile.health.follow_redirects)


def _where(response: httpx.Response, profile: Profile) -> str:
    """'/health' or '/health -> /api/health' when a redirect was followed."""
    if response.url.path != profile.health.path:
        return f"{profile.health.path} -> {response.url.path}"
    return profile.health.path


def test_api_is_reachable(health: httpx.Response, profile: Profile, evidence: Evidence) -> None:
    evidence.request(health)
    where = _where(health, profile)
    # 502/504 come from a gateway in front of the API: the app itself did not answer.
    assert health.status_code not in (502, 504), (
        f"GET {where} answered {health.status_code} from the gateway: the API behind it is "
        "down or not answering"
    )
    assert health.status_code not in (404, 405) and not health.is_redirect, (
        f"GET {where} answered {health.status_code}"
        + (f" to {health.headers.get('location')}" if health.is_redirect else "")
        + ": the health endpoint is not where the profile says; check [platform.health] path "
        "and follow_redirects"
    )


def test_health_reports_healthy(health: httpx.Response, profile: Profile,
                                evidence: Evidence) -> None:
    shape = profile.health
    body = expect_json(health)
    status = dig(body, shape.status_field)
    database = dig(body, shape.database_field) if shape.database_field else None
    evidence.record(status=status, database=database, http_status=health.status_code,
                    path=_where(health, profile))
    verdict = shape.verdict(status)
    database_ok = not shape.database_field or database in shape.database_ok
    expected = f"200, {shape.status_field} one of {list(shape.passing)}" + (
        f", {shape.database_field} one of {list(shape.database_ok)}" if shape.database_field else "")
    assert health.status_code == 200 and verdict != "fail" and database_ok, (
        f"GET {_where(health, profile)} answered {health.status_code} with "
        f"{shape.status_field}={status!r}"
        + (f", {shape.database_field}={database!r}" if shape.database_field else "")
        + f" (expected {expected})"
        + (": the API cannot reach its database" if not database_ok and database is not None
           else "")
    )
    if verdict == "warn":
        evidence.warn(f"{_where(health, profile)} reports {shape.status_field}={status!r}: "
                      "up, but a dependency is slow or failing")


def test_deployed_version_is_expected(health: httpx.Response, suite: SuiteConfig,
                                      profile: Profile, version_command: VersionCommand | None,
                                      evidence: Evidence) -> None:
    """Runs last (conftest.py): a version command was started before the first check."""
    expected = suite.expected_version
    if not expected:
        inconclusive("expected version unknown: pass --expected-version, or a run context "
                     "with expected_version")
    if profile.version.source == "none":
        inconclusive(f"profile {profile.name} names no source of the deployed version "
                     "([platform.version] source = \"none\"): the deploy cannot be confirmed here")
    source = profile.version.describe(suite.settings.target.api_base_url)
    try:
        version = deployed_version(profile, suite.settings.target.api_base_url,
                                   expect_json(health) if profile.version.source == "health_field"
                                   else None, health.headers, command=version_command)
    except VersionUnknown as exc:
        pytest.fail(f"the deployed version cannot be read from {source}: {exc}", pytrace=False)
    evidence.record(expected=expected, reported=version, source=source)
    if profile.version.source == "command":
        evidence.record(command_started="before the first check" if version_command else "here")
    assert version is not None and version_matches(version, expected), (
        f"{source} reports version {version!r}, expected {expected!r}: the "
        "rollback's deploy is not live (still deploying, or the old build is serving)"
    )
