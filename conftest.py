"""Public fixtures of the validation suite in `checks/`: what the checks talk to.

Settings come from `rollback.config.load_settings()` (rollback.toml, then the environment for
secrets) with the command-line options of `checks._plugin.options` on top. An optional secret
that is missing skips (or makes inconclusive) the checks that need it; under `--gate` a required
one's skip fails.

Before any check runs, the target must be configured (`checks.target.require_target`): no
API_BASE_URL, an empty or unset TEST_API_KEY, or whitespace in a key is pytest's usage error
(exit 4; `rollback validate` exits 2), naming the variable. `pytest -m faseN` without
`--run-context` uses the last run of that phase against the same target and says which in its
header (`--no-last-run` turns that off).
"""

# ruff: noqa: E402  (the plugin modules must be marked for rewriting before they are imported)
from __future__ import annotations

import pytest

# pytest_plugins below would mark these for assertion rewriting, but the imports that follow
# load them first; marking them now keeps them rewritten and pytest quiet.
pytest.register_assert_rewrite("checks._plugin")

import dataclasses
from collections.abc import Iterator

import httpx
import psycopg

from checks._plugin.options import SUITE, SuiteConfig, is_check, runs_checks, suite_config
from checks._plugin.redact import safe_url
from checks._plugin.verdicts import evidence_of, inconclusive
from checks.database import KeyTenant, connect_read_only, find_key
from checks.evidence import Evidence
from checks.expect import decide_error_rate
from checks.probe import (
    USER_AGENT,
    Budget,
    CheckClient,
    Sample,
    SharedSample,
    make_room,
    sample,
    sample_until_decided,
)
from checks.run_context import RunContext, last_run
from checks.target import require_target
from rollback import startup
from rollback.config import Settings, Thresholds
from rollback.errors import ConfigError
from rollback.profile import Profile, VersionCommand

pytest_plugins = [
    "checks._plugin.options",
    "checks._plugin.verdicts",
    "checks._plugin.report",
]

PHASES = ("fase1", "fase2", "fase3")
#: the line saying which run's context the checks use, when they looked for one themselves
LAST_RUN = pytest.StashKey[str]()
#: the time the check under way may still spend on requests (and on waiting for rate limits),
#: and the target's health as the checks found it (Budget.breaker)
BUDGET = pytest.StashKey[Budget]()
#: the list endpoints' sample, taken in the background from the first check on (SharedSample)
SHARED_SAMPLE = pytest.StashKey[SharedSample]()
#: the profile's version command (a deploy platform's CLI), started before the first check
VERSION_COMMAND = pytest.StashKey[VersionCommand]()


def _uses(item: pytest.Item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())



def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rollback")
    group.addoption(
        "--no-last-run", action="store_true", default=False,
        help="with -m faseN and no --run-context, do not use the last run of that phase against "
             "this target (found under [paths] logs_dir)")
    group.addoption(
        "--show-pii", action="store_true", default=False,
        help="show personal data (names, phones, e-mails) of response bodies in the evidence "
             "and reports; masked by default")


def pytest_configure(config: pytest.Config) -> None:
    """After the options plugin built the SuiteConfig: refuse a target that is not configured,
    and find the run context of the last run of the selected phase."""
    suite = config.stash.get(SUITE, None)
    if suite is None:
        return
    suite = dataclasses.replace(suite, redactor=suite.redactor.with_pii(
        not config.getoption("show_pii")))
    config.stash[SUITE] = suite
    if not runs_checks(config) or config.getoption("collectonly"):
        return
    try:
        require_target(suite.settings)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    phase = (config.getoption("markexpr") or "").strip()
    if suite.run_context is not None or config.getoption("no_last_run") or phase not in PHASES:
        return
    try:
        found = last_run(suite.settings, phase)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[LAST_RUN] = found.line
    if found.context is not None:
        expected = (config.getoption("expected_version") or found.context.expected_version
                    or suite.settings.target.expected_version)
        config.stash[SUITE] = dataclasses.replace(suite, run_context=found.context,
                                                  expected_version=expected)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [config.stash[LAST_RUN]] if LAST_RUN in config.stash else []


def _budget_of(config: pytest.Config) -> Budget:
    if BUDGET not in config.stash:
        config.stash[BUDGET] = Budget()
    return config.stash[BUDGET]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Each check's requests and waits share its timeout (session fixtures set up for it too)."""
    if not is_check(item) or SUITE not in item.config.stash:
        return
    mark = item.get_closest_marker("timeout")
    timeout = float(mark.args[0]) if mark and mark.args else \
        item.config.stash[SUITE].thresholds.check_timeout_s
    _budget_of(item.config).start(timeout, item.nodeid)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The checks that read the version command's answer run last: it was started before the
    first check (below) and answers meanwhile."""
    items.sort(key=lambda item: is_check(item) and _uses(item, "version_command"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before the first check, and outside every check's timeout: start the profile's version
    command if a check reads it; if the validation key has fewer requests left in its
    rate-limit window than the checks will send, wait for the window to reset (at most a
    minute), and say so; start the shared sample (SharedSample)."""
    startup.settle()  # the checks are imported: `rollback validate`'s start-up is over
    config = session.config
    suite = config.stash.get(SUITE, None)
    checks = [item for item in session.items if is_check(item)]
    if suite is None or not checks or config.getoption("collectonly"):
        return
    # pytest-xdist's workers each run a part: there a check runs what it needs when it needs it
    worker = hasattr(config, "workerinput")
    version = suite.profile.version
    if version.source == "command" and suite.expected_version and not worker and \
            any(_uses(item, "version_command") for item in checks):
        config.stash[VERSION_COMMAND] = VersionCommand(version, suite.settings.target.api_base_url)
    secrets = suite.settings.secrets
    if secrets.test_api_key is None:
        return
    needed = 3 * len(checks) + 2 * suite.thresholds.sample_size * len(suite.profile.endpoints)
    line = make_room(suite.settings.target.api_base_url, secrets.test_api_key.get_secret_value(),
                     suite.profile.auth_path, needed,
                     min(1.0, suite.settings.target.request_timeout_s))  # a slow API: no pacing
    if line:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)
    if any(_uses(item, "endpoint_samples") for item in checks) and not worker:
        config.stash[SHARED_SAMPLE] = _shared_sample(suite, _budget_of(config)).start()


def _shared_sample(suite: SuiteConfig, budget: Budget) -> SharedSample:
    """The shared sample's own client: TEST_API_KEY, its own deadline (a check's timeout from
    its start), the session's breaker."""
    target, thresholds = suite.settings, suite.thresholds
    client = _client(target, target.require_api_key(), Budget(breaker=budget.breaker))
    return SharedSample(client, suite.profile.endpoints, thresholds.sample_size,
                        lambda c, first: sample_until_decided(c, first, thresholds.error_rate,
                                                              decide_error_rate),
                        thresholds.check_timeout_s)


def pytest_sessionfinish(session: pytest.Session) -> None:
    stash = session.config.stash
    for running in (stash.get(SHARED_SAMPLE, None), stash.get(VERSION_COMMAND, None)):
        if running is not None:
            running.close()


@pytest.fixture(scope="session")
def version_command(pytestconfig: pytest.Config) -> VersionCommand | None:
    """The profile's version command as started before the first check, if it was."""
    return pytestconfig.stash.get(VERSION_COMMAND, None)


@pytest.fixture(scope="session")
def suite(pytestconfig: pytest.Config) -> SuiteConfig:
    """The session's SuiteConfig: settings, gate, run context, redactor."""
    return suite_config(pytestconfig)


@pytest.fixture(scope="session")
def target(suite: SuiteConfig) -> Settings:
    """The target's Settings: rollback.toml + environment + command-line options."""
    return suite.settings


@pytest.fixture(scope="session")
def profile(target: Settings) -> Profile:
    """What the platform looks like ([platform] profile in rollback.toml, or ROLLBACK_PROFILE):
    its endpoints, health vocabulary, error codes, tables and phases."""
    return target.platform


@pytest.fixture(scope="session")
def thresholds(target: Settings) -> Thresholds:
    """Latency, error-rate and sample limits (rollback.toml [thresholds], --warn-ms and co.)."""
    return target.thresholds


def _client(target: Settings, key: str | None, budget: Budget) -> CheckClient:
    headers = {"User-Agent": USER_AGENT}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return CheckClient(base_url=target.target.api_base_url, headers=headers, budget=budget,
                       timeout_s=target.target.request_timeout_s, follow_redirects=False,
                       control_path=target.platform.health.path)


@pytest.fixture(scope="session")
def _budget(pytestconfig: pytest.Config) -> Budget:
    return _budget_of(pytestconfig)


@pytest.fixture(scope="session")
def api(target: Settings, _budget: Budget) -> Iterator[httpx.Client]:
    """An httpx client for API_BASE_URL authenticated with TEST_API_KEY (a tenant-wide key)."""
    try:
        key = target.require_api_key()
    except ConfigError as exc:
        pytest.skip(str(exc))
    with _client(target, key, _budget) as client:
        yield client


@pytest.fixture(scope="session")
def anon_api(target: Settings, _budget: Budget) -> Iterator[httpx.Client]:
    """An httpx client for API_BASE_URL that sends no Authorization header."""
    with _client(target, None, _budget) as client:
        yield client


@pytest.fixture(scope="session")
def branch_api(target: Settings, _budget: Budget) -> Iterator[httpx.Client]:
    """A client with TEST_BRANCH_API_KEY: a key that was branch-scoped before a FASE 2 rollback.

    Optional: unset, the checks that use it are inconclusive (a tenant may have had none).
    """
    secret = target.secrets.test_branch_api_key
    if secret is None:
        inconclusive("TEST_BRANCH_API_KEY is not set: export a key that was branch-scoped before "
                     "the FASE 2 rollback to check what it reads now")
    with _client(target, secret.get_secret_value(), _budget) as client:
        yield client


@pytest.fixture(scope="session")
def revoked_api(target: Settings, _budget: Budget) -> Iterator[httpx.Client]:
    """A client with TEST_REVOKED_API_KEY (a revoked key of the target). Optional."""
    secret = target.secrets.test_revoked_api_key
    if secret is None:
        inconclusive("TEST_REVOKED_API_KEY is not set: export a revoked key to check that "
                     "revoked keys are refused")
    with _client(target, secret.get_secret_value(), _budget) as client:
        yield client


@pytest.fixture(scope="session")
def expired_api(target: Settings, _budget: Budget) -> Iterator[httpx.Client]:
    """A client with TEST_EXPIRED_API_KEY (an expired key of the target). Optional."""
    secret = target.secrets.test_expired_api_key
    if secret is None:
        inconclusive("TEST_EXPIRED_API_KEY is not set: export an expired key to check that "
                     "expired keys are refused")
    with _client(target, secret.get_secret_value(), _budget) as client:
        yield client


@pytest.fixture(scope="session")
def _db_session(target: Settings) -> Iterator[psycopg.Connection]:
    try:
        target.require_database_url()
    except ConfigError as exc:
        pytest.skip(str(exc))
    where = safe_url(target.require_database_url())
    try:
        conn = connect_read_only(target)
    except psycopg.Error as exc:
        pytest.fail(f"cannot connect to DATABASE_URL ({where}): {exc}".strip(), pytrace=False)
    with conn:
        yield conn


@pytest.fixture
def db(_db_session: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A read-only psycopg connection to DATABASE_URL; each check is one READ ONLY transaction."""
    yield _db_session
    _db_session.rollback()


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Evidence:
    """Collects what the check measured (values, requests, latencies, warnings) for the report."""
    return evidence_of(request.node)


@pytest.fixture(scope="session")
def run_context(suite: SuiteConfig) -> RunContext:
    """The rollback run being validated (--run-context PATH or $ROLLBACK_RUN_CONTEXT)."""
    if suite.run_context is None:
        pytest.skip("no run context: pass --run-context PATH (or set ROLLBACK_RUN_CONTEXT) to the "
                    "file the rollback driver wrote; it holds the backup and counts to compare")
    return suite.run_context


@pytest.fixture(scope="session")
def key_tenant(target: Settings, api: httpx.Client, _db_session: psycopg.Connection) -> KeyTenant:
    """TEST_API_KEY's tenant and its branches, looked up in the database by the key's hash.

    Asks for `api` so that a missing TEST_API_KEY skips with that fixture's reason.
    """
    return find_key(_db_session, target.require_api_key(), "TEST_API_KEY")


@pytest.fixture(scope="session")
def foreign_branch_id(key_tenant: KeyTenant, _db_session: psycopg.Connection) -> str:
    """The id of a branch of another tenant, to try to read across tenants with."""
    row = _db_session.execute(
        "SELECT id::text FROM branches WHERE tenant_id <> %s ORDER BY id LIMIT 1",
        (key_tenant.tenant_id,),
    ).fetchone()
    _db_session.rollback()
    if row is None:
        inconclusive("no branch of another tenant in the database: cross-tenant reads cannot "
                     "be tried on a single-tenant database")
    return str(row[0])


@pytest.fixture(scope="session")
def shared_sample(pytestconfig: pytest.Config) -> SharedSample | None:
    """The list endpoints' sample as the background took it (see SharedSample), if it did."""
    return pytestconfig.stash.get(SHARED_SAMPLE, None)


@pytest.fixture(scope="session")
def endpoint_samples(api: httpx.Client, thresholds: Thresholds, profile: Profile,
                     shared_sample: SharedSample | None, _budget: Budget) -> dict[str, Sample]:
    """`sample_size` concurrent GETs to each list endpoint, shared by latency and error checks:
    the background's when it took them, else taken now."""
    taken = shared_sample.first(_budget) if shared_sample is not None else None
    return taken if taken is not None else sample(api, profile.endpoints, thresholds.sample_size)
