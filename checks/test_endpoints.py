"""The list endpoints keep their contract: shape, fields, pagination, 404s and rate-limit headers.

PYTEST_DONT_REWRITE: assertion messages here are written for the person on call;
pytest's operand diff would only bury them.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from checks.evidence import Evidence
from checks.expect import (
    expect_error_body,
    expect_list_shape,
    expect_status,
    inconclusive,
    saw_nothing,
)
from checks.phases import ALL_PHASES
from checks.probe import cache_buster, get
from rollback.profile import Profile

pytestmark = ALL_PHASES


def test_list_answers_with_contract_shape(api: httpx.Client, endpoint: str, profile: Profile,
                                          evidence: Evidence) -> None:
    records = expect_list_shape(get(api, endpoint, evidence=evidence), profile.resource_at(endpoint))
    evidence.record(records=len(records))
    if not records:
        saw_nothing(f"{endpoint} listed no record for TEST_API_KEY, so no record's fields could "
                    "be checked; use a key whose tenant has data")


def _ids(api: httpx.Client, path: str, profile: Profile, evidence: Evidence,
         **params: int) -> tuple[list[str], int]:
    # never from a response cache: pages of different ages would look like broken paging
    response = get(api, path, params={**params, **cache_buster()}, evidence=evidence)
    body = expect_list_shape(response, profile.resource_at(path))
    return [str(r["id"]) for r in body], int(response.json()["total"])


def test_pagination_is_consistent(api: httpx.Client, endpoint: str, profile: Profile,
                                  evidence: Evidence) -> None:
    path = endpoint
    _, total = _ids(api, path, profile, evidence, pageSize=1)
    if total < 2:
        inconclusive(f"{path} lists {total} record(s) for this key: pagination needs at least 2")
    size = min(5, total // 2)
    first, total_1 = _ids(api, path, profile, evidence, page=1, pageSize=size)
    second, total_2 = _ids(api, path, profile, evidence, page=2, pageSize=size)
    both, _ = _ids(api, path, profile, evidence, page=1, pageSize=2 * size)
    last_page = -(-total // size)
    last, total_3 = _ids(api, path, profile, evidence, page=last_page, pageSize=size)
    evidence.record(total=total, page_size=size, last_page=last_page)
    where = f"{path} with pageSize={size}"
    expected = (size, min(size, total - size))
    assert (len(first), len(second)) == expected, (
        f"{where}: pages 1 and 2 hold {len(first)} and {len(second)} records, expected "
        f"{expected[0]} and {expected[1]} for total {total}: total or paging is wrong"
    )
    overlap = set(first) & set(second)
    assert not overlap, f"{where}: {len(overlap)} records on both page 1 and page 2: clients " \
                        "paging through will see duplicates and miss records"
    assert first + second == both, (
        f"{where}: pages 1+2 differ from page 1 of pageSize={2 * size}: the order is not stable, "
        "so paging clients skip or repeat records"
    )
    assert total_1 == total_2 == total_3 == total, (
        f"{where}: total changed between pages ({total}, {total_1}, {total_2}, {total_3})"
    )
    expected_last = total - (last_page - 1) * size
    assert len(last) == expected_last, (
        f"{where}: last page {last_page} has {len(last)} records, expected {expected_last} "
        f"(total {total})"
    )


def test_unknown_route_is_404(api: httpx.Client, profile: Profile, evidence: Evidence) -> None:
    path = f"{profile.api_prefix}/no-such-route-{uuid.uuid4().hex[:8]}"
    response = get(api, path, evidence=evidence)
    if profile.errors.not_found is None:  # the platform answers with an HTML page
        expect_status(response, 404, "an unknown route must not look like a real one")
        return
    expect_error_body(response, 404, profile.errors.not_found)


def test_rate_limit_headers_are_present_and_sane(api: httpx.Client, profile: Profile,
                                                 evidence: Evidence) -> None:
    response = get(api, profile.auth_path, evidence=evidence)
    names = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    values = {name: response.headers.get(name) for name in names}
    evidence.record(**values)
    missing = [name for name, value in values.items() if value is None]
    assert not missing, f"GET {profile.auth_path} lacks {', '.join(missing)}: clients cannot pace " \
                        "themselves and will hit 429s blind"
    try:
        limit, remaining, reset = (int(str(values[name])) for name in names)
    except ValueError:
        pytest.fail(f"rate-limit headers are not integers: {values}", pytrace=False)
    now = time.time()
    problems = []
    if not 1 <= limit <= 1_000_000:
        problems.append(f"limit {limit} is not a positive request count")
    if not 0 <= remaining <= limit:
        problems.append(f"remaining {remaining} is outside 0..limit {limit}")
    # Reset may be an epoch second or a number of seconds from now; either is under a day ahead.
    ahead = reset - now if reset > 1_000_000_000 else reset
    if not -5 <= ahead <= 86_400 + 60:
        problems.append(f"reset {reset} is {ahead:.0f} s from now, not within the next day")
    assert not problems, "rate-limit headers are not sane: " + "; ".join(problems)
