"""FASE 2's backup is compared by content, not only by count: the check
`test_backup_holds_every_converted_key` streams the backup table as the driver streamed it into
its CSV and, where the bytes differ, compares both key by key, naming each key and column.

The backup here is made as the driver makes it (a table of the branch keys, then its CSV by
`write_backup_csv`) on the shared sandbox, then changed in place with its row count kept."""

from __future__ import annotations

import csv
from pathlib import Path

import psycopg

from checks.run_context import Fase2Backup, KeyCounts, RunContext
from rollback.actions.branch_keys import write_backup_csv
from rollback.validate import ValidationResult, run_validation
from tests.conftest import Sandbox
from tests.validations import failed

SCHEMA, TABLE = "backup_content_test", "api_keys_backup"
CHECK = "test_backup_holds_every_converted_key"


def test_a_backup_changed_with_its_count_kept_is_caught_key_by_key(any_sandbox: Sandbox,
                                                                    tmp_path: Path) -> None:
    box = any_sandbox
    backup_csv = tmp_path / "backup.csv"
    box.sql(f"CREATE SCHEMA {SCHEMA}")
    try:
        box.sql(f"CREATE TABLE {SCHEMA}.{TABLE} AS SELECT * FROM api_keys "
                "WHERE tenant_id = %s ORDER BY id", (box.tenant_id,))
        (rows,), = box.sql(f"SELECT count(*) FROM {SCHEMA}.{TABLE}")
        (total, active), = box.sql("SELECT count(*), count(*) FILTER (WHERE is_active) FROM api_keys")
        with psycopg.connect(box.database_url) as conn:
            write_backup_csv(conn, SCHEMA, TABLE, backup_csv)
        context = RunContext(run_id="test-backup-content", phase="fase2", fase2_backup=Fase2Backup(
            schema=SCHEMA, table=TABLE, row_count=rows, csv=backup_csv,
            key_counts_before=KeyCounts(total=total, active=active))).write(tmp_path / "context.json")

        def run() -> ValidationResult:
            return run_validation("fase2", reports_root=tmp_path, env=box.env(), run_context=context,
                                  extra_args=["-k", CHECK])

        assert run().check(CHECK).verdict == "pass"
        (first, name), (second, _) = box.sql(f"SELECT id::text, name FROM {SCHEMA}.{TABLE} "
                                             "ORDER BY id LIMIT 2")
        box.sql(f"UPDATE {SCHEMA}.{TABLE} SET name = 'changed by the test' WHERE id = %s", (first,))
        failed(run(), CHECK, f"backup table {SCHEMA}.{TABLE} and its CSV {backup_csv} differ in "
               f"1 keys (id: what differs): {first}: name.")
        box.sql(f"UPDATE {SCHEMA}.{TABLE} SET name = %s WHERE id = %s", (name, first))
        assert run().check(CHECK).verdict == "pass"
        # the CSV's side: one key's row swapped for another key's, as many rows as before
        with backup_csv.open(newline="", encoding="utf-8") as handle:
            lines = list(csv.reader(handle))
        at = lines[0].index("id")
        lines = [line for line in lines if line[at] != second]
        lines.append([f"{second[:-1]}{'0' if second[-1] != '0' else '1'}" if i == at else v
                      for i, v in enumerate(lines[1])])
        lines[1:] = sorted(lines[1:], key=lambda line: line[at])
        with backup_csv.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(lines)
        failed(run(), CHECK, "differ in 2 keys", f"{second}: only in the table", "only in the CSV")
    finally:
        box.sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
