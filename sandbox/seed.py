"""Deterministic seed data for the sandbox: the same seed gives the same rows and the same keys.

Shape, by default: 50 tenants, 18% of them with 2-5 branches (the others one), leads,
appointments, staff, inventory and usage logs per branch, and API keys of every kind: tenant-wide,
branch-scoped (FASE 2), revoked, expired and test-environment. Tenant 0 is multi-branch and
holds the known test keys that the sandbox exports. Rows go in with COPY; `grow_keys` adds
bulk keys with one set-based INSERT, so a million keys take seconds, not hours.

Two shapes of schema: "contract" (the platform as its API reference describes it, the default)
and "tistis" (the platform as its repository has it, on Supabase: auth.users and user_roles,
key names unique per tenant, created_by required, usage counters, soft-deleted leads, uuid
usage logs). The tistis rows go in through the real triggers (COPY fires them), so the branch
trigger writes each branch key's branch_context.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
ALL_SCOPES = ["leads:read", "leads:write", "appointments:read", "branches:read"]
READ_SCOPES = ["leads:read", "appointments:read", "branches:read"]
_ALPHABET = string.ascii_letters + string.digits
_CITIES = [("Monterrey", "NL"), ("Guadalajara", "JAL"), ("Puebla", "PUE"), ("Querétaro", "QRO"),
           ("Mérida", "YUC"), ("León", "GTO"), ("Toluca", "MEX"), ("Tijuana", "BC")]
_FIRST = ["Ana", "Luis", "María", "José", "Sofía", "Carlos", "Lucía", "Jorge", "Elena", "Diego"]
_LAST = ["García", "López", "Martínez", "Hernández", "Pérez", "Sánchez", "Ramírez", "Torres"]
_VERTICALS = ["clinic", "restaurant", "shop"]
APPOINTMENT_STATUSES = ["scheduled", "confirmed", "completed", "cancelled", "no_show"]
SHAPES = ("contract", "tistis")
# the tistis CHECK lists (migration 001); leads.source has no 'api'
TISTIS_LEAD_STATUSES = ["new", "new", "contacted", "qualified", "appointment_scheduled", "converted",
                        "lost", "inactive"]
TISTIS_LEAD_SOURCES = ["whatsapp", "whatsapp", "instagram", "facebook", "website", "phone", "walk_in",
                       "referral", "other"]
_TISTIS_CLIENTS: list[str | None] = [None, "tistis-pos/2.3.1", "python-requests/2.32.3", "axios/1.7.2",
                                     "Zapier", "n8n/1.45.0"]


@dataclass
class KnownKeys:
    """Raw keys of tenant 0 that the sandbox exports for checks and tests. Secrets."""

    tenant: str = ""
    branch: str = ""
    revoked: str = ""
    expired: str = ""
    test_env: str = ""

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class SeedSummary:
    tenants: int = 0
    multi_branch_tenants: int = 0
    branches: int = 0
    leads: int = 0
    appointments: int = 0
    keys: int = 0
    branch_keys: int = 0
    usage_logs: int = 0
    test_tenant_id: str = ""
    test_branch_id: str = ""
    known: KnownKeys = field(default_factory=KnownKeys)


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def raw_key(self, environment: str) -> str:
        return f"tis_{environment}_" + "".join(self.rng.choices(_ALPHABET, k=32))

    def when(self, days: int) -> datetime:
        return EPOCH + timedelta(minutes=self.rng.randint(0, days * 24 * 60))


def _ascii(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def key_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _copy(cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    count = 0
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown schema shape {shape!r}: expected one of {', '.join(SHAPES)}")


def seed(conn: psycopg.Connection[Any], *, tenants: int = 50, seed_value: int = 42,
         shape: str = "contract") -> SeedSummary:
    """Insert the seed rows in one transaction. The schema must be at FASE 3 (FASE 2 columns).

    `shape` names the schema: "contract" (the default) or "tistis" (see the module's docstring).
    """
    _check_shape(shape)
    if shape == "tistis":
        return _seed_tistis(conn, tenants=tenants, seed_value=seed_value)
    gen = _Gen(seed_value)
    now = datetime.now(UTC)
    summary = SeedSummary(tenants=tenants)
    multi = max(1, round(tenants * 0.18))
    tenant_rows, branch_rows, lead_rows, appt_rows, staff_rows, sb_rows, inv_rows = ([] for _ in range(7))
    key_rows: list[tuple[Any, ...]] = []
    branches_of: dict[str, list[str]] = {}

    def add_key(tenant_id: str, name: str, *, environment: str = "live", scopes: list[str] | None = None,
                branch_id: str | None = None, rpm: int = 60, daily: int = 10000, active: bool = True,
                expired: bool = False) -> str:
        raw = gen.raw_key(environment)
        created = gen.when(20)
        key_rows.append((
            gen.uuid(), tenant_id, name, key_hash(raw), raw[-4:], f"tis_{environment}_", environment,
            json.dumps(scopes or READ_SCOPES), rpm, daily,
            (now - timedelta(days=1)) if expired else None,
            active, None if active else created + timedelta(days=3),
            None if active else "rotated by tenant admin",
            "branch" if branch_id else "tenant", branch_id,
            json.dumps({"seeded": True}), created, created,
        ))
        return raw

    for t in range(tenants):
        tenant_id = gen.uuid()
        vertical = _VERTICALS[t % 3]
        tenant_rows.append((tenant_id, f"Sandbox {vertical.title()} {t:03d}", f"sandbox-{t:03d}",
                            vertical, ["starter", "growth", "enterprise"][t % 3], "active", gen.when(5)))
        n_branches = (3 if t == 0 else gen.rng.randint(2, 5)) if t < multi else 1
        branch_ids = []
        for b in range(n_branches):
            branch_id = gen.uuid()
            city, state = gen.rng.choice(_CITIES)
            branch_rows.append((branch_id, tenant_id, f"{city} {b + 1}", f"{city.lower()}-{b + 1}",
                                city, state, True, b == 0, gen.when(5)))
            branch_ids.append(branch_id)
        branches_of[tenant_id] = branch_ids
        staff_ids = [gen.uuid() for _ in range(gen.rng.randint(2, 4))]
        for s, staff_id in enumerate(staff_ids):
            staff_rows.append((staff_id, tenant_id, f"{gen.rng.choice(_FIRST)} {gen.rng.choice(_LAST)}",
                               "staff" if s else "manager"))
            for branch_id in gen.rng.sample(branch_ids, k=min(len(branch_ids), gen.rng.randint(1, 2))):
                sb_rows.append((staff_id, branch_id))
        for branch_id in branch_ids:
            lead_ids = []
            for _ in range(gen.rng.randint(15, 40)):
                first, last = gen.rng.choice(_FIRST), gen.rng.choice(_LAST)
                lead_id, created = gen.uuid(), gen.when(25)
                lead_rows.append((lead_id, tenant_id, branch_id, first, last, f"{first} {last}",
                                  f"+52{gen.rng.randint(10**9, 10**10 - 1)}",
                                  f"{_ascii(first)}.{gen.rng.randint(1, 9999)}@example.com",
                                  gen.rng.choice(["new", "new", "contacted", "qualified", "lost"]),
                                  gen.rng.choice(["hot", "warm", "cold"]),
                                  gen.rng.choice(["api", "whatsapp", "web", "referral"]), created, created))
                lead_ids.append(lead_id)
            for _ in range(gen.rng.randint(8, 20)):
                created = gen.when(25)
                appt_rows.append((gen.uuid(), tenant_id, branch_id, gen.rng.choice(lead_ids),
                                  gen.rng.choice(staff_ids), gen.uuid(),
                                  created + timedelta(days=gen.rng.randint(1, 30)),
                                  gen.rng.choice(APPOINTMENT_STATUSES),
                                  created, created))
            for item in ("gloves", "syringes", "napkins"):
                inv_rows.append((gen.uuid(), tenant_id, branch_id, item, gen.rng.randint(0, 50), 10))

        if t == 0:
            summary.test_tenant_id, summary.test_branch_id = tenant_id, branch_ids[0]
            rpm, daily = 1000, 1_000_000  # the checks send hundreds of requests a minute
            known = summary.known
            known.tenant = add_key(tenant_id, "Sandbox tenant-wide test key", scopes=ALL_SCOPES,
                                   rpm=rpm, daily=daily)
            known.branch = add_key(tenant_id, "Sandbox branch test key", scopes=ALL_SCOPES,
                                   branch_id=branch_ids[0], rpm=rpm, daily=daily)
            known.revoked = add_key(tenant_id, "Sandbox revoked key", active=False)
            known.expired = add_key(tenant_id, "Sandbox expired key", expired=True)
            known.test_env = add_key(tenant_id, "Sandbox test-environment key", environment="test",
                                     scopes=ALL_SCOPES, rpm=rpm, daily=daily)
        add_key(tenant_id, "Production integration", scopes=ALL_SCOPES)
        if len(branch_ids) > 1:
            for branch_id in branch_ids:
                add_key(tenant_id, "Branch POS integration", branch_id=branch_id)
        if t % 7 == 3:
            add_key(tenant_id, "Old integration", active=False)
        if t % 11 == 5:
            add_key(tenant_id, "Trial integration", expired=True)
        if t % 5 == 2:
            add_key(tenant_id, "Staging integration", environment="test")

    with conn.cursor() as cur:
        _copy(cur, "tenants", ["id", "name", "slug", "vertical", "plan", "status", "created_at"], tenant_rows)
        summary.branches = _copy(cur, "branches", ["id", "tenant_id", "name", "slug", "city", "state",
                                                   "is_active", "is_headquarters", "created_at"], branch_rows)
        _copy(cur, "staff", ["id", "tenant_id", "display_name", "role"], staff_rows)
        _copy(cur, "staff_branches", ["staff_id", "branch_id"], sb_rows)
        summary.leads = _copy(cur, "leads", ["id", "tenant_id", "branch_id", "first_name", "last_name",
                                             "full_name", "phone", "email", "status", "classification",
                                             "source", "created_at", "updated_at"], lead_rows)
        summary.appointments = _copy(cur, "appointments", [
            "id", "tenant_id", "branch_id", "lead_id", "staff_id", "service_id", "scheduled_at",
            "status", "created_at", "updated_at"], appt_rows)
        _copy(cur, "inventory_items", ["id", "tenant_id", "branch_id", "name", "quantity", "min_quantity"],
              inv_rows)
        summary.keys = _copy(cur, "api_keys", [
            "id", "tenant_id", "name", "key_hash", "key_hint", "key_prefix", "environment", "scopes",
            "rate_limit_rpm", "rate_limit_daily", "expires_at", "is_active", "revoked_at",
            "revoke_reason", "scope_type", "branch_id", "metadata", "created_at", "updated_at"], key_rows)
        summary.branch_keys = sum(1 for row in key_rows if row[14] == "branch")
        summary.usage_logs = _copy(cur, "api_key_usage_logs", [
            "api_key_id", "tenant_id", "endpoint", "method", "scope_used", "request_path",
            "status_code", "response_time_ms", "error_code", "created_at"], _usage_rows(gen, key_rows, now))
    summary.multi_branch_tenants = multi
    return summary


def _usage_rows(gen: _Gen, key_rows: list[tuple[Any, ...]], now: datetime) -> Iterable[tuple[Any, ...]]:
    """Historical traffic over the last day, ending 30 minutes ago: the recent window stays for
    the real requests made after start-up."""
    endpoints = [("/v1/leads", "leads:read"), ("/v1/appointments", "appointments:read"),
                 ("/v1/branches", "branches:read")]
    for row in key_rows:
        if not row[11]:
            continue
        for _ in range(gen.rng.randint(2, 8)):
            endpoint, scope = gen.rng.choice(endpoints)
            status = gen.rng.choices([200, 401, 429, 500], weights=[95, 2, 2, 1])[0]
            code = {401: "UNAUTHORIZED", 429: "RATE_LIMIT_EXCEEDED", 500: "DATABASE_ERROR"}.get(status)
            yield (row[0], row[1], endpoint, "GET", scope, endpoint, status, gen.rng.randint(20, 400),
                   code, now - timedelta(minutes=gen.rng.randint(30, 24 * 60)))


def grow_keys(conn: psycopg.Connection[Any], total: int, seed_value: int = 42,
              shape: str = "contract") -> int:
    """Add bulk keys until `api_keys` holds `total` rows; about 20% of them branch-scoped.

    One INSERT ... SELECT over generate_series: each row's tenant (and branch, for every fifth
    row) is picked by index from the seeded tenants and multi-branch branches. Raw keys of bulk
    rows are never known. Returns the number of rows added. For the "tistis" shape each key is
    created by its tenant's owner (user_roles), and numbering continues after the keys already
    there, so that names and digests stay unique when keys are grown twice.
    """
    _check_shape(shape)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM api_keys")
        row = cur.fetchone()
        present = row[0] if row else 0
        missing = total - present
        if missing <= 0:
            return 0
        if shape == "tistis":
            return _grow_tistis_keys(cur, present, missing, seed_value)
        cur.execute(
            """
            WITH t AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM tenants),
                 b AS (SELECT b.id, b.tenant_id, row_number() OVER (ORDER BY b.id) - 1 AS n
                       FROM branches b
                       WHERE (SELECT count(*) FROM branches x WHERE x.tenant_id = b.tenant_id) > 1),
                 counts AS (SELECT (SELECT count(*) FROM t) AS nt, (SELECT count(*) FROM b) AS nb),
                 s AS (SELECT i, (i %% 5 = 0 AND nb > 0) AS is_branch, nt, nb
                       FROM generate_series(1, %(missing)s) AS i, counts)
            INSERT INTO api_keys (id, tenant_id, name, key_hash, key_hint, key_prefix, environment,
                                  scopes, scope_type, branch_id, metadata, created_at, updated_at)
            SELECT gen_random_uuid(),
                   CASE WHEN s.is_branch THEN b.tenant_id ELSE t.id END,
                   'Bulk key ' || s.i,
                   encode(sha256(convert_to('bulk-' || %(seed)s || '-' || s.i, 'UTF8')), 'hex'),
                   lpad((s.i %% 10000)::text, 4, '0'),
                   'tis_live_', 'live', %(scopes)s::jsonb,
                   CASE WHEN s.is_branch THEN 'branch' ELSE 'tenant' END,
                   CASE WHEN s.is_branch THEN b.id END,
                   '{"bulk": true}'::jsonb, %(epoch)s, %(epoch)s
            FROM s
            JOIN t ON t.n = s.i %% s.nt
            LEFT JOIN b ON s.is_branch AND b.n = (s.i / 5) %% s.nb
            """,
            {"missing": missing, "seed": seed_value, "scopes": json.dumps(READ_SCOPES), "epoch": EPOCH},
        )
        return cur.rowcount


# --------------------------------------------------------------------------------------------
# The "tistis" shape: the platform as its repository has it (Supabase)
# --------------------------------------------------------------------------------------------

@dataclass
class _TistisKey:
    id: str
    tenant_id: str
    created_by: str
    name: str
    raw: str
    environment: str
    scopes: list[str]
    rpm: int
    daily: int
    expires_at: datetime | None
    active: bool
    revoked_at: datetime | None
    branch_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    usage_count: int
    usage_today: int
    ip: str | None
    user_agent: str | None

    def row(self) -> tuple[Any, ...]:
        return (
            self.id, self.tenant_id, self.created_by, self.name, key_hash(self.raw), self.raw[-4:],
            f"tis_{self.environment}_", self.environment, json.dumps(self.scopes), self.rpm, self.daily,
            self.expires_at, self.last_used_at, self.ip,
            "/api/v1/leads" if self.last_used_at else None,
            self.usage_count, self.usage_today,
            (self.last_used_at or self.created_at).date(),
            self.active, self.revoked_at, None if self.active else self.created_by,
            None if self.active else "rotated by tenant admin",
            "branch" if self.branch_id else "tenant", self.branch_id,
            json.dumps({"seeded": True}), self.created_at, self.created_at,
        )


_TISTIS_KEY_COLUMNS = [
    "id", "tenant_id", "created_by", "name", "key_hash", "key_hint", "key_prefix", "environment",
    "scopes", "rate_limit_rpm", "rate_limit_daily", "expires_at", "last_used_at", "last_used_ip",
    "last_used_endpoint", "usage_count", "usage_count_today", "usage_reset_date", "is_active",
    "revoked_at", "revoked_by", "revoke_reason", "scope_type", "branch_id", "metadata", "created_at",
    "updated_at",
]


def _seed_tistis(conn: psycopg.Connection[Any], *, tenants: int, seed_value: int) -> SeedSummary:
    """The seed of the "tistis" shape: the same tenants, branches and kinds of keys as the
    contract's, in the columns and CHECK lists of the platform's real migrations."""
    gen = _Gen(seed_value)
    now = datetime.now(UTC)
    summary = SeedSummary(tenants=tenants)
    multi = max(1, round(tenants * 0.18))
    tenant_rows, user_rows, role_rows, branch_rows, lead_rows, appt_rows, staff_rows, sb_rows, inv_rows = (
        [] for _ in range(9))
    keys: list[_TistisKey] = []

    def add_key(tenant_id: str, owner_id: str, name: str, *, environment: str = "live",
                scopes: list[str] | None = None, branch_id: str | None = None, rpm: int = 60,
                daily: int = 10000, active: bool = True, expired: bool = False, used: bool = True) -> str:
        raw = gen.raw_key(environment)
        created = gen.when(20)
        revoked_at = None if active else created + timedelta(days=3)
        if not used:
            last_used, count, today = None, 0, 0
        elif revoked_at is not None:
            last_used = revoked_at - timedelta(minutes=gen.rng.randint(10, 3 * 24 * 60))
            count, today = gen.rng.randint(50, 5000), gen.rng.randint(1, 80)
        else:
            last_used = now - timedelta(minutes=gen.rng.randint(31, 36 * 60))
            count, today = gen.rng.randint(100, 50000), gen.rng.randint(1, 400)
        keys.append(_TistisKey(
            id=gen.uuid(), tenant_id=tenant_id, created_by=owner_id, name=name, raw=raw,
            environment=environment, scopes=scopes or READ_SCOPES, rpm=rpm, daily=daily,
            expires_at=(now - timedelta(days=1)) if expired else None, active=active,
            revoked_at=revoked_at, branch_id=branch_id, created_at=created,
            last_used_at=max(last_used, created) if last_used else None,
            usage_count=count, usage_today=today,
            ip=f"203.0.113.{gen.rng.randint(1, 254)}" if used else None,
            user_agent=gen.rng.choice(_TISTIS_CLIENTS),
        ))
        return raw

    for t in range(tenants):
        tenant_id, owner_id = gen.uuid(), gen.uuid()
        vertical = _VERTICALS[t % 3]
        created = gen.when(5)
        tenant_rows.append((tenant_id, f"Sandbox {vertical.title()} {t:03d}", f"sandbox-{t:03d}",
                            vertical, ["starter", "growth", "enterprise"][t % 3], "active", created, created))
        user_rows.append((owner_id, f"owner@sandbox-{t:03d}.example.com", created))
        role_rows.append((gen.uuid(), owner_id, tenant_id, "owner", created))
        n_branches = (3 if t == 0 else gen.rng.randint(2, 5)) if t < multi else 1
        branches: list[tuple[str, str]] = []
        for b in range(n_branches):
            branch_id = gen.uuid()
            city, state = gen.rng.choice(_CITIES)
            slug = f"{_ascii(city).replace(' ', '-')}-{b + 1}"
            branch_created = gen.when(5)
            branch_rows.append((branch_id, tenant_id, f"{city} {b + 1}", slug, city, state,
                                f"Av. Juárez {gen.rng.randint(1, 999)}, {city}", True, b == 0,
                                branch_created, branch_created))
            branches.append((branch_id, slug))
        branch_ids = [branch_id for branch_id, _ in branches]
        staff_ids = [gen.uuid() for _ in range(gen.rng.randint(2, 4))]
        for s, staff_id in enumerate(staff_ids):
            staff_rows.append((staff_id, tenant_id, f"{gen.rng.choice(_FIRST)} {gen.rng.choice(_LAST)}",
                               "staff" if s else "manager", True))
            for branch_id in gen.rng.sample(branch_ids, k=min(len(branch_ids), gen.rng.randint(1, 2))):
                sb_rows.append((staff_id, branch_id))
        for branch_id in branch_ids:
            lead_ids = []
            for _ in range(gen.rng.randint(15, 40)):
                first, last = gen.rng.choice(_FIRST), gen.rng.choice(_LAST)
                lead_id, lead_created = gen.uuid(), gen.when(25)
                deleted = (lead_created + timedelta(days=gen.rng.randint(1, 10))
                           if gen.rng.random() < 0.05 else None)
                lead_rows.append((lead_id, tenant_id, branch_id, first, last, f"{first} {last}",
                                  f"+52{gen.rng.randint(10**9, 10**10 - 1)}",
                                  f"{_ascii(first)}.{gen.rng.randint(1, 9999)}@example.com",
                                  gen.rng.choice(TISTIS_LEAD_STATUSES),
                                  gen.rng.choice(["hot", "warm", "cold"]),
                                  gen.rng.choice(TISTIS_LEAD_SOURCES), deleted, lead_created,
                                  deleted or lead_created))
                lead_ids.append(lead_id)
            for _ in range(gen.rng.randint(8, 20)):
                appt_created = gen.when(25)
                appt_rows.append((gen.uuid(), tenant_id, branch_id, gen.rng.choice(lead_ids),
                                  gen.rng.choice(staff_ids), gen.uuid(),
                                  appt_created + timedelta(days=gen.rng.randint(1, 30)),
                                  gen.rng.choice([30, 45, 60]), gen.rng.choice(APPOINTMENT_STATUSES),
                                  appt_created, appt_created))
            for item in ("gloves", "syringes", "napkins"):
                inv_rows.append((gen.uuid(), tenant_id, branch_id, item, gen.rng.randint(0, 50), 10))

        if t == 0:
            summary.test_tenant_id, summary.test_branch_id = tenant_id, branch_ids[0]
            rpm, daily = 1000, 1_000_000  # the checks send hundreds of requests a minute
            known = summary.known
            known.tenant = add_key(tenant_id, owner_id, "Sandbox tenant-wide test key", scopes=ALL_SCOPES,
                                   rpm=rpm, daily=daily)
            known.branch = add_key(tenant_id, owner_id, "Sandbox branch test key", scopes=ALL_SCOPES,
                                   branch_id=branch_ids[0], rpm=rpm, daily=daily)
            known.revoked = add_key(tenant_id, owner_id, "Sandbox revoked key", active=False)
            known.expired = add_key(tenant_id, owner_id, "Sandbox expired key", expired=True)
            known.test_env = add_key(tenant_id, owner_id, "Sandbox test-environment key", environment="test",
                                     scopes=ALL_SCOPES, rpm=rpm, daily=daily)
        add_key(tenant_id, owner_id, "Production integration", scopes=ALL_SCOPES)
        if len(branches) > 1:
            for branch_id, slug in branches:
                add_key(tenant_id, owner_id, f"Branch POS integration {slug}", branch_id=branch_id)
        if t % 7 == 3:
            add_key(tenant_id, owner_id, "Old integration", active=False)
        if t % 11 == 5:
            add_key(tenant_id, owner_id, "Trial integration", expired=True)
        if t % 5 == 2:
            add_key(tenant_id, owner_id, "Staging integration", environment="test", used=False)

    with conn.cursor() as cur:
        _copy(cur, "tenants", [
            "id", "name", "slug", "vertical", "plan", "status", "created_at", "updated_at"], tenant_rows)
        _copy(cur, "auth.users", ["id", "email", "created_at"], user_rows)
        _copy(cur, "user_roles", ["id", "user_id", "tenant_id", "role", "created_at"], role_rows)
        summary.branches = _copy(cur, "branches", [
            "id", "tenant_id", "name", "slug", "city", "state", "address", "is_active", "is_headquarters",
            "created_at", "updated_at"], branch_rows)
        _copy(cur, "staff", ["id", "tenant_id", "display_name", "role", "is_active"], staff_rows)
        _copy(cur, "staff_branches", ["staff_id", "branch_id"], sb_rows)
        summary.leads = _copy(cur, "leads", [
            "id", "tenant_id", "branch_id", "first_name", "last_name", "full_name", "phone", "email",
            "status", "classification", "source", "deleted_at", "created_at", "updated_at"], lead_rows)
        summary.appointments = _copy(cur, "appointments", [
            "id", "tenant_id", "branch_id", "lead_id", "staff_id", "service_id", "scheduled_at",
            "duration_minutes", "status", "created_at", "updated_at"], appt_rows)
        _copy(cur, "inventory_items", ["id", "tenant_id", "branch_id", "name", "quantity", "min_quantity"],
              inv_rows)
        summary.keys = _copy(cur, "api_keys", _TISTIS_KEY_COLUMNS, (key.row() for key in keys))
        summary.branch_keys = sum(1 for key in keys if key.branch_id)
        summary.usage_logs = _copy(cur, "api_key_usage_logs", [
            "api_key_id", "tenant_id", "endpoint", "method", "scope_used", "request_path", "query_params",
            "status_code", "response_time_ms", "error_message", "error_code", "ip_address", "user_agent",
            "created_at"], _tistis_usage_rows(gen, keys, now))
    summary.multi_branch_tenants = multi
    return summary


_TISTIS_ERRORS = {
    401: ("KEY_REVOKED", "API key has been revoked"),
    403: ("SCOPE_REQUIRED", "API key lacks the scope leads:write"),
    429: ("RATE_LIMIT_EXCEEDED", "Rate limit exceeded"),
    500: ("INTERNAL_ERROR", "Internal server error"),
}


def _tistis_usage_rows(gen: _Gen, keys: list[_TistisKey], now: datetime) -> Iterable[tuple[Any, ...]]:
    """A day of traffic on the one public list endpoint, ending 30 minutes ago (the recent
    window stays for the real requests made after start-up). Active keys mostly succeed;
    revoked and expired keys leave their 401s."""
    for key in keys:
        if key.last_used_at is None:
            continue
        usable = key.active and key.expires_at is None
        for _ in range(gen.rng.randint(2, 8) if usable else gen.rng.randint(1, 2)):
            code: str | None
            message: str | None
            post = gen.rng.random() < 0.2
            if not usable:
                status = 401
                code, message = ("KEY_REVOKED", "API key has been revoked") if not key.active else \
                    ("KEY_EXPIRED", "API key has expired")
            else:
                status = gen.rng.choices([201 if post else 200, 429, 500, 403 if post else 200],
                                         weights=[97, 1, 1, 1])[0]
                if status == 403 and "leads:write" in key.scopes:
                    status = 201
                code, message = _TISTIS_ERRORS.get(status, (None, None))
            query = None if post else {"page": "1", "pageSize": "20"}
            if query is not None and key.branch_id:
                query["branch_id"] = key.branch_id
            yield (key.id, key.tenant_id, "/api/v1/leads", "POST" if post else "GET",
                   "leads:write" if post else "leads:read", "/api/v1/leads",
                   json.dumps(query) if query is not None else None, status, gen.rng.randint(20, 400),
                   message, code, key.ip, key.user_agent,
                   now - timedelta(minutes=gen.rng.randint(30, 24 * 60)))


def _grow_tistis_keys(cur: psycopg.Cursor[Any], present: int, missing: int, seed_value: int) -> int:
    """`grow_keys` for the tistis shape: one INSERT ... SELECT, created_by is the tenant's owner."""
    cur.execute(
        """
        WITH t AS (SELECT tn.id, row_number() OVER (ORDER BY tn.id) - 1 AS n,
                          (SELECT ur.user_id FROM user_roles ur
                            WHERE ur.tenant_id = tn.id AND ur.role = 'owner'
                            ORDER BY ur.created_at, ur.user_id LIMIT 1) AS owner
                   FROM tenants tn),
             b AS (SELECT b.id, b.tenant_id, row_number() OVER (ORDER BY b.id) - 1 AS n
                   FROM branches b
                   WHERE (SELECT count(*) FROM branches x WHERE x.tenant_id = b.tenant_id) > 1),
             counts AS (SELECT (SELECT count(*) FROM t) AS nt, (SELECT count(*) FROM b) AS nb),
             s AS (SELECT i, (i %% 5 = 0 AND nb > 0) AS is_branch, nt, nb
                   FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i, counts)
        INSERT INTO api_keys (id, tenant_id, created_by, name, key_hash, key_hint, key_prefix, environment,
                              scopes, scope_type, branch_id, metadata, created_at, updated_at)
        SELECT gen_random_uuid(),
               CASE WHEN s.is_branch THEN b.tenant_id ELSE t.id END,
               CASE WHEN s.is_branch THEN bt.owner ELSE t.owner END,
               'Bulk key ' || s.i,
               encode(sha256(convert_to('bulk-' || %(seed)s || '-' || s.i, 'UTF8')), 'hex'),
               lpad((s.i %% 10000)::text, 4, '0'),
               'tis_live_', 'live', %(scopes)s::jsonb,
               CASE WHEN s.is_branch THEN 'branch' ELSE 'tenant' END,
               CASE WHEN s.is_branch THEN b.id END,
               '{"bulk": true}'::jsonb, %(epoch)s, %(epoch)s
        FROM s
        JOIN t ON t.n = s.i %% s.nt
        LEFT JOIN b ON s.is_branch AND b.n = (s.i / 5) %% s.nb
        LEFT JOIN t bt ON bt.id = b.tenant_id
        """,
        {"first": present + 1, "last": present + missing, "seed": seed_value,
         "scopes": json.dumps(READ_SCOPES), "epoch": EPOCH},
    )
    return cur.rowcount
