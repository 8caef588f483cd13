"""The platform's own git repository, in one of two shapes.

contract (`build`): a baseline commit, then one commit per phase. Convention (also what the
rollback drivers search for by default): every commit that belongs to a phase carries the
trailer `Rollback-Phase: faseN` in its message.

tistis (`build_tistis`): the history as the real repository has it, replayed from
`platform/tistis/history/`: the three phases in ONE commit ("feat: FASE 1, 2 & 3 Complete
..."), no trailers, later commits changing the same files. Each folder there is one commit,
replayed in sorted order:

    renames.txt   `old -> new` per line, applied with `git mv`
    deletes.txt   a path per line, removed with `git rm`
    files/        copied over the checkout
    message.txt   the commit message (first line the subject)
    date.txt      optional: the commit's date (ISO 8601); else 9 hours after the previous one

The first folder also gets the engine (`platform/baseline/app/` without `ext/`, and
`build.py`), which is shared with the contract shape rather than copied on disk.

Commits get fixed dates and one author, so the same sources always produce the same commit
ids. `origin` is a bare repository next to the checkout, so that pushing works.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    git(repo, "commit", "-q", "--allow-empty", "-m", message,
        env={**_AUTHOR, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when})


def _init(checkout: Path, origin: Path) -> None:
    for path in (checkout, origin):
        if path.exists():
            shutil.rmtree(path)
    checkout.mkdir(parents=True)
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "config", "user.name", "Sandbox Operator")
    git(checkout, "config", "user.email", "operator@example.invalid")


def _publish(checkout: Path, origin: Path) -> str:
    origin.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    git(checkout, "remote", "add", "origin", str(origin))
    git(checkout, "push", "-q", "-u", "origin", "main")
    return head(checkout)


_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def build(checkout: Path, origin: Path) -> str:
    """Create the checkout with baseline + FASE 1-3 commits and push it to a bare `origin`.

    Returns the head commit.
    """
    _init(checkout, origin)
    for day, phase in enumerate((BASELINE, *PHASES), start=1):
        shutil.copytree(LAYERS / phase.name, checkout, dirs_exist_ok=True, ignore=_IGNORED)
        message = f"{phase.title}\n\n{phase.body}"
        if phase is not BASELINE:
            message += f"\n\n{TRAILER}: {phase.name}"
        _commit(checkout, message, f"2026-01-{day:02d}T10:00:00Z")
    return _publish(checkout, origin)


# --- tistis ----------------------------------------------------------------------------------

TISTIS_HISTORY = LAYERS / "tistis" / "history"
TISTIS_PHASE_SUBJECT = "feat: FASE 1, 2 & 3 Complete"
_FIRST_DATE = datetime.fromisoformat("2026-01-17T12:00:00+00:00")
_STEP = timedelta(hours=9)


def history_folders(history: Path = TISTIS_HISTORY) -> list[Path]:
    return sorted(p for p in history.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _copy_engine(checkout: Path) -> None:
    engine = LAYERS / "baseline"
    shutil.copytree(engine / "app", checkout / "app", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "ext"))
    shutil.copy2(engine / "build.py", checkout / "build.py")


def _replay(checkout: Path, folder: Path) -> None:
    for line in _lines(folder / "renames.txt"):
        old, arrow, new = line.partition(" -> ")
        if not arrow or not old.strip() or not new.strip():
            raise StepFailed(f"{folder / 'renames.txt'}: expected `old -> new`, got {line!r}")
        (checkout / new.strip()).parent.mkdir(parents=True, exist_ok=True)
        git(checkout, "mv", old.strip(), new.strip())
    for line in _lines(folder / "deletes.txt"):
        git(checkout, "rm", "-r", "-q", line)
    if (folder / "files").is_dir():
        shutil.copytree(folder / "files", checkout, dirs_exist_ok=True, ignore=_IGNORED)


def build_tistis(checkout: Path, origin: Path, history: Path = TISTIS_HISTORY) -> str:
    """Create the checkout with the tistis history and push it to a bare `origin`.

    Returns the head commit.
    """
    _init(checkout, origin)
    folders = history_folders(history)
    if not folders:
        raise StepFailed(f"{history}: no commit folders")
    when = _FIRST_DATE - _STEP
    for index, folder in enumerate(folders):
        message_file = folder / "message.txt"
        if not message_file.is_file():
            raise StepFailed(f"{folder}: no message.txt")
        if index == 0:
            _copy_engine(checkout)
        _replay(checkout, folder)
        stated = _lines(folder / "date.txt")
        when = datetime.fromisoformat(stated[0].replace("Z", "+00:00")) if stated else when + _STEP
        _commit(checkout, message_file.read_text(encoding="utf-8").strip(), when.isoformat())
    return _publish(checkout, origin)


def tistis_phase_commit(checkout: Path) -> str | None:
    """The commit that shipped FASE 1, 2 and 3 together, by its subject."""
    found = git(checkout, "log", "--format=%H", "--fixed-strings", f"--grep={TISTIS_PHASE_SUBJECT}")
    shas = [sha for sha in found.splitlines() if sha]
    for sha in shas:
        if git(checkout, "show", "-s", "--format=%s", sha).startswith(TISTIS_PHASE_SUBJECT):
            return sha
    return None


def head(checkout: Path) -> str:
    return git(checkout, "rev-parse", "HEAD")


def migration_files(checkout: Path) -> list[Path]:
    """Up migrations present in the checkout, in the order they apply: supabase/migrations/
    (tistis, no down scripts) when it exists, else migrations/."""
    folder = checkout / "supabase" / "migrations"
    if not folder.is_dir():
        folder = checkout / "migrations"
    return sorted(p for p in folder.glob("*.sql") if not p.name.endswith(".down.sql"))
