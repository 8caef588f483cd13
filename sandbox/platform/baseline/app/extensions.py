"""Extension hooks: how each release phase adds behaviour without editing baseline files.

Contract shape: every module in `app/ext/` (sorted by filename; `_*.py` skipped) exposes
`extension`, an instance of a subclass of `Extension`. Removing a module removes its
behaviour, which is what reverting a phase's commit does. Hooks run in filename order;
`around_list` wraps in that order too (the first extension is the outermost).

Tistis shape: the route module (`app/api/v1/leads/route.py`) lists its extensions in a
module-level `EXTENSIONS`, in the order they run; a phase registers its own there, so
reverting a phase's hunks of that file (and its files) removes it.

    on_authenticated(ctx, conn)         after the key is known, allowed and counted
    on_list_query(ctx, query, conn)     before a list query runs: narrow it, raise ApiError,
                                        add response headers
    around_list(ctx, query, compute)    wrap the list computation (e.g. a cache)
    before_create(ctx, resource, data)  adjust a row about to be inserted
    after_write(ctx, resource)          after a successful write (e.g. invalidate a cache)
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg import Connection

from app.context import ListQuery, RequestContext

log = logging.getLogger("platform.extensions")

EXT_DIR = Path(__file__).resolve().parent / "ext"

ListBody = dict[str, Any]


class Extension:
    """Every hook does nothing; an extension overrides only the ones it needs."""

    name = "extension"

    def on_authenticated(self, ctx: RequestContext, conn: Connection) -> None:
        return None

    def on_list_query(self, ctx: RequestContext, query: ListQuery, conn: Connection) -> None:
        return None

    def around_list(self, ctx: RequestContext, query: ListQuery, compute: Callable[[], ListBody]) -> ListBody:
        return compute()

    def before_create(self, ctx: RequestContext, resource: str, data: dict[str, Any]) -> None:
        return None

    def after_write(self, ctx: RequestContext, resource: str) -> None:
        return None


def load_extensions() -> list[Extension]:
    """Import every module in app/ext/. A broken module fails startup loudly, not silently."""
    found: list[Extension] = []
    for path in sorted(EXT_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = importlib.import_module(f"app.ext.{path.stem}")
        ext = getattr(module, "extension", None)
        if not isinstance(ext, Extension):
            raise RuntimeError(f"{path}: expected a module-level `extension` (an Extension)")
        found.append(ext)
    log.info("extensions loaded: %s", ", ".join(e.name for e in found) or "none")
    return found


ROUTE_MODULE = "app.api.v1.leads.route"


def load_route_extensions(module_name: str = ROUTE_MODULE) -> list[Extension]:
    """The route module's `EXTENSIONS`, checked like app/ext/'s modules."""
    module = importlib.import_module(module_name)
    found = getattr(module, "EXTENSIONS", None)
    if not isinstance(found, list) or not all(isinstance(e, Extension) for e in found):
        raise RuntimeError(f"{module.__file__}: expected a module-level `EXTENSIONS`, a list of Extension")
    log.info("extensions registered by %s: %s", module_name, ", ".join(e.name for e in found) or "none")
    return list(found)
