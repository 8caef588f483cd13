"""API key authentication: `Authorization: Bearer tis_(live|test)_<random>`.

Only the SHA-256 hex digest of a key is stored and looked up; the raw key is never logged.
Keys are not cached: a revoked key stops working on its next request.
"""

from __future__ import annotations

import hashlib
import re
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
