"""After a FASE 1 rollback: legacy clients that still send its parameters keep working, and the
branch filter with its headers is gone.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import httpx
import pytest

from checks.database import KeyTenant
from checks.evidence import Evidence
from checks.expect import expect_list_shape, expect_own_tenant, inconclusive
from checks.probe import ENDPOINTS, RESOURCES, cache_buster, get

pytestmark = pytest.mark.fase1

FASE1_HEADERS = ("X-Filtered-Branch-ID", "X-Branch-Filter-Warning")


def _legacy_params(kind: str, key_tenant: KeyTenant, foreign_branch_id: str) -> dict[str, str]:
    return {
        "own-branch": {"branch_id": key_tenant.branch_ids[0] if key_tenant.branch_ids else ""},
        "foreign-branch": {"branch_id": foreign_branch_id},
        "garbage-branch": {"branch_id": "not-a-uuid"},
        "status": {"status": "new"},
        "search": {"search": "a"},
    }[kind]


@pytest.mark.parametrize("kind", ["own-branch", "foreign-branch", "garbage-branch", "status",
                                  "search"])
def test_legacy_params_get_200_and_own_data(api: httpx.Client, kind: str, key_tenant: KeyTenant,
                                            foreign_branch_id: str, evidence: Evidence) -> None:
    params = _legacy_params(kind, key_tenant, foreign_branch_id)
    response = get(api, "/v1/leads", params={**params, **cache_buster()}, evidence=evidence)
    records = expect_list_shape(response, "leads")
    evidence.record(records=len(records), params=params)
    expect_own_tenant(records, key_tenant.tenant_id, f"GET /v1/leads with {params}")


@pytest.mark.parametrize("path", ENDPOINTS, ids=RESOURCES.values())
def test_no_fase1_headers(api: httpx.Client, path: str, key_tenant: KeyTenant,
                          evidence: Evidence) -> None:
    branch = key_tenant.branch_ids[0] if key_tenant.branch_ids else None
    found = []
    for params in ({}, {"branch_id": branch} if branch else {}):
        response = get(api, path, params={**params, **cache_buster()}, evidence=evidence)
        found += [f"{name}: {response.headers[name]} (params {params})"
                  for name in FASE1_HEADERS if name in response.headers]
    assert not found, (f"FASE 1 is still live on {path}: {'; '.join(found)}; the rollback's "
                       "deploy did not take, or the revert missed FASE 1's code")


@pytest.mark.parametrize("path", ["/v1/leads", "/v1/appointments"], ids=["leads", "appointments"])
def test_branch_filter_is_not_applied(api: httpx.Client, path: str, key_tenant: KeyTenant,
                                      evidence: Evidence) -> None:
    if len(key_tenant.branch_ids) < 2:
        inconclusive(f"the test key's tenant has {len(key_tenant.branch_ids)} branch(es): a "
                     "filter can only be seen with several")
    plain = get(api, path, params=cache_buster(), evidence=evidence)
    expect_list_shape(plain, RESOURCES[path])
    branch = key_tenant.branch_ids[0]
    filtered = get(api, path, params={"branch_id": branch, **cache_buster()}, evidence=evidence)
    expect_list_shape(filtered, RESOURCES[path])
    without, with_branch = plain.json()["total"], filtered.json()["total"]
    evidence.record(total_without=without, total_with_branch_id=with_branch, branch_id=branch)
    assert with_branch == without, (
        f"GET {path}?branch_id={branch} gives total {with_branch}, without it {without}: the "
        "FASE 1 branch filter is still applied"
    )


def test_legacy_limit_param_is_accepted(api: httpx.Client, evidence: Evidence) -> None:
    response = get(api, "/v1/leads", params={"limit": 1, **cache_buster()}, evidence=evidence)
    expect_list_shape(response, "leads")
