"""The journal of a run: one JSON object per line, appended and flushed as the run goes.

A run's files live under `logs/`:

    logs/rollback-fase2-20260122T101500Z.log        the human log (the guide's name)
    logs/20260122T101500Z-fase2/journal.jsonl       this journal
    logs/20260122T101500Z-fase2/...                 backups and the gate's run context

Every line has `ts` (UTC, ISO 8601), `run_id` and `event`; the other keys depend on the event:

    run_started     phase, options, pid, host, user
    run_resumed     pid, host, user, completed (steps already done), previous (how the attempt
                    before ended: state killed | interrupted | failed, step, pid, host)
    step_started    step
    step_progress   step, facts                          facts found mid-step (e.g. the branch made)
    step_finished   step, duration_s, summary, facts      facts merge into the run's facts
    step_failed     step, duration_s, error
    step_undone     step, reason                         the step's change was taken back
    run_finished    state (succeeded | failed | already_done), duration_s
    run_interrupted step (the step that was cut short, or null)
    run_abandoned   reason
    restore_started / restore_finished / restore_failed   an undo of this run (`rollback restore`)

Replaying the lines gives a `RunRecord`: the state of the run and the facts its steps found. A
run whose last line is not `run_finished` or `run_abandoned` can be resumed: it was interrupted,
killed, or failed at a step. Nothing secret is ever written here.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollback.errors import UsageError

JOURNAL_NAME = "journal.jsonl"
FINAL_STATES = ("succeeded", "already_done", "abandoned")


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
    """Read a journal; a torn last line (the process died mid-write) is ignored."""
    record: RunRecord | None = None
    for event in events(path):
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
    return record


def events(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return  # torn write at the end: the process died while appending
            raise UsageError(f"{path}:{number}: not valid JSON; the journal is damaged") from None
        if isinstance(event, dict):
            yield event


def _apply(record: RunRecord, event: dict[str, Any]) -> None:
    kind = event.get("event")
    step = event.get("step")
    if "pid" in event:
        record.last_pid, record.last_host = event.get("pid"), event.get("host")
    if kind in ("run_started", "run_resumed"):
        record.state = "running"
        record.failed_step = record.error = record.interrupted_step = None
    elif kind == "step_started" and step:
        record.steps.setdefault(step, {})["state"] = "running"
    elif kind == "step_finished" and step:
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


class Journal:
    """Appends events to a run's journal file; each line is flushed and fsynced when written."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id

    @classmethod
    def create(cls, logs_dir: Path, run_id: str) -> Journal:
        folder = run_dir(logs_dir, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # backups of keys live here too
        path = folder / JOURNAL_NAME
        if path.exists():
            raise UsageError(f"{path} already exists: run {run_id} was already started")
        return cls(path, run_id)

    def write(self, event: str, **data: Any) -> dict[str, Any]:
        entry = {"ts": iso(utc_now()), "run_id": self.run_id, "event": event, **data}
        line = json.dumps(entry, default=_json_default, sort_keys=False)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def replay(self) -> RunRecord:
        return replay(self.path)


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


def unfinished_run(logs_dir: Path, phase: str | None) -> RunRecord | None:
    """The latest run of `phase` (of any phase: None) if it is to be resumed."""
    for record in reversed(all_runs(logs_dir)):
        if phase is not None and record.phase != phase:
            continue
        return record if record.resumable else None
    return None


def half_done_elsewhere(logs_dir: Path, phase: str) -> RunRecord | None:
    """The latest resumable run of another phase that left a change in place, if any."""
    for record in reversed(all_runs(logs_dir)):
        if record.phase != phase and record.resumable and record.changed:
            return record
    return None
