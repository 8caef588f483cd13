"""What the benchmark sections share: the error they raise, the environment they run commands in,
and how they find the `rollback` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the caller's target and notification settings never leak into a benchmark's commands
TARGET_VARIABLES = ("API_BASE_URL", "TEST_API_KEY", "TEST_BRANCH_API_KEY", "TEST_REVOKED_API_KEY",
                    "DATABASE_URL", "ROLLBACK_CONFIG", "ROLLBACK_NOTIFY_URLS", "ROLLBACK_RUN_CONTEXT")

Log = Callable[[str], None]


class BenchError(Exception):
    """A benchmark could not be measured (a sandbox did not start, a command broke). The message
    says what failed and where to look."""


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def rollback_command() -> list[str]:
    """The installed `rollback` console script next to this interpreter, else `python -m rollback`."""
    script = Path(sys.executable).parent / "rollback"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rollback"]


def tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
