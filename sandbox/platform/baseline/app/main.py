"""The Starlette app: `uvicorn app.main:app`.

Reads PLATFORM_DATABASE_URL (required), PLATFORM_SHAPE (`contract`, the default, or `tistis`),
PLATFORM_VERSION (contract only; defaults to `git rev-parse HEAD`) and PLATFORM_CHAOS_FILE
(optional, see app/chaos.py). Each shape builds its own routes: app/contract.py, app/tistis.py.
"""

from __future__ import annotations

import logging

from app.chaos import ChaosSource
from app.db import Database
from app.settings import load_settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

settings = load_settings()
database = Database(settings.database_url)
chaos = ChaosSource(settings.chaos_file)

if settings.shape == "tistis":
    from app import tistis

    app = tistis.create_app(settings, database, chaos)
else:
    from app import contract

    app = contract.create_app(settings, database, chaos)
