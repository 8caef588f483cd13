"""FASE 3's database action: option 2 drops the objects its migrations leave (indexes, views, a
materialized view, functions), verifies each is gone, and `rollback restore fase3` recreates them.

What to drop comes from the migrations (`rollback.fase3`, PostgreSQL's own parser); the catalog
then says the rest:

- which of them exist, with their exact definitions, owners, grants and comments (saved first);
- the order to drop them in: from `pg_depend`, what depends on an object goes before it (a view
  reading the materialized view, an index on it), ties by kind and the reverse of creation;
- what outside FASE 3 depends on them (a view someone built on the materialized view): the step
  refuses before dropping anything, naming it, instead of failing half-way.

The step runs after the deploy: the live code no longer uses the objects once it is the reverted code.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from rollback.actions import DatabaseAction, DatabaseStep
from rollback.errors import StepFailed
from rollback.fase3 import KIND_ORDER, RELATION, DbObject, objects_in_repo
from rollback.runs.core import Done, Options, Run, Step, StepPlan, still_locked, write_private
from rollback.runs.dbops import backoff, connect, file_sha256, read_only
from rollback.runs.locks import first_line


@dataclass
class ObjectState:
    obj: DbObject
    present: bool
    identity: str | None = None   # schema-qualified name, or regprocedure for a function
    definition: str | None = None
    valid: bool = True
    #: what a definition does not carry, saved with it and put back on restore
    owner: str | None = None
    acl: str | None = None        # the aclitem[] as text (NULL: the owner's defaults)
    comment: str | None = None
    #: the catalog's oid (pg_class or pg_proc): what pg_depend knows it by; not saved
    oid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**self.obj.as_dict(), "present": self.present, "identity": self.identity,
                "definition": self.definition, "owner": self.owner, "acl": self.acl,
                "comment": self.comment}


_REL_EXTRAS = ("SELECT pg_get_userbyid(c.relowner), c.relacl::text, obj_description(c.oid, 'pg_class') "
               "FROM pg_class c WHERE c.oid = %s")
_FUNC_EXTRAS = ("SELECT pg_get_userbyid(p.proowner), p.proacl::text, obj_description(p.oid, 'pg_proc') "
                "FROM pg_proc p WHERE p.oid = %s::regprocedure")


def _extras(conn: psycopg.Connection[Any], query: str, oid: Any) -> tuple[str | None, ...]:
    row = conn.execute(query, (oid,)).fetchone()  # type: ignore[call-overload]
    return (None, None, None) if row is None else (row[0], row[1], row[2])


def _function_identity(conn: psycopg.Connection[Any], obj: DbObject) -> str | None:
    """The regprocedure of a function of the migration: by its argument types, or, if the
    catalog spells those differently, the one function of that name."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT to_regprocedure(%s)::text",
                               (f"{_quoted(obj.name)}({obj.args})",)).fetchone()
        if row and row[0]:
            return str(row[0])
    except psycopg.Error:
        pass
    schema, _, name = obj.name.rpartition(".")
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proname = %s AND (n.nspname = %s "
        "OR (%s = '' AND n.nspname = ANY(current_schemas(false)))) AND p.pronargs = %s",
        (name, schema, schema, argument_count(obj.args))).fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None


def argument_count(args: str) -> int:
    """How many input arguments `args` lists ("uuid, numeric(10, 2)" lists two): an overload
    with another count is another function, never the migration's."""
    depth, count = 0, 0
    for char in args:
        depth += {"(": 1, ")": -1}.get(char, 0)
        count += char == "," and depth == 0
    return count + 1 if args.strip() else 0


def _quoted(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


_RELKINDS = {"i": "index", "v": "view", "m": "materialized view"}


def inspect_object(conn: psycopg.Connection[Any], obj: DbObject) -> ObjectState:
    """Is the object there, and what is its definition (to recreate it exactly)?

    The one lookup of FASE 3's objects, for the driver and the checks (`checks/test_fase3.py`):
    a relation by `to_regclass` of its (quoted) name, so on the search path unless the name
    has a schema, never the same name in another schema; a function by its argument types
    (`to_regprocedure`), so never another overload. An index is valid when PostgreSQL may use
    it (`indisvalid` and `indisready`: not left by a failed CREATE INDEX CONCURRENTLY)."""
    if obj.kind == "function":
        identity = _function_identity(conn, obj)
        if identity is None:
            return ObjectState(obj, False)
        row = conn.execute("SELECT pg_get_functiondef(%s::regprocedure)", (identity,)).fetchone()
        owner, acl, comment = _extras(conn, _FUNC_EXTRAS, identity)
        oid_row = conn.execute("SELECT %s::regprocedure::oid", (identity,)).fetchone()
        return ObjectState(obj, True, identity, row[0] if row else None,
                           owner=owner, acl=acl, comment=comment,
                           oid=int(oid_row[0]) if oid_row else None)
    row = conn.execute(
        "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)", (_quoted(obj.name),)).fetchone()
    kind = _RELKINDS.get(row[2]) if row else None
    if row is None or kind is None or obj.kind not in (kind, RELATION):
        return ObjectState(obj, False)
    oid, identity = row[0], row[1]
    owner, acl, comment = _extras(conn, _REL_EXTRAS, oid)
    if kind == "index":
        d = conn.execute("SELECT pg_get_indexdef(%s), i.indisvalid AND i.indisready FROM pg_index i "
                         "WHERE i.indexrelid = %s", (oid, oid)).fetchone()
        assert d is not None
        return ObjectState(obj, True, identity, d[0], bool(d[1]), comment=comment, oid=int(oid))
    d = conn.execute("SELECT pg_get_viewdef(%s, true)", (oid,)).fetchone()
    assert d is not None
    body = str(d[0]).rstrip().rstrip(";")
    if kind == "view":
        definition = f"CREATE OR REPLACE VIEW {identity} AS\n{body}"
    else:
        definition = f"CREATE MATERIALIZED VIEW {identity} AS\n{body}\nWITH DATA"
    return ObjectState(obj, True, identity, definition, owner=owner, acl=acl, comment=comment,
                       oid=int(oid))


def drop_object(conn: psycopg.Connection[Any], state: ObjectState, lock_timeout_ms: int) -> None:
    """Drop one object (an index CONCURRENTLY, so tables stay writable). `conn` is autocommit."""
    assert state.identity is not None
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")))
    statement = {
        "index": "DROP INDEX CONCURRENTLY IF EXISTS {}",
        "view": "DROP VIEW IF EXISTS {}",
        "materialized view": "DROP MATERIALIZED VIEW IF EXISTS {}",
        "function": "DROP FUNCTION IF EXISTS {}",
    }[state.obj.kind]
    conn.execute(sql.SQL(statement).format(sql.SQL(state.identity)))


def recreate_object(conn: psycopg.Connection[Any], definition: dict[str, Any], lock_timeout_ms: int) -> None:
    """Recreate one object from its saved definition (indexes CONCURRENTLY). `conn` is autocommit."""
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")))
    text = str(definition["definition"])
    if definition["kind"] == "index":
        text = re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY IF NOT EXISTS ", text)
    conn.execute(text.encode("utf-8"))
    restore_extras(conn, definition)


_KEYWORD = {"index": "INDEX", "view": "VIEW", "materialized view": "MATERIALIZED VIEW",
            "function": "FUNCTION"}


def restore_extras(conn: psycopg.Connection[Any], definition: Mapping[str, Any]) -> None:
    """Owner, grants and comment as they were saved: a definition alone carries none of them,
    and a recreated object would otherwise get whatever the default privileges give."""
    identity, kind = definition.get("identity"), str(definition["kind"])
    if not identity:
        return
    target = sql.SQL(identity)
    keyword = sql.SQL(_KEYWORD[kind])
    if kind != "index" and definition.get("owner"):
        conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(
            keyword, target, sql.Identifier(definition["owner"])))
    if kind != "index" and "acl" in definition:
        on = sql.SQL("FUNCTION" if kind == "function" else "TABLE")
        now = conn.execute(sql.SQL(
            "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END "
            "FROM aclexplode(({})) a").format(_acl_of(kind, identity))).fetchall()
        for (grantee,) in now:
            conn.execute(sql.SQL("REVOKE ALL ON {} {} FROM {}").format(
                on, target, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC")))
        saved = definition.get("acl")
        if saved is None and definition.get("owner"):  # it had the owner's default privileges
            row = conn.execute("SELECT acldefault(%s, (SELECT oid FROM pg_roles WHERE rolname = %s))"
                               "::text", ("f" if kind == "function" else "r",
                                          definition["owner"])).fetchone()
            saved = row[0] if row else None
        if saved:
            grants = conn.execute(
                "SELECT CASE WHEN grantee = 0 THEN NULL ELSE pg_get_userbyid(grantee) END, "
                "privilege_type, is_grantable FROM aclexplode(%s::aclitem[])", (saved,)).fetchall()
            for grantee, privilege, grantable in grants:
                conn.execute(sql.SQL("GRANT {} ON {} {} TO {}{}").format(
                    sql.SQL(privilege), on, target,
                    sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                    sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    if definition.get("comment") is not None:
        conn.execute(sql.SQL("COMMENT ON {} {} IS {}").format(
            keyword, target, sql.Literal(definition["comment"])))


def _acl_of(kind: str, identity: str) -> sql.Composable:
    if kind == "function":
        return sql.SQL("SELECT proacl FROM pg_proc WHERE oid = {}::regprocedure").format(
            sql.Literal(identity))
    return sql.SQL("SELECT relacl FROM pg_class WHERE oid = {}::regclass").format(sql.Literal(identity))

# --- the catalog's dependencies --------------------------------------------------------------------

#: (dependant's catalog, dependant's oid, the oid it depends on), views through their rewrite rule
_DEPENDANTS = """
SELECT DISTINCT
       CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 'pg_class' ELSE d.classid::regclass::text END,
       CASE WHEN d.classid = 'pg_rewrite'::regclass THEN r.ev_class ELSE d.objid END,
       d.refobjid
FROM pg_depend d
LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
WHERE d.refclassid IN ('pg_class'::regclass, 'pg_proc'::regclass) AND d.refobjid = ANY(%s)
  AND d.deptype IN ('n', 'a')
"""


@dataclass(frozen=True)
class Outsider:
    """Something not of FASE 3 that depends on one of its objects."""

    what: str        # "view public.vw_report"
    depends_on: str  # the FASE 3 object's label


@dataclass
class DropPlan:
    order: list[DbObject]              # every object of the migrations, dependants first
    present: dict[DbObject, ObjectState]
    outsiders: list[Outsider]

    def lines(self) -> list[str]:
        out = []
        for obj in self.order:
            how = "DROP INDEX CONCURRENTLY" if obj.kind == "index" else f"DROP {obj.kind.upper()}"
            out.append(f"  {how} {obj.label}" + ("" if obj in self.present
                                                 else "   (not in the database: nothing to drop)"))
        for o in self.outsiders:
            out.append(f"  BLOCKED: {o.what} depends on {o.depends_on} and is not FASE 3's")
        return out


def _describe_oid(conn: psycopg.Connection[Any], catalog: str, oid: int) -> str:
    if catalog == "pg_proc":
        row = conn.execute("SELECT %s::oid::regprocedure::text", (oid,)).fetchone()
        return f"function {row[0] if row else oid}"
    row = conn.execute("SELECT c.oid::regclass::text, c.relkind FROM pg_class c WHERE c.oid = %s",
                       (oid,)).fetchone()
    if row is None:
        return f"{catalog} object {oid}"
    kinds = {"v": "view", "m": "materialized view", "i": "index", "r": "table", "p": "table"}
    return f"{kinds.get(row[1], 'relation')} {row[0]}"


def order_for_drop(objects: list[DbObject], edges: set[tuple[DbObject, DbObject]]) -> list[DbObject]:
    """Dependants first: (a, b) in `edges` means a depends on b, so a is dropped before b. Among
    objects free to go, by kind (views, functions, materialized views, indexes), then the reverse
    of their creation order."""
    rank = {obj: (KIND_ORDER[obj.kind], -i) for i, obj in enumerate(objects)}
    waiting = {obj: {a for a, b in edges if b == obj and a != obj} for obj in objects}
    order: list[DbObject] = []
    while waiting:
        free = [o for o, deps in waiting.items() if not deps] or list(waiting)  # a cycle: by rank
        chosen = min(free, key=rank.__getitem__)
        order.append(chosen)
        del waiting[chosen]
        for deps in waiting.values():
            deps.discard(chosen)
    return order


def drop_plan(conn: psycopg.Connection[Any], objects: list[DbObject]) -> DropPlan:
    """The objects as the catalog has them, their drop order from pg_depend, and the objects
    outside the list that depend on them."""
    states = {o: inspect_object(conn, o) for o in objects}
    present = {o: s for o, s in states.items() if s.present}
    by_oid = {s.oid: o for o, s in present.items() if s.oid is not None}
    edges: set[tuple[DbObject, DbObject]] = set()
    outsiders: list[Outsider] = []
    if by_oid:
        rows = conn.execute(_DEPENDANTS, (list(by_oid),)).fetchall()
        for catalog, dependant, ref in rows:
            if catalog not in ("pg_class", "pg_proc") or dependant == ref:
                continue
            if dependant in by_oid:
                edges.add((by_oid[dependant], by_oid[ref]))
            else:
                outsiders.append(Outsider(_describe_oid(conn, catalog, int(dependant)),
                                          by_oid[ref].label))
    return DropPlan(order_for_drop(objects, edges), present, outsiders)


# --- the action ----------------------------------------------------------------------------------


def fase3_objects(run: Run) -> list[DbObject]:
    """The objects FASE 3's migrations leave, as they stand in the repository: a migration renamed
    and rewritten after the phase commit gives today's names, not the phase commit's. Once the
    backup has read them, the run keeps that list (the revert may remove the files)."""
    cached = run.facts.get("fase3_objects_parsed")
    if isinstance(cached, list):
        return [DbObject(**o) for o in cached]
    return list(objects_in_repo(run.settings.platform, run.repo).objects)


class DropObjects(DatabaseAction):
    kind: ClassVar[str] = "drop_objects"
    before_deploy: ClassVar[bool] = False

    def active(self, options: Options) -> bool:
        return options.db_option == 2

    def pending(self, run: Run, conn: psycopg.Connection[Any]) -> tuple[str, int]:
        return "objects_present", sum(1 for o in fase3_objects(run) if inspect_object(conn, o).present)

    def describe_backup(self, run: Run) -> tuple[list[str], dict[str, Any]]:
        objects = fase3_objects(run)
        return ([f"save the definitions, owners, grants and comments of the {len(objects)} FASE 3 "
                 f"objects to {run.dir / 'fase3_objects.json'}"], {"objects": [o.label for o in objects]})

    def backup(self, run: Run) -> tuple[list[str], dict[str, Any]]:
        objects = fase3_objects(run)
        path = run.dir / "fase3_objects.json"
        with read_only(run.database_url) as conn:
            states = [inspect_object(conn, o) for o in objects]
        missing = [s.obj.label for s in states if not s.present]
        write_private(path, json.dumps({"run_id": run.run_id, "objects": [s.as_dict() for s in states]},
                                       indent=2) + "\n")
        if missing:
            run.say(f"not in the database (nothing to drop): {', '.join(missing)}", "yellow")
        facts = {"fase3_objects_parsed": [o.as_dict() for o in objects],
                 "fase3_backup": {"file": str(path), "sha256": file_sha256(path),
                                  "objects": [o.label for o in objects],
                                  "present": len(states) - len(missing), "missing": missing}}
        return [f"{len(states) - len(missing)} of {len(states)} object definitions in {path.name}"], facts

    def step(self, run_phase: str) -> Step:
        return DropStep(self.step_name(run_phase))

    def restore(self, run: Run) -> str:
        return restore_run(run)

    def undo_hint(self, run: Run) -> str | None:
        if run.options.db_option != 2:
            return None
        return f"recreate the objects with `rollback restore fase3 --run {run.run_id}`"


class DropStep(DatabaseStep):
    title = "FASE 3 database objects"

    def describe(self, run: Run) -> StepPlan:
        objects = fase3_objects(run)
        if run.options.db_option != 2:
            return StepPlan(self.name, self.title,
                            [f"option 1: keep FASE 3's {len(objects)} database objects (indexes, "
                             "functions, views, materialized view); only the code is reverted"],
                            {"option": 1, "objects": []}, changes=False)
        with read_only(run.database_url) as conn:
            plan = drop_plan(conn, objects)
        lines = ["option 2: drop FASE 3's objects, named by its migrations, in pg_depend's order "
                 "(dependants first), after the deploy, and verify each is gone:", *plan.lines()]
        return StepPlan(self.name, self.title, lines,
                        {"option": 2, "objects": [o.label for o in plan.order],
                         "present": [o.label for o in objects if o in plan.present],
                         "blocked_by": [f"{o.what} -> {o.depends_on}" for o in plan.outsiders]},
                        changes=True)

    def run(self, run: Run) -> Done:
        if run.options.db_option != 2:
            return Done("option 1: FASE 3's database objects kept", {"fase3_dropped": []},
                        skipped=True)
        objects = fase3_objects(run)
        lock_ms = run.settings.run.lock_timeout_ms
        # journaled as it goes; a resumed run continues the list its earlier attempts left
        so_far: list[str] = list(run.facts.get("fase3_dropped") or [])
        retries = 0
        try:
            with connect(run.database_url, autocommit=True,
                         application_name=f"rollback {run.run_id}") as conn:
                plan = drop_plan(conn, objects)
                if plan.outsiders:
                    raise StepFailed(
                        "nothing dropped: outside FASE 3, " + "; ".join(
                            f"{o.what} depends on {o.depends_on}" for o in plan.outsiders[:5])
                        + "; drop or change those first (they are not FASE 3's to drop), or keep "
                        "the objects (option 1)")
                for obj in plan.order:
                    state = plan.present.get(obj)
                    if state is None or not inspect_object(conn, obj).present:
                        continue
                    for attempt in range(run.settings.run.batch_retries + 1):
                        still_locked(run)
                        try:
                            drop_object(conn, state, lock_ms)
                            break
                        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                            if attempt == run.settings.run.batch_retries:
                                raise StepFailed(f"cannot drop {obj.label}: {first_line(exc)} "
                                                 f"after {attempt} retries; rerun to continue") from None
                            retries += 1
                            time.sleep(backoff(run.settings.run.retry_backoff_s, attempt))
                        except psycopg.errors.DependentObjectsStillExist as exc:
                            raise StepFailed(f"cannot drop {obj.label}: {first_line(exc)}; "
                                             "something outside FASE 3 depends on it") from None
                    if obj.label not in so_far:
                        so_far.append(obj.label)
                    run.remember(fase3_dropped=so_far)
                    run.say(f"dropped {obj.kind} {obj.label}")
                left = [o.label for o in objects if inspect_object(conn, o).present]
        except psycopg.OperationalError as exc:  # the server went away, or ended our session
            raise StepFailed(f"lost the database connection while dropping FASE 3's objects "
                             f"({first_line(exc)}): what was dropped stays dropped; run "
                             f"`rollback run {run.options.phase}` again to continue from there") from None
        if left:
            raise StepFailed(f"still present after dropping: {', '.join(left)}")
        # What the run dropped, over all its attempts: every object there when it backed them up
        # (all gone now, verified), also one dropped by an attempt killed before journaling it.
        absent = set((run.facts.get("fase3_backup") or {}).get("missing") or [])
        dropped = [o.label for o in plan.order if o.label not in absent]
        return Done(f"{len(dropped)} objects dropped; verified none of the {len(objects)} remains",
                    {"fase3_dropped": dropped, "fase3_drop_retries": retries})


def restore_run(run: Run) -> str:
    """`rollback restore fase3`: the dropped objects recreated from the saved definitions, in
    creation order, with their owners, grants and comments; each verified present and valid."""
    saved = run.facts.get("fase3_backup")
    if not isinstance(saved, dict):
        raise StepFailed(f"run {run.run_id} saved no FASE 3 object definitions (was it option 1?): "
                         "nothing to restore")
    path = Path(saved["file"])
    if not path.is_file():
        raise StepFailed(f"{path} is missing: the definitions of run {run.run_id} are gone")
    if file_sha256(path) != saved["sha256"]:
        raise StepFailed(f"{path} does not match the checksum recorded by the run: refusing to "
                         "execute SQL from a file changed since")
    definitions = [d for d in json.loads(path.read_text(encoding="utf-8"))["objects"] if d["present"]]
    created, kept = [], []
    lock_ms = run.settings.run.lock_timeout_ms
    with connect(run.database_url, autocommit=True,
                 application_name=f"rollback restore {run.run_id}") as conn:
        for item in definitions:  # creation order of the migration
            obj = DbObject(item["kind"], item["name"], item["args"])
            state = inspect_object(conn, obj)
            if state.present and state.valid:
                kept.append(obj.label)
                continue
            if state.present:  # an invalid index left by an interrupted CREATE ... CONCURRENTLY
                drop_object(conn, state, lock_ms)
            recreate_object(conn, item, lock_ms)
            created.append(obj.label)
            run.say(f"recreated {obj.kind} {obj.label}")
        states = [inspect_object(conn, DbObject(d["kind"], d["name"], d["args"])) for d in definitions]
        missing = [s.obj.label for s in states if not s.present or not s.valid]
    if missing:
        raise StepFailed(f"still missing or invalid after the restore: {', '.join(missing)}")
    return (f"{len(created)} objects recreated, {len(kept)} were there already; all "
            f"{len(definitions)} verified present")
