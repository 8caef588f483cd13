"""Response time as the 95th percentile of a concurrent sample per endpoint, not one request.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import pytest

from checks.evidence import Evidence
from checks.expect import expect_latency
from checks.phases import ALL_PHASES
from checks.probe import ENDPOINTS, RESOURCES, Sample
from rollback.config import Thresholds

pytestmark = ALL_PHASES


@pytest.mark.parametrize("path", ENDPOINTS, ids=RESOURCES.values())
def test_p95_latency_is_within_limits(path: str, endpoint_samples: dict[str, Sample],
                                      thresholds: Thresholds, evidence: Evidence) -> None:
    expect_latency(endpoint_samples[path], thresholds, evidence)
