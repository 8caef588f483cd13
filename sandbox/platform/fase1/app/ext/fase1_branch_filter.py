"""FASE 1: `?branch_id=<uuid>` filters the list endpoints to one branch of the key's tenant.

- not a UUID: 400 INVALID_BRANCH_ID; a branch of another tenant (or none): 403
  BRANCH_ACCESS_DENIED;
- the branch used is echoed in `X-Filtered-Branch-ID` and `filters.branch_id`;
- a multi-branch tenant asking without `branch_id` gets `X-Branch-Filter-Warning`.

A key confined to one branch (FASE 2) always gets its own branch: its parameter is ignored.
"""

from __future__ import annotations

import re
from uuid import UUID

from app.context import ListQuery, RequestContext
from app.errors import ApiError
from app.extensions import Extension
from psycopg import Connection

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class BranchFilter(Extension):
    name = "fase1_branch_filter"

    def on_list_query(self, ctx: RequestContext, query: ListQuery, conn: Connection) -> None:
        if ctx.scope_branch_id is not None:
            query.branch_id = ctx.scope_branch_id
        else:
            requested = ctx.params.get("branch_id", "").strip()
            if requested:
                query.branch_id = self._owned_branch(conn, ctx.tenant_id, requested)
        if query.branch_id is not None:
            ctx.response_headers["X-Filtered-Branch-ID"] = str(query.branch_id)
            return
        branches = self._branch_count(conn, ctx.tenant_id)
        if branches > 1:
            ctx.response_headers["X-Branch-Filter-Warning"] = (
                f"Tenant has {branches} branches and no branch_id was given: results include all branches"
            )

    @staticmethod
    def _owned_branch(conn: Connection, tenant_id: UUID, requested: str) -> UUID:
        if not _UUID.match(requested):
            raise ApiError(400, "INVALID_BRANCH_ID", "branch_id must be a UUID")
        branch_id = UUID(requested)
        row = conn.execute(
            "SELECT 1 FROM branches WHERE id = %s AND tenant_id = %s", (branch_id, tenant_id)
        ).fetchone()
        if row is None:
            # Same answer for "another tenant's" and "no such branch": no probing for ids.
            raise ApiError(403, "BRANCH_ACCESS_DENIED", f"Branch {branch_id} is not a branch of this tenant")
        return branch_id

    @staticmethod
    def _branch_count(conn: Connection, tenant_id: UUID) -> int:
        row = conn.execute("SELECT count(*) FROM branches WHERE tenant_id = %s", (tenant_id,)).fetchone()
        return int(row[0]) if row else 0


extension = BranchFilter()
