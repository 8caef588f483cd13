"""After a FASE 3 rollback: no response cache, the database objects as the chosen option left
them, and latency within the slowdown the guide expects.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest

from checks._plugin.options import SuiteConfig
from checks.database import KeyTenant, tenant_rows
from checks.evidence import Evidence
from checks.expect import expect_status, expect_total, inconclusive
from checks.probe import Sample, cache_buster, get
from rollback.errors import StepFailed
from rollback.profile import Profile, Resource

if TYPE_CHECKING:  # imported where a FASE 3 check runs: the SQL parser and the driver's modules
    from rollback.fase3 import DbObject  # cost every other selection that collects this module

pytestmark = pytest.mark.fase3

@pytest.mark.cache_signal("header")
def test_no_cache_header(api: httpx.Client, endpoint: str, profile: Profile,
                         evidence: Evidence) -> None:
    name = profile.fase3.cache_header
    # Twice: a cache answers the second identical request from memory (HIT).
    headers = [get(api, endpoint, evidence=evidence).headers.get(name) for _ in range(2)]
    evidence.record(**{name: headers})
    assert headers == [None, None], (
        f"GET {endpoint} still answers with {name} {headers}: FASE 3's response cache is live, "
        f"so clients may read data up to {profile.fase3.cache_ttl_s:g} s old; the rollback's "
        "deploy did not take"
    )


def _totals(api: httpx.Client, db: psycopg.Connection, path: str, resource: Resource,
            tenant_id: str, evidence: Evidence) -> tuple[int, int, int]:
    """(the API's total as a cache would serve it, its live total, the database's count)."""
    cached = expect_total(get(api, path, params={"pageSize": 1}, evidence=evidence))
    live = expect_total(get(api, path, params={"pageSize": 1, **cache_buster()}, evidence=evidence))
    counted, _ = tenant_rows(db, resource, tenant_id)
    db.rollback()  # a new snapshot for the next count
    return cached, live, counted


def _stale(path: str, cached: int, live: int, counted: int, profile: Profile) -> str:
    return (f"GET {path} answers total {cached} while the same request made unique answers "
            f"{live} and the database holds {counted}: a response cache is still serving "
            f"answers up to {profile.fase3.cache_ttl_s:g} s old (FASE 3's cache sets no "
            "header); the rollback's deploy did not take, or the revert missed the cache")


@pytest.mark.cache_signal("staleness")
def test_answers_are_not_staler_than_the_database(api: httpx.Client, db: psycopg.Connection,
                                                  endpoint: str, profile: Profile,
                                                  key_tenant: KeyTenant,
                                                  evidence: Evidence) -> None:
    """The real cache sets no header: it shows only when the data change. Watch the database
    for a change of the test tenant's rows, then compare the API's repeated answer with it."""
    resource = profile.resource_at(endpoint)
    first = _totals(api, db, endpoint, resource, key_tenant.tenant_id, evidence)
    evidence.record(first=dict(zip(("cached", "live", "database"), first, strict=True)))
    deadline = time.monotonic() + profile.fase3.observe_s
    latest, suspect = first, False
    while time.monotonic() < deadline:
        cached, live, counted = latest
        if live == counted and cached != live:
            if suspect:  # twice in a row: not a write that landed between two requests
                pytest.fail(_stale(endpoint, cached, live, counted, profile), pytrace=False)
            suspect = True
            latest = _totals(api, db, endpoint, resource, key_tenant.tenant_id, evidence)
            continue
        suspect = False
        if counted != first[2] and live == counted:
            evidence.record(after_change=dict(zip(("cached", "live", "database"), latest,
                                                  strict=True)))
            return  # the data changed and the plain request saw it at once: no cache
        time.sleep(0.25)
        latest = _totals(api, db, endpoint, resource, key_tenant.tenant_id, evidence)
    inconclusive(f"no {resource.table} of the test tenant changed in "
                 f"{profile.fase3.observe_s:g} s, so a cache that sets no header cannot be seen; "
                 "run with --allow-writes for the write probe")


@pytest.mark.write
def test_created_lead_is_listed_at_once(api: httpx.Client, profile: Profile,
                                        evidence: Evidence) -> None:
    """Write probe: a lead created now must be in the very next identical list request,
    within the cache's TTL; a response cache would serve the old total."""
    path = profile.leads_path
    before = expect_total(get(api, path, params={"pageSize": 1}, evidence=evidence))
    created = api.post(path, json={"phone": f"+52{uuid.uuid4().int % 10**10:010d}",
                                   "name": f"rollback-cache-probe-{uuid.uuid4().hex[:8]}"})
    evidence.request(created, "write probe")
    expect_status(created, 201, "the write probe could not create a lead")
    after = expect_total(get(api, path, params={"pageSize": 1}, evidence=evidence))
    evidence.record(total_before=before, total_after=after)
    assert after > before, (
        f"GET {path} answers total {after} right after a lead was created (before: {before}): "
        f"a response cache is still serving answers up to {profile.fase3.cache_ttl_s:g} s old; "
        "the rollback's deploy did not take, or the revert missed FASE 3's cache"
    )


@pytest.fixture(scope="module")
def fase3_objects(suite: SuiteConfig, profile: Profile) -> tuple[DbObject, ...]:
    """The objects to look for: the run's own list, else FASE 3's migrations in the repo."""
    from rollback.fase3 import DbObject, objects_in_repo

    context = suite.run_context
    if context and context.fase3_objects:
        return tuple(DbObject.from_label(label) for label in context.fase3_objects)
    repo = suite.settings.target.repo
    if repo is None:
        pytest.skip("[target] repo is not set: FASE 3's objects are read from its migrations "
                    f"({', '.join(profile.phase('fase3').migrations)}) in the platform's checkout; set "
                    "repo in rollback.toml, or pass a run context")
    try:
        return objects_in_repo(profile, repo).objects
    except StepFailed as exc:
        pytest.fail(str(exc), pytrace=False)


def test_database_objects_match_chosen_option(db: psycopg.Connection, suite: SuiteConfig,
                                              fase3_objects: tuple[DbObject, ...],
                                              evidence: Evidence) -> None:
    """Each object is looked up as the driver looks it up (`inspect_object`): by its name on
    the search path (or its schema), a function by its argument types."""
    from rollback.actions.fase3_objects import inspect_object

    context = suite.run_context
    states = [inspect_object(db, obj) for obj in fase3_objects]
    wanted = [s.obj.label for s in states]
    present = [s.obj.label for s in states if s.present]
    invalid = sorted(s.obj.label for s in states if s.present and not s.valid)
    missing = sorted(s.obj.label for s in states if not s.present)
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


def test_p95_within_expected_slowdown(endpoint: str, endpoint_samples: dict[str, Sample],
                                      suite: SuiteConfig, evidence: Evidence) -> None:
    path = endpoint
    context = suite.run_context
    baseline = context.baseline.p95_ms.get(path) if context and context.baseline else None
    if not baseline:
        inconclusive(f"no baseline p95 for {path} in the run context: nothing to compare with")
    limit = suite.thresholds.fase3_max_slowdown
    measured = endpoint_samples[path].p95_ms  # infinite if requests timed out: fails below
    if measured is None:
        pytest.fail(f"no request to {path} answered successfully ({endpoint_samples[path].statuses}):"
                    " no p95 to compare with the pre-rollback one", pytrace=False)
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
