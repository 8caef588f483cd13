"""Writes still work. Opt-in: these create data on the target, so they run only with
--allow-writes (without it they are inconclusive, never a gate failure).

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from checks.evidence import Evidence
from checks.expect import expect_json, expect_status
from checks.phases import ALL_PHASES
from rollback.profile import Profile

pytestmark = [*ALL_PHASES, pytest.mark.write]


def test_lead_can_be_created(api: httpx.Client, profile: Profile, evidence: Evidence) -> None:
    marker = f"rollback-validation-{uuid.uuid4().hex[:8]}"
    path = profile.leads_path
    # no `source`: the real platform CHECKs it against its own list and defaults it
    response = api.post(path, json={"phone": f"+52{uuid.uuid4().int % 10**10:010d}", "name": marker})
    evidence.request(response)
    expect_status(response, 201, "clients cannot create leads")
    created = expect_json(response).get("data", {})
    named = created.get("name") or created.get("full_name") if isinstance(created, dict) else None
    assert named == marker, f"POST {path} returned {created!r}, expected a lead named {marker!r}"
