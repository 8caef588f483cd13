"""GET /api/health: the health check of load balancers, uptime monitors and probes.

The public answer is {"status": "healthy" | "degraded" | "unhealthy", "timestamp", "version"},
503 when unhealthy. `GET /health` redirects here (308).

The version is hard-coded: the runtime has no package version to read. It therefore says
nothing about which commit is deployed; the deployment does (`vercel inspect`).
"""

from __future__ import annotations

VERSION = "4.6.0"  # hard-coded: no package version is available at runtime

# The database check reads one tenant id; it fails after this long.
DATABASE_TIMEOUT_MS = 5000
# Slower than this and the platform is "degraded" (still 200).
LATENCY_DEGRADED_THRESHOLD_MS = 1000


def overall_status(database_reachable: bool, latency_ms: float) -> str:
    """healthy; degraded when the database answered slowly; unhealthy when it did not answer."""
    if not database_reachable or latency_ms > DATABASE_TIMEOUT_MS:
        return "unhealthy"
    if latency_ms > LATENCY_DEGRADED_THRESHOLD_MS:
        return "degraded"
    return "healthy"
