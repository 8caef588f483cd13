"""FASE 3: an in-process response cache for the GET list endpoints.

Entries are keyed by (key, the key's branch scope, path, sorted query) and live 15 s (leads),
60 s (appointments) or 300 s (branches). Responses carry `X-Cache: HIT` or `MISS`. Creating a
lead drops that tenant's cached leads. The key's branch scope is part of the cache key, so a
scope change (e.g. the FASE 2 rollback) never serves data cached under the old scope.
Validation and the branch checks still run on a hit: only the query is cached.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from app.context import ListQuery, RequestContext
from app.extensions import Extension, ListBody

TTL_S = {"leads": 15.0, "appointments": 60.0, "branches": 300.0}
MAX_ENTRIES = 2000

CacheKey = tuple[UUID, UUID | None, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class _Entry:
    expires: float
    tenant_id: UUID
    resource: str
    body: ListBody


class ResponseCache(Extension):
    name = "fase3_cache"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[CacheKey, _Entry] = {}
        # Bumped by every write: a computation that started before a write must not be stored.
        self._generation: dict[tuple[UUID, str], int] = {}

    def around_list(self, ctx: RequestContext, query: ListQuery, compute: Callable[[], ListBody]) -> ListBody:
        ttl = TTL_S.get(query.resource)
        if ttl is None:
            return compute()
        key: CacheKey = (ctx.key.id, ctx.scope_branch_id, ctx.path, tuple(sorted(ctx.params.items())))
        scope = (ctx.tenant_id, query.resource)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            generation = self._generation.get(scope, 0)
        # Bodies are never mutated after they are built, so entries are shared, not copied.
        if entry is not None and entry.expires > now:
            ctx.response_headers["X-Cache"] = "HIT"
            return entry.body
        body = compute()
        with self._lock:
            if self._generation.get(scope, 0) == generation:
                if len(self._entries) >= MAX_ENTRIES:
                    self._evict(now)
                self._entries[key] = _Entry(now + ttl, ctx.tenant_id, query.resource, body)
        ctx.response_headers["X-Cache"] = "MISS"
        return body

    def after_write(self, ctx: RequestContext, resource: str) -> None:
        with self._lock:
            scope = (ctx.tenant_id, resource)
            self._generation[scope] = self._generation.get(scope, 0) + 1
            stale = [
                k for k, e in self._entries.items() if e.tenant_id == ctx.tenant_id and e.resource == resource
            ]
            for k in stale:
                del self._entries[k]

    def _evict(self, now: float) -> None:
        """Drop expired entries; if none expired, drop the oldest half. Caller holds the lock."""
        expired = [k for k, e in self._entries.items() if e.expires <= now]
        if not expired:
            by_age = sorted(self._entries, key=lambda k: self._entries[k].expires)
            expired = by_age[: len(by_age) // 2]
        for k in expired:
            del self._entries[k]


extension = ResponseCache()
