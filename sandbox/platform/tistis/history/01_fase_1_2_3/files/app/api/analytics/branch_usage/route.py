"""FASE 3: /api/analytics/branch-usage, API usage per branch for the analytics page.

Dashboard route (owners and admins of the tenant). One query for the totals per branch and
one for the daily series, run side by side; branch keys are grouped by their branch, tenant
keys under "all branches".
"""

from __future__ import annotations

DEFAULT_DAYS = 30
MAX_DAYS = 90

TOTALS_SQL = """
    SELECT coalesce(k.branch_id::text, 'all') AS branch, count(*) AS requests,
           count(*) FILTER (WHERE l.status_code >= 400) AS errors,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY l.response_time_ms) AS p95_ms
      FROM api_key_usage_logs l
      JOIN api_keys k ON k.id = l.api_key_id
     WHERE l.tenant_id = %(tenant_id)s
       AND l.created_at > now() - make_interval(days => %(days)s)
     GROUP BY 1
"""

DAILY_SQL = """
    SELECT date_trunc('day', l.created_at) AS day, coalesce(k.branch_id::text, 'all') AS branch,
           count(*) AS requests
      FROM api_key_usage_logs l
      JOIN api_keys k ON k.id = l.api_key_id
     WHERE l.tenant_id = %(tenant_id)s
       AND l.created_at > now() - make_interval(days => %(days)s)
     GROUP BY 1, 2
     ORDER BY 1
"""


def window_days(raw: str | None) -> int:
    """?days=N, between 1 and MAX_DAYS; DEFAULT_DAYS when absent or unreadable."""
    try:
        days = int(raw or DEFAULT_DAYS)
    except ValueError:
        return DEFAULT_DAYS
    return max(1, min(days, MAX_DAYS))
