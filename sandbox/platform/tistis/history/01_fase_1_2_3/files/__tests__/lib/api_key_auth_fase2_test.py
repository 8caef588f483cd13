"""FASE 2: creating branch-specific keys (run with pytest from the repository's root)."""

from __future__ import annotations

import pytest
from app.api.settings.api_keys.route import InvalidRequest, parse_create_request

BRANCH = "6f1c2a9e-0b7d-4c61-9a55-2f3d8e1b7c40"


def test_a_key_is_tenant_wide_by_default() -> None:
    parsed = parse_create_request({"name": "CRM", "scopes": ["leads:read"], "branch_id": BRANCH}, {BRANCH})
    assert parsed["scope_type"] == "tenant" and parsed["branch_id"] is None


def test_a_branch_key_names_a_branch_of_the_tenant() -> None:
    body = {"name": "POS", "scopes": ["leads:read"], "scope_type": "branch", "branch_id": BRANCH}
    assert parse_create_request(body, {BRANCH})["branch_id"] == BRANCH
    with pytest.raises(InvalidRequest):
        parse_create_request(body, set())


def test_unknown_scopes_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        parse_create_request({"name": "x", "scopes": ["admin"]}, set())
