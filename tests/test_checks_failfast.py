"""Fail fast: once the API is found down, or one of its paths hung, every later check that needs
it fails at once, naming the check that found it and what it saw; the rest carry on. No
pytest-timeout dump stands in for the reason.

No wall-clock assertion: the proof is that later checks were not sent at all; the times are
measured by `python -m bench --only failfast`.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rollback.validate import run_validation
from tests.conftest import Sandbox

pytestmark = pytest.mark.slow
REQUEST_TIMEOUT_S = 2


def _quick_config(box: Sandbox, folder: Path) -> Path:
    config = folder / "rollback.toml"
    config.write_text(box.config_file.read_text() + f"request_timeout_s = {REQUEST_TIMEOUT_S}\n")
    return config


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_path_that_never_answers_fails_its_checks_at_once(any_sandbox: Sandbox,
                                                              tmp_path: Path) -> None:
    box = any_sandbox
    hung = box.profile.leads_path
    env = box.env(ROLLBACK_CONFIG=str(_quick_config(box, tmp_path)))
    with box.chaos(latency_ms=120_000, paths=[hung]):
        result = run_validation("health", reports_root=tmp_path, env=env,
                                extra_args=["--traffic-window", "0.05"])
    assert result.exit_code == 1
    failed = [c for c in result.checks if c.verdict == "fail"]
    at_once = [c for c in failed if "not sent, the API does not answer at" in c.message]
    assert at_once and all("found by checks/" in c.message for c in at_once), \
        [c.message for c in failed]
    # the check that found it waited one timeout, not two: the health path answered meanwhile
    finder = [c for c in failed if c.message.startswith(f"GET {hung}: no answer within")]
    assert finder and "meanwhile" in finder[0].message and "is hung" in finder[0].message, \
        [c.message for c in failed]
    # each later check saw the finding instead of waiting for its own timeout (how long the
    # whole run takes is measured by `python -m bench --only failfast`, not asserted here)
    log = result.log.read_text()
    assert "Timeout >" not in log and "Stack of" not in log  # no pytest-timeout dumps
    # the checks that do not need the hung path carry on
    assert result.check("test_no_orphaned_rows[leads]").verdict == "pass"


def test_an_api_that_is_down_fails_every_api_check_naming_who_found_it(sandbox: Sandbox,
                                                                      tmp_path: Path) -> None:
    env = sandbox.env(ROLLBACK_CONFIG=str(_quick_config(sandbox, tmp_path)),
                      API_BASE_URL=f"http://127.0.0.1:{_closed_port()}")
    result = run_validation("health", reports_root=tmp_path, env=env)
    assert result.exit_code == 1
    down = [c for c in result.checks if "not sent, the API is down" in c.message]
    assert down and all("found by checks/" in c.message for c in down)
    assert result.check("test_no_orphaned_rows[leads]").verdict == "pass"  # the database is up


def test_a_path_that_answers_only_server_errors_fails_later_checks_at_once(sandbox: Sandbox,
                                                                         tmp_path: Path) -> None:
    failing = sandbox.profile.leads_path
    with sandbox.chaos(error_rate=1.0, paths=[failing]):
        result = run_validation("health", reports_root=tmp_path, env=sandbox.env())
    assert result.exit_code == 1
    found = [c for c in result.checks if f"not sent, the API fails at {failing}" in c.message]
    assert found and all("found by checks/" in c.message and "times in a row" in c.message
                         for c in found), [c.message for c in result.checks if c.verdict == "fail"]
    assert "error rate" in result.check("test_synthetic_error_rate_is_below_limit").message
    # the other endpoints are judged as they are
    assert result.check("test_list_answers_with_contract_shape[branches]").verdict == "pass"
