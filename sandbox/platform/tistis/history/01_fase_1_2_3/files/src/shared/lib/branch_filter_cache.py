"""FASE 3: a response cache for the branch-filtered lists.

An answer is kept per (API key, the key's branch scope, path, sorted query) for the TTL of its
table's strategy: aggressive 300 s (data that rarely changes: branches, menus), moderate 60 s
(appointments, staff, inventory), conservative 15 s (highly dynamic data). Authentication,
validation and the branch checks still run on every request; only the query's answer is kept.
Nothing drops an entry before its TTL: the leads route creates leads without invalidating
the cache (the real route calls none of the cache's invalidation helpers), so a list answered
from the cache misses the leads created since, for up to the TTL.

The answer does not say whether it came from the cache: there is no cache header, as with the
data cache of the framework this replaces. A stale list is the only sign.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from app.context import ListQuery, RequestContext
from app.extensions import Extension, ListBody

# ======================
# CACHE CONFIGURATION
# ======================

CACHE_STRATEGIES = {
    "aggressive": 300.0,  # 5 minutes
    "moderate": 60.0,  # 1 minute
    "conservative": 15.0,  # 15 seconds
}

TABLE_STRATEGY = {
    "branches": "aggressive",
    "menu_items": "aggressive",
    "menu_categories": "aggressive",
    "appointments": "moderate",
    "staff": "moderate",
    "inventory_items": "moderate",
    "leads": "moderate",
}

# Above this many entries the expired ones go, or the older half when none has expired.
MAX_ENTRIES = 2000

# ======================
# CACHE
# ======================

CacheKey = tuple[UUID, UUID | None, str, tuple[tuple[str, str], ...]]


def ttl_for(table: str) -> float | None:
    strategy = TABLE_STRATEGY.get(table)
    return CACHE_STRATEGIES[strategy] if strategy else None


@dataclass(frozen=True)
class _Entry:
    expires: float
    tenant_id: UUID
    table: str
    body: ListBody


class BranchFilterCache(Extension):
    name = "fase3_branch_filter_cache"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[CacheKey, _Entry] = {}

    def around_list(self, ctx: RequestContext, query: ListQuery, compute: Callable[[], ListBody]) -> ListBody:
        ttl = ttl_for(query.resource)
        if ttl is None:
            return compute()
        key: CacheKey = (ctx.key.id, ctx.scope_branch_id, ctx.path, tuple(sorted(ctx.params.items())))
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.expires > now:
            return entry.body  # answers are never changed once built: shared, not copied
        body = compute()
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._evict(now)
            self._entries[key] = _Entry(now + ttl, ctx.tenant_id, query.resource, body)
        return body

    def _evict(self, now: float) -> None:
        """Drop the expired entries, or the older half when none expired. Holds the lock."""
        doomed = [k for k, e in self._entries.items() if e.expires <= now]
        if not doomed:
            doomed = sorted(self._entries, key=lambda k: self._entries[k].expires)[: len(self._entries) // 2]
        for key in doomed:
            del self._entries[key]


branch_filter_cache = BranchFilterCache()
