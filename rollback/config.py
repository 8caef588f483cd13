"""One typed settings object, read from `rollback.toml` and from the environment.

Where a value comes from, in order of precedence:

1. environment variables named as in the operational guide (`API_BASE_URL`, `TEST_API_KEY`,
   `TEST_BRANCH_API_KEY`, `TEST_REVOKED_API_KEY`, `DATABASE_URL`, `ROLLBACK_NOTIFY_URLS`);
2. the TOML file named by `ROLLBACK_CONFIG`, else `rollback.toml` in the current directory;
3. the defaults below.

Secrets (API keys, the database URL, notification URLs) come only from the environment: a
config file that holds one is refused, so that it never ends up in git or in a report.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rollback.errors import ConfigError
from rollback.profile import Profile, build_profile

CONFIG_ENV = "ROLLBACK_CONFIG"
PROFILE_ENV = "ROLLBACK_PROFILE"
DEFAULT_CONFIG_FILE = "rollback.toml"

#: environment variable -> (section, field)
ENV_VARS: dict[str, tuple[str, str]] = {
    "API_BASE_URL": ("target", "api_base_url"),
    "TEST_API_KEY": ("secrets", "test_api_key"),
    "TEST_BRANCH_API_KEY": ("secrets", "test_branch_api_key"),
    "TEST_REVOKED_API_KEY": ("secrets", "test_revoked_api_key"),
    "TEST_EXPIRED_API_KEY": ("secrets", "test_expired_api_key"),
    "DATABASE_URL": ("secrets", "database_url"),
    "ROLLBACK_NOTIFY_URLS": ("secrets", "notify_urls"),
}
_FIELD_TO_ENV = {v: k for k, v in ENV_VARS.items()}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Section):
    """The platform being protected: its API, its code repository and how it is built and deployed."""

    name: str = "production"
    api_base_url: str = "http://127.0.0.1:8000"
    repo: Path | None = None
    branch: str = "main"
    remote: str = "origin"
    build_command: str | None = None
    #: how the rollback reaches production: rollback/deploy/ has one adapter per mode
    deploy_mode: Literal["command", "git", "vercel", "manual"] = "command"
    deploy_command: str | None = "vercel --prod --yes"
    #: the Vercel CLI, for deploy_mode = "vercel" (words split as a shell would)
    vercel_command: str = "vercel"
    deploy_timeout_s: float = Field(default=300.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    expected_version: str | None = None

    @field_validator("api_base_url")
    @classmethod
    def _is_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL such as https://api.example.com, got {value!r}")
        return value.rstrip("/")


class Thresholds(_Section):
    """Limits the checks and the monitor compare against (the guide's figures by default)."""

    warn_ms: float = Field(default=500.0, gt=0)
    alert_ms: float = Field(default=1000.0, gt=0)
    error_rate: float = Field(default=0.05, ge=0, le=1)
    sample_size: int = Field(default=20, ge=1, le=1000)
    db_connect_ms: float = Field(default=2000.0, gt=0)
    traffic_window_min: float = Field(default=15.0, gt=0)
    fase3_max_slowdown: float = Field(default=3.0, ge=1)
    check_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _warn_below_alert(self) -> Thresholds:
        if self.warn_ms >= self.alert_ms:
            raise ValueError(
                f"warn_ms ({self.warn_ms:g}) must be below alert_ms ({self.alert_ms:g})"
            )
        return self

    def __repr__(self) -> str:
        return (
            f"Thresholds(warn {self.warn_ms:g} ms, alert {self.alert_ms:g} ms, "
            f"error rate {self.error_rate:.1%}, sample {self.sample_size})"
        )


class Secrets(_Section):
    """Values read only from the environment; shown as '**********' everywhere."""

    test_api_key: SecretStr | None = None
    test_branch_api_key: SecretStr | None = None
    test_revoked_api_key: SecretStr | None = None
    test_expired_api_key: SecretStr | None = None
    database_url: SecretStr | None = None
    notify_urls: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _is_postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("expected a postgresql:// URL such as postgresql://user:pass@host:5432/db")
        return value

    def values(self) -> list[str]:
        """Every secret value that is set, for redaction."""
        found = []
        for name in type(self).model_fields:
            secret = getattr(self, name)
            if secret is not None and secret.get_secret_value():
                found.append(secret.get_secret_value())
        return found


class Retention(_Section):
    """Days that files under `logs/` are kept (the guide's backup strategy)."""

    rollback_days: int = Field(default=90, ge=1)
    validation_days: int = Field(default=30, ge=1)
    health_days: int = Field(default=7, ge=1)


class Health(_Section):
    """The continuous monitor (`rollback health --continuous`): schedule, probes, alert damping."""

    interval_s: float = Field(default=30.0, ge=0.1, le=365 * 86400)
    fire_after: int = Field(default=2, ge=1)
    resolve_after: int = Field(default=2, ge=1)
    remind_minutes: float = Field(default=15.0, gt=0)
    #: paths to sample; empty means the platform profile's list endpoints
    endpoints: tuple[str, ...] = ()
    samples_per_endpoint: int = Field(default=5, ge=1, le=100)
    concurrency: int = Field(default=5, ge=1, le=32)
    probe_timeout_s: float = Field(default=5.0, gt=0)
    bypass_cache: bool = False
    metrics_address: str = "127.0.0.1"

    @field_validator("endpoints")
    @classmethod
    def _are_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not path.startswith("/") or "?" in path:
                raise ValueError(f"expected a path such as \"/v1/leads\", got {path!r}")
        return value

    def __repr__(self) -> str:
        return (
            f"Health(every {self.interval_s:g} s, fire after {self.fire_after}, resolve after "
            f"{self.resolve_after}, remind every {self.remind_minutes:g} min, "
            f"{self.samples_per_endpoint} requests per endpoint)"
        )


class Paths(_Section):
    reports_dir: Path = Path("reports")
    logs_dir: Path = Path("logs")
    #: free space a run's folders (logs, reports, backups) must have before it changes anything
    min_free_mb: float = Field(default=64.0, ge=0)


class Communication(_Section):
    """What the rendered messages call the product and where they send customers."""

    product: str = Field(default="TIS TIS Platform", min_length=1)
    support_email: str = Field(default="support@tistis.com", pattern=r"^[^@\s]+@[^@\s]+$")
    support_phone: str | None = None
    help_url: str = "https://docs.tistis.com/api/keys"
    status_page_url: str | None = None

    @field_validator("help_url", "status_page_url")
    @classmethod
    def _is_web_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value

    @property
    def contact(self) -> str:
        """How customers reach support, in one phrase: the e-mail, and the phone when set."""
        return self.support_email + (f" or {self.support_phone}" if self.support_phone else "")


class RunSettings(_Section):
    """How a rollback run changes the target: backups, batches, locks, build and health polling."""

    backup_schema: str = Field(default="rollback_backup", pattern=r"^[a-z_][a-z0-9_]{0,40}$")
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    lock_timeout_ms: int = Field(default=2000, ge=1, le=600_000)
    batch_retries: int = Field(default=5, ge=0, le=100)
    #: connections the FASE 2 walk converts with at once, each over its own part of api_keys
    #: (a table of fewer than 1000 pages a part gets fewer); 1 walks it with one connection
    walk_connections: int = Field(default=2, ge=1, le=8)
    retry_backoff_s: float = Field(default=0.5, ge=0, le=60)
    build_timeout_s: float = Field(default=900.0, gt=0)
    health_poll_s: float = Field(default=1.0, gt=0, le=60)
    confirm_text: str = Field(default="ROLLBACK {PHASE}", min_length=1)

    def __repr__(self) -> str:
        return (
            f"RunSettings(batches of {self.batch_size}, lock_timeout {self.lock_timeout_ms} ms, "
            f"{self.batch_retries} retries, {self.walk_connections} walk connections, "
            f"backups in {self.backup_schema})"
        )


class GateSettings(_Section):
    """The validation gate after a run: it passes once the phase's checks pass `passes_required`
    times in a row; it fails when `deadline_s` has passed since its first attempt."""

    passes_required: int = Field(default=2, ge=1, le=20)
    deadline_s: float = Field(default=300.0, gt=0)
    interval_s: float = Field(default=10.0, ge=0)
    #: also write Allure results beside each attempt's HTML report (`allure-results/`)
    allure: bool = False

    def __repr__(self) -> str:
        return (
            f"GateSettings({self.passes_required} passes in a row within {self.deadline_s:g} s, "
            f"{self.interval_s:g} s apart)"
        )


class Settings(_Section):
    """Everything the toolkit knows about its target. Build it with `load_settings()`."""

    target: Target = Target()
    thresholds: Thresholds = Thresholds()
    retention: Retention = Retention()
    health: Health = Health()
    paths: Paths = Paths()
    run: RunSettings = RunSettings()
    gate: GateSettings = GateSettings()
    communication: Communication = Communication()
    secrets: Secrets = Secrets()
    platform: Profile = Field(default_factory=lambda: Profile.model_validate(build_profile({})))
    source: Path | None = None

    @property
    def health_endpoints(self) -> tuple[str, ...]:
        """What the monitor samples: [health] endpoints, else the profile's list endpoints."""
        return self.health.endpoints or self.platform.endpoints

    @property
    def identity(self) -> TargetIdentity:
        """Which target these settings point at (repository, database, API): see TargetIdentity."""
        return TargetIdentity.of(self)

    def require_database_url(self) -> str:
        if self.secrets.database_url is None:
            raise ConfigError(
                "DATABASE_URL is not set: export it, or run `eval \"$(rollback sandbox env)\"` "
                "to target the sandbox"
            )
        return self.secrets.database_url.get_secret_value()

    def require_api_key(self) -> str:
        if self.secrets.test_api_key is None:
            raise ConfigError(
                "TEST_API_KEY is not set: export a valid key of the target (tis_live_... or "
                "tis_test_...), or run `eval \"$(rollback sandbox env)\"`"
            )
        return self.secrets.test_api_key.get_secret_value()


@dataclass(frozen=True)
class TargetIdentity:
    """A target is its repository, its database and its API; `id` is a short hash of the three.

    Runs carry it (journal, run id, lock), so that a run resumes, blocks or lists only runs of
    its own target. Nothing secret goes into it: the database is host, port and name (never its
    user or password), the API its scheme, host, port and path (never userinfo).
    """

    id: str
    name: str
    repo: str
    database: str
    api: str

    @classmethod
    def of(cls, settings: Settings) -> TargetIdentity:
        repo = settings.target.repo
        where = str(repo.expanduser().resolve()) if repo is not None else "-"
        database = "-"
        if settings.secrets.database_url is not None:
            database = database_place(settings.secrets.database_url.get_secret_value())
        api = public_url(settings.target.api_base_url)
        digest = hashlib.sha256(f"{where}\n{database}\n{api}".encode()).hexdigest()
        return cls(digest[:8], settings.target.name, where, database, api)

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "repo": self.repo, "database": self.database,
                "api": self.api}

    def describe(self) -> str:
        return f"{self.name} {self.id} ({self.api}, database {self.database}, repo {self.repo})"


def database_place(url: str) -> str:
    """host:port/dbname of a PostgreSQL URL or conninfo: where it is, without who connects."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception:  # a malformed URL is refused elsewhere; its place is then unknown
        return "?"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def public_url(url: str) -> str:
    """The URL without userinfo, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def _config_path(env: Mapping[str, str]) -> Path | None:
    named = env.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={named}: no such file; point it at a rollback.toml")
        return path
    default = Path.cwd() / DEFAULT_CONFIG_FILE
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
                          "as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    if "secrets" in data or any(
        isinstance(section, dict) and key in Secrets.model_fields
        for section in data.values()
        for key in (section if isinstance(section, dict) else {})
    ):
        raise ConfigError(
            f"{path}: secrets (API keys, DATABASE_URL, notification URLs) are read only from "
            "the environment; remove them from the file and export them instead"
        )
    return data


def _describe(error: Mapping[str, Any], path: Path | None) -> str:
    loc = tuple(str(part) for part in error["loc"])
    where = _FIELD_TO_ENV.get((loc[0], loc[1])) if len(loc) >= 2 else None
    if where is None:
        dotted = ".".join(loc)
        where = f"{path}: [{loc[0]}] {'.'.join(loc[1:])}" if path and len(loc) > 1 else dotted
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown setting (check its spelling against the README)"
    return f"{where}: {message}"


def load_settings(
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the settings from the config file, the environment and explicit overrides.

    Raises ConfigError with one line naming the variable or key at fault.
    """
    env = os.environ if env is None else env
    path = _config_path(env)
    data: dict[str, Any] = _read_toml(path) if path else {}
    for section in data.values():
        if isinstance(section, dict) and isinstance(section.get("repo"), str) and path:
            section["repo"] = str((path.parent / section["repo"]).expanduser())
    for var, (section, field) in ENV_VARS.items():
        value = env.get(var)
        if value:
            data.setdefault(section, {})[field] = value
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    data["source"] = path
    section = data.get("platform", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [platform] must be a table such as profile = \"tistis\"")
    section = dict(section)
    if env.get(PROFILE_ENV):
        section["profile"] = env[PROFILE_ENV]
    try:
        data["platform"] = build_profile(section, path.parent if path else None)
    except ValueError as exc:
        where = PROFILE_ENV if env.get(PROFILE_ENV) else f"{path}: [platform] profile" if path \
            else "[platform] profile"
        raise ConfigError(f"{where}: {exc}") from None
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], path)) from None
