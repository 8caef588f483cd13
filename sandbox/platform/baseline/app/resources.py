"""The v1 resources: list endpoints (leads, appointments, branches) and lead creation."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from psycopg import Connection, sql
from psycopg.rows import dict_row

from app.context import ListQuery, RequestContext
from app.errors import ApiError, validation_error
from app.extensions import Extension, ListBody

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000  # keeps OFFSET a sane bigint

LEAD_STATUSES = frozenset({"new", "contacted", "qualified", "lost"})
LEAD_CLASSIFICATIONS = frozenset({"hot", "warm", "cold"})
APPOINTMENT_STATUSES = frozenset({"scheduled", "confirmed", "completed", "cancelled", "no_show"})

_LEAD_COLUMNS = (
    "id, tenant_id, branch_id, phone, full_name AS name, email, status, classification, "
    "source, created_at, updated_at"
)


@dataclass(frozen=True)
class ListResource:
    name: str
    path: str
    scope: str
    table: str
    columns: str  # SELECT list: constant SQL, never user input
    order_by: str  # constant SQL
    branch_column: str
    statuses: frozenset[str] | None
    search_columns: tuple[str, ...]


LEADS = ListResource(
    name="leads",
    path="/v1/leads",
    scope="leads:read",
    table="leads",
    columns=_LEAD_COLUMNS,
    order_by="created_at DESC, id",
    branch_column="branch_id",
    statuses=LEAD_STATUSES,
    search_columns=("phone", "full_name", "email"),
)
APPOINTMENTS = ListResource(
    name="appointments",
    path="/v1/appointments",
    scope="appointments:read",
    table="appointments",
    columns=(
        "id, tenant_id, branch_id, lead_id, staff_id, service_id, scheduled_at, status, "
        "created_at, updated_at"
    ),
    order_by="scheduled_at DESC, id",
    branch_column="branch_id",
    statuses=APPOINTMENT_STATUSES,
    search_columns=(),
)
BRANCHES = ListResource(
    name="branches",
    path="/v1/branches",
    scope="branches:read",
    table="branches",
    columns="id, tenant_id, name, slug, city, state, is_active",
    order_by="name, id",
    branch_column="id",
    statuses=None,
    search_columns=(),
)


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _json_value(value) for name, value in row.items()}


def _json_value(value: Any) -> Any:
    """A column value as JSON has it (as PostgREST answers: numerics as numbers, inet as text)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address
                  | ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Interface
                  | ipaddress.IPv6Interface):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


def _positive_int(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    digits = raw.lstrip("0")
    if not re.fullmatch(r"\d+", digits):  # also refuses "0", "-1", "1.5", "abc"
        raise validation_error(f"'{name}' must be a positive integer, got {raw[:40]!r}")
    # Absurdly long numbers only need to compare as "too big"; int() of them is costly.
    return int(digits) if len(digits) <= 12 else 10**12


def parse_list_query(resource: ListResource, params: Mapping[str, str]) -> ListQuery:
    """Validate the query string. Parameters the API does not know are ignored."""
    page = _positive_int(params, "page", 1)
    if page > MAX_PAGE:
        raise validation_error(f"'page' must be at most {MAX_PAGE}")
    # Over-large page sizes are clamped, not refused: old clients ask for 1000.
    page_size = min(_positive_int(params, "pageSize", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
    status: str | None = None
    if resource.statuses is not None:
        status = params.get("status", "").strip() or None
        if status is not None and status not in resource.statuses:
            allowed = ", ".join(sorted(resource.statuses))
            raise validation_error(f"'status' must be one of {allowed}, got {status[:40]!r}")
    search: str | None = None
    if resource.search_columns:
        search = params.get("search", "").strip() or None
    return ListQuery(resource=resource.name, page=page, page_size=page_size, status=status, search=search)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def fetch_list(conn: Connection, resource: ListResource, ctx: RequestContext, query: ListQuery) -> ListBody:
    where: list[sql.Composable] = [sql.SQL("tenant_id = %s")]
    args: list[Any] = [ctx.tenant_id]
    if query.branch_id is not None:
        where.append(sql.SQL("{} = %s").format(sql.Identifier(resource.branch_column)))
        args.append(query.branch_id)
    if query.status is not None:
        where.append(sql.SQL("status = %s"))
        args.append(query.status)
    if query.search is not None:
        pattern = _like_pattern(query.search)
        where.append(
            sql.SQL("({})").format(
                sql.SQL(" OR ").join(
                    sql.SQL("{} ILIKE %s").format(sql.Identifier(c)) for c in resource.search_columns
                )
            )
        )
        args.extend(pattern for _ in resource.search_columns)
    condition = sql.SQL(" AND ").join(where)
    table = sql.Identifier(resource.table)
    count_sql = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, condition)
    rows_sql = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT %s OFFSET %s").format(
        sql.SQL(resource.columns), table, condition, sql.SQL(resource.order_by)
    )
    with conn.cursor(row_factory=dict_row) as cur:
        count_row = cur.execute(count_sql, args).fetchone()
        total = int(count_row["count"]) if count_row else 0
        rows = cur.execute(rows_sql, [*args, query.page_size, (query.page - 1) * query.page_size]).fetchall()
    return {
        "data": [jsonable(r) for r in rows],
        "total": total,
        "page": query.page,
        "pageSize": query.page_size,
        "filters": {
            "branch_id": str(query.branch_id) if query.branch_id else None,
            "status": query.status,
            "search": query.search,
        },
    }


def list_resource(
    resource: ListResource,
    ctx: RequestContext,
    conn: Connection,
    extensions: Sequence[Extension],
    parse: Callable[[ListResource, Mapping[str, str]], ListQuery] = parse_list_query,
) -> ListBody:
    query = parse(resource, ctx.params)
    for ext in extensions:
        ext.on_list_query(ctx, query, conn)

    compute: Callable[[], ListBody] = lambda: fetch_list(conn, resource, ctx, query)  # noqa: E731
    for ext in reversed(extensions):
        compute = _wrap(ext, ctx, query, compute)
    return compute()


def _wrap(
    ext: Extension, ctx: RequestContext, query: ListQuery, inner: Callable[[], ListBody]
) -> Callable[[], ListBody]:
    return lambda: ext.around_list(ctx, query, inner)


# --- POST /v1/leads -------------------------------------------------------------------------


def _optional_text(body: Mapping[str, Any], name: str, max_len: int = 200) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise validation_error(f"'{name}' must be a string")
    value = value.strip()
    if len(value) > max_len:
        raise validation_error(f"'{name}' must be at most {max_len} characters")
    return value or None


def parse_lead(raw_body: bytes) -> dict[str, Any]:
    """The row to insert, from the request body; 400 VALIDATION_ERROR says what is wrong."""
    try:
        body = json.loads(raw_body or b"")
    except (ValueError, UnicodeDecodeError):
        raise validation_error("Request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise validation_error("Request body must be a JSON object")

    phone = _optional_text(body, "phone", 40)
    if phone is None:
        raise validation_error("'phone' is required")
    first_name = _optional_text(body, "first_name")
    last_name = _optional_text(body, "last_name")
    name = _optional_text(body, "name")
    if name is None:
        name = " ".join(p for p in (first_name, last_name) if p) or None
    elif first_name is None and last_name is None:
        first_name, _, rest = name.partition(" ")
        last_name = rest.strip() or None
    email = _optional_text(body, "email", 320)
    if email is not None and "@" not in email:
        raise validation_error("'email' must be an email address")
    status = _optional_text(body, "status") or "new"
    if status not in LEAD_STATUSES:
        raise validation_error(f"'status' must be one of {', '.join(sorted(LEAD_STATUSES))}")
    classification = _optional_text(body, "classification") or "warm"
    if classification not in LEAD_CLASSIFICATIONS:
        raise validation_error("'classification' must be one of cold, hot, warm")
    branch_text = _optional_text(body, "branch_id", 64)
    branch_id: uuid.UUID | None = None
    if branch_text is not None:
        try:
            branch_id = uuid.UUID(branch_text)
        except ValueError:
            raise validation_error("'branch_id' must be a UUID") from None
    return {
        "phone": phone,
        "first_name": first_name,
        "last_name": last_name,
        "full_name": name,
        "email": email,
        "status": status,
        "classification": classification,
        "source": _optional_text(body, "source", 50) or "api",
        "branch_id": branch_id,
    }


_INSERT_LEAD = f"""
    INSERT INTO leads (id, tenant_id, branch_id, first_name, last_name, full_name, phone,
                       email, status, classification, source)
    VALUES (%(id)s, %(tenant_id)s, %(branch_id)s, %(first_name)s, %(last_name)s,
            %(full_name)s, %(phone)s, %(email)s, %(status)s, %(classification)s, %(source)s)
    RETURNING {_LEAD_COLUMNS}
"""


def create_lead(
    ctx: RequestContext, conn: Connection, raw_body: bytes, extensions: Sequence[Extension]
) -> dict[str, Any]:
    data = parse_lead(raw_body)
    for ext in extensions:
        ext.before_create(ctx, "leads", data)
    if data["branch_id"] is not None:
        owned = conn.execute(
            "SELECT 1 FROM branches WHERE id = %s AND tenant_id = %s",
            (data["branch_id"], ctx.tenant_id),
        ).fetchone()
        if owned is None:
            raise ApiError(400, "VALIDATION_ERROR", "'branch_id' is not a branch of this tenant")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_INSERT_LEAD, {**data, "id": uuid.uuid4(), "tenant_id": ctx.tenant_id}).fetchone()
    assert row is not None  # INSERT ... RETURNING always yields the row
    for ext in extensions:
        ext.after_write(ctx, "leads")
    return {"data": jsonable(row)}
