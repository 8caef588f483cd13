"""No false green: a target that is not configured is refused before any request, and a phase's
checks find the run they validate by themselves.

- no API_BASE_URL (nor `[target] api_base_url`), an empty or unset TEST_API_KEY, whitespace in
  a key: `rollback validate` exits 2 with one line naming the variable, plain pytest exits 4
  with the same line, and no report is written;
- after a real FASE 2 run with one converted key deactivated, plain `rollback validate fase2`
  and plain `pytest -m fase2` use that run's context, say so, exit 1 and name the key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from checks.target import require_target
from rollback.config import load_settings
from rollback.errors import ConfigError
from rollback.validate import TOOLKIT_ROOT
from tests.conftest import Sandbox, run_cli

KEY_VARS = ("TEST_API_KEY", "TEST_BRANCH_API_KEY", "TEST_REVOKED_API_KEY", "TEST_EXPIRED_API_KEY")


def _config(folder: Path, *, api: bool = True, box: Sandbox | None = None) -> Path:
    """A rollback.toml with the reports and logs under `folder`: the sandbox's, or none of its
    [target] when `api` is False."""
    text = box.config_file.read_text() if box is not None and api else "[target]\nname = \"x\"\n"
    config = folder / "rollback.toml"
    config.write_text(text + f'\n[paths]\nlogs_dir = "{folder / "logs"}"\n'
                             f'reports_dir = "{folder / "reports"}"\n'
                             "\n[gate]\npasses_required = 1\ndeadline_s = 120\ninterval_s = 0\n")
    return config


# --- which settings are refused, and how the line reads -----------------------------------------


@pytest.mark.parametrize(("env", "variable", "says"), [
    ({}, "API_BASE_URL", "API_BASE_URL is not set"),
    ({"API_BASE_URL": "http://127.0.0.1:9"}, "TEST_API_KEY", "TEST_API_KEY is not set (or empty)"),
    ({"API_BASE_URL": "http://127.0.0.1:9", "TEST_API_KEY": ""}, "TEST_API_KEY", "is not set"),
    ({"API_BASE_URL": "http://127.0.0.1:9", "TEST_API_KEY": "tis_test_abc\n"}, "TEST_API_KEY",
     "contains whitespace"),
    ({"API_BASE_URL": "http://127.0.0.1:9", "TEST_API_KEY": " tis_test_abc"}, "TEST_API_KEY",
     "contains whitespace"),
    ({"API_BASE_URL": "http://127.0.0.1:9", "TEST_API_KEY": "tis_test_abc",
      "TEST_REVOKED_API_KEY": "tis_test_a b"}, "TEST_REVOKED_API_KEY", "contains whitespace"),
])
def test_a_target_not_configured_is_refused_naming_the_variable(
        tmp_path: Path, env: dict[str, str], variable: str, says: str) -> None:
    config = tmp_path / "rollback.toml"
    config.write_text("[target]\nname = \"x\"\n")
    settings = load_settings(env={"ROLLBACK_CONFIG": str(config), **env})
    with pytest.raises(ConfigError) as caught:
        require_target(settings)
    line = str(caught.value)
    assert line.startswith(variable) and says in line and "\n" not in line
    assert "abc" not in line  # never the key itself


@pytest.mark.parametrize("env", [
    {"API_BASE_URL": "http://127.0.0.1:9", "TEST_API_KEY": "tis_test_abc"},
    {"TEST_API_KEY": "tis_test_abc", "config": 'api_base_url = "http://127.0.0.1:9"\n'},
])
def test_a_configured_target_passes(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "rollback.toml"
    config.write_text("[target]\n" + env.pop("config", ""))
    require_target(load_settings(env={"ROLLBACK_CONFIG": str(config), **env}))


# --- end to end: exit 2 before any request -------------------------------------------------------


@pytest.mark.parametrize("case", ["no-api-base-url", "empty-key", "unset-key", "key-with-newline"])
def test_validate_all_refuses_an_unconfigured_target_with_exit_2(sandbox: Sandbox, tmp_path: Path,
                                                                  case: str) -> None:
    env = sandbox.env(ROLLBACK_CONFIG=str(_config(tmp_path, box=sandbox,
                                                  api=case != "no-api-base-url")))
    key = env["TEST_API_KEY"]
    if case == "no-api-base-url":
        del env["API_BASE_URL"]
    elif case == "empty-key":
        env["TEST_API_KEY"] = ""
    elif case == "unset-key":
        del env["TEST_API_KEY"]
    else:
        env["TEST_API_KEY"] = key + "\n"
    variable = "API_BASE_URL" if case == "no-api-base-url" else "TEST_API_KEY"
    done = run_cli("validate", "all", env=env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and variable in lines[0], lines
    assert not (tmp_path / "reports").exists()  # pytest never started: not one request
    plain = subprocess.run([sys.executable, "-m", "pytest", "-m", "health", "-p", "no:randomly"],
                           cwd=TOOLKIT_ROOT, env=env, capture_output=True, text=True,
                           timeout=120, check=False)
    assert plain.returncode == 4 and f"ERROR: {variable}" in plain.stderr + plain.stdout
    for output in (done.stdout, done.stderr, plain.stdout, plain.stderr):
        assert key not in output
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "rollback.toml"]
    assert not [p for p in written if key in p.read_text(errors="replace")]


# --- end to end: the last FASE 2 run, found by itself --------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plain_validate_and_pytest_use_the_last_fase2_run_and_name_a_deactivated_key(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    box = fresh_sandbox
    env = box.env(ROLLBACK_CONFIG=str(_config(tmp_path, box=box)))
    run = run_cli("run", "fase2", "--yes", env=env, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    [context] = (tmp_path / "logs").glob("*/run-context.json")
    run_id = context.parent.name
    backup = json.loads(context.read_text())["fase2_backup"]
    [(key_id,)] = box.sql(f'SELECT id::text FROM "{backup["schema"]}"."{backup["table"]}" '
                          "WHERE is_active ORDER BY id LIMIT 1")
    box.sql("UPDATE api_keys SET is_active = false WHERE id = %s", (key_id,))

    validated = run_cli("validate", "fase2", env=env, timeout=300)
    assert validated.returncode == 1, validated.stdout[-3000:]
    assert f"run context: {run_id}, the last fase2 run against target" in validated.stdout
    assert key_id in validated.stdout  # test_converted_keys_are_still_active names it

    plain = subprocess.run([sys.executable, "-m", "pytest", "-m", "fase2", "-p", "no:randomly",
                            "-k", "still_active"], cwd=TOOLKIT_ROOT, env=env, capture_output=True,
                           text=True, timeout=300, check=False)
    assert plain.returncode == 1, plain.stdout[-3000:]
    assert f"run context: {run_id}, the last fase2 run" in plain.stdout
    assert key_id in plain.stdout
    # --run-context still decides: a context of no FASE 2 backup makes the check inconclusive
    other = tmp_path / "fase1-context.json"
    other.write_text(json.dumps({"run_id": "r-elsewhere", "phase": "fase1"}))
    named = run_cli("validate", "fase2", "--run-context", str(other), env=env, timeout=300)
    assert "the last fase2 run" not in named.stdout and key_id not in named.stdout
