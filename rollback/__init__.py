"""Rollback and validation toolkit for a multi-tenant SaaS API released in phases (FASE 1-3)."""

from __future__ import annotations

import os
import sys
import types

__version__ = "0.1.0"

# The toolkit uses no pydantic plugin. Looking for them scans the metadata of every installed
# distribution on the first model built: 60-80 ms of every command and check run. A plugin
# the caller asks for by name (PYDANTIC_DISABLE_PLUGINS already set) is left to the caller.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def _httpx_without_its_command_line() -> None:
    """httpx's package imports its own command-line tool (`httpx._main`) whenever click, rich
    and pygments are installed, as they are here: rich's progress bars, tables and syntax
    highlighting and pygments' lexers, 40-90 ms of every process that imports httpx, for a tool
    the toolkit never runs. Until httpx is imported, that module is a stand-in whose `main`
    imports the real one if anyone ever calls it."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    stand_in = types.ModuleType("httpx._main", "httpx's command line, imported on first use")

    def main(*args: object, **kwargs: object) -> object:
        del sys.modules["httpx._main"]
        from httpx._main import main as real

        return real(*args, **kwargs)

    stand_in.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stand_in


_httpx_without_its_command_line()
