"""Settings read once from the environment at startup."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parent.parent

# contract: the platform as its API reference describes it (routes under /v1, app/ext/);
# tistis: as its repository has it (routes under /api/v1, the route module's EXTENSIONS).
SHAPES = ("contract", "tistis")


@dataclass(frozen=True)
class Settings:
    database_url: str
    version: str
    chaos_file: Path | None
    shape: str = "contract"

    def __repr__(self) -> str:
        # The database URL may carry a password: never show it.
        return f"Settings(shape={self.shape!r}, version={self.version!r}, chaos_file={self.chaos_file!r})"


def _git_head() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def load_settings() -> Settings:
    database_url = os.environ.get("PLATFORM_DATABASE_URL", "").strip()
    if not database_url:
        raise RuntimeError(
            "PLATFORM_DATABASE_URL is not set: export a postgresql:// URL before starting the server"
        )
    shape = os.environ.get("PLATFORM_SHAPE", "").strip() or "contract"
    if shape not in SHAPES:
        raise RuntimeError(f"PLATFORM_SHAPE must be one of {', '.join(SHAPES)}, got {shape!r}")
    chaos = os.environ.get("PLATFORM_CHAOS_FILE", "").strip()
    return Settings(
        database_url=database_url,
        # tistis reports the version hard-coded in app/api/health/route.py instead (and a
        # deployment snapshot has no .git of its own: git would answer for a folder above it)
        version=os.environ.get("PLATFORM_VERSION", "").strip()
        or (_git_head() if shape == "contract" else "unknown"),
        chaos_file=Path(chaos) if chaos else None,
        shape=shape,
    )
