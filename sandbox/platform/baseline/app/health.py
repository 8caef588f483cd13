"""GET /health: is the process up and can it reach its database? No key, no usage log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import psycopg
from starlette.responses import JSONResponse

from app.chaos import Chaos
from app.db import Database

log = logging.getLogger("platform.health")

DB_CHECK_TIMEOUT_S = 2.0


def database_ok(db: Database, chaos: Chaos) -> bool:
    if chaos.health_db_error:
        return False
    try:
        with db.connection(timeout=DB_CHECK_TIMEOUT_S) as conn, conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '2s'")
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        log.warning("health: database unreachable: %s", type(exc).__name__)
        return False
    return True


def health_response(db: Database, chaos: Chaos, version: str) -> JSONResponse:
    ok = database_ok(db, chaos)
    body = {
        "status": "ok" if ok else "degraded",
        "database": "ok" if ok else "error",
        "version": version,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    return JSONResponse(body, status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})
