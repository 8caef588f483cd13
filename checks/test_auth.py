"""Authentication: a valid key is let in; missing, malformed, unknown, revoked and expired keys
get 401 with the profile's error code (and its WWW-Authenticate challenge).

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
from rollback.profile import Profile

pytestmark = ALL_PHASES


def expect_refused(response: httpx.Response, code: str, profile: Profile, what: str) -> None:
    """401 with the profile's error code, and the WWW-Authenticate header it promises."""
    __tracebackhide__ = True
    expect_error_body(response, 401, code)
    prefix = profile.errors.www_authenticate
    if prefix is not None:
        header = response.headers.get("WWW-Authenticate")
        assert header is not None and header.startswith(prefix), (
            f"{response.request.method} {response.request.url.path} refused {what} with 401 but "
            f"WWW-Authenticate is {header!r}, expected it to start with {prefix!r}: clients "
            "that follow the HTTP auth challenge will not know how to authenticate"
        )


def test_valid_key_is_accepted(api: httpx.Client, profile: Profile, evidence: Evidence) -> None:
    response = get(api, profile.auth_path, evidence=evidence)
    refused = response.status_code in (401, 403)
    expect_status(response, 200, "the validation key (TEST_API_KEY) is refused: every client may "
                  "be locked out, or the key was revoked" if refused else "the API is failing")


def test_missing_key_is_rejected(anon_api: httpx.Client, profile: Profile,
                                 evidence: Evidence) -> None:
    response = get(anon_api, profile.auth_path, evidence=evidence)
    expect_refused(response, profile.errors.missing, profile, "a request without a key")


@pytest.mark.parametrize("kind", ["not-bearer", "bad-key-format"])
def test_malformed_key_is_rejected(anon_api: httpx.Client, kind: str, profile: Profile,
                                   evidence: Evidence) -> None:
    header, code = {
        "not-bearer": ("Basic dXNlcjpwYXNz", profile.errors.not_bearer),
        "bad-key-format": ("Bearer not-an-api-key", profile.errors.malformed),
    }[kind]
    response = get(anon_api, profile.auth_path, headers={"Authorization": header},
                   evidence=evidence)
    expect_refused(response, code, profile, f"a malformed key ({kind})")


def test_unknown_key_is_rejected(anon_api: httpx.Client, profile: Profile,
                                 evidence: Evidence) -> None:
    unknown = "tis_live_" + secrets.token_hex(16)
    response = get(anon_api, profile.auth_path, headers={"Authorization": f"Bearer {unknown}"},
                   evidence=evidence)
    expect_refused(response, profile.errors.unknown, profile, "an unknown key")


def test_revoked_key_is_rejected(revoked_api: httpx.Client, profile: Profile,
                                 evidence: Evidence) -> None:
    response = get(revoked_api, profile.auth_path, evidence=evidence)
    expect_refused(response, profile.errors.revoked, profile, "a revoked key")


def test_expired_key_is_rejected(expired_api: httpx.Client, profile: Profile,
                                 evidence: Evidence) -> None:
    response = get(expired_api, profile.auth_path, evidence=evidence)
    expect_refused(response, profile.errors.expired, profile, "an expired key")
