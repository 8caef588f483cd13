"""Sandbox fault injection, driven by the JSON file named in PLATFORM_CHAOS_FILE.

Example file: {"latency_ms": 800, "error_rate": 0.3, "paths": ["/v1/leads"], "health": "db_error"}

- latency_ms: added to every request whose path matches `paths` (all paths when absent);
- error_rate: share of matching API requests answered 500 DATABASE_ERROR;
- health: "db_error" makes /health report a database error (503).

The file is re-read only when its mtime, size or inode change, so each request costs one stat().
A missing or unreadable file means no chaos.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("platform.chaos")


@dataclass(frozen=True)
class Chaos:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    paths: tuple[str, ...] | None = None
    health_db_error: bool = False

    def matches(self, path: str) -> bool:
        if self.paths is None:
            return True
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.paths)

    def latency_s(self, path: str) -> float:
        return self.latency_ms / 1000.0 if self.matches(path) else 0.0

    def should_fail(self, path: str) -> bool:
        return self.error_rate > 0 and self.matches(path) and random.random() < self.error_rate


NO_CHAOS = Chaos()


def _parse(raw: object) -> Chaos:
    if not isinstance(raw, dict):
        raise ValueError("chaos file must hold a JSON object")
    paths = raw.get("paths")
    if paths is not None and not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        raise ValueError("'paths' must be a list of strings")
    return Chaos(
        latency_ms=max(0.0, float(raw.get("latency_ms") or 0)),
        error_rate=min(1.0, max(0.0, float(raw.get("error_rate") or 0))),
        paths=tuple(paths) if paths is not None else None,
        health_db_error=raw.get("health") == "db_error",
    )


class ChaosSource:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._signature: tuple[int, int, int] | None = None
        self._current = NO_CHAOS
        self._lock = threading.Lock()

    def current(self) -> Chaos:
        if self._path is None:
            return NO_CHAOS
        try:
            st = self._path.stat()
        except OSError:
            self._signature, self._current = None, NO_CHAOS
            return NO_CHAOS
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if signature != self._signature:
                try:
                    self._current = _parse(json.loads(self._path.read_text(encoding="utf-8")))
                    self._signature = signature
                except (OSError, ValueError, TypeError) as exc:
                    # Possibly a half-written file: no chaos now, and read it again next time.
                    log.warning("ignoring chaos file %s: %s", self._path, exc)
                    self._signature, self._current = None, NO_CHAOS
            return self._current
