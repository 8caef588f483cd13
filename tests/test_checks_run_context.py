"""The run context file: what the drivers write is what the checks read; bad files say why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from checks.run_context import Baseline, Fase2Backup, KeyCounts, RunContext, last_run, load_run_context
from rollback.config import Settings, load_settings
from rollback.errors import ConfigError


def test_written_context_reads_back_equal(tmp_path: Path) -> None:
    context = RunContext(
        run_id="20260122T101500Z-fase2", phase="fase2", expected_version="3f2c9a1",
        baseline=Baseline(p95_ms={"/v1/leads": 120.0}, error_rate=0.002),
        fase2_backup=Fase2Backup(schema="rollback_backup", table="api_keys_x", row_count=37,
                                 key_counts_before=KeyCounts(total=1204, active=1130),
                                 csv=tmp_path / "backup.csv"),
        fase3_db_option=2, fase3_objects=("idx_leads_branch_search",),
    )
    path = context.write(tmp_path / "ctx" / "run-context.json")
    loaded = load_run_context(path)
    assert loaded == RunContext(**{**context.__dict__, "source": path})


def test_minimal_context_and_relative_csv(tmp_path: Path) -> None:
    path = tmp_path / "run-context.json"
    path.write_text(json.dumps({
        "run_id": "r1", "phase": "fase2",
        "baseline": {"p95_ms": {"leads": 10}},
        "fase2_backup": {"schema": "s", "table": "t", "row_count": 0, "csv": "b.csv",
                         "key_counts_before": {"total": 1, "active": 1}},
    }))
    loaded = load_run_context(path)
    assert loaded.baseline is not None and loaded.baseline.p95_ms == {"/v1/leads": 10.0}
    assert loaded.fase2_backup is not None and loaded.fase2_backup.csv == tmp_path / "b.csv"
    assert loaded.expected_version is None and loaded.fase3_objects == ()


@pytest.mark.parametrize(("content", "problem"), [
    ("{", "not valid JSON"),
    ('{"phase": "fase2"}', "run_id is missing"),
    ('{"run_id": "r", "phase": "fase4"}', "phase must be one of fase1, fase2, fase3"),
    ('{"run_id": "r", "phase": "fase3", "fase3_db_option": 3}', "fase3_db_option must be 1 or 2"),
    ('{"run_id": "r", "phase": "fase2", "fase2_backup": {"schema": "s", "table": "t", '
     '"row_count": "7", "key_counts_before": {"total": 1, "active": 1}}}',
     "fase2_backup.row_count has the wrong type"),
])
def test_bad_context_names_file_and_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "run-context.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_run_context(path)
    assert str(path) in str(caught.value)


def test_missing_context_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_run_context(tmp_path / "absent.json")


# --- the last run of a phase against the same target ----------------------------------------------


def _settings(tmp_path: Path, api: str = "http://127.0.0.1:9", database: str = "db1") -> Settings:
    """A target whose runs are journaled under tmp_path/logs."""
    config = tmp_path / f"rollback-{database}.toml"
    config.write_text(f'[target]\napi_base_url = "{api}"\n[paths]\nlogs_dir = "{tmp_path / "logs"}"\n')
    return load_settings(env={"ROLLBACK_CONFIG": str(config), "TEST_API_KEY": "tis_test_x",
                              "DATABASE_URL": f"postgresql://u:pw@127.0.0.1:5432/{database}"})


def _a_run(settings: Settings, run_id: str, phase: str, *, context: bool = True,
           target: dict[str, str] | None = None) -> None:
    """A run's journal (its first line) naming `target` (these settings' by default), and its
    run context unless `context` is False."""
    folder = settings.paths.logs_dir / run_id
    folder.mkdir(parents=True)
    event = {"ts": f"2026-01-{run_id[6:8]}T00:00:00.000Z", "run_id": run_id,
             "event": "run_started", "phase": phase,
             "target": settings.identity.as_dict() if target is None else target}
    (folder / "journal.jsonl").write_text(json.dumps(event) + "\n")
    if context:
        RunContext(run_id=run_id, phase=phase).write(folder / "run-context.json")  # type: ignore[arg-type]


def test_the_newest_run_of_the_phase_against_this_target_is_used(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _a_run(settings, "20260101T000000Z-fase2", "fase2")
    _a_run(settings, "20260102T000000Z-fase2", "fase2")
    _a_run(settings, "20260103T000000Z-fase1", "fase1")
    found = last_run(settings, "fase2")
    assert found.context is not None and found.context.run_id == "20260102T000000Z-fase2"
    assert (f"run context: 20260102T000000Z-fase2, the last fase2 run against target "
            f"{settings.identity.id} (http://127.0.0.1:9)") in found.line


@pytest.mark.parametrize(("arrange", "passed_over"), [
    ({"target": {"id": "0ther1d0"}}, "of another target"),
    ({"target": {}}, "of another target or of none"),  # a journal from before targets were recorded
    ({"context": False}, "stopped before their gate"),
])
def test_runs_of_another_target_or_without_a_context_are_passed_over(
        tmp_path: Path, arrange: dict[str, Any], passed_over: str) -> None:
    settings = _settings(tmp_path)
    _a_run(settings, "20260101T000000Z-fase2", "fase2")
    _a_run(settings, "20260102T000000Z-fase2", "fase2", **arrange)
    found = last_run(settings, "fase2")
    assert found.context is not None and found.context.run_id == "20260101T000000Z-fase2"
    # the same logs folder seen from a target with another database finds neither
    assert last_run(_settings(tmp_path, database="db9"), "fase2").context is None
    (settings.paths.logs_dir / "20260101T000000Z-fase2" / "run-context.json").unlink()
    none = last_run(settings, "fase2")
    assert none.context is None and passed_over in none.line and "--run-context" in none.line
