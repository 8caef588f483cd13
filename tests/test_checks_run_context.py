"""The run context file: what the drivers write is what the checks read; bad files say why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checks.run_context import Baseline, Fase2Backup, KeyCounts, RunContext, load_run_context
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
