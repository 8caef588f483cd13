"""Rollback and validation toolkit for a multi-tenant SaaS API released in phases (FASE 1-3)."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# The toolkit uses no pydantic plugin. Looking for them scans the metadata of every installed
# distribution on the first model built: 60-80 ms of every command and check run. A plugin
# the caller asks for by name (PYDANTIC_DISABLE_PLUGINS already set) is left to the caller.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
