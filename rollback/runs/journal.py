"""The journal of a run: one JSON object per line, appended and flushed as the run goes.

A run's files live under `logs/`:

    logs/rollback-fase2-20260122T101500Z.log        the human log (the guide's name)
    logs/20260122T101500Z-fase2/journal.jsonl       this journal
    logs/20260122T101500Z-fase2/...                 backups and the gate's run context

Every line has `ts` (UTC, ISO 8601), `run_id` and `event`; the other keys depend on the event:

    run_started     phase, options, target, pid, host, user
    run_resumed     target, pid, host, user, completed (steps already done), previous (how the
                    attempt before ended: state killed | interrupted | failed, step, pid, host)
    step_started    step
    step_progress   step, facts                          facts found mid-step (e.g. the branch made)
    step_finished   step, duration_s, summary, facts      facts merge into the run's facts
    step_failed     step, duration_s, error
    step_undone     step, reason                         the step's change was taken back
    run_finished    state (succeeded | failed | already_done), duration_s
    run_interrupted step (the step that was cut short, or null)
    run_abandoned   reason
    restore_started / restore_finished / restore_failed   an undo of this run (`rollback restore`)

`target` is the run's target (`rollback.config.TargetIdentity`: id, name, repo, database as
host:port/name, API URL); the run id ends with its id, `20260122T101500Z-fase2-3f9a1c0b`. A run
resumes, blocks or is listed with `--target` only among runs of its own target; a journal from
before targets were recorded names none and is taken as every target's, as it was then.

Replaying the lines gives a `RunRecord`: the state of the run and the facts its steps found. A
run whose last line is not `run_finished` or `run_abandoned` can be resumed: it was interrupted,
killed, or failed at a step. Nothing secret is ever written here.

Storage faults lose nothing: a line is appended whole or not at all (a short write is cut back),
each one fsynced; a torn last line (the process died mid-write) is cut off before the next
append, and a line that is not JSON is skipped when replaying, never fatal. A write the disk
refuses (full, read-only) raises `StorageFault`: one line, and the run resumes once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollback.errors import StepFailed, UsageError

JOURNAL_NAME = "journal.jsonl"
FINAL_STATES = ("succeeded", "already_done", "abandoned")
#: errors of the storage itself, not of the program: said in one line, the run resumes later
STORAGE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.EIO: "input/output error"}


class StorageFault(StepFailed):
    """A file of the run could not be written (disk full, read-only, no permission)."""

    @classmethod
    def of(cls, path: Path, exc: OSError, then: str) -> StorageFault:
        what = STORAGE_ERRNOS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
        return cls(f"cannot write {path}: {what}; {then}")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stamp(moment: datetime) -> str:
    """The compact UTC timestamp used in run ids, file and branch names: 20260122T101500Z."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def run_dir(logs_dir: Path, run_id: str) -> Path:
    return logs_dir / run_id


def who() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "user": user}


@dataclass
class RunRecord:
    """What a journal says about a run, replayed from its lines."""

    run_id: str
    phase: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    state: str = "running"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    completed: list[str] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    interrupted_step: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_pid: int | None = None
    last_host: str | None = None
    restores: list[dict[str, Any]] = field(default_factory=list)
    target: dict[str, Any] = field(default_factory=dict)
    #: lines that were not JSON (torn, or written over), skipped when replaying
    damaged: int = 0
    #: time spent working, attempt by attempt (not at the confirmation prompt, not between attempts)
    worked_s: float = 0.0
    attempt_started: datetime | None = None
    last_ts: datetime | None = None

    @property
    def target_id(self) -> str | None:
        value = self.target.get("id")
        return str(value) if value else None

    def of_target(self, target_id: str | None) -> bool:
        """Whether this run is of that target (None: of any). A journal written before runs
        recorded their target names none and counts as every target's, as it did then."""
        return target_id is None or self.target_id is None or self.target_id == target_id

    def active_s(self, now: datetime | None = None) -> float:
        """Seconds the run has worked so far: each attempt from the moment it was confirmed
        (its pre-flight included) to its last line, or to `now` for the attempt under way."""
        total = self.worked_s
        if self.attempt_started is not None:
            end = now or self.last_ts or self.attempt_started
            total += max(0.0, (end - self.attempt_started).total_seconds())
        return total

    @property
    def changed(self) -> bool:
        """Whether the run left a change to the target in place (taken-back steps do not count)."""
        done = any(step in self.completed for step in ("code", "deploy", "database"))
        return done or self.steps.get("database", {}).get("state") in ("running", "failed")

    @property
    def resumable(self) -> bool:
        """Cut short (interrupted, killed), or failed with its change in place. A run that failed
        and took its change back is over: the next run starts afresh, with a new baseline."""
        if self.state in FINAL_STATES:
            return False
        return self.state != "failed" or self.changed

    @property
    def gate(self) -> dict[str, Any] | None:
        gate = self.facts.get("gate")
        return gate if isinstance(gate, dict) else None

    @property
    def dir(self) -> Path:
        return self.path.parent


def replay(path: Path) -> RunRecord:
    """Read a journal. Lines that are not JSON (a torn last line: the process died mid-write)
    are skipped and counted in `damaged`."""
    record: RunRecord | None = None
    damaged = [0]
    for event in events(path, damaged):
        kind = event.get("event")
        if record is None:
            if kind != "run_started":
                raise UsageError(f"{path}: does not start with run_started; it is not a run journal")
            record = RunRecord(run_id=event["run_id"], phase=event["phase"], path=path,
                               options=dict(event.get("options") or {}),
                               started_at=parse_iso(event["ts"]))
        _apply(record, event)
    if record is None:
        raise UsageError(f"{path}: empty journal")
    record.damaged = damaged[0]
    return record


def events(path: Path, damaged: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """The journal's events in order. A line that is not JSON, or not UTF-8 text, is skipped (and
    counted in `damaged[0]`): one bad line must not make a run, and its history, vanish."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if damaged is not None:
                damaged[0] += 1
            continue
        if isinstance(event, dict) and "ts" in event:
            yield event


def _apply(record: RunRecord, event: dict[str, Any]) -> None:
    kind = event.get("event")
    step = event.get("step")
    if "pid" in event:
        record.last_pid, record.last_host = event.get("pid"), event.get("host")
    with_ts = _ts(event)
    if kind in ("run_started", "run_resumed"):
        if record.attempt_started is not None:  # the attempt before ended at its last line
            record.worked_s = record.active_s()
        record.attempt_started = with_ts
        if isinstance(event.get("target"), dict) and not record.target:
            record.target = dict(event["target"])
    if with_ts is not None:
        record.last_ts = with_ts
    if kind in ("run_started", "run_resumed"):
        record.state = "running"
        record.failed_step = record.error = record.interrupted_step = None
    elif kind == "step_started" and step:
        record.steps.setdefault(step, {})["state"] = "running"
    elif kind == "step_finished" and step:
        if step == "preflight":  # it ran before the attempt was confirmed: its own time counts
            record.worked_s += float(event.get("duration_s") or 0)
        record.steps[step] = {"state": "done", "duration_s": event.get("duration_s"),
                              "summary": event.get("summary", "")}
        if step not in record.completed:
            record.completed.append(step)
        record.facts.update(event.get("facts") or {})
    elif kind == "step_progress":
        record.facts.update(event.get("facts") or {})
    elif kind == "step_failed" and step:
        record.steps[step] = {"state": "failed", "duration_s": event.get("duration_s"),
                              "error": event.get("error", "")}
        record.state, record.failed_step, record.error = "failed", step, event.get("error")
    elif kind == "step_undone" and step:
        record.steps[step] = {"state": "undone", "reason": event.get("reason", "")}
        if step in record.completed:
            record.completed.remove(step)
        for key in event.get("forget") or []:
            record.facts.pop(key, None)
    elif kind == "run_finished":
        record.worked_s, record.attempt_started = record.active_s(), None
        record.state = event.get("state", "succeeded")
        record.finished_at = parse_iso(event["ts"])
        record.duration_s = event.get("duration_s")
        if event.get("error"):
            record.error = event["error"]
    elif kind == "run_interrupted":
        record.state, record.interrupted_step = "interrupted", step
    elif kind == "run_abandoned":
        record.state = "abandoned"
        record.finished_at = parse_iso(event["ts"])
    elif kind in ("restore_started", "restore_finished", "restore_failed"):
        if kind == "restore_started":
            record.restores.append({"started_at": event["ts"], "state": "running"})
        elif record.restores:
            record.restores[-1].update(state="done" if kind == "restore_finished" else "failed",
                                       finished_at=event["ts"],
                                       **{k: v for k, v in event.items()
                                          if k in ("summary", "error", "rows")})


def _ts(event: dict[str, Any]) -> datetime | None:
    try:
        return parse_iso(str(event["ts"]))
    except (KeyError, ValueError):
        return None


class Journal:
    """Appends events to a run's journal file; each line is written whole or not at all, and
    fsynced. A torn last line left by a process that died mid-write is cut off first."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self._repaired = False

    @classmethod
    def create(cls, logs_dir: Path, run_id: str) -> Journal:
        folder = run_dir(logs_dir, run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)  # backups of keys live here too
        except OSError as exc:
            raise StorageFault.of(folder, exc, "nothing was changed; free space or make it "
                                  "writable and run again") from None
        path = folder / JOURNAL_NAME
        if path.exists():
            raise UsageError(f"{path} already exists: run {run_id} was already started")
        return cls(path, run_id)

    def write(self, event: str, **data: Any) -> dict[str, Any]:
        entry = {"ts": iso(utc_now()), "run_id": self.run_id, "event": event, **data}
        line = (json.dumps(entry, default=_json_default, sort_keys=False) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._fault(exc) from None
        try:
            size = os.fstat(fd).st_size
            if not self._repaired:
                size = _cut_torn_tail(fd, size)
                self._repaired = True
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):  # no half line left for the next reader
                    os.ftruncate(fd, size)
                raise self._fault(exc) from None
        finally:
            os.close(fd)
        return entry

    def _fault(self, exc: OSError) -> StorageFault:
        return StorageFault.of(self.path, exc, f"run {self.run_id} stopped before its next "
                               "change; free space (or make the folder writable) and run the "
                               "same command again to resume it")

    def replay(self) -> RunRecord:
        return replay(self.path)


def _cut_torn_tail(fd: int, size: int) -> int:
    """Cut a last line that has no newline (its writer died mid-line); returns the new size."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
    keep = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    os.ftruncate(fd, keep)
    return keep


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def all_runs(logs_dir: Path) -> list[RunRecord]:
    """Every run under `logs_dir`, oldest first. Damaged journals are skipped."""
    records = []
    if not logs_dir.is_dir():
        return []
    for path in sorted(logs_dir.glob(f"*/{JOURNAL_NAME}")):
        try:
            records.append(replay(path))
        except UsageError:
            continue
    records.sort(key=lambda r: (r.started_at or utc_now(), r.run_id))
    return records


def find_run(logs_dir: Path, run_id: str) -> RunRecord:
    path = run_dir(logs_dir, run_id) / JOURNAL_NAME
    if not path.is_file():
        known = ", ".join(r.run_id for r in all_runs(logs_dir)[-5:]) or "none"
        raise UsageError(f"no run {run_id!r} under {logs_dir} (recent runs: {known}); "
                         "see `rollback history`")
    return replay(path)


def unfinished_run(logs_dir: Path, phase: str | None,
                   target_id: str | None = None) -> RunRecord | None:
    """The latest run of `phase` (of any phase: None) on this target if it is to be resumed.
    Runs of other targets are not looked at: they neither resume here nor hide this one's."""
    for record in reversed(all_runs(logs_dir)):
        if not record.of_target(target_id) or (phase is not None and record.phase != phase):
            continue
        return record if record.resumable else None
    return None


def half_done_elsewhere(logs_dir: Path, phase: str,
                        target_id: str | None = None) -> RunRecord | None:
    """The latest resumable run of another phase on this target that left a change in place."""
    for record in reversed(all_runs(logs_dir)):
        if (record.of_target(target_id) and record.phase != phase and record.resumable
                and record.changed):
            return record
    return None


def check_room(folder: Path, need_mb: float, what: str) -> str:
    """That `folder` can be written (a real file is written, fsynced and removed: a read-only
    mount or a full disk shows) and has `need_mb` free. One line on success; StorageFault else."""
    then = "nothing was changed; free space or make it writable, then run again"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rollback-probe-") as probe:
            probe.write(b"x" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise StorageFault.of(folder, exc, then) from None
    free_mb = free / 2**20
    if free_mb < need_mb:
        raise StorageFault(f"{what} {folder} has {free_mb:.0f} MiB free, less than the "
                           f"{need_mb:.0f} MiB a run needs ([paths] min_free_mb); {then}")
    return f"{what} {folder} writable, {_size(free)} free"


def room_line(folder: Path, need_mb: float, what: str) -> str:
    """What `check_room` would find, by looking only (os.access, free space): for the plan."""
    near = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        free = shutil.disk_usage(near).free
    except OSError:
        return f"{what} {folder}: cannot be looked at"
    writable = os.access(near, os.W_OK)
    ok = writable and free / 2**20 >= need_mb
    return (f"{what} {folder}: {'writable' if writable else 'NOT writable'}, {_size(free)} free"
            + ("" if ok else f" (a run needs it writable with {need_mb:g} MiB free)"))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
