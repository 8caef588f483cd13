"""Storage faults lose nothing: a full or read-only folder gives one line and a non-zero exit, and
the run resumes once there is room; journals survive a torn or damaged line; bad bytes in the
configuration or the history give one line.

The faults are real: a small tmpfs for a full disk, a read-only bind mount for a read-only one
(the tests run as root; where `mount` is refused they are skipped, saying so).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollback.runs.journal import Journal, StorageFault, all_runs, check_room, replay
from tests.conftest import ROOT, Sandbox
from tests.targets import Target, git, make_target, to_toml


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        why = result.stderr.strip() or result.returncode
        pytest.skip(f"STORAGE FAULT TESTS SKIPPED: cannot mount here ({why}): they need a tmpfs "
                    "and a bind mount (root, CAP_SYS_ADMIN)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up."""
    where = tmp_path / "small"
    where.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder mounted read-only (a bind mount of an empty folder)."""
    source, where = tmp_path / "ro-source", tmp_path / "ro"
    source.mkdir()
    where.mkdir()
    _mount("--bind", str(source), str(where))
    try:
        _mount("-o", "remount,bind,ro", str(where))
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write zeros into `path` until its disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def with_paths(target: Target, **paths: Path | float) -> Target:
    data = tomllib.loads(target.config.read_text())
    data["paths"] = {**data["paths"], **paths}
    target.config.write_text(to_toml(data))
    logs = Path(str(data["paths"]["logs_dir"]))
    return Target(target.box, target.config, logs, Path(str(data["paths"]["reports_dir"])))


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    __tracebackhide__ = True
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- a run whose logs folder fills up mid-run ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_run_whose_logs_disk_fills_mid_run_stops_in_one_line_then_resumes_and_finishes(
        fresh_sandbox: Sandbox, tmp_path: Path, small_disk: Path) -> None:
    box = fresh_sandbox
    marker = tmp_path / "filled-once"
    filler = small_disk / "filler"
    # the build fills the logs disk, once: the run is past its pre-flight, changing the target
    build = (f"{shlex.quote(sys.executable)} build.py && (test -e {marker} || (touch {marker}; "
             f"cat /dev/zero > {filler} 2>/dev/null; true))")
    target = make_target(box, tmp_path / "t", target={"build_command": build})
    target = with_paths(target, logs_dir=small_disk / "logs", min_free_mb=1)
    head = git(box.repo, "rev-parse", "HEAD")

    first = target.rollback("run", "fase1", "--yes")
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr
    # where it stops depends on which write meets the full disk first: the journal's (its line)
    # or a step's own file (the gate's run context), said by the step
    assert_one_line(first, *(["disk full", "run the same command again to resume it"]
                             if "journal.jsonl" in first.stderr else ["No space left on device"]))
    assert filler.stat().st_size > 0 and marker.exists()
    (record,) = all_runs(target.logs)
    assert record.resumable and "build" not in record.steps.get("gate", {})

    filler.unlink()  # the operator frees space
    again = target.rollback("run", "fase1", "--yes")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert f"resuming run {record.run_id}" in again.stdout
    (done,) = all_runs(target.logs)
    assert done.run_id == record.run_id and done.state == "succeeded" and done.damaged == 0
    assert git(box.repo, "rev-parse", "HEAD") != head

    history = target.rollback("history")
    assert history.returncode == 0 and f"{record.run_id}  succeeded" in history.stdout
    assert "gate passed" in history.stdout


# --- pre-flight: folders that cannot be written or have no room -----------------------------------


@pytest.mark.parametrize("folder", ["logs_dir", "reports_dir"])
def test_a_read_only_folder_is_refused_before_anything_changes(
        sandbox: Sandbox, tmp_path: Path, read_only: Path, folder: str) -> None:
    target = with_paths(make_target(sandbox, tmp_path / "t"), **{folder: read_only})
    head = git(sandbox.repo, "rev-parse", "HEAD")
    result = target.rollback("run", "fase1", "--yes")
    assert result.returncode == 1
    assert_one_line(result, str(read_only), "read-only file system", "nothing was changed")
    assert git(sandbox.repo, "rev-parse", "HEAD") == head
    assert git(sandbox.repo, "branch", "--list", "rollback/*") == ""
    planned = target.rollback("plan", "fase1")
    assert planned.returncode == 0 and f"{read_only}: NOT writable" in planned.stdout


def test_a_folder_without_room_is_refused_before_anything_changes(
        sandbox: Sandbox, tmp_path: Path, small_disk: Path) -> None:
    target = with_paths(make_target(sandbox, tmp_path / "t"), reports_dir=small_disk / "reports")
    head = git(sandbox.repo, "rev-parse", "HEAD")
    result = target.rollback("run", "fase1", "--yes")  # [paths] min_free_mb: 64 by default
    assert result.returncode == 1
    assert_one_line(result, f"reports folder {small_disk / 'reports'} has 4 MiB free, less than "
                            "the 64 MiB a run needs", "nothing was changed")
    assert git(sandbox.repo, "rev-parse", "HEAD") == head


def test_validate_into_a_read_only_reports_folder_is_one_line(sandbox: Sandbox,
                                                              read_only: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "rollback", "validate", "health", "--reports",
                             str(read_only)], cwd=ROOT, env=sandbox.env(), text=True,
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 1
    assert_one_line(result, f"cannot write {read_only}/", "read-only file system")


def test_check_room_says_what_it_found(tmp_path: Path) -> None:
    line = check_room(tmp_path / "logs", 1, "logs folder")
    assert line.startswith(f"logs folder {tmp_path / 'logs'} writable, ") and line.endswith(" free")
    assert not [p for p in (tmp_path / "logs").iterdir()]  # its probe file is gone


# --- the journal -------------------------------------------------------------------------------------


def _journal(folder: Path) -> Journal:
    journal = Journal.create(folder, "20260122T101500Z-fase1-aaaa1111")
    journal.write("run_started", phase="fase1", options={"phase": "fase1"},
                  target={"id": "aaaa1111"}, pid=1, host="h")
    return journal


def test_a_journal_write_the_disk_refuses_leaves_no_half_line(small_disk: Path) -> None:
    journal = _journal(small_disk)
    journal.write("step_started", step="baseline")
    size = journal.path.stat().st_size
    fill(small_disk / "filler")
    with pytest.raises(StorageFault, match=r"cannot write .*journal.jsonl: disk full; run "
                                           r"20260122T101500Z-fase1-aaaa1111 stopped"):
        journal.write("step_finished", step="baseline", facts={"big": "x" * 200_000})
    assert journal.path.stat().st_size == size
    assert journal.path.read_bytes().endswith(b"\n")
    assert replay(journal.path).steps["baseline"]["state"] == "running"
    (small_disk / "filler").unlink()
    journal.write("step_finished", step="baseline", summary="ok")
    assert replay(journal.path).completed == ["baseline"]


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.write("step_started", step="baseline")
    with journal.path.open("ab") as handle:
        handle.write(b'{"ts": "2026-01-22T10:16:00.000Z", "run_id": "x", "event": "step_fin')
    assert replay(journal.path).damaged == 1  # read before the repair: skipped, not fatal
    again = Journal(journal.path, journal.run_id)  # the resumed run
    again.write("run_resumed", completed=[], target={"id": "aaaa1111"}, pid=2, host="h")
    lines = journal.path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["run_started", "step_started",
                                                              "run_resumed"]
    record = replay(journal.path)
    assert record.damaged == 0 and record.state == "running" and record.last_pid == 2


def test_a_damaged_line_in_the_middle_is_skipped_and_history_says_so(sandbox: Sandbox,
                                                                      tmp_path: Path) -> None:
    target = make_target(sandbox, tmp_path / "t")
    journal = _journal(target.logs)
    journal.write("step_started", step="baseline")
    with journal.path.open("ab") as handle:
        handle.write(b"\xff\xfe not json at all\n")
    journal.write("step_finished", step="baseline", summary="ok", duration_s=0.1)
    journal.write("run_finished", state="succeeded", duration_s=1.0)
    record = replay(journal.path)
    assert record.state == "succeeded" and record.damaged == 1
    listed = target.rollback("history")
    assert listed.returncode == 0 and journal.run_id in listed.stdout
    assert_one_line(listed, "1 line(s) are not JSON", str(journal.path))


# --- bad bytes -------------------------------------------------------------------------------------


def test_a_config_that_is_not_utf8_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "rollback.toml"
    config.write_bytes(b'[target]\nname = "caf\xe9"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACK_")}
    result = subprocess.run([sys.executable, "-m", "rollback", "history"], cwd=ROOT, text=True,
                            capture_output=True, env={**env, "ROLLBACK_CONFIG": str(config)},
                            check=False)
    assert result.returncode == 2
    assert_one_line(result, f"{config}: not UTF-8 text", "save it as UTF-8")
