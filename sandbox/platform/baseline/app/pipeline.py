"""The request pipeline every /v1 request goes through, in this order:

    authenticate -> rate limit -> chaos -> scope -> extensions' on_authenticated -> handler

then rate-limit headers on whatever the answer is, and one usage-log row. The steps are sync
(psycopg) and run in Starlette's threadpool.

`TistisPlatform` is the same pipeline with the real platform's authentication, which checks the
IP whitelist and the scope itself (authenticate -> rate limit -> chaos -> extensions ->
handler), and its usage accounting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.auth import (
    ApiKey,
    IpAllowed,
    KeyRejected,
    Unauthorized,
    authenticate,
    authenticate_tistis,
    require_scope,
)
from app.chaos import ChaosSource
from app.context import RequestContext
from app.db import Database
from app.errors import ApiError, database_error
from app.extensions import Extension
from app.ratelimit import RateLimiter, Usage, rate_limited
from app.usage import UsageRecord, record_usage, record_usage_tistis, valid_ip

log = logging.getLogger("platform.pipeline")


@dataclass(frozen=True)
class Incoming:
    """What the pipeline needs from an HTTP request, read on the event loop."""

    method: str
    path: str
    params: dict[str, str]  # last value wins for a repeated name
    query_log: dict[str, Any]  # every value, for the usage log
    authorization: str | None
    user_agent: str | None
    body: bytes
    started: float  # time.perf_counter() on arrival
    chaos_fail: bool = False
    client_ip: str | None = None  # a valid IP address, when the shape needs one


async def read_incoming(
    request: Request, chaos: ChaosSource, client_ip: Callable[[Request], str | None] | None = None
) -> Incoming:
    """Read what the pipeline needs on the event loop, after the chaos file's added latency."""
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
        client_ip=client_ip(request) if client_ip else None,
    )


Handler = Callable[[RequestContext, Connection, Incoming], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Endpoint:
    path: str  # the route, as logged in `endpoint`
    method: str
    scope: str
    handler: Handler


@dataclass
class Platform:
    db: Database
    extensions: Sequence[Extension]
    limiter: RateLimiter = field(default_factory=RateLimiter)

    def _count(self, key: ApiKey) -> Usage:
        return self.limiter.hit(key.id, key.rate_limit_rpm, key.rate_limit_daily)

    def handle(self, endpoint: Endpoint, req: Incoming) -> Response:
        rec = _record_for(req, endpoint.path)
        rec.scope_used = endpoint.scope
        usage: Usage | None = None
        try:
            with self.db.connection() as conn:
                key = self._authenticate(conn, req, rec, endpoint.scope)
                usage = self._count(key)
                if usage.exceeded:
                    raise ApiError(429, "RATE_LIMIT_EXCEEDED", rate_limited(usage))
                if req.chaos_fail:
                    raise ApiError(500, "DATABASE_ERROR", "Injected fault (sandbox chaos)")
                self._require_scope(key, endpoint.scope)
                ctx = RequestContext(key=key, path=req.path, params=req.params)
                for ext in self.extensions:
                    ext.on_authenticated(ctx, conn)
                status, body = endpoint.handler(ctx, conn, req)
                response: Response = JSONResponse(body, status_code=status, headers=ctx.response_headers)
        except ApiError as err:
            response = self._error(err, rec)
        except psycopg.Error as exc:
            # Server-side only, and without the SQL parameters (they may hold personal data).
            log.error("database error on %s %s: %s", req.method, req.path, type(exc).__name__)
            response = self._error(self._database_error(rec), rec)
        except Exception:
            log.exception("unexpected error on %s %s", req.method, req.path)
            response = self._error(ApiError(500, "INTERNAL_ERROR", "Internal server error"), rec)
        return self._finish(response, rec, usage, req)

    def handle_unrouted(self, req: Incoming, err: ApiError) -> Response:
        """404/405 need no key; a valid key is still identified, counted and logged."""
        rec = _record_for(req, req.path)
        usage: Usage | None = None
        try:
            with self.db.connection() as conn:
                key = self._authenticate(conn, req, rec, None)
            usage = self._count(key)
            if usage.exceeded:
                err = ApiError(429, "RATE_LIMIT_EXCEEDED", rate_limited(usage))
        except (ApiError, psycopg.Error):
            pass  # no usable key, or no database: the answer is still the 404/405
        return self._finish(self._error(err, rec), rec, usage, req)

    def _authenticate(self, conn: Connection, req: Incoming, rec: UsageRecord, scope: str | None) -> ApiKey:
        try:
            key = authenticate(conn, req.authorization)
        except Unauthorized as err:
            rec.key_id, rec.tenant_id = err.key_id, err.tenant_id
            raise
        rec.key_id, rec.tenant_id, rec.authenticated = key.id, key.tenant_id, True
        return key

    def _require_scope(self, key: ApiKey, scope: str) -> None:
        require_scope(key, scope)

    def _database_error(self, rec: UsageRecord) -> ApiError:
        return database_error()

    def _record(self, rec: UsageRecord, started: float) -> None:
        record_usage(self.db, rec, started)

    @staticmethod
    def _error(err: ApiError, rec: UsageRecord) -> Response:
        rec.error_message, rec.error_code = err.message, err.code
        return err.response()

    def _finish(self, response: Response, rec: UsageRecord, usage: Usage | None, req: Incoming) -> Response:
        if usage is not None:
            response.headers.update(usage.headers())
        rec.status_code = response.status_code
        self._record(rec, req.started)
        return response


@dataclass
class TistisPlatform(Platform):
    """The real platform's pipeline: its auth codes, IP whitelist, and usage accounting."""

    ip_allowed: IpAllowed = field(default=lambda ip, whitelist: ip in whitelist)

    def _authenticate(self, conn: Connection, req: Incoming, rec: UsageRecord, scope: str | None) -> ApiKey:
        rec.ip_address = valid_ip(req.client_ip)
        if scope is None:
            raise ApiError(500, "INTERNAL_ERROR", "Internal server error")  # no unrouted pipeline here
        try:
            key = authenticate_tistis(conn, req.authorization, req.client_ip, scope, self.ip_allowed)
        except KeyRejected as err:
            rec.key_id, rec.tenant_id = err.key_id, err.tenant_id
            raise
        rec.key_id, rec.tenant_id, rec.authenticated = key.id, key.tenant_id, True
        return key

    def _require_scope(self, key: ApiKey, scope: str) -> None:
        return None  # checked by authenticate_tistis, before the rate limit as on the real platform

    def _database_error(self, rec: UsageRecord) -> ApiError:
        if not rec.authenticated:  # the key could not be looked up
            return ApiError(500, "INTERNAL_ERROR", "Internal authentication error")
        return database_error()

    def _record(self, rec: UsageRecord, started: float) -> None:
        record_usage_tistis(self.db, rec, started)


def _record_for(req: Incoming, endpoint: str) -> UsageRecord:
    return UsageRecord(
        endpoint=endpoint,
        method=req.method,
        request_path=req.path,
        query_params=req.query_log,
        user_agent=req.user_agent,
    )
