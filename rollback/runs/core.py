"""What every step works with: the run (settings, options, facts, journal, log), the operator's
console, and the contract of a step.

A step is an object with a `name`, a `title`, a read-only `describe(run)` that says what it
would do (the plan), and `run(run)` that does it and returns a `Done` (one line and the facts it
found). The same objects make the plan and the run, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from checks._plugin.redact import Redactor, url_tokens
from rollback.config import Settings
from rollback.errors import ConfigError, StepFailed
from rollback.runs.journal import Journal, RunRecord, iso, run_dir, stamp, utc_now

PHASES = ("fase1", "fase2", "fase3")
PHASE_TITLES = {
    "fase1": "FASE 1: branch_id query parameters",
    "fase2": "FASE 2: branch-specific API keys",
    "fase3": "FASE 3: response cache, indexes, RPC functions and views",
}


class Ui(Protocol):
    """The operator's console, as the library sees it. The CLI gives a rich one."""

    interactive: bool

    def say(self, text: str, style: str | None = None) -> None: ...

    def ask(self, prompt: str) -> str: ...


class SilentUi:
    """A console that records what it was told (for tests and for library use)."""

    interactive = False

    def __init__(self, answers: list[str] | None = None) -> None:
        self.lines: list[str] = []
        self.answers = list(answers or [])
        self.interactive = answers is not None

    def say(self, text: str, style: str | None = None) -> None:
        self.lines.append(text)

    def ask(self, prompt: str) -> str:
        self.lines.append(prompt)
        return self.answers.pop(0) if self.answers else ""


@dataclass(frozen=True)
class Options:
    """What the operator asked for. Recorded in the journal; a resumed run keeps them."""

    phase: str
    db_option: int = 1
    commit: str | None = None
    #: revert the phase's commits (or --commit) whole, with every phase they carry
    whole_commit: bool = False
    #: leave the deploy branch carrying the phase (the plan and the summary say so first)
    keep_deploy_branch: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "db_option": self.db_option, "commit": self.commit,
                "whole_commit": self.whole_commit, "keep_deploy_branch": self.keep_deploy_branch}

    @property
    def confirm_phase(self) -> str:
        return self.phase.upper()


class RunLog:
    """The human log of a run: timestamped lines in the log file, echoed to the console."""

    def __init__(self, path: Path | None, ui: Ui, redact: Redactor) -> None:
        self.path = path
        self.ui = ui
        self.redact = redact
        self.failed = False  # the log file could not be written (said once)
        self._lock = threading.Lock()

    def write(self, text: str, *, echo: bool = True, style: str | None = None, step: str = "") -> None:
        text = self.redact(text)
        if self.path is not None:
            prefix = f"{iso(utc_now())} {('[' + step + '] ') if step else ''}"
            data = "".join(prefix + line + "\n" for line in text.splitlines() or [""])
            with self._lock:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    try:
                        os.write(fd, data.encode("utf-8"))
                    finally:
                        os.close(fd)
                except OSError as exc:  # the journal, written next, is what stops the run
                    if not self.failed:
                        self.ui.say(f"warning: cannot write the run log {self.path} "
                                    f"({exc.strerror}); the journal keeps the record", "yellow")
                    self.failed = True
        if echo:
            self.ui.say(text, style)


@dataclass
class Done:
    """What a step did: one line for the operator and the facts later steps and the journal need."""

    summary: str
    facts: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


@dataclass
class StepPlan:
    """What a step would do: lines for the operator and the same as data (for --json and tests)."""

    name: str
    title: str
    lines: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    changes: bool = False
    state: str = "pending"   # pending | done (a resumed run) | skip

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "lines": self.lines, "data": self.data,
                "changes": self.changes, "state": self.state}


@dataclass
class Plan:
    run_id: str | None
    phase: str
    options: dict[str, Any]
    steps: list[StepPlan]
    resumed_from: str | None = None
    already_done: str | None = None
    #: what the operator must read first (a deploy branch left carrying the phase)
    warnings: list[str] = field(default_factory=list)

    def step(self, name: str) -> StepPlan:
        return next(s for s in self.steps if s.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "phase": self.phase, "options": self.options,
                "resumed_from": self.resumed_from, "already_done": self.already_done,
                "warnings": self.warnings, "steps": [s.as_dict() for s in self.steps]}


class Run:
    """One rollback run: its identity, settings, options, the facts found so far, where it writes.

    The facts are what steps hand each other (the original commit, the backup table, the commits
    reverted, the gate's result); every finished step's facts are journaled, so a resumed run
    starts with all of them.
    """

    def __init__(self, settings: Settings, options: Options, ui: Ui, *,
                 run_id: str | None = None, started: datetime | None = None,
                 record: RunRecord | None = None, dry: bool = False) -> None:
        self.settings = settings
        self.options = options
        self.ui = ui
        self.dry = dry
        self.record = record
        self.started = started or (record.started_at if record and record.started_at else utc_now())
        self.run_id = run_id or (record.run_id if record else
                                 f"{stamp(self.started)}-{options.phase}-{settings.identity.id}")
        self.facts: dict[str, Any] = dict(record.facts) if record else {}
        notify = settings.secrets.notify_urls
        self.redact = Redactor([*settings.secrets.values(),
                                *url_tokens(notify.get_secret_value() if notify else "")])
        self.journal: Journal | None = None
        self.log = RunLog(None if dry else self.log_path, ui, self.redact)
        self.current_step: str = ""
        self.cleanups: list[Callable[[], None]] = []
        self.repo_lock: Any = None
        self.db_lock: Any = None
        #: what steps work out once per run and process (the phases it covers), never journaled
        self.memo: dict[str, Any] = {}

    # --- where things go --------------------------------------------------------------------

    @property
    def stamp(self) -> str:
        return stamp(self.started)

    @property
    def logs_dir(self) -> Path:
        return self.settings.paths.logs_dir.resolve()

    @property
    def log_path(self) -> Path:
        return self.logs_dir / f"rollback-{self.options.phase}-{self.stamp}.log"

    @property
    def dir(self) -> Path:
        return run_dir(self.logs_dir, self.run_id)

    @property
    def report_dir(self) -> Path:
        return self.settings.paths.reports_dir.resolve() / self.run_id

    @property
    def repo(self) -> Path:
        repo = self.settings.target.repo
        if repo is None:
            raise ConfigError("[target] repo is not set: name the platform's git checkout in "
                              "rollback.toml (the sandbox's is written by `rollback sandbox up`)")
        return repo.expanduser().resolve()

    @property
    def database_url(self) -> str:
        return self.settings.require_database_url()

    @property
    def rollback_branch(self) -> str:
        return str(self.facts.get("rollback_branch") or f"rollback/{self.options.phase}-{self.stamp}")

    # --- recording ----------------------------------------------------------------------------

    def say(self, text: str, style: str | None = None) -> None:
        self.log.write(text, style=style, step=self.current_step)

    def note(self, text: str) -> None:
        """Into the log file only."""
        self.log.write(text, echo=False, step=self.current_step)

    def remember(self, **facts: Any) -> None:
        """Facts found in the middle of a step, journaled at once so that a resume knows them."""
        self.facts.update(facts)
        if self.journal is not None:
            self.journal.write("step_progress", step=self.current_step, facts=facts)

    def undo_step(self, step: str, reason: str, forget: list[str] | None = None) -> None:
        for key in forget or []:
            self.facts.pop(key, None)
        if self.journal is not None:
            self.journal.write("step_undone", step=step, reason=reason, forget=forget or [])

    @property
    def lock_fds(self) -> tuple[int, ...]:
        """The repository lock's descriptor, for the commands the run starts to inherit."""
        fd = getattr(self.repo_lock, "fd", None)
        return (fd,) if isinstance(fd, int) else ()

    def step_done(self, name: str) -> bool:
        return bool(self.record and name in self.record.completed)


class Step:
    """A named, reusable unit of a driver. Subclasses set `name` and `title` and implement both
    `describe` (read-only) and `run`."""

    #: a plain attribute, not a ClassVar: a step made for another phase of a whole commit is
    #: named after it (`database-fase3`)
    name: str = "step"
    title: str = "Step"
    #: whether `run` changes the target (the repository, the deployment or the database)
    changes: ClassVar[bool] = False
    #: run again on resume even if it finished before (pre-flight: locks are per process)
    always_run: ClassVar[bool] = False
    #: also runs after a failed gate, so that the failure is communicated
    after_gate_failure: ClassVar[bool] = False

    def describe(self, run: Run) -> StepPlan:
        raise NotImplementedError

    def run(self, run: Run) -> Done:
        raise NotImplementedError

    def plan(self, lines: list[str], data: dict[str, Any] | None = None) -> StepPlan:
        return StepPlan(self.name, self.title, lines, data or {}, self.changes)


def still_locked(run: Run) -> None:
    """Stop before changing the database further if the run's advisory lock is gone (its session
    was ended on the server): another run could take it and work on the same rows."""
    if run.db_lock is not None and not run.db_lock.held():
        raise StepFailed("lost the database lock of this run (its session was ended on the "
                         "server); stopped before the next change: run "
                         f"`rollback run {run.options.phase}` again to take it back and continue")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (backups, definitions, run contexts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


# --- commands ------------------------------------------------------------------------------------


@dataclass
class CommandResult:
    returncode: int
    output: list[str]
    duration_s: float
    timed_out: bool = False

    def tail(self, n: int = 3) -> str:
        lines = [line for line in self.output if line.strip()]
        return " | ".join(lines[-n:]) if lines else "no output"


def run_command(command: str, *, cwd: Path, timeout_s: float, on_line: Callable[[str], None],
                env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> CommandResult:
    """Run a shell command in its own process group, streaming its output line by line.

    On timeout or interruption the whole group is killed, so nothing it started keeps running
    half-done (a deploy command that detaches its server does so in a session of its own).
    `pass_fds` are inherited (the repository lock: a command outliving a killed run keeps it).
    """
    started = time.monotonic()
    process = subprocess.Popen(command, shell=True, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                               errors="replace", start_new_session=True, pass_fds=pass_fds,
                               env={**os.environ, **(env or {})})
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
    except BaseException:
        _kill_group(process)
        raise
    reader.join(timeout=5)
    return CommandResult(process.returncode if not timed_out else -1, lines,
                         time.monotonic() - started, timed_out)


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a stopped CI job, `kill`) interrupts a run like Ctrl-C: journaled, resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
