"""FASE 3's objects are looked up one way, by the driver and by the checks (`inspect_object`):
a relation on the search path, never the same name in another schema; a function by its
argument types, never another overload of its name. A lookup by bare name would take both
for the migration's objects; these tests make both cases on a real catalog and show that the
driver and the check `test_database_objects_match_chosen_option` say "missing" alike."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from checks.run_context import RunContext
from rollback.actions.fase3_objects import inspect_object
from rollback.fase3 import DbObject, objects_in_repo
from rollback.validate import ValidationResult, run_validation
from tests.conftest import Sandbox
from tests.validations import failed


@contextlib.contextmanager
def _lookalikes(box: Sandbox, view: DbObject, function: DbObject) -> Iterator[None]:
    """FASE 3's `view` moved to a schema off the search path, and `function` renamed aside with
    an overload of its name (another argument list) in its place; put back afterwards."""
    kept = f"{function.name}_kept_by_test"
    change = ["CREATE SCHEMA elsewhere_by_test", f"ALTER VIEW {view.name} SET SCHEMA elsewhere_by_test",
              f"ALTER FUNCTION {function.name}({function.args}) RENAME TO {kept}",
              f"CREATE FUNCTION {function.name}(text) RETURNS integer LANGUAGE sql AS 'SELECT 1'"]
    restore = [f"DROP FUNCTION IF EXISTS {function.name}(text)",
               f"DO $$ BEGIN IF to_regprocedure('{kept}({function.args})') IS NOT NULL THEN "
               f"ALTER FUNCTION {kept}({function.args}) RENAME TO {function.name}; END IF; END $$",
               f"ALTER VIEW IF EXISTS elsewhere_by_test.{view.name} SET SCHEMA public",
               "DROP SCHEMA IF EXISTS elsewhere_by_test"]
    try:
        for statement in change:
            box.sql(statement)
        yield
    finally:
        for statement in restore:
            box.sql(statement)


@pytest.mark.timeout(300)  # two validations: a loaded machine must not fail it on time
def test_an_object_of_another_schema_or_another_overload_is_missing_for_driver_and_check(
        any_sandbox: Sandbox, tmp_path: Path) -> None:
    box = any_sandbox
    objects = objects_in_repo(box.profile, box.repo).objects
    view = next(o for o in objects if o.kind == "view" and "." not in o.name)
    function = next(o for o in objects if o.kind == "function" and o.args and "." not in o.name)
    labelled = RunContext(run_id="test-fase3", phase="fase3", fase3_db_option=1,
                          fase3_objects=tuple(o.label for o in objects)).write(tmp_path / "labels.json")
    from_repo = RunContext(run_id="test-fase3", phase="fase3", fase3_db_option=1).write(
        tmp_path / "repo.json")

    def check(context: Path) -> ValidationResult:
        return run_validation("fase3", reports_root=tmp_path, env=box.env(), run_context=context,
                              extra_args=["-k", "database_objects"])

    assert check(labelled).check("test_database_objects_match_chosen_option").verdict == "pass"
    with _lookalikes(box, view, function):
        # by bare name both would still be found: the difference is real
        by_name = box.sql("SELECT (SELECT count(*) FROM pg_class WHERE relname = %s), "
                          "(SELECT count(*) FROM pg_proc WHERE proname = %s)",
                          (view.name, function.name))
        assert by_name == [(1, 1)]
        with psycopg.connect(box.database_url) as conn:
            for obj in (view, function, DbObject.from_label(view.label),
                        DbObject.from_label(function.label)):
                assert not inspect_object(conn, obj).present, obj
        for context in (labelled, from_repo):
            failed(check(context), "test_database_objects_match_chosen_option",
                   f"option 1 (keep FASE 3's database objects): 2 of {len(objects)} missing: ",
                   function.label, view.label)
    assert check(labelled).check("test_database_objects_match_chosen_option").verdict == "pass"
