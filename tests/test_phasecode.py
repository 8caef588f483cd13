"""One phase's code taken back out of a commit that shipped three, with real git in a temporary
repository: the plan, the revert of FASE 3, then 2, then 1, a conflict, line-range rules, which
phases a commit carries, and the diff parser on its own."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollback.errors import ConfigError, StepFailed
from rollback.runs import phasecode
from rollback.runs.gitops import RevertConflict
from rollback.runs.phasecode import HunkRule, PhaseCode, apply_revert, phases_in_commits, plan_revert

ROUTE = "app/api/leads/route.py"
KEYS = "app/api keys.py"                 # shared by FASE 1 and 2, with a space in its name
CACHE = "app/response cache.py"          # FASE 3's alone
FILTER = "app/branch_filter.py"          # FASE 1's alone
MIGRATION, RENAMED = "supabase/migrations/136_X.sql", "supabase/migrations/174_X.sql"

FASE1 = PhaseCode(paths=(FILTER,), hunks=(HunkRule("app/**/route.py", "FASE 1"),
                                          HunkRule(KEYS, "FASE 1")))
FASE2 = PhaseCode(hunks=(HunkRule("app/**/route.py", r"#\s*FASE 2"), HunkRule(KEYS, "FASE 2")))
FASE3 = PhaseCode(paths=(CACHE, "supabase/migrations/136_*.sql"),
                  hunks=(HunkRule("app/**/route.py", "FASE 3"),))
MANIFEST = {"fase1": FASE1, "fase2": FASE2, "fase3": FASE3}

BLOCKS = {  # route.py: each block goes in after the baseline line named, 20 lines apart
    15: ["# FASE 1: branch_id query parameter", 'branch_id = request.args.get("branch_id")',
         'query = query.eq("branch_id", branch_id)'],
    35: ["# FASE 2: branch-scoped API keys", "if key.branch_id and key.branch_id != branch_id:",
         "    raise Forbidden()"],
    55: ["# FASE 3: response cache", "cached = cache.get(cache_key)", "if cached:",
         "    return cached"],
}
KEY_BLOCKS = {10: ["# FASE 1: keys list filtered by branch_id", "keys = keys.for_branch(branch_id)"],
              30: ["# FASE 2: a key may be scoped to one branch", "scope = key.branch_id or None",
                   "audit(scope)", "return scope"]}
ROUTE_NOTE = ["# Leads route: see docs/leads.md", "# (kept short on purpose)"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _lines(prefix: str, count: int) -> list[str]:
    return [f"{prefix}_{n:02d} = {n}" for n in range(1, count + 1)]


def _with_blocks(lines: list[str], blocks: dict[int, list[str]]) -> list[str]:
    result: list[str] = []
    for number, line in enumerate(lines, start=1):
        result.append(line)
        result += blocks.get(number, [])
    return result


def _write(repo: Path, path: str, lines: list[str]) -> None:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text("\n".join(lines) + "\n")


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@dataclass
class PhaseRepo:
    """The synthetic platform: a baseline, the one commit of FASE 1, 2 & 3, three later commits."""

    path: Path
    baseline: str
    big: str
    route_note: str
    rename: str
    unrelated: str

    def read(self, path: str) -> str:
        return (self.path / path).read_text()

    def status(self) -> str:
        return _git(self.path, "status", "--porcelain", "--untracked-files=all")

    def head(self) -> str:
        return _git(self.path, "rev-parse", "HEAD")


@pytest.fixture
def isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """No global or system git configuration: the tests see git's defaults only."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def _init(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.email", "platform@example.invalid")
    _git(path, "config", "user.name", "Platform Team")
    return path


@pytest.fixture
def platform(tmp_path: Path, isolated_git: None) -> Iterator[PhaseRepo]:
    """A repository shaped like the platform's history: FASE 1, 2 and 3 in one commit."""
    repo = _init(tmp_path / "platform repo")
    _write(repo, ROUTE, _lines("route", 80))
    _write(repo, KEYS, _lines("keys", 40))
    _write(repo, "docs/notes.md", ["# Notes"])
    baseline = _commit(repo, "baseline")

    _write(repo, ROUTE, _with_blocks(_lines("route", 80), BLOCKS))
    _write(repo, KEYS, _with_blocks(_lines("keys", 40), KEY_BLOCKS))
    _write(repo, FILTER, ["def branch_filter(query, branch_id):", "    return query"])
    _write(repo, CACHE, ["# FASE 3: response cache", "CACHE = {}", "TTL_S = 60"])
    _write(repo, MIGRATION, ["-- FASE 3", "CREATE INDEX idx_a ON leads (branch_id);",
                             "CREATE INDEX idx_b ON leads (created_at);",
                             "CREATE VIEW vw_a AS SELECT 1;", "CREATE VIEW vw_b AS SELECT 2;"])
    big = _commit(repo, "feat: FASE 1, 2 & 3")

    route = _with_blocks(_lines("route", 80), BLOCKS)
    _write(repo, ROUTE, route[:2] + ROUTE_NOTE + route[2:])
    route_note = _commit(repo, "docs: a note at the top of the leads route")

    _git(repo, "mv", MIGRATION, RENAMED)
    text = (repo / RENAMED).read_text().replace("-- FASE 3", "-- FASE 3 (renumbered)")
    (repo / RENAMED).write_text(text)
    rename = _commit(repo, "chore: renumber migration 136 as 174")

    _write(repo, "docs/notes.md", ["# Notes", "", "Nothing to do with any phase."])
    unrelated = _commit(repo, "docs: notes")
    yield PhaseRepo(repo, baseline, big, route_note, rename, unrelated)


def _short(sha: str, subject: str) -> str:
    return f"{sha[:12]} {subject}"


# --- the plan ------------------------------------------------------------------------------------


def test_fase3_plan_lists_its_files_and_hunks_with_counts(platform: PhaseRepo) -> None:
    plan = plan_revert(platform.path, [platform.big], FASE3)
    by_path = {f.path: f for f in plan.files}
    assert sorted(by_path) == [ROUTE, CACHE, MIGRATION]
    route, cache, migration = by_path[ROUTE], by_path[CACHE], by_path[MIGRATION]
    assert (route.kind, route.status, route.current_path) == ("hunks", "modified", ROUTE)
    assert [(h.added, h.removed) for h in route.hunks] == [(4, 0)]
    assert "# FASE 3: response cache" in route.hunks[0].summary()
    assert (cache.kind, cache.status, cache.current_path, cache.added) == ("whole", "added", CACHE, 3)
    assert (migration.kind, migration.current_path, migration.added) == ("whole", RENAMED, 5)


def test_fase3_plan_names_the_later_commits_and_the_rename(platform: PhaseRepo) -> None:
    plan = plan_revert(platform.path, [platform.big], FASE3)
    by_path = {f.path: f for f in plan.files}
    note = "docs: a note at the top of the leads route"
    assert by_path[ROUTE].later == (_short(platform.route_note, note),)
    assert by_path[MIGRATION].later == (_short(platform.rename, "chore: renumber migration 136 as 174"),)
    assert by_path[CACHE].later == ()


def test_fase3_plan_says_the_other_phases_hunks_and_files_stay(platform: PhaseRepo) -> None:
    plan = plan_revert(platform.path, [platform.big], FASE3)
    route = next(f for f in plan.files if f.path == ROUTE)
    assert [h.summary().split('"')[1] for h in route.kept] == [
        "# FASE 1: branch_id query parameter", "# FASE 2: branch-scoped API keys"]
    assert [(u.path, u.added, u.removed) for u in plan.unclaimed] == [(KEYS, 6, 0), (FILTER, 2, 0)]


def test_fase3_plan_describes_every_change_and_what_stays(platform: PhaseRepo) -> None:
    lines = plan_revert(platform.path, [platform.big], FASE3).describe()
    text = "\n".join(lines)
    assert lines[0].endswith("2 whole file(s), hunks of 1 file(s)")
    assert f"remove {CACHE} (added here: 3 lines)" in text
    assert f"remove {RENAMED} (added here as {MIGRATION}: 5 lines)" in text
    assert f"changed since by: {_short(platform.rename, 'chore: renumber migration 136 as 174')}" in text
    assert f"take back 1 of 3 hunk(s) in {ROUTE}: +4 -0 lines" in text
    assert 'stays in place: @@ -13,6 +13,9 @@ +3 -0 "# FASE 1: branch_id query parameter"' in text
    assert "stays in place, claimed by no rule of the phase: 2 file(s), +8 -0 lines" in text


# --- taking it back ------------------------------------------------------------------------------


def test_fase3_revert_removes_only_fase3(platform: PhaseRepo) -> None:
    before = platform.head()
    plan = plan_revert(platform.path, [platform.big], FASE3)
    sha = apply_revert(platform.path, plan, "Revert FASE 3's code")
    assert sha == platform.head() and _git(platform.path, "rev-parse", "HEAD~1") == before
    assert _git(platform.path, "log", "-1", "--format=%s") == "Revert FASE 3's code"
    route = platform.read(ROUTE)
    assert "FASE 3" not in route and "cached = cache.get" not in route
    assert "# FASE 1: branch_id" in route and "raise Forbidden()" in route
    assert route.startswith("route_01 = 1\nroute_02 = 2\n# Leads route")  # the later edit stays
    assert not (platform.path / CACHE).exists() and not (platform.path / RENAMED).exists()
    assert "FASE 2" in platform.read(KEYS) and (platform.path / FILTER).exists()
    assert platform.status() == ""


def test_fase2_then_fase1_on_top_leave_the_baseline_and_the_later_edits(platform: PhaseRepo) -> None:
    for message, code in (("Revert FASE 3", FASE3), ("Revert FASE 2", FASE2), ("Revert FASE 1", FASE1)):
        apply_revert(platform.path, plan_revert(platform.path, [platform.big], code), message)
        if code is FASE2:
            assert "FASE 2" not in platform.read(ROUTE) + platform.read(KEYS)
            assert "FASE 1" in platform.read(ROUTE) and "FASE 1" in platform.read(KEYS)
    route = _lines("route", 80)
    assert platform.read(ROUTE) == "\n".join(route[:2] + ROUTE_NOTE + route[2:]) + "\n"
    assert platform.read(KEYS) == "\n".join(_lines("keys", 40)) + "\n"
    assert not (platform.path / FILTER).exists()
    assert _git(platform.path, "log", "-3", "--format=%s").splitlines() == [
        "Revert FASE 1", "Revert FASE 2", "Revert FASE 3"]
    assert platform.status() == ""


def test_a_later_rewrite_of_a_fase2_hunk_conflicts_and_changes_nothing(platform: PhaseRepo) -> None:
    (platform.path / ROUTE).write_text(platform.read(ROUTE).replace(
        "    raise Forbidden()", '    raise Forbidden("key limited to another branch")'))
    rewrite = _commit(platform.path, "fix: say why the key is refused")
    before = platform.head()
    plan = plan_revert(platform.path, [platform.big], FASE2)
    with pytest.raises(RevertConflict) as caught:
        apply_revert(platform.path, plan, "Revert FASE 2")
    assert caught.value.files == [ROUTE]
    assert caught.value.commit.sha == platform.big
    message = str(caught.value)
    assert ROUTE in message and _short(rewrite, "fix: say why the key is refused") in message
    assert "nothing was changed" in message
    assert platform.status() == "" and platform.head() == before  # api keys.py's hunk undone too


def test_a_phase_commit_that_renames_a_file_the_phase_added_goes_with_it(platform: PhaseRepo) -> None:
    plan = plan_revert(platform.path, [platform.rename, platform.big], FASE3)  # any order
    assert [c.sha for c in plan.commits] == [platform.big, platform.rename]
    assert {(f.commit.sha, f.path) for f in plan.files} == {
        (platform.big, ROUTE), (platform.big, CACHE), (platform.big, MIGRATION)}
    assert plan.unclaimed == tuple(u for u in plan.unclaimed if u.commit.sha == platform.big)
    apply_revert(platform.path, plan, "Revert FASE 3")
    assert not (platform.path / MIGRATION).exists() and not (platform.path / RENAMED).exists()
    assert platform.status() == ""


def test_head_moved_since_the_plan_is_refused(platform: PhaseRepo) -> None:
    plan = plan_revert(platform.path, [platform.big], FASE3)
    _git(platform.path, "commit", "-q", "--allow-empty", "-m", "meanwhile")
    with pytest.raises(StepFailed, match="make the plan again"):
        apply_revert(platform.path, plan, "Revert FASE 3")


def test_uncommitted_changes_are_refused_and_kept(platform: PhaseRepo) -> None:
    plan = plan_revert(platform.path, [platform.big], FASE3)
    (platform.path / KEYS).write_text("work in progress\n")
    with pytest.raises(StepFailed, match="uncommitted changes"):
        apply_revert(platform.path, plan, "Revert FASE 3")
    assert platform.read(KEYS) == "work in progress\n"


# --- line ranges ---------------------------------------------------------------------------------


def _line_of(repo: PhaseRepo, text: str) -> int:
    """The 1-based line of `text` in route.py as the big commit left it."""
    lines = _git(repo.path, "show", f"{repo.big}:{ROUTE}").splitlines()
    return lines.index(text) + 1


def test_a_line_range_selects_the_hunk_whose_changes_it_overlaps(platform: PhaseRepo) -> None:
    first = _line_of(platform, "# FASE 2: branch-scoped API keys")
    code = PhaseCode(hunks=(HunkRule(ROUTE, lines=((first + 1, first + 1),)),))
    plan = plan_revert(platform.path, [platform.big], code)
    (route,) = plan.files
    assert [h.summary().split('"')[1] for h in route.hunks] == ["# FASE 2: branch-scoped API keys"]
    apply_revert(platform.path, plan, "Revert FASE 2 in the route")
    assert "FASE 2" not in platform.read(ROUTE) and "FASE 3" in platform.read(ROUTE)


def test_a_line_range_over_context_only_selects_nothing(platform: PhaseRepo) -> None:
    first = _line_of(platform, "# FASE 2: branch-scoped API keys")
    code = PhaseCode(hunks=(HunkRule(ROUTE, lines=((first - 2, first - 1),)),))  # the context above
    plan = plan_revert(platform.path, [platform.big], code)
    assert plan.files == () and plan.empty
    assert plan.describe()[0].startswith("nothing to take back")


# --- which phases a commit carries ---------------------------------------------------------------


def test_the_big_commit_carries_all_three_phases(platform: PhaseRepo) -> None:
    assert phases_in_commits(platform.path, [platform.big], MANIFEST) == {
        "fase1": [KEYS, ROUTE, FILTER], "fase2": [KEYS, ROUTE], "fase3": [ROUTE, CACHE, MIGRATION]}


def test_later_commits_carry_no_phase(platform: PhaseRepo) -> None:
    assert phases_in_commits(platform.path, [platform.unrelated], MANIFEST) == {}
    assert phases_in_commits(platform.path, [platform.route_note], MANIFEST) == {}


# --- rules, refusals, the parser -----------------------------------------------------------------


def test_a_rule_that_selects_nothing_or_has_a_bad_pattern_is_refused() -> None:
    with pytest.raises(ConfigError, match="give a pattern or line ranges"):
        HunkRule("app/*.py")
    with pytest.raises(ConfigError, match="not a regular expression"):
        HunkRule("app/*.py", "FASE (2")
    with pytest.raises(ConfigError, match="1-based"):
        HunkRule("app/*.py", lines=((5, 2),))


def test_globs_stay_within_a_directory_unless_doubled() -> None:
    assert phasecode.path_matches("app/*.py", "app/x.py")
    assert not phasecode.path_matches("app/*.py", "app/api/x.py")
    assert phasecode.path_matches("app/**/route.py", "app/route.py")
    assert phasecode.path_matches("app/**/route.py", "app/api/leads/route.py")
    assert phasecode.path_matches("supabase/migrations/13[67]_*.sql", "supabase/migrations/136_X.sql")


def test_a_binary_file_named_by_a_rule_is_refused(tmp_path: Path, isolated_git: None) -> None:
    repo = _init(tmp_path / "repo")
    (repo / "README").write_text("x\n")
    _commit(repo, "baseline")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    sha = _commit(repo, "feat: FASE 3 logo")
    with pytest.raises(StepFailed, match=r"logo\.png in .* is a binary file"):
        plan_revert(repo, [sha], PhaseCode(paths=("*.png",)))
    unclaimed = plan_revert(repo, [sha], PhaseCode(paths=("other/*",))).unclaimed
    assert [(u.path, u.binary) for u in unclaimed] == [("logo.png", True)]


def test_whole_files_go_back_three_way_and_deleted_ones_come_back(tmp_path: Path,
                                                                  isolated_git: None) -> None:
    repo = _init(tmp_path / "repo")
    base = [f"setting_{n} = {n}" for n in range(1, 21)]
    _write(repo, "config.py", base)
    _write(repo, "legacy.py", ["OLD = True"])
    _commit(repo, "baseline")
    _write(repo, "config.py", [*base[:9], "setting_10 = 'fase3'", *base[10:]])
    (repo / "legacy.py").unlink()
    sha = _commit(repo, "feat: FASE 3")
    # two lines below the phase's change, inside its hunk's context: only a 3-way merge applies
    _write(repo, "config.py", [*base[:9], "setting_10 = 'fase3'", "setting_11 = 11",
                               "setting_12 = 'tuned later'", *base[12:]])
    later = _commit(repo, "perf: tune setting 12")
    plan = plan_revert(repo, [sha], PhaseCode(paths=("config.py", "legacy.py")))
    assert [(f.path, f.kind, f.status) for f in plan.files] == [
        ("config.py", "whole", "modified"), ("legacy.py", "whole", "deleted")]
    assert plan.files[0].later == (_short(later, "perf: tune setting 12"),)
    apply_revert(repo, plan, "Revert FASE 3")
    tuned = [*base[:11], "setting_12 = 'tuned later'", *base[12:]]
    assert (repo / "config.py").read_text().splitlines() == tuned
    assert (repo / "legacy.py").read_text() == "OLD = True\n"


def test_hunks_follow_a_shared_file_renamed_since(tmp_path: Path, isolated_git: None) -> None:
    repo = _init(tmp_path / "repo")
    base = [f"line {n}" for n in range(1, 41)]
    _write(repo, "app/old name.py", base)
    _commit(repo, "baseline")
    _write(repo, "app/old name.py", [*base[:5], "# FASE 1: a", *base[5:25], "# FASE 2: b", *base[25:]])
    sha = _commit(repo, "feat: FASE 1 & 2")
    _git(repo, "mv", "app/old name.py", "app/new name.py")
    moved = _commit(repo, "refactor: rename the module")
    plan = plan_revert(repo, [sha], PhaseCode(hunks=(HunkRule("app/old name.py", "FASE 2"),)))
    (entry,) = plan.files
    assert (entry.path, entry.current_path) == ("app/old name.py", "app/new name.py")
    assert entry.later == (_short(moved, "refactor: rename the module"),)
    assert "in app/old name.py (now app/new name.py): +1 -0 lines" in "\n".join(plan.describe())
    apply_revert(repo, plan, "Revert FASE 2")
    assert (repo / "app/new name.py").read_text().splitlines() == [*base[:5], "# FASE 1: a", *base[5:]]


def test_a_hunk_rule_cannot_take_part_of_a_file_the_commit_added(tmp_path: Path,
                                                                   isolated_git: None) -> None:
    repo = _init(tmp_path / "repo")
    _write(repo, "README", ["x"])
    _commit(repo, "baseline")
    _write(repo, "mixed.py", ["# FASE 2: keys", "a = 1", "# FASE 3: cache", "b = 2"])
    sha = _commit(repo, "feat: FASE 2 & 3")
    with pytest.raises(StepFailed, match="a hunk rule cannot take back a part of it"):
        plan_revert(repo, [sha], PhaseCode(hunks=(HunkRule("mixed.py", "FASE 3"),)))
    assert phases_in_commits(repo, [sha], {"fase3": PhaseCode(hunks=(HunkRule("*.py", "FASE 3"),))}) == {
        "fase3": ["mixed.py"]}


def test_hunks_of_a_crlf_file_are_taken_back_byte_for_byte(tmp_path: Path, isolated_git: None) -> None:
    repo = _init(tmp_path / "repo")
    base = [f"line {n}" for n in range(1, 31)]
    (repo / "win.txt").write_bytes("\r\n".join(base).encode() + b"\r\n")
    _commit(repo, "baseline")
    changed = [*base[:5], "# FASE 1: a", *base[5:20], "# FASE 2: b", *base[20:]]
    (repo / "win.txt").write_bytes("\r\n".join(changed).encode() + b"\r\n")
    sha = _commit(repo, "feat: FASE 1 & 2")
    apply_revert(repo, plan_revert(repo, [sha], PhaseCode(hunks=(HunkRule("*.txt", "FASE 2"),))), "r")
    expected = [*base[:5], "# FASE 1: a", *base[5:]]
    assert (repo / "win.txt").read_bytes() == "\r\n".join(expected).encode() + b"\r\n"


def test_the_parser_reads_quoted_paths_and_missing_newlines() -> None:
    text = (
        'diff --git "a/we\\"ird\\tname" "b/we\\"ird\\tname"\n'
        "index 1111111..2222222 100644\n"
        '--- "a/we\\"ird\\tname"\n'
        '+++ "b/we\\"ird\\tname"\n'
        "@@ -1,2 +1,2 @@ def f():\n"
        " keep\n"
        "-old\n"
        "\\ No newline at end of file\n"
        "+new\n"
        "\\ No newline at end of file\n"
        "diff --git a/two words.txt b/two words.txt\n"
        "deleted file mode 100644\n"
        "index 3333333..0000000\n"
        "--- a/two words.txt\t\n"
        "+++ /dev/null\n"
        "@@ -1 +0,0 @@\n"
        "--- a line that looks like a header\n"
    )
    first, second = phasecode.parse_diff(text)
    assert (first.path, first.status, first.added, first.removed) == ('we"ird\tname', "modified", 1, 1)
    assert first.hunks[0].lines[-1] == "\\ No newline at end of file"
    assert first.hunks[0].range == "@@ -1,2 +1,2 @@"
    assert (second.path, second.status, second.removed) == ("two words.txt", "deleted", 1)
    assert second.hunks[0].lines == ("--- a line that looks like a header",)
    patch = first.patch(first.path, first.hunks)
    assert patch.startswith('diff --git "a/we\\"ird\\tname" "b/we\\"ird\\tname"\n--- "a/we')
    assert "index" not in patch
