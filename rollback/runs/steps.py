"""The generic steps the drivers are made of. Each one is usable and testable on its own:

    Preflight      configuration, repository clean, database and API reachable, locks, phase state
    Baseline       p95 latency per endpoint and error rate before the change
    Backup         the current commit and deployed version; what each database action will
                   change (rollback/actions/: FASE 2's keys, FASE 3's object definitions)
    RevertCode     the phase's commits (or only its files and hunks) reverted on `rollback/faseN-<stamp>`
    Build          the configured build; a failure takes the revert back and stops
    Deploy         through the `[target] deploy_mode` adapter (rollback/deploy/); then the
                   profile's version source must report the deployed commit
    Publish        the deploy branch carries the revert (merged and pushed)
    Gate           each covered phase's checks with --gate until they pass N times in a row
    Communicate    the guide's messages rendered with the run's facts; sent if URLs are set

The database steps themselves live with their actions (rollback/actions/).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from rollback import probes
from rollback.actions import DatabaseAction, action_for
from rollback.actions.fase3_objects import fase3_objects
from rollback.deploy import adapter_for
from rollback.deploy import git as git_deploy
from rollback.errors import ConfigError, GateFailed, StepFailed, UsageError
from rollback.http import bounded_client
from rollback.profile import PhaseSpec, version_matches
from rollback.rls import require_sight
from rollback.runs import dbops, gitops, phasecode
from rollback.runs.core import PHASES, Done, Run, Step, StepPlan, run_command, write_private
from rollback.runs.journal import iso, utc_now
from rollback.runs.locks import (
    DatabaseLock,
    RepoLock,
    advisory_holder,
    describe_holder,
    is_held,
    read_holder,
)


class AlreadyRolledBack(Exception):
    """The phase is rolled back already: nothing to do (exit 0)."""


# --- shared look-ups -------------------------------------------------------------------------------


def history_of(run: Run) -> gitops.History:
    """HEAD's history with each commit's phases, as the profile's phase manifest finds them."""
    manifest = {name: spec.find for name, spec in run.settings.platform.phases.items()}
    return gitops.read_history(run.repo, manifest)


def phase_spec(run: Run) -> PhaseSpec:
    return run.settings.platform.phase(run.options.phase)


def phase_commits(run: Run) -> tuple[list[gitops.Commit], list[gitops.Commit], gitops.History]:
    """(commits still to revert for the phase, newest first; its commits taken back already;
    history). With --commit, that commit; refused when it carries other phases' changes too."""
    repo, phase = run.repo, run.options.phase
    history = history_of(run)
    spec = phase_spec(run)
    if run.options.commit:
        sha = gitops.resolve(repo, run.options.commit)
        commit = history.commit(sha)
        if commit is None:
            raise UsageError(f"--commit {run.options.commit}: not in the history of HEAD in {repo}")
        others = other_phases_in(run, commit)
        if others and not run.options.whole_commit:
            raise UsageError(
                f"--commit {commit.short} carries {', '.join(sorted(others))} too, not only "
                f"{phase} ({_claims(others)}): reverting it would take those phases back with "
                f"{phase}; run `rollback run {phase}` without --commit to take back only "
                f"{phase}'s files and hunks ([platform.phases.{phase}]), or add --whole-commit "
                "to take the whole commit back with those phases' database steps")
        chosen = [commit]
    else:
        chosen = history.phase_commits(phase)
        if not chosen:
            raise UsageError(
                f"no commit in the history of HEAD in {repo} is {phase}'s: the manifest looks "
                f"for {spec.find.describe(phase)}; check [platform.phases.{phase}] find, or name "
                "the commit with --commit SHA")
    pending = [c for c in reversed(chosen) if not history.is_reverted(c.sha, phase)]
    done = [c for c in chosen if history.is_reverted(c.sha, phase)]
    return pending, done, history


def other_phases_in(run: Run, commit: gitops.Commit) -> dict[str, list[str]]:
    """Other phases of the manifest whose files or hunks `commit` changes (phase -> files)."""
    manifest = run.settings.platform.phases
    if all(spec.whole_commits for spec in manifest.values()):
        return {p: [] for p in commit.phases if p != run.options.phase}
    found = phasecode.phases_in_commits(
        run.repo, [commit.sha], {name: phasecode.phase_code(spec) for name, spec in manifest.items()
                                 if not spec.whole_commits})
    return {p: files for p, files in found.items() if p != run.options.phase and files}


def _claims(others: dict[str, list[str]]) -> str:
    parts = []
    for phase, files in sorted(others.items()):
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        parts.append(f"{phase}: {shown}" if files else phase)
    return "; ".join(parts)


def later_phases(history: gitops.History, phase: str) -> list[str]:
    """Phases after `phase` (in the release order) that are still present: they may need it."""
    present = history.phases_present()
    order = list(PHASES)
    after = order[order.index(phase) + 1:] if phase in order else []
    return [p for p in after if p in present]


def run_phases(run: Run) -> list[str]:
    """The phases this run takes back: its own; with --whole-commit, every phase its commits
    carry (their code goes back whole, so their database actions come with it)."""
    memo = run.memo.get("phases")
    if memo is not None:
        return list(memo)
    phases = {run.options.phase}
    if run.options.whole_commit:
        pending, done, _ = phase_commits(run)
        for commit in pending + done:
            phases |= set(other_phases_in(run, commit))
    run.memo["phases"] = found = [p for p in PHASES if p in phases]
    return found


def database_actions(run: Run) -> list[DatabaseAction]:
    """The database actions of the run's phases ([platform.phases.X] database), in phase order."""
    found = []
    for phase in run_phases(run):
        spec = run.settings.platform.phases.get(phase)
        action = action_for(spec.database, phase) if spec is not None else None
        if action is not None:
            found.append(action)
    return found


def touches_database(run: Run) -> bool:
    """Whether the run changes the database (and so takes its advisory lock)."""
    return any(a.active(run.options) for a in database_actions(run))


def api_client(run: Run) -> httpx.Client:
    """A client for the target's API whose every answer is bounded in time and size."""
    return bounded_client(run.settings.target.api_base_url, run.settings.target.request_timeout_s)


def health(run: Run) -> probes.ApiHealth:
    """The target's health and served version, as the platform profile says to read them."""
    with api_client(run) as client:
        return probes.probe_served(client, run.settings.platform, run.settings.target.api_base_url)


def version_known(run: Run) -> bool:
    """Whether anything tells the deployed version (profile [version] source is not none)."""
    return run.settings.platform.version.source != "none"


# --- pre-flight ----------------------------------------------------------------------------------


class Preflight(Step):
    name, title = "preflight", "Pre-flight"
    always_run = True

    def _config(self, run: Run) -> list[str]:
        target = run.settings.target
        repo = run.repo
        if not (repo / ".git").exists():
            raise ConfigError(f"[target] repo = {repo}: not a git checkout")
        adapter_for(target.deploy_mode).check(run)
        from checks.target import require_target

        # the gate's target, refused now (a key with a trailing newline, no API_BASE_URL), not
        # at the gate after production has been changed
        require_target(run.settings)
        run.settings.require_database_url()
        if run.options.phase not in PHASES:
            raise UsageError(f"unknown phase {run.options.phase!r}: choose fase1, fase2 or fase3")
        return [f"configuration {run.settings.source or '(defaults and environment)'}: valid"]

    def _storage(self, run: Run, write: bool) -> list[str]:
        """The run's folders (logs with the journal and backups, reports with the gate's reports
        and the messages) can be written and have room, before anything changes. The plan only
        looks; the run writes a file into each (a read-only mount or a full disk shows)."""
        from rollback.runs.journal import check_room, room_line

        need = run.settings.paths.min_free_mb
        look = check_room if write else room_line
        return [look(run.logs_dir, need, "logs and backups folder"),
                look(run.settings.paths.reports_dir.resolve(), need, "reports folder")]

    def _repo(self, run: Run, resuming_code: bool) -> tuple[str, str | None, str]:
        repo = run.repo
        busy = gitops.operation_in_progress(repo)
        dirty = gitops.dirty_files(repo)
        branch = gitops.current_branch(repo)
        ours = branch == run.facts.get("rollback_branch")
        if (busy or dirty) and not (resuming_code and ours):
            what = f"a {busy} is in progress" if busy else f"uncommitted changes in {', '.join(dirty[:5])}"
            raise StepFailed(f"the repository {repo} is not clean ({what}): commit, stash or "
                             "abort it first; a rollback starts from a clean checkout")
        head = gitops.head(repo)
        if branch is None and "original_head" not in run.facts:
            # the revert would go on top of whatever commit is checked out, maybe not what runs
            raise StepFailed(f"the repository {repo} is on a detached HEAD ({head[:12]}): check "
                             f"out the deployed branch first (git checkout "
                             f"{run.settings.target.branch}); a rollback reverts on top of it")
        return head, branch, f"repository {repo} clean on {branch or 'a detached HEAD'} at {head[:12]}"

    def _reachable(self, run: Run) -> list[str]:
        probe = probes.probe_database(run.database_url, timeout_s=10)
        if not probe.ok:
            raise StepFailed(f"database unreachable: {probe.reason}; check DATABASE_URL")
        profile = run.settings.platform
        with dbops.read_only(run.database_url) as conn:
            # a role that RLS blinds would back up, convert and verify zero rows
            require_sight(conn, profile.tables.all(), profile.service_role)
        api = health(run)
        if not api.available:
            raise StepFailed(f"API at {run.settings.target.api_base_url} is not healthy: "
                             f"{api.describe()}; a rollback needs a reachable API to deploy to "
                             "and validate")
        return [f"database reachable ({probe.describe()})",
                f"API {run.settings.target.api_base_url} healthy, serving {(api.version or '?')[:12]}"]

    def _state(self, run: Run) -> tuple[list[str], dict[str, Any], bool]:
        pending, done, history = phase_commits(run)
        lines: list[str] = []
        data: dict[str, Any] = {"pending": [c.as_dict() for c in pending],
                           "reverted": [c.as_dict() for c in done],
                           "later_phases": later_phases(history, run.options.phase)}
        database_pending = 0
        if touches_database(run):
            with dbops.read_only(run.database_url) as conn:
                for action in database_actions(run):
                    if action.active(run.options):
                        fact, left = action.pending(run, conn)
                        data[fact] = left
                        database_pending += left
        finished = not pending and database_pending == 0
        if pending:
            lines.append(f"{run.options.phase} is present: {len(pending)} commit(s) to revert")
        else:
            lines.append(f"{run.options.phase}'s commits are reverted already "
                         f"({', '.join(c.short for c in done)})")
        if data["later_phases"]:
            lines.append(f"later phases still present: {', '.join(data['later_phases'])} "
                         "(they may depend on this one)")
        return lines, data, finished

    def describe(self, run: Run) -> StepPlan:
        lines = self._config(run)
        lines += self._storage(run, write=False)
        head, branch, text = self._repo(run, resuming_code=False)
        lines.append(text)
        lines += self._reachable(run)
        holder = read_holder(run.repo)
        if holder and is_held(run.repo):
            lines.append(f"repository lock: held by {describe_holder(holder)}")
        elif holder:
            lines.append(f"repository lock: free (left by {describe_holder(holder)}, whose process "
                         "is gone: the run takes it over)")
        else:
            lines.append("repository lock: free")
        if touches_database(run):
            with dbops.read_only(run.database_url) as conn:
                db_holder = advisory_holder(conn)
            lines.append(f"database advisory lock: {'held by ' + db_holder if db_holder else 'free'}")
        state_lines, data, finished = self._state(run)
        lines += state_lines
        data.update(head=head, branch=branch, already_done=finished)
        return self.plan(lines, data)

    def run(self, run: Run) -> Done:
        resuming_code = bool(run.record and run.record.steps.get("code", {}).get("state") in
                             ("running", "failed"))
        self._config(run)
        room = self._storage(run, write=True)
        lock = RepoLock(run.repo, run.run_id, run.options.phase, target=run.settings.identity.id)
        note = lock.acquire()
        run.repo_lock = lock
        run.cleanups.append(lock.release)
        if note:
            run.say(note, "yellow")
        if touches_database(run):
            db_lock = DatabaseLock(run.database_url, run.run_id)
            db_lock.acquire()
            run.db_lock = db_lock
            run.cleanups.append(db_lock.release)
        head, branch, text = self._repo(run, resuming_code)
        reach = self._reachable(run)
        state_lines, _, finished = self._state(run)
        if finished and run.record is None:
            raise AlreadyRolledBack(
                f"{run.options.phase} is already rolled back: "
                + "; ".join(state_lines) + "; nothing to do")
        locks = "repository" + (" and database" if touches_database(run) else "")
        return Done(f"{text}; {locks} locked; " + "; ".join(state_lines[:1]),
                    {"preflight": {"head": head, "branch": branch,
                                   "checks": [text, *reach, *room]},
                     "phases": run_phases(run)})


# --- baseline ------------------------------------------------------------------------------------


class Baseline(Step):
    name, title = "baseline", "Baseline"

    def describe(self, run: Run) -> StepPlan:
        n = run.settings.thresholds.sample_size
        endpoints = run.settings.platform.endpoints
        return self.plan([f"measure p95 latency and error rate of {', '.join(endpoints)} "
                          f"({n} concurrent requests each, with TEST_API_KEY), for the gate to "
                          "compare with"], {"endpoints": list(endpoints), "sample_size": n})

    def run(self, run: Run) -> Done:
        n = run.settings.thresholds.sample_size
        with api_client(run) as client, ThreadPoolExecutor(max_workers=8) as pool:
            samples = probes.sample_endpoints(client, run.settings.require_api_key(),
                                              run.settings.platform.endpoints,
                                              n, pool=pool)
        p95 = {s.path: round(s.p95_ms, 1) for s in samples
               if s.p95_ms is not None and s.p95_ms != float("inf")}
        rate = probes.error_rate(samples)
        parts = [f"{path} p95 {value:.0f} ms" for path, value in p95.items()]
        for s in samples:
            if s.path not in p95:
                parts.append(f"{s.path}: no p95 to compare with ({s.labels})")
        return Done("; ".join(parts) + f"; error rate {rate:.1%}",
                    {"baseline": {"p95_ms": p95, "error_rate": round(rate, 4),
                                  "requests": sum(s.requests for s in samples),
                                  "measured_at": iso(utc_now())}})


# --- backup --------------------------------------------------------------------------------------


class Backup(Step):
    name, title = "backup", "Backup"
    changes = True  # it writes a backup table (never the data it backs up)

    def describe(self, run: Run) -> StepPlan:
        repo = run.repo
        lines = [f"record the current commit ({gitops.head(repo)[:12]} on "
                 f"{gitops.current_branch(repo) or 'detached HEAD'}) and the deployed version"]
        data: dict[str, Any] = {}
        for action in database_actions(run):
            if action.active(run.options):
                more, found = action.describe_backup(run)
                lines += more
                data.update(found)
        return self.plan(lines, data)

    def run(self, run: Run) -> Done:
        repo = run.repo
        api = health(run)
        facts: dict[str, Any] = {
            "original_head": gitops.head(repo),
            "original_branch": gitops.current_branch(repo),
            "original_version": api.version,
        }
        parts = [f"commit {facts['original_head'][:12]} on {facts['original_branch'] or 'detached HEAD'}, "
                 f"serving {(api.version or '?')[:12]}"]
        for action in database_actions(run):
            if action.active(run.options):
                more, found = action.backup(run)
                parts += more
                facts.update(found)
        return Done("; ".join(parts), facts)


# --- code ----------------------------------------------------------------------------------------


class RevertCode(Step):
    name, title = "code", "Revert code"
    changes = True

    def describe(self, run: Run) -> StepPlan:
        pending, _, history = phase_commits(run)
        lines = [f"create branch {run.rollback_branch} from "
                 f"{gitops.current_branch(run.repo) or 'HEAD'}"]
        data: dict[str, Any] = {"branch": run.rollback_branch, "commits": [c.sha for c in pending],
                                "subjects": [c.subject for c in pending]}
        if not pending:
            lines.append("nothing to revert")
        elif self._whole(run):
            lines += [f"revert {c.short} {c.subject}" for c in pending]
        else:
            plan = self._plan(run, pending)
            lines += plan.describe()
            data["phase_code"] = plan.as_dict()
        later = later_phases(history, run.options.phase)
        if later:
            lines.append(f"note: {', '.join(later)} still present and may depend on "
                         f"{run.options.phase}")
        return self.plan(lines, data)

    @staticmethod
    def _whole(run: Run) -> bool:
        """Whole commits by `git revert` for a phase that owns its commits, or for --commit. A
        --whole-commit run takes them back file by file instead (every file claimed, three-way):
        a later commit changing a file the commit added does not stop it."""
        return (phase_spec(run).whole_commits or bool(run.options.commit)) and not run.options.whole_commit

    @staticmethod
    def _plan(run: Run, pending: list[gitops.Commit]) -> phasecode.RevertPlan:
        code = (phasecode.PhaseCode(paths=("**",)) if run.options.whole_commit
                else phasecode.phase_code(phase_spec(run)))
        return phasecode.plan_revert(run.repo, [c.sha for c in pending], code)

    def _revert_phase_code(self, run: Run, pending: list[gitops.Commit]) -> list[dict[str, Any]]:
        """One commit taking back only the phase's files and hunks of its commits."""
        phase = run.options.phase
        plan = self._plan(run, pending)
        for line in plan.describe():
            run.note(f"code: {line}")
        subjects = "; ".join(f"{c.short} {c.subject}" for c in pending)
        phases = run_phases(run)
        trailers = "".join(f"{gitops.PHASE_REVERTED_TRAILER}: {p} {c.sha}\n"
                           for c in pending for p in phases)
        more = f" and {len(pending) - 1} more" if len(pending) > 1 else ""
        if run.options.whole_commit:
            message = (f"Revert {pending[0].short}{more} whole: {', '.join(phases)}\n\nTakes "
                       f"back every file of: {subjects} (--whole-commit).\n\n")
        else:
            message = (f"Revert {phase}'s code of {pending[0].short}{more}\n\nTakes back only "
                       f"{phase}'s files and hunks ([platform.phases.{phase}]) of: {subjects}. "
                       "The other phases of these commits stay.\n\n")
        message += f"{trailers}{gitops.RUN_TRAILER}: {run.run_id}\n"
        sha = phasecode.apply_revert(run.repo, plan, message)
        run.say(f"took back {phase}'s code of {subjects} -> {sha[:12]}")
        return [{"sha": c.sha, "subject": c.subject, "revert": sha, "phase_only": True}
                for c in pending]

    def run(self, run: Run) -> Done:
        repo = run.repo
        original_head = str(run.facts.get("original_head") or gitops.head(repo))
        original_branch = run.facts.get("original_branch", gitops.current_branch(repo))
        branch = run.rollback_branch
        resuming = gitops.branch_exists(repo, branch) and run.facts.get("rollback_branch") == branch
        if not resuming and not phase_commits(run)[0]:
            head = gitops.head(repo)
            return Done(f"nothing to revert: {run.options.phase}'s commits are reverted already; "
                        f"staying on {original_branch or 'HEAD'} at {head[:12]}",
                        {"commits_reverted": [], "new_head": head}, skipped=True)
        # journaled before the branch exists: a run killed right after creating it resumes on it
        run.remember(rollback_branch=branch, original_head=original_head,
                     original_branch=original_branch)
        if resuming:
            # resuming: our branch exists; throw away a half-made revert on it, keep the rest
            if gitops.current_branch(repo) != branch:
                gitops.git(repo, "checkout", "-q", "-f", branch)
            if gitops.operation_in_progress(repo) or gitops.dirty_files(repo):
                run.say(f"cleaning up a revert left half-done on {branch}")
                gitops.git(repo, "revert", "--abort", check=False)
                gitops.git(repo, "reset", "-q", "--hard", "HEAD")
        elif gitops.branch_exists(repo, branch) and run.record is None:
            raise StepFailed(f"branch {branch} exists already and is not this run's: "
                             "delete it or wait a second and rerun")
        elif gitops.branch_exists(repo, branch):  # this run's, from an attempt cut short
            gitops.git(repo, "checkout", "-q", "-f", branch)
        else:
            gitops.git(repo, "checkout", "-q", "-b", branch)
        pending, _, history = phase_commits(run)
        made = gitops.reverts_on_branch(repo, original_head, run.run_id)
        reverted: list[dict[str, Any]] = [
            {"sha": sha, "subject": next((c.subject for c in history.commits if c.sha == sha), ""),
             "revert": made[sha]} for sha in made]
        if pending and not self._whole(run):
            try:
                reverted += self._revert_phase_code(run, pending)
            except gitops.RevertConflict as conflict:
                gitops.restore_branch(repo, original_branch, original_head, branch)
                run.undo_step(self.name, "revert conflict", forget=["rollback_branch"])
                raise StepFailed(self._conflict_message(run, conflict, history)) from None
            except StepFailed:
                gitops.restore_branch(repo, original_branch, original_head, branch)
                run.undo_step(self.name, "revert failed", forget=["rollback_branch"])
                raise
            run.remember(commits_reverted=reverted)
            pending = []
        for commit in pending:
            try:
                revert_sha = gitops.revert(repo, commit, run.run_id)
            except gitops.RevertConflict as conflict:
                gitops.restore_branch(repo, original_branch, original_head, branch)
                run.undo_step(self.name, "revert conflict", forget=["rollback_branch"])
                raise StepFailed(self._conflict_message(run, conflict, history)) from None
            except StepFailed:
                gitops.restore_branch(repo, original_branch, original_head, branch)
                run.undo_step(self.name, "revert failed", forget=["rollback_branch"])
                raise
            run.say(f"reverted {commit.short} {commit.subject} -> {revert_sha[:12]}")
            reverted.append({"sha": commit.sha, "subject": commit.subject, "revert": revert_sha})
            run.remember(commits_reverted=reverted)
        new_head = gitops.head(repo)
        return Done(f"{len(reverted)} commit(s) reverted on {branch}, now at {new_head[:12]}",
                    {"commits_reverted": reverted, "new_head": new_head, "rollback_branch": branch})

    def _conflict_message(self, run: Run, conflict: gitops.RevertConflict,
                          history: gitops.History) -> str:
        later = later_phases(history, run.options.phase)
        touching = []
        for phase in later:
            for commit in history.phase_commits(phase):
                if set(gitops.files_of(run.repo, commit.sha)) & set(conflict.files):
                    touching.append(f"{phase} ({commit.short} {commit.subject})")
        others = [c.short + " " + c.subject for c in history.commits
                  if c.sha not in {x.sha for x in history.phase_commits(run.options.phase)}
                  and set(conflict.files) & set(gitops.files_of(run.repo, c.sha))
                  and history.commits.index(c) > history.commits.index(conflict.commit)]
        text = (f"reverting {conflict.commit.short} ({conflict.commit.subject}) conflicts in "
                f"{', '.join(conflict.files)}; the revert was aborted and the repository is back "
                f"on {run.facts.get('original_branch') or 'its commit'} as it was")
        if later:
            text += f"; later phases still present that depend on {run.options.phase}: {', '.join(later)}"
            if touching:
                text += f" (changing the same files: {', '.join(touching)})"
            text += f"; roll those back first (rollback run {later[-1]})"
        elif others:
            text += f"; later commits change the same files: {', '.join(others[:5])}"
        return text + "; or resolve the revert by hand and pass --commit"


def undo_code(run: Run, reason: str) -> str:
    """Take the revert back: the original branch checked out, the rollback branch deleted."""
    repo = run.repo
    original_head = str(run.facts.get("original_head") or gitops.head(repo))
    original_branch = run.facts.get("original_branch")
    gitops.restore_branch(repo, original_branch, original_head, run.rollback_branch)
    run.undo_step(RevertCode.name, reason,
                  forget=["rollback_branch", "commits_reverted", "new_head"])
    return f"the repository is back on {original_branch or original_head[:12]} at {original_head[:12]}"


# --- build ---------------------------------------------------------------------------------------


class Build(Step):
    name, title = "build", "Build"

    def describe(self, run: Run) -> StepPlan:
        command = run.settings.target.build_command
        if not command:
            return self.plan(["no build command configured ([target] build_command): skipped"],
                             {"command": None})
        return self.plan([f"run `{command}` in {run.repo} (timeout "
                          f"{run.settings.run.build_timeout_s:g} s); a failure stops the run "
                          "before anything is deployed and takes the revert back"],
                         {"command": command})

    def run(self, run: Run) -> Done:
        command = run.settings.target.build_command
        if not command:
            return Done("no build command configured: skipped", skipped=True)
        result = run_command(command, cwd=run.repo, timeout_s=run.settings.run.build_timeout_s,
                             on_line=lambda line: run.note(f"build: {line}"), pass_fds=run.lock_fds)
        if result.returncode != 0:
            why = (f"timed out after {run.settings.run.build_timeout_s:g} s" if result.timed_out
                   else f"exited with {result.returncode}")
            where = undo_code(run, f"build {why}")
            raise StepFailed(f"build `{command}` {why}: {run.redact(result.tail())}; nothing was "
                             f"deployed and {where}; see {run.log_path}")
        return Done(f"`{command}` succeeded in {result.duration_s:.1f} s ({run.redact(result.tail(1))})",
                    {"build": {"command": command, "duration_s": round(result.duration_s, 2)}})


# --- deploy --------------------------------------------------------------------------------------


class Deploy(Step):
    name, title = "deploy", "Deploy"
    changes = True

    def describe(self, run: Run) -> StepPlan:
        target = run.settings.target
        adapter = adapter_for(target.deploy_mode)
        head = str(run.facts.get("new_head") or gitops.head(run.repo))
        version = run.settings.platform.version
        wait = (f"then wait until {version.describe(target.api_base_url)} reports the deployed "
                f"commit (timeout {target.deploy_timeout_s:g} s)" if version_known(run) else
                f"then wait until the API is healthy (timeout {target.deploy_timeout_s:g} s); the "
                "profile names no version source, so the deploy itself cannot be confirmed")
        return self.plan([*adapter.describe(run, head), wait],
                         {"mode": target.deploy_mode, "command": target.deploy_command,
                          "timeout_s": target.deploy_timeout_s})

    def run(self, run: Run) -> Done:
        target = run.settings.target
        adapter = adapter_for(target.deploy_mode)
        head = str(run.facts.get("new_head") or gitops.head(run.repo))
        current = health(run)
        if version_known(run) and current.available and _same_version(current.version, head):
            return Done(f"{target.api_base_url} already serves {head[:12]}: nothing to deploy",
                        {"deployed_version": current.version, "deploy": {"mode": "none"}})
        started = time.monotonic()
        try:
            deployment = adapter.start(run, head)
        except StepFailed as exc:
            raise self._failed(run, str(exc), head, adapter.leaves_original_on_failure) from None
        remaining = max(1.0, target.deploy_timeout_s - (time.monotonic() - started))
        seen = wait_for_version(run, deployment.expected, remaining)
        if not seen.available or (version_known(run) and not _same_version(seen.version,
                                                                             deployment.expected)):
            source = run.settings.platform.version.describe(target.api_base_url)
            raise self._failed(run, f"{source} did not report {deployment.expected[:12]} within "
                                    f"{target.deploy_timeout_s:g} s (last: {seen.describe()})",
                               deployment.expected, adapter.leaves_original_on_failure)
        took = time.monotonic() - started
        return Done(f"{target.api_base_url} serves {deployment.expected[:12]} after {took:.1f} s "
                    f"({deployment.how})",
                    {"deployed_version": seen.version, **deployment.facts,
                     "deploy": {"mode": target.deploy_mode, "how": deployment.how,
                                "duration_s": round(took, 2), "at": iso(utc_now())}})

    def _failed(self, run: Run, why: str, expected: str, original_stays: bool) -> StepFailed:
        now = health(run)
        original = run.facts.get("original_version")
        # a database step before the deploy (FASE 2's conversion) has run: the data is changed
        changed = [a for a in database_actions(run) if a.before_deploy and a.active(run.options)]
        if original_stays and now.available and original and _same_version(now.version, str(original)):
            if not changed:
                where = undo_code(run, "deploy did not take")
                return StepFailed(f"{why}; the API still serves the original {str(original)[:12]}, "
                                  f"so nothing changed: {where}. Fix the deployment and rerun")
            hints = "; or ".join(h for a in changed for h in [a.undo_hint(run)] if h)
            return StepFailed(f"{why}; the API still serves the original {str(original)[:12]}, "
                              f"whose code reads the database as changed before the deploy; the "
                              f"rollback branch {run.rollback_branch} stays checked out: fix the "
                              f"deployment and rerun `rollback run {run.options.phase}` to "
                              f"continue, or {hints}")
        return StepFailed(f"{why}; check the deployment: the rollback branch "
                          f"{run.rollback_branch} ({expected[:12]}) stays checked out; once "
                          f"{expected[:12]} is live, rerun `rollback run {run.options.phase}` to "
                          "continue")


def _same_version(reported: str | None, expected: str) -> bool:
    return bool(reported) and version_matches(str(reported), expected)


def wait_for_version(run: Run, expected: str, timeout_s: float) -> probes.ApiHealth:
    """Poll /health until it answers healthy with `expected`, or the time is up (no fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    interval = min(run.settings.run.health_poll_s, 0.25)
    last = health(run)
    # With no version source, healthy is all that can be seen (the README says so).
    while not (last.available and (_same_version(last.version, expected) or not version_known(run))):
        if time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, run.settings.run.health_poll_s)
        last = health(run)
    return last


# --- publish -------------------------------------------------------------------------------------


class Publish(Step):
    """The deploy branch gets the revert, so that the next deploy from it does not ship the phase
    again (a git-integrated Vercel project deploys every push to `main`)."""

    name, title = "publish", "Publish on the deploy branch"
    changes = True

    def describe(self, run: Run) -> StepPlan:
        target = run.settings.target
        if run.options.keep_deploy_branch:
            return StepPlan(self.name, self.title, [keep_warning(run)], {"kept": True}, False, "skip")
        if adapter_for(target.deploy_mode).publishes:
            return StepPlan(self.name, self.title, [f"done by the deploy: {target.branch} is pushed "
                                                    "with the revert"], {}, False, "skip")
        return self.plan(git_deploy.publish_lines(run), {"branch": target.branch})

    def run(self, run: Run) -> Done:
        if run.options.keep_deploy_branch:
            run.say(keep_warning(run), "bold yellow")
            return Done(keep_warning(run), {"published": None}, skipped=True)
        if adapter_for(run.settings.target.deploy_mode).publishes:
            return Done("done by the deploy", skipped=True)
        head = str(run.facts.get("new_head") or gitops.head(run.repo))
        facts = git_deploy.publish(run, head)
        where = f" and pushed to {facts['remote']}" if facts["remote"] else " (no remote: locally only)"
        return Done(f"{facts['branch']} at {str(facts['head'])[:12]} carries the revert"
                    f"{where}", {"published": facts})


def keep_warning(run: Run) -> str:
    """The first line of the plan and of the summary of a run with --keep-deploy-branch."""
    branch = run.settings.target.branch
    return (f"WARNING: --keep-deploy-branch: {branch} keeps {', '.join(run_phases(run))}; the "
            f"next deploy from {branch} ships it again (the revert is on {run.rollback_branch} only)")


# --- gate ----------------------------------------------------------------------------------------


def write_run_context(run: Run, phase: str | None = None) -> Path:
    """The run context the checks of `phase` (default: the run's) read (--run-context), from
    this run's facts."""
    phase = phase or run.options.phase
    from checks.run_context import Baseline as CtxBaseline
    from checks.run_context import Fase2Backup as CtxBackup
    from checks.run_context import KeyCounts as CtxCounts
    from checks.run_context import RunContext

    baseline = run.facts.get("baseline") or {}
    backup = run.facts.get("fase2_backup")
    fase2 = None
    if isinstance(backup, dict):
        counts = backup["key_counts_before"]
        fase2 = CtxBackup(schema=backup["schema"], table=backup["table"],
                          row_count=int(backup["row_count"]),
                          key_counts_before=CtxCounts(int(counts["total"]), int(counts["active"])),
                          csv=Path(backup["csv"]) if backup.get("csv") else None)
    objects: tuple[str, ...] = ()
    if phase == "fase3":
        objects = tuple(o.label for o in fase3_objects(run))
    context = RunContext(
        run_id=run.run_id, phase=phase,  # type: ignore[arg-type]
        expected_version=run.facts.get("deployed_version") or run.facts.get("new_head"),
        baseline=CtxBaseline(p95_ms=dict(baseline.get("p95_ms") or {}),
                             error_rate=baseline.get("error_rate")) if baseline else None,
        fase2_backup=fase2 if phase == "fase2" else None,
        fase3_db_option=run.options.db_option if phase == "fase3" else None,  # type: ignore[arg-type]
        fase3_objects=objects,
    )
    path = run.dir / ("run-context.json" if phase == run.options.phase else f"run-context-{phase}.json")
    write_private(path, json.dumps(context.to_json(), indent=2) + "\n")  # 0600 from the start
    return path


class Gate(Step):
    name, title = "gate", "Validation gate"

    def describe(self, run: Run) -> StepPlan:
        gate, phases = run.settings.gate, run_phases(run)
        return self.plan([f"run the {' and '.join(phases)} checks (`-m PHASE`, which includes the "
                          "health checks) with --gate and this run's context, until they pass "
                          f"{gate.passes_required} time(s) in a row or {gate.deadline_s:g} s have "
                          f"passed ({gate.interval_s:g} s apart)"
                          + (", one phase after the other" if len(phases) > 1 else ""),
                          f"reports (HTML, JUnit{', Allure' if gate.allure else ''}) under "
                          f"{run.report_dir / 'gate'}"],
                         {"selection": " or ".join(phases), "passes_required": gate.passes_required,
                          "deadline_s": gate.deadline_s})

    def run(self, run: Run) -> Done:
        phases = run_phases(run)
        results = {phase: self._phase(run, phase, len(phases) > 1) for phase in phases}
        failed = [phase for phase, facts in results.items() if not facts["passed"]]
        first = results[failed[0]] if failed else results[phases[-1]]
        facts = {"gate": {**first, "passed": not failed,
                          "failed_checks": [c for r in results.values() for c in r["failed_checks"]],
                          "passed_checks": sum(r["passed_checks"] for r in results.values()),
                          "warnings": sum(r["warnings"] for r in results.values()),
                          "phases": results if len(phases) > 1 else None}}
        if failed:
            run.remember(**facts)
            hints = [h for a in database_actions(run) if a.active(run.options)
                     for h in [a.undo_hint(run)] if h]
            failing = facts["gate"]["failed_checks"]
            raise GateFailed(
                f"the {' and '.join(failed)} gate failed ({len(failing)} checks failing: "
                f"{'; '.join(failing[:2]) or 'see the report'}); report {first['report']}. The "
                f"change is in place (branch {run.rollback_branch}). Next: read the report; rerun "
                f"`rollback run {run.options.phase}` to re-check once fixed, or "
                + "".join(f"{h} and " for h in hints)
                + f"redeploy {str(run.facts.get('original_head', ''))[:12]} to go back")
        return Done("; ".join(f"{p}: passed {r['streak']} time(s) in a row ({r['attempts']} "
                              f"attempt(s)), {r['passed_checks']} checks passed, {r['warnings']} "
                              f"with warnings; report {r['report']}" for p, r in results.items()),
                    facts)

    @staticmethod
    def _phase(run: Run, phase: str, several: bool) -> dict[str, Any]:
        from rollback.validate import run_validation

        gate = run.settings.gate
        context = write_run_context(run, phase)
        reports = run.report_dir / "gate" / (phase if several else "")
        deadline = time.monotonic() + gate.deadline_s
        streak, attempts, history = 0, 0, []
        while True:
            attempts += 1
            last = run_validation(phase, reports_root=reports,  # type: ignore[arg-type]
                                  gate=True, run_context=context, allure=gate.allure,
                                  timeout_s=max(30.0, deadline - time.monotonic() + 60))
            passed = last.exit_code == 0
            streak = streak + 1 if passed else 0
            history.append({"attempt": attempts, "passed": passed, "failed": last.failed,
                            "report": str(last.html)})
            run.say(f"{phase + ' ' if several else ''}attempt {attempts}: {last.summary()}",
                    None if passed else "yellow")
            if last.exit_code == 2:
                break  # bad usage: retrying will not help
            if streak >= gate.passes_required or time.monotonic() + gate.interval_s >= deadline:
                break
            time.sleep(gate.interval_s)
        failing = [f"{c.nodeid}: {c.message.splitlines()[0] if c.message else ''}"
                   for c in last.checks if c.verdict == "fail"][:5]
        return {"passed": streak >= gate.passes_required, "attempts": attempts, "streak": streak,
                "required": gate.passes_required, "failed_checks": failing,
                "passed_checks": last.passed, "warnings": last.warned,
                "report": str(last.html), "junit": str(last.junit_xml),
                "allure": str(last.allure_results) if last.allure_results else None,
                "report_dir": str(last.report_dir),
                "history": history, "run_context": str(context)}


# --- communication -------------------------------------------------------------------------------


class Communicate(Step):
    name, title = "communicate", "Communication"
    after_gate_failure = True

    def describe(self, run: Run) -> StepPlan:
        from rollback.runs import comms

        names = comms.documents_for(run_phases(run))
        urls = run.settings.secrets.notify_urls is not None
        return self.plan([f"render {', '.join(names)} with this run's facts into "
                          f"{run.report_dir / 'communication'}",
                          "send the Slack summary through Apprise (ROLLBACK_NOTIFY_URLS is set)"
                          if urls else "ROLLBACK_NOTIFY_URLS is not set: files only, nothing sent"],
                         {"documents": names, "notify": urls})

    def run(self, run: Run) -> Done:
        from rollback.runs import comms

        written = comms.render_all(run)
        sent = comms.notify(run)
        how = "ROLLBACK_NOTIFY_URLS not set: nothing sent" if sent is None else \
            f"summary sent to {sent} notification URL(s)"
        return Done(f"{len(written)} documents in {run.report_dir / 'communication'}; {how}",
                    {"communication": {"dir": str(run.report_dir / "communication"),
                                       "files": [str(p) for p in written], "sent": sent}})
