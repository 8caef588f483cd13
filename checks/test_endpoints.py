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
from checks.expect import expect_error_body, expect_list_shape, inconclusive
from checks.phases import ALL_PHASES
from checks.probe import ENDPOINTS, RESOURCES, get

pytestmark = ALL_PHASES


@pytest.mark.parametrize("path", ENDPOINTS, ids=RESOURCES.values())
def test_list_answers_with_contract_shape(api: httpx.Client, path: str, evidence: Evidence) -> None:
    records = expect_list_shape(get(api, path, evidence=evidence), RESOURCES[path])
    evidence.record(records=len(records))


def _ids(api: httpx.Client, path: str, evidence: Evidence, **params: int) -> tuple[list[str], int]:
    response = get(api, path, params=params, evidence=evidence)
    body = expect_list_shape(response, RESOURCES[path])
    return [str(r["id"]) for r in body], int(response.json()["total"])


@pytest.mark.parametrize("path", ENDPOINTS, ids=RESOURCES.values())
def test_pagination_is_consistent(api: httpx.Client, path: str, evidence: Evidence) -> None:
    _, total = _ids(api, path, evidence, pageSize=1)
    if total < 2:
        inconclusive(f"{path} lists {total} record(s) for this key: pagination needs at least 2")
    size = min(5, total // 2)
    first, total_1 = _ids(api, path, evidence, page=1, pageSize=size)
    second, total_2 = _ids(api, path, evidence, page=2, pageSize=size)
    both, _ = _ids(api, path, evidence, page=1, pageSize=2 * size)
    last_page = -(-total // size)
    last, total_3 = _ids(api, path, evidence, page=last_page, pageSize=size)
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


def test_unknown_route_is_404_with_error_body(api: httpx.Client, evidence: Evidence) -> None:
    response = get(api, f"/v1/no-such-route-{uuid.uuid4().hex[:8]}", evidence=evidence)
    expect_error_body(response, 404, None)


def test_rate_limit_headers_are_present_and_sane(api: httpx.Client, evidence: Evidence) -> None:
    response = get(api, "/v1/branches", evidence=evidence)
    names = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    values = {name: response.headers.get(name) for name in names}
    evidence.record(**values)
    missing = [name for name, value in values.items() if value is None]
    assert not missing, f"GET /v1/branches lacks {', '.join(missing)}: clients cannot pace " \
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
