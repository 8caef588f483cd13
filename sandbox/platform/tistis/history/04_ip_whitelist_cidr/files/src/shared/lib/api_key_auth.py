"""API key helpers of the public API v1: where a request comes from, and whether a key may be
used from there.

The framework authenticates every /api/v1 request (`Authorization: Bearer tis_live_...`; only
the SHA-256 of a key is stored and looked up) and asks this module for the caller's address,
which is logged with the request and kept as the key's last_used_ip, and whether the key's
ip_whitelist admits it (403 IP_NOT_ALLOWED otherwise).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

# ======================
# CLIENT ADDRESS
# ======================


def client_ip(headers: Mapping[str, str], peer: str | None) -> str | None:
    """The caller's address: the first X-Forwarded-For entry (the client as the edge saw it),
    else X-Real-IP, else the address of the connection."""
    forwarded = headers.get("x-forwarded-for", "").split(",")[0].strip()
    if forwarded:
        return forwarded
    real_ip = headers.get("x-real-ip", "").strip()
    if real_ip:
        return real_ip
    return peer


# FASE 1: the branch a request names with ?branch_id; blank means no filter. Whether it is a
# branch of the key's tenant is checked by src/lib/api/branch_query_filter.py.
def requested_branch_id(params: Mapping[str, str]) -> str | None:
    value = params.get("branch_id", "").strip()
    return value or None


# ======================
# IP WHITELIST
# ======================


def ip_allowed(ip: str, whitelist: Sequence[str]) -> bool:
    """Whether the key's whitelist admits `ip`: an address, or a CIDR range such as
    10.0.0.0/24 (IPv4 or IPv6). An empty whitelist admits every address; the framework does
    not ask then. An entry that is neither never matches, nor does a caller that is no address.
    """
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return False
    for entry in (e.strip() for e in whitelist):
        try:
            if "/" in entry:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            elif address == ipaddress.ip_address(entry):
                return True
        except ValueError:
            continue
    return False


# ======================
# KEY DISPLAY
# ======================


def key_hint(raw_key: str) -> str:
    """What the dashboard shows of a key: its last four characters ("...a4f7")."""
    return raw_key[-4:]


# FASE 2: branch-specific API keys. A key whose scope_type is 'branch' (with its branch_id) is
# confined to that branch: its lists show only that branch, a ?branch_id naming another one
# is ignored, and the leads it creates are assigned to it. The scope is read on every request,
# so a key converted back to tenant-wide sees every branch at once.
from app.context import ListQuery, RequestContext  # noqa: E402
from app.extensions import Extension  # noqa: E402
from psycopg import Connection, errors  # noqa: E402


class BranchKeyScope(Extension):
    name = "fase2_branch_key_scope"

    def on_authenticated(self, ctx: RequestContext, conn: Connection) -> None:
        try:
            row = conn.execute(
                "SELECT scope_type, branch_id FROM api_keys WHERE id = %s", (ctx.key.id,)
            ).fetchone()
        except errors.UndefinedColumn:
            return  # migration 135 is not there: every key is tenant-wide
        if row is not None and row[0] == "branch" and row[1] is not None:
            ctx.scope_branch_id = row[1]

    def on_list_query(self, ctx: RequestContext, query: ListQuery, conn: Connection) -> None:
        if ctx.scope_branch_id is not None:
            query.branch_id = ctx.scope_branch_id

    def before_create(self, ctx: RequestContext, resource: str, data: dict[str, object]) -> None:
        if resource == "leads" and ctx.scope_branch_id is not None:
            data["branch_id"] = ctx.scope_branch_id


branch_key_scope = BranchKeyScope()
