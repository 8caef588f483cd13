"""Synthetic error rate: server errors, timeouts and failed connections in a concurrent sample,
overall and per endpoint. The shared sample grows, batch by batch (up to 600 requests), until
it tells the rate from the limit with 99% confidence: a normal background rate (2%) passes and
a failing API (10%) fails, where one sample of 20 per endpoint would often say either. When the
API answered at the start, that sample is taken in the background, beside the first checks
(checks.probe.SharedSample); this check grows it further if it is still undecided.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import httpx

from checks.evidence import Evidence
from checks.expect import decide_error_rate, expect_error_rate
from checks.phases import ALL_PHASES
from checks.probe import Budget, Sample, SharedSample, sample_until_decided
from rollback.config import Thresholds

pytestmark = ALL_PHASES


def test_synthetic_error_rate_is_below_limit(api: httpx.Client, endpoint_samples: dict[str, Sample],
                                             shared_sample: SharedSample | None, _budget: Budget,
                                             thresholds: Thresholds, evidence: Evidence) -> None:
    grown = shared_sample.grown(_budget) if shared_sample is not None else None
    evidence.record(sampled="in the background, beside the first checks" if grown else
                    "by this check and the first that needed it")
    samples = sample_until_decided(api, grown or endpoint_samples, thresholds.error_rate,
                                   decide_error_rate)  # grows on if the background's left it undecided
    expect_error_rate({path: s.outcomes for path, s in samples.items()}, thresholds.error_rate,
                      "requests across the list endpoints", evidence)
