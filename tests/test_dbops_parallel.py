"""A bulk statement of a step that runs while the API serves takes one core of the database, not
all of them (`rollback.runs.dbops.without_parallel_workers`), for its transaction only: against
the sandbox's real PostgreSQL, with the planner made to prefer a parallel plan even on its small
tables."""

from __future__ import annotations

from typing import Any

import psycopg

from rollback.runs import dbops
from tests.conftest import Sandbox

#: parallel plans cost nothing to the planner: on the sandbox's tables it then takes them
PREFER_PARALLEL = ("SELECT set_config('parallel_setup_cost', '0', false), "
                   "set_config('parallel_tuple_cost', '0', false), "
                   "set_config('min_parallel_table_scan_size', '0', false)")


def _plan(conn: psycopg.Connection[Any]) -> str:
    return "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT count(*) FILTER (WHERE is_active) FROM api_keys").fetchall())


def _setting(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_bulk_step_takes_no_parallel_workers_for_its_transaction_only(sandbox: Sandbox) -> None:
    with psycopg.connect(sandbox.database_url) as conn:
        conn.execute(PREFER_PARALLEL)
        conn.commit()
        assert "Gather" in _plan(conn), "the planner should prefer a parallel scan here"
        maintenance = _setting(conn, "max_parallel_maintenance_workers")
        assert maintenance != "0"
        conn.commit()
        with conn.transaction():
            dbops.without_parallel_workers(conn)
            plan = _plan(conn)
            assert "Gather" not in plan and "Parallel" not in plan, plan
            assert _setting(conn, "max_parallel_maintenance_workers") == "0"
        # the session as it was: a transaction-mode pooler hands it to someone else next
        assert "Gather" in _plan(conn)
        assert _setting(conn, "max_parallel_maintenance_workers") == maintenance
