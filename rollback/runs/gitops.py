"""Git, as the drivers use it: find a phase's commits, revert them on a branch, take it all back.

The repository's convention (see `sandbox/repo.py`): every commit of a phase carries the trailer
`Rollback-Phase: faseN` (the trailer's name is `[target] phase_trailer`). A phase is present when
at least one of its commits is in the history of HEAD and not reverted since; a revert of a
revert counts as re-applying. Revert commits made here carry `Rollback-Run: <run id>` and never
the phase trailer, so that they are not mistaken for the phase itself.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from rollback.errors import StepFailed, UsageError

RUN_TRAILER = "Rollback-Run"
_REVERTS = re.compile(r"^This reverts commit ([0-9a-f]{7,40})\.?\s*$", re.MULTILINE)


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_EDITOR": "true", "LC_ALL": "C"}
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                            env=env, check=False)
    if check and result.returncode != 0:
        raise StepFailed(f"git {' '.join(args[:2])} in {repo}: {git_error(result)}")
    return result


def git_error(result: subprocess.CompletedProcess[str]) -> str:
    """The line of git's output that says what went wrong: its first fatal/error line, if any
    (the lines after it are often advice, such as "... and the repository exists.")."""
    lines = [line.strip() for line in (result.stderr or result.stdout).strip().splitlines()]
    return next((line for line in lines if line.startswith(("fatal:", "error:"))),
                lines[-1] if lines else "failed")


def out(repo: Path, *args: str) -> str:
    return git(repo, *args).stdout.strip()


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    phase: str | None = None

    @property
    def short(self) -> str:
        return self.sha[:12]

    def as_dict(self) -> dict[str, str | None]:
        return {"sha": self.sha, "subject": self.subject, "phase": self.phase}


@dataclass
class History:
    """HEAD's history, oldest first, with what each revert commit undid."""

    commits: list[Commit] = field(default_factory=list)
    reverted_by: dict[str, str] = field(default_factory=dict)   # sha -> sha of the revert in effect
    phase_of: dict[str, str] = field(default_factory=dict)      # sha -> phase named by its trailer

    def is_reverted(self, sha: str) -> bool:
        return sha in self.reverted_by

    def phase_commits(self, phase: str) -> list[Commit]:
        return [c for c in self.commits if self.phase_of.get(c.sha) == phase]

    def phases_present(self) -> list[str]:
        return sorted({p for sha, p in self.phase_of.items() if sha not in self.reverted_by})


def read_history(repo: Path, trailer: str) -> History:
    raw = out(repo, "log", "--reverse", "--format=%H%x00%s%x00%B%x1e")
    history = History()
    shas: list[str] = []
    bodies: dict[str, str] = {}
    for entry in raw.split("\x1e"):
        entry = entry.strip("\n")
        if "\x00" not in entry:
            continue
        sha, subject, body = entry.split("\x00", 2)
        sha = sha.strip()
        shas.append(sha)
        bodies[sha] = body
        history.commits.append(Commit(sha, subject))
        for line in body.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == trailer and value.strip():
                history.phase_of[sha] = value.strip()
    # resolve abbreviated shas named by revert messages
    by_prefix = {s: s for s in shas}
    reverts_of: dict[str, str] = {}
    for sha in shas:
        for match in _REVERTS.finditer(bodies[sha]):
            target = match.group(1)
            full = by_prefix.get(target) or next((s for s in shas if s.startswith(target)), None)
            if full is None:
                continue
            reverts_of[sha] = full
            if full in reverts_of:  # reverting a revert: the original is back in effect
                history.reverted_by.pop(reverts_of[full], None)
            else:
                history.reverted_by[full] = sha
    history.commits = [Commit(c.sha, c.subject, history.phase_of.get(c.sha)) for c in history.commits]
    return history


def resolve(repo: Path, rev: str) -> str:
    result = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if result.returncode != 0:
        raise UsageError(f"--commit {rev}: no such commit in {repo}")
    return result.stdout.strip()


def current_branch(repo: Path) -> str | None:
    result = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return result.stdout.strip() or None


def head(repo: Path) -> str:
    return out(repo, "rev-parse", "HEAD")


def dirty_files(repo: Path) -> list[str]:
    # not `out()`: its strip() would eat the status column of the first line (" M file")
    lines = git(repo, "status", "--porcelain", "--untracked-files=normal").stdout.splitlines()
    return [line[3:] for line in lines if line.strip()]


def remotes(repo: Path) -> list[str]:
    return out(repo, "remote").split()


def operation_in_progress(repo: Path) -> str | None:
    git_dir = Path(out(repo, "rev-parse", "--absolute-git-dir"))
    for name, what in (("REVERT_HEAD", "revert"), ("CHERRY_PICK_HEAD", "cherry-pick"),
                       ("MERGE_HEAD", "merge"), ("rebase-merge", "rebase"), ("rebase-apply", "rebase"),
                       ("sequencer", "revert/cherry-pick sequence")):
        if (git_dir / name).exists():
            return what
    return None


def branch_exists(repo: Path, name: str) -> bool:
    return git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0


def files_of(repo: Path, sha: str) -> list[str]:
    return [line for line in out(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).splitlines()
            if line]


def added_files(repo: Path, sha: str) -> list[str]:
    lines = out(repo, "diff-tree", "--no-commit-id", "--name-status", "-r", sha).splitlines()
    return [line.split("\t", 1)[1] for line in lines if line.startswith("A\t")]


def show(repo: Path, sha: str, path: str) -> str:
    return out(repo, "show", f"{sha}:{path}")


def reverts_on_branch(repo: Path, base: str, trailer_value: str) -> dict[str, str]:
    """Revert commits between `base` and HEAD made by run `trailer_value`: reverted sha -> revert sha."""
    raw = out(repo, "log", "--format=%H%x00%B%x1e", f"{base}..HEAD")
    found: dict[str, str] = {}
    for entry in raw.split("\x1e"):
        entry = entry.strip("\n")
        if "\x00" not in entry:
            continue
        sha, body = entry.split("\x00", 1)
        if f"{RUN_TRAILER}: {trailer_value}" not in body:
            continue
        for match in _REVERTS.finditer(body):
            found[match.group(1)] = sha.strip()
    return found


class RevertConflict(StepFailed):
    def __init__(self, message: str, commit: Commit, files: list[str]) -> None:
        super().__init__(message)
        self.commit = commit
        self.files = files


def revert(repo: Path, commit: Commit, run_id: str) -> str:
    """Revert one commit onto HEAD as a commit of its own; on a conflict abort and raise.

    The revert is staged with --no-commit and committed with our message, so that it names the
    run and does not repeat the phase trailer.
    """
    result = git(repo, "revert", "--no-commit", commit.sha, check=False)
    if result.returncode != 0:
        conflicted = [f for f in out(repo, "diff", "--name-only", "--diff-filter=U").splitlines() if f]
        git(repo, "revert", "--abort", check=False)
        if operation_in_progress(repo):
            git(repo, "reset", "--merge", check=False)
        if conflicted:
            raise RevertConflict(f"reverting {commit.short} conflicts in {', '.join(conflicted)}",
                                 commit, conflicted)
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise StepFailed(f"git revert {commit.short}: {lines[-1] if lines else 'failed'}")
    message = (f'Revert "{commit.subject}"\n\nThis reverts commit {commit.sha}.\n\n'
               f"{RUN_TRAILER}: {run_id}\n")
    staged = git(repo, "diff", "--cached", "--quiet", check=False).returncode != 0
    args = ["commit", "-q", "--no-verify", "-m", message]
    if not staged:
        args.insert(2, "--allow-empty")
    git(repo, *args)
    return head(repo)


def checkout(repo: Path, ref: str) -> None:
    git(repo, "checkout", "-q", ref)


def restore_branch(repo: Path, original_branch: str | None, original_head: str, rollback_branch: str) -> None:
    """Put the repository back: abort what is in progress, check out the original, drop our branch."""
    if operation_in_progress(repo):
        git(repo, "revert", "--abort", check=False)
        git(repo, "reset", "--merge", check=False)
    git(repo, "checkout", "-q", "-f", original_branch or original_head)
    if original_branch is None:
        git(repo, "checkout", "-q", "--detach", original_head)
    if branch_exists(repo, rollback_branch):
        git(repo, "branch", "-q", "-D", rollback_branch)
