"""The platform's own git repository: a baseline commit, then one commit per phase.

Convention (also what the rollback drivers search for by default): every commit that belongs
to a phase carries the trailer `Rollback-Phase: faseN` in its message. A phase may span several
commits; the sandbox has one each. Commits get fixed dates, so the same sources always produce
the same commit ids. `origin` is a bare repository next to the checkout, so that pushing works.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rollback.errors import StepFailed

LAYERS = Path(__file__).parent / "platform"
TRAILER = "Rollback-Phase"


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    body: str


BASELINE = Phase(
    "baseline",
    "Platform API v1: leads, appointments, branches",
    "Tenant-wide API keys with scopes, rate limits and usage logs.",
)
PHASES = (
    Phase(
        "fase1",
        "FASE 1: branch_id query parameter on list endpoints",
        "Filter leads, appointments and branches by ?branch_id=<uuid>; headers\n"
        "X-Filtered-Branch-ID and X-Branch-Filter-Warning; INVALID_BRANCH_ID and\n"
        "BRANCH_ACCESS_DENIED errors.",
    ),
    Phase(
        "fase2",
        "FASE 2: branch-specific API keys",
        "api_keys gains branch_id, scope_type and branch_context; a branch key sees\n"
        "only its branch.",
    ),
    Phase(
        "fase3",
        "FASE 3: response cache, indexes, RPC functions and views",
        "In-process response cache (X-Cache header) with TTLs by table, and the\n"
        "database objects of migration 030.",
    ),
)

_AUTHOR = {
    "GIT_AUTHOR_NAME": "Platform Team",
    "GIT_AUTHOR_EMAIL": "platform@example.invalid",
    "GIT_COMMITTER_NAME": "Platform Team",
    "GIT_COMMITTER_EMAIL": "platform@example.invalid",
}


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git in `repo`; a failure becomes StepFailed with git's own last line."""
    import os

    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=full_env, check=False
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise StepFailed(f"git {' '.join(args[:2])} in {repo}: {lines[-1] if lines else 'failed'}")
    return result.stdout.strip()


def _commit(repo: Path, message: str, when: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message,
        env={**_AUTHOR, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when})


def build(checkout: Path, origin: Path) -> str:
    """Create the checkout with baseline + FASE 1-3 commits and push it to a bare `origin`.

    Returns the head commit.
    """
    for path in (checkout, origin):
        if path.exists():
            shutil.rmtree(path)
    checkout.mkdir(parents=True)
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "config", "user.name", "Sandbox Operator")
    git(checkout, "config", "user.email", "operator@example.invalid")
    for day, phase in enumerate((BASELINE, *PHASES), start=1):
        shutil.copytree(LAYERS / phase.name, checkout, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        message = f"{phase.title}\n\n{phase.body}"
        if phase is not BASELINE:
            message += f"\n\n{TRAILER}: {phase.name}"
        _commit(checkout, message, f"2026-01-{day:02d}T10:00:00Z")
    origin.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    git(checkout, "remote", "add", "origin", str(origin))
    git(checkout, "push", "-q", "-u", "origin", "main")
    return head(checkout)


def head(checkout: Path) -> str:
    return git(checkout, "rev-parse", "HEAD")


def migration_files(checkout: Path) -> list[Path]:
    """Up migrations present in the checkout, in the order they apply."""
    return sorted(p for p in (checkout / "migrations").glob("*.sql") if not p.name.endswith(".down.sql"))
