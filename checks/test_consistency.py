"""The API and the database agree: the API's total for the test tenant is the database's count.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import httpx
import psycopg

from checks.database import KeyTenant, tenant_rows
from checks.evidence import Evidence
from checks.expect import expect_total, saw_nothing
from checks.phases import ALL_PHASES
from checks.probe import cache_buster, get
from rollback.profile import Profile

pytestmark = ALL_PHASES


def test_api_total_matches_database(api: httpx.Client, db: psycopg.Connection, endpoint: str,
                                    key_tenant: KeyTenant, profile: Profile,
                                    evidence: Evidence) -> None:
    path, resource = endpoint, profile.resource_at(endpoint)
    table = resource.table
    # FASE 3's response cache may serve a total up to 5 minutes old. A parameter the API ignores
    # but the cache keys on makes this request a guaranteed miss, so we compare live numbers.
    response = get(api, path, params={"pageSize": 1, **cache_buster()}, evidence=evidence)
    api_total = expect_total(response)
    db_total, _ = tenant_rows(db, resource, key_tenant.tenant_id)
    evidence.record(api_total=api_total, db_total=db_total, tenant_id=key_tenant.tenant_id)
    if api_total == db_total == 0:
        saw_nothing(f"the test key's tenant has no {table} in the database nor in {path}: "
                    "agreement on zero proves nothing")
    assert api_total == db_total, (
        f"GET {path} says total {api_total} but the database holds {db_total} {table} of tenant "
        f"{key_tenant.tenant_id}: the API hides or invents records (a filter still applied, a "
        "stale cache, or API and DATABASE_URL point at different environments)"
    )
