"""FASE 2: branch-scoped API keys (`api_keys.scope_type = 'branch'`, `api_keys.branch_id`).

A branch key sees only its branch on every list endpoint (a `branch_id` parameter naming
another branch is ignored), and the leads it creates go to its branch.

The scope is read on every request, so a rollback that converts branch keys to tenant keys
takes effect at once. If the FASE 2 columns are gone (the down migration ran before this code
was reverted) every key is treated as tenant-wide instead of failing.
"""

from __future__ import annotations

import logging
from typing import Any

from app.context import ListQuery, RequestContext
from app.extensions import Extension
from psycopg import Connection, errors

log = logging.getLogger("platform.fase2")


class BranchKeys(Extension):
    name = "fase2_branch_keys"

    def __init__(self) -> None:
        self._warned = False

    def on_authenticated(self, ctx: RequestContext, conn: Connection) -> None:
        try:
            row = conn.execute(
                "SELECT scope_type, branch_id FROM api_keys WHERE id = %s", (ctx.key.id,)
            ).fetchone()
        except errors.UndefinedColumn:
            if not self._warned:
                log.warning("api_keys has no FASE 2 columns: treating every key as tenant-wide")
                self._warned = True
            return
        if row is not None and row[0] == "branch" and row[1] is not None:
            ctx.scope_branch_id = row[1]

    def on_list_query(self, ctx: RequestContext, query: ListQuery, conn: Connection) -> None:
        if ctx.scope_branch_id is not None:
            query.branch_id = ctx.scope_branch_id

    def before_create(self, ctx: RequestContext, resource: str, data: dict[str, Any]) -> None:
        if resource == "leads" and ctx.scope_branch_id is not None:
            data["branch_id"] = ctx.scope_branch_id


extension = BranchKeys()
