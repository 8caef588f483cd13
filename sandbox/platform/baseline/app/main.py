"""The Starlette app: `uvicorn app.main:app`.

Reads PLATFORM_DATABASE_URL (required), PLATFORM_VERSION (defaults to `git rev-parse HEAD`)
and PLATFORM_CHAOS_FILE (optional, see app/chaos.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from psycopg import Connection
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import resources
from app.chaos import ChaosSource
from app.context import RequestContext
from app.db import Database
from app.errors import ApiError
from app.extensions import load_extensions
from app.health import health_response
from app.pipeline import Endpoint, Handler, Incoming, Platform
from app.settings import load_settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

settings = load_settings()
database = Database(settings.database_url)
chaos = ChaosSource(settings.chaos_file)
extensions = load_extensions()
platform = Platform(db=database, extensions=extensions)


def _list_handler(resource: resources.ListResource) -> Handler:
    def handler(ctx: RequestContext, conn: Connection, req: Incoming) -> tuple[int, dict[str, Any]]:
        return 200, resources.list_resource(resource, ctx, conn, extensions)

    return handler


def _create_lead(ctx: RequestContext, conn: Connection, req: Incoming) -> tuple[int, dict[str, Any]]:
    return 201, resources.create_lead(ctx, conn, req.body, extensions)


async def _incoming(request: Request) -> Incoming:
    started = time.perf_counter()
    path = request.url.path
    current = chaos.current()
    delay = current.latency_s(path)
    if delay:
        await asyncio.sleep(delay)
    query_log: dict[str, Any] = {}
    for name in request.query_params:
        values = request.query_params.getlist(name)
        query_log[name] = values[0] if len(values) == 1 else values
    return Incoming(
        method=request.method,
        path=path,
        params=dict(request.query_params),
        query_log=query_log,
        authorization=request.headers.get("authorization"),
        user_agent=request.headers.get("user-agent"),
        body=await request.body() if request.method in ("POST", "PUT", "PATCH") else b"",
        started=started,
        chaos_fail=current.should_fail(path),
    )


def _route(endpoint: Endpoint) -> Route:
    async def serve(request: Request) -> Response:
        req = await _incoming(request)
        return await run_in_threadpool(platform.handle, endpoint, req)

    return Route(endpoint.path, serve, methods=[endpoint.method])


async def health(request: Request) -> Response:
    delay = chaos.current().latency_s(request.url.path)
    if delay:
        await asyncio.sleep(delay)
    return await run_in_threadpool(health_response, database, chaos.current(), settings.version)


async def not_routed(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    path = request.url.path
    if status == 405:
        err = ApiError(
            405,
            "METHOD_NOT_ALLOWED",
            f"Method {request.method} not allowed on {path}",
            headers=getattr(exc, "headers", None),
        )
    else:
        err = ApiError(404, "NOT_FOUND", f"Not found: {path}")
    req = await _incoming(request)
    return await run_in_threadpool(platform.handle_unrouted, req, err)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Start connecting in the background; a database that is down must not stop the server.
    await run_in_threadpool(database.open)
    yield
    await run_in_threadpool(database.close)


ENDPOINTS = [
    Endpoint(resources.LEADS.path, "GET", resources.LEADS.scope, _list_handler(resources.LEADS)),
    Endpoint("/v1/leads", "POST", "leads:write", _create_lead),
    Endpoint(
        resources.APPOINTMENTS.path,
        "GET",
        resources.APPOINTMENTS.scope,
        _list_handler(resources.APPOINTMENTS),
    ),
    Endpoint(resources.BRANCHES.path, "GET", resources.BRANCHES.scope, _list_handler(resources.BRANCHES)),
]

_exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    404: not_routed,
    405: not_routed,
}

app = Starlette(
    routes=[
        Route("/health", health, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
        *(_route(e) for e in ENDPOINTS),
    ],
    exception_handlers=_exception_handlers,
    lifespan=lifespan,
)
