"""`rollback plan`, `run`, `restore` and `history`: options in, library call, one line on error.

Registered on the `rollback` group by `rollback/cli.py`, which adds every command of `COMMANDS`.

Exit codes: 0 done (or nothing to do); 1 a step or the gate failed, or the confirmation was
not given; 2 bad usage or configuration; 130 interrupted (run the same command to resume).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape

from rollback.console import edge, err, out

PHASE = click.argument("phase", type=click.Choice(["fase1", "fase2", "fase3"]))
DB_OPTION = click.option("--db-option", type=click.IntRange(1, 2), default=None,
                         help="FASE 3 only: 1 (default) keeps its database objects, 2 drops them.")
COMMIT = click.option("--commit", metavar="SHA",
                      help="Revert this commit instead of the ones the phase manifest finds; "
                           "refused if it carries other phases, unless --whole-commit.")
WHOLE = click.option("--whole-commit", is_flag=True,
                     help="Revert the phase's commits (or --commit) whole, with every phase they "
                          "carry and those phases' database steps.")
KEEP = click.option("--keep-deploy-branch", is_flag=True,
                    help="Do not merge the revert into [target] branch: its next deploy ships the "
                         "phase again (the plan and the summary say so first).")

class ConsoleUi:
    """The operator's terminal: rich output; questions only when stdin is a terminal."""

    def __init__(self) -> None:
        self.interactive = sys.stdin.isatty()

    def say(self, text: str, style: str | None = None) -> None:
        out.print(escape(text), style=style, soft_wrap=True)

    def ask(self, prompt: str) -> str:
        try:
            return str(click.prompt(prompt, default="", show_default=False, prompt_suffix=": "))
        except click.Abort:  # Ctrl-C or Ctrl-D at the prompt
            raise KeyboardInterrupt from None


def _settings() -> Any:
    from rollback.config import load_settings

    return load_settings()


def _given(db_option: int | None, commit: str | None, whole_commit: bool = False,
           keep_deploy_branch: bool = False) -> frozenset[str]:
    """The options the operator typed; a resumed run takes the others from its journal."""
    typed = (("db_option", db_option), ("commit", commit),
             ("whole_commit", whole_commit or None), ("keep_deploy_branch", keep_deploy_branch or None))
    return frozenset(name for name, value in typed if value is not None)


@click.command("plan")
@PHASE
@DB_OPTION
@COMMIT
@WHOLE
@KEEP
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@edge
def plan_command(phase: str, db_option: int | None, commit: str | None, whole_commit: bool,
                 keep_deploy_branch: bool, as_json: bool) -> None:
    """Show what `rollback run PHASE` would do now, changing nothing.

    Commits to revert, build and deploy commands, keys whose access widens (per tenant), objects
    to drop, the gate's checks. Takes no lock and writes no file.

    \b
    Example:
      rollback plan fase2
      rollback plan fase3 --db-option 2 --json
      rollback plan fase1 --commit 910ab1e --whole-commit
    """
    from rollback.runs import driver
    from rollback.runs.core import Options, SilentUi

    ui: Any = SilentUi() if as_json else ConsoleUi()
    result = driver.plan(_settings(), Options(phase, db_option or 1, commit, whole_commit,
                                              keep_deploy_branch), ui,
                         given=_given(db_option, commit, whole_commit, keep_deploy_branch))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        driver.show_plan(ui, result)


@click.command("run")
@PHASE
@DB_OPTION
@COMMIT
@WHOLE
@KEEP
@click.option("--yes", is_flag=True,
              help="Do not ask for the confirmation text (needed without a terminal).")
@click.option("--new", is_flag=True, help="Abandon an unfinished run of this phase and start over.")
@edge
def run_command(phase: str, db_option: int | None, commit: str | None, whole_commit: bool,
                keep_deploy_branch: bool, yes: bool, new: bool) -> None:
    """Roll PHASE back: pre-flight, baseline, backup, revert, build, deploy, database, gate, messages.

    Shows the plan and asks you to type ROLLBACK <PHASE>. An unfinished run of the same phase is
    resumed under its run id. Logs: logs/rollback-<phase>-<UTC stamp>.log and logs/<run id>/.

    \b
    Exit codes: 0 done or nothing to do; 1 a step or the gate failed (or not confirmed);
    2 bad usage or configuration; 130 interrupted (run it again to resume).

    \b
    Example:
      rollback run fase3 --db-option 2
      rollback run fase2 --yes
      rollback run fase1 --commit 910ab1e --whole-commit --db-option 2
    """
    from rollback.runs import driver
    from rollback.runs.core import Options

    outcome = driver.execute(_settings(), Options(phase, db_option or 1, commit, whole_commit,
                                                  keep_deploy_branch), ConsoleUi(),
                             yes=yes, new=new,
                             given=_given(db_option, commit, whole_commit, keep_deploy_branch))
    out.print(escape(outcome.summary), style="bold green", soft_wrap=True)


@click.command("restore")
@click.argument("phase", type=click.Choice(["fase2", "fase3"]))
@click.option("--run", "run_id", required=True, metavar="RUN_ID",
              help="The run to undo (see `rollback history`).")
@click.option("--yes", is_flag=True, help="Do not ask for the confirmation text.")
@edge
def restore_command(phase: str, run_id: str, yes: bool) -> None:
    """Undo the database part of a run: FASE 2 keys back to their scope, FASE 3 objects recreated.

    FASE 2: every key the run converted gets its scope back from the run's backup, in place,
    verified by checksum. FASE 3: every object the run dropped is recreated from its saved
    definition. The code stays as it is: redeploy the phase's commit to bring it back.

    \b
    Example:
      rollback restore fase2 --run 20260122T101500Z-fase2
    """
    from rollback.runs import driver

    summary = driver.restore(_settings(), phase, run_id, ConsoleUi(), yes=yes)
    out.print(escape(summary), style="bold green", soft_wrap=True)


@click.command("history")
@click.option("--phase", type=click.Choice(["fase1", "fase2", "fase3"]), help="Only this phase's runs.")
@click.option("--target", "target", metavar="TARGET",
              help="Only this target's runs: its id (or first 4+ characters), its [target] name, "
                   "or `current` for the one the settings point at.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON lines.")
@edge
def history_command(phase: str | None, target: str | None, as_json: bool) -> None:
    """List rollback runs: target, state, duration, gate result and reports.

    \b
    Example:
      rollback history --phase fase2
      rollback history --target current
      rollback history --target 3f9a1c0b --json
    """
    from rollback.runs import driver

    settings = _settings()
    records = driver.history(settings, phase, target)
    damaged = [r for r in records if r.damaged]
    if as_json:
        for r in records:
            gate = r.gate or {}
            click.echo(json.dumps({
                "run_id": r.run_id, "phase": r.phase, "target": r.target or None,
                "state": r.state,
                "description": driver.describe_state(r), "options": r.options,
                "started_at": r.started_at, "finished_at": r.finished_at, "duration_s": r.duration_s,
                "gate": gate.get("passed"), "report": gate.get("report"),
                "journal": str(r.path), "restores": r.restores, "error": r.error,
                "damaged_lines": r.damaged,
            }, default=str))
        return
    if not records:
        here = settings.identity
        out.print("no rollback runs yet" if target is None else
                  f"no rollback runs of target {target}"
                  + (f" (this one: {here.name} {here.id})" if target != here.id else ""))
        return
    for r in records:
        gate = r.gate or {}
        verdict = "gate -" if not gate else ("gate passed" if gate.get("passed") else "gate FAILED")
        duration = f"{r.duration_s:.0f} s" if r.duration_s is not None else "-"
        started = r.started_at.strftime("%Y-%m-%d %H:%M:%S UTC") if r.started_at else "-"
        out.print(f"[bold]{escape(r.run_id)}[/]  {escape(driver.describe_state(r))}  {started}  "
                  f"{duration}  {verdict}", soft_wrap=True)
        where = (f"{r.target.get('name', '?')} {r.target_id} ({r.target.get('api', '?')}, "
                 f"database {r.target.get('database', '?')}, repo {r.target.get('repo', '?')})"
                 if r.target_id else "- (recorded before runs named their target: any)")
        out.print(f"  target: {escape(where)}", soft_wrap=True)
        if gate.get("report"):
            out.print(f"  report: {escape(str(gate['report']))}", soft_wrap=True)
        if r.error:
            out.print(f"  error: {escape(r.error)}", style="red", soft_wrap=True)
        if r.resumable:
            out.print(f"  next: `rollback run {r.phase}` resumes it (or --new abandons it)",
                      soft_wrap=True)
        out.print(f"  journal: {escape(str(r.path))}", style="dim", soft_wrap=True)
    for r in damaged:
        err.print(f"warning: {escape(str(r.path))}: {r.damaged} line(s) are not JSON (torn or "
                  "overwritten) and were skipped", soft_wrap=True)


COMMANDS = [plan_command, run_command, restore_command, history_command]
