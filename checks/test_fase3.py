"""After a FASE 3 rollback: no response cache, the database objects as the chosen option left
them, and latency within the slowdown the guide expects.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import httpx
import psycopg
import pytest

from checks._plugin.options import SuiteConfig
from checks.evidence import Evidence
from checks.expect import inconclusive
from checks.probe import ENDPOINTS, RESOURCES, Sample, get

pytestmark = pytest.mark.fase3

#: what FASE 3's migration created (the platform contract); a run context may name others
FASE3_INDEXES = (
    "idx_leads_branch_active_statuses", "idx_leads_branch_search",
    "idx_appointments_branch_scheduled", "idx_appointments_branch_scheduled_desc",
    "idx_staff_branches_branch_id", "idx_staff_branches_staff_id",
    "idx_leads_tenant_branch_created", "idx_appointments_tenant_branch_scheduled",
    "idx_leads_branch_covering", "idx_appointments_branch_covering",
    "idx_api_keys_hash_active", "idx_api_keys_branch_scope",
)
FASE3_OBJECTS = (
    *FASE3_INDEXES, "vw_fase3_index_usage", "validate_fase3_indexes()",
    "get_low_stock_items(uuid, uuid)", "get_branch_stats_summary(uuid, uuid)",
    "refresh_branch_performance_metrics()", "mv_branch_performance_metrics", "vw_cache_freshness",
)

# Relations (indexes, views, materialized views) and functions, by bare name; invalid indexes
# (a failed CREATE INDEX CONCURRENTLY) count as present but broken.
_FIND = """
SELECT c.relname, c.relkind::text, COALESCE(i.indisvalid AND i.indisready, true)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_index i ON i.indexrelid = c.oid
 WHERE c.relname = ANY(%(names)s) AND n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT p.proname, 'function', true
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proname = ANY(%(names)s) AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


def bare_name(name: str) -> str:
    """'public.get_low_stock_items(uuid, uuid)' -> 'get_low_stock_items'."""
    return name.split("(", 1)[0].strip().rsplit(".", 1)[-1].strip('"')


@pytest.mark.parametrize("path", ENDPOINTS, ids=RESOURCES.values())
def test_no_cache_header(api: httpx.Client, path: str, evidence: Evidence) -> None:
    # Twice: a cache answers the second identical request from memory (HIT).
    headers = [get(api, path, evidence=evidence).headers.get("X-Cache") for _ in range(2)]
    evidence.record(x_cache=headers)
    assert headers == [None, None], (
        f"GET {path} still answers with X-Cache {headers}: FASE 3's response cache is live, so "
        "clients may read data up to 5 minutes old; the rollback's deploy did not take"
    )


def test_database_objects_match_chosen_option(db: psycopg.Connection, suite: SuiteConfig,
                                              evidence: Evidence) -> None:
    context = suite.run_context
    names = list(context.fase3_objects) if context and context.fase3_objects else list(FASE3_OBJECTS)
    wanted = {bare_name(n): n for n in names}
    rows = db.execute(_FIND, {"names": list(wanted)}).fetchall()
    present = {name for name, _, _ in rows}
    invalid = sorted(name for name, kind, valid in rows if kind == "i" and not valid)
    missing = sorted(set(wanted) - present)
    option = context.fase3_db_option if context else None
    evidence.record(option=option or "unknown", objects=len(wanted), present=len(present),
                    missing=missing, invalid_indexes=invalid)
    if option == 2:
        assert not present, (
            f"option 2 (drop FASE 3's database objects) left {len(present)} of {len(wanted)} in "
            f"place: {', '.join(sorted(present))}; a DROP ... IF EXISTS with a wrong name succeeds "
            "silently: drop these by their real names"
        )
        return
    if option is None and not present:
        evidence.record(consistent_with="option 2 (no run context names the option)")
        return
    what = "option 1 (keep FASE 3's database objects)" if option == 1 else (
        "FASE 3's database objects, some present (all-or-nothing: option 1 keeps all, 2 drops all)")
    assert not missing, (
        f"{what}: {len(missing)} of {len(wanted)} missing: {', '.join(missing)}; queries relying "
        "on them will be slow or fail"
    )
    assert not invalid, (
        f"{what}: indexes not valid (pg_index.indisvalid false): {', '.join(invalid)}; the "
        "planner ignores them; REINDEX them"
    )
    if option is None:
        evidence.record(consistent_with="option 1 (no run context names the option)")


@pytest.mark.parametrize("path", ENDPOINTS, ids=RESOURCES.values())
def test_p95_within_expected_slowdown(path: str, endpoint_samples: dict[str, Sample],
                                      suite: SuiteConfig, evidence: Evidence) -> None:
    context = suite.run_context
    baseline = context.baseline.p95_ms.get(path) if context and context.baseline else None
    if not baseline:
        inconclusive(f"no baseline p95 for {path} in the run context: nothing to compare with")
    limit = suite.thresholds.fase3_max_slowdown
    measured = endpoint_samples[path].p95_ms  # infinite if requests timed out: fails below
    ratio = measured / baseline
    evidence.record(p95_ms=round(measured, 1), baseline_p95_ms=baseline, ratio=round(ratio, 2),
                    max_ratio=limit)
    summary = (f"p95 {measured:.0f} ms over {endpoint_samples[path].size} requests to {path} is "
               f"{ratio:.1f}x the pre-rollback {baseline:.0f} ms")
    if ratio <= limit:
        return
    # A large ratio of tiny numbers (4 ms -> 15 ms) is noise, not a regression worth a page.
    assert measured <= suite.thresholds.warn_ms, (
        f"{summary} > {limit:g}x expected after dropping FASE 3's cache and indexes: more than "
        "the guide's 2-3x; look for a missing index or a query plan gone bad"
    )
    evidence.warn(f"{summary} > {limit:g}x, but under warn {suite.thresholds.warn_ms:g} ms")
