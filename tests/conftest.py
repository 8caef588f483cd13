"""Fixtures for the toolkit's own tests: real sandboxes over a real PostgreSQL, real servers, real git.

One embedded PostgreSQL cluster serves the whole test session; every sandbox is a database of
its own in it (through `sandbox up --database-url`, the external-database path), with its own
platform repository and API server:

- `sandbox`        shared by the session, healthy, at FASE 3. Tests that break it put it back.
- `fresh_sandbox`  a new one per test, for tests that change it for good (rollbacks, resets).
- `tistis_sandbox` like `sandbox`, in the real platform's shape (`sandbox up --shape tistis`).
- `any_sandbox`, `any_fresh_sandbox`  the same, once per shape: a test asking for one runs
                   against the API reference's shape and against the real platform's.

Rules that keep these tests green on a busy 2-core machine (CI runs them with -n 2):

- No wall-clock figure is asserted. A bounded time is asserted as behaviour (a refused run exits
  while the holder still runs; a budget leaves checks unreached) or against the configured
  timeout with a wide margin; how fast something is belongs in `python -m bench`.
- A test whose fixtures do long work (a rehearsal, a whole CLI run beside a fresh sandbox)
  carries its own `pytest.mark.timeout`: fixture setup counts toward the default 60 s.
- Helpers shared by several test modules live in helper modules (`tests/targets.py`,
  `tests/validations.py`, `tests/receivers.py`, `tests/reliability.py`), never in a test module.
- A fixture that cannot set up is an error: only ENVIRONMENT_SKIPS (what the machine lacks) skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from checks._plugin.verdicts import Inconclusive, NothingSeen
from rollback.profile import Profile, load_profile
from sandbox import control
from sandbox.postgres import EmbeddedPostgres
from tests.receivers import Receiver, serve_receiver

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true",
                     help="also run the long rehearsals marked soak (the demo, the benchmark, whole "
                          "sequences); outside .ci/run")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --soak, the tests marked soak are deselected (and counted as such), not skipped."""
    if config.getoption("--soak"):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


#: the only skips a fixture may raise: what this machine lacks, said loudly (and by .ci/run).
#: Any other skip out of a fixture is a fixture that could not set up: reported as an error
ENVIRONMENT_SKIPS = ("BROWSER TESTS SKIPPED", "STORAGE FAULT TESTS SKIPPED")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A skip raised while fixtures set up, other than an ENVIRONMENT_SKIPS one, fails the test:
    a broken fixture must not pass for a test that did not apply. (Skips of a skip/skipif
    marker are the marker's, and stay skips.)

    A check's `Inconclusive` (or `NothingSeen`) raised out of a test's own body fails it too,
    unless the test is marked `expects_inconclusive`: both are pytest skips, so a verdict
    weakened into "inconclusive" would otherwise turn its unit test into a skip, which mutation
    testing counts as a surviving mutant and a reader of the run as nothing wrong."""
    report: pytest.TestReport = yield
    if (call.when == "call" and report.skipped and call.excinfo is not None
            and call.excinfo.errisinstance((Inconclusive, NothingSeen))
            and item.get_closest_marker("expects_inconclusive") is None):
        report.outcome = "failed"
        report.longrepr = (f"the test ended inconclusive ({call.excinfo.value}): mark it "
                           "expects_inconclusive if that is its expected outcome, or catch the "
                           "exception (pytest.raises(Inconclusive)) and check its message")
        return report
    if (call.when == "setup" and report.skipped and call.excinfo is not None
            and call.excinfo.errisinstance(pytest.skip.Exception)
            and item.get_closest_marker("skip") is None and item.get_closest_marker("skipif") is None):
        reason = str(call.excinfo.value.msg)
        if not reason.startswith(ENVIRONMENT_SKIPS):
            report.outcome = "failed"
            report.longrepr = (f"a fixture skipped this test ({reason}): a fixture that cannot set "
                               "up is an error; only what the machine lacks may skip "
                               "(tests/conftest.py ENVIRONMENT_SKIPS)")
    return report


@dataclass
class Sandbox:
    """A running sandbox and the handles a test needs to use it and to break it."""

    state: control.State

    @property
    def dir(self) -> Path:
        return self.state.root

    @property
    def api_base_url(self) -> str:
        return self.state.api_base_url

    @property
    def database_url(self) -> str:
        return self.state.database_url

    @property
    def keys(self) -> dict[str, str]:
        return self.state.keys

    @property
    def tenant_id(self) -> str:
        return self.state.tenant_id

    @property
    def branch_id(self) -> str:
        return self.state.branch_id

    @property
    def repo(self) -> Path:
        return self.state.checkout

    @property
    def chaos_file(self) -> Path:
        return self.state.chaos_file

    @property
    def config_file(self) -> Path:
        return self.state.config_file

    def deploy(self) -> str:
        return control.deploy(self.dir)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment `eval "$(rollback sandbox env)"` would give, for a subprocess."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ROLLBACK_"))}
        env.update(control.env_values(self.dir))
        env.update(extra)
        return env

    @property
    def shape(self) -> str:
        return self.state.shape

    @property
    def profile(self) -> Profile:
        """The platform profile the sandbox's rollback.toml names (its shape's)."""
        return load_profile(self.state.shape)

    def sql(self, query: str | psycopg.sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
        """Run SQL as the superuser, committed; returns rows when the statement has any."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    @contextlib.contextmanager
    def chaos(self, **faults: Any) -> Iterator[None]:
        """Inject faults into the running server (see the platform's app/chaos.py) for a block."""
        self.chaos_file.write_text(json.dumps(faults))
        try:
            yield
        finally:
            self.chaos_file.unlink(missing_ok=True)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `rollback ARGS` as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "rollback", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, input=input, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for the session; sandboxes get databases of their own in it."""
    root = Path(tempfile.mkdtemp(prefix="rollback-tests-"))
    server = EmbeddedPostgres.create(root / "postgres", control.free_port())
    server.start()
    yield server
    server.destroy()
    shutil.rmtree(root, ignore_errors=True)


class SandboxFactory:
    def __init__(self, cluster: EmbeddedPostgres, base: Path) -> None:
        self.cluster, self.base, self.count = cluster, base, 0

    def make(self, **options: Any) -> Sandbox:
        self.count += 1
        name = f"sandbox_{os.getpid()}_{self.count}"
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        options.setdefault("shape", "contract")  # the tests' own default: the API reference's
        state, _ = control.up(self.base / name, database_url=self.cluster.url(name),
                              log=lambda line: None, **options)
        return Sandbox(state)

    def destroy(self, box: Sandbox) -> None:
        control.down(box.dir)
        name = box.dir.name
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        shutil.rmtree(box.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox_factory(pg_cluster: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory) -> SandboxFactory:
    return SandboxFactory(pg_cluster, tmp_path_factory.mktemp("sandboxes"))


@pytest.fixture(scope="session")
def sandbox(sandbox_factory: SandboxFactory) -> Iterator[Sandbox]:
    """A healthy sandbox at FASE 3, shared by the session. Put back whatever you break."""
    box = sandbox_factory.make()
    yield box
    sandbox_factory.destroy(box)


@pytest.fixture
def fresh_sandbox(sandbox_factory: SandboxFactory) -> Iterator[Sandbox]:
    """A sandbox of this test's own, destroyed afterwards."""
    box = sandbox_factory.make()
    yield box
    sandbox_factory.destroy(box)


SHAPES = ("contract", "tistis")


@pytest.fixture(scope="session")
def tistis_sandbox(sandbox_factory: SandboxFactory) -> Iterator[Sandbox]:
    """A healthy sandbox of the real platform's shape, shared by the session."""
    box = sandbox_factory.make(shape="tistis")
    yield box
    sandbox_factory.destroy(box)


@pytest.fixture(scope="session", params=SHAPES)
def any_sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """The session's shared sandbox of each shape in turn: a test that asks for it runs on both
    the API reference's shape and the real platform's."""
    name = "sandbox" if request.param == "contract" else "tistis_sandbox"
    box: Sandbox = request.getfixturevalue(name)
    return box


@pytest.fixture(params=SHAPES)
def any_fresh_sandbox(request: pytest.FixtureRequest,
                      sandbox_factory: SandboxFactory) -> Iterator[Sandbox]:
    """A sandbox of this test's own, of each shape in turn, destroyed afterwards."""
    box = sandbox_factory.make(shape=request.param)
    yield box
    sandbox_factory.destroy(box)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver (and Pushgateway stand-in) on 127.0.0.1, see tests/receivers.py."""
    with serve_receiver() as running:
        yield running
