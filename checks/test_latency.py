"""Response time as the 95th percentile of a concurrent sample per endpoint, not one request.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

from checks.evidence import Evidence
from checks.expect import expect_latency
from checks.phases import ALL_PHASES
from checks.probe import Sample
from rollback.config import Thresholds

pytestmark = ALL_PHASES


def test_p95_latency_is_within_limits(endpoint: str, endpoint_samples: dict[str, Sample],
                                      thresholds: Thresholds, evidence: Evidence) -> None:
    expect_latency(endpoint_samples[endpoint], thresholds, evidence)
