"""FASE 3's database objects, read from its migrations as they stand in the repository.

The profile names the migration files by glob (`[platform.phases.fase3] migrations`). They are read at
the branch's head, so a migration renamed and rewritten after the phase commit (the real
platform's 136/137 became 174/175 with other definitions) gives today's names. A file that a
rollback has since removed is read at its last version before the removal.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from rollback.errors import StepFailed
from rollback.profile import Profile
from rollback.runs import gitops
from rollback.runs.dbops import DbObject, parse_migration_objects


@dataclass(frozen=True)
class Fase3Objects:
    objects: tuple[DbObject, ...]
    #: `<commit>:<path>` of every file read
    files: tuple[str, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(o.label for o in self.objects)


def _matching(paths: list[str], globs: tuple[str, ...]) -> list[str]:
    return sorted(p for p in paths if any(fnmatch(p, g) for g in globs))


def _last_versions(repo: Path, ref: str, globs: tuple[str, ...]) -> list[tuple[str, str]]:
    """(commit, path) of the newest version of each matching file deleted before `ref`."""
    log = gitops.out(repo, "log", "--format=%x00%H", "--diff-filter=D", "--name-only", ref,
                     "--", *globs)
    found: dict[str, str] = {}
    for entry in log.split("\x00"):
        lines = [line for line in entry.splitlines() if line.strip()]
        if not lines:
            continue
        sha, paths = lines[0], lines[1:]
        for path in _matching(paths, globs):
            found.setdefault(path, f"{sha}^")
    return [(sha, path) for path, sha in sorted(found.items())]


def objects_in_repo(profile: Profile, repo: Path, ref: str = "HEAD") -> Fase3Objects:
    """The objects FASE 3's migrations create at `ref`. Raises StepFailed when no migration
    file matches the profile's globs, at `ref` or in its history."""
    globs = profile.phase("fase3").migrations
    present = _matching(gitops.out(repo, "ls-tree", "-r", "--name-only", ref).splitlines(), globs)
    sources = [(ref, path) for path in present] or _last_versions(repo, ref, globs)
    if not sources:
        raise StepFailed(f"no file in {repo} matches [platform.phases.fase3] migrations "
                         f"({', '.join(globs)}), at {ref} or in its history: check the profile")
    objects: list[DbObject] = []
    files = []
    for sha, path in sources:
        files.append(f"{sha}:{path}")
        for obj in parse_migration_objects(gitops.show(repo, sha, path)):
            if obj not in objects:
                objects.append(obj)
    if not objects:
        raise StepFailed(f"no CREATE INDEX/VIEW/FUNCTION in FASE 3's migrations "
                         f"({', '.join(files)}): check [platform.phases.fase3] migrations")
    return Fase3Objects(tuple(objects), tuple(files))
