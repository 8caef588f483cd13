"""The drivers: each run is a short list of named steps, planned and run by the same code.

    FASE 1  preflight, baseline, backup, code, build, deploy, publish, gate, communicate
    FASE 2  preflight, baseline, backup, code, build, database (convert keys), deploy, publish,
            gate, communicate
    FASE 3  preflight, baseline, backup, code, build, deploy, publish, database (option 1 keep /
            2 drop), gate, communicate

The database step of each phase the run covers (its own; with --whole-commit every phase of the
commit, `database-faseN`) comes from the profile ([platform.phases.X] database, rollback/actions/)
and goes where the action says: FASE 2's conversion before the deploy, so that code which no
longer knows branch keys is never live while branch keys exist; FASE 3's drop after it, once no
live code uses the objects. Either way after the build: a failed build leaves the data untouched.

`plan()` asks every step to describe itself, read-only. `execute()` runs pre-flight (which
takes the locks), shows the same plan, asks for the confirmation text, then runs the steps,
journaling each one. A run that did not finish (interrupted, killed, failed at a step) is
resumed by the next `execute()` of its phase, under the same run id, from its first step not
done.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from rollback.actions import action_for
from rollback.config import Settings
from rollback.errors import GateFailed, Interrupted, RollbackError, StepFailed, UsageError
from rollback.runs import steps
from rollback.runs.core import (
    PHASES,
    Done,
    Options,
    Plan,
    Run,
    Step,
    StepPlan,
    Ui,
    sigterm_as_interrupt,
)
from rollback.runs.journal import (
    Journal,
    RunRecord,
    all_runs,
    find_run,
    half_done_elsewhere,
    unfinished_run,
    utc_now,
    who,
)
from rollback.runs.locks import DatabaseLock, RepoLock, first_line


class Cancelled(StepFailed):
    """The operator did not type the confirmation text: nothing was changed (exit 1)."""


def steps_for(run: Run) -> list[Step]:
    """The driver of a run: its steps, in order. The database step of each phase the run covers
    goes where its action says: FASE 2's conversion after the build and before the deploy (the
    reverted code must never meet a branch key), FASE 3's drop after the deploy (no live code
    uses the objects by then)."""
    actions = steps.database_actions(run)
    before = [a.step(run.options.phase) for a in actions if a.before_deploy]
    after = [a.step(run.options.phase) for a in actions if not a.before_deploy]
    return [steps.Preflight(), steps.Baseline(), steps.Backup(), steps.RevertCode(), steps.Build(),
            *before, steps.Deploy(), steps.Publish(), *after, *TAIL]


#: the steps after the database: the gate, and what also runs after a failed gate
TAIL: tuple[Step, ...] = (steps.Gate(), steps.Communicate())


def check_options(options: Options) -> None:
    if options.phase not in PHASES:
        raise UsageError(f"unknown phase {options.phase!r}: choose fase1, fase2 or fase3")
    if options.db_option not in (1, 2):
        raise UsageError(f"--db-option must be 1 or 2, got {options.db_option}")
    if options.db_option == 2 and options.phase != "fase3" and not options.whole_commit:
        raise UsageError("--db-option applies to fase3 only (or to a --whole-commit run whose "
                         "commit carries fase3)")


def _resumable(settings: Settings, options: Options, new: bool,
               given: frozenset[str]) -> RunRecord | None:
    """The unfinished run of this phase, unless --new. Options the operator gave explicitly
    (`given`) must match the ones the run was started with; the others are taken from it."""
    record = unfinished_run(settings.paths.logs_dir.resolve(), options.phase, settings.identity.id)
    if record is None or new:
        return None
    if "gate" not in record.completed:  # what reported the gate's old result says it again
        again = {step.name for step in TAIL if step.after_gate_failure}
        record.completed = [name for name in record.completed if name not in again]
    asked = options.as_dict()
    clash = [name for name in given if record.options.get(name) != asked.get(name)]
    if clash:
        at = record.failed_step or record.interrupted_step or "its start"
        raise UsageError(
            f"run {record.run_id} ({record.state} at {at}) was started with "
            f"{_options_text(record.options)}: continue it with the same options (or none), "
            "or start over with --new (its backups stay)")
    return record


def _options_text(options: dict[str, Any]) -> str:
    parts = [f"--db-option {options.get('db_option')}"] if options.get("phase") == "fase3" else []
    if options.get("commit"):
        parts.append(f"--commit {options['commit']}")
    return " ".join(parts) or "no options"


def plan(settings: Settings, options: Options, ui: Ui, *,
         given: frozenset[str] = frozenset({"db_option", "commit", "whole_commit"})) -> Plan:
    """What `execute` would do now, read-only: no lock taken, nothing written."""
    check_options(options)
    record = _resumable(settings, options, False, given)
    if record is not None:
        options = Options(**record.options)
    run = Run(settings, options, ui, record=record, dry=True)
    return _describe(run, steps_for(run))


def _describe(run: Run, driver: list[Step], preflight: Done | None = None) -> Plan:
    """Every step's description; steps a resumed run finished show as done. With `preflight`
    (the run has just passed it) its result stands in for its description."""
    described = []
    for step in driver:
        if preflight is not None and isinstance(step, steps.Preflight):
            checks = (preflight.facts.get("preflight") or {}).get("checks") or []
            described.append(StepPlan(step.name, step.title, [*checks, "locks taken"],
                                      {"already_done": False}, False, "done"))
            continue
        if run.step_done(step.name) and not step.always_run:
            summary = (run.record.steps.get(step.name, {}).get("summary", "") if run.record else "")
            described.append(StepPlan(step.name, step.title, [f"done: {summary}"], {}, False, "done"))
            continue
        described.append(step.describe(run))
    first = next((s for s in described if s.name == "preflight"), None)
    done = None
    if first is not None and first.data.get("already_done") and run.record is None:
        done = f"{run.options.phase} is already rolled back: nothing to do"
    warnings = [steps.keep_warning(run)] if run.options.keep_deploy_branch else []
    phases = steps.run_phases(run)
    if len(phases) > 1:
        warnings.append(f"--whole-commit: this run takes back {', '.join(phases)}, code and "
                        "database steps")
    return Plan(run.run_id if run.record else None, run.options.phase, run.options.as_dict(),
                described, resumed_from=run.record.run_id if run.record else None, already_done=done,
                warnings=warnings)


@dataclass
class Outcome:
    run_id: str | None
    state: str            # succeeded | already_done
    summary: str
    record: RunRecord | None = None


def execute(settings: Settings, options: Options, ui: Ui, *, yes: bool = False, new: bool = False,
            given: frozenset[str] = frozenset({"db_option", "commit", "whole_commit"})) -> Outcome:
    """Run the phase's rollback (or resume the unfinished one). See the module docstring.

    `given` names the options the operator set explicitly; a resumed run keeps its own."""
    check_options(options)
    record = _resumable(settings, options, new, given)
    other = half_done_elsewhere(settings.paths.logs_dir.resolve(), options.phase,
                                settings.identity.id)
    if other is not None:
        raise StepFailed(
            f"run {other.run_id} of {other.phase} is unfinished and left changes in place "
            f"({describe_state(other)}): finish it first with `rollback run {other.phase}` "
            f"(or abandon it with `rollback run {other.phase} --new`)")
    if record is None and new:
        _abandon(settings, options, ui)
    if record is not None:
        options = Options(**record.options)
        where = record.failed_step or record.interrupted_step or "start-up"
        ui.say(f"resuming run {record.run_id} ({record.state} at {where}; done: "
               f"{', '.join(record.completed) or 'nothing'})", "bold yellow")
    run = Run(settings, options, ui, record=record)
    driver = steps_for(run)
    with sigterm_as_interrupt():
        try:
            return _execute(run, driver, yes)
        finally:
            for cleanup in reversed(run.cleanups):
                with contextlib.suppress(Exception):  # an unreleasable lock must not hide the result
                    cleanup()


def _execute(run: Run, driver: list[Step], yes: bool) -> Outcome:
    preflight, rest = driver[0], driver[1:]
    t0 = time.monotonic()
    try:
        pre = preflight.run(run)
    except steps.AlreadyRolledBack as done:
        return Outcome(None, "already_done", str(done))
    except KeyboardInterrupt:
        raise Interrupted("interrupted during pre-flight: nothing was changed") from None
    pre_time = time.monotonic() - t0
    plan = _describe(run, driver, pre)
    show_plan(run.ui, plan)
    if not yes:  # a resumed run changes the target too: confirmed again
        try:
            _confirm(run)
        except KeyboardInterrupt:
            raise Interrupted("cancelled at the confirmation: nothing was changed") from None
    if run.record is None:
        run.journal = Journal.create(run.logs_dir, run.run_id)
        run.journal.write("run_started", phase=run.options.phase, options=run.options.as_dict(),
                          target=run.settings.identity.as_dict(), **who())
    else:
        run.journal = Journal(run.record.path, run.run_id)
        run.journal.write("run_resumed", completed=run.record.completed,
                          previous=_how_it_ended(run.record),
                          target=run.settings.identity.as_dict(), **who())
    run.say(f"run {run.run_id}: log {run.log_path}, journal {run.journal.path}", "dim")
    for number, described in enumerate(plan.steps, start=1):
        run.note(f"plan {number}. {described.title} [{described.state}]: " + " / ".join(described.lines))
    _journal_step(run, preflight, pre, pre_time)
    gate_failure: GateFailed | None = None
    for step in rest:
        if gate_failure is not None and not step.after_gate_failure:
            continue
        if run.step_done(step.name) and not step.always_run:
            run.say(f"{step.title}: done before, skipped", "dim")
            continue
        try:
            _run_step(run, step)
        except GateFailed as exc:
            gate_failure = exc
        except StepFailed as exc:
            _finish(run, "failed", error=str(exc))
            raise
    if gate_failure is not None:
        _finish(run, "failed", error=str(gate_failure))
        raise gate_failure
    record = _finish(run, "succeeded")
    gate = run.facts.get("gate") or {}
    first = f"{steps.keep_warning(run)}\n" if run.options.keep_deploy_branch else ""
    return Outcome(run.run_id, "succeeded",
                   f"{first}{', '.join(steps.run_phases(run))} rolled back in "
                   f"{record.duration_s or 0:.0f} s (run "
                   f"{run.run_id}); gate passed; report {gate.get('report', '-')}", record)


def _how_it_ended(record: RunRecord) -> dict[str, Any]:
    """How the attempt before this one ended, for the journal: a run whose journal stops without
    a word (no interruption, no failure) was killed; we hold its lock now, so it is gone."""
    state = "killed" if record.state == "running" else record.state
    running = [name for name, step in record.steps.items() if step.get("state") == "running"]
    step = record.failed_step or record.interrupted_step or (running[-1] if running else None)
    return {"state": state, "step": step, "pid": record.last_pid, "host": record.last_host}


def _confirm(run: Run) -> None:
    text = run.settings.run.confirm_text.replace("{PHASE}", run.options.confirm_phase)
    if not run.ui.interactive:
        raise UsageError(f"no terminal to confirm on: review `rollback plan {run.options.phase}` "
                         "and pass --yes to run without asking")
    answer = run.ui.ask(f"Type {text} to proceed (anything else cancels)")
    if answer.strip() != text:
        raise Cancelled("cancelled: the confirmation text did not match; nothing was changed")


def _run_step(run: Run, step: Step) -> None:
    assert run.journal is not None
    run.current_step = step.name
    run.ui.say(f"▶ {step.title}", "bold")
    run.note(f"{step.title}: started")
    started = time.monotonic()
    try:
        # inside: a Ctrl-C while the line is being written interrupts this step, journaled
        run.journal.write("step_started", step=step.name)
        done = step.run(run)
    except KeyboardInterrupt:
        run.journal.write("run_interrupted", step=step.name,
                          duration_s=round(time.monotonic() - started, 3))
        run.say(f"{step.title}: interrupted", "bold red")
        raise Interrupted(f"interrupted during {step.title.lower()}: run `rollback run "
                          f"{run.options.phase}` to resume run {run.run_id} from there") from None
    except RollbackError as exc:
        elapsed = round(time.monotonic() - started, 3)
        run.journal.write("step_failed", step=step.name, duration_s=elapsed, error=run.redact(str(exc)))
        run.say(f"{step.title}: FAILED after {elapsed:.1f} s: {exc}", "bold red")
        raise
    except Exception as exc:  # an unforeseen error still leaves a journal that says where
        elapsed = round(time.monotonic() - started, 3)
        message = run.redact(f"{type(exc).__name__}: {first_line(exc)}")
        run.journal.write("step_failed", step=step.name, duration_s=elapsed, error=message)
        run.say(f"{step.title}: FAILED after {elapsed:.1f} s: {message}", "bold red")
        raise StepFailed(f"{step.title} failed unexpectedly ({message}); the run can be resumed "
                         f"with `rollback run {run.options.phase}`; log {run.log_path}") from exc
    finally:
        run.current_step = ""
    _journal_step(run, step, done, time.monotonic() - started)


def _journal_step(run: Run, step: Step, done: Done, elapsed: float) -> None:
    assert run.journal is not None
    run.facts.update(done.facts)
    run.journal.write("step_finished", step=step.name, duration_s=round(elapsed, 3),
                      summary=run.redact(done.summary), facts=done.facts, skipped=done.skipped)
    run.log.write(f"{step.title}: {'skipped' if done.skipped else 'done'} in {elapsed:.1f} s: "
                  f"{done.summary}", style="green", step=step.name)


def _finish(run: Run, state: str, error: str | None = None) -> RunRecord:
    assert run.journal is not None
    duration = run.journal.replay().active_s(utc_now())  # not the confirmation, not the gaps
    extra: dict[str, Any] = {"error": run.redact(error)} if error else {}
    run.journal.write("run_finished", state=state, duration_s=round(duration, 3), **extra)
    return run.journal.replay()


def _abandon(settings: Settings, options: Options, ui: Ui) -> None:
    record = unfinished_run(settings.paths.logs_dir.resolve(), options.phase, settings.identity.id)
    if record is None:
        return
    Journal(record.path, record.run_id).write("run_abandoned", reason="--new", **who())
    ui.say(f"run {record.run_id} ({record.state}) abandoned; its backups stay "
           + (f"(undo with `rollback restore {options.phase} --run {record.run_id}`)"
              if record.facts.get("fase2_backup") or record.facts.get("fase3_backup") else ""),
           "yellow")


def show_plan(ui: Ui, plan: Plan) -> None:
    for warning in plan.warnings:
        ui.say(warning, "bold yellow")
    title = f"Plan for {plan.phase}" + (f" (resuming {plan.resumed_from})" if plan.resumed_from else "")
    ui.say(title, "bold underline")
    for number, step in enumerate(plan.steps, start=1):
        marker = {"done": " [done]", "skip": " [skip]"}.get(step.state, "")
        changes = " (changes the target)" if step.changes and step.state == "pending" else ""
        ui.say(f"{number}. {step.title}{marker}{changes}", "bold")
        for line in step.lines:
            ui.say(f"   {line}")
    if plan.already_done:
        ui.say(plan.already_done, "bold green")


# --- undo ----------------------------------------------------------------------------------------


def restore(settings: Settings, phase: str, run_id: str, ui: Ui, *, yes: bool = False) -> str:
    """Undo the database part of a run: FASE 2 keys back from the backup; FASE 3 objects recreated
    (each phase's database action, [platform.phases.X] database, knows how)."""
    spec = settings.platform.phases.get(phase)
    action = action_for(spec.database, phase) if spec is not None else None
    if action is None:
        raise UsageError(f"restore applies to phases that change the database (fase2: keys, "
                         f"fase3: objects), not {phase!r}: it changes no data; redeploy its "
                         "commit to bring it back")
    record = find_run(settings.paths.logs_dir.resolve(), run_id)
    covered = record.facts.get("phases") or [record.phase]
    if phase not in covered:
        raise UsageError(f"run {run_id} rolled back {', '.join(covered)}, not {phase}")
    options = Options(**record.options)
    run = Run(settings, options, ui, record=record)
    run.journal = Journal(record.path, run_id)
    saved = (record.facts.get("fase3_backup") or {}).get("file")
    what = (f"put the converted keys back from {_backup_name(record)}" if phase == "fase2"
            else f"recreate the dropped FASE 3 objects from {saved}")
    ui.say(f"restore {phase} of run {run_id}: {what}", "bold")
    if not yes:
        text = f"RESTORE {phase.upper()}"
        if not ui.interactive:
            raise UsageError("no terminal to confirm on: pass --yes to restore without asking")
        if ui.ask(f"Type {text} to proceed (anything else cancels)").strip() != text:
            raise Cancelled("cancelled: the confirmation text did not match; nothing was changed")
    repo_lock = RepoLock(run.repo, f"{run_id}-restore", phase)
    db_lock = DatabaseLock(run.database_url, f"{run_id}-restore")
    with sigterm_as_interrupt():
        repo_lock.acquire()
        try:
            db_lock.acquire()
            run.journal.write("restore_started", **who())
            try:
                summary = action.restore(run)
            except KeyboardInterrupt:
                run.journal.write("restore_failed", error="interrupted")
                raise Interrupted("restore interrupted: run it again; it continues where it "
                                  "stopped") from None
            except RollbackError as exc:
                run.journal.write("restore_failed", error=run.redact(str(exc)))
                raise
            run.journal.write("restore_finished", summary=summary)
            return summary
        finally:
            db_lock.release()
            repo_lock.release()


def _backup_name(record: RunRecord) -> str:
    backup = record.facts.get("fase2_backup") or {}
    return f"{backup.get('schema', '?')}.{backup.get('table', '?')}"


# --- history -------------------------------------------------------------------------------------


def history(settings: Settings, phase: str | None = None,
            target: str | None = None) -> list[RunRecord]:
    """Runs, oldest first; `target` keeps those of one target: an id (or its first 4+
    characters), a [target] name, or "current" (the target these settings point at)."""
    runs = all_runs(settings.paths.logs_dir.resolve())
    if target == "current":
        target = settings.identity.id
    return [r for r in runs if (phase is None or r.phase == phase)
            and (target is None or _is_target(r, target))]


def _is_target(record: RunRecord, wanted: str) -> bool:
    tid = record.target_id or ""
    if len(wanted) >= 4 and tid.startswith(wanted):
        return True
    return bool(record.target) and record.target.get("name") == wanted


def describe_state(record: RunRecord) -> str:
    from rollback.runs.locks import pid_alive

    if record.state == "running":
        if record.last_pid and record.last_host == who()["host"] and pid_alive(record.last_pid):
            return "running"
        return "interrupted (process gone)"
    if record.state == "failed":
        kept = "" if record.changed else " (nothing changed)"
        return f"failed at {record.failed_step or '?'}{kept}"
    if record.state == "interrupted":
        return f"interrupted at {record.interrupted_step or 'start'}"
    restored = [r for r in record.restores if r.get("state") == "done"]
    return record.state + (" (restored)" if restored else "")

