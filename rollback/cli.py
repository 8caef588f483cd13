"""The `rollback` command. It parses options, calls the library, and turns errors into one line.

Exit codes: 0 done/healthy, 1 a step or check failed, 2 bad usage or configuration,
130 interrupted (resumable).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from rollback import startup
from rollback.console import edge, err, out
from rollback.errors import UsageError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rollback-toolkit")
def cli() -> None:
    """Roll a release phase back safely, prove the system healthy, tell the people who must know.

    \b
    Example:
      rollback sandbox up && eval "$(rollback sandbox env)" && rollback validate fase2
    """


# --- sandbox -----------------------------------------------------------------------------------

DIR_OPTION = click.option(
    "--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=Path(".sandbox"),
    show_default=True, help="Folder that holds the sandbox.",
)


@cli.group()
def sandbox() -> None:
    """A runnable stand-in for the platform: API, PostgreSQL and a git repo with the phases."""


@sandbox.command("up")
@DIR_OPTION
@click.option("--port", type=click.IntRange(1, 65535), help="API port (default: a free one).")
@click.option("--tenants", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--keys", type=click.IntRange(1, 50_000_000), help="Grow api_keys to N rows.")
@click.option("--seed", "seed_value", type=int, default=42, show_default=True)
@click.option("--database-url", help="Use this PostgreSQL instead of the embedded one (never DATABASE_URL).")
@click.option("--reset", is_flag=True, help="Rebuild: drop what the database or folder holds.")
@click.option("--shape", type=click.Choice(["contract", "tistis"]),
              help="tistis: the platform as its repository has it (Supabase RLS and triggers, the "
                   "real history, Vercel), the default for a new sandbox; contract: as the API "
                   "reference describes it. An existing sandbox keeps its shape.")
@edge
def sandbox_up(root: Path, port: int | None, tenants: int, keys: int | None, seed_value: int,
               database_url: str | None, reset: bool, shape: str | None) -> None:
    """Start the sandbox at FASE 3, seeded, and wait until its API is healthy.

    \b
    Example:
      rollback sandbox up --tenants 50 --seed 42
      rollback sandbox up --keys 1000000 --reset
      rollback sandbox up --shape contract --dir /tmp/contract
    """
    from sandbox import control

    state, started = control.up(root, port=port, tenants=tenants, keys=keys, seed_value=seed_value,
                                database_url=database_url, reset=reset, shape=shape,
                                log=lambda line: out.print(f"  {escape(line)}", soft_wrap=True))
    if not started:
        out.print(f"sandbox already running at {state.api_base_url} (dir {state.dir}, shape {state.shape})")
        return
    out.print(f"[bold green]sandbox up[/] at {state.api_base_url} (dir {state.dir}, shape {state.shape})")
    out.print('  point every command at it:  eval "$(rollback sandbox env'
              + (f" --dir {root}" if root != Path('.sandbox') else "") + ')"')
    from rollback.profile import load_profile

    leads = load_profile(state.shape).leads_path  # the sandbox's profile is its shape's
    out.print(f'  try:  curl -H "Authorization: Bearer $TEST_API_KEY" "$API_BASE_URL{leads}"')
    if state.shape == "tistis":
        out.print("  deploy: vercel --prod --yes (from the checkout), vercel ls, vercel rollback")
    out.print("  stop: rollback sandbox down")


@sandbox.command("env")
@DIR_OPTION
@edge
def sandbox_env(root: Path) -> None:
    """Print export lines for API_BASE_URL, the test keys, DATABASE_URL and ROLLBACK_CONFIG.

    \b
    Example:
      eval "$(rollback sandbox env)"
    """
    from sandbox import control

    click.echo("\n".join(control.env_lines(root)))


@sandbox.command("deploy")
@DIR_OPTION
@edge
def sandbox_deploy(root: Path) -> None:
    """Deploy the repository's current checkout: contract restarts the API from it; tistis runs
    `vercel --prod --yes` from it (a new production deployment).

    \b
    Example:
      rollback sandbox deploy
    """
    from sandbox import control

    version = control.deploy(root)
    out.print(f"deployed {version[:12]}")


@sandbox.command("status")
@DIR_OPTION
@edge
def sandbox_status(root: Path) -> None:
    """Show what runs: shape, database, API, deployed version, phases present in the checkout.

    \b
    Example:
      rollback sandbox status
    """
    from sandbox import control

    for key, value in control.status(root).items():
        out.print(f"{key:>20}: {value}")


@sandbox.command("down")
@DIR_OPTION
@edge
def sandbox_down(root: Path) -> None:
    """Stop everything that `up` started. Data stay; `up` starts it again, `up --reset` rebuilds.

    \b
    Example:
      rollback sandbox down
    """
    from sandbox import control

    out.print("sandbox stopped" if control.down(root) else f"no sandbox in {root}")


# --- validate ----------------------------------------------------------------------------------


@cli.command("validate")
@click.argument("selection", type=click.Choice(["fase1", "fase2", "fase3", "all", "health"]))
@click.option("--gate", is_flag=True, help="Treat a skipped required check as a failure (the drivers' gate).")
@click.option("--expected-version", metavar="SHA", help="The version /health must report.")
@click.option("--run-context", type=click.Path(dir_okay=False, path_type=Path),
              help="A rollback run's context JSON (backup, baseline, FASE 3 option).")
@click.option("--warn-ms", type=click.FloatRange(min=0, min_open=True), help="p95 warning threshold.")
@click.option("--alert-ms", type=click.FloatRange(min=0, min_open=True), help="p95 failure threshold.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), help="Highest acceptable error rate.")
@click.option("--sample-size", type=click.IntRange(1, 1000), help="Requests per endpoint for p95.")
@click.option("--allow-writes", is_flag=True, help="Also run checks that write (POST a lead).")
@click.option("--show-pii", is_flag=True,
              help="Show names, phones, e-mails in the evidence (masked by default).")
@click.option("-n", "--workers", metavar="N", help="Run the checks in parallel (pytest-xdist), e.g. auto.")
@click.option("--reports", "reports_root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the report (default: [paths] reports_dir, reports/).")
@click.option("--allure", is_flag=True,
              help="Also write Allure results (allure-results/ in the report folder).")
@edge
def validate(selection: str, gate: bool, expected_version: str | None, run_context: Path | None,
             warn_ms: float | None, alert_ms: float | None, max_error_rate: float | None,
             sample_size: int | None, allow_writes: bool, show_pii: bool, workers: str | None,
             reports_root: Path | None, allure: bool) -> None:
    """Run the checks of one phase, or all, into reports/<UTC timestamp>-<selection>/.

    Exit 0 healthy (warnings allowed), 1 a check failed, 2 bad usage.

    \b
    Example:
      rollback validate fase2
      rollback validate all --expected-version 3f2c1e9 --warn-ms 300 -n auto
      rollback validate fase2 --allure         # also allure-results/ for a CI server
    """
    startup.defer()  # until the checks are collected: see rollback.startup
    from rollback.config import load_settings
    from rollback.validate import run_validation

    settings = load_settings()
    if run_context is not None and not run_context.is_file():
        raise UsageError(f"--run-context {run_context}: no such file")
    extra = [f"--{name.replace('_', '-')}={value}" for name, value in (
        ("warn_ms", warn_ms), ("alert_ms", alert_ms), ("max_error_rate", max_error_rate),
        ("sample_size", sample_size), ("expected_version", expected_version)) if value is not None]
    if allow_writes:
        extra.append("--allow-writes")
    if show_pii:
        extra.append("--show-pii")
    if workers:
        extra += ["-n", workers]
    from rollback.runs.core import sigterm_as_interrupt

    with sigterm_as_interrupt():  # a stopped job stops its checks too, and says so (exit 130)
        result = run_validation(selection,  # type: ignore[arg-type]
                                reports_root=reports_root or settings.paths.reports_dir,
                                gate=gate, extra_args=extra, run_context=run_context,
                                echo=sys.stdout, allure=allure)
    if result.usage_error:  # pytest said why it checked nothing, above; no "0 passed" summary
        sys.exit(result.exit_code)
    for check in result.checks:  # whole, one line each: pytest's summary cuts them to the width
        if check.verdict == "fail":
            reason = " ".join(check.message.split())
            err.print(f"[bold red]FAIL[/] {escape(check.nodeid)}: {escape(reason)}", soft_wrap=True)
    (out if result.healthy else err).print(result.summary(), soft_wrap=True)
    sys.exit(result.exit_code)


# --- demo --------------------------------------------------------------------------------------


@cli.command("demo")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".sandbox-demo"), show_default=True,
              help="Folder of the demo's own sandbox (rebuilt at every demo).")
@click.option("--keep", is_flag=True, help="Leave the sandbox running afterwards.")
@click.option("--shape", type=click.Choice(["tistis", "contract"]), default="tistis",
              show_default=True,
              help="tistis: the platform as deployed (FASE 1-3 in one commit, Supabase, Vercel); "
                   "contract: as its API reference describes it.")
@edge
def demo(root: Path, keep: bool, shape: str) -> None:
    """Rehearse it all on a fresh sandbox: plan FASE 3, then roll back FASE 3, 2 and 1, each gated.

    Ends with a table of phase, duration, gate result, report and communication files.

    \b
    Example:
      rollback demo
      rollback demo --shape contract
      rollback demo --keep && eval "$(rollback sandbox env --dir .sandbox-demo)"
    """
    import time

    from rollback import demo as library

    started = time.monotonic()

    def say(text: str, style: str | None = None) -> None:
        out.print(escape(text), style=style, soft_wrap=True)

    ui = library.PrefixUi(say)
    results = []
    with library.demo_sandbox(root, keep, lambda line: say(line, "dim"), shape):
        settings = library.use_sandbox(root)
        out.rule("What `rollback run fase3 --db-option 2` would do")
        library.plan_text(settings, ui)
        for phase, option in library.SEQUENCE:
            out.rule(f"rollback run {phase} --yes" + (f" --db-option {option}" if phase == "fase3" else ""))
            results.append(library.rollback_phase(settings, phase, option, ui))
    library.print_closing(out, results, time.monotonic() - started, shape)


def _register(module: str) -> None:
    """Add the commands a module lists in COMMANDS (drivers, monitor)."""
    import importlib

    for command in importlib.import_module(module).COMMANDS:
        cli.add_command(command)


for _module in ("rollback.driver_cli", "rollback.monitor_cli"):
    _register(_module)


def main() -> None:
    """The console script. Click's own usage errors (an unknown phase, a bad option value) are
    turned into one line and exit 2, like every other error of the toolkit."""
    startup.own()
    try:
        _main()
    finally:
        startup.at_exit()  # the interpreter's last garbage collection walks nothing


def _main() -> None:
    try:
        code = cli.main(prog_name="rollback", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `rollback`: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        where = exc.ctx.command_path if exc.ctx is not None else "rollback"
        message = exc.format_message().rstrip(".")
        err.print(f"[bold red]error:[/] {escape(message)} (see `{where} --help`)", soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        err.print(f"[bold red]error:[/] {escape(exc.format_message())}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.Abort:  # Ctrl-C or end of input at a prompt
        err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
