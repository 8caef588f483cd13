"""Command-line options, and the one typed SuiteConfig every fixture and hook reads.

Options override `rollback.toml` ([thresholds], [target]) which overrides the defaults of
`rollback.config`. Secrets come only from the environment (see `rollback.config`).
The SuiteConfig lives in `config.stash[SUITE]`; nothing here is a module global.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

import checks
from checks._plugin.redact import Redactor
from checks.run_context import RunContext, load_run_context
from rollback.config import Settings, Thresholds, load_settings
from rollback.errors import ConfigError
from rollback.profile import Profile

RUN_CONTEXT_ENV = "ROLLBACK_RUN_CONTEXT"
CHECKS_DIR = Path(checks.__file__).resolve().parent


@dataclass(frozen=True)
class SuiteConfig:
    """What the checks run against and how strictly they are judged."""

    settings: Settings
    gate: bool
    allow_writes: bool
    run_context: RunContext | None
    expected_version: str | None
    redactor: Redactor

    @property
    def thresholds(self) -> Thresholds:
        return self.settings.thresholds

    @property
    def profile(self) -> Profile:
        """What the platform looks like ([platform] profile): endpoints, codes, tables, phases."""
        return self.settings.platform

    def __repr__(self) -> str:
        return (
            f"SuiteConfig(target {self.settings.target.api_base_url}, {self.thresholds!r}, "
            f"gate={self.gate}, run={self.run_context.run_id if self.run_context else None})"
        )


SUITE = pytest.StashKey[SuiteConfig]()
#: why the SuiteConfig could not be built, when the checks are not part of this run
SUITE_ERROR = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rollback", "rollback validation checks")
    group.addoption("--warn-ms", type=float, metavar="MS",
                    help="p95 above this passes with a warning (default: thresholds.warn_ms, 500)")
    group.addoption("--alert-ms", type=float, metavar="MS",
                    help="p95 above this fails (default: thresholds.alert_ms, 1000)")
    group.addoption("--max-error-rate", type=float, metavar="RATE",
                    help="share of failed requests that fails a check, 0-1 (default 0.05)")
    group.addoption("--sample-size", type=int, metavar="N",
                    help="requests per endpoint in a latency or error-rate sample (default 20)")
    group.addoption("--traffic-window", type=float, metavar="MIN",
                    help="minutes of api_key_usage_logs the real-traffic checks read (default 15)")
    group.addoption("--expected-version", metavar="VERSION",
                    help="the version /health must report (default: the run context's, if any)")
    # Given with a blank and no test path (`pytest --run-context /abs/ctx.json`), pytest takes the
    # path for a test path before this option exists and roots itself there: hence the `=` form.
    group.addoption("--run-context", type=Path, metavar="PATH",
                    help=f"JSON context of a rollback run, as --run-context=PATH "
                         f"(default: ${RUN_CONTEXT_ENV})")
    group.addoption("--gate", action="store_true", default=False,
                    help="a required check that skips fails (missing TEST_API_KEY, DATABASE_URL...)")
    group.addoption("--allow-writes", action="store_true", default=False,
                    help="run the checks marked `write`, which POST to the target")


def _overrides(config: pytest.Config) -> dict[str, dict[str, object]]:
    return {
        "thresholds": {
            "warn_ms": config.getoption("warn_ms"),
            "alert_ms": config.getoption("alert_ms"),
            "error_rate": config.getoption("max_error_rate"),
            "sample_size": config.getoption("sample_size"),
            "traffic_window_min": config.getoption("traffic_window"),
        },
        "target": {"expected_version": config.getoption("expected_version")},
    }


def build_suite_config(config: pytest.Config) -> SuiteConfig:
    """Settings from rollback.toml, the environment and the options; raises ConfigError."""
    settings = load_settings(overrides=_overrides(config))
    context_path: Path | None = config.getoption("run_context")
    if context_path is None and os.environ.get(RUN_CONTEXT_ENV):
        context_path = Path(os.environ[RUN_CONTEXT_ENV])
    run_context = load_run_context(context_path.expanduser()) if context_path else None
    expected = (
        config.getoption("expected_version")
        or (run_context.expected_version if run_context else None)
        or settings.target.expected_version
    )
    return SuiteConfig(
        settings=settings,
        gate=bool(config.getoption("gate")),
        allow_writes=bool(config.getoption("allow_writes")),
        run_context=run_context,
        expected_version=expected,
        redactor=Redactor(settings.secrets.values()),
    )


def runs_checks(config: pytest.Config) -> bool:
    """Whether this session collects from checks/ (and not only the toolkit's own tests)."""
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path == CHECKS_DIR or CHECKS_DIR in path.parents or path in CHECKS_DIR.parents:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[SUITE] = build_suite_config(config)
    except ConfigError as exc:
        if runs_checks(config):
            raise pytest.UsageError(str(exc)) from None
        config.stash[SUITE_ERROR] = str(exc)
        return
    if runs_checks(config) and not config.getoption("collectonly"):
        _refuse_a_blind_role(config.stash[SUITE])


def _refuse_a_blind_role(suite: SuiteConfig) -> None:
    """A role that row level security blinds would pass every database check on zero rows:
    refuse it before any check runs (pytest's usage error; `rollback validate` exits 2).
    An unreachable database is left to the checks, which report it."""
    from checks.database import connect_read_only
    from rollback.rls import require_sight

    if suite.settings.secrets.database_url is None:
        return
    try:
        conn = connect_read_only(suite.settings)
    except psycopg.Error:
        return
    with conn:
        try:
            require_sight(conn, suite.profile.tables.all(), suite.profile.service_role)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
        except psycopg.Error:
            return


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`endpoint` runs a check once per list endpoint of the profile; `branch_endpoint` once per
    endpoint the API filters by branch. Ids are the resource names."""
    suite = metafunc.config.stash.get(SUITE, None)
    if suite is None:
        return
    profile = suite.profile
    for name, resources in (("endpoint", profile.resources),
                            ("branch_endpoint", [r for r in profile.resources if r.branch_filter])):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, [profile.path_of(r) for r in resources],
                                 ids=[r.name for r in resources])


def suite_config(config: pytest.Config) -> SuiteConfig:
    """The SuiteConfig of this session; fails the asking check if settings could not be read."""
    if SUITE not in config.stash:
        pytest.fail(f"validation settings unavailable: {config.stash.get(SUITE_ERROR, 'unknown')}")
    return config.stash[SUITE]


def is_check(item: pytest.Item) -> bool:
    return CHECKS_DIR in item.path.parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every check gets a timeout (thresholds.check_timeout_s) unless it declares its own; the
    cache checks of the other cache signal are deselected."""
    if SUITE not in config.stash:
        return
    suite = config.stash[SUITE]
    timeout = suite.thresholds.check_timeout_s
    # A cache check written for another way of seeing the cache does not apply to this platform.
    other_signal = [item for item in items if is_check(item)
                    and (mark := item.get_closest_marker("cache_signal")) is not None
                    and mark.args[0] != suite.profile.fase3.cache]
    if other_signal:
        config.hook.pytest_deselected(items=other_signal)
        items[:] = [item for item in items if item not in other_signal]
    for item in items:
        if is_check(item) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(timeout))


def pytest_report_header(config: pytest.Config) -> list[str]:
    if SUITE not in config.stash or not runs_checks(config):
        return []
    suite = config.stash[SUITE]
    secrets = suite.settings.secrets
    have = [name for name, value in (("TEST_API_KEY", secrets.test_api_key),
                                     ("DATABASE_URL", secrets.database_url),
                                     ("TEST_BRANCH_API_KEY", secrets.test_branch_api_key),
                                     ("TEST_REVOKED_API_KEY", secrets.test_revoked_api_key))
            if value is not None]
    lines = [
        f"target: {suite.settings.target.name} {suite.settings.target.api_base_url} "
        f"(profile {suite.profile.name})",
        f"thresholds: {suite.thresholds!r}; gate {'on' if suite.gate else 'off'}",
        f"secrets set: {', '.join(have) or 'none'}",
    ]
    if suite.run_context is not None:
        lines.append(f"run context: {suite.run_context.run_id} ({suite.run_context.phase})")
    return lines
