"""What the monitor keeps under `logs/`, and how reports read it back.

    logs/health-check-YYYYMMDD.log       one human line per cycle, plus alert and delivery lines
    logs/health-history-YYYYMMDD.jsonl   one JSON object per line: every cycle and every alert event
    logs/health-alert-<started>-<check>.json   one file per incident, rewritten as it evolves
    logs/health-monitor-state-<target>.json   the alert damping state of one target (its
                                         `TargetIdentity.id`), so a restart keeps open incidents
                                         and one target's alerts never fire or resolve another's

Days are UTC. History lines are `{"kind": "cycle", ...}` (see `Monitor._record`) or
`{"kind": "event", "event": "alert"|"reminder"|"recovery", ...}` (see `AlertEvent.to_record`).
Nothing secret is written: URLs of the target are fine, keys and notification URLs never appear.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from rollback.monitor.alerts import Incident
from rollback.monitor.timefmt import day, iso, utc_now

CHECK_LOG = "health-check-"
HISTORY = "health-history-"
ALERT = "health-alert-"
STATE_FILE = "health-monitor-state.json"  # before states were kept per target: read, never written
STATE_PREFIX = "health-monitor-state-"
_HISTORY_NAME = re.compile(r"^health-history-(\d{8})\.jsonl$")


class DailyFile:
    """Appends lines to `<dir>/<prefix>YYYYMMDD<suffix>`, moving to a new file at UTC midnight.

    The handle stays open between writes (one open per day, not per cycle); each line is
    flushed, so a reader or a crash never sees less than whole lines already written.
    """

    def __init__(self, directory: Path, prefix: str, suffix: str) -> None:
        self.directory, self.prefix, self.suffix = directory, prefix, suffix
        self._day: str | None = None
        self._handle: IO[str] | None = None
        self._lock = threading.Lock()

    def path_for(self, moment: datetime) -> Path:
        return self.directory / f"{self.prefix}{day(moment)}{self.suffix}"

    def write(self, line: str, moment: datetime | None = None) -> None:
        moment = moment or utc_now()
        with self._lock:
            if self._handle is None or self._day != day(moment):
                self._close()
                self.directory.mkdir(parents=True, exist_ok=True)
                self._handle = self.path_for(moment).open("a", encoding="utf-8")
                self._day = day(moment)
            self._handle.write(line.rstrip("\n") + "\n")
            self._handle.flush()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        with self._lock:
            self._close()


class History:
    """The history store: JSON lines, one file per UTC day."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self._file = DailyFile(logs_dir, HISTORY, ".jsonl")

    def path_for(self, moment: datetime) -> Path:
        return self._file.path_for(moment)

    def append(self, record: dict[str, Any], moment: datetime) -> None:
        self._file.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False), moment)

    def close(self) -> None:
        self._file.close()

    def read(self, since: datetime, until: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Records with `since <= ts <= until`, oldest first; a torn or foreign line is skipped."""
        until = until or utc_now() + timedelta(days=1)
        files = []
        for path in self.logs_dir.glob(f"{HISTORY}*.jsonl"):
            match = _HISTORY_NAME.match(path.name)
            if match and day(since) <= match.group(1) <= day(until):
                files.append(path)
        low, high = iso(since), iso(until)
        for path in sorted(files):
            # a line that is not UTF-8 (a disk error, a foreign writer) is skipped like a torn one
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    # ISO stamps in one format compare correctly as strings.
                    if isinstance(record, dict) and low <= str(record.get("ts", "")) <= high:
                        yield record


def write_json(path: Path, data: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def incident_path(logs_dir: Path, incident: Incident) -> Path:
    return logs_dir / f"{ALERT}{incident.id}.json"


def write_incident(logs_dir: Path, incident: Incident, target: str, state: str) -> Path:
    """The incident's alert file: what fired, since when, reminders, and its end once recovered."""
    path = incident_path(logs_dir, incident)
    write_json(path, {"target": target, "state": state, **incident.to_json()})
    return path


def state_path(logs_dir: Path, target: str | None) -> Path:
    """The alert state file of a target (by its id); None: the file of before targets."""
    return logs_dir / (f"{STATE_PREFIX}{target}.json" if target else STATE_FILE)


def load_state(logs_dir: Path, target: str | None = None) -> dict[str, Any] | None:
    """The target's alert state; a target with none yet takes over the state file of before
    targets were told apart, if there is one."""
    for path in dict.fromkeys((state_path(logs_dir, target), state_path(logs_dir, None))):
        data = _read_state(path)
        if data is not None:
            return data
    return None


def all_states(logs_dir: Path) -> list[dict[str, Any]]:
    """The alert state of every target (for retention: no open incident's file is pruned)."""
    paths = [*logs_dir.glob(f"{STATE_PREFIX}*.json"), logs_dir / STATE_FILE]
    return [data for path in paths if (data := _read_state(path)) is not None]


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable (or not UTF-8) state: start afresh rather than refuse to monitor
    return data if isinstance(data, dict) else None


def save_state(logs_dir: Path, data: dict[str, Any], target: str | None = None) -> None:
    write_json(state_path(logs_dir, target), data)
