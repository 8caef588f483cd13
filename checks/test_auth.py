"""Authentication: a valid key is let in; missing, malformed, unknown and revoked keys get 401.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import secrets

import httpx
import pytest

from checks.evidence import Evidence
from checks.expect import expect_error_body, expect_status
from checks.phases import ALL_PHASES
from checks.probe import get

pytestmark = ALL_PHASES

PATH = "/v1/branches"


def test_valid_key_is_accepted(api: httpx.Client, evidence: Evidence) -> None:
    response = get(api, PATH, evidence=evidence)
    refused = response.status_code in (401, 403)
    expect_status(response, 200, "the validation key (TEST_API_KEY) is refused: every client may "
                  "be locked out, or the key was revoked" if refused else "the API is failing")


def test_missing_key_is_rejected(anon_api: httpx.Client, evidence: Evidence) -> None:
    expect_error_body(get(anon_api, PATH, evidence=evidence), 401, "UNAUTHORIZED")


@pytest.mark.parametrize("header", [
    pytest.param("Basic dXNlcjpwYXNz", id="not-bearer"),
    pytest.param("Bearer not-an-api-key", id="bad-key-format"),
])
def test_malformed_key_is_rejected(anon_api: httpx.Client, header: str, evidence: Evidence) -> None:
    response = get(anon_api, PATH, headers={"Authorization": header}, evidence=evidence)
    expect_error_body(response, 401, "UNAUTHORIZED")


def test_unknown_key_is_rejected(anon_api: httpx.Client, evidence: Evidence) -> None:
    unknown = "tis_live_" + secrets.token_hex(16)
    response = get(anon_api, PATH, headers={"Authorization": f"Bearer {unknown}"},
                   evidence=evidence)
    expect_error_body(response, 401, "UNAUTHORIZED")


def test_revoked_key_is_rejected(revoked_api: httpx.Client, evidence: Evidence) -> None:
    expect_error_body(get(revoked_api, PATH, evidence=evidence), 401, "UNAUTHORIZED")
