"""One phase's code out of commits that carry several phases: whole files and single diff hunks.

The platform shipped FASE 1, 2 and 3 in one commit, and some files mix two phases, each in a diff
hunk of its own. `git revert` of that commit takes all three back. Here a `PhaseCode` names one
phase's part of such commits: globs of the files that are wholly the phase's, and `HunkRule`s for
its hunks in shared files (a regex over the hunk's added and removed lines, or line ranges of the
commit's new file). The same plan serves the read-only view and the change:

    plan = plan_revert(repo, [sha], FASE3)    # what changes, what stays, who changed it since
    print("\\n".join(plan.describe()))
    apply_revert(repo, plan, "Revert FASE 3's code ...")    # one commit on HEAD

How each part is taken back, in the working tree and index at HEAD:
- a file the phase added: removed where it is now (followed through later renames), with what
  later commits changed in it; the plan lists those commits;
- any other file claimed whole: its diff reverse-applied three-way (`git apply -R --3way`);
- hunks of a shared file: only those hunks reverse-applied against their context, from a patch
  without blob ids, so that git cannot fall back to merging whole blobs (which would also take
  the other phases' hunks back). Offsets are allowed, fuzz and 3-way merges are not.
If any file does not apply, the working tree and index are put back as they were and
`gitops.RevertConflict` names the files and the later commits that changed them.

Diffs are read with `--no-renames`: every path of a phase commit is stated as it is, so a rename
inside a phase commit is a deletion and an addition, each claimed by the rules that name it.
Later renames are followed forwards, one `git log -M --name-status` over `<commit>..HEAD`
(`git log --follow` only follows a path backwards, from its name at HEAD). Diffs are read as
bytes, not through `gitops.git`'s text mode, which would turn CRLF into LF inside file contents.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rollback.errors import ConfigError, StepFailed, UsageError
from rollback.profile import PhaseSpec
from rollback.runs import gitops
from rollback.runs.gitops import Commit, RevertConflict, git, out

Kind = Literal["whole", "hunks"]
Status = Literal["added", "deleted", "modified"]

#: for the git calls that read or name paths: paths unquoted but for control characters and
#: quotes, pathspecs taken literally (a file named `a[1].py` is that file, not a glob)
_OPTIONS = ("-c", "core.quotepath=off", "--literal-pathspecs")
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r",
            '"': '"', "\\": "\\"}
_NEEDS_QUOTES = re.compile(r'["\\\x00-\x1f\x7f]')


# --- the rules -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """A path glob read as git reads pathspecs: `*`, `?` and `[...]` stay within a directory,
    `**/` spans any number of them."""
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end].replace("\\", "\\\\")
            parts.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def path_matches(glob: str, path: str) -> bool:
    return _glob(glob).match(path) is not None


@dataclass(frozen=True)
class HunkRule:
    """Hunks of the files matching `path` (a glob) that belong to the phase: those with an added
    or removed line matching `pattern` (`re.search`), or whose changed lines overlap one of
    `lines`, 1-based inclusive ranges of the commit's new file (a removed line counts at the new
    file's line that follows it). Either one selects a hunk; a rule needs at least one."""

    path: str
    pattern: str | None = None
    lines: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", tuple((int(a), int(b)) for a, b in self.lines))
        if not self.path:
            raise ConfigError("HunkRule: path is empty: give a glob such as 'app/**/route.py'")
        if self.pattern is None and not self.lines:
            raise ConfigError(f"HunkRule {self.path!r}: give a pattern or line ranges, or it selects "
                              "nothing; a file wholly the phase's goes in PhaseCode.paths")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ConfigError(f"HunkRule {self.path!r}: pattern {self.pattern!r} is not a "
                                  f"regular expression: {error}") from None
        bad = [r for r in self.lines if not 1 <= r[0] <= r[1]]
        if bad:
            raise ConfigError(f"HunkRule {self.path!r}: line ranges {bad} are not 1-based "
                              "(first, last) with first <= last")

    def selects(self, hunk: Hunk) -> bool:
        changed = hunk.changed()
        if self.pattern is not None and any(re.search(self.pattern, text) for _, text in changed):
            return True
        if not self.lines or not changed:
            return False
        low, high = changed[0][0], changed[-1][0]
        return any(first <= high and low <= last for first, last in self.lines)


@dataclass(frozen=True)
class PhaseCode:
    """One phase's part of its commits: files wholly its own (`paths`, globs) and its hunks of
    shared files (`hunks`). A file matching `paths` is claimed whole even if a hunk rule names it.
    A file a commit added or deleted is one hunk, the whole file: only `paths` can claim it."""

    paths: tuple[str, ...] = ()
    hunks: tuple[HunkRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "hunks", tuple(self.hunks))
        if "" in self.paths:
            raise ConfigError("PhaseCode: an empty path glob claims nothing: remove it")

    def names(self, path: str) -> bool:
        """Whether any rule of the phase is about `path` (whole or in part)."""
        return (any(path_matches(g, path) for g in self.paths)
                or any(path_matches(r.path, path) for r in self.hunks))

    def claim(self, diff: FileDiff) -> tuple[Kind, tuple[Hunk, ...]] | None:
        """What of `diff` is the phase's: ("whole", all hunks), ("hunks", the chosen ones) or None."""
        if any(path_matches(g, diff.path) for g in self.paths):
            return "whole", diff.hunks
        rules = [r for r in self.hunks if path_matches(r.path, diff.path)]
        chosen = tuple(h for h in diff.hunks if any(r.selects(h) for r in rules))
        return ("hunks", chosen) if chosen else None


# --- diffs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hunk:
    """One `@@ -a,b +c,d @@` hunk; `lines` are its body lines (' ', '+', '-', '\\') without newline."""

    header: str
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: tuple[str, ...]

    @property
    def added(self) -> int:
        return sum(1 for line in self.lines if line.startswith("+"))

    @property
    def removed(self) -> int:
        return sum(1 for line in self.lines if line.startswith("-"))

    @property
    def range(self) -> str:
        """The header without git's function context: `@@ -30,6 +30,9 @@`."""
        return self.header.split(" @@", 1)[0] + " @@"

    def changed(self) -> list[tuple[int, str]]:
        """(line of the new file, text) of each added and removed line; a removed line is placed at
        the new file's line that follows it."""
        found: list[tuple[int, str]] = []
        line_no = self.new_start if self.new_count else self.new_start + 1
        for line in self.lines:
            if line.startswith(("+", "-")):
                found.append((line_no, line[1:]))
            if line.startswith(("+", " ")):
                line_no += 1
        return found

    def summary(self) -> str:
        """`@@ -30,6 +30,9 @@ +3 -0 "# FASE 3: response cache"`: its range, counts, first change."""
        changed = self.changed()
        first = next((text.strip() for _, text in changed if text.strip()), "")
        first = first if len(first) <= 60 else first[:57] + "..."
        return f'{self.range} +{self.added} -{self.removed}' + (f' "{first}"' if first else "")


@dataclass(frozen=True)
class FileDiff:
    """The diff of one file in one commit. `extended` holds git's header lines (modes, `index`)."""

    path: str
    status: Status
    extended: tuple[str, ...]
    hunks: tuple[Hunk, ...]
    binary: bool = False

    @property
    def added(self) -> int:
        return sum(h.added for h in self.hunks)

    @property
    def removed(self) -> int:
        return sum(h.removed for h in self.hunks)

    def patch(self, at: str, hunks: Sequence[Hunk] | None = None) -> str:
        """This diff as a patch of the file at path `at`. Whole (`hunks` None): with git's mode and
        `index` lines, for `git apply --3way`. Partial: only `hunks`, with no mode or blob ids, so
        that nothing but their context decides where they apply."""
        a_side, b_side = _quote("a/" + at), _quote("b/" + at)
        tab = "\t" if " " in at else ""  # as git writes it: the name ends at the tab
        lines = [f"diff --git {a_side} {b_side}"]
        if hunks is None:
            lines += self.extended
            hunks = self.hunks
        if hunks:
            lines.append("--- /dev/null" if self.status == "added" else f"--- {a_side}{tab}")
            lines.append("+++ /dev/null" if self.status == "deleted" else f"+++ {b_side}{tab}")
        for hunk in hunks:
            lines.append(hunk.header)
            lines += hunk.lines
        return "\n".join(lines) + "\n"


def parse_diff(text: str) -> list[FileDiff]:
    """The files of a `git diff --no-renames` (git's own format, `a/` and `b/` prefixes).

    Hunk bodies are read by their line counts, so a removed line that reads `--- x` is not taken
    for a file header. Binary files are kept, marked `binary`, with no hunks.
    """
    lines = text.split("\n")  # not splitlines(): a '\r' or '\f' inside a line is content
    if lines and lines[-1] == "":
        lines.pop()
    files: list[FileDiff] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("diff --git "):
            raise StepFailed(f"unreadable diff at line {i + 1}: {lines[i][:80]!r} (expected 'diff --git')")
        path = _header_path(lines[i])
        i += 1
        status: Status = "modified"
        binary = False
        extended: list[str] = []
        while i < len(lines) and not lines[i].startswith(("diff --git ", "@@ ")):
            line = lines[i]
            if line.startswith("new file mode "):
                status = "added"
            elif line.startswith("deleted file mode "):
                status = "deleted"
            if line.startswith(("Binary files ", "GIT binary patch")):
                binary = True
            elif not binary and not line.startswith(("--- ", "+++ ")):
                extended.append(line)
            i += 1
        hunks: list[Hunk] = []
        while i < len(lines) and lines[i].startswith("@@ "):
            hunk, i = _read_hunk(lines, i)
            hunks.append(hunk)
        files.append(FileDiff(path, status, tuple(extended), tuple(hunks), binary))
    return files


def _read_hunk(lines: list[str], i: int) -> tuple[Hunk, int]:
    match = _HUNK_HEADER.match(lines[i])
    if match is None:
        raise StepFailed(f"unreadable hunk header at line {i + 1}: {lines[i][:80]!r}")
    old_start, new_start = int(match[1]), int(match[3])
    old_count = 1 if match[2] is None else int(match[2])
    new_count = 1 if match[4] is None else int(match[4])
    header = lines[i]
    old_left, new_left = old_count, new_count
    body: list[str] = []
    i += 1
    while old_left > 0 or new_left > 0:
        if i >= len(lines):
            raise StepFailed(f"diff ends inside the hunk {header!r}")
        line = lines[i] or " "  # an empty context line, as some tools write it
        if line[0] == "-":
            old_left -= 1
        elif line[0] == "+":
            new_left -= 1
        elif line[0] == " ":
            old_left -= 1
            new_left -= 1
        elif line[0] != "\\":  # "\ No newline at end of file"
            raise StepFailed(f"unreadable line {i + 1} in the hunk {header!r}: {line[:80]!r}")
        body.append(line)
        i += 1
    if old_left < 0 or new_left < 0:
        raise StepFailed(f"the hunk {header!r} has more lines than its header counts")
    if i < len(lines) and lines[i].startswith("\\"):
        body.append(lines[i])
        i += 1
    return Hunk(header, old_start, old_count, new_start, new_count, tuple(body)), i


def _header_path(line: str) -> str:
    """The path of a `diff --git a/P b/P` line. Without renames both sides name the same file, so
    an unquoted header splits at its middle space, whatever spaces the path holds."""
    rest = line[len("diff --git "):]
    if rest.startswith('"'):
        side, _ = _unquote(rest)
    else:
        middle = (len(rest) - 1) // 2
        side = rest[:middle]
        if len(rest) % 2 == 0 or rest[middle] != " " or rest[middle + 1:] != "b/" + side[2:]:
            raise StepFailed(f"unreadable file header {line[:120]!r}: was the diff made with --no-renames?")
    if not side.startswith("a/"):
        raise StepFailed(f"unreadable file header {line[:120]!r}: expected a/ and b/ prefixes")
    return side[2:]


def _unquote(text: str) -> tuple[str, int]:
    """The C-quoted string that opens `text` (as git quotes unusual paths), and where it ends."""
    raw = bytearray()
    i = 1
    try:
        while text[i] != '"':
            if text[i] != "\\":
                raw += text[i].encode("utf-8", "surrogateescape")
                i += 1
            elif text[i + 1] in "01234567":
                raw.append(int(text[i + 1:i + 4], 8))
                i += 4
            else:
                raw += _ESCAPES[text[i + 1]].encode()
                i += 2
    except (IndexError, KeyError, ValueError):
        raise StepFailed(f"unreadable quoted path {text[:120]!r}") from None
    return raw.decode("utf-8", "surrogateescape"), i + 1


def _quote(name: str) -> str:
    """`name` as git writes it in a patch: C-quoted if it holds a quote, backslash or control."""
    if not _NEEDS_QUOTES.search(name):
        return name
    inverse = {v: k for k, v in _ESCAPES.items()}
    quoted = "".join(f"\\{inverse[ch]}" if ch in inverse
                     else f"\\{ord(ch):03o}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch
                     for ch in name)
    return f'"{quoted}"'


# --- reading the repository ----------------------------------------------------------------------


def _read(repo: Path, *args: str) -> str:
    """git's output as it is: UTF-8 (other bytes kept by surrogateescape), newlines untouched."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_EDITOR": "true", "LC_ALL": "C"}
    result = subprocess.run(["git", "-C", str(repo), *_OPTIONS, *args], capture_output=True,
                            env=env, check=False)
    if result.returncode != 0:
        failed = subprocess.CompletedProcess(result.args, result.returncode, "",
                                             result.stderr.decode("utf-8", "replace"))
        raise StepFailed(f"git {' '.join(args[:2])} in {repo}: {gitops.git_error(failed)}")
    return result.stdout.decode("utf-8", "surrogateescape")


def _toplevel(repo: Path) -> Path:
    # `git apply` run in a subdirectory ignores the paths outside it
    return Path(out(repo, "rev-parse", "--show-toplevel"))


def _commit_diff(repo: Path, sha: str) -> list[FileDiff]:
    return parse_diff(_read(repo, "diff-tree", "-p", "-r", "--root", "--no-commit-id", "--no-renames",
                            "--full-index", "--no-ext-diff", "--no-textconv", "--no-color", "-U3",
                            "--src-prefix=a/", "--dst-prefix=b/", sha))


def _commits(repo: Path, revs: Sequence[str]) -> list[Commit]:
    """`revs` as commits of HEAD's history, oldest first; merges refused."""
    wanted = {gitops.resolve(repo, rev) for rev in revs}
    order = out(repo, "rev-list", "--reverse", "--topo-order", "HEAD").split()
    missing = wanted - set(order)
    if missing:
        raise UsageError(f"{', '.join(sorted(s[:12] for s in missing))}: not in the history of HEAD "
                         f"({out(repo, 'rev-parse', '--short=12', 'HEAD')}); check out the branch "
                         "that carries the phase")
    commits: list[Commit] = []
    for sha in (s for s in order if s in wanted):
        parents, _, subject = out(repo, "show", "-s", "--format=%P%x00%s", sha).partition("\x00")
        if len(parents.split()) > 1:
            raise UsageError(f"{sha[:12]} ({subject}) is a merge: name the commits it merged instead")
        commits.append(Commit(sha, subject))
    return commits


def _later_changes(repo: Path, sha: str) -> Iterator[tuple[str, str, list[tuple[str, str, str]]]]:
    """The commits after `sha` up to HEAD, oldest first (first parents; a merge as its diff to
    its first parent): (sha, subject, [(status letter, old path, new path)])."""
    tokens = _read(repo, "log", "--reverse", "--first-parent", "--diff-merges=first-parent", "-M",
                   "-z", "--name-status", "--format=%x01%H%x00%s", f"{sha}..HEAD").split("\0")
    entry: tuple[str, str, list[tuple[str, str, str]]] | None = None
    i = 0
    while i < len(tokens):
        token = tokens[i].lstrip("\n")
        if not token:
            i += 1
        elif token.startswith("\x01"):
            if entry is not None:
                yield entry
            entry = (token[1:], tokens[i + 1] if i + 1 < len(tokens) else "", [])
            i += 2
        else:  # a status, then one path, or two for a rename or copy
            count = 2 if token[0] in "RC" else 1
            paths = tokens[i + 1:i + 1 + count]
            if entry is not None and len(paths) == count:
                entry[2].append((token[0], paths[0], paths[-1]))
            i += 1 + count
    if entry is not None:
        yield entry


@dataclass
class _Lineage:
    """One file after a commit: where it is at HEAD (None: deleted since), the later commits that
    changed it (`<short sha> <subject>`), and each of their changes to it (sha, status, old, new)."""

    current: str | None
    later: list[str] = field(default_factory=list)
    steps: list[tuple[str, str, str, str]] = field(default_factory=list)


def _follow(repo: Path, sha: str, paths: Sequence[str]) -> dict[str, _Lineage]:
    """Each of `paths`, as commit `sha` left them, followed through the commits up to HEAD."""
    lineages = {p: _Lineage(p) for p in paths}
    for commit, subject, changes in _later_changes(repo, sha):
        for status, old, new in changes:
            for lineage in lineages.values():
                if lineage.current != old or status == "C":  # a copy leaves its source as it was
                    continue
                if f"{commit[:12]} {subject}" not in lineage.later:
                    lineage.later.append(f"{commit[:12]} {subject}")
                lineage.steps.append((commit, status, old, new))
                if status == "R":
                    lineage.current = new
                elif status == "D":
                    lineage.current = None
    return lineages


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRevert:
    """One file of one phase commit and what of it goes back. `hunks` are the phase's hunks of it,
    `kept` the others (they stay in place), `later` the commits that changed it since."""

    commit: Commit
    path: str                # in the phase commit
    current_path: str | None  # at HEAD, after later renames; None if deleted since
    kind: Kind
    status: Status           # what the phase commit did to the file
    hunks: tuple[Hunk, ...]
    kept: tuple[Hunk, ...]
    later: tuple[str, ...]
    diff: FileDiff = field(repr=False)

    @property
    def gone(self) -> bool:
        """Deleted since the phase commit: nothing of the phase is left in it to take back."""
        return self.current_path is None and self.status != "deleted"

    @property
    def added(self) -> int:
        return sum(h.added for h in self.hunks)

    @property
    def removed(self) -> int:
        return sum(h.removed for h in self.hunks)

    def describe(self) -> list[str]:
        at = self.current_path or self.path
        moved = f" (now {at})" if at != self.path else ""
        since = [f"    changed since by: {', '.join(self.later)}"] if self.later else []
        if self.gone:
            return [f"  nothing to do in {self.path}: deleted since", *since]
        if self.kind == "whole" and self.status == "added":
            named = f" as {self.path}" if at != self.path else ""
            return [f"  remove {at} (added here{named}: {self.added} lines)",
                    *(line + "; their changes to it go too" for line in since)]
        if self.kind == "whole" and self.status == "deleted":
            return [f"  restore {at} (deleted here: {self.removed} lines)", *since]
        if self.kind == "whole":
            return [f"  take back all {len(self.hunks)} hunk(s) of {self.path}{moved}, three-way: "
                    f"+{self.added} -{self.removed} lines", *since]
        return [f"  take back {len(self.hunks)} of {len(self.hunks) + len(self.kept)} hunk(s) in "
                f"{self.path}{moved}: +{self.added} -{self.removed} lines",
                *(f"    {h.summary()}" for h in self.hunks), *since,
                *(f"    stays in place: {h.summary()}" for h in self.kept)]

    def as_dict(self) -> dict[str, Any]:
        def hunk(h: Hunk) -> dict[str, Any]:
            return {"header": h.header, "added": h.added, "removed": h.removed}

        return {"commit": self.commit.sha, "path": self.path, "current_path": self.current_path,
                "kind": self.kind, "status": self.status, "hunks": [hunk(h) for h in self.hunks],
                "kept": [hunk(h) for h in self.kept], "later": list(self.later)}


@dataclass(frozen=True)
class Unclaimed:
    """A file of a phase commit that no rule of the phase claims: it stays as it is."""

    commit: Commit
    path: str
    added: int
    removed: int
    binary: bool = False


@dataclass(frozen=True)
class RevertPlan:
    """What `apply_revert` does, made at `head`: `files` in commit order, oldest first."""

    head: str
    commits: tuple[Commit, ...]
    files: tuple[FileRevert, ...]
    unclaimed: tuple[Unclaimed, ...]

    @property
    def empty(self) -> bool:
        """Nothing to take back: no file claimed, or only files deleted since."""
        return all(f.gone for f in self.files)

    def describe(self) -> list[str]:
        """The plan in human lines: each file and hunk that changes, with line counts; the later
        commits that changed them; what stays in place."""
        whole = sum(1 for f in self.files if f.kind == "whole")
        lines = [f"take back the phase's code of {len(self.commits)} commit(s) on HEAD {self.head[:12]}, "
                 f"as one commit: {whole} whole file(s), hunks of {len(self.files) - whole} file(s)"]
        if not self.files:
            lines[0] = (f"nothing to take back: no rule of the phase claims a file of "
                        f"{', '.join(c.short for c in self.commits) or 'no commit'}")
        for commit in self.commits:
            files = [f for f in self.files if f.commit == commit]
            if files:
                lines.append(f"{commit.short} {commit.subject}")
                for entry in files:
                    lines += entry.describe()
        if self.unclaimed:
            added = sum(u.added for u in self.unclaimed)
            removed = sum(u.removed for u in self.unclaimed)
            lines.append(f"stays in place, claimed by no rule of the phase: {len(self.unclaimed)} "
                         f"file(s), +{added} -{removed} lines")
            lines += [f"  {u.path} ({'binary' if u.binary else f'+{u.added} -{u.removed}'}) "
                      f"in {u.commit.short}" for u in self.unclaimed]
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"head": self.head, "commits": [c.as_dict() for c in self.commits],
                "files": [f.as_dict() for f in self.files],
                "unclaimed": [{"commit": u.commit.sha, "path": u.path, "added": u.added,
                               "removed": u.removed, "binary": u.binary} for u in self.unclaimed]}


def plan_revert(repo: Path, commits: Sequence[str], code: PhaseCode) -> RevertPlan:
    """Read-only: which files and hunks of `commits` are `code`'s, where they are at HEAD, who
    changed them since, and what stays. A binary file that a rule names is refused.

    When several of `commits` change one file: a file an older one added is removed at its
    current path, which takes the newer ones' changes to it too, so those are not listed again;
    any other file the phase claims and a newer one of `commits` renames or deletes is refused
    (take such commits back one by one)."""
    repo = _toplevel(repo)
    phase_commits = _commits(repo, commits)
    shas = {c.sha for c in phase_commits}
    covered: set[tuple[str, str]] = set()  # (sha, path): goes with a file an older commit added
    files: list[FileRevert] = []
    unclaimed: list[Unclaimed] = []
    for commit in phase_commits:
        claimed: list[tuple[FileDiff, Kind, tuple[Hunk, ...]]] = []
        for diff in _commit_diff(repo, commit.sha):
            if (commit.sha, diff.path) in covered:
                continue
            if diff.binary and code.names(diff.path):
                raise StepFailed(f"{diff.path} in {commit.short} ({commit.subject}) is a binary file: "
                                 "only text diffs are taken back by phase; revert it by hand or leave "
                                 "it out of the phase's rules")
            claim = code.claim(diff)
            if claim is not None and claim[0] == "hunks" and diff.status != "modified":
                raise StepFailed(
                    f"{diff.path} was {diff.status} by {commit.short} ({commit.subject}), so its diff "
                    "is one hunk, the whole file, and a hunk rule cannot take back a part of it: name "
                    "it in the phase's paths if it is wholly the phase's, or revert it by hand")
            if claim is None:
                unclaimed.append(Unclaimed(commit, diff.path, diff.added, diff.removed, diff.binary))
            else:
                claimed.append((diff, *claim))
        lineages = _follow(repo, commit.sha, [d.path for d, _, _ in claimed])
        for diff, kind, hunks in claimed:
            lineage = lineages[diff.path]
            for sha, status, old, new in (s for s in lineage.steps if s[0] in shas):
                if kind == "whole" and diff.status == "added":
                    covered.update({(sha, old), (sha, new)})
                elif status in ("R", "D"):
                    raise StepFailed(
                        f"{diff.path}, changed by {commit.short} ({commit.subject}), is "
                        f"{'renamed' if status == 'R' else 'deleted'} by {sha[:12]}, also one of the "
                        "commits to take back: take them back one at a time, newest first")
            kept = tuple(h for h in diff.hunks if h not in hunks)
            files.append(FileRevert(commit, diff.path, lineage.current, kind, diff.status, hunks, kept,
                                    tuple(lineage.later), diff))
    return RevertPlan(gitops.head(repo), tuple(phase_commits), tuple(files), tuple(unclaimed))


def phases_in_commits(repo: Path, commits: Sequence[str], manifest: Mapping[str, PhaseCode]
                      ) -> dict[str, list[str]]:
    """The phases of `manifest` that have files or hunks in `commits`: phase -> its files there
    (paths as in the commits). A phase with nothing in them is not listed."""
    repo = _toplevel(repo)
    diffs = [d for c in _commits(repo, commits) for d in _commit_diff(repo, c.sha)]
    found: dict[str, list[str]] = {}
    for phase, code in manifest.items():
        files = list(dict.fromkeys(d.path for d in diffs if code.claim(d) is not None))
        if files:
            found[phase] = files
    return found


# --- applying it ---------------------------------------------------------------------------------


def apply_revert(repo: Path, plan: RevertPlan, message: str) -> str:
    """Take the plan back in the working tree and index at HEAD and commit it, with `message`, as
    one commit; returns its sha. The repository must be at the plan's HEAD with no tracked
    changes. If any file does not apply, the working tree and index are reset to HEAD (nothing
    half-applied) and `gitops.RevertConflict` names the files and the later commits that changed
    them."""
    repo = _toplevel(repo)
    _ready(repo, plan)
    failed: list[tuple[FileRevert, str]] = []
    try:
        git(repo, "update-index", "-q", "--refresh", check=False)
        with tempfile.TemporaryDirectory(prefix="phasecode-") as tmp:
            for n, entry in enumerate(reversed(plan.files)):  # newest commit first, as git revert
                reason = _take_back(repo, entry, Path(tmp) / f"{n}.patch")
                if reason is not None:
                    failed.append((entry, reason))
        if failed:
            raise _conflict(plan, failed)
        if git(repo, "diff", "--cached", "--quiet", check=False).returncode == 0:
            raise StepFailed(f"taking back the plan changed nothing at {plan.head[:12]}: "
                             "the phase's code is gone already (see the plan)")
        git(repo, "commit", "-q", "--no-verify", "-m", message)
    except BaseException:
        git(repo, "reset", "-q", "--hard", "HEAD", check=False)
        raise
    return gitops.head(repo)


def _ready(repo: Path, plan: RevertPlan) -> None:
    if plan.empty:
        raise StepFailed("the plan takes nothing back: no rule of the phase claims a file still "
                         "present; see its description")
    busy = gitops.operation_in_progress(repo)
    if busy:
        raise StepFailed(f"a {busy} is in progress in {repo}: finish or abort it first")
    now = gitops.head(repo)
    if now != plan.head:
        raise StepFailed(f"HEAD is {now[:12]}, the plan was made at {plan.head[:12]}: make the plan again")
    status = git(repo, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    if status:
        changed = ", ".join(line[3:] for line in status[:5]) + (" ..." if len(status) > 5 else "")
        raise StepFailed(f"{repo} has uncommitted changes ({changed}): commit or stash them first")


def _take_back(repo: Path, entry: FileRevert, patch_file: Path) -> str | None:
    """Take one file's part back in the working tree and index: None, or git's reason it failed."""
    if entry.gone:
        return None
    at = entry.current_path or entry.path
    if entry.kind == "whole" and entry.status == "added":
        result = git(repo, *_OPTIONS, "rm", "-q", "--", at, check=False)
    else:
        whole = entry.kind == "whole"
        patch = entry.diff.patch(at, None if whole else entry.hunks)
        patch_file.write_bytes(patch.encode("utf-8", "surrogateescape"))
        how = ("--3way",) if whole else ("--recount",)
        result = git(repo, *_OPTIONS, "apply", "-R", "--index", *how, "--whitespace=nowarn",
                     str(patch_file), check=False)
    return None if result.returncode == 0 else gitops.git_error(result)


def _conflict(plan: RevertPlan, failed: list[tuple[FileRevert, str]]) -> RevertConflict:
    files = [entry.current_path or entry.path for entry, _ in failed]
    details = []
    for (entry, reason), path in zip(failed, files, strict=True):
        why = f"changed since by {', '.join(entry.later)}" if entry.later else f"git: {reason}"
        details.append(f"{path} ({why})")
    commit = failed[0][0].commit
    return RevertConflict(
        f"taking back the phase's code of {commit.short} ({commit.subject}) does not apply in "
        f"{'; '.join(details)}; nothing was changed: the working tree and index are back at "
        f"{plan.head[:12]}. Take back those later changes first, or make the revert by hand",
        commit, files)


def phase_code(spec: PhaseSpec) -> PhaseCode:
    """The PhaseCode of a phase of the profile's manifest (`[platform.phases.<phase>]`)."""
    return PhaseCode(paths=spec.paths,
                     hunks=tuple(HunkRule(h.path, h.pattern, h.lines) for h in spec.hunks))
