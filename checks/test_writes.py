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

pytestmark = [*ALL_PHASES, pytest.mark.write]


def test_lead_can_be_created(api: httpx.Client, evidence: Evidence) -> None:
    marker = f"rollback-validation-{uuid.uuid4().hex[:8]}"
    response = api.post("/v1/leads", json={"phone": "+520000000000", "name": marker,
                                           "source": "rollback-validation"})
    evidence.request(response)
    expect_status(response, 201, "clients cannot create leads")
    created = expect_json(response).get("data", {})
    assert created.get("name") == marker, f"POST /v1/leads returned {created!r}"
