"""`rollback logs prune`: exactly the expired files of the toolkit go, nothing else is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from rollback import retention
from rollback.config import load_settings

NOW = datetime(2026, 1, 22, 12, 0, tzinfo=UTC)


def day(days_ago: int, now: datetime = NOW) -> str:
    return (now - timedelta(days=days_ago)).strftime("%Y%m%d")


def stamp(days_ago: int, now: datetime = NOW) -> str:
    return (now - timedelta(days=days_ago)).strftime("%Y%m%dT%H%M%SZ")


def make(root: Path, relative: str, *, mtime_days_ago: float = 0, now: datetime = NOW) -> Path:
    """A file (or, ending in '/', a folder with a file in it), last modified that long ago."""
    path = root / relative.rstrip("/")
    if relative.endswith("/"):
        path.mkdir(parents=True)
        (path / "journal.jsonl").write_text("{}\n")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    when = (now - timedelta(days=mtime_days_ago)).timestamp()
    os.utime(path, (when, when))
    return path


def tree(root: Path, now: datetime = NOW) -> tuple[set[str], set[str]]:
    """A logs/ and reports/ tree: (names that have expired, names that must stay)."""
    expired = {
        f"logs/rollback-fase2-{stamp(91, now)}.log",
        f"logs/{stamp(120, now)}-fase2/",
        f"logs/{stamp(100, now)}-fase3-3f9a1c0b/",  # a run id that names its target
        "logs/rollback-manual.log",  # no date in the name: its mtime, 100 days ago, decides
        f"logs/health-check-{day(8, now)}.log",
        f"logs/health-history-{day(8, now)}.jsonl",
        f"logs/health-alert-{stamp(30, now)}-api.json",
        f"reports/{stamp(31, now)}-fase1/",
        f"reports/{stamp(45, now)}-pytest/",
        f"reports/{stamp(40, now)}-health-2/",
        f"reports/health-report-{stamp(31, now)}.html",
    }
    kept = {
        f"logs/rollback-fase2-{stamp(89, now)}.log",
        f"logs/rollback-fase3-{stamp(90, now)}.log",  # exactly 90 days: still kept
        f"logs/{stamp(10, now)}-fase1/",
        f"logs/{stamp(10, now)}-fase1-3f9a1c0b/",
        "logs/health-monitor-state-3f9a1c0b.json",
        "logs/rollback-recent.log",
        f"logs/health-check-{day(7, now)}.log",  # the first day kept
        f"logs/health-history-{day(0, now)}.jsonl",
        f"logs/health-alert-{stamp(2, now)}-latency.json",
        "logs/health-monitor-state.json",
        f"reports/{stamp(30, now)}-health/",
        f"reports/{stamp(1, now)}-all/",
        f"reports/health-report-{stamp(29, now)}.html",
        # not the toolkit's: never touched, however old
        "logs/.gitkeep",
        "logs/notes-20200101.txt",
        "logs/health-check-20200101.log.bak",
        "logs/health-check-20200101.log.d/",  # a folder under a file's name
        "logs/20200101T000000Z-custom/",
        "logs/archive/health-check-20200101.log",  # below logs/, not in it
        "reports/20200101T000000Z-someone-elses/",
        "reports/index.html",
        "reports/health-check-20200101.log",  # a health log pattern, but in reports/
    }
    for name in expired:
        make(root, name, mtime_days_ago=100, now=now)
    for name in kept:
        old = 0 if name in ("logs/rollback-recent.log", "logs/health-monitor-state.json",
                            "logs/health-monitor-state-3f9a1c0b.json") else 4000
        make(root, name, mtime_days_ago=old, now=now)
    # a symlink with an expired-looking name, pointing at a file outside: left alone
    outside = make(root, "elsewhere/precious.txt", mtime_days_ago=4000, now=now)
    (root / f"logs/health-check-{day(30, now)}.log").symlink_to(outside)
    kept.add(f"logs/health-check-{day(30, now)}.log")
    return expired, kept


def present(root: Path, names: set[str]) -> set[str]:
    return {n for n in names if (root / n.rstrip("/")).exists() or (root / n.rstrip("/")).is_symlink()}


def settings_in(root: Path, **retention_days: int):  # type: ignore[no-untyped-def]
    return load_settings(env={}, overrides={
        "paths": {"logs_dir": root / "logs", "reports_dir": root / "reports"},
        "retention": retention_days,
    })


def test_plan_lists_exactly_the_expired_entries(tmp_path: Path) -> None:
    expired, kept = tree(tmp_path)
    planned = retention.plan(settings_in(tmp_path), now=NOW)
    names = {str(e.path.relative_to(tmp_path)) + ("/" if e.rule.kind == "dir" else "") for e in planned}
    assert names == expired
    assert present(tmp_path, expired | kept) == expired | kept  # planning removes nothing


def test_remove_deletes_the_plan_and_nothing_else(tmp_path: Path) -> None:
    expired, kept = tree(tmp_path)
    settings = settings_in(tmp_path)
    assert retention.remove(retention.plan(settings, now=NOW)) == []
    assert present(tmp_path, expired) == set()
    assert present(tmp_path, kept) == kept
    assert (tmp_path / "elsewhere/precious.txt").exists()
    assert retention.plan(settings, now=NOW) == []


def test_dates_come_from_names_not_mtimes(tmp_path: Path) -> None:
    fresh_name_old_file = make(tmp_path, f"logs/health-check-{day(1)}.log", mtime_days_ago=400)
    old_name_fresh_file = make(tmp_path, f"logs/health-check-{day(9)}.log", mtime_days_ago=0)
    planned = [e.path for e in retention.plan(settings_in(tmp_path), now=NOW)]
    assert planned == [old_name_fresh_file]
    assert fresh_name_old_file.exists()


def test_retention_is_configurable(tmp_path: Path) -> None:
    make(tmp_path, f"logs/health-check-{day(2)}.log")
    make(tmp_path, f"logs/rollback-fase1-{stamp(20)}.log")
    planned = retention.plan(settings_in(tmp_path, health_days=1, rollback_days=14), now=NOW)
    assert {(e.path.name, e.rule.category) for e in planned} == {
        (f"rollback-fase1-{stamp(20)}.log", "rollback"), (f"health-check-{day(2)}.log", "health")}


def test_missing_folders_are_nothing_to_prune(tmp_path: Path) -> None:
    assert retention.plan(settings_in(tmp_path / "nowhere"), now=NOW) == []


@pytest.mark.parametrize("dry_run", [True, False])
def test_prune_command_prints_what_it_removes(tmp_path: Path, dry_run: bool) -> None:
    now = datetime.now(UTC)
    expired, kept = tree(tmp_path, now=now)
    (tmp_path / "rollback.toml").write_text("[retention]\nrollback_days = 90\nhealth_days = 7\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACK_")}
    args = ["logs", "prune", *(["--dry-run"] if dry_run else [])]
    done = subprocess.run([sys.executable, "-m", "rollback", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    verb = "would remove" if dry_run else "removed"
    listed = [line for line in done.stdout.splitlines() if line.startswith(verb + " ")]
    assert len(listed) == len(expired)
    for name in expired:
        assert any(f"{verb} {name}" in line for line in listed), name
    assert present(tmp_path, expired) == (expired if dry_run else set())
    assert present(tmp_path, kept) == kept


def test_plan_dates_are_shown_for_people(tmp_path: Path) -> None:
    make(tmp_path, f"logs/health-history-{day(10)}.jsonl")
    (entry,) = retention.plan(settings_in(tmp_path), now=NOW)
    assert entry.dated == date(2026, 1, 12) and entry.by_name
    assert entry.describe().endswith("(health history, named 2026-01-12, kept 7 d)")


def test_the_alert_file_of_an_open_incident_is_kept(tmp_path: Path) -> None:
    from rollback.monitor.store import save_state

    old = make(tmp_path, f"logs/health-alert-{stamp(20)}-database.json")
    closed = make(tmp_path, f"logs/health-alert-{stamp(20)}-api.json")
    save_state(tmp_path / "logs", {"version": 1, "checks": {
        "database": {"incident": {"id": f"{stamp(20)}-database"}}, "api": {"incident": None}}})
    assert [e.path for e in retention.plan(settings_in(tmp_path), now=NOW)] == [closed]
    assert old.exists()


def test_the_alert_file_of_an_incident_open_on_any_target_is_kept(tmp_path: Path) -> None:
    from rollback.monitor.store import save_state

    mine = make(tmp_path, f"logs/health-alert-{stamp(20)}-database.json")
    theirs = make(tmp_path, f"logs/health-alert-{stamp(21)}-api.json")
    closed = make(tmp_path, f"logs/health-alert-{stamp(22)}-latency.json")
    save_state(tmp_path / "logs", {"version": 1, "checks": {
        "database": {"incident": {"id": f"{stamp(20)}-database"}}}}, "aaaa1111")
    save_state(tmp_path / "logs", {"version": 1, "checks": {
        "api": {"incident": {"id": f"{stamp(21)}-api"}}}}, "bbbb2222")
    assert [e.path for e in retention.plan(settings_in(tmp_path), now=NOW)] == [closed]
    assert mine.exists() and theirs.exists()
