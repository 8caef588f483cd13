"""A bad deploy of the platform: the checks that guard the API contract and tenant isolation
fail, each naming what broke. Each test patches a fresh sandbox's checkout and deploys it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollback.validate import ValidationResult, run_validation

pytestmark = pytest.mark.slow


def patch(repo: Path, name: str, old: str, new: str) -> None:
    path = repo / name
    text = path.read_text()
    assert old in text, f"{name} no longer holds {old!r}: update this test's patch"
    path.write_text(text.replace(old, new))


def message(result: ValidationResult, check: str) -> str:
    outcome = result.check(check)
    assert outcome.verdict == "fail", f"{check} is {outcome.verdict}"
    return outcome.message


def test_broken_contract_fails_the_checks_that_guard_it(fresh_sandbox, tmp_path: Path) -> None:
    repo = fresh_sandbox.repo
    patch(repo, "app/errors.py", '{"error": message, "code": code}', '{"message": message}')
    patch(repo, "app/ratelimit.py", '"X-RateLimit-Reset": str(self.reset_epoch),', "")
    patch(repo, "app/resources.py", '"source, created_at, updated_at"', '"created_at, updated_at"')
    patch(repo, "app/resources.py", 'order_by="scheduled_at DESC, id"', 'order_by="random()"')
    patch(repo, "app/resources.py", '"SELECT count(*) FROM {} WHERE {}"',
          '"SELECT count(*) + 1 AS count FROM {} WHERE {}"')
    patch(repo, "app/resources.py", 'page = _positive_int(params, "page", 1)',
          'page = _positive_int(params, "page", 1)\n'
          '    if "limit" in params:\n'
          '        raise validation_error("unknown parameter limit")')
    fresh_sandbox.deploy()
    result = run_validation("all", reports_root=tmp_path, env=fresh_sandbox.env(),
                            extra_args=["-k", "auth or endpoints or consistency or legacy_limit"])
    assert result.exit_code == 1
    assert result.check("test_valid_key_is_accepted").verdict == "pass"
    body = "body breaks the error contract (keys ['message'], expected exactly ['code', 'error'])"
    for check in ("test_missing_key_is_rejected", "test_malformed_key_is_rejected[not-bearer]",
                  "test_malformed_key_is_rejected[bad-key-format]", "test_unknown_key_is_rejected",
                  "test_revoked_key_is_rejected", "test_unknown_route_is_404"):
        assert body in message(result, check), check
    assert "lacks X-RateLimit-Reset" in message(result, "test_rate_limit_headers_are_present_and_sane")
    assert "leads records lack fields source" in message(
        result, "test_list_answers_with_contract_shape[leads]")
    assert result.check("test_list_answers_with_contract_shape[branches]").verdict == "pass"
    order = message(result, "test_pagination_is_consistent[appointments]")
    assert "not stable" in order or "on both page 1 and page 2" in order
    assert "for total 4: total or paging is wrong" in message(
        result, "test_pagination_is_consistent[branches]")
    assert "answered 400, expected 200" in message(result, "test_legacy_limit_param_is_accepted")
    for table in ("leads", "appointments", "branches"):
        text = message(result, f"test_api_total_matches_database[{table}]")
        assert f"GET /v1/{table} says total" in text and "but the database holds" in text


def test_tenant_leak_fails_isolation_checks(fresh_sandbox, tmp_path: Path) -> None:
    repo = fresh_sandbox.repo
    patch(repo, "app/resources.py", 'where: list[sql.Composable] = [sql.SQL("tenant_id = %s")]',
          'where: list[sql.Composable] = [sql.SQL("(tenant_id = %s OR true)")]')
    patch(repo, "app/ext/fase1_branch_filter.py",
          '"SELECT 1 FROM branches WHERE id = %s AND tenant_id = %s"',
          '"SELECT 1 FROM branches WHERE id = %s OR tenant_id = %s"')
    fresh_sandbox.deploy()
    result = run_validation("health", reports_root=tmp_path, env=fresh_sandbox.env(),
                            extra_args=["-k", "isolation"])
    for endpoint in ("leads", "appointments", "branches"):
        for check in ("test_records_belong_to_the_keys_tenant",
                      "test_foreign_branch_id_reads_nothing_of_another_tenant"):
            text = message(result, f"{check}[{endpoint}]")
            assert text.startswith("TENANT DATA LEAK") and f"GET /v1/{endpoint}" in text
