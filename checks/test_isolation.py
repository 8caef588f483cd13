"""Tenant isolation: whatever `branch_id` is sent, a key reads only its own tenant's records.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import httpx

from checks.database import KeyTenant
from checks.evidence import Evidence
from checks.expect import expect_json, expect_own_tenant
from checks.phases import ALL_PHASES
from checks.probe import cache_buster, get

pytestmark = ALL_PHASES


def _records(response: httpx.Response) -> list[dict[str, object]]:
    """The records of a list answer; a 4xx refusal (FASE 1's 403 for a foreign branch) has none."""
    if 400 <= response.status_code < 500:
        return []
    assert response.status_code == 200, (
        f"GET {response.request.url.path} answered {response.status_code}"
    )
    body = expect_json(response)
    return list(body.get("data") or []) if isinstance(body, dict) else []


def test_records_belong_to_the_keys_tenant(api: httpx.Client, endpoint: str, key_tenant: KeyTenant,
                                           evidence: Evidence) -> None:
    path = endpoint
    response = get(api, path, params={"pageSize": 100, **cache_buster()}, evidence=evidence)
    records = _records(response)
    evidence.record(records=len(records), tenant_id=key_tenant.tenant_id)
    expect_own_tenant(records, key_tenant.tenant_id, f"GET {path}")


def test_foreign_branch_id_reads_nothing_of_another_tenant(
    api: httpx.Client, endpoint: str, key_tenant: KeyTenant, foreign_branch_id: str,
    evidence: Evidence,
) -> None:
    path = endpoint
    params = {"branch_id": foreign_branch_id, "pageSize": 100, **cache_buster()}
    response = get(api, path, params=params, evidence=evidence)
    records = _records(response)
    evidence.record(records=len(records), foreign_branch_id=foreign_branch_id)
    # FASE 1 refuses the foreign branch (403): nothing leaked, nothing to inspect
    expect_own_tenant(records, key_tenant.tenant_id,
                      f"GET {path}?branch_id=<branch of another tenant>",
                      require=response.status_code == 200)
