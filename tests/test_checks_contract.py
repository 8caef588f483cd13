"""A bad deploy of the platform: the checks that guard the API contract and tenant isolation
fail, each naming what broke. Each test patches a fresh sandbox's checkout where that shape
keeps the code (contract: `app/*.py` and `app/ext/`; tistis: the route module, its libraries
under `src/`, and `app/tistis.py`, the framework's part), commits it and deploys it (tistis:
a new Vercel production deployment of the checkout's HEAD)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollback.validate import ValidationResult, run_validation
from tests.conftest import Sandbox
from tests.validations import Patches, deploy_patched

pytestmark = pytest.mark.slow



def message(result: ValidationResult, check: str) -> str:
    outcome = result.check(check)
    assert outcome.verdict == "fail", f"{check} is {outcome.verdict}"
    return outcome.message


#: the error body, the rate-limit headers and the count come from the framework's modules,
#: which both shapes share
BROKEN_ERRORS_AND_COUNTS: Patches = [
    ("app/errors.py", '{"error": message, "code": code}', '{"message": message}'),
    ("app/ratelimit.py", '"X-RateLimit-Reset": str(self.reset_epoch),', ""),
    ("app/resources.py", '"SELECT count(*) FROM {} WHERE {}"',
     '"SELECT count(*) + 1 AS count FROM {} WHERE {}"'),
]
BROKEN_CONTRACT: dict[str, Patches] = {
    "contract": [
        ("app/resources.py", 'order_by="scheduled_at DESC, id"', 'order_by="random()"'),
        ("app/resources.py", 'page = _positive_int(params, "page", 1)',
         'page = _positive_int(params, "page", 1)\n'
         '    if "limit" in params:\n'
         '        raise validation_error("unknown parameter limit")'),
    ],
    "tistis": [
        ("app/api/v1/leads/route.py", 'order_by="created_at DESC, id",', 'order_by="random()",'),
        ("app/tistis.py", 'page = _parse_int(params.get("page"), 1)',
         'if "limit" in params:\n'
         '        raise ApiError(400, "VALIDATION_ERROR", "unknown parameter limit")\n'
         '    page = _parse_int(params.get("page"), 1)'),
        # Next.js's 404 page answered as 200: an unknown route looks like a real page
        ("app/tistis.py", "HTMLResponse(NOT_FOUND_PAGE, status_code=404,",
         "HTMLResponse(NOT_FOUND_PAGE, status_code=200,"),
    ],
}
#: a lead without its `source`, in a deploy of its own: a record that lacks a field fails every
#: list check of its endpoint first, which on tistis (one endpoint) would hide the others
NO_SOURCE: dict[str, Patches] = {
    "contract": [("app/resources.py", '"source, created_at, updated_at"', '"created_at, updated_at"')],
    "tistis": [("app/api/v1/leads/route.py", 'columns="*",',
                'columns="id, tenant_id, branch_id, phone, full_name, email, status, '
                'classification, created_at, updated_at",')],
}
#: where each shape keeps its unstable order (the other endpoints are hit by count + 1 only)
SHUFFLED = {"contract": "appointments", "tistis": "leads"}


def test_broken_contract_fails_the_checks_that_guard_it(any_fresh_sandbox: Sandbox,
                                                        tmp_path: Path) -> None:
    box, profile = any_fresh_sandbox, any_fresh_sandbox.profile
    deploy_patched(box, BROKEN_ERRORS_AND_COUNTS + BROKEN_CONTRACT[box.shape])
    result = run_validation("all", reports_root=tmp_path, env=box.env(),
                            extra_args=["-k", "auth or endpoints or consistency or legacy_limit"])
    assert result.exit_code == 1
    assert result.check("test_valid_key_is_accepted").verdict == "pass"
    body = "body breaks the error contract (keys ['message'], expected exactly ['code', 'error'])"
    for check in ("test_missing_key_is_rejected", "test_malformed_key_is_rejected[not-bearer]",
                  "test_malformed_key_is_rejected[bad-key-format]", "test_unknown_key_is_rejected",
                  "test_revoked_key_is_rejected", "test_expired_key_is_rejected"):
        assert body in message(result, check), check
    if profile.errors.not_found is None:  # an HTML page: only its status is the contract
        assert "answered 200, expected 404: an unknown route must not look like a real one" in \
            message(result, "test_unknown_route_is_404")
    else:
        assert body in message(result, "test_unknown_route_is_404")
    assert "lacks X-RateLimit-Reset" in message(result, "test_rate_limit_headers_are_present_and_sane")
    for resource in profile.resources:  # every field still there
        assert result.check(f"test_list_answers_with_contract_shape[{resource.name}]"
                            ).verdict == "pass"
    order = message(result, f"test_pagination_is_consistent[{SHUFFLED[box.shape]}]")
    assert "not stable" in order or "on both page 1 and page 2" in order
    if profile.resource("branches"):  # 3 branches counted as 4: page 2 of 2 holds 1
        assert "for total 4: total or paging is wrong" in message(
            result, "test_pagination_is_consistent[branches]")
    assert "answered 400, expected 200" in message(result, "test_legacy_limit_param_is_accepted")
    for resource in profile.resources:
        text = message(result, f"test_api_total_matches_database[{resource.name}]")
        assert f"GET {profile.path_of(resource)} says total" in text
        assert "but the database holds" in text

    deploy_patched(box, NO_SOURCE[box.shape])
    fields = run_validation("health", reports_root=tmp_path, env=box.env(),
                            extra_args=["-k", "contract_shape"])
    assert "leads records lack fields source" in message(
        fields, "test_list_answers_with_contract_shape[leads]")
    for resource in profile.resources:
        if resource.name != "leads":  # their fields are intact
            assert fields.check(f"test_list_answers_with_contract_shape[{resource.name}]"
                                ).verdict == "pass"


#: where each shape checks that a ?branch_id belongs to the key's tenant (FASE 1)
BRANCH_FILTER = {"contract": "app/ext/fase1_branch_filter.py",
                 "tistis": "src/lib/api/branch_query_filter.py"}


def test_tenant_leak_fails_isolation_checks(any_fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    box, profile = any_fresh_sandbox, any_fresh_sandbox.profile
    deploy_patched(box, [
        ("app/resources.py", 'where: list[sql.Composable] = [sql.SQL("tenant_id = %s")]',
         'where: list[sql.Composable] = [sql.SQL("(tenant_id = %s OR true)")]'),
        (BRANCH_FILTER[box.shape], '"SELECT 1 FROM branches WHERE id = %s AND tenant_id = %s"',
         '"SELECT 1 FROM branches WHERE id = %s OR tenant_id = %s"'),
    ])
    result = run_validation("health", reports_root=tmp_path, env=box.env(),
                            extra_args=["-k", "isolation"])
    assert len(result.checks) == 2 * len(profile.resources)
    for resource in profile.resources:
        for check in ("test_records_belong_to_the_keys_tenant",
                      "test_foreign_branch_id_reads_nothing_of_another_tenant"):
            text = message(result, f"{check}[{resource.name}]")
            assert text.startswith("TENANT DATA LEAK"), text
            assert f"GET {profile.path_of(resource)}" in text
