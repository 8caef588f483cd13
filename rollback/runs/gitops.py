"""Git, as the drivers use it: find a phase's commits, revert them on a branch, take it all back.

A phase's commits are found as the profile's phase manifest says (`[platform.phases.<phase>]
find`): by a trailer (`Rollback-Phase: faseN`, the contract sandbox's convention), by a subject
pattern (the real platform's one commit `feat: FASE 1, 2 & 3 Complete ...`, which carries all
three phases), or by naming them. A phase is present when at least one of its commits is in the
history of HEAD and not taken back since, for that phase:

- a whole-commit revert (`This reverts commit <sha>.`) takes back every phase of the commit; a
  revert of a revert counts as re-applying;
- a phase-code revert (`rollback.runs.phasecode`, one phase's files and hunks out of a shared
  commit) carries `Rollback-Phase-Reverted: <phase> <sha>` and takes back that phase only.

Revert commits made here carry `Rollback-Run: <run id>` and never a phase's own trailer, so that
they are not mistaken for the phase itself.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rollback.errors import StepFailed, UsageError
from rollback.profile import PhaseFind

RUN_TRAILER = "Rollback-Run"
PHASE_REVERTED_TRAILER = "Rollback-Phase-Reverted"
_REVERTS = re.compile(r"^This reverts commit ([0-9a-f]{7,40})\.?\s*$", re.MULTILINE)
_PHASE_REVERTED = re.compile(rf"^{PHASE_REVERTED_TRAILER}:\s*(\S+)\s+([0-9a-f]{{7,40}})\s*$",
                             re.MULTILINE)


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
    #: the phases the commit carries (several for the real platform's release commit)
    phases: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.sha[:12]

    @property
    def phase(self) -> str | None:
        return ", ".join(self.phases) or None

    def as_dict(self) -> dict[str, str | None]:
        return {"sha": self.sha, "subject": self.subject, "phase": self.phase}


@dataclass
class History:
    """HEAD's history, oldest first, with what each revert commit undid."""

    commits: list[Commit] = field(default_factory=list)
    reverted_by: dict[str, str] = field(default_factory=dict)   # sha -> sha of the revert in effect
    phases_of: dict[str, tuple[str, ...]] = field(default_factory=dict)  # sha -> its phases
    #: (phase, sha) -> the phase-code revert that took that phase of that commit back
    phase_reverted_by: dict[tuple[str, str], str] = field(default_factory=dict)

    def is_reverted(self, sha: str, phase: str | None = None) -> bool:
        """Whether the commit is taken back whole, or (given a phase) that phase of it."""
        return sha in self.reverted_by or (phase is not None
                                           and (phase, sha) in self.phase_reverted_by)

    def phase_commits(self, phase: str) -> list[Commit]:
        return [c for c in self.commits if phase in self.phases_of.get(c.sha, ())]

    def phases_present(self) -> list[str]:
        return sorted({p for sha, phases in self.phases_of.items() for p in phases
                       if not self.is_reverted(sha, p)})

    def commit(self, sha: str) -> Commit | None:
        return next((c for c in self.commits if c.sha == sha), None)


def read_history(repo: Path, manifest: Mapping[str, PhaseFind]) -> History:
    """HEAD's history with each commit's phases, found as `manifest` (phase -> how) says."""
    raw = out(repo, "log", "--reverse", "--format=%H%x00%s%x00%B%x1e")
    history = History()
    shas: list[str] = []
    bodies: dict[str, str] = {}
    subjects: dict[str, str] = {}
    for entry in raw.split("\x1e"):
        entry = entry.strip("\n")
        if "\x00" not in entry:
            continue
        sha, subject, body = entry.split("\x00", 2)
        sha = sha.strip()
        shas.append(sha)
        bodies[sha], subjects[sha] = body, subject
    by_prefix = {s: s for s in shas}

    def full(target: str) -> str | None:
        return by_prefix.get(target) or next((s for s in shas if s.startswith(target)), None)

    named = {phase: {f for f in (full(c) for c in find.commits) if f} for phase, find in manifest.items()}
    for sha in shas:
        phases = tuple(phase for phase, find in manifest.items()
                       if _carries(find, phase, sha, subjects[sha], bodies[sha], named[phase]))
        if phases:
            history.phases_of[sha] = phases
    reverts_of: dict[str, str] = {}
    for sha in shas:
        for match in _REVERTS.finditer(bodies[sha]):
            target = full(match.group(1))
            if target is None:
                continue
            reverts_of[sha] = target
            if target in reverts_of:  # reverting a revert: the original is back in effect
                history.reverted_by.pop(reverts_of[target], None)
            else:
                history.reverted_by[target] = sha
        for match in _PHASE_REVERTED.finditer(bodies[sha]):
            target = full(match.group(2))
            if target is not None:
                history.phase_reverted_by[(match.group(1), target)] = sha
    history.commits = [Commit(sha, subjects[sha], history.phases_of.get(sha, ())) for sha in shas]
    return history


def _carries(find: PhaseFind, phase: str, sha: str, subject: str, body: str,
             named: set[str]) -> bool:
    if find.commits:
        return sha in named
    if find.trailer:
        # a revert commit quotes the reverted message: only a trailer line of its own counts
        if _REVERTS.search(body) or _PHASE_REVERTED.search(body):
            return False
        return any(name.strip() == find.trailer and value.strip() == phase
                   for name, sep, value in (line.partition(":") for line in body.splitlines()) if sep)
    return find.subject is not None and re.search(find.subject, subject) is not None


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
