"""The connection pool, opened lazily so that the server starts even when the database is down."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg import Connection
from psycopg_pool import ConnectionPool

CONNECT_TIMEOUT_S = 3
# A request waits at most this long for a connection, then answers 500 DATABASE_ERROR.
CHECKOUT_TIMEOUT_S = 4.0


class Database:
    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                pool = ConnectionPool(
                    self._url,
                    min_size=2,
                    max_size=10,
                    open=False,
                    timeout=CHECKOUT_TIMEOUT_S,
                    # Autocommit: every request statement stands alone, so a failed statement
                    # never leaves a pooled connection inside an aborted transaction.
                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                    # The database may restart under us (sandbox tests do it): verify on checkout.
                    check=ConnectionPool.check_connection,
                    name="platform",
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def open(self) -> None:
        self._get_pool()

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        with self._get_pool().connection(timeout=timeout) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
