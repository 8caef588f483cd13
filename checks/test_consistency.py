"""The API and the database agree: the API's total for the test tenant is the database's count.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import httpx
import psycopg
import pytest
from psycopg import sql

from checks.database import KeyTenant
from checks.evidence import Evidence
from checks.expect import expect_total
from checks.phases import ALL_PHASES
from checks.probe import ENDPOINTS, RESOURCES, cache_buster, get

pytestmark = ALL_PHASES


@pytest.mark.parametrize("path", ENDPOINTS, ids=RESOURCES.values())
def test_api_total_matches_database(api: httpx.Client, db: psycopg.Connection, path: str,
                                    key_tenant: KeyTenant, evidence: Evidence) -> None:
    table = RESOURCES[path]
    # FASE 3's response cache may serve a total up to 5 minutes old. A parameter the API ignores
    # but the cache keys on makes this request a guaranteed miss, so we compare live numbers.
    response = get(api, path, params={"pageSize": 1, **cache_buster()}, evidence=evidence)
    api_total = expect_total(response)
    row = db.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
        sql.Identifier(table)), (key_tenant.tenant_id,)).fetchone()
    db_total = int(row[0]) if row else 0
    evidence.record(api_total=api_total, db_total=db_total, tenant_id=key_tenant.tenant_id)
    assert api_total == db_total, (
        f"GET {path} says total {api_total} but the database holds {db_total} {table} of tenant "
        f"{key_tenant.tenant_id}: the API hides or invents records (a filter still applied, a "
        "stale cache, or API and DATABASE_URL point at different environments)"
    )
