"""Synthetic error rate: server errors, timeouts and failed connections in a concurrent sample,
overall and per endpoint. The shared sample grows, batch by batch (up to 600 requests), until
it tells the rate from the limit with 99% confidence: a normal background rate (2%) passes and
a failing API (10%) fails, where one sample of 20 per endpoint would often say either.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import httpx

from checks.evidence import Evidence
from checks.expect import decide_error_rate, expect_error_rate
from checks.phases import ALL_PHASES
from checks.probe import Sample, sample_until_decided
from rollback.config import Thresholds

pytestmark = ALL_PHASES


def test_synthetic_error_rate_is_below_limit(api: httpx.Client, endpoint_samples: dict[str, Sample],
                                             thresholds: Thresholds, evidence: Evidence) -> None:
    samples = sample_until_decided(api, endpoint_samples, thresholds.error_rate, decide_error_rate)
    expect_error_rate({path: s.outcomes for path, s in samples.items()}, thresholds.error_rate,
                      "requests across the list endpoints", evidence)
