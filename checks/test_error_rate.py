"""Synthetic error rate: server errors, timeouts and failed connections in a concurrent sample.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

from checks.evidence import Evidence
from checks.expect import expect_error_rate
from checks.phases import ALL_PHASES
from checks.probe import Sample
from rollback.config import Thresholds

pytestmark = ALL_PHASES


def test_synthetic_error_rate_is_below_limit(endpoint_samples: dict[str, Sample],
                                             thresholds: Thresholds, evidence: Evidence) -> None:
    outcomes = [o for s in endpoint_samples.values() for o in s.outcomes]
    for path, s in endpoint_samples.items():
        evidence.record(**{f"{path} failed": f"{len(s.failures)} of {s.size}"})
    expect_error_rate(outcomes, thresholds.error_rate, "requests across the list endpoints", evidence)
