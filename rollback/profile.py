"""What the protected platform looks like: its API, its health answer, its tables, its phases.

Every check, probe and driver step reads this instead of constants of its own, so one toolkit
serves both shapes of the platform:

- `contract`: the platform as its API reference describes it (routes under `/v1`, one
  `UNAUTHORIZED` code, `/health` with the deployed commit);
- `tistis`: the platform as its repository has it (routes under `/api/v1`, only `leads`,
  `/health` redirecting to a hard-coded version, Supabase with row level security and
  triggers, the deployed commit known only to Vercel).

A profile is chosen with `[platform] profile = "tistis"` in rollback.toml (or
`ROLLBACK_PROFILE`); it names a shipped profile (`rollback/profiles/<name>.toml`) or a TOML
file of your own. Any key of the profile can be overridden under `[platform]`, for example
`[platform.health] path = "/api/health"`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rollback.errors import ConfigError

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
SHIPPED = ("contract", "tistis")
DEFAULT_PROFILE = "contract"
PHASE_NAMES = ("fase1", "fase2", "fase3")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # TOML has no null: an empty text means "none" for the optional settings.
        return None if value == "" else value


class Resource(_Part):
    """A list endpoint: `{api_prefix}/{name}`, answering {data, total, page, pageSize, filters}."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    table: str
    #: fields every record of the answer carries
    fields: tuple[str, ...] = ("id", "tenant_id")
    #: whether the API filters the list by branch (FASE 1 `?branch_id=`)
    branch_filter: bool = True
    #: SQL condition the API adds when it counts (None: every row of the tenant)
    count_where: str | None = None


class HealthShape(_Part):
    """Where health is, and which words in its body mean healthy, degraded or down."""

    path: str = "/health"
    #: follow redirects (the real platform answers 308 from /health to /api/health)
    follow_redirects: bool = False
    status_field: str = "status"
    passing: tuple[str, ...] = ("ok",)
    #: words that pass with a warning; any word in neither list fails
    warning: tuple[str, ...] = ("degraded",)
    #: dotted path of the database status in the body; None when the body has none
    database_field: str | None = "database"
    database_ok: tuple[str, ...] = ("ok",)

    def verdict(self, word: object) -> Literal["pass", "warn", "fail"]:
        if isinstance(word, str) and word in self.passing:
            return "pass"
        if isinstance(word, str) and word in self.warning:
            return "warn"
        return "fail"

    @field_validator("path")
    @classmethod
    def _is_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"expected a path such as \"/health\", got {value!r}")
        return value


class ErrorCodes(_Part):
    """The `code` of the error body for each kind of refused key, and of an unknown route."""

    missing: str = "UNAUTHORIZED"
    not_bearer: str = "UNAUTHORIZED"
    malformed: str = "UNAUTHORIZED"
    unknown: str = "UNAUTHORIZED"
    revoked: str = "UNAUTHORIZED"
    expired: str = "UNAUTHORIZED"
    rate_limited: str = "RATE_LIMIT_EXCEEDED"
    #: what a 401's WWW-Authenticate header starts with; None: the platform sends none
    www_authenticate: str | None = None
    #: the code of a 404's JSON error body; None: a 404 is not an API error body (an HTML page)
    not_found: str | None = "NOT_FOUND"


class VersionSource(_Part):
    """Where the deployed version comes from, to prove a rollback's deploy is live.

    - `health_field`: a JSON field of the health body (`field`);
    - `header`: a response header of the health answer (`header`);
    - `command`: the output of `command` (e.g. `vercel inspect {api_host}`), or its first
      match of `pattern` (group 1); `{api_base_url}` and `{api_host}` are filled in;
    - `none`: nothing tells it; the version check is then inconclusive.
    """

    source: Literal["health_field", "header", "command", "none"] = "health_field"
    field: str = "version"
    header: str | None = None
    command: str | None = None
    pattern: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> VersionSource:
        if self.source == "header" and not self.header:
            raise ValueError("source = \"header\" needs header = \"<name>\"")
        if self.source == "command" and not self.command:
            raise ValueError("source = \"command\" needs command = \"...\"")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
        return self

    def describe(self, api_base_url: str | None = None) -> str:
        command = self.command_for(api_base_url) if api_base_url else self.command
        return {"health_field": f"the health body's {self.field!r}",
                "header": f"the health answer's {self.header} header",
                "command": f"`{command}`", "none": "nothing"}[self.source]

    def command_for(self, api_base_url: str) -> str:
        """The command with `{api_base_url}` and `{api_host}` filled in."""
        host = urlsplit(api_base_url).netloc
        return (self.command or "").replace("{api_base_url}", api_base_url).replace("{api_host}", host)


class Tables(_Part):
    """Table names the checks and drivers read."""

    tenants: str = "tenants"
    branches: str = "branches"
    leads: str = "leads"
    appointments: str = "appointments"
    api_keys: str = "api_keys"
    usage_logs: str = "api_key_usage_logs"
    staff: str = "staff"
    staff_branches: str = "staff_branches"

    def all(self) -> tuple[str, ...]:
        return tuple(getattr(self, name) for name in type(self).model_fields)


class Fase1(_Part):
    headers: tuple[str, ...] = ("X-Filtered-Branch-ID", "X-Branch-Filter-Warning")


class Fase2(_Part):
    #: the columns the conversion changes
    scope_columns: tuple[str, ...] = ("scope_type", "branch_id", "branch_context")


class Fase3(_Part):
    """How FASE 3's response cache is seen. Its database objects come from the phase's
    migrations (`[platform.phases.fase3] migrations`) as they stand in the repository."""

    #: how a live response cache shows: a header, or only as stale answers
    cache: Literal["header", "staleness"] = "header"
    cache_header: str = "X-Cache"
    #: the longest TTL of the cache; a write probe reads back within it
    cache_ttl_s: float = Field(default=300.0, gt=0)
    #: how long the staleness check watches the database for a change of the test tenant
    observe_s: float = Field(default=5.0, ge=0, le=60)


class PhaseFind(_Part):
    """How a phase's commits are found: a trailer `<trailer>: <phase>`, a subject pattern, or
    commits named outright (the first that is set is used)."""

    trailer: str | None = None
    subject: str | None = None
    commits: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_way(self) -> PhaseFind:
        if not (self.trailer or self.subject or self.commits):
            raise ValueError("say how to find the phase's commits: trailer, subject or commits")
        if self.subject is not None:
            try:
                re.compile(self.subject)
            except re.error as exc:
                raise ValueError(f"subject {self.subject!r} is not a regular expression: {exc}") \
                    from None
        return self

    def describe(self, phase: str) -> str:
        if self.commits:
            return f"commits {', '.join(c[:12] for c in self.commits)}"
        if self.trailer:
            return f"commits with the trailer `{self.trailer}: {phase}`"
        return f"commits whose subject matches {self.subject!r}"


class HunkSpec(_Part):
    """The phase's hunks of a file it shares with other phases: those whose changed lines match
    `pattern` (a regex, e.g. a `FASE 2` marker comment), or that overlap `lines` of the phase
    commit's version of the file."""

    path: str
    pattern: str | None = None
    lines: tuple[tuple[int, int], ...] = ()


class PhaseSpec(_Part):
    """One phase of the manifest: its commits, its code, its migrations, its database action.

    With no `paths` and no `hunks`, the phase owns its commits whole (a plain `git revert`).
    """

    title: str = ""
    find: PhaseFind
    #: globs of the files that are wholly the phase's (`**/` spans folders)
    paths: tuple[str, ...] = ()
    hunks: tuple[HunkSpec, ...] = ()
    #: globs of the phase's migrations, read as they stand at the branch's head
    migrations: tuple[str, ...] = ()
    database: Literal["none", "convert_branch_keys", "drop_objects"] = "none"

    @property
    def whole_commits(self) -> bool:
        return not self.paths and not self.hunks


class Profile(_Part):
    """The shape of the platform. Build it with `load_profile()`."""

    name: str = "custom"
    description: str = ""
    api_prefix: str = "/v1"
    resources: tuple[Resource, ...] = ()
    health: HealthShape = HealthShape()
    errors: ErrorCodes = ErrorCodes()
    version: VersionSource = VersionSource()
    tables: Tables = Tables()
    #: api_keys columns the platform itself changes (its triggers, its per-request counters):
    #: never data loss in a comparison
    managed_columns: tuple[str, ...] = ()
    #: the repository's migrations, applied in filename order (down scripts are left out)
    migrations_dir: str = "migrations"
    down_suffix: str | None = ".down.sql"
    #: the role that connects the API itself (the sandbox uses it; a reader may connect as it)
    service_role: str | None = None
    fase1: Fase1 = Fase1()
    fase2: Fase2 = Fase2()
    fase3: Fase3 = Fase3()
    #: the phase manifest: fase1, fase2 and fase3
    phases: dict[str, PhaseSpec] = Field(default_factory=dict)

    @field_validator("api_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"expected a path such as \"/api/v1\", got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _has_resources(self) -> Profile:
        if not self.resources:
            raise ValueError("name at least one list endpoint under [[platform.resources]]")
        unknown = sorted(set(self.phases) - set(PHASE_NAMES))
        if unknown:
            raise ValueError(f"unknown phase {unknown[0]!r} in the manifest: the phases are "
                             f"{', '.join(PHASE_NAMES)}")
        return self

    def phase(self, name: str) -> PhaseSpec:
        """The manifest's entry for `name`; a rollback of a phase it lacks is refused."""
        if name not in self.phases:
            raise ConfigError(f"profile {self.name} has no [platform.phases.{name}]: say how its "
                              "commits are found (find = { trailer = ... }, or subject, or commits) "
                              "and which files and hunks are its")
        return self.phases[name]

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(self.path_of(r) for r in self.resources)

    def path_of(self, resource: Resource | str) -> str:
        name = resource if isinstance(resource, str) else resource.name
        return f"{self.api_prefix}/{name}"

    def resource(self, name: str) -> Resource | None:
        return next((r for r in self.resources if r.name == name), None)

    def resource_at(self, path: str) -> Resource:
        """The resource a list endpoint's path serves (KeyError for a path not in the profile)."""
        for resource in self.resources:
            if self.path_of(resource) == path:
                return resource
        raise KeyError(f"{path} is not a list endpoint of profile {self.name}")

    @property
    def leads_path(self) -> str:
        """Where leads are listed (and created): the endpoint FASE 1 and FASE 2 checks use."""
        leads = self.resource("leads")
        return self.path_of(leads) if leads else self.endpoints[0]

    @property
    def auth_path(self) -> str:
        """The endpoint the authentication checks knock on: the first list endpoint."""
        return self.endpoints[0]

    @property
    def compared_exempt(self) -> frozenset[str]:
        """api_keys columns a FASE 2 comparison leaves out: scope and platform-managed."""
        return frozenset(self.fase2.scope_columns) | frozenset(self.managed_columns)

    def __repr__(self) -> str:
        return f"Profile({self.name}: {', '.join(self.endpoints)}, health {self.health.path})"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def profile_data(name: str, relative_to: Path | None = None) -> dict[str, Any]:
    """The TOML of a shipped profile, or of a file named by path. Raises ValueError."""
    if name in SHIPPED:
        path = PROFILES_DIR / f"{name}.toml"
    elif name.endswith(".toml"):
        path = Path(name).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
    else:
        raise ValueError(f"unknown profile {name!r}: use one of {', '.join(SHIPPED)} or a path "
                         "to a .toml file")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"profile file {path} cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"profile file {path} is not valid TOML ({exc})") from None


def build_profile(section: Mapping[str, Any], relative_to: Path | None = None) -> dict[str, Any]:
    """A `[platform]` section (`profile = ...` plus overrides) as the data of a Profile."""
    overrides = dict(section)
    name = str(overrides.pop("profile", DEFAULT_PROFILE))
    return _merge(profile_data(name, relative_to), overrides)


def load_profile(name: str = DEFAULT_PROFILE) -> Profile:
    return Profile.model_validate(profile_data(name))


# --- the deployed version --------------------------------------------------------------------


class VersionUnknown(Exception):
    """The deployed version could not be read; the message says why and what to do."""


def deployed_version(profile: Profile, api_base_url: str, health_body: object = None,
                     headers: Mapping[str, str] | None = None, *,
                     command: VersionCommand | None = None) -> str | None:
    """The version the platform serves now, from where the profile says; None for `none`.

    `health_body` and `headers` are the health answer's, for the two sources that read it;
    `command`, the source's command started earlier (else it is run now). Raises
    VersionUnknown when the source gives no version.
    """
    source = profile.version
    if source.source == "none":
        return None
    if source.source == "health_field":
        value = dig(health_body, source.field)
        if value in (None, ""):
            raise VersionUnknown(f"the health body has no {source.field!r} field")
        return str(value)
    if source.source == "header":
        value = (headers or {}).get(source.header or "")
        if not value:
            raise VersionUnknown(f"the health answer has no {source.header} header")
        return value
    return (command or VersionCommand(source, api_base_url)).result()


class VersionCommand:
    """The profile's version command (`vercel inspect ...`), started at once and read when the
    version is needed: the checks start it before their first check, so that its answer (a
    second or more from a deploy platform's API) comes while they run. `result()` waits for it
    within the source's timeout from its start; the outcome, a version or VersionUnknown, is
    kept for later calls. `close()` ends a command nobody read."""

    def __init__(self, source: VersionSource, api_base_url: str) -> None:
        assert source.command is not None
        self.source = source
        self.command = source.command_for(api_base_url)
        self._started = time.monotonic()
        self._outcome: str | VersionUnknown | None = None
        self._process: subprocess.Popen[str] | None = None
        try:
            self._process = subprocess.Popen(shlex.split(self.command), stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                             text=True)
        except FileNotFoundError:
            self._outcome = VersionUnknown(f"`{self.command}`: command not found (is it on PATH?)")

    def result(self) -> str:
        if self._outcome is None:
            self._outcome = self._read()
        if isinstance(self._outcome, VersionUnknown):
            raise self._outcome
        return self._outcome

    def _read(self) -> str | VersionUnknown:
        source, command, process = self.source, self.command, self._process
        assert process is not None
        left = source.timeout_s - (time.monotonic() - self._started)
        try:
            stdout, stderr = process.communicate(timeout=max(0.0, left))
        except subprocess.TimeoutExpired:
            self.close()
            return VersionUnknown(f"`{command}` gave no answer within {source.timeout_s:g} s")
        if process.returncode != 0:
            last = (stderr or stdout).strip().splitlines()
            return VersionUnknown(f"`{command}` exited {process.returncode}: "
                                  f"{last[-1] if last else 'no output'}")
        if source.pattern:
            match = re.search(source.pattern, stdout)
            if match is None:
                return VersionUnknown(f"`{command}` printed nothing that matches {source.pattern!r}")
            return match.group(1) if match.groups() else match.group(0)
        value = stdout.strip()
        if not value:
            return VersionUnknown(f"`{command}` printed nothing")
        return value.splitlines()[0].strip()

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


def dig(body: object, dotted: str) -> object:
    """`dig({"a": {"b": 1}}, "a.b") == 1`; None where the path does not lead."""
    value = body
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def version_matches(reported: str, expected: str) -> bool:
    """Equal, or a commit abbreviated to 7+ characters on either side."""
    if reported == expected:
        return True
    shorter, longer = sorted((reported, expected), key=len)
    return len(shorter) >= 7 and longer.startswith(shorter)
