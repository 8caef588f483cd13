"""Per-request usage accounting: the key's last use and one `api_key_usage_logs` row.

This runs before the response is sent, as on the real platform, so it contends with row locks
on `api_keys` (a FASE 2 conversion holds them). It is best effort: a failure here is logged
server-side and never changes the answer.

Tistis shape (`record_usage_tistis`): the key's counters are bumped by the database function
`increment_api_key_usage(key, ip, endpoint)`, as the real platform does (the api_keys
triggers fire on that UPDATE); the log row carries the client's IP and is written only when
the key is known (api_key_id is NOT NULL there).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import errors
from psycopg.types.json import Jsonb

from app.db import Database

log = logging.getLogger("platform.usage")

LOCK_TIMEOUT = "5s"
# Short: when the database is unreachable the request already waited for it once.
CHECKOUT_TIMEOUT_S = 2.0

_TOUCH_KEY = """
    UPDATE api_keys
       SET last_used_at = now(),
           last_used_endpoint = %s,
           usage_count_today = usage_count_today + 1
     WHERE id = %s
"""
_INSERT_LOG = """
    INSERT INTO api_key_usage_logs (api_key_id, tenant_id, endpoint, method, scope_used,
        request_path, query_params, status_code, response_time_ms, error_message, error_code,
        user_agent)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


@dataclass
class UsageRecord:
    endpoint: str
    method: str
    request_path: str
    query_params: dict[str, Any]
    user_agent: str | None
    key_id: UUID | None = None
    tenant_id: UUID | None = None
    authenticated: bool = False  # only a key that got through auth counts as "used"
    scope_used: str | None = None
    status_code: int = 500
    error_message: str | None = None
    error_code: str | None = None
    ip_address: str | None = None  # a valid IP address or None (the tistis columns are inet)


def record_usage(db: Database, rec: UsageRecord, started: float) -> None:
    try:
        with db.connection(timeout=CHECKOUT_TIMEOUT_S) as conn:
            if rec.authenticated and rec.key_id is not None:
                try:
                    with conn.transaction():
                        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                        conn.execute(_TOUCH_KEY, (rec.endpoint, rec.key_id))
                except Exception as exc:  # a lock timeout must not cost the log row
                    log.warning("could not update last use of key %s: %s", rec.key_id, exc)
            elapsed_ms = int((time.perf_counter() - started) * 1000)
            conn.execute(
                _INSERT_LOG,
                (
                    rec.key_id,
                    rec.tenant_id,
                    rec.endpoint,
                    rec.method,
                    rec.scope_used,
                    rec.request_path,
                    Jsonb(rec.query_params),
                    rec.status_code,
                    elapsed_ms,
                    rec.error_message,
                    rec.error_code,
                    (rec.user_agent or "")[:500] or None,
                ),
            )
    except Exception as exc:
        log.warning("usage log not written for %s %s: %s", rec.method, rec.request_path, exc)


_INCREMENT = "SELECT increment_api_key_usage(%s, %s, %s)"
# What the real platform falls back to when the function does not exist (before migration 173).
_TOUCH_KEY_TISTIS = """
    UPDATE api_keys
       SET last_used_at = now(), last_used_ip = %s::inet, last_used_endpoint = %s
     WHERE id = %s
"""
_INSERT_LOG_TISTIS = """
    INSERT INTO api_key_usage_logs (api_key_id, tenant_id, endpoint, method, scope_used,
        request_path, query_params, status_code, response_time_ms, error_message, error_code,
        ip_address, user_agent)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::inet, %s)
"""


def valid_ip(text: str | None) -> str | None:
    """The address if it is one (the tistis columns are inet), else None."""
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def _bump_tistis(conn: Any, rec: UsageRecord) -> None:
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            conn.execute(_INCREMENT, (rec.key_id, rec.ip_address, rec.request_path))
    except errors.UndefinedFunction:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            conn.execute(_TOUCH_KEY_TISTIS, (rec.ip_address, rec.request_path, rec.key_id))


def record_usage_tistis(db: Database, rec: UsageRecord, started: float) -> None:
    if rec.key_id is None or rec.tenant_id is None:
        return  # no key to count nor to log against
    try:
        with db.connection(timeout=CHECKOUT_TIMEOUT_S) as conn:
            if rec.authenticated:
                try:
                    _bump_tistis(conn, rec)
                except Exception as exc:  # a lock timeout must not cost the log row
                    log.warning("could not count the use of key %s: %s", rec.key_id, exc)
            elapsed_ms = int((time.perf_counter() - started) * 1000)
            conn.execute(
                _INSERT_LOG_TISTIS,
                (
                    rec.key_id,
                    rec.tenant_id,
                    rec.endpoint,
                    rec.method,
                    rec.scope_used,
                    rec.request_path,
                    Jsonb(rec.query_params),
                    rec.status_code,
                    elapsed_ms,
                    rec.error_message,
                    rec.error_code,
                    rec.ip_address,
                    (rec.user_agent or "")[:500] or None,
                ),
            )
    except Exception as exc:
        log.warning("usage log not written for %s %s: %s", rec.method, rec.request_path, exc)
