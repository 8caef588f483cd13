"""The steps the drivers are made of. Each one is usable and testable on its own:

    Preflight      configuration, repository clean, database and API reachable, locks, phase state
    Baseline       p95 latency per endpoint and error rate before the change
    Backup         the current commit and deployed version; FASE 2: the pre-image of every key
                   that will change; FASE 3 option 2: the definition of every object to drop
    RevertCode     the phase's commits reverted, newest first, on `rollback/faseN-<stamp>`
    Build          the configured build; a failure takes the revert back and stops
    Deploy         command, push or manual; then /health must report the new version
    ConvertKeys    FASE 2: branch keys become tenant keys, in resumable batches
    DropObjects    FASE 3: option 2 drops the migration's objects and verifies each is gone
    Gate           the phase's checks with --gate until they pass N times in a row
    Communicate    the guide's messages rendered with the run's facts; sent if URLs are set
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from rollback import probes
from rollback.errors import ConfigError, GateFailed, StepFailed, UsageError
from rollback.fase3 import objects_in_repo
from rollback.http import bounded_client
from rollback.profile import PhaseSpec, version_matches
from rollback.rls import require_sight
from rollback.runs import dbops, gitops, phasecode
from rollback.runs.core import PHASES, Done, Run, Step, StepPlan, run_command
from rollback.runs.journal import iso, utc_now
from rollback.runs.locks import (
    DatabaseLock,
    RepoLock,
    advisory_holder,
    describe_holder,
    first_line,
    is_held,
    read_holder,
)

#: the plan lists keys one by one up to these numbers (its --json form lists all)
MAX_TENANTS_LISTED, MAX_KEYS_LISTED = 200, 25


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
        if others:
            raise UsageError(
                f"--commit {commit.short} carries {', '.join(sorted(others))} too, not only "
                f"{phase} ({_claims(others)}): reverting it would take those phases back with "
                f"{phase}; run `rollback run {phase}` without --commit to take back only "
                f"{phase}'s files and hunks ([platform.phases.{phase}])")
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


def fase3_objects(run: Run) -> list[dbops.DbObject]:
    """The objects FASE 3's migrations create, read from them as they stand in the repository
    ([platform.phases.fase3] migrations): a migration renamed and rewritten after the phase commit
    gives today's names, not the phase commit's."""
    cached = run.facts.get("fase3_objects_parsed")
    if isinstance(cached, list):
        return [dbops.DbObject(**o) for o in cached]
    return list(objects_in_repo(run.settings.platform, run.repo).objects)


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
        if target.deploy_mode == "command" and not target.deploy_command:
            raise ConfigError("[target] deploy_mode = \"command\" needs deploy_command")
        if target.deploy_mode == "push" and target.remote not in gitops.remotes(repo):
            raise ConfigError(f"[target] remote = \"{target.remote}\": {repo} has no such remote "
                              f"(it has: {', '.join(gitops.remotes(repo)) or 'none'}); "
                              "deploy_mode = \"push\" deploys by pushing there")
        run.settings.require_api_key()
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
        if run.options.phase == "fase2":
            with dbops.read_only(run.database_url) as conn:
                database_pending = sum(len(t.keys) for t in dbops.branch_keys_now(conn))
            data["branch_keys"] = database_pending
        elif run.options.touches_database:
            with dbops.read_only(run.database_url) as conn:
                objects = fase3_objects(run)
                database_pending = sum(1 for o in objects if dbops.inspect_object(conn, o).present)
            data["objects_present"] = database_pending
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
        if run.options.touches_database:
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
        if run.options.touches_database:
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
        locks = "repository" + (" and database" if run.options.touches_database else "")
        return Done(f"{text}; {locks} locked; " + "; ".join(state_lines[:1]),
                    {"preflight": {"head": head, "branch": branch,
                                   "checks": [text, *reach, *room]}})


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
        p95 = {s.path: round(s.p95_ms, 1) for s in samples if s.p95_ms is not None}
        rate = probes.error_rate(samples)
        parts = [f"{path} p95 {value:.0f} ms" for path, value in p95.items()]
        for s in samples:
            if s.p95_ms is None:
                parts.append(f"{s.path}: no successful answer ({s.outcomes})")
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
        schema = run.settings.run.backup_schema
        if run.options.phase == "fase2":
            with dbops.read_only(run.database_url) as conn:
                tenants = dbops.branch_keys_now(conn)
            keys = sum(len(t.keys) for t in tenants)
            lines.append(f"copy the {keys} branch-scoped keys (all columns, as they are) into "
                         f"{schema}.{dbops.backup_table_name(run.run_id)} and "
                         f"{run.dir / 'api_keys_backup.csv'} (mode 0600), with a checksum")
            data["keys"] = keys
        if run.options.phase == "fase3" and run.options.db_option == 2:
            objects = fase3_objects(run)
            lines.append(f"save the definitions of the {len(objects)} FASE 3 objects to "
                         f"{run.dir / 'fase3_objects.json'} (pg_get_indexdef / functiondef / viewdef)")
            data["objects"] = [o.label for o in objects]
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
        if run.options.phase == "fase2":
            csv_path = run.dir / "api_keys_backup.csv"
            with dbops.connect(run.database_url, application_name=f"rollback {run.run_id}") as conn:
                backup = dbops.backup_fase2(conn, schema=run.settings.run.backup_schema,
                                            run_id=run.run_id, csv_path=csv_path)
                tenants, active = dbops.affected_counts(conn, backup.schema, backup.table)
            facts["fase2_backup"] = backup.as_facts()
            facts["affected"] = {"tenants": tenants, "keys": backup.row_count, "active_keys": active}
            parts.append(f"{backup.row_count} branch keys of {tenants} tenants in "
                         f"{backup.schema}.{backup.table} and {csv_path.name} "
                         f"(checksum {backup.checksum[:12]})")
        if run.options.phase == "fase3" and run.options.db_option == 2:
            objects = fase3_objects(run)
            path = run.dir / "fase3_objects.json"
            with dbops.read_only(run.database_url) as conn:
                states = [dbops.inspect_object(conn, o) for o in objects]
            missing = [s.obj.label for s in states if not s.present]
            write_private(path, json.dumps({"run_id": run.run_id, "objects": [s.as_dict() for s in states]},
                                           indent=2) + "\n")
            facts["fase3_objects_parsed"] = [o.as_dict() for o in objects]
            facts["fase3_backup"] = {"file": str(path), "sha256": dbops.file_sha256(path),
                                     "objects": [o.label for o in objects],
                                     "present": len(states) - len(missing), "missing": missing}
            parts.append(f"{len(states) - len(missing)} of {len(states)} object definitions "
                         f"in {path.name}")
            if missing:
                run.say(f"not in the database (nothing to drop): {', '.join(missing)}", "yellow")
        return Done("; ".join(parts), facts)


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


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
        """Whole commits (git revert) for a phase that owns its commits, or for --commit."""
        return phase_spec(run).whole_commits or bool(run.options.commit)

    @staticmethod
    def _plan(run: Run, pending: list[gitops.Commit]) -> phasecode.RevertPlan:
        return phasecode.plan_revert(run.repo, [c.sha for c in pending],
                                     phasecode.phase_code(phase_spec(run)))

    def _revert_phase_code(self, run: Run, pending: list[gitops.Commit]) -> list[dict[str, Any]]:
        """One commit taking back only the phase's files and hunks of its commits."""
        phase = run.options.phase
        plan = self._plan(run, pending)
        for line in plan.describe():
            run.note(f"code: {line}")
        subjects = "; ".join(f"{c.short} {c.subject}" for c in pending)
        trailers = "".join(f"{gitops.PHASE_REVERTED_TRAILER}: {phase} {c.sha}\n" for c in pending)
        message = (f"Revert {phase}'s code of {pending[0].short}"
                   + (f" and {len(pending) - 1} more" if len(pending) > 1 else "")
                   + f"\n\nTakes back only {phase}'s files and hunks ([platform.phases.{phase}]) "
                   f"of: {subjects}. The other phases of these commits stay.\n\n"
                   f"{trailers}{gitops.RUN_TRAILER}: {run.run_id}\n")
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
        how = {
            "command": f"run `{target.deploy_command}` in {run.repo}",
            "push": f"push {run.rollback_branch} to {target.remote} as {target.branch}",
            "manual": "ask an operator to deploy the rollback branch and confirm",
        }[target.deploy_mode]
        version = run.settings.platform.version
        wait = (f"then wait until {version.describe(target.api_base_url)} reports the reverted "
                f"commit (timeout {target.deploy_timeout_s:g} s)" if version.source != "none" else
                f"then wait until the API is healthy (timeout {target.deploy_timeout_s:g} s); the "
                "profile names no version source, so the deploy itself cannot be confirmed")
        return self.plan([how, wait],
                         {"mode": target.deploy_mode, "command": target.deploy_command,
                          "timeout_s": target.deploy_timeout_s})

    def run(self, run: Run) -> Done:
        target = run.settings.target
        expected = str(run.facts.get("new_head") or gitops.head(run.repo))
        current = health(run)
        if version_known(run) and current.available and _same_version(current.version, expected):
            return Done(f"{target.api_base_url} already serves {expected[:12]}: nothing to deploy",
                        {"deployed_version": current.version, "deploy": {"mode": "none"}})
        started = time.monotonic()
        if target.deploy_mode == "command":
            assert target.deploy_command
            result = run_command(target.deploy_command, cwd=run.repo,
                                 timeout_s=target.deploy_timeout_s,
                                 on_line=lambda line: run.note(f"deploy: {line}"),
                                 pass_fds=run.lock_fds)
            if result.returncode != 0:
                raise self._failed(run, f"deploy command exited with {result.returncode}: "
                                        f"{run.redact(result.tail())}", expected)
        elif target.deploy_mode == "push":
            gitops.git(run.repo, "push", "-q", target.remote,
                       f"{run.rollback_branch}:refs/heads/{run.rollback_branch}")
            gitops.git(run.repo, "push", "-q", target.remote, f"HEAD:refs/heads/{target.branch}")
            run.say(f"pushed {expected[:12]} to {target.remote}/{target.branch}")
        else:
            run.say(f"deploy commit {expected[:12]} (branch {run.rollback_branch}) now; "
                    f"waiting up to {target.deploy_timeout_s:g} s for /health to report it", "bold")
            if run.ui.interactive:
                run.ui.ask("press Enter once the deployment is started")
        remaining = max(1.0, target.deploy_timeout_s - (time.monotonic() - started))
        seen = wait_for_version(run, expected, remaining)
        if not seen.available or (version_known(run) and not _same_version(seen.version, expected)):
            source = run.settings.platform.version.describe(target.api_base_url)
            raise self._failed(run, f"{source} did not report {expected[:12]} within "
                                    f"{target.deploy_timeout_s:g} s (last: {seen.describe()})",
                               expected)
        took = time.monotonic() - started
        return Done(f"{target.api_base_url} serves {expected[:12]} after {took:.1f} s",
                    {"deployed_version": seen.version,
                     "deploy": {"mode": target.deploy_mode, "duration_s": round(took, 2),
                                "at": iso(utc_now())}})

    def _failed(self, run: Run, why: str, expected: str) -> StepFailed:
        now = health(run)
        original = run.facts.get("original_version")
        if (run.settings.target.deploy_mode != "push" and now.available and original
                and _same_version(now.version, str(original))):
            where = undo_code(run, "deploy did not take")
            return StepFailed(f"{why}; the API still serves the original {str(original)[:12]}, "
                              f"so nothing changed: {where}. Fix the deployment and rerun")
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
        remote = target.remote if target.remote in gitops.remotes(run.repo) else None
        lines = [f"merge {run.rollback_branch} into {target.branch} (a fast-forward when "
                 f"{target.branch} has not moved) and check {target.branch} out"]
        lines.append(f"push {target.branch} to {remote}" if remote else
                     f"no remote {target.remote!r}: {target.branch} is updated locally only")
        return self.plan(lines, {"branch": target.branch, "remote": remote})

    def run(self, run: Run) -> Done:
        repo, target = run.repo, run.settings.target
        head = str(run.facts.get("new_head") or gitops.head(repo))
        deploy = target.branch
        if not gitops.branch_exists(repo, deploy):
            raise StepFailed(f"the deploy branch {deploy!r} ([target] branch) does not exist in "
                             f"{repo}: the revert stays on {run.rollback_branch} only; merge it "
                             "into the branch your platform deploys from")
        contains = gitops.git(repo, "merge-base", "--is-ancestor", head, deploy,
                              check=False).returncode == 0
        if gitops.current_branch(repo) != deploy:
            gitops.git(repo, "checkout", "-q", deploy)
        if not contains:
            merged = gitops.git(repo, "merge", "-q", "--ff", "--no-edit", "-m",
                                f"Merge {run.rollback_branch}: roll {run.options.phase} back\n\n"
                                f"{gitops.RUN_TRAILER}: {run.run_id}", head, check=False)
            if merged.returncode != 0:
                gitops.git(repo, "merge", "--abort", check=False)
                gitops.git(repo, "checkout", "-q", "-f", run.rollback_branch)
                raise StepFailed(
                    f"{deploy} moved since the rollback began and does not merge with "
                    f"{run.rollback_branch} ({gitops.git_error(merged)}): the rollback is live "
                    f"but {deploy} still carries {run.options.phase}, so its next deploy ships "
                    f"it again; merge {run.rollback_branch} into {deploy} by hand, then rerun "
                    f"`rollback run {run.options.phase}` to finish")
        published = gitops.head(repo)
        pushed = None
        if target.remote in gitops.remotes(repo):
            done = gitops.git(repo, "push", "-q", target.remote, f"{deploy}:refs/heads/{deploy}",
                              check=False)
            if done.returncode != 0:
                raise StepFailed(f"push of {deploy} to {target.remote} failed "
                                 f"({gitops.git_error(done)}): {deploy} carries the revert "
                                 "locally only; push it, then rerun to finish")
            pushed = target.remote
        where = f" and pushed to {pushed}" if pushed else " (no remote: locally only)"
        return Done(f"{deploy} at {published[:12]} carries the revert{where}",
                    {"published": {"branch": deploy, "head": published, "remote": pushed}})


# --- database ------------------------------------------------------------------------------------


def still_locked(run: Run) -> None:
    """Stop before changing the database further if the run's advisory lock is gone (its session
    was ended on the server): another run could take it and work on the same rows."""
    if run.db_lock is not None and not run.db_lock.held():
        raise StepFailed("lost the database lock of this run (its session was ended on the "
                         "server); stopped before the next change: run "
                         f"`rollback run {run.options.phase}` again to take it back and continue")


class ConvertKeys(Step):
    name, title = "database", "Convert branch keys"
    changes = True

    def describe(self, run: Run) -> StepPlan:
        settings = run.settings.run
        with dbops.read_only(run.database_url) as conn:
            tenants = dbops.branch_keys_now(conn)
        keys = sum(len(t.keys) for t in tenants)
        lines = [f"convert {keys} branch keys of {len(tenants)} tenants to tenant keys "
                 f"(scope_type 'tenant', branch_id NULL) in batches of {settings.batch_size}, "
                 f"lock_timeout {settings.lock_timeout_ms} ms, {settings.batch_retries} retries; "
                 "no key is deleted or deactivated",
                 "these keys will read every branch of their tenant (access widens):"]
        for tenant in tenants[:MAX_TENANTS_LISTED]:
            lines.append(f"  {tenant.name} ({tenant.slug}, {tenant.branches} branches): "
                         f"{len(tenant.keys)} keys")
            lines += [f"    {k.label()}" for k in tenant.keys[:MAX_KEYS_LISTED]]
            if len(tenant.keys) > MAX_KEYS_LISTED:
                lines.append(f"    ... and {len(tenant.keys) - MAX_KEYS_LISTED} more "
                             "(`rollback plan fase2 --json` lists every key)")
        if len(tenants) > MAX_TENANTS_LISTED:
            lines.append(f"  ... and {len(tenants) - MAX_TENANTS_LISTED} more tenants "
                         "(`rollback plan fase2 --json` lists them all)")
        return self.plan(lines, {"keys": keys, "key_ids": sorted(k.id for t in tenants for k in t.keys),
                                 "tenants": {t.slug: len(t.keys) for t in tenants}})

    def run(self, run: Run) -> Done:
        backup = run.facts.get("fase2_backup")
        if not isinstance(backup, dict):
            raise StepFailed("no FASE 2 backup in this run's facts: the backup step must run first")
        settings = run.settings.run
        policy = dbops.BatchPolicy(settings.batch_size, settings.lock_timeout_ms,
                                   settings.batch_retries, settings.retry_backoff_s)
        try:
            with dbops.connect(run.database_url, application_name=f"rollback {run.run_id}") as conn:
                result = dbops.convert_branch_keys(conn, schema=backup["schema"],
                                                   table=backup["table"], run_id=run.run_id,
                                                   policy=policy, log=run.say,
                                                   guard=lambda: still_locked(run))
                facts: dict[str, Any] = {"conversion": {
                    "batches": result.batches, "converted": result.converted,
                    "retries": result.retries, "late_keys": result.late_keys,
                    "resumed_after_batch": result.resumed_after}}
                if result.late_keys:
                    found = dbops.existing_backup(conn, backup["schema"], run.run_id)
                    assert found is not None
                    csv_path = Path(backup["csv"])
                    sha = dbops.write_backup_csv(conn, backup["schema"], backup["table"], csv_path)
                    facts["fase2_backup"] = {**backup, "row_count": found["row_count"],
                                             "checksum": found["checksum"], "csv_sha256": sha}
        except psycopg.OperationalError as exc:  # the server went away, or ended our session
            raise StepFailed(f"lost the database connection during the key conversion "
                             f"({first_line(exc)}): the batches committed so far stay converted; "
                             "run `rollback run fase2` again to continue from there") from None
        if result.remaining:
            raise StepFailed(f"{result.remaining} keys are still branch-scoped after the "
                             "conversion: rerun to continue")
        resumed = f", resumed after batch {result.resumed_after}" if result.resumed_after else ""
        return Done(f"{result.converted} keys converted in {result.batches} batches "
                    f"({result.retries} retries{resumed}); no branch key remains", facts)


class DropObjects(Step):
    name, title = "database", "FASE 3 database objects"
    changes = True

    def describe(self, run: Run) -> StepPlan:
        objects = fase3_objects(run)
        if run.options.db_option != 2:
            return StepPlan(self.name, self.title,
                            [f"option 1: keep FASE 3's {len(objects)} database objects (indexes, "
                             "functions, views, materialized view); only the code is reverted"],
                            {"option": 1, "objects": []}, changes=False)
        with dbops.read_only(run.database_url) as conn:
            states = {o: dbops.inspect_object(conn, o) for o in objects}
        lines = ["option 2: drop FASE 3's objects, named by its migration, dependants first, "
                 "and verify each is gone:"]
        for obj in dbops.drop_order(objects):
            how = "DROP INDEX CONCURRENTLY" if obj.kind == "index" else f"DROP {obj.kind.upper()}"
            lines.append(f"  {how} {obj.label}" + ("" if states[obj].present
                                                   else "   (not in the database: nothing to drop)"))
        return StepPlan(self.name, self.title, lines,
                        {"option": 2, "objects": [o.label for o in dbops.drop_order(objects)],
                         "present": [o.label for o in objects if states[o].present]}, changes=True)

    def run(self, run: Run) -> Done:
        if run.options.db_option != 2:
            return Done("option 1: FASE 3's database objects kept", {"fase3_dropped": []},
                        skipped=True)
        objects = fase3_objects(run)
        lock_ms = run.settings.run.lock_timeout_ms
        # journaled as it goes; a resumed run continues the list its earlier attempts left
        so_far: list[str] = list(run.facts.get("fase3_dropped") or [])
        retries = 0
        try:
            with dbops.connect(run.database_url, autocommit=True,
                               application_name=f"rollback {run.run_id}") as conn:
                for obj in dbops.drop_order(objects):
                    state = dbops.inspect_object(conn, obj)
                    if not state.present:
                        continue
                    for attempt in range(run.settings.run.batch_retries + 1):
                        still_locked(run)
                        try:
                            dbops.drop_object(conn, state, lock_ms)
                            break
                        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                            if attempt == run.settings.run.batch_retries:
                                raise StepFailed(f"cannot drop {obj.label}: {first_line(exc)} "
                                                 f"after {attempt} retries; rerun to continue") from None
                            retries += 1
                            time.sleep(dbops.backoff(run.settings.run.retry_backoff_s, attempt))
                        except psycopg.errors.DependentObjectsStillExist as exc:
                            raise StepFailed(f"cannot drop {obj.label}: {first_line(exc)}; "
                                             "something outside FASE 3 depends on it") from None
                    if obj.label not in so_far:
                        so_far.append(obj.label)
                    run.remember(fase3_dropped=so_far)
                    run.say(f"dropped {obj.kind} {obj.label}")
                left = [o.label for o in objects if dbops.inspect_object(conn, o).present]
        except psycopg.OperationalError as exc:  # the server went away, or ended our session
            raise StepFailed(f"lost the database connection while dropping FASE 3's objects "
                             f"({first_line(exc)}): what was dropped stays dropped; run "
                             "`rollback run fase3` again to continue from there") from None
        if left:
            raise StepFailed(f"still present after dropping: {', '.join(left)}")
        # What the run dropped, over all its attempts: every object there when it backed them up
        # (all gone now, verified), also one dropped by an attempt killed before journaling it.
        absent = set((run.facts.get("fase3_backup") or {}).get("missing") or [])
        dropped = [o.label for o in dbops.drop_order(objects) if o.label not in absent]
        return Done(f"{len(dropped)} objects dropped; verified none of the {len(objects)} remains",
                    {"fase3_dropped": dropped, "fase3_drop_retries": retries})


# --- gate ----------------------------------------------------------------------------------------


def write_run_context(run: Run) -> Path:
    """The run context the checks read (--run-context), from this run's facts."""
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
    if run.options.phase == "fase3":
        objects = tuple(o.label for o in fase3_objects(run))
    context = RunContext(
        run_id=run.run_id, phase=run.options.phase,  # type: ignore[arg-type]
        expected_version=run.facts.get("deployed_version") or run.facts.get("new_head"),
        baseline=CtxBaseline(p95_ms=dict(baseline.get("p95_ms") or {}),
                             error_rate=baseline.get("error_rate")) if baseline else None,
        fase2_backup=fase2,
        fase3_db_option=run.options.db_option if run.options.phase == "fase3" else None,  # type: ignore[arg-type]
        fase3_objects=objects,
    )
    path = run.dir / "run-context.json"
    write_private(path, json.dumps(context.to_json(), indent=2) + "\n")  # 0600 from the start
    return path


class Gate(Step):
    name, title = "gate", "Validation gate"

    def describe(self, run: Run) -> StepPlan:
        gate = run.settings.gate
        return self.plan([f"run the {run.options.phase} checks (`-m {run.options.phase}`, which "
                          "includes the health checks) with --gate and this run's context, until "
                          f"they pass {gate.passes_required} time(s) in a row or "
                          f"{gate.deadline_s:g} s have passed ({gate.interval_s:g} s apart)",
                          f"reports (HTML, JUnit, Allure) under {run.report_dir / 'gate'}"],
                         {"selection": run.options.phase, "passes_required": gate.passes_required,
                          "deadline_s": gate.deadline_s})

    def run(self, run: Run) -> Done:
        from rollback.validate import run_validation

        gate = run.settings.gate
        context = write_run_context(run)
        deadline = time.monotonic() + gate.deadline_s
        streak, attempts, history = 0, 0, []
        last = None
        while True:
            attempts += 1
            last = run_validation(run.options.phase, reports_root=run.report_dir / "gate",  # type: ignore[arg-type]
                                  gate=True, run_context=context,
                                  timeout_s=max(30.0, deadline - time.monotonic() + 60))
            passed = last.exit_code == 0
            streak = streak + 1 if passed else 0
            history.append({"attempt": attempts, "passed": passed, "failed": last.failed,
                            "report": str(last.html)})
            run.say(f"attempt {attempts}: {last.summary()}", None if passed else "yellow")
            if last.exit_code == 2:
                break  # bad usage: retrying will not help
            if streak >= gate.passes_required or time.monotonic() + gate.interval_s >= deadline:
                break
            time.sleep(gate.interval_s)
        ok = streak >= gate.passes_required
        failing = [f"{c.nodeid}: {c.message.splitlines()[0] if c.message else ''}"
                   for c in last.checks if c.verdict == "fail"][:5]
        facts = {"gate": {"passed": ok, "attempts": attempts, "streak": streak,
                          "required": gate.passes_required, "failed_checks": failing,
                          "passed_checks": last.passed, "warnings": last.warned,
                          "report": str(last.html), "junit": str(last.junit_xml),
                          "allure": str(last.allure_results), "report_dir": str(last.report_dir),
                          "history": history, "run_context": str(context)}}
        if not ok:
            run.remember(**facts)
            raise GateFailed(
                f"the {run.options.phase} gate failed ({last.failed} checks failing after "
                f"{attempts} attempt(s): {'; '.join(failing[:2]) or 'see the report'}); report "
                f"{last.html}. The change is in place (branch {run.rollback_branch}). Next: read "
                f"the report; rerun `rollback run {run.options.phase}` to re-check once fixed, or "
                + (f"undo the key conversion with `rollback restore fase2 --run {run.run_id}` and "
                   if run.options.phase == "fase2" else "")
                + (f"recreate the objects with `rollback restore fase3 --run {run.run_id}` and "
                   if run.options.phase == "fase3" and run.options.db_option == 2 else "")
                + f"redeploy {str(run.facts.get('original_head', ''))[:12]} to go back")
        return Done(f"passed {streak} time(s) in a row ({attempts} attempt(s)); {last.passed} "
                    f"checks passed, {last.warned} with warnings; report {last.html}", facts)


# --- communication -------------------------------------------------------------------------------


class Communicate(Step):
    name, title = "communicate", "Communication"
    after_gate_failure = True

    def describe(self, run: Run) -> StepPlan:
        from rollback.runs import comms

        names = comms.documents_for(run.options.phase)
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
