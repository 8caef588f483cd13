"""FASE 2's walk trusts the backup's horizon: a key whose row is older than the backup's
snapshot is one the backup copied, and is converted without looking it up; a key updated since
the backup, or made branch-scoped after it, is looked up, and the sweep backs it up first if it
has no pre-image. Proved on both shapes (the real platform's triggers fire on every update).

To see which keys the walk looked up, a test removes pre-images from the backup table after
the backup: a key the walk converts anyway was not looked up; a key it leaves to the sweep was,
and the sweep copies it into the backup again (counted as a late key). When the horizon is used
at all (`horizon_xid`) is proved in tests/test_branch_keys_units.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from rollback.actions import branch_keys
from rollback.runs import dbops
from tests.conftest import Sandbox

SCHEMA, RUN_ID = "rb_horizon", "20260101T000000Z-fase2"
POLICY = dbops.BatchPolicy(size=2000, lock_timeout_ms=2000, retries=0, backoff_s=0)


def _backup(box: Sandbox, tmp_path: Path) -> branch_keys.Fase2Backup:
    with psycopg.connect(box.database_url) as conn:
        return branch_keys.backup_fase2(conn, schema=SCHEMA, run_id=RUN_ID,
                                        csv_path=tmp_path / "backup.csv")


def _convert(box: Sandbox, backup: branch_keys.Fase2Backup) -> branch_keys.Conversion:
    with psycopg.connect(box.database_url) as conn:
        return branch_keys.convert_branch_keys(conn, schema=SCHEMA, table=backup.table,
                                               run_id=RUN_ID, policy=POLICY, log=lambda line: None)


def _pre_images(box: Sandbox, backup: branch_keys.Fase2Backup) -> dict[str, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in box.sql(sql.SQL(
        "SELECT id::text, scope_type, branch_id::text FROM {}").format(
            sql.Identifier(SCHEMA, backup.table)))}


def _forget(box: Sandbox, backup: branch_keys.Fase2Backup, *ids: str) -> None:
    box.sql(sql.SQL("DELETE FROM {} WHERE id = ANY(%s::uuid[])").format(
        sql.Identifier(SCHEMA, backup.table)), (list(ids),))


def _scope(box: Sandbox, key: str) -> tuple[Any, ...]:
    return box.sql("SELECT scope_type, branch_id::text FROM api_keys WHERE id = %s", (key,))[0]


def test_the_walk_looks_up_only_the_keys_changed_since_the_backup(any_fresh_sandbox: Sandbox,
                                                                  tmp_path: Path) -> None:
    box = any_fresh_sandbox
    branch = [r[0] for r in box.sql("SELECT id::text FROM api_keys WHERE scope_type = 'branch' "
                                    "ORDER BY id LIMIT 2")]
    assert len(branch) == 2, "the sandbox needs branch keys"
    untouched, touched = branch
    late, late_branch = box.sql(
        "SELECT k.id::text, b.id::text FROM api_keys k JOIN branches b ON b.tenant_id = k.tenant_id "
        "WHERE k.scope_type = 'tenant' AND k.is_active ORDER BY k.id LIMIT 1")[0]
    backup = _backup(box, tmp_path)
    assert box.sql(sql.SQL("SELECT backup_xmin FROM {} WHERE run_id = %s").format(
        sql.Identifier(SCHEMA, "runs")), (RUN_ID,))[0][0], "the backup registers its horizon"
    # after the backup: the API's last-use update of one key, a key made branch-scoped
    box.sql("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (touched,))
    box.sql("UPDATE api_keys SET scope_type = 'branch', branch_id = %s WHERE id = %s",
            (late_branch, late))
    touched_then = _pre_images(box, backup)[touched]
    _forget(box, backup, untouched, touched)

    done = _convert(box, backup)

    assert done.remaining == 0 and _scope(box, untouched) == ("tenant", None)
    pre_images = _pre_images(box, backup)
    assert untouched not in pre_images, (
        "a key the backup saw, unchanged since, was looked up: the walk did not trust the horizon")
    assert pre_images[touched] == touched_then, "a key updated since the backup was not looked up"
    assert pre_images[late] == ("branch", late_branch), "a late key was converted without a pre-image"
    assert done.late_keys == 2 and _scope(box, late) == ("tenant", None)


def test_without_a_horizon_the_walk_looks_up_every_key(fresh_sandbox: Sandbox,
                                                       tmp_path: Path) -> None:
    """A backup registered before the horizon existed (or on PostgreSQL 12): NULL."""
    box = fresh_sandbox
    key = box.sql("SELECT id::text FROM api_keys WHERE scope_type = 'branch' ORDER BY id LIMIT 1")[0][0]
    backup = _backup(box, tmp_path)
    box.sql(sql.SQL("UPDATE {} SET backup_xmin = NULL").format(sql.Identifier(SCHEMA, "runs")))
    _forget(box, backup, key)

    done = _convert(box, backup)

    assert done.remaining == 0 and done.late_keys == 1
    assert _pre_images(box, backup)[key][0] == "branch", "the sweep backed the key up first"
