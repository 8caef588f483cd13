"""FASE 1: filter the leads list by branch with `?branch_id=<uuid>`.

- not a UUID: 400 INVALID_BRANCH_ID;
- not a branch of the key's tenant (another tenant's, or none at all): 403
  BRANCH_ACCESS_DENIED, the same answer for both so that ids cannot be probed;
- the branch used is echoed in `X-Filtered-Branch-ID` and in `filters.branch_id`;
- a tenant with several branches asking without `branch_id` gets `X-Branch-Filter-Warning`:
  the answer mixes branches.

A key confined to one branch (FASE 2) always gets its own branch; its parameter is ignored.
Without a branch_id the list is the whole tenant's, as before this phase.
"""

from __future__ import annotations

import re
from uuid import UUID

from app.context import ListQuery, RequestContext
from app.errors import ApiError
from app.extensions import Extension
from psycopg import Connection
from src.shared.lib.api_key_auth import requested_branch_id

UUID_PATTERN = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_uuid(value: str) -> bool:
    return bool(UUID_PATTERN.match(value))


class BranchQueryFilter(Extension):
    name = "fase1_branch_query_filter"

    def on_list_query(self, ctx: RequestContext, query: ListQuery, conn: Connection) -> None:
        if ctx.scope_branch_id is not None:
            query.branch_id = ctx.scope_branch_id
        else:
            requested = requested_branch_id(ctx.params)
            if requested is not None:
                query.branch_id = self._tenant_branch(conn, ctx.tenant_id, requested)
        if query.branch_id is not None:
            ctx.response_headers["X-Filtered-Branch-ID"] = str(query.branch_id)
            return
        branches = self._branch_count(conn, ctx.tenant_id)
        if branches > 1:
            ctx.response_headers["X-Branch-Filter-Warning"] = (
                f"This tenant has {branches} branches and no branch_id was given: "
                "the results include every branch"
            )

    @staticmethod
    def _tenant_branch(conn: Connection, tenant_id: UUID, requested: str) -> UUID:
        if not is_uuid(requested):
            raise ApiError(400, "INVALID_BRANCH_ID", "branch_id must be a valid UUID")
        branch_id = UUID(requested)
        found = conn.execute(
            "SELECT 1 FROM branches WHERE id = %s AND tenant_id = %s", (branch_id, tenant_id)
        ).fetchone()
        if found is None:
            raise ApiError(403, "BRANCH_ACCESS_DENIED", f"Access denied to branch {branch_id}")
        return branch_id

    @staticmethod
    def _branch_count(conn: Connection, tenant_id: UUID) -> int:
        row = conn.execute("SELECT count(*) FROM branches WHERE tenant_id = %s", (tenant_id,)).fetchone()
        return int(row[0]) if row else 0


branch_query_filter = BranchQueryFilter()
