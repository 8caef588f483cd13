"""Runs are bound to their target: two targets driven from one working directory (one logs and
one reports folder) neither resume nor block each other, and `history` tells them apart.

A target is its repository, its database and its API (`rollback.config.TargetIdentity`); its
short id is in every run id, journal, lock and monitor state file. Two real sandboxes here: B's
FASE 1 run fails at its gate with its change in place (an unfinished run), then A rolls back
FASE 3 and FASE 1 as if B did not exist, and B still resumes its own run afterwards.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollback.config import load_settings
from rollback.monitor import store
from tests.conftest import Sandbox, SandboxFactory
from tests.targets import Target, git, to_toml


def shared_target(box: Sandbox, folder: Path, shared: Path, name: str) -> Target:
    """`box` through a rollback.toml of its own whose logs and reports are `shared`'s."""
    folder.mkdir(parents=True, exist_ok=True)
    data = tomllib.loads(box.config_file.read_text())
    data["target"]["name"] = name
    data["paths"] = {"logs_dir": shared / "logs", "reports_dir": shared / "reports"}
    data["gate"] = {"passes_required": 1, "deadline_s": 8, "interval_s": 0}
    data["run"] = {"retry_backoff_s": 0.1}
    config = folder / "rollback.toml"
    config.write_text(to_toml(data))
    return Target(box, config, shared / "logs", shared / "reports")


@pytest.fixture
def two_targets(sandbox_factory: SandboxFactory, tmp_path: Path) -> Iterator[tuple[Target, Target]]:
    a, b = sandbox_factory.make(), sandbox_factory.make()
    try:
        yield (shared_target(a, tmp_path / "a", tmp_path / "ops", "alpha"),
               shared_target(b, tmp_path / "b", tmp_path / "ops", "bravo"))
    finally:
        sandbox_factory.destroy(a)
        sandbox_factory.destroy(b)


def identity_of(target: Target) -> str:
    return load_settings(env=target.env()).identity.id


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(240)
def test_two_targets_from_one_directory_neither_resume_nor_block_each_other(
        two_targets: tuple[Target, Target]) -> None:
    a, b = two_targets
    a_id, b_id = identity_of(a), identity_of(b)
    assert a_id != b_id

    with b.box.chaos(error_rate=1.0, paths=["/v1/leads"]):  # B's gate cannot pass
        failed = b.rollback("run", "fase1", "--yes")
    assert failed.returncode == 1 and "gate failed" in failed.stderr, failed.stderr
    (b_run,) = b.runs()
    assert b_run.run_id.endswith(f"-fase1-{b_id}") and b_run.resumable and b_run.changed
    assert b_run.target["name"] == "bravo" and b_run.target["id"] == b_id

    # B's unfinished FASE 1 run neither blocks A's FASE 3 nor is resumed by A's FASE 1
    fase3 = a.rollback("run", "fase3", "--yes")
    assert fase3.returncode == 0, fase3.stdout + fase3.stderr
    a_head_before = git(a.box.repo, "rev-parse", "HEAD")
    fase1 = a.rollback("run", "fase1", "--yes")
    assert fase1.returncode == 0, fase1.stdout + fase1.stderr
    assert "resuming" not in fase1.stdout and b_run.run_id not in fase1.stdout
    a_runs = [r for r in a.runs() if r.target_id == a_id]
    assert [(r.phase, r.state) for r in a_runs] == [("fase3", "succeeded"), ("fase1", "succeeded")]
    # every step ran on A: its own baseline, revert, build and deploy
    assert {"baseline", "backup", "code", "build", "deploy", "gate"} <= set(a_runs[1].completed)
    assert git(a.box.repo, "rev-parse", "HEAD") != a_head_before
    assert "Revert" in git(a.box.repo, "log", "-1", "--format=%s") or \
        "fase1" in git(a.box.repo, "log", "-1", "--format=%B")

    # B's run is untouched by all that, and B resumes it (under its own id) once B is healthy
    again = next(r for r in b.runs() if r.run_id == b_run.run_id)
    assert again.state == "failed" and again.target_id == b_id
    resumed = b.rollback("run", "fase1", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming run {b_run.run_id}" in resumed.stdout

    listed = a.rollback("history")
    assert listed.returncode == 0
    assert f"target: alpha {a_id}" in listed.stdout and f"target: bravo {b_id}" in listed.stdout
    only_b = a.rollback("history", "--target", b_id[:6], "--json")
    rows = [json.loads(line) for line in only_b.stdout.splitlines()]
    assert [(r["run_id"], r["state"]) for r in rows] == [(b_run.run_id, "succeeded")]
    assert rows[0]["target"]["name"] == "bravo"
    assert "@" not in json.dumps(rows[0]["target"])  # no user or password of DATABASE_URL
    mine = a.rollback("history", "--target", "current", "--json")
    assert {json.loads(line)["target"]["id"] for line in mine.stdout.splitlines()} == {a_id}
    by_name = a.rollback("history", "--target", "alpha")
    assert by_name.stdout.count("target: alpha") == 2 and "bravo" not in by_name.stdout


def test_a_target_id_changes_with_its_repository_database_or_api_and_holds_no_secret(
        tmp_path: Path) -> None:
    base = {"DATABASE_URL": "postgresql://ops:s3cret-pw@db.example.com:5432/platform",
            "API_BASE_URL": "https://api.example.com"}

    def identity(**env: str):  # type: ignore[no-untyped-def]
        return load_settings(env={**base, **env}, overrides={"target": {"repo": str(tmp_path)}}).identity

    same = identity(DATABASE_URL="postgresql://other:pw2@db.example.com:5432/platform")
    assert identity().id == same.id  # who connects is not which target it is
    assert identity(DATABASE_URL="postgresql://ops:pw@db.example.com:5432/staging").id != same.id
    assert identity(API_BASE_URL="https://api2.example.com").id != same.id
    assert identity().database == "db.example.com:5432/platform"
    assert "s3cret" not in json.dumps(identity().as_dict())


def test_the_monitor_keeps_alert_state_per_target(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    store.save_state(logs, {"version": 1, "checks": {"api": {"fail_streak": 3}}}, "aaaa1111")
    store.save_state(logs, {"version": 1, "checks": {}}, "bbbb2222")
    assert store.load_state(logs, "aaaa1111") == {"version": 1, "checks": {"api": {"fail_streak": 3}}}
    assert store.load_state(logs, "bbbb2222") == {"version": 1, "checks": {}}
    assert store.load_state(logs, "cccc3333") is None
    assert sorted(p.name for p in logs.iterdir()) == [
        "health-monitor-state-aaaa1111.json", "health-monitor-state-bbbb2222.json"]
