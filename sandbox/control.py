"""Bring the sandbox platform up and down: PostgreSQL, the platform's git repo, and its API server.

Two shapes. `contract`: the platform as its API reference describes it, the server running
from the checkout, `rollback sandbox deploy` restarting it. `tistis` (the default for a new
sandbox, because it is what production looks like): the platform as its repository has it
(Supabase roles and row level security, the real history, the real routes and codes),
deployed like Vercel: each deployment is a snapshot of a commit under `vercel/deployments/`,
and production is switched between them by `bin/vercel` (see sandbox/vercel.py). The tistis
API connects as `service_role` (BYPASSRLS, like the real service key); DATABASE_URL stays the
superuser's, like Supabase's direct connection.

Everything lives in one folder (default `.sandbox/`):

    .sandbox/
      sandbox.json      state: ports, pids, database URL, known raw keys (mode 0600: secrets)
      rollback.toml     the sandbox described as a target, for ROLLBACK_CONFIG
      chaos.json        optional fault injection read by the running server
      postgres/         the embedded cluster (absent with --database-url)
      platform/         the platform's git checkout (contract: the server runs from it)
      origin.git/       its bare `origin`
      api.log           the server's output
      bin/vercel        tistis: the stand-in `vercel` command, bound to this folder
      vercel/           tistis: state.json (deployments, production) and the snapshots

A killed PostgreSQL or API is taken over, never worked around: `up`, `status` and `down` find
the processes by what they are, not only by the pids in sandbox.json (an API is this folder's
uvicorn on its port, whatever pid sandbox.json names; see `api_processes`, and
`EmbeddedPostgres.clear_stale` for the database). `up` restarts what is down and replaces an
API it did not start itself, `status` reports what really runs (and records the pid it finds),
`down` stops all of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rollback.errors import StepFailed, UsageError
from rollback.runs.locks import pid_alive
from sandbox import repo, seed
from sandbox.postgres import EmbeddedPostgres

DEFAULT_DIR = Path(".sandbox")
DATABASE = "platform"
START_TIMEOUT_S = 30.0
SHAPES = ("contract", "tistis")
#: a new sandbox looks like production unless asked otherwise: rehearsals on the real shape
DEFAULT_SHAPE = "tistis"
SERVICE_ROLE = "service_role"
BOOTSTRAP_SQL = repo.LAYERS / "tistis" / "supabase" / "bootstrap.sql"


@dataclass
class State:
    """What `up` started; written to sandbox.json so that later commands find it."""

    dir: str
    api_port: int
    database_url: str
    embedded: bool
    pg_port: int | None = None
    pg_password: str | None = None
    api_pid: int | None = None
    tenants: int = 0
    seed: int = 0
    keys: dict[str, str] = field(default_factory=dict)
    tenant_id: str = ""
    branch_id: str = ""
    shape: str = "contract"
    # tistis: the password of service_role's login (the API's database user). A secret.
    service_password: str | None = None
    # tistis: the folder the API serves, the production deployment's snapshot
    app_dir: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.dir)

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def checkout(self) -> Path:
        return self.root / "platform"

    @property
    def chaos_file(self) -> Path:
        return self.root / "chaos.json"

    @property
    def config_file(self) -> Path:
        return self.root / "rollback.toml"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def vercel_command(self) -> Path:
        return self.bin_dir / "vercel"

    @property
    def serving_dir(self) -> Path:
        """Where the API runs from: the production snapshot (tistis), else the checkout."""
        return Path(self.app_dir) if self.shape == "tistis" and self.app_dir else self.checkout

    @property
    def health_path(self) -> str:
        return "/api/health" if self.shape == "tistis" else "/health"

    def service_url(self) -> str:
        """The API's connection: as service_role for tistis, else the database URL itself."""
        if self.shape != "tistis":
            return self.database_url
        if not self.service_password:
            raise StepFailed(f"{self.root / 'sandbox.json'} has no service_role password: "
                             "rebuild with `rollback sandbox up --reset`")
        return make_conninfo(self.database_url, user=SERVICE_ROLE, password=self.service_password)

    def postgres(self) -> EmbeddedPostgres | None:
        if not self.embedded or self.pg_port is None or self.pg_password is None:
            return None
        return EmbeddedPostgres(root=self.root / "postgres", port=self.pg_port, password=self.pg_password)

    def save(self) -> None:
        path = self.root / "sandbox.json"
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, root: Path) -> State | None:
        path = root / "sandbox.json"
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            raise UsageError(f"{path} is corrupt: remove {root} and run `rollback sandbox up`") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int | None) -> bool:
    return pid is not None and pid > 0 and pid_alive(pid)


def health(state: State, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{state.api_base_url}{state.health_path}", timeout=timeout)
        payload = response.json()
        return payload if isinstance(payload, dict) else None
    except (httpx.HTTPError, ValueError):
        return None


def api_processes(state: State) -> list[psutil.Process]:
    """This sandbox's API servers: uvicorn serving app.main:app on its port from a folder of
    its own. More than the one sandbox.json names when a start lost track of one."""
    root = str(state.root.resolve())
    found = []
    for process in psutil.process_iter(["cmdline"]):
        args = process.info["cmdline"] or []
        with contextlib.suppress(ValueError, IndexError):
            if ("app.main:app" in args and args[args.index("--port") + 1] == str(state.api_port)
                    and args[args.index("--app-dir") + 1].startswith(root)):
                found.append(process)
    return found


def api_pid(state: State) -> int | None:
    """The pid of the API that serves now: the recorded one if it is this sandbox's API, else
    the one found serving its port (recorded from now on: taken over)."""
    serving = [p.pid for p in api_processes(state)]
    if state.api_pid in serving:
        return state.api_pid
    found = serving[0] if len(serving) == 1 else None
    if found != state.api_pid:
        state.api_pid = found
        state.save()
    return found


def database_answers(state: State) -> bool:
    try:
        with psycopg.connect(state.database_url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def is_running(state: State) -> bool:
    """The API serves and the database answers (an API whose database was killed is not up)."""
    return api_pid(state) is not None and health(state) is not None and database_answers(state)


def _database_has_tables(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN "
            "('pg_catalog', 'information_schema')"
        ).fetchone()
        return bool(row and row[0])


def _reset_database(url: str) -> None:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema')"
        )]
        for name in schemas:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        conn.execute("CREATE SCHEMA public")


def apply_migrations(url: str, checkout: Path) -> list[str]:
    """Apply the checkout's up migrations in order, each in its own transaction, once."""
    applied = []
    with psycopg.connect(url, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                     "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        conn.commit()
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for path in repo.migration_files(checkout):
            if path.stem in done:
                continue
            with conn.transaction():
                conn.execute(path.read_text())  # type: ignore[call-overload]
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            applied.append(path.stem)
    return applied


def service_password(database_url: str) -> str:
    """service_role's password: derived from the superuser's (itself random), so that every
    tistis sandbox of one cluster agrees on it (roles are cluster-wide); random without one."""
    params = conninfo_to_dict(database_url)
    secret = str(params.get("password") or "")
    if not secret:
        return secrets.token_urlsafe(24)
    where = f"{params.get('host', '')}:{params.get('port', '')}"
    digest = hmac.new(secret.encode(), f"sandbox service_role {where}".encode(), hashlib.sha256)
    return digest.hexdigest()[:32]


def bootstrap_supabase(state: State) -> None:
    """What Supabase has before the first migration (roles, auth schema, default grants), then
    a login for service_role, the API's user. As the superuser; idempotent."""
    if not state.service_password:
        state.service_password = service_password(state.database_url)
        state.save()
    with psycopg.connect(state.database_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(BOOTSTRAP_SQL.read_text(encoding="utf-8"))  # type: ignore[call-overload]
        grant_service_login(conn, state.service_password)


def grant_service_login(conn: psycopg.Connection[Any], password: str) -> None:
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(SERVICE_ROLE), sql.Literal(password)))


def _write_target_config(state: State) -> None:
    if state.shape == "tistis":  # the vercel adapter, through the stand-in CLI
        vercel = json.dumps(shlex.quote(str(state.vercel_command)))
        how = f'deploy_mode = "vercel"\nvercel_command = {vercel}\n'
    else:
        deploy = f"{shlex.quote(sys.executable)} -m rollback sandbox deploy --dir {shlex.quote(state.dir)}"
        how = f'deploy_mode = "command"\ndeploy_command = {json.dumps(deploy)}\n'
    state.config_file.write_text(
        "# The sandbox described as a rollback target (written by `rollback sandbox up`).\n"
        "[platform]\n"
        f"profile = {json.dumps(state.shape)}\n"
        "\n"
        "[target]\n"
        'name = "sandbox"\n'
        f'api_base_url = "{state.api_base_url}"\n'
        f"repo = {json.dumps(str(state.checkout))}\n"
        f"build_command = {json.dumps(shlex.quote(sys.executable) + ' build.py')}\n"
        f"{how}"
        "deploy_timeout_s = 60\n"
    )


def start_api(state: State) -> None:
    """Start the server, in its own session, and wait for health: contract from the checkout
    as it is now (health must report its HEAD), tistis from the production snapshot."""
    tistis = state.shape == "tistis"
    app_dir = state.serving_dir
    version = None if tistis else repo.head(state.checkout)
    stop_api(state)  # an API this folder left running (sandbox.json lost track of it) goes first
    _port_free(state)
    env = {
        **os.environ,
        "PLATFORM_DATABASE_URL": state.service_url(),
        "PLATFORM_SHAPE": state.shape,
        "PLATFORM_CHAOS_FILE": str(state.chaos_file),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for secret in ("DATABASE_URL", "TEST_API_KEY", "TEST_BRANCH_API_KEY", "TEST_REVOKED_API_KEY",
                   "TEST_EXPIRED_API_KEY", "PLATFORM_VERSION"):
        env.pop(secret, None)
    if version:
        env["PLATFORM_VERSION"] = version
    log = (state.root / "api.log").open("ab")
    log_fd = log.fileno()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
         "--port", str(state.api_port), "--app-dir", str(app_dir), "--no-access-log",
         "--timeout-graceful-shutdown", "5"],
        cwd=app_dir, env=env, stdout=log_fd, stderr=log_fd, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    state.api_pid = process.pid
    state.save()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            state.api_pid = None
            state.save()
            raise StepFailed(f"sandbox API exited with {process.returncode} at start: "
                             f"see {state.root / 'api.log'}")
        payload = health(state, timeout=1.0)
        if payload and (payload.get("status") in ("healthy", "degraded") if tistis
                        else payload.get("version") == version):
            return
        time.sleep(0.1)
    stop_api(state)  # never leave one running that sandbox.json does not name
    raise StepFailed(f"sandbox API did not answer /health within {START_TIMEOUT_S:g} s: "
                     f"see {state.root / 'api.log'}")


def _port_free(state: State) -> None:
    """The API's port must be free: a program not of this sandbox there is named, not killed."""
    with socket.socket() as sock:
        # as uvicorn binds: connections of a server just stopped, in TIME_WAIT, hold no port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", state.api_port))
            return
        except OSError:
            pass
    holder = next((c.pid for c in psutil.net_connections("tcp") if c.laddr
                   and c.laddr.port == state.api_port and c.status == psutil.CONN_LISTEN), None)
    who = f"pid {holder} ({' '.join(psutil.Process(holder).cmdline()[:3])})" if holder else \
        "another program"
    raise StepFailed(f"port {state.api_port} of the sandbox's API is taken by {who}, not this "
                     f"sandbox's API: stop it, or rebuild on another port (`rollback sandbox up "
                     f"--reset --port N --dir {state.root}`)")


def stop_api(state: State) -> None:
    """Stop this sandbox's API: the one sandbox.json names and any other it finds serving the
    port (one whose start lost track of it). A recorded pid that is now another program's is
    left alone."""
    for process in api_processes(state):
        pid = process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)  # started in a session of its own: its group
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
    state.api_pid = None
    state.save()


def up(
    root: Path = DEFAULT_DIR,
    *,
    port: int | None = None,
    tenants: int = 50,
    keys: int | None = None,
    seed_value: int = 42,
    database_url: str | None = None,
    reset: bool = False,
    shape: str | None = None,
    log: Any = print,
) -> tuple[State, bool]:
    """Start the sandbox. Returns the state and whether anything new was started.

    `shape` is "contract" or "tistis"; None keeps an existing sandbox's shape (a new one is
    DEFAULT_SHAPE, tistis). An existing sandbox of another shape is rebuilt only with `reset`.
    """
    root = root.resolve()
    if shape is not None and shape not in SHAPES:
        raise UsageError(f"--shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    existing = State.load(root)
    if existing and not reset and shape is not None and existing.shape != shape:
        raise UsageError(f"the sandbox in {root} is of shape {existing.shape}: "
                         f"pass --reset to rebuild it as {shape}")
    if existing and not reset and is_running(existing):
        return existing, False
    if tenants < 1:
        raise UsageError(f"--tenants must be at least 1, got {tenants}")
    if keys is not None and keys < 1:
        raise UsageError(f"--keys must be at least 1, got {keys}")
    if not root.exists():
        root.mkdir(parents=True, mode=0o700)
    if existing and not reset:
        _restart(existing, log)
        return existing, True
    if existing:
        down(root)
    for leftover in (root / "vercel", root / "bin"):
        if leftover.exists():
            shutil.rmtree(leftover)
    if database_url is None:
        pg_root = root / "postgres"
        if pg_root.exists():
            EmbeddedPostgres(pg_root, 0, "").destroy()
        server = EmbeddedPostgres.create(pg_root, free_port())
        server.start()
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        state = State(dir=str(root), api_port=port or free_port(), database_url=server.url(DATABASE),
                      embedded=True, pg_port=server.port, pg_password=server.password)
        log(f"embedded PostgreSQL started on 127.0.0.1:{server.port}")
    else:
        try:
            has_tables = _database_has_tables(database_url)
        except psycopg.Error as exc:
            raise StepFailed(f"--database-url: cannot connect ({str(exc).strip().splitlines()[0]})") from None
        if has_tables and not reset:
            raise UsageError("--database-url: that database already holds tables; "
                             "pass --reset to drop everything in it and rebuild the sandbox")
        if has_tables:
            _reset_database(database_url)
        state = State(dir=str(root), api_port=port or free_port(), database_url=database_url, embedded=False)
    state.tenants, state.seed = tenants, seed_value
    state.shape = shape or DEFAULT_SHAPE
    state.save()
    if state.shape == "tistis":
        head = repo.build_tistis(state.checkout, root / "origin.git")
        log(f"platform repository built at {state.checkout} (HEAD {head[:12]}, "
            "the real history: FASE 1-3 in one commit, no trailers)")
        bootstrap_supabase(state)
        log("Supabase bootstrap applied (roles anon, authenticated, service_role; schema auth)")
    else:
        head = repo.build(state.checkout, root / "origin.git")
        log(f"platform repository built at {state.checkout} (HEAD {head[:12]}, FASE 3)")
    migrations = apply_migrations(state.database_url, state.checkout)
    log(f"migrations applied: {', '.join(migrations)}")
    with psycopg.connect(state.database_url) as conn:
        summary = seed.seed(conn, tenants=tenants, seed_value=seed_value, shape=state.shape)
        grown = seed.grow_keys(conn, keys, seed_value, shape=state.shape) if keys else 0
        conn.commit()
        conn.execute("ANALYZE")
    log(f"seeded {summary.tenants} tenants ({summary.multi_branch_tenants} multi-branch), "
        f"{summary.branches} branches, {summary.leads} leads, {summary.appointments} appointments, "
        f"{summary.keys + grown} API keys ({summary.branch_keys} branch-scoped seeded"
        + (f", {grown} bulk" if grown else "") + ")")
    state.keys = summary.known.as_dict()
    state.tenant_id, state.branch_id = summary.test_tenant_id, summary.test_branch_id
    state.save()
    _write_target_config(state)
    if state.shape == "tistis":
        from sandbox import vercel

        vercel.write_command(state)
        first = vercel.deploy(state.root, state.checkout, log=log)
        log(f"first production deployment {first.id} ({first.url}) of {first.commit[:12]}")
    else:
        start_api(state)
    return state, True


def _restart(state: State, log: Any) -> None:
    server = state.postgres()
    if server and not server.is_running():
        for line in server.clear_stale():
            log(line)
        server.start()
        log(f"embedded PostgreSQL restarted on 127.0.0.1:{server.port}")
    if api_pid(state) is not None:
        log(f"API pid {state.api_pid} replaced by a fresh one (its database connections are stale)")
    if state.shape == "tistis" and state.service_password:
        # roles are cluster-wide: put the login back in case the cluster was rebuilt under us
        with psycopg.connect(state.database_url, autocommit=True, connect_timeout=10) as conn:
            grant_service_login(conn, state.service_password)
    start_api(state)


def require(root: Path = DEFAULT_DIR) -> State:
    state = State.load(root.resolve())
    if state is None:
        raise UsageError(f"no sandbox in {root}: run `rollback sandbox up` first")
    return state


def deploy(root: Path = DEFAULT_DIR) -> str:
    """The sandbox's deploy command. Contract: restart the API from the checkout's current
    commit. Tistis: `vercel --prod --yes` from the checkout (a new production deployment of its
    HEAD). Returns the deployed commit."""
    state = require(root)
    if state.shape == "tistis":
        from sandbox import vercel

        return vercel.deploy(state.root, state.checkout).commit
    stop_api(state)
    start_api(state)
    return repo.head(state.checkout)


def down(root: Path = DEFAULT_DIR) -> bool:
    """Stop the API and the embedded PostgreSQL. Data stay; `up` restarts them."""
    state = State.load(root.resolve())
    if state is None:
        return False
    stop_api(state)
    server = state.postgres()
    if server:
        server.stop()
    return True


def _exported(state: State) -> dict[str, str]:
    return {
        "API_BASE_URL": state.api_base_url,
        "TEST_API_KEY": state.keys.get("tenant", ""),
        "TEST_BRANCH_API_KEY": state.keys.get("branch", ""),
        "TEST_REVOKED_API_KEY": state.keys.get("revoked", ""),
        "TEST_EXPIRED_API_KEY": state.keys.get("expired", ""),
        "DATABASE_URL": state.database_url,
        "ROLLBACK_CONFIG": str(state.config_file),
    }


def env_lines(root: Path = DEFAULT_DIR) -> list[str]:
    """`export` lines that point every later command at the sandbox; for tistis also PATH, so
    that `vercel` is the sandbox's stand-in."""
    state = require(root)
    lines = [f"export {name}={shlex.quote(value)}" for name, value in _exported(state).items()]
    if state.shape == "tistis":
        lines.append(f'export PATH={shlex.quote(str(state.bin_dir))}:"$PATH"')
    return lines


def env_values(root: Path = DEFAULT_DIR, path: str | None = None) -> dict[str, str]:
    """What `eval "$(rollback sandbox env)"` sets, as values: for a program that builds the
    environment of its children itself. `path` is the PATH to extend (default: this one's)."""
    state = require(root)
    values = _exported(state)
    if state.shape == "tistis":
        rest = os.environ.get("PATH", "") if path is None else path
        values["PATH"] = f"{state.bin_dir}:{rest}" if rest else str(state.bin_dir)
    return values


def status(root: Path = DEFAULT_DIR) -> dict[str, Any]:
    """What really runs: processes found by what they are, the database asked over TCP."""
    state = require(root)
    server = state.postgres()
    recorded = state.api_pid
    pid = api_pid(state)
    payload = health(state) if pid is not None else None
    answers = database_answers(state)
    if state.embedded:
        database = "embedded, " + ("running" if server and server.is_running() else "stopped")
    else:
        database = "external"
    database += "" if answers else ", not answering"
    api = f"{state.api_base_url} " + ("up" if payload else "down")
    if pid is not None and pid != recorded:
        api += f" (pid {pid}, taken over: sandbox.json named {recorded})"
    result: dict[str, Any] = {
        "dir": state.dir,
        "shape": state.shape,
        "ready": bool(payload) and answers,
        "database": database,
        "api": api,
        "api_pid": pid,
        "deployed_version": (payload or {}).get("version"),
        "checkout_head": repo.head(state.checkout),
    }
    if state.shape != "tistis":
        result["phases_in_checkout"] = phases_present(state.checkout)
        return result
    from sandbox import vercel

    production = vercel.production(state.root)
    result["production_deployment"] = f"{production.id} {production.url}" if production else None
    result["deployed_commit"] = production.commit if production else None
    result["phases_in_checkout"] = tistis_phases_present(state.checkout)
    result["phases_deployed"] = tistis_phases_present(state.checkout, production.commit) if production else []
    return result


def phases_present(checkout: Path) -> list[str]:
    """Phases whose commits are in the checkout's history and not reverted since."""
    log = repo.git(checkout, "log", "--format=%H%x00%B%x1e")
    present: list[str] = []
    reverted: set[str] = set()
    for entry in log.split("\x1e"):
        if "\x00" not in entry:
            continue
        sha, body = entry.strip().split("\x00", 1)
        for line in body.splitlines():
            if line.startswith("This reverts commit "):
                reverted.add(line.removeprefix("This reverts commit ").rstrip("."))
            if line.startswith(f"{repo.TRAILER}: ") and sha not in reverted:
                present.append(line.split(":", 1)[1].strip())
    return sorted(set(present))


TISTIS_ROUTE = "app/api/v1/leads/route.py"


def tistis_phases_present(checkout: Path, commit: str = "HEAD") -> list[str]:
    """Tistis: the phases at `commit`. The three shipped in one commit, found by its subject
    (there are no trailers); present when that commit is in the history and not reverted, less
    any phase whose `# FASE N:` block the route module no longer has (one phase rolled back by
    reverting its files and hunks)."""
    shipped = repo.tistis_phase_commit(checkout)
    if shipped is None:
        return []
    try:
        repo.git(checkout, "merge-base", "--is-ancestor", shipped, commit)
    except StepFailed:
        return []
    bodies = repo.git(checkout, "log", "--format=%B%x1e", f"{shipped}..{commit}")
    if f"This reverts commit {shipped}" in bodies:
        return []
    try:
        route = repo.git(checkout, "show", f"{commit}:{TISTIS_ROUTE}")
    except StepFailed:
        return []
    return [f"fase{n}" for n in (1, 2, 3) if f"# FASE {n}:" in route]
