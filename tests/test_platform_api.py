"""The sandbox platform's API, contract v1 with FASE 1-3 deployed, tested over real HTTP.

Runs against the session `sandbox` (tests/conftest.py). Besides the seeded keys, which only a
few tests use, every test works on its own data: the module fixture `world` adds a
three-branch tenant and a one-branch "other" tenant, and `make_key` adds keys to them; all of
it is deleted at the end, with the usage-log rows of those keys (so the 5xx this file provokes
never count as real traffic for the checks). Expected values are read from the database.

Seed assumptions: the keys `tenant`, `branch` and `test_env` are valid; `tenant` belongs to a
tenant with several branches; `branch` is branch-scoped (FASE 2); `revoked` and `expired` are
what they say. The sandbox is at FASE 3; tests of a phase that is not deployed are skipped.
Tests marked `slow` revert phase commits in the checkout and put them back afterwards.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

ALL_SCOPES = ("leads:read", "leads:write", "appointments:read", "branches:read")
LIST_PATHS = ("/v1/leads", "/v1/appointments", "/v1/branches")
ERROR_CODES = {
    "UNAUTHORIZED", "INVALID_SCOPE", "RATE_LIMIT_EXCEEDED", "INVALID_BRANCH_ID",
    "BRANCH_ACCESS_DENIED", "VALIDATION_ERROR", "DATABASE_ERROR", "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
}  # fmt: skip
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
EXT_FILES = {
    "fase1": "app/ext/fase1_branch_filter.py",
    "fase2": "app/ext/fase2_branch_keys.py",
    "fase3": "app/ext/fase3_cache.py",
}


# --- assertion helpers -------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    __tracebackhide__ = True
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: expected {status} {code}, "
        f"got {response.status_code}: {response.text[:300]}"
    )
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "code"}, f"error body must be exactly error+code, got {body}"
    assert body["code"] == code, f"expected code {code}, got {body}"
    assert code in ERROR_CODES, f"{code} is not a contract error code"
    assert isinstance(body["error"], str) and body["error"], f"empty error text: {body}"
    return body


def assert_ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    __tracebackhide__ = True
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {response.text[:300]}"
    )
    body: dict[str, Any] = response.json()
    return body


def assert_rate_headers(response: httpx.Response) -> None:
    __tracebackhide__ = True
    missing = [h for h in RATE_HEADERS if h not in response.headers]
    assert not missing, f"{response.status_code} response lacks {missing}"


def bearer(raw_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw_key}"}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(sandbox: Any) -> Iterator[httpx.Client]:
    """HTTP client for the sandbox platform (sandbox.api_base_url)."""
    with httpx.Client(base_url=sandbox.api_base_url, timeout=15.0) as client:
        yield client


@pytest.fixture(scope="module")
def db(sandbox: Any) -> Iterator[psycopg.Connection[Any]]:
    """Autocommit connection to the sandbox platform's database (sandbox.database_url)."""
    with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def phases(sandbox: Any) -> set[str]:
    """The phases whose code is in the served checkout."""
    return {phase for phase, path in EXT_FILES.items() if (Path(sandbox.repo) / path).exists()}


def require(phases: set[str], *needed: str) -> None:
    """The shared sandbox is at FASE 3 (every phase live): a phase missing from its checkout is a
    broken fixture or an earlier test's leftover, an error, never a reason to skip."""
    __tracebackhide__ = True
    missing = [p for p in needed if p not in phases]
    assert not missing, (f"{', '.join(missing)} not deployed in the shared sandbox's checkout: "
                         "it must be at FASE 3; a test that rolls it back must put it back")


@dataclass(frozen=True)
class World:
    """A three-branch tenant of our own, and a one-branch tenant it must never see."""

    tenant_id: uuid.UUID
    branches: tuple[uuid.UUID, uuid.UUID, uuid.UUID]  # named Alpha, Beta, Gamma
    other_tenant_id: uuid.UUID
    other_branch_id: uuid.UUID


@pytest.fixture(scope="module")
def world(db: psycopg.Connection[Any]) -> Iterator[World]:
    tag = secrets.token_hex(4)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    branches = (uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    other_branch = uuid.uuid4()
    base = datetime.now(UTC) - timedelta(days=1)
    with db.transaction():
        db.execute(
            "INSERT INTO tenants (id, name, slug, vertical) VALUES (%s, %s, %s, 'clinic'),"
            " (%s, %s, %s, 'shop')",
            (tenant, f"Test Clinic {tag}", f"test-clinic-{tag}", other, f"Other {tag}", f"other-{tag}"),
        )
        for branch, name in zip(branches, ("Alpha", "Beta", "Gamma"), strict=True):
            db.execute(
                "INSERT INTO branches (id, tenant_id, name, slug, city) VALUES (%s, %s, %s, %s, 'Monterrey')",
                (branch, tenant, f"{name} {tag}", name.lower()),
            )
        db.execute(
            "INSERT INTO branches (id, tenant_id, name, slug) VALUES (%s, %s, 'Elsewhere', 'elsewhere')",
            (other_branch, other),
        )
        statuses = ("new", "contacted", "qualified", "lost")
        # 12 leads in Alpha, 8 in Beta, 5 in Gamma, one minute apart so that order is certain.
        for i in range(25):
            branch = branches[0] if i < 12 else branches[1] if i < 20 else branches[2]
            db.execute(
                "INSERT INTO leads (id, tenant_id, branch_id, first_name, full_name, phone, email,"
                " status, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (uuid.uuid4(), tenant, branch, f"Lead{i:02d}", f"Lead{i:02d} Test", f"+52811000{i:04d}",
                 f"lead{i:02d}@example.test", statuses[i % 4], base + timedelta(minutes=i),
                 base + timedelta(minutes=i)),
            )  # fmt: skip
        for name, phone, email in (
            ("Zoe NEEDLEman", "+52819990001", None),
            ("Percent 100%_off", "+52819990002", "promo@example.test"),
            ("Plain Person", "+52812345678", "haystack.NEEDLE@example.test"),
        ):
            db.execute(
                "INSERT INTO leads (id, tenant_id, branch_id, full_name, phone, email)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (uuid.uuid4(), tenant, branches[0], name, phone, email),
            )
        for i, (branch, status) in enumerate(
            [(branches[0], "scheduled"), (branches[0], "confirmed"), (branches[0], "completed"),
             (branches[1], "scheduled"), (branches[1], "no_show"), (branches[2], "cancelled")]
        ):  # fmt: skip
            db.execute(
                "INSERT INTO appointments (id, tenant_id, branch_id, scheduled_at, status)"
                " VALUES (%s, %s, %s, %s, %s)",
                (uuid.uuid4(), tenant, branch, base + timedelta(hours=i), status),
            )
        db.execute(
            "INSERT INTO leads (id, tenant_id, branch_id, full_name, phone) VALUES"
            " (%s, %s, %s, 'Not Yours', '+52810000000')",
            (uuid.uuid4(), other, other_branch),
        )
    yield World(tenant, branches, other, other_branch)
    # Cascades to branches, leads, appointments, api_keys and their usage logs.
    db.execute("DELETE FROM tenants WHERE id = ANY(%s)", ([tenant, other],))


MakeKey = Callable[..., str]


@pytest.fixture
def make_key(db: psycopg.Connection[Any], world: World) -> MakeKey:
    """Insert an API key (tenant-wide on `world` unless told) and return the raw key."""

    def make(
        scopes: tuple[str, ...] = ALL_SCOPES,
        *,
        tenant_id: uuid.UUID | None = None,
        branch_id: uuid.UUID | None = None,
        rpm: int = 1000,
        daily: int = 100_000,
        environment: str = "live",
    ) -> str:
        raw = f"tis_{environment}_{secrets.token_hex(16)}"
        fase2 = {"scope_type": "branch" if branch_id else "tenant", "branch_id": branch_id}
        columns = {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id or world.tenant_id,
            "name": "platform api test key",
            "key_hash": hashlib.sha256(raw.encode()).hexdigest(),
            "key_hint": raw[-4:],
            "key_prefix": raw[: len(f"tis_{environment}_")],
            "environment": environment,
            "scopes": Jsonb(list(scopes)),
            "rate_limit_rpm": rpm,
            "rate_limit_daily": daily,
            **(fase2 if branch_id else {}),
        }
        names = ", ".join(columns)
        values = ", ".join(f"%({n})s" for n in columns)
        db.execute(f"INSERT INTO api_keys ({names}) VALUES ({values})", columns)
        return raw

    return make


@pytest.fixture
def key(make_key: MakeKey) -> str:
    """A fresh tenant-wide key with every scope: its own rate limits and cache entries."""
    return make_key()


def count(db: psycopg.Connection[Any], query: str, *args: Any) -> int:
    row = db.execute(query, args).fetchone()
    assert row is not None
    return int(row[0])


def usage_rows(db: psycopg.Connection[Any], user_agent: str) -> list[dict[str, Any]]:
    cur = db.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT * FROM api_key_usage_logs WHERE user_agent = %s ORDER BY id", (user_agent,)
    ).fetchall()


def key_id(db: psycopg.Connection[Any], raw_key: str) -> uuid.UUID:
    row = db.execute(
        "SELECT id FROM api_keys WHERE key_hash = %s", (hashlib.sha256(raw_key.encode()).hexdigest(),)
    ).fetchone()
    assert row is not None, "key not in api_keys"
    found: uuid.UUID = row[0]
    return found


def wait_for_fresh_minute(margin_s: float = 5.0) -> None:
    """Rate-limit windows are aligned to the minute: do not start a count just before one ends."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.2)


# --- health --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/api/health"])
def test_health_reports_database_and_version(api: httpx.Client, path: str) -> None:
    body = assert_ok(api.get(path))
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert isinstance(body["version"], str) and body["version"]
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None


def test_health_is_not_logged(api: httpx.Client, db: psycopg.Connection[Any]) -> None:
    agent = f"health-probe-{secrets.token_hex(4)}"
    assert_ok(api.get("/health", headers={"User-Agent": agent}))
    assert usage_rows(db, agent) == []


# --- authentication ------------------------------------------------------------------------


def test_missing_key_is_rejected(api: httpx.Client) -> None:
    assert_error(api.get("/v1/leads"), 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not-a-key",
        "Bearer tis_prod_abcdefghijklmnop1234",
        "Bearer tis_live_short",
        "Bearer tis_live_has-a-dash-in-it-123",
        "tis_live_abcdefghijklmnop1234",
    ],
)
def test_malformed_authorization_is_rejected(api: httpx.Client, header: str) -> None:
    assert_error(api.get("/v1/leads", headers={"Authorization": header}), 401, "UNAUTHORIZED")


def test_unknown_key_is_rejected(api: httpx.Client) -> None:
    unknown = "tis_live_" + secrets.token_hex(16)
    assert_error(api.get("/v1/leads", headers=bearer(unknown)), 401, "UNAUTHORIZED")


def test_seeded_revoked_key_is_rejected(api: httpx.Client, sandbox: Any) -> None:
    body = assert_error(api.get("/v1/leads", headers=bearer(sandbox.keys["revoked"])), 401, "UNAUTHORIZED")
    assert "revoked" in body["error"]


def test_seeded_expired_key_is_rejected(api: httpx.Client, sandbox: Any) -> None:
    body = assert_error(api.get("/v1/leads", headers=bearer(sandbox.keys["expired"])), 401, "UNAUTHORIZED")
    assert "expired" in body["error"]


def test_seeded_test_environment_key_is_accepted(api: httpx.Client, sandbox: Any) -> None:
    assert sandbox.keys["test_env"].startswith("tis_test_")
    assert_ok(api.get("/v1/leads", headers=bearer(sandbox.keys["test_env"])))


def test_each_kind_of_rejection_says_what_is_wrong(
    api: httpx.Client, sandbox: Any, db: psycopg.Connection[Any], make_key: MakeKey
) -> None:
    revoked_flag_only = make_key()
    db.execute("UPDATE api_keys SET is_active = false WHERE id = %s", (key_id(db, revoked_flag_only),))
    texts = {
        "missing": api.get("/v1/leads").json()["error"],
        "malformed": api.get("/v1/leads", headers={"Authorization": "Token x"}).json()["error"],
        "unknown": api.get("/v1/leads", headers=bearer("tis_live_" + "a" * 24)).json()["error"],
        "revoked": api.get("/v1/leads", headers=bearer(sandbox.keys["revoked"])).json()["error"],
        "inactive": api.get("/v1/leads", headers=bearer(revoked_flag_only)).json()["error"],
        "expired": api.get("/v1/leads", headers=bearer(sandbox.keys["expired"])).json()["error"],
    }
    assert texts["revoked"] == texts["inactive"] == "API key has been revoked"
    assert texts["expired"] == "API key has expired"
    distinct = {texts[k] for k in ("missing", "malformed", "unknown", "revoked", "expired")}
    assert len(distinct) == 5, texts


def test_key_revoked_in_the_database_stops_working_at_once(
    api: httpx.Client, db: psycopg.Connection[Any], key: str
) -> None:
    assert_ok(api.get("/v1/branches", headers=bearer(key)))
    db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id(db, key),))
    deadline = time.monotonic() + 3
    while (response := api.get("/v1/branches", headers=bearer(key))).status_code == 200:
        assert time.monotonic() < deadline, "revoked key still accepted after 3 s"
        time.sleep(0.2)
    assert_error(response, 401, "UNAUTHORIZED")


def test_key_expiring_now_is_rejected(api: httpx.Client, db: psycopg.Connection[Any], key: str) -> None:
    db.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", (key_id(db, key),)
    )
    assert "expired" in assert_error(api.get("/v1/leads", headers=bearer(key)), 401, "UNAUTHORIZED")["error"]


# --- scopes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v1/leads", "leads:read"),
        ("POST", "/v1/leads", "leads:write"),
        ("GET", "/v1/appointments", "appointments:read"),
        ("GET", "/v1/branches", "branches:read"),
    ],
)
def test_missing_scope_is_forbidden(
    api: httpx.Client, make_key: MakeKey, method: str, path: str, scope: str
) -> None:
    raw = make_key(tuple(s for s in ALL_SCOPES if s != scope))
    response = api.request(method, path, headers=bearer(raw), json={"phone": "+5281"})
    body = assert_error(response, 403, "INVALID_SCOPE")
    assert scope in body["error"]
    assert_rate_headers(response)


# --- rate limits ---------------------------------------------------------------------------


def test_every_authenticated_response_has_rate_limit_headers(api: httpx.Client, key: str) -> None:
    for response in (
        api.get("/v1/leads", headers=bearer(key)),
        api.get("/v1/leads?page=0", headers=bearer(key)),
        api.post("/v1/leads", headers=bearer(key), content=b"{nope"),
        api.get("/v1/not-here", headers=bearer(key)),
    ):
        assert_rate_headers(response)


def test_remaining_counts_down_within_a_window(api: httpx.Client, make_key: MakeKey) -> None:
    raw = make_key(rpm=10)
    wait_for_fresh_minute()
    first, second = (api.get("/v1/branches", headers=bearer(raw)) for _ in range(2))
    assert first.headers["X-RateLimit-Limit"] == "10"
    assert int(first.headers["X-RateLimit-Remaining"]) == 9
    assert int(second.headers["X-RateLimit-Remaining"]) == 8
    reset = int(first.headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 61


def test_requests_over_the_minute_limit_get_429(api: httpx.Client, make_key: MakeKey) -> None:
    raw = make_key(rpm=3)
    wait_for_fresh_minute()
    for _ in range(3):
        assert_ok(api.get("/v1/branches", headers=bearer(raw)))
    response = api.get("/v1/branches", headers=bearer(raw))
    assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert_rate_headers(response)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_requests_over_the_daily_limit_get_429(api: httpx.Client, make_key: MakeKey) -> None:
    raw = make_key(daily=2)
    for _ in range(2):
        assert_ok(api.get("/v1/branches", headers=bearer(raw)))
    response = api.get("/v1/branches", headers=bearer(raw))
    assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert int(response.headers["Retry-After"]) >= 1


def test_rate_limits_are_per_key(api: httpx.Client, make_key: MakeKey) -> None:
    exhausted, fresh = make_key(daily=1), make_key(daily=1)
    assert_ok(api.get("/v1/branches", headers=bearer(exhausted)))
    assert_error(api.get("/v1/branches", headers=bearer(exhausted)), 429, "RATE_LIMIT_EXCEEDED")
    assert_ok(api.get("/v1/branches", headers=bearer(fresh)))


# --- usage logs ----------------------------------------------------------------------------


def test_a_request_writes_exactly_one_usage_row(
    api: httpx.Client, db: psycopg.Connection[Any], world: World, key: str
) -> None:
    agent = f"usage-test-{secrets.token_hex(4)}"
    assert_ok(api.get("/v1/leads?status=new&limit=1", headers={**bearer(key), "User-Agent": agent}))
    [row] = usage_rows(db, agent)
    assert row["api_key_id"] == key_id(db, key)
    assert row["tenant_id"] == world.tenant_id
    assert (row["endpoint"], row["method"], row["request_path"]) == ("/v1/leads", "GET", "/v1/leads")
    assert row["scope_used"] == "leads:read"
    assert row["query_params"] == {"status": "new", "limit": "1"}
    assert row["status_code"] == 200
    assert row["error_code"] is None and row["error_message"] is None
    assert 0 <= row["response_time_ms"] < 10_000


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/leads?page=abc", 400, "VALIDATION_ERROR"),
        ("/v1/leads?branch_id=nope", 400, "INVALID_BRANCH_ID"),
        ("/v1/nothing-here", 404, "NOT_FOUND"),
    ],
)
def test_failed_requests_are_logged_with_their_code(
    api: httpx.Client, db: psycopg.Connection[Any], key: str, path: str, status: int, code: str
) -> None:
    agent = f"usage-test-{secrets.token_hex(4)}"
    assert_error(api.get(path, headers={**bearer(key), "User-Agent": agent}), status, code)
    [row] = usage_rows(db, agent)
    assert (row["status_code"], row["error_code"]) == (status, code)
    assert row["error_message"]
    assert row["api_key_id"] == key_id(db, key)


def test_rejected_unknown_key_is_logged_without_a_key(api: httpx.Client, db: psycopg.Connection[Any]) -> None:
    agent = f"usage-test-{secrets.token_hex(4)}"
    unknown = "tis_live_" + secrets.token_hex(16)
    api.get("/v1/appointments", headers={**bearer(unknown), "User-Agent": agent})
    [row] = usage_rows(db, agent)
    assert row["api_key_id"] is None and row["tenant_id"] is None
    assert (row["status_code"], row["error_code"]) == (401, "UNAUTHORIZED")
    assert unknown not in json.dumps(row, default=str), "raw key written to the usage log"


def test_rate_limited_requests_are_logged(
    api: httpx.Client, db: psycopg.Connection[Any], make_key: MakeKey
) -> None:
    raw = make_key(daily=1)
    agent = f"usage-test-{secrets.token_hex(4)}"
    for _ in range(2):
        api.get("/v1/branches", headers={**bearer(raw), "User-Agent": agent})
    assert [(r["status_code"], r["error_code"]) for r in usage_rows(db, agent)] == [
        (200, None),
        (429, "RATE_LIMIT_EXCEEDED"),
    ]


def test_a_request_records_the_keys_last_use(
    api: httpx.Client, db: psycopg.Connection[Any], key: str
) -> None:
    for _ in range(2):
        assert_ok(api.get("/v1/appointments", headers=bearer(key)))
    last_used_at, endpoint, used = db.execute(
        "SELECT last_used_at, last_used_endpoint, usage_count_today FROM api_keys WHERE id = %s",
        (key_id(db, key),),
    ).fetchone() or (None, None, None)
    assert last_used_at is not None and endpoint == "/v1/appointments" and used == 2


def test_request_is_answered_when_the_usage_log_cannot_be_written(
    api: httpx.Client, db: psycopg.Connection[Any], key: str
) -> None:
    db.execute("ALTER TABLE api_key_usage_logs RENAME TO api_key_usage_logs_hidden_by_test")
    try:
        assert_ok(api.get("/v1/branches", headers=bearer(key)))
    finally:
        db.execute("ALTER TABLE api_key_usage_logs_hidden_by_test RENAME TO api_key_usage_logs")


# --- GET /v1/leads -------------------------------------------------------------------------


def test_leads_have_the_contract_fields_and_order(
    api: httpx.Client, db: psycopg.Connection[Any], world: World, key: str
) -> None:
    body = assert_ok(api.get("/v1/leads?pageSize=100", headers=bearer(key)))
    expected = [
        str(r[0])
        for r in db.execute(
            "SELECT id FROM leads WHERE tenant_id = %s ORDER BY created_at DESC, id", (world.tenant_id,)
        )
    ]
    assert [lead["id"] for lead in body["data"]] == expected
    assert body["total"] == len(expected)
    assert set(body["data"][0]) == {
        "id", "tenant_id", "branch_id", "phone", "name", "email", "status",
        "classification", "source", "created_at", "updated_at",
    }  # fmt: skip
    assert {lead["tenant_id"] for lead in body["data"]} == {str(world.tenant_id)}
    named = next(lead for lead in body["data"] if lead["phone"] == "+52811000" + "0003")
    assert named["name"] == "Lead03 Test"


def test_list_defaults_and_filters_echo(api: httpx.Client, key: str) -> None:
    body = assert_ok(api.get("/v1/leads", headers=bearer(key)))
    assert (body["page"], body["pageSize"], len(body["data"])) == (1, 20, 20)
    assert body["filters"] == {"branch_id": None, "status": None, "search": None}


def test_page_size_over_100_is_clamped(api: httpx.Client, key: str) -> None:
    body = assert_ok(api.get("/v1/leads?pageSize=1000", headers=bearer(key)))
    assert body["pageSize"] == 100


def test_pages_cover_every_lead_once(
    api: httpx.Client, db: psycopg.Connection[Any], world: World, key: str
) -> None:
    total = count(db, "SELECT count(*) FROM leads WHERE tenant_id = %s", world.tenant_id)
    seen: list[str] = []
    page = 1
    while True:
        body = assert_ok(api.get(f"/v1/leads?page={page}&pageSize=7", headers=bearer(key)))
        assert body["total"] == total and body["page"] == page and body["pageSize"] == 7
        if not body["data"]:
            break
        seen += [lead["id"] for lead in body["data"]]
        page += 1
    assert len(seen) == len(set(seen)) == total
    assert page == -(-total // 7) + 1


@pytest.mark.parametrize(
    "query", ["page=0", "page=-1", "page=abc", "page=1.5", "pageSize=0", "pageSize=x", "pageSize=-5"]
)
def test_bad_paging_is_a_validation_error(api: httpx.Client, key: str, query: str) -> None:
    assert_error(api.get(f"/v1/leads?{query}", headers=bearer(key)), 400, "VALIDATION_ERROR")


def test_unknown_parameters_are_ignored(api: httpx.Client, key: str) -> None:
    body = assert_ok(api.get("/v1/leads?limit=1&sort=name&foo=bar", headers=bearer(key)))
    assert body["pageSize"] == 20 and len(body["data"]) == 20


def test_status_filter(api: httpx.Client, db: psycopg.Connection[Any], world: World, key: str) -> None:
    body = assert_ok(api.get("/v1/leads?status=qualified&pageSize=100", headers=bearer(key)))
    assert {lead["status"] for lead in body["data"]} == {"qualified"}
    assert body["total"] == count(
        db, "SELECT count(*) FROM leads WHERE tenant_id = %s AND status = 'qualified'", world.tenant_id
    )
    assert body["filters"]["status"] == "qualified"


def test_unknown_status_is_a_validation_error(api: httpx.Client, key: str) -> None:
    assert_error(api.get("/v1/leads?status=won", headers=bearer(key)), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("search", "expected_phones"),
    [
        ("needle", {"+52819990001", "+52812345678"}),  # name, email; any case
        ("+52819990", {"+52819990001", "+52819990002"}),  # phone
        ("100%_", {"+52819990002"}),  # % and _ are literal, not wildcards
    ],
)
def test_search_matches_name_phone_or_email(
    api: httpx.Client, key: str, search: str, expected_phones: set[str]
) -> None:
    body = assert_ok(api.get("/v1/leads", params={"search": search}, headers=bearer(key)))
    assert {lead["phone"] for lead in body["data"]} == expected_phones
    assert body["filters"]["search"] == search


def test_another_tenants_leads_are_never_listed(api: httpx.Client, world: World, make_key: MakeKey) -> None:
    other_key = make_key(tenant_id=world.other_tenant_id)
    body = assert_ok(api.get("/v1/leads?pageSize=100", headers=bearer(other_key)))
    assert [lead["name"] for lead in body["data"]] == ["Not Yours"]


# --- POST /v1/leads ------------------------------------------------------------------------


def test_created_lead_is_returned_and_listed(api: httpx.Client, world: World, key: str) -> None:
    payload = {"phone": "+528155550001", "name": "Ana Created", "email": "ana@example.test", "source": "web"}
    lead = assert_ok(api.post("/v1/leads", json=payload, headers=bearer(key)), 201)["data"]
    assert (lead["phone"], lead["name"], lead["email"], lead["source"]) == (
        "+528155550001", "Ana Created", "ana@example.test", "web",
    )  # fmt: skip
    assert (lead["status"], lead["tenant_id"], lead["branch_id"]) == ("new", str(world.tenant_id), None)
    listed = assert_ok(api.get("/v1/leads", params={"search": "+528155550001"}, headers=bearer(key)))
    assert [x["id"] for x in listed["data"]] == [lead["id"]]


def test_lead_name_from_first_and_last_name(api: httpx.Client, key: str) -> None:
    payload = {"phone": "+528155550002", "first_name": "Luis", "last_name": "Garza", "status": "contacted"}
    lead = assert_ok(api.post("/v1/leads", json=payload, headers=bearer(key)), 201)["data"]
    assert (lead["name"], lead["status"]) == ("Luis Garza", "contacted")


def test_lead_created_in_a_branch_of_the_tenant(api: httpx.Client, world: World, key: str) -> None:
    payload = {"phone": "+528155550003", "branch_id": str(world.branches[1])}
    lead = assert_ok(api.post("/v1/leads", json=payload, headers=bearer(key)), 201)["data"]
    assert lead["branch_id"] == str(world.branches[1])


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b"",
        b'{"name": "No Phone"}',
        b'{"phone": 5281}',
        b'{"phone": "+5281", "status": "won"}',
        b'{"phone": "+5281", "email": "not-an-email"}',
        b'{"phone": "+5281", "branch_id": "branch-7"}',
    ],
)
def test_invalid_lead_body_is_a_validation_error(api: httpx.Client, key: str, content: bytes) -> None:
    headers = {**bearer(key), "Content-Type": "application/json"}
    assert_error(api.post("/v1/leads", content=content, headers=headers), 400, "VALIDATION_ERROR")


def test_lead_in_another_tenants_branch_is_refused(api: httpx.Client, world: World, key: str) -> None:
    payload = {"phone": "+5281", "branch_id": str(world.other_branch_id)}
    assert_error(api.post("/v1/leads", json=payload, headers=bearer(key)), 400, "VALIDATION_ERROR")


# --- GET /v1/appointments and /v1/branches ------------------------------------------------


def test_appointments_list(api: httpx.Client, db: psycopg.Connection[Any], world: World, key: str) -> None:
    body = assert_ok(api.get("/v1/appointments", headers=bearer(key)))
    expected = [
        str(r[0])
        for r in db.execute(
            "SELECT id FROM appointments WHERE tenant_id = %s ORDER BY scheduled_at DESC, id",
            (world.tenant_id,),
        )
    ]
    assert [a["id"] for a in body["data"]] == expected and body["total"] == len(expected)
    assert set(body["data"][0]) == {
        "id", "tenant_id", "branch_id", "lead_id", "staff_id", "service_id", "scheduled_at",
        "status", "created_at", "updated_at",
    }  # fmt: skip
    assert set(body["filters"]) == {"branch_id", "status", "search"}


def test_appointments_status_filter(api: httpx.Client, key: str) -> None:
    body = assert_ok(api.get("/v1/appointments?status=no_show", headers=bearer(key)))
    assert [a["status"] for a in body["data"]] == ["no_show"]
    assert_error(api.get("/v1/appointments?status=new", headers=bearer(key)), 400, "VALIDATION_ERROR")


def test_branches_list(api: httpx.Client, world: World, key: str) -> None:
    body = assert_ok(api.get("/v1/branches?pageSize=2", headers=bearer(key)))
    assert body["total"] == 3 and body["pageSize"] == 2
    assert [b["id"] for b in body["data"]] == [str(b) for b in world.branches[:2]]  # by name
    assert set(body["data"][0]) == {"id", "tenant_id", "name", "slug", "city", "state", "is_active"}
    page2 = assert_ok(api.get("/v1/branches?pageSize=2&page=2", headers=bearer(key)))
    assert [b["id"] for b in page2["data"]] == [str(world.branches[2])]


# --- routing and server errors -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/leads", "/"])
def test_unknown_route_is_404_without_a_key(api: httpx.Client, path: str) -> None:
    body = assert_error(api.get(path), 404, "NOT_FOUND")
    assert body["error"] == f"Not found: {path}"


def test_wrong_method_is_405(api: httpx.Client, key: str) -> None:
    assert_error(api.delete("/v1/leads", headers=bearer(key)), 405, "METHOD_NOT_ALLOWED")
    assert_error(api.post("/v1/branches", headers=bearer(key), json={}), 405, "METHOD_NOT_ALLOWED")


def test_database_error_is_500_without_details(
    api: httpx.Client, db: psycopg.Connection[Any], key: str
) -> None:
    db.execute("ALTER TABLE appointments RENAME TO appointments_hidden_by_test")
    try:
        response = api.get("/v1/appointments", headers=bearer(key))
    finally:
        db.execute("ALTER TABLE appointments_hidden_by_test RENAME TO appointments")
    body = assert_error(response, 500, "DATABASE_ERROR")
    for leak in ("appointments", "SELECT", "relation", "postgres"):
        assert leak not in body["error"], f"error text leaks {leak!r}: {body['error']}"
    assert_rate_headers(response)


# --- FASE 1: branch_id query parameter -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "column"),
    [("/v1/leads", "branch_id"), ("/v1/appointments", "branch_id"), ("/v1/branches", "id")],
)
def test_branch_filter_narrows_each_list(
    api: httpx.Client, phases: set[str], world: World, key: str, path: str, column: str
) -> None:
    require(phases, "fase1")
    branch = str(world.branches[1])
    response = api.get(path, params={"branch_id": branch, "pageSize": 100}, headers=bearer(key))
    body = assert_ok(response)
    assert body["data"] and {row[column] for row in body["data"]} == {branch}
    assert response.headers["X-Filtered-Branch-ID"] == branch
    assert body["filters"]["branch_id"] == branch
    assert "X-Branch-Filter-Warning" not in response.headers


def test_branch_filter_total_counts_only_that_branch(
    api: httpx.Client, phases: set[str], db: psycopg.Connection[Any], world: World, key: str
) -> None:
    require(phases, "fase1")
    body = assert_ok(api.get("/v1/leads", params={"branch_id": str(world.branches[2])}, headers=bearer(key)))
    assert body["total"] == count(db, "SELECT count(*) FROM leads WHERE branch_id = %s", world.branches[2])


def test_multi_branch_tenant_without_filter_is_warned(api: httpx.Client, phases: set[str], key: str) -> None:
    require(phases, "fase1")
    response = api.get("/v1/leads", headers=bearer(key))
    assert response.headers.get("X-Branch-Filter-Warning")
    assert "X-Filtered-Branch-ID" not in response.headers


def test_single_branch_tenant_is_not_warned(
    api: httpx.Client, phases: set[str], world: World, make_key: MakeKey
) -> None:
    require(phases, "fase1")
    response = api.get("/v1/leads", headers=bearer(make_key(tenant_id=world.other_tenant_id)))
    assert_ok(response)
    assert "X-Branch-Filter-Warning" not in response.headers


@pytest.mark.parametrize("value", ["abc", "123", "6f1c1f0e-0000-0000-0000", "'; DROP TABLE leads; --"])
def test_malformed_branch_id_is_rejected(api: httpx.Client, phases: set[str], key: str, value: str) -> None:
    require(phases, "fase1")
    response = api.get("/v1/leads", params={"branch_id": value}, headers=bearer(key))
    assert_error(response, 400, "INVALID_BRANCH_ID")


@pytest.mark.parametrize("path", LIST_PATHS)
def test_another_tenants_branch_is_denied(
    api: httpx.Client, phases: set[str], world: World, key: str, path: str
) -> None:
    require(phases, "fase1")
    response = api.get(path, params={"branch_id": str(world.other_branch_id)}, headers=bearer(key))
    assert_error(response, 403, "BRANCH_ACCESS_DENIED")


def test_nonexistent_branch_is_denied(api: httpx.Client, phases: set[str], key: str) -> None:
    require(phases, "fase1")
    response = api.get("/v1/leads", params={"branch_id": str(uuid.uuid4())}, headers=bearer(key))
    assert_error(response, 403, "BRANCH_ACCESS_DENIED")


def test_seeded_tenant_key_sees_its_multi_branch_tenant(
    api: httpx.Client, phases: set[str], sandbox: Any, db: psycopg.Connection[Any]
) -> None:
    require(phases, "fase1")
    response = api.get("/v1/leads?pageSize=100", headers=bearer(sandbox.keys["tenant"]))
    body = assert_ok(response)
    assert {lead["tenant_id"] for lead in body["data"]} <= {str(sandbox.tenant_id)}
    assert body["total"] == count(db, "SELECT count(*) FROM leads WHERE tenant_id = %s", sandbox.tenant_id)
    assert response.headers.get("X-Branch-Filter-Warning"), "seeded tenant should have several branches"


# --- FASE 2: branch-scoped keys ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "column"),
    [("/v1/leads", "branch_id"), ("/v1/appointments", "branch_id"), ("/v1/branches", "id")],
)
def test_branch_key_sees_only_its_branch(
    api: httpx.Client, phases: set[str], world: World, make_key: MakeKey, path: str, column: str
) -> None:
    require(phases, "fase2")
    own = str(world.branches[0])
    body = assert_ok(
        api.get(path, params={"pageSize": 100}, headers=bearer(make_key(branch_id=world.branches[0])))
    )
    assert body["data"] and {row[column] for row in body["data"]} == {own}
    assert body["filters"]["branch_id"] == own


def test_branch_key_ignores_another_branch_in_the_query(
    api: httpx.Client, phases: set[str], db: psycopg.Connection[Any], world: World, make_key: MakeKey
) -> None:
    require(phases, "fase2")
    own = world.branches[2]
    response = api.get(
        "/v1/leads", params={"branch_id": str(world.branches[0])}, headers=bearer(make_key(branch_id=own))
    )
    body = assert_ok(response)
    assert {lead["branch_id"] for lead in body["data"]} == {str(own)}
    assert body["total"] == count(db, "SELECT count(*) FROM leads WHERE branch_id = %s", own)
    if "fase1" in phases:
        assert response.headers["X-Filtered-Branch-ID"] == str(own)
        assert "X-Branch-Filter-Warning" not in response.headers


def test_branch_key_creates_leads_in_its_branch(
    api: httpx.Client, phases: set[str], world: World, make_key: MakeKey
) -> None:
    require(phases, "fase2")
    raw = make_key(branch_id=world.branches[1])
    for payload in (
        {"phone": "+528155550010"},
        {"phone": "+528155550011", "branch_id": str(world.branches[0])},
    ):
        lead = assert_ok(api.post("/v1/leads", json=payload, headers=bearer(raw)), 201)["data"]
        assert lead["branch_id"] == str(world.branches[1])


def test_seeded_branch_key_is_confined_to_its_branch(
    api: httpx.Client, phases: set[str], sandbox: Any, db: psycopg.Connection[Any]
) -> None:
    require(phases, "fase2")
    raw = sandbox.keys["branch"]
    row = db.execute(
        "SELECT scope_type, branch_id FROM api_keys WHERE id = %s", (key_id(db, raw),)
    ).fetchone()
    assert row is not None and row[0] == "branch", f"seeded branch key is not branch-scoped: {row}"
    body = assert_ok(api.get("/v1/leads?pageSize=100", headers=bearer(raw)))
    assert {lead["branch_id"] for lead in body["data"]} <= {str(row[1])}
    assert body["total"] == count(db, "SELECT count(*) FROM leads WHERE branch_id = %s", row[1])


def test_converting_a_branch_key_to_tenant_takes_effect_within_seconds(
    api: httpx.Client, phases: set[str], db: psycopg.Connection[Any], world: World, make_key: MakeKey
) -> None:
    """The FASE 2 rollback's data step, seen from a client still running FASE 2 code."""
    require(phases, "fase2")
    raw = make_key(branch_id=world.branches[0])
    tenant_total = count(db, "SELECT count(*) FROM leads WHERE tenant_id = %s", world.tenant_id)
    assert assert_ok(api.get("/v1/leads", headers=bearer(raw)))["total"] < tenant_total
    db.execute(
        "UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL WHERE id = %s", (key_id(db, raw),)
    )
    deadline = time.monotonic() + 5
    while (body := assert_ok(api.get("/v1/leads", headers=bearer(raw))))["total"] != tenant_total:
        assert time.monotonic() < deadline, f"converted key still sees {body['total']} leads after 5 s"
        time.sleep(0.25)
    assert body["filters"]["branch_id"] is None


def test_database_refuses_a_key_on_another_tenants_branch(
    phases: set[str], make_key: MakeKey, world: World
) -> None:
    require(phases, "fase2")
    with pytest.raises(psycopg.errors.CheckViolation, match="does not belong"):
        make_key(branch_id=world.other_branch_id)


def test_database_refuses_a_branch_key_without_a_branch(
    phases: set[str], db: psycopg.Connection[Any], key: str
) -> None:
    require(phases, "fase2")
    with pytest.raises(psycopg.errors.CheckViolation, match="api_keys_branch_scope_consistency"):
        db.execute("UPDATE api_keys SET scope_type = 'branch' WHERE id = %s", (key_id(db, key),))


def test_api_key_has_branch_access(
    phases: set[str], db: psycopg.Connection[Any], world: World, make_key: MakeKey
) -> None:
    require(phases, "fase2")
    tenant_key = key_id(db, make_key())
    branch_key = key_id(db, make_key(branch_id=world.branches[0]))

    def access(k: uuid.UUID, b: uuid.UUID) -> bool:
        row = db.execute("SELECT api_key_has_branch_access(%s, %s)", (k, b)).fetchone()
        return bool(row and row[0])

    assert access(tenant_key, world.branches[1]) and not access(tenant_key, world.other_branch_id)
    assert access(branch_key, world.branches[0]) and not access(branch_key, world.branches[1])


# --- FASE 3: response cache and database objects -------------------------------------------


@pytest.mark.parametrize("path", LIST_PATHS)
def test_list_responses_are_cached(api: httpx.Client, phases: set[str], key: str, path: str) -> None:
    require(phases, "fase3")
    first, second = (api.get(path, headers=bearer(key)) for _ in range(2))
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert first.json() == second.json()
    other_query = api.get(path, params={"page": 2}, headers=bearer(key))
    assert other_query.headers["X-Cache"] == "MISS"


def test_cache_hit_has_current_rate_limit_headers(
    api: httpx.Client, phases: set[str], make_key: MakeKey
) -> None:
    require(phases, "fase3")
    raw = make_key(rpm=50)
    wait_for_fresh_minute()
    miss, hit = (api.get("/v1/branches", headers=bearer(raw)) for _ in range(2))
    assert hit.headers["X-Cache"] == "HIT"
    assert int(hit.headers["X-RateLimit-Remaining"]) == int(miss.headers["X-RateLimit-Remaining"]) - 1


def test_cache_is_per_key(api: httpx.Client, phases: set[str], make_key: MakeKey) -> None:
    require(phases, "fase3")
    assert api.get("/v1/branches", headers=bearer(make_key())).headers["X-Cache"] == "MISS"
    assert api.get("/v1/branches", headers=bearer(make_key())).headers["X-Cache"] == "MISS"


def test_creating_a_lead_invalidates_cached_leads(
    api: httpx.Client, phases: set[str], key: str, make_key: MakeKey
) -> None:
    require(phases, "fase3")
    other_key_same_tenant = make_key()
    before = assert_ok(api.get("/v1/leads", headers=bearer(key)))
    api.get("/v1/leads", headers=bearer(other_key_same_tenant))
    assert api.get("/v1/leads", headers=bearer(key)).headers["X-Cache"] == "HIT"
    lead = assert_ok(api.post("/v1/leads", json={"phone": "+528155550020"}, headers=bearer(key)), 201)
    for raw in (key, other_key_same_tenant):
        after = api.get("/v1/leads", headers=bearer(raw))
        assert after.headers["X-Cache"] == "MISS"
        assert after.json()["total"] == before["total"] + 1
        assert lead["data"]["id"] in [x["id"] for x in after.json()["data"]]
    assert api.get("/v1/branches", headers=bearer(key)).headers["X-Cache"] == "MISS"  # first time


def test_validation_still_runs_on_cached_paths(api: httpx.Client, phases: set[str], key: str) -> None:
    require(phases, "fase3")
    for _ in range(2):
        assert_error(api.get("/v1/leads?page=0", headers=bearer(key)), 400, "VALIDATION_ERROR")


def test_fase3_indexes_are_present_and_valid(phases: set[str], db: psycopg.Connection[Any]) -> None:
    require(phases, "fase3")
    rows = db.execute("SELECT index_name, is_present, is_valid FROM validate_fase3_indexes()").fetchall()
    assert len(rows) == 12
    assert [r[0] for r in rows if not (r[1] and r[2])] == []


def test_fase3_functions_and_views_answer(
    phases: set[str], db: psycopg.Connection[Any], world: World
) -> None:
    require(phases, "fase3")
    db.execute(
        "INSERT INTO inventory_items (id, tenant_id, branch_id, name, quantity, min_quantity)"
        " VALUES (%s, %s, %s, 'Gloves', 2, 10), (%s, %s, %s, 'Masks', 50, 10)",
        (uuid.uuid4(), world.tenant_id, world.branches[0], uuid.uuid4(), world.tenant_id, world.branches[0]),
    )
    low = db.execute(
        "SELECT name, shortfall FROM get_low_stock_items(%s, NULL)", (world.tenant_id,)
    ).fetchall()
    assert low == [("Gloves", 8)]
    db.execute("SELECT refresh_branch_performance_metrics()")
    stats = db.execute(
        "SELECT branch_id, leads_total FROM get_branch_stats_summary(%s, %s)",
        (world.tenant_id, world.branches[2]),
    ).fetchall()
    assert stats == [
        (world.branches[2], count(db, "SELECT count(*) FROM leads WHERE branch_id = %s", world.branches[2]))
    ]
    freshness = db.execute("SELECT age FROM vw_cache_freshness").fetchone()
    assert freshness is not None and freshness[0] < timedelta(minutes=1)
    db.execute("SELECT * FROM vw_fase3_index_usage").fetchall()


def _names_created_by(migration: Path) -> dict[str, set[str]]:
    text = migration.read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    patterns = {
        "index": r"CREATE\s+INDEX\s+(\w+)",
        "function": r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+)",
        "relation": r"CREATE\s+(?:MATERIALIZED\s+)?VIEW\s+(\w+)",
        "trigger": r"CREATE\s+TRIGGER\s+(\w+)",
    }
    for kind, pattern in patterns.items():
        found[kind] = set(re.findall(pattern, text, flags=re.IGNORECASE))
    return found


def _existing(db: psycopg.Connection[Any], names: dict[str, set[str]]) -> set[str]:
    present: set[str] = set()
    for name in names["index"] | names["relation"]:
        if (row := db.execute("SELECT to_regclass(%s)", (name,)).fetchone()) and row[0]:
            present.add(name)
    for name in names["function"]:
        if count(db, "SELECT count(*) FROM pg_proc WHERE proname = %s", name):
            present.add(name)
    for name in names["trigger"]:
        if count(db, "SELECT count(*) FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal", name):
            present.add(name)
    return present


@pytest.mark.parametrize(
    ("up", "down"),
    [
        ("030_fase3_performance.sql", "030_fase3_performance.down.sql"),
        ("020_fase2_branch_keys.sql", "020_fase2_branch_keys.down.sql"),
    ],
)
def test_down_migration_drops_everything_up_created(
    phases: set[str], sandbox: Any, db: psycopg.Connection[Any], up: str, down: str
) -> None:
    """Runs the down migration(s) in a transaction that is rolled back: the sandbox keeps them."""
    require(phases, "fase2", "fase3")
    migrations = Path(sandbox.repo) / "migrations"
    names = _names_created_by(migrations / up)
    everything = set().union(*names.values())
    assert _existing(db, names) == everything, "the up migration's objects should all exist"
    downs = ["030_fase3_performance.down.sql", down] if up.startswith("020") else [down]
    with pytest.raises(_RolledBack), db.transaction():
        db.execute("SET LOCAL lock_timeout = '5s'")
        for name in dict.fromkeys(downs):
            db.execute((migrations / name).read_text(encoding="utf-8"))
        left = _existing(db, names)
        if up.startswith("020"):
            cols = db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_keys'"
                " AND column_name IN ('branch_id', 'scope_type', 'branch_context')"
            ).fetchall()
            left |= {c[0] for c in cols}
            left |= {n for n in ("api_keys_branch_scope_consistency",)
                     if count(db, "SELECT count(*) FROM pg_constraint WHERE conname = %s", n)}  # fmt: skip
        assert left == set(), f"{down} left behind: {sorted(left)}"
        raise _RolledBack
    assert _existing(db, names) == everything, "rollback of the test transaction failed"


class _RolledBack(Exception):
    """Raised to roll back a transaction on purpose."""


# --- chaos (sandbox fault injection) -------------------------------------------------------


def test_chaos_errors_hit_only_the_listed_paths(
    api: httpx.Client, db: psycopg.Connection[Any], sandbox: Any, key: str
) -> None:
    agent = f"chaos-test-{secrets.token_hex(4)}"
    with sandbox.chaos(error_rate=1.0, paths=["/v1/leads"]):
        response = api.get("/v1/leads", headers={**bearer(key), "User-Agent": agent})
        assert_ok(api.get("/v1/branches", headers=bearer(key)))
    assert_error(response, 500, "DATABASE_ERROR")
    assert_rate_headers(response)
    assert [(r["status_code"], r["error_code"]) for r in usage_rows(db, agent)] == [(500, "DATABASE_ERROR")]
    assert_ok(api.get("/v1/leads", headers=bearer(key)))


def test_chaos_error_rate_is_a_share_of_requests(api: httpx.Client, sandbox: Any, key: str) -> None:
    with sandbox.chaos(error_rate=0.5):
        statuses = [api.get("/v1/branches", headers=bearer(key)).status_code for _ in range(40)]
    assert set(statuses) <= {200, 500}
    assert 5 <= statuses.count(500) <= 35, statuses  # P(outside) < 1e-5 for a fair coin


def test_chaos_latency_slows_matching_requests(api: httpx.Client, sandbox: Any, key: str) -> None:
    # a long latency: a request of another path answers far inside it even on a loaded machine,
    # and a matching one can never answer sooner than it (the server sleeps it first)
    with sandbox.chaos(latency_ms=3000, paths=["/v1/branches"]):
        started = time.perf_counter()
        assert_ok(api.get("/v1/branches", headers=bearer(key)))
        slow = time.perf_counter() - started
        started = time.perf_counter()
        assert_ok(api.get("/v1/appointments", headers=bearer(key)))
        fast = time.perf_counter() - started
    assert slow >= 3.0 and fast < 3.0, f"branches {slow:.2f} s, appointments {fast:.2f} s"


def test_chaos_can_fail_the_health_database_check(api: httpx.Client, sandbox: Any) -> None:
    with sandbox.chaos(health="db_error"):
        response = api.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded" and response.json()["database"] == "error"
    assert assert_ok(api.get("/health"))["database"] == "ok"


# --- reverting a phase's commit removes its behaviour (restarts the server) ----------------


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=platform-tests", "-c", "user.email=tests@example.invalid", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def reverted(sandbox: Any) -> Iterator[Callable[..., None]]:
    """Revert phases' commits in the sandbox checkout, build and deploy; undone after the test."""
    repo = Path(sandbox.repo)
    original = _git(repo, "rev-parse", "HEAD")
    assert _git(repo, "status", "--porcelain") == "", "sandbox checkout has local changes"

    def revert(*phases: str) -> None:
        for phase in phases:
            # Newest first, as a phase may span several commits.
            commits = _git(repo, "log", "--format=%H", f"--grep=^Rollback-Phase: {phase}$").split()
            assert commits, f"no commit with the trailer Rollback-Phase: {phase}"
            _git(repo, "revert", "--no-edit", *commits)
            assert not (repo / EXT_FILES[phase]).exists()
        build = subprocess.run(
            [sys.executable, "build.py"], cwd=repo, capture_output=True, text=True, check=False
        )
        assert build.returncode == 0, f"build failed after reverting {phases}: {build.stderr}"
        assert _git(repo, "status", "--porcelain") == "", "build.py wrote into the checkout"
        sandbox.deploy()

    yield revert
    if _git(repo, "rev-parse", "HEAD") != original or _git(repo, "status", "--porcelain"):
        _git(repo, "reset", "--hard", original)
        sandbox.deploy()


@pytest.mark.slow
def test_fase1_revert_makes_branch_id_ignored_again(
    api: httpx.Client, phases: set[str], db: psycopg.Connection[Any], world: World, key: str,
    reverted: Callable[..., None],
) -> None:  # fmt: skip
    require(phases, "fase1")
    reverted("fase1")
    total = count(db, "SELECT count(*) FROM leads WHERE tenant_id = %s", world.tenant_id)
    for value in ("not-a-uuid", str(world.other_branch_id), str(world.branches[0])):
        response = api.get("/v1/leads", params={"branch_id": value}, headers=bearer(key))
        body = assert_ok(response)
        assert body["total"] == total and body["filters"]["branch_id"] is None
        assert "X-Filtered-Branch-ID" not in response.headers
        assert "X-Branch-Filter-Warning" not in response.headers


@pytest.mark.slow
def test_branch_keys_stay_confined_when_only_fase1_is_reverted(
    api: httpx.Client, phases: set[str], world: World, make_key: MakeKey,
    reverted: Callable[..., None],
) -> None:  # fmt: skip
    require(phases, "fase1", "fase2")
    raw = make_key(branch_id=world.branches[1])
    reverted("fase1")
    response = api.get("/v1/leads", params={"branch_id": str(world.branches[0])}, headers=bearer(raw))
    body = assert_ok(response)
    assert {lead["branch_id"] for lead in body["data"]} == {str(world.branches[1])}
    assert "X-Filtered-Branch-ID" not in response.headers


@pytest.mark.slow
def test_fase2_revert_makes_branch_keys_tenant_wide(
    api: httpx.Client, phases: set[str], db: psycopg.Connection[Any], world: World,
    make_key: MakeKey, reverted: Callable[..., None],
) -> None:  # fmt: skip
    require(phases, "fase2")
    raw = make_key(branch_id=world.branches[0])  # the FASE 2 columns stay in the database
    reverted("fase2")
    body = assert_ok(api.get("/v1/leads", headers=bearer(raw)))
    assert body["total"] == count(db, "SELECT count(*) FROM leads WHERE tenant_id = %s", world.tenant_id)
    lead = assert_ok(api.post("/v1/leads", json={"phone": "+528155550030"}, headers=bearer(raw)), 201)
    assert lead["data"]["branch_id"] is None


@pytest.mark.slow
def test_fase3_revert_removes_the_cache(
    api: httpx.Client, phases: set[str], key: str, reverted: Callable[..., None]
) -> None:
    require(phases, "fase3")
    reverted("fase3")
    for _ in range(2):
        response = api.get("/v1/branches", headers=bearer(key))
        assert_ok(response)
        assert "X-Cache" not in response.headers


@pytest.mark.slow
def test_reverting_every_phase_leaves_a_working_baseline(
    api: httpx.Client, db: psycopg.Connection[Any], world: World, make_key: MakeKey,
    reverted: Callable[..., None],
) -> None:  # fmt: skip
    branch_key = make_key(branch_id=world.branches[0])
    reverted("fase3", "fase2", "fase1")
    assert assert_ok(api.get("/health"))["database"] == "ok"
    total = count(db, "SELECT count(*) FROM leads WHERE tenant_id = %s", world.tenant_id)
    for path in LIST_PATHS:
        response = api.get(path, params={"branch_id": "legacy-client"}, headers=bearer(branch_key))
        body = assert_ok(response)
        assert body["filters"]["branch_id"] is None
        assert not {"X-Cache", "X-Filtered-Branch-ID", "X-Branch-Filter-Warning"} & set(response.headers)
        assert_rate_headers(response)
    assert assert_ok(api.get("/v1/leads", headers=bearer(branch_key)))["total"] == total
    assert_ok(api.post("/v1/leads", json={"phone": "+528155550040"}, headers=bearer(branch_key)), 201)
