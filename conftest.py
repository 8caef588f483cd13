"""Public fixtures of the validation suite in `checks/`: what the checks talk to.

Settings come from `rollback.config.load_settings()` (rollback.toml, then the environment for
secrets) with the command-line options of `checks._plugin.options` on top. A fixture whose
secret is missing skips the check with the variable's name; under `--gate` that skip fails.
"""

# ruff: noqa: E402  (the plugin modules must be marked for rewriting before they are imported)
from __future__ import annotations

import pytest

# pytest_plugins below would mark these for assertion rewriting, but the imports that follow
# load them first; marking them now keeps them rewritten and pytest quiet.
pytest.register_assert_rewrite("checks._plugin")

from collections.abc import Iterator

import httpx
import psycopg

from checks._plugin.options import SuiteConfig, suite_config
from checks._plugin.redact import safe_url
from checks._plugin.verdicts import evidence_of, inconclusive
from checks.database import KeyTenant, connect_read_only, find_key
from checks.evidence import Evidence
from checks.probe import USER_AGENT, Sample, sample
from checks.run_context import RunContext
from rollback.config import Settings, Thresholds
from rollback.errors import ConfigError
from rollback.profile import Profile

pytest_plugins = [
    "checks._plugin.options",
    "checks._plugin.verdicts",
    "checks._plugin.report",
]


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


def _client(target: Settings, key: str | None) -> httpx.Client:
    headers = {"User-Agent": USER_AGENT}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=target.target.api_base_url, headers=headers,
                        timeout=target.target.request_timeout_s, follow_redirects=False)


@pytest.fixture(scope="session")
def api(target: Settings) -> Iterator[httpx.Client]:
    """An httpx client for API_BASE_URL authenticated with TEST_API_KEY (a tenant-wide key)."""
    try:
        key = target.require_api_key()
    except ConfigError as exc:
        pytest.skip(str(exc))
    with _client(target, key) as client:
        yield client


@pytest.fixture(scope="session")
def anon_api(target: Settings) -> Iterator[httpx.Client]:
    """An httpx client for API_BASE_URL that sends no Authorization header."""
    with _client(target, None) as client:
        yield client


@pytest.fixture(scope="session")
def branch_api(target: Settings) -> Iterator[httpx.Client]:
    """A client with TEST_BRANCH_API_KEY: a key that was branch-scoped before a FASE 2 rollback.

    Optional: unset, the checks that use it are inconclusive (a tenant may have had none).
    """
    secret = target.secrets.test_branch_api_key
    if secret is None:
        inconclusive("TEST_BRANCH_API_KEY is not set: export a key that was branch-scoped before "
                     "the FASE 2 rollback to check what it reads now")
    with _client(target, secret.get_secret_value()) as client:
        yield client


@pytest.fixture(scope="session")
def revoked_api(target: Settings) -> Iterator[httpx.Client]:
    """A client with TEST_REVOKED_API_KEY (a revoked key of the target). Optional."""
    secret = target.secrets.test_revoked_api_key
    if secret is None:
        inconclusive("TEST_REVOKED_API_KEY is not set: export a revoked key to check that "
                     "revoked keys are refused")
    with _client(target, secret.get_secret_value()) as client:
        yield client


@pytest.fixture(scope="session")
def expired_api(target: Settings) -> Iterator[httpx.Client]:
    """A client with TEST_EXPIRED_API_KEY (an expired key of the target). Optional."""
    secret = target.secrets.test_expired_api_key
    if secret is None:
        inconclusive("TEST_EXPIRED_API_KEY is not set: export an expired key to check that "
                     "expired keys are refused")
    with _client(target, secret.get_secret_value()) as client:
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
def endpoint_samples(api: httpx.Client, thresholds: Thresholds, profile: Profile) -> dict[str, Sample]:
    """`sample_size` concurrent GETs to each list endpoint, shared by latency and error checks."""
    return sample(api, profile.endpoints, thresholds.sample_size)
