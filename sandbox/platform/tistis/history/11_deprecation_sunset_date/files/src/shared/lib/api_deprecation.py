"""FASE 3: the deprecation of filtering by query parameter.

Branch-specific API keys (FASE 2) replace `?branch_id`. Until the sunset date, an answer to a
tenant-wide key that filters with `?branch_id` carries

    Deprecation: true
    Sunset: <the sunset date>
    X-API-Deprecated-Feature: query-parameter-filtering
    X-API-Deprecation-Phase: warning
    X-API-Migration-Guide: <the migration guide>

The timeline has three phases: warning (headers only, the current one), soft enforcement
(the parameter needs an opt-in header) and hard deprecation (the parameter is refused). Only
the warning phase is implemented; the other two are planned (docs/api).
"""

from __future__ import annotations

from app.context import ListQuery, RequestContext
from app.extensions import Extension
from psycopg import Connection

PHASE = "warning"
DEPRECATION_DATE = "2026-07-01"
# RFC 8594: Sunset is an HTTP-date, not an ISO date
SUNSET = "Wed, 01 Jul 2026 00:00:00 GMT"
MIGRATION_GUIDE = "https://docs.tistis.com/api/v1/migration/branch-filtering"
FEATURE = "query-parameter-filtering"


def is_using_deprecated_filtering(ctx: RequestContext) -> bool:
    """A tenant-wide key naming a branch with ?branch_id (a branch key's parameter is ignored)."""
    return bool(ctx.params.get("branch_id", "").strip()) and ctx.scope_branch_id is None


class DeprecationHeaders(Extension):
    name = "fase3_deprecation_headers"

    def on_list_query(self, ctx: RequestContext, query: ListQuery, conn: Connection) -> None:
        if not is_using_deprecated_filtering(ctx):
            return
        ctx.response_headers.update(
            {
                "Deprecation": "true",
                "Sunset": SUNSET,
                "X-API-Deprecated-Feature": FEATURE,
                "X-API-Deprecation-Phase": PHASE,
                "X-API-Deprecation-Date": DEPRECATION_DATE,
                "X-API-Migration-Guide": MIGRATION_GUIDE,
            }
        )


deprecation_headers = DeprecationHeaders()
