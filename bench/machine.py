"""The machine a benchmark ran on, for the report's header: figures mean little without it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def postgres_version() -> str:
    """The version of the embedded PostgreSQL the sandboxes run (from its own binary)."""
    try:
        from sandbox.postgres import bin_dir

        result = subprocess.run([str(bin_dir() / "postgres"), "--version"], capture_output=True,
                                text=True, timeout=10, check=True)
        return result.stdout.strip().removeprefix("postgres (PostgreSQL) ")
    except Exception as exc:  # a header field: say why it is missing, never fail the run
        return f"unknown ({type(exc).__name__})"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "cpu_model": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gib": round(memory.total / 2**30, 1),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "postgresql": postgres_version(),
        "toolkit_commit": git_commit(),
        "load_average_at_start": load_average(),
    }
