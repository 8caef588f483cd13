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

pytestmark = ALL_PHASES


@pytest.fixture(scope="module")
def health(anon_api: httpx.Client) -> httpx.Response:
    return get(anon_api, "/health")


def test_api_is_reachable(anon_api: httpx.Client, evidence: Evidence) -> None:
    response = get(anon_api, "/health", evidence=evidence)
    if response.status_code == 404:  # the original scripts also tried /api/health
        response = get(anon_api, "/api/health", evidence=evidence)
    # 502/504 come from a gateway in front of the API: the app itself did not answer.
    assert response.status_code not in (502, 504), (
        f"GET /health answered {response.status_code} from the gateway: the API behind it is "
        "down or not answering"
    )


def test_health_reports_ok_and_database_ok(health: httpx.Response, evidence: Evidence) -> None:
    evidence.request(health)
    body = expect_json(health)
    status = body.get("status") if isinstance(body, dict) else None
    database = body.get("database") if isinstance(body, dict) else None
    evidence.record(status=status, database=database, http_status=health.status_code)
    assert health.status_code == 200 and status == "ok" and database == "ok", (
        f"/health answered {health.status_code} with status={status!r}, database={database!r} "
        "(expected 200, 'ok', 'ok')"
        + (": the API cannot reach its database" if database not in (None, "ok") else "")
    )


def test_deployed_version_is_expected(health: httpx.Response, suite: SuiteConfig,
                                      evidence: Evidence) -> None:
    expected = suite.expected_version
    if not expected:
        inconclusive("expected version unknown: pass --expected-version, or a run context "
                     "with expected_version")
    body = expect_json(health)
    version = str(body.get("version")) if isinstance(body, dict) else None
    evidence.record(expected=expected, reported=version)
    assert version is not None and (version == expected or (
        len(expected) >= 7 and version.startswith(expected))), (
        f"/health reports version {version!r}, expected {expected!r}: the rollback's deploy is "
        "not live (still deploying, or the old build is serving)"
    )
