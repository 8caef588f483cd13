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
from checks.expect import expect_list_shape, expect_own_tenant, inconclusive, saw_nothing
from checks.probe import cache_buster, get
from rollback.profile import Profile

pytestmark = pytest.mark.fase1


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
                                            foreign_branch_id: str, profile: Profile,
                                            evidence: Evidence) -> None:
    params = _legacy_params(kind, key_tenant, foreign_branch_id)
    path = profile.leads_path
    response = get(api, path, params={**params, **cache_buster()}, evidence=evidence)
    records = expect_list_shape(response, profile.resource_at(path))
    evidence.record(records=len(records), params=params)
    expect_own_tenant(records, key_tenant.tenant_id, f"GET {path} with {params}")


def test_no_fase1_headers(api: httpx.Client, endpoint: str, key_tenant: KeyTenant,
                          profile: Profile, evidence: Evidence) -> None:
    branch = key_tenant.branch_ids[0] if key_tenant.branch_ids else None
    found = []
    for params in ({}, {"branch_id": branch} if branch else {}):
        response = get(api, endpoint, params={**params, **cache_buster()}, evidence=evidence)
        found += [f"{name}: {response.headers[name]} (params {params})"
                  for name in profile.fase1.headers if name in response.headers]
    assert not found, (f"FASE 1 is still live on {endpoint}: {'; '.join(found)}; the rollback's "
                       "deploy did not take, or the revert missed FASE 1's code")


def test_branch_filter_is_not_applied(api: httpx.Client, branch_endpoint: str,
                                      key_tenant: KeyTenant, profile: Profile,
                                      evidence: Evidence) -> None:
    path = branch_endpoint
    if len(key_tenant.branch_ids) < 2:
        inconclusive(f"the test key's tenant has {len(key_tenant.branch_ids)} branch(es): a "
                     "filter can only be seen with several")
    resource = profile.resource_at(path)
    plain = get(api, path, params=cache_buster(), evidence=evidence)
    expect_list_shape(plain, resource)
    branch = key_tenant.branch_ids[0]
    filtered = get(api, path, params={"branch_id": branch, **cache_buster()}, evidence=evidence)
    expect_list_shape(filtered, resource)
    without, with_branch = plain.json()["total"], filtered.json()["total"]
    evidence.record(total_without=without, total_with_branch_id=with_branch, branch_id=branch)
    if without == 0:
        saw_nothing(f"GET {path} lists nothing for the test key: a filter cannot be seen on "
                    "an empty list")
    assert with_branch == without, (
        f"GET {path}?branch_id={branch} gives total {with_branch}, without it {without}: the "
        "FASE 1 branch filter is still applied"
    )


def test_legacy_limit_param_is_accepted(api: httpx.Client, profile: Profile,
                                        evidence: Evidence) -> None:
    path = profile.leads_path
    response = get(api, path, params={"limit": 1, **cache_buster()}, evidence=evidence)
    expect_list_shape(response, profile.resource_at(path))
