"""The contract shape: the platform as its API reference describes it.

`/health` and `/api/health` report the database and the served commit; `/v1/leads`,
`/v1/appointments`, `/v1/branches` and `POST /v1/leads`; every error, 404 included, is the JSON
error body; extensions come from app/ext/.
"""

from __future__ import annotations

import asyncio
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
from app.extensions import Extension, load_extensions
from app.health import health_response
from app.pipeline import Endpoint, Handler, Incoming, Platform, read_incoming
from app.settings import Settings


def create_app(settings: Settings, database: Database, chaos: ChaosSource) -> Starlette:
    extensions = load_extensions()
    platform = Platform(db=database, extensions=extensions)

    def route(endpoint: Endpoint) -> Route:
        async def serve(request: Request) -> Response:
            req = await read_incoming(request, chaos)
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
        req = await read_incoming(request, chaos)
        return await run_in_threadpool(platform.handle_unrouted, req, err)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Start connecting in the background; a database that is down must not stop the server.
        await run_in_threadpool(database.open)
        yield
        await run_in_threadpool(database.close)

    endpoints = [
        *(
            Endpoint(r.path, "GET", r.scope, _list_handler(r, extensions))
            for r in (resources.LEADS, resources.APPOINTMENTS, resources.BRANCHES)
        ),
        Endpoint("/v1/leads", "POST", "leads:write", _create_lead(extensions)),
    ]
    exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_routed,
        405: not_routed,
    }
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/api/health", health, methods=["GET"]),
            *(route(e) for e in endpoints),
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )


def _list_handler(resource: resources.ListResource, extensions: list[Extension]) -> Handler:
    def handler(ctx: RequestContext, conn: Connection, req: Incoming) -> tuple[int, dict[str, Any]]:
        return 200, resources.list_resource(resource, ctx, conn, extensions)

    return handler


def _create_lead(extensions: list[Extension]) -> Handler:
    def handler(ctx: RequestContext, conn: Connection, req: Incoming) -> tuple[int, dict[str, Any]]:
        return 201, resources.create_lead(ctx, conn, req.body, extensions)

    return handler
