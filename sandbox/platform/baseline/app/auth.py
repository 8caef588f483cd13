"""API key authentication: `Authorization: Bearer tis_(live|test)_<random>`.

Only the SHA-256 hex digest of a key is stored and looked up; the raw key is never logged.
Keys are not cached: a revoked key stops working on its next request.

Two shapes: `authenticate` answers every failure 401 UNAUTHORIZED (the API reference);
`authenticate_tistis` answers with the real platform's codes (MISSING_AUTH_HEADER ...
SCOPE_REQUIRED) and checks the IP whitelist and the scope itself, in the real order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from psycopg import Connection
from psycopg.rows import dict_row

from app.errors import ApiError

KEY_PATTERN = re.compile(r"^tis_(live|test)_[A-Za-z0-9]{16,}$")

# Only baseline columns: the FASE 2 columns may or may not exist (see app/ext/).
_LOOKUP = """
    SELECT id, tenant_id, scopes, rate_limit_rpm, rate_limit_daily,
           expires_at, is_active, revoked_at
      FROM api_keys
     WHERE key_hash = %s
"""


@dataclass(frozen=True)
class ApiKey:
    id: UUID
    tenant_id: UUID
    scopes: frozenset[str]
    rate_limit_rpm: int
    rate_limit_daily: int

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id}, tenant_id={self.tenant_id})"


class Unauthorized(ApiError):
    """401. Carries the key's id and tenant when the key exists (revoked, expired), so that
    the usage log can show who still uses a dead key."""

    def __init__(self, message: str, key_id: UUID | None = None, tenant_id: UUID | None = None) -> None:
        super().__init__(401, "UNAUTHORIZED", message, {"WWW-Authenticate": "Bearer"})
        self.key_id = key_id
        self.tenant_id = tenant_id


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def parse_bearer(header: str | None) -> str:
    """The raw key from an Authorization header, or 401 saying what is wrong with it."""
    if header is None or not header.strip():
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'")
    token = token.strip()
    if not KEY_PATTERN.match(token):
        raise Unauthorized("Malformed API key: expected tis_live_... or tis_test_...")
    return token


def authenticate(conn: Connection, header: str | None) -> ApiKey:
    raw_key = parse_bearer(header)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_LOOKUP, (hash_key(raw_key),)).fetchone()
    if row is None:
        raise Unauthorized("Invalid API key")
    if not row["is_active"] or row["revoked_at"] is not None:
        raise Unauthorized("API key has been revoked", row["id"], row["tenant_id"])
    if row["expires_at"] is not None and row["expires_at"] < datetime.now(UTC):
        raise Unauthorized("API key has expired", row["id"], row["tenant_id"])
    scopes = row["scopes"] if isinstance(row["scopes"], list) else []
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        scopes=frozenset(s for s in scopes if isinstance(s, str)),
        rate_limit_rpm=row["rate_limit_rpm"],
        rate_limit_daily=row["rate_limit_daily"],
    )


def require_scope(key: ApiKey, scope: str) -> None:
    if scope not in key.scopes:
        raise ApiError(403, "INVALID_SCOPE", f"API key lacks the required scope '{scope}'")


# --- tistis --------------------------------------------------------------------------------

TISTIS_REALM = 'Bearer realm="TIS TIS API"'
# The live format is tis_<env>_<stamp>_<48 hex>; older and sandbox keys are tis_<env>_<random>.
TISTIS_KEY_PATTERN = re.compile(r"^tis_(live|test)_[A-Za-z0-9_]{16,}$")

_TISTIS_LOOKUP = """
    SELECT id, tenant_id, scopes, rate_limit_rpm, rate_limit_daily, ip_whitelist,
           expires_at, is_active, revoked_at
      FROM api_keys
     WHERE key_hash = %s
"""

IpAllowed = Callable[[str, Sequence[str]], bool]


class KeyRejected(ApiError):
    """A tistis authentication failure. Carries the key's id and tenant when the key exists, so
    that the usage log shows who still uses a dead key; every 401 names the realm."""

    def __init__(
        self, status: int, code: str, message: str, key_id: UUID | None = None, tenant_id: UUID | None = None
    ) -> None:
        super().__init__(status, code, message, {"WWW-Authenticate": TISTIS_REALM} if status == 401 else None)
        self.key_id = key_id
        self.tenant_id = tenant_id


def parse_bearer_tistis(header: str | None) -> str:
    if not header:
        raise KeyRejected(401, "MISSING_AUTH_HEADER", "Missing Authorization header")
    if header.rstrip() == "Bearer":  # "Bearer " with its blank trimmed away in transit
        raise KeyRejected(401, "INVALID_KEY_FORMAT", "API key is empty")
    if not header.startswith("Bearer "):
        raise KeyRejected(
            401, "INVALID_AUTH_FORMAT", "Invalid Authorization header format. Use: Bearer <api_key>"
        )
    token = header[len("Bearer "):].strip()
    if not token:
        raise KeyRejected(401, "INVALID_KEY_FORMAT", "API key is empty")
    if not TISTIS_KEY_PATTERN.match(token):
        raise KeyRejected(401, "INVALID_KEY_FORMAT", "Invalid API key format")
    return token


def authenticate_tistis(
    conn: Connection, header: str | None, client_ip: str | None, scope: str, ip_allowed: IpAllowed
) -> ApiKey:
    """The key, or KeyRejected: format, lookup, revoked, expired, IP whitelist, then scope."""
    raw_key = parse_bearer_tistis(header)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_TISTIS_LOOKUP, (hash_key(raw_key),)).fetchone()
    if row is None:
        raise KeyRejected(401, "KEY_NOT_FOUND", "Invalid API key")
    known = {"key_id": row["id"], "tenant_id": row["tenant_id"]}
    if not row["is_active"] or row["revoked_at"] is not None:
        raise KeyRejected(401, "KEY_REVOKED", "API key has been revoked", **known)
    if row["expires_at"] is not None and row["expires_at"] < datetime.now(UTC):
        raise KeyRejected(401, "KEY_EXPIRED", "API key has expired", **known)
    whitelist = [ip for ip in row["ip_whitelist"] or [] if ip]
    if whitelist and client_ip and not ip_allowed(client_ip, whitelist):
        raise KeyRejected(403, "IP_NOT_ALLOWED", "IP address not allowed", **known)
    listed = row["scopes"] if isinstance(row["scopes"], list) else []
    scopes = frozenset(s for s in listed if isinstance(s, str))
    if scope not in scopes:
        raise KeyRejected(403, "SCOPE_REQUIRED", f"Missing required scope: {scope}", **known)
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        scopes=scopes,
        # the columns have defaults but no NOT NULL
        rate_limit_rpm=row["rate_limit_rpm"] or 60,
        rate_limit_daily=row["rate_limit_daily"] or 10_000,
    )
