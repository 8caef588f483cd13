"""Real traffic: error rate and p95 of the requests `api_key_usage_logs` recorded recently.

The toolkit's own requests (User-Agent `rollback-toolkit-*`: validation, monitor, a run's
baseline) are left out: the synthetic checks judge those (some, like the 401 probes, fail on
purpose), and in a quiet hour our probes would otherwise be the only "traffic". Too few
requests to judge (fewer than `sample_size`) makes the check inconclusive, which `--gate`
accepts: the absence of traffic says nothing about a rollback, but a missing DATABASE_URL
still fails the gate.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from checks.evidence import Evidence
from checks.expect import inconclusive
from checks.phases import ALL_PHASES
from rollback.config import Thresholds
from rollback.profile import Profile

pytestmark = ALL_PHASES
TOOLKIT_AGENTS = "rollback-toolkit-%"


@pytest.fixture
def traffic(db: psycopg.Connection, thresholds: Thresholds,
            profile: Profile) -> tuple[int, int, float | None, str]:
    """(requests, server errors, p95 ms, window text) of real traffic in the window."""
    window = timedelta(minutes=thresholds.traffic_window_min)
    row = db.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE status_code >= 500), "
        "       percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms) "
        "FROM {} "
        # the toolkit's own requests (validation, monitor, a run's baseline) are not traffic
        "WHERE created_at >= now() - %s AND coalesce(user_agent, '') NOT LIKE %s"
    ).format(sql.Identifier(profile.tables.usage_logs)), (window, TOOLKIT_AGENTS)).fetchone()
    total, errors, p95 = (int(row[0]), int(row[1]), row[2]) if row else (0, 0, None)
    text = f"the last {thresholds.traffic_window_min:g} min"
    if total < thresholds.sample_size:
        if total == 0:
            inconclusive(f"inconclusive: no traffic in {text} ({profile.tables.usage_logs}, not "
                         "counting the toolkit's own requests)")
        inconclusive(f"inconclusive: only {total} requests in {text}; at least "
                     f"{thresholds.sample_size} (sample_size) are needed to judge real traffic")
    return total, errors, None if p95 is None else float(p95), text


def test_real_traffic_error_rate_is_below_limit(traffic: tuple[int, int, float | None, str],
                                                thresholds: Thresholds,
                                                evidence: Evidence) -> None:
    total, errors, _, text = traffic
    rate = errors / total
    evidence.record(requests=total, server_errors=errors, error_rate=f"{rate:.2%}")
    assert rate < thresholds.error_rate or errors == 0, (
        f"real traffic error rate {rate:.1%} >= limit {thresholds.error_rate:.1%} ({errors} of "
        f"{total} requests answered 5xx in {text}): customers are failing now; see "
        "api_key_usage_logs.error_code for the cause"
    )


def test_real_traffic_p95_is_within_limits(traffic: tuple[int, int, float | None, str],
                                           thresholds: Thresholds, evidence: Evidence) -> None:
    total, _, p95, text = traffic
    assert p95 is not None
    evidence.record(requests=total, p95_ms=round(p95, 1))
    summary = f"real traffic p95 {p95:.0f} ms over {total} requests in {text}"
    assert p95 <= thresholds.alert_ms, f"{summary} > alert {thresholds.alert_ms:g} ms"
    if p95 > thresholds.warn_ms:
        evidence.warn(f"{summary} > warn {thresholds.warn_ms:g} ms")
