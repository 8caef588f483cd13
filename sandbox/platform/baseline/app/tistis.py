"""The tistis shape: the platform as its repository has it (Next.js on Vercel, Supabase).

Here the engine plays the framework (routing, the database client, the rate limiter); the
platform's own code lives in the checkout, at the paths the real repository uses:

    app/api/health/route.py         VERSION (hard-coded), the database timeout and the
                                    degraded threshold, overall_status()
    app/api/v1/leads/route.py       LEADS (what the list selects, filters and orders),
                                    CREATE_SCOPE, PHONE_LENGTH, EXTENSIONS (the phases)
    src/shared/lib/api_key_auth.py  client_ip(), ip_allowed()

Routes: `GET /health` answers 308 to `/api/health`; `GET /api/health` answers
`{"status": "healthy"|"degraded"|"unhealthy", "timestamp", "version"}` (503 when unhealthy);
`GET` and `POST /api/v1/leads`. Any other path is Next.js's HTML 404 page; a known path asked
with another method is 405 with an empty body.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from app import resources
from app.chaos import Chaos, ChaosSource
from app.context import ListQuery, RequestContext
from app.db import Database
from app.errors import ApiError
from app.extensions import Extension, load_route_extensions
from app.pipeline import Endpoint, Incoming, TistisPlatform, read_incoming
from app.settings import Settings

log = logging.getLogger("platform.tistis")

HEALTH_ROUTE = "app.api.health.route"
LEADS_ROUTE = "app.api.v1.leads.route"
AUTH_LIB = "src.shared.lib.api_key_auth"

# How long /api/health waits for a pooled connection before calling the database unreachable.
HEALTH_CHECKOUT_TIMEOUT_S = 2.0

NOT_FOUND_PAGE = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"/>'
    '<meta name="viewport" content="width=device-width"/>'
    "<title>404: This page could not be found.</title></head>"
    '<body><div style="font-family:system-ui,sans-serif;height:100vh;text-align:center;'
    'display:flex;flex-direction:column;align-items:center;justify-content:center">'
    "<div><h1>404</h1><h2>This page could not be found.</h2></div></div></body></html>"
)
HEALTH_HEADERS = {"Cache-Control": "no-store, no-cache, must-revalidate"}


def create_app(settings: Settings, database: Database, chaos: ChaosSource) -> Starlette:
    health_route = importlib.import_module(HEALTH_ROUTE)
    leads_route = importlib.import_module(LEADS_ROUTE)
    auth_lib = importlib.import_module(AUTH_LIB)
    extensions = load_route_extensions(LEADS_ROUTE)
    leads: resources.ListResource = leads_route.LEADS
    platform = TistisPlatform(db=database, extensions=extensions, ip_allowed=auth_lib.ip_allowed)

    def client_ip(request: Request) -> str | None:
        peer = request.client.host if request.client else None
        found: str | None = auth_lib.client_ip(request.headers, peer)
        return found

    def list_leads(ctx: RequestContext, conn: Connection, req: Incoming) -> tuple[int, dict[str, Any]]:
        return 200, resources.list_resource(leads, ctx, conn, extensions, parse=parse_list_query)

    def create_lead(ctx: RequestContext, conn: Connection, req: Incoming) -> tuple[int, dict[str, Any]]:
        return _create_lead(ctx, conn, req.body, extensions, tuple(leads_route.PHONE_LENGTH))

    endpoints = {
        "GET": Endpoint(leads.path, "GET", leads.scope, list_leads),
        "POST": Endpoint(leads.path, "POST", leads_route.CREATE_SCOPE, create_lead),
    }

    async def serve_leads(request: Request) -> Response:
        endpoint = endpoints["POST" if request.method == "POST" else "GET"]
        req = await read_incoming(request, chaos, client_ip)
        return await run_in_threadpool(platform.handle, endpoint, req)

    async def health(request: Request) -> Response:
        current = chaos.current()
        started = time.perf_counter()
        # Added latency counts as a slow database: it is what turns the answer "degraded".
        delay = current.latency_s(request.url.path)
        if delay:
            await asyncio.sleep(delay)
        reachable = await run_in_threadpool(
            _database_reachable, database, current, health_route.DATABASE_TIMEOUT_MS
        )
        latency_ms = (time.perf_counter() - started) * 1000
        status: str = health_route.overall_status(reachable, latency_ms)
        body = {"status": status, "timestamp": _now(), "version": health_route.VERSION}
        return JSONResponse(
            body,
            status_code=503 if status == "unhealthy" else 200,
            headers={**HEALTH_HEADERS, "X-Health-Status": status},
        )

    async def redirect_to_health(request: Request) -> Response:
        # next.config's permanent redirect: 308 keeps the method and the query.
        target = "/api/health" + (f"?{request.url.query}" if request.url.query else "")
        return Response(status_code=308, headers={"Location": target})

    async def not_found(request: Request, exc: Exception) -> Response:
        return HTMLResponse(NOT_FOUND_PAGE, status_code=404, headers={"Cache-Control": "no-store"})

    async def not_allowed(request: Request, exc: Exception) -> Response:
        allow = getattr(exc, "headers", None) or {}
        return Response(status_code=405, headers=dict(allow))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(database.open)
        yield
        await run_in_threadpool(database.close)

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        405: not_allowed,
    }
    return Starlette(
        routes=[
            Route("/health", redirect_to_health,
                  methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            Route("/api/health", health, methods=["GET"]),
            Route(leads.path, serve_leads, methods=["GET", "POST"]),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _database_reachable(db: Database, chaos: Chaos, timeout_ms: int) -> bool:
    """What the real health check asks: one tenant id, within the timeout."""
    if chaos.health_db_error:
        return False
    try:
        with db.connection(timeout=HEALTH_CHECKOUT_TIMEOUT_S) as conn, conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            conn.execute("SELECT id FROM tenants LIMIT 1").fetchone()
    except psycopg.Error as exc:
        log.warning("health: database unreachable: %s", type(exc).__name__)
        return False
    return True


# --- GET /api/v1/leads ------------------------------------------------------------------------

_LEADING_INT = re.compile(r"^\s*\+?(\d+)")


def _parse_int(raw: str | None, default: int) -> int:
    """JavaScript's parseInt, as the real route uses it: junk or < 1 means the default."""
    match = _LEADING_INT.match(raw or "")
    if not match:
        return default
    digits = match.group(1).lstrip("0")
    value = int(digits) if digits and len(digits) <= 12 else (10**12 if digits else 0)
    return value if value >= 1 else default


def parse_list_query(resource: resources.ListResource, params: Mapping[str, str]) -> ListQuery:
    """Lenient like the real route: bad paging falls back to the defaults, never a 400, and
    `status` filters as given (an unknown status lists nothing)."""
    page = _parse_int(params.get("page"), 1)
    page_size = min(_parse_int(params.get("pageSize"), resources.DEFAULT_PAGE_SIZE), resources.MAX_PAGE_SIZE)
    status = params.get("status") or None
    search = (params.get("search") or "").replace("'", "").replace('"', "") or None
    return ListQuery(resource=resource.name, page=page, page_size=page_size, status=status, search=search)


# --- POST /api/v1/leads -----------------------------------------------------------------------


def _text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "VALIDATION_ERROR", f"'{name}' must be a string")
    return value.strip() or None


def _create_lead(
    ctx: RequestContext,
    conn: Connection,
    raw_body: bytes,
    extensions: list[Extension],
    phone_length: tuple[int, ...],
) -> tuple[int, dict[str, Any]]:
    try:
        body = json.loads(raw_body or b"")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "INVALID_JSON", "Invalid request body") from None
    if not isinstance(body, dict):
        body = {}
    phone = body.get("phone")
    if not phone or not isinstance(phone, str):
        raise ApiError(400, "VALIDATION_ERROR", "Phone number is required")
    phone = re.sub(r"\s+", "", phone.strip())
    shortest, longest = phone_length
    if not shortest <= len(phone) <= longest:
        raise ApiError(400, "VALIDATION_ERROR", "Invalid phone number format")
    existing = conn.execute(
        "SELECT id FROM leads WHERE tenant_id = %s AND phone = %s LIMIT 1", (ctx.tenant_id, phone)
    ).fetchone()
    if existing is not None:
        return 409, {
            "error": "A lead with this phone number already exists",
            "code": "DUPLICATE_LEAD",
            "existing_id": str(existing[0]),
        }
    email = _text(body, "email")
    # No `source`: the column's default applies (its CHECK list has no 'api').
    data: dict[str, Any] = {
        "branch_id": None,
        "phone": phone,
        "full_name": _text(body, "name"),
        "email": email.lower() if email else None,
        "status": "new",
    }
    for ext in extensions:
        ext.before_create(ctx, "leads", data)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "INSERT INTO leads (id, tenant_id, branch_id, phone, full_name, email, status) "
            "VALUES (%(id)s, %(tenant_id)s, %(branch_id)s, %(phone)s, %(full_name)s, %(email)s, %(status)s) "
            "RETURNING *",
            {**data, "id": uuid.uuid4(), "tenant_id": ctx.tenant_id},
        ).fetchone()
    assert row is not None  # INSERT ... RETURNING always yields the row
    for ext in extensions:
        ext.after_write(ctx, "leads")
    return 201, {"data": resources.jsonable(row)}
