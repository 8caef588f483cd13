"""A short command's start-up and exit without the cyclic garbage collector's passes over it.

`rollback validate` spends a large part of its CPU importing: pydantic, pytest and its plugins,
httpx, psycopg, the checks. What it imports lives as long as the process, yet every pass of the
collector walks it again (a pass per 700 new objects, the full ones more often as the heap
grows), and the interpreter's own last pass walks all of it once more at exit. On `rollback
validate fase2` that was about 0.35 s of its 2.2 s of CPU (2026-12-01, 5 runs each way).

    own()      the process is the `rollback` command's (rollback.cli.main, first thing); in
               any other (a test run, a caller's program) the functions below do nothing
    defer()    the collector off for a command's start-up (`rollback validate`, first thing)
    settle()   the work begins (conftest.py, once the checks are collected): what is alive now
               moves to the permanent generation (gc.freeze), which no pass walks again, and
               the collector is on again for what the work allocates
    at_exit()  the command is done (rollback.cli.main, last thing): everything is frozen, so
               the interpreter's last pass walks nothing. Files are closed by then; objects in
               reference cycles are left to the end of the process as they are.
"""

from __future__ import annotations

import gc

_owned = False
_deferred = False


def own() -> None:
    global _owned
    _owned = True


def defer() -> None:
    global _deferred
    if _owned and gc.isenabled():
        gc.disable()
        _deferred = True


def settle() -> None:
    global _deferred
    if _deferred:
        _deferred = False
        gc.freeze()
        gc.enable()


def at_exit() -> None:
    settle()
    if _owned:
        gc.freeze()
