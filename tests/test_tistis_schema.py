"""The sandbox's "tistis" shape: the database as the platform's real repository builds it.

One database of its own in the session's embedded PostgreSQL gets Supabase's bootstrap (twice:
it must be idempotent) and the migrations at the HEAD of the shape's history, each file in its
own transaction, then the tistis seed. The tests check behaviour the toolkit has to live with
in production: row level security that hides rows silently, the branch trigger's plain
exceptions and its rewrite of branch_context, the triggers on every update, and FASE 3 as it is
applied today (renamed to 174/175, other definitions than the phase commit's).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from rollback.fase3 import DbObject, parse_migration_objects
from sandbox import seed
from sandbox.postgres import EmbeddedPostgres

SHAPE = Path(__file__).resolve().parent.parent / "sandbox" / "platform" / "tistis"
HISTORY = SHAPE / "history"
BOOTSTRAP = SHAPE / "supabase" / "bootstrap.sql"
MIGRATIONS = "supabase/migrations"

HEAD_MIGRATIONS = [
    "001_INITIAL_SCHEMA.sql",
    "134_API_KEYS_SYSTEM.sql",
    "135_ADD_BRANCH_CONTEXT_TO_API_KEYS.sql",
    "136_API_KEY_AUDIT_SYSTEM.sql",
    "173_API_KEY_USAGE_INCREMENT.sql",
    "174_OPTIMIZE_BRANCH_FILTERING_INDEXES.sql",
    "175_ADD_LOW_STOCK_RPC_FUNCTION.sql",
]
RLS_TABLES = ["tenants", "branches", "leads", "appointments", "staff", "staff_branches", "api_keys",
              "api_key_usage_logs"]
FASE3_INDEXES = [
    "idx_leads_branch_active_statuses", "idx_leads_branch_search", "idx_appointments_branch_scheduled",
    "idx_appointments_branch_scheduled_desc", "idx_staff_branches_branch_id",
    "idx_staff_branches_staff_id", "idx_leads_tenant_branch_created",
    "idx_appointments_tenant_branch_scheduled", "idx_leads_branch_covering",
    "idx_appointments_branch_covering", "idx_api_keys_hash_active", "idx_api_keys_branch_scope",
]

pytestmark = pytest.mark.slow


def checkout_at(step: str | None, dest: Path) -> Path:
    """The shape's working tree after the history folders up to `step` (all when None):
    renames.txt, then deletes.txt, then the files/ overlay, folder by folder in sorted order,
    as the repo builder replays them (without git)."""
    for folder in sorted(p for p in HISTORY.iterdir() if p.is_dir()):
        renames = folder / "renames.txt"
        if renames.exists():
            for line in renames.read_text().splitlines():
                if "->" in line:
                    old, new = (part.strip() for part in line.split("->", 1))
                    (dest / new).parent.mkdir(parents=True, exist_ok=True)
                    (dest / old).rename(dest / new)
        deletes = folder / "deletes.txt"
        if deletes.exists():
            for line in deletes.read_text().splitlines():
                if line.strip():
                    (dest / line.strip()).unlink()
        if (folder / "files").is_dir():
            shutil.copytree(folder / "files", dest, dirs_exist_ok=True)
        if folder.name == step:
            break
    return dest


def creates(text: str, name: str) -> str:
    """The CREATE INDEX statement for `name` in a migration, whitespace and CONCURRENTLY aside."""
    match = re.search(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
                      + name + r"\b(.*?);", text, re.IGNORECASE | re.DOTALL)
    assert match, f"{name} is not created"
    return " ".join(match.group(1).split()).lower()


@pytest.fixture(scope="module")
def head_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkout_at(None, tmp_path_factory.mktemp("tistis-head"))


@pytest.fixture(scope="module")
def phase_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkout_at("01_fase_1_2_3", tmp_path_factory.mktemp("tistis-phase"))


@pytest.fixture(scope="module")
def tistis_db(pg_cluster: EmbeddedPostgres, head_tree: Path) -> Iterator[tuple[str, seed.SeedSummary]]:
    """A database at HEAD of the tistis shape, seeded; dropped at the end of the module."""
    name = f"tistis_schema_{os.getpid()}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = pg_cluster.url(name)
        with psycopg.connect(url) as conn:
            for _ in range(2):
                conn.execute(BOOTSTRAP.read_text())  # type: ignore[arg-type]
                conn.commit()
            for path in sorted((head_tree / MIGRATIONS).glob("*.sql")):
                conn.execute(path.read_text())  # type: ignore[arg-type]
                conn.commit()
            summary = seed.seed(conn, tenants=20, seed_value=42, shape="tistis")
            conn.commit()
        yield url, summary
    finally:
        with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db(tistis_db: tuple[str, seed.SeedSummary]) -> Iterator[psycopg.Connection[Any]]:
    """A superuser session whose changes are rolled back after the test."""
    with psycopg.connect(tistis_db[0]) as conn:
        yield conn
        conn.rollback()


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0] if len(row) == 1 else row


def test_head_holds_the_migrations_in_their_order(head_tree: Path) -> None:
    assert sorted(p.name for p in (head_tree / MIGRATIONS).glob("*.sql")) == HEAD_MIGRATIONS


def test_bootstrap_is_idempotent_and_keeps_a_login(tistis_db: tuple[str, seed.SeedSummary],
                                                   db: psycopg.Connection[Any]) -> None:
    roles = "SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles WHERE rolname IN " \
            "('anon', 'authenticated', 'service_role') ORDER BY rolname"
    before = db.execute(roles).fetchall()
    db.execute(BOOTSTRAP.read_text())  # type: ignore[arg-type]
    assert db.execute(roles).fetchall() == before
    assert [(name, bypass) for name, _, bypass in before] == [
        ("anon", False), ("authenticated", False), ("service_role", True)]
    assert one(db, "SELECT auth.uid()") is None
    assert one(db, "SELECT auth.jwt()") == {}
    db.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (tistis_db[1].test_tenant_id,))
    assert str(one(db, "SELECT auth.uid()")) == tistis_db[1].test_tenant_id


def test_row_level_security_is_on_for_the_platform_tables(db: psycopg.Connection[Any]) -> None:
    rows = dict(db.execute("SELECT relname, relrowsecurity FROM pg_class WHERE relname = ANY(%s) "
                           "AND relkind = 'r'", (RLS_TABLES,)).fetchall())
    assert rows == dict.fromkeys(RLS_TABLES, True)


def test_a_role_without_bypassrls_sees_no_keys_silently(db: psycopg.Connection[Any]) -> None:
    total = one(db, "SELECT count(*) FROM api_keys")
    assert total > 0
    assert one(db, "SELECT has_table_privilege('authenticated', 'api_keys', 'SELECT')")
    db.execute("SET LOCAL ROLE authenticated")
    assert one(db, "SELECT count(*) FROM api_keys") == 0, "no error, no rows"
    assert one(db, "SELECT count(*) FROM leads") == 0
    db.execute("RESET ROLE")
    db.execute("SET LOCAL ROLE service_role")
    assert one(db, "SELECT count(*) FROM api_keys") == total, "service_role bypasses RLS"


def test_the_tenant_policies_follow_user_roles(tistis_db: tuple[str, seed.SeedSummary],
                                               db: psycopg.Connection[Any]) -> None:
    tenant = tistis_db[1].test_tenant_id
    owner = one(db, "SELECT user_id FROM user_roles WHERE tenant_id = %s AND role = 'owner'", (tenant,))
    own_keys = one(db, "SELECT count(*) FROM api_keys WHERE tenant_id = %s", (tenant,))
    db.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (str(owner),))
    db.execute("SET LOCAL ROLE authenticated")
    assert db.execute("SELECT DISTINCT tenant_id::text FROM api_keys").fetchall() == [(tenant,)]
    assert one(db, "SELECT count(*) FROM api_keys") == own_keys
    assert one(db, "SELECT count(*) FROM tenants") == 1


def test_the_branch_trigger_raises_plain_exceptions(tistis_db: tuple[str, seed.SeedSummary],
                                                    db: psycopg.Connection[Any]) -> None:
    tenant = tistis_db[1].test_tenant_id
    key = one(db, "SELECT id FROM api_keys WHERE tenant_id = %s AND scope_type = 'tenant' LIMIT 1",
              (tenant,))
    with pytest.raises(errors.RaiseException) as missing, db.transaction():
        db.execute("UPDATE api_keys SET scope_type = 'branch', branch_id = gen_random_uuid() WHERE id = %s",
                   (key,))
    assert missing.value.sqlstate == "P0001"
    assert re.fullmatch(r"Branch [0-9a-f-]{36} does not exist", missing.value.diag.message_primary or "")
    foreign = one(db, "SELECT id FROM branches WHERE tenant_id <> %s LIMIT 1", (tenant,))
    with pytest.raises(errors.RaiseException) as other, db.transaction():
        db.execute("UPDATE api_keys SET scope_type = 'branch', branch_id = %s WHERE id = %s", (foreign, key))
    assert other.value.sqlstate == "P0001"
    assert f"does not belong to tenant {tenant}" in str(other.value)


def test_the_branch_trigger_rewrites_branch_context(tistis_db: tuple[str, seed.SeedSummary],
                                                    db: psycopg.Connection[Any]) -> None:
    branch = tistis_db[1].test_branch_id
    key, context = db.execute("SELECT id, branch_context FROM api_keys WHERE branch_id = %s LIMIT 1",
                              (branch,)).fetchone() or (None, None)
    name = one(db, "SELECT name FROM branches WHERE id = %s", (branch,))
    assert context["branch_id"] == branch and context["branch_name"] == name, "seeded through the trigger"
    db.execute("""UPDATE api_keys SET branch_context = '{"edited": true}' WHERE id = %s""", (key,))
    context = one(db, "SELECT branch_context FROM api_keys WHERE id = %s", (key,))
    assert "edited" not in context and context["branch_name"] == name
    # a rollback to tenant scope does not touch it: the trigger returns at once without a branch
    db.execute("UPDATE api_keys SET scope_type = 'tenant', branch_id = NULL WHERE id = %s", (key,))
    assert one(db, "SELECT branch_context ->> 'branch_name' FROM api_keys WHERE id = %s", (key,)) == name


def test_updated_at_and_the_daily_counter_follow_every_update(db: psycopg.Connection[Any]) -> None:
    key = one(db, "SELECT id FROM api_keys WHERE is_active LIMIT 1")
    db.execute("UPDATE api_keys SET description = 'x', updated_at = '2000-01-01', "
               "usage_reset_date = current_date - 1, usage_count_today = 50 WHERE id = %s", (key,))
    updated, today, reset = db.execute(
        "SELECT updated_at = now(), usage_count_today, usage_reset_date = current_date FROM api_keys "
        "WHERE id = %s", (key,)).fetchone() or (None, None, None)
    assert (updated, today, reset) == (True, 0, True)


def test_usage_increment_counts_one_request(db: psycopg.Connection[Any]) -> None:
    key, count = db.execute("SELECT id, usage_count FROM api_keys WHERE is_active LIMIT 1").fetchone() \
        or (None, None)
    db.execute("UPDATE api_keys SET usage_reset_date = current_date - 1 WHERE id = %s", (key,))
    db.execute("SELECT increment_api_key_usage(%s, '198.51.100.7', '/api/v1/leads')", (key,))
    db.execute("SELECT increment_api_key_usage(%s)", (key,))
    row = db.execute("SELECT usage_count, usage_count_today, host(last_used_ip), last_used_endpoint, "
                     "usage_reset_date = current_date FROM api_keys WHERE id = %s", (key,)).fetchone()
    assert row == (count + 2, 2, "198.51.100.7", "/api/v1/leads", True)
    assert one(db, "SELECT has_function_privilege('service_role', "
                   "'increment_api_key_usage(uuid, text, varchar)', 'EXECUTE')")


def test_fase3_is_applied_as_today(db: psycopg.Connection[Any]) -> None:
    wanted = [*FASE3_INDEXES, "idx_mv_branch_performance_branch_id", "idx_mv_branch_performance_tenant"]
    present = {name for (name,) in db.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND indexname = ANY(%s)", (wanted,))}
    assert present == set(wanted)
    assert one(db, "SELECT pg_get_indexdef('idx_api_keys_tenant_branch'::regclass)").endswith(
        "WHERE (branch_id IS NOT NULL)")
    assert one(db, "SELECT relkind FROM pg_class WHERE relname = 'mv_branch_performance_metrics'") == "m"
    for view in ("vw_fase3_index_usage", "vw_cache_freshness"):
        assert one(db, "SELECT relkind FROM pg_class WHERE relname = %s", (view,)) == "v"
    functions = dict(db.execute(
        "SELECT p.oid::regprocedure::text, pg_get_function_result(p.oid) FROM pg_proc p "
        "WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY(%s)",
        (["validate_fase3_indexes", "get_branch_stats_summary", "refresh_branch_performance_metrics",
          "get_low_stock_items"],)).fetchall())
    assert functions == {
        "validate_fase3_indexes()": "TABLE(check_name text, status text, details text)",
        "get_branch_stats_summary(uuid,uuid)": "jsonb",
        "refresh_branch_performance_metrics()": "void",
    }, "no get_low_stock_items today"
    assert db.execute("SELECT status FROM validate_fase3_indexes()").fetchall()[0] == ("PASS",)
    db.execute("SELECT refresh_branch_performance_metrics()")
    assert one(db, "SELECT freshness_status FROM vw_cache_freshness") == "FRESH"
    with pytest.raises(errors.DependentObjectsStillExist), db.transaction():
        db.execute("DROP MATERIALIZED VIEW mv_branch_performance_metrics")


def test_fase3_grants_reach_both_api_roles(db: psycopg.Connection[Any]) -> None:
    for role in ("authenticated", "service_role"):
        assert one(db, "SELECT has_table_privilege(%s, 'mv_branch_performance_metrics', 'SELECT')", (role,))
        assert one(db, "SELECT has_table_privilege(%s, 'vw_cache_freshness', 'SELECT')", (role,))
        assert one(db, "SELECT has_function_privilege(%s, 'get_branch_stats_summary(uuid, uuid)', "
                       "'EXECUTE')", (role,))
    assert one(db, "SELECT has_function_privilege('service_role', 'refresh_branch_performance_metrics()', "
                   "'EXECUTE')")


def test_the_parser_reads_fase3_today_and_as_first_written(head_tree: Path, phase_tree: Path) -> None:
    today = [*parse_migration_objects((head_tree / MIGRATIONS / HEAD_MIGRATIONS[5]).read_text()),
             *parse_migration_objects((head_tree / MIGRATIONS / HEAD_MIGRATIONS[6]).read_text())]
    assert today == [
        *(DbObject("index", name, "") for name in FASE3_INDEXES),
        DbObject("view", "vw_fase3_index_usage", ""),
        DbObject("function", "validate_fase3_indexes", ""),
        DbObject("function", "get_branch_stats_summary", "uuid, uuid"),
        DbObject("materialized view", "mv_branch_performance_metrics", ""),
        DbObject("index", "idx_mv_branch_performance_branch_id", ""),
        DbObject("index", "idx_mv_branch_performance_tenant", ""),
        DbObject("function", "refresh_branch_performance_metrics", ""),
        DbObject("view", "vw_cache_freshness", ""),
    ]
    first = [*parse_migration_objects((phase_tree / MIGRATIONS / "136_OPTIMIZE_BRANCH_FILTERING_INDEXES.sql")
                                      .read_text()),
             *parse_migration_objects((phase_tree / MIGRATIONS / "137_ADD_LOW_STOCK_RPC_FUNCTION.sql")
                                      .read_text())]
    assert {o.name for o in first} - {o.name for o in today} == {"get_low_stock_items"}
    assert {o.name for o in today} <= {o.name for o in first}


def test_eight_fase3_indexes_changed_definition_since_the_phase_commit(head_tree: Path,
                                                                      phase_tree: Path) -> None:
    original = (phase_tree / MIGRATIONS / "136_OPTIMIZE_BRANCH_FILTERING_INDEXES.sql").read_text()
    assert "CONCURRENTLY" in original
    current = (head_tree / MIGRATIONS / HEAD_MIGRATIONS[5]).read_text()
    changed = [name for name in FASE3_INDEXES if creates(original, name) != creates(current, name)]
    assert len(changed) == 8, changed
    assert "idx_leads_branch_search" in changed and "idx_api_keys_hash_active" in changed


def test_the_tistis_seed_fits_the_real_schema(tistis_db: tuple[str, seed.SeedSummary],
                                              db: psycopg.Connection[Any]) -> None:
    summary = tistis_db[1]
    assert one(db, "SELECT count(*) FROM tenants") == summary.tenants == 20
    assert one(db, "SELECT count(*) FROM leads") == summary.leads
    deleted = one(db, "SELECT count(*) FROM leads WHERE deleted_at IS NOT NULL")
    assert 0.02 <= deleted / summary.leads <= 0.09
    statuses = {s for (s,) in db.execute("SELECT DISTINCT status FROM leads")}
    assert {"appointment_scheduled", "converted", "inactive"} <= statuses
    assert one(db, "SELECT count(*) FROM leads WHERE source = 'api'") == 0
    assert one(db, "SELECT count(*) FROM appointments WHERE branch_id IS NULL") == 0
    assert one(db, "SELECT count(*) FROM api_keys k LEFT JOIN user_roles ur ON ur.user_id = k.created_by "
                   "AND ur.tenant_id = k.tenant_id AND ur.role = 'owner' WHERE ur.id IS NULL") == 0
    branch_keys, with_context = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE branch_context ? 'branch_name') FROM api_keys "
        "WHERE scope_type = 'branch' AND branch_id IS NOT NULL").fetchone() or (0, 0)
    assert branch_keys == with_context == summary.branch_keys > 0
    known = summary.known
    rows = dict(db.execute("SELECT key_hash, rate_limit_rpm FROM api_keys WHERE key_hash = ANY(%s)",
                           ([seed.key_hash(k) for k in known.as_dict().values()],)).fetchall())
    assert len(rows) == 5
    for raw in (known.tenant, known.branch, known.test_env):
        assert rows[seed.key_hash(raw)] == 1000
    logs = db.execute("SELECT count(*), count(DISTINCT method), count(*) FILTER (WHERE user_agent IS NULL), "
                      "count(*) FILTER (WHERE error_code = 'KEY_REVOKED') FROM api_key_usage_logs "
                      "WHERE endpoint = '/api/v1/leads'").fetchone()
    assert logs is not None and logs[0] == summary.usage_logs and logs[1] == 2 and logs[2] > 0 and logs[3] > 0


def test_grown_tistis_keys_have_an_owner_and_unique_names(db: psycopg.Connection[Any]) -> None:
    before = one(db, "SELECT count(*) FROM api_keys")
    assert seed.grow_keys(db, before + 1000, shape="tistis") == 1000
    assert seed.grow_keys(db, before + 1500, shape="tistis") == 500, "a second growth does not collide"
    bulk = db.execute("SELECT count(*), count(*) FILTER (WHERE scope_type = 'branch' "
                      "AND branch_context ? 'branch_name'), count(created_by) FROM api_keys "
                      "WHERE metadata ? 'bulk'").fetchone()
    assert bulk is not None and bulk[0] == bulk[2] == 1500 and 0.15 <= bulk[1] / bulk[0] <= 0.25


def test_the_catalog_orders_the_drop_and_names_what_outside_fase3_depends_on(
        db: psycopg.Connection[Any], head_tree: Path) -> None:
    from rollback.actions.fase3_objects import drop_plan

    objects = [*parse_migration_objects((head_tree / MIGRATIONS / HEAD_MIGRATIONS[5]).read_text()),
               *parse_migration_objects((head_tree / MIGRATIONS / HEAD_MIGRATIONS[6]).read_text())]
    db.execute("CREATE VIEW vw_outside_report AS SELECT * FROM mv_branch_performance_metrics")
    plan = drop_plan(db, objects)
    names = [o.name for o in plan.order]
    assert sorted(names) == sorted(o.name for o in objects) and len(plan.present) == len(objects)
    # pg_depend: what reads the materialized view, and its indexes, go before it
    for dependant in ("vw_cache_freshness", "idx_mv_branch_performance_branch_id",
                      "idx_mv_branch_performance_tenant"):
        assert names.index(dependant) < names.index("mv_branch_performance_metrics"), names
    assert [(o.what, o.depends_on) for o in plan.outsiders] == [
        ("view vw_outside_report", "mv_branch_performance_metrics")]
    assert "BLOCKED: view vw_outside_report depends on mv_branch_performance_metrics" in plan.lines()[-1]


def test_an_object_the_migrations_name_but_the_database_lacks_is_planned_as_absent(
        db: psycopg.Connection[Any]) -> None:
    from rollback.actions.fase3_objects import drop_plan

    ghost = DbObject("index", "idx_never_created")
    plan = drop_plan(db, [ghost, DbObject("view", "vw_cache_freshness")])
    assert ghost not in plan.present and [o.name for o in plan.order] == ["vw_cache_freshness",
                                                                          "idx_never_created"]
    assert plan.lines()[1].endswith("(not in the database: nothing to drop)")
