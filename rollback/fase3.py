"""FASE 3's database objects, read from its migrations as they stand in the repository.

The profile names the migration files by glob (`[platform.phases.fase3] migrations`). They are read at
the branch's head, so a migration renamed and rewritten after the phase commit (the real
platform's 136/137 became 174/175 with other definitions) gives today's names. A file that a
rollback has since removed is read at its last version before the removal.

The files are parsed by PostgreSQL's own parser (`pglast`, libpg_query), statement by statement, in
the order they apply: a `CREATE` adds an index, view, materialized view, function or procedure; a
later `DROP` of it, or an `ALTER ... RENAME`, is followed, so the list is what the files leave in
the database. Names in comments, strings and function bodies are never mistaken for objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import FunctionParameterMode, ObjectType
from pglast.parser import ParseError
from pglast.stream import RawStream

from rollback.errors import StepFailed
from rollback.profile import Profile
from rollback.runs import gitops

#: drop order by kind when the catalog says nothing more: what reads an object goes first
KIND_ORDER = {"view": 0, "function": 1, "materialized view": 2, "index": 3}


#: the kind of an object known by its label alone (a run context's list): an index, a view or a
#: materialized view, whichever the catalog has under that name
RELATION = "relation"


@dataclass(frozen=True)
class DbObject:
    kind: str          # index | view | materialized view | function (| relation: see from_label)
    name: str          # as the parser resolves it: unquoted, case-folded unless quoted, schema.name if given
    args: str = ""     # a function's input argument types, as PostgreSQL identifies it: "uuid, integer"

    @property
    def label(self) -> str:
        return f"{self.name}({self.args})" if self.kind == "function" else self.name

    @classmethod
    def from_label(cls, label: str) -> DbObject:
        """The object a `label` names: `name(args)` a function, anything else a relation of
        any of the three kinds (a run context keeps labels, not kinds)."""
        name, paren, args = label.partition("(")
        if paren and args.endswith(")"):
            return cls("function", name, args[:-1])
        return cls(RELATION, label)

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "args": self.args}


@dataclass(frozen=True)
class Fase3Objects:
    objects: tuple[DbObject, ...]
    #: `<commit>:<path>` of every file read
    files: tuple[str, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(o.label for o in self.objects)


class MigrationUnreadable(ValueError):
    """PostgreSQL's parser refuses the text."""


def _name(parts: Iterable[Any] | None) -> str:
    return ".".join(p.sval for p in parts or ())


def _relation(rv: Any) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else str(rv.relname)


def _arg_types(parameters: Iterable[Any] | None) -> str:
    """The input argument types (what identifies a function): OUT and TABLE columns left out."""
    kept = [p for p in parameters or () if p.mode not in (FunctionParameterMode.FUNC_PARAM_OUT,
                                                          FunctionParameterMode.FUNC_PARAM_TABLE)]
    return ", ".join(RawStream()(p.argType) for p in kept)


_RELATION_KINDS = {ObjectType.OBJECT_INDEX: "index", ObjectType.OBJECT_VIEW: "view",
                   ObjectType.OBJECT_MATVIEW: "materialized view"}
_FUNCTION_KINDS = (ObjectType.OBJECT_FUNCTION, ObjectType.OBJECT_PROCEDURE, ObjectType.OBJECT_ROUTINE)


def _created(stmt: Any) -> DbObject | None:
    if isinstance(stmt, ast.IndexStmt) and stmt.idxname and stmt.relation is not None:
        schema = stmt.relation.schemaname  # an index lives in its table's schema
        return DbObject("index", f"{schema}.{stmt.idxname}" if schema else str(stmt.idxname))
    if isinstance(stmt, ast.ViewStmt) and stmt.view is not None:
        return DbObject("view", _relation(stmt.view))
    if (isinstance(stmt, ast.CreateTableAsStmt) and stmt.objtype == ObjectType.OBJECT_MATVIEW
            and stmt.into is not None):
        return DbObject("materialized view", _relation(stmt.into.rel))
    if isinstance(stmt, ast.CreateFunctionStmt):
        return DbObject("function", _name(stmt.funcname), _arg_types(stmt.parameters))
    return None


def _dropped(stmt: ast.DropStmt) -> list[DbObject]:
    if stmt.removeType in _RELATION_KINDS:
        return [DbObject(_RELATION_KINDS[stmt.removeType], _name(o)) for o in stmt.objects or ()]
    if stmt.removeType in _FUNCTION_KINDS:
        return [DbObject("function", _name(o.objname),
                         ", ".join(RawStream()(t) for t in o.objargs or ()))
                for o in stmt.objects or ()]
    return []


def _renamed(stmt: ast.RenameStmt, objects: list[DbObject]) -> None:
    if stmt.renameType in _RELATION_KINDS and stmt.relation is not None:
        old = DbObject(_RELATION_KINDS[stmt.renameType], _relation(stmt.relation))
        schema = stmt.relation.schemaname
        new = DbObject(old.kind, f"{schema}.{stmt.newname}" if schema else str(stmt.newname))
    elif stmt.renameType in _FUNCTION_KINDS and isinstance(stmt.object, ast.ObjectWithArgs):
        args = ", ".join(RawStream()(t) for t in stmt.object.objargs or ())
        old = DbObject("function", _name(stmt.object.objname), args)
        schema = old.name.rpartition(".")[0]
        new = DbObject("function", f"{schema}.{stmt.newname}" if schema else str(stmt.newname), args)
    else:
        return
    for i, obj in enumerate(objects):
        if _same(obj, old):
            objects[i] = new


def _same(a: DbObject, b: DbObject) -> bool:
    """One object: same kind and name; for a function also its arguments, unless one side names
    none (`DROP FUNCTION f;` drops the only `f`)."""
    return a.kind == b.kind and a.name == b.name and (
        a.kind != "function" or not a.args or not b.args or a.args == b.args)


def apply_migration(text: str, objects: list[DbObject] | None = None) -> list[DbObject]:
    """The objects after applying `text` to `objects` (in creation order): CREATEs add, DROPs and
    RENAMEs are followed. Raises MigrationUnreadable if PostgreSQL's parser refuses the text."""
    found = list(objects or [])
    try:
        statements = parse_sql(text)
    except ParseError as exc:
        raise MigrationUnreadable(str(exc)) from None
    for raw in statements:
        stmt = raw.stmt
        if isinstance(stmt, ast.DropStmt):
            gone = _dropped(stmt)
            found = [o for o in found if not any(_same(o, g) for g in gone)]
        elif isinstance(stmt, ast.RenameStmt):
            _renamed(stmt, found)
        elif (obj := _created(stmt)) is not None:
            found = [o for o in found if not _same(o, obj)] + [obj]  # CREATE OR REPLACE: once
    return found


def parse_migration_objects(text: str) -> list[DbObject]:
    """The indexes, views, materialized views and functions a migration leaves, in its order."""
    return apply_migration(text)


def _matching(paths: list[str], globs: tuple[str, ...]) -> list[str]:
    return sorted(p for p in paths if any(fnmatch(p, g) for g in globs))


def _last_versions(repo: Path, ref: str, globs: tuple[str, ...]) -> list[tuple[str, str]]:
    """(commit, path) of the newest version of each matching file deleted before `ref`."""
    log = gitops.out(repo, "log", "--format=%x00%H", "--diff-filter=D", "--name-only", ref,
                     "--", *globs)
    found: dict[str, str] = {}
    for entry in log.split("\x00"):
        lines = [line for line in entry.splitlines() if line.strip()]
        if not lines:
            continue
        sha, paths = lines[0], lines[1:]
        for path in _matching(paths, globs):
            found.setdefault(path, f"{sha}^")
    return [(sha, path) for path, sha in sorted(found.items())]


def objects_in_repo(profile: Profile, repo: Path, ref: str = "HEAD") -> Fase3Objects:
    """The objects FASE 3's migrations leave at `ref`, applied in file-name order (the order a
    migration runner applies them). Raises StepFailed when no migration file matches the
    profile's globs, at `ref` or in its history, or one cannot be parsed."""
    globs = profile.phase("fase3").migrations
    present = _matching(gitops.out(repo, "ls-tree", "-r", "--name-only", ref).splitlines(), globs)
    sources = [(ref, path) for path in present] or _last_versions(repo, ref, globs)
    if not sources:
        raise StepFailed(f"no file in {repo} matches [platform.phases.fase3] migrations "
                         f"({', '.join(globs)}), at {ref} or in its history: check the profile")
    objects: list[DbObject] = []
    files = []
    for sha, path in sorted(sources, key=lambda s: Path(s[1]).name):
        files.append(f"{sha}:{path}")
        try:
            objects = apply_migration(gitops.show(repo, sha, path), objects)
        except MigrationUnreadable as exc:
            raise StepFailed(f"PostgreSQL's parser cannot read {path} at {sha[:12]}: {exc}; "
                             "fix the migration or [platform.phases.fase3] migrations") from None
    if not objects:
        raise StepFailed(f"no CREATE INDEX/VIEW/FUNCTION in FASE 3's migrations "
                         f"({', '.join(files)}): check [platform.phases.fase3] migrations")
    return Fase3Objects(tuple(objects), tuple(files))
