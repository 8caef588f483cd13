"""Log retention: remove what the toolkit wrote once it is older than the guide keeps it.

Only entries directly inside `logs/` and `reports/` whose names match one of the toolkit's own
patterns are ever considered; anything else (a file a person put there, `.gitkeep`, a symlink)
is left alone. An entry's age is the date in its name, or its modification time when the name
holds none.

    kept [retention]    where      what
    rollback_days  90   logs/      rollback-*.log (dated when named rollback-<phase>-<stamp>.log),
                                   <stamp>-<phase>/ (a run's journal and backups)
    validation_days 30  reports/   <stamp>-<selection>[-N]/ (validation reports), health-report-<stamp>.html
    health_days     7   logs/      health-check-<day>.log, health-history-<day>.jsonl,
                                   health-alert-<stamp>-<check>.json, health-monitor-state.json

A dated entry expires when its date is before the first day kept: with 7 days kept on 22 January,
files of 15 January and later stay, those of the 14th and before go. An undated one expires when
it was last modified more than N days ago. The alert file of an incident the monitor still has
open is kept however old it is. `plan()` lists what would go; `prune()` removes
exactly that list, so the dry run and the real run cannot disagree.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

from rollback.config import Settings

Category = Literal["rollback", "validation", "health"]

_STAMP = r"(?P<date>\d{8})T\d{6}Z"
_PHASE = r"fase[1-3]"


@dataclass(frozen=True)
class Rule:
    category: Category
    where: Literal["logs", "reports"]
    kind: Literal["file", "dir"]
    pattern: re.Pattern[str]  # a `date` group (YYYYMMDD) when the name carries one
    describes: str


RULES: tuple[Rule, ...] = (
    Rule("rollback", "logs", "file", re.compile(rf"^rollback-{_PHASE}-{_STAMP}\.log$"), "rollback run log"),
    Rule("rollback", "logs", "file", re.compile(r"^rollback-.+\.log$"), "rollback run log"),
    Rule("rollback", "logs", "dir", re.compile(rf"^{_STAMP}-{_PHASE}(?:-[0-9a-f]{{8}})?$"),
         "rollback run journal and backups"),
    Rule("validation", "reports", "dir", re.compile(rf"^{_STAMP}-(?:{_PHASE}|all|health|pytest)(?:-\d+)?$"),
         "validation report"),
    Rule("validation", "reports", "file", re.compile(rf"^health-report-{_STAMP}\.html$"), "health report"),
    Rule("health", "logs", "file", re.compile(r"^health-check-(?P<date>\d{8})\.log$"), "health check log"),
    Rule("health", "logs", "file", re.compile(r"^health-history-(?P<date>\d{8})\.jsonl$"), "health history"),
    Rule("health", "logs", "file", re.compile(rf"^health-alert-{_STAMP}-[a-z_]+\.json$"), "health alert"),
    Rule("health", "logs", "file", re.compile(r"^health-monitor-state(?:-[0-9a-f]{8})?\.json$"),
         "health monitor state"),
)


@dataclass(frozen=True)
class Expired:
    path: Path
    rule: Rule
    dated: date  # the date in the name, or the day of its mtime
    by_name: bool
    keep_days: int

    def describe(self) -> str:
        source = "named" if self.by_name else "modified"
        kind = "/" if self.rule.kind == "dir" else ""
        return (f"{self.path}{kind}  ({self.rule.describes}, {source} {self.dated.isoformat()}, "
                f"kept {self.keep_days} d)")


def keep_days(settings: Settings, category: Category) -> int:
    r = settings.retention
    return {"rollback": r.rollback_days, "validation": r.validation_days, "health": r.health_days}[category]


def _match(name: str, kind: str, where: str) -> tuple[Rule, re.Match[str]] | None:
    for rule in RULES:
        if rule.where == where and rule.kind == kind:
            found = rule.pattern.match(name)
            if found:
                return rule, found
    return None


def _open_incident_files(logs_dir: Path) -> set[str]:
    """Alert files of incidents the monitor still has open: kept however old they are."""
    from rollback.monitor.store import ALERT, all_states

    checks = [state for data in all_states(logs_dir) for state in (data.get("checks") or {}).values()]
    return {f"{ALERT}{state['incident']['id']}.json" for state in checks
            if isinstance(state, dict) and isinstance(state.get("incident"), dict)
            and "id" in state["incident"]}


def plan(settings: Settings, now: datetime | None = None) -> list[Expired]:
    """Every entry of the toolkit's that has outlived its retention, oldest first."""
    now = now or datetime.now(UTC)
    today = now.astimezone(UTC).date()
    roots = {"logs": settings.paths.logs_dir, "reports": settings.paths.reports_dir}
    still_open = _open_incident_files(settings.paths.logs_dir)
    expired: list[Expired] = []
    for where, root in roots.items():
        try:
            entries = list(os.scandir(root))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_symlink():
                continue  # never follow a link out of the folder, never remove one we did not make
            kind = "dir" if entry.is_dir(follow_symlinks=False) else "file" if entry.is_file(
                follow_symlinks=False) else None
            if kind is None:
                continue
            matched = _match(entry.name, kind, where)
            if matched is None or (where == "logs" and entry.name in still_open):
                continue
            rule, found = matched
            days = keep_days(settings, rule.category)
            named = found.groupdict().get("date")
            if named:
                try:
                    dated = datetime.strptime(named, "%Y%m%d").date()
                except ValueError:
                    continue  # 20261399: not ours after all
                if dated < today - timedelta(days=days):
                    expired.append(Expired(Path(entry.path), rule, dated, True, days))
            else:
                mtime = datetime.fromtimestamp(entry.stat(follow_symlinks=False).st_mtime, UTC)
                if mtime < now - timedelta(days=days):
                    expired.append(Expired(Path(entry.path), rule, mtime.date(), False, days))
    return sorted(expired, key=lambda e: (e.dated, str(e.path)))


def remove(entries: Sequence[Expired]) -> list[tuple[Expired, str]]:
    """Remove the planned entries; returns those that could not be removed, with why."""
    failed = []
    for item in entries:
        try:
            if item.rule.kind == "dir":
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
        except FileNotFoundError:
            continue  # gone already: nothing to do
        except OSError as exc:
            failed.append((item, exc.strerror or str(exc)))
    return failed
