"""`rollback demo`: a rehearsed rollback of all three phases on a fresh sandbox, end to end.

It brings up a sandbox of its own (embedded PostgreSQL) at FASE 3, shows the FASE 3 plan, then
rolls back FASE 3 (option 2: the database objects dropped too), FASE 2 and FASE 1 in turn
through the same library calls as `rollback run --yes`, each ending with its gate, and returns
one row per phase for the closing table. The gate asks for fewer stable passes than in
production (the sandbox has no traffic to settle); everything else runs as it would for real.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rollback.config import Settings, load_settings
from rollback.runs import driver
from rollback.runs.core import Options, Ui

DEFAULT_DIR = Path(".sandbox-demo")
#: the order that leaves every later phase's code out of the way of the earlier one's revert
SEQUENCE = (("fase3", 2), ("fase2", 1), ("fase1", 1))
DEMO_GATE = {"passes_required": 1, "interval_s": 1.0, "deadline_s": 60.0}


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    run_id: str
    duration_s: float
    gate: str
    report: str
    communication: list[str]


class PrefixUi:
    """Shows the driver's progress lines with the phase in front; never asks (the demo is --yes)."""

    interactive = False

    def __init__(self, say: Callable[[str, str | None], None]) -> None:
        self._say = say
        self.prefix = ""

    def say(self, text: str, style: str | None = None) -> None:
        self._say(f"{self.prefix}{text}", style)

    def ask(self, prompt: str) -> str:  # pragma: no cover - a --yes run never asks
        return ""


def use_sandbox(root: Path) -> Settings:
    """Do what `eval "$(rollback sandbox env --dir ROOT)"` does (the gate's pytest inherits the
    environment), and return the settings it gives, with the demo's gate."""
    from sandbox import control

    os.environ.update(control.env_values(root))
    # the runs' journals belong with the sandbox they changed, not with production's logs/
    logs = root.resolve() / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    return load_settings(overrides={"gate": DEMO_GATE, "paths": {"logs_dir": logs}})


@contextmanager
def demo_sandbox(root: Path, keep: bool, log: Callable[[str], None],
                 shape: str = "tistis") -> Iterator[Path]:
    from sandbox import control

    state, _ = control.up(root, reset=True, shape=shape, log=log)
    log(f"sandbox up at {state.api_base_url} (dir {state.dir}, {shape} shape), FASE 1-3 deployed")
    try:
        yield root
    finally:
        if keep:
            log(f"sandbox left running: eval \"$(rollback sandbox env --dir {root})\"; "
                f"stop it with `rollback sandbox down --dir {root}`")
        else:
            control.down(root)
            log("sandbox stopped")


def plan_text(settings: Settings, ui: Ui) -> None:
    result = driver.plan(settings, Options("fase3", 2, None), ui)
    driver.show_plan(ui, result)


def rollback_phase(settings: Settings, phase: str, db_option: int, ui: PrefixUi) -> PhaseResult:
    ui.prefix = f"[{phase}] "
    started = time.monotonic()
    outcome = driver.execute(settings, Options(phase, db_option, None), ui, yes=True)
    ui.prefix = ""
    record = outcome.record
    facts = record.facts if record else {}
    gate = facts.get("gate") or {}
    return PhaseResult(
        phase=phase + (f" (option {db_option})" if phase == "fase3" else ""),
        run_id=outcome.run_id or "-",
        duration_s=time.monotonic() - started,
        gate="passed" if gate.get("passed") else outcome.state,
        report=str(gate.get("report", "-")),
        communication=list((facts.get("communication") or {}).get("files", [])),
    )


def shown(path: Path) -> str:
    """A path as short as it can be said: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _communication(result: PhaseResult) -> str:
    folder = shown(Path(result.communication[0]).parent) if result.communication else "-"
    return f"{len(result.communication)} files in {folder}"


def print_closing(console: Console, results: list[PhaseResult], total_s: float, shape: str) -> None:
    """The closing summary: a table on a terminal; otherwise (a log, a pipe, CI) one line per
    phase with every path whole, so that it can be copied (a table would fold the paths)."""
    title = f"rollback demo: {len(results)} phases rolled back in {total_s:.0f} s ({shape} shape)"
    if not console.is_terminal:
        console.print(title, soft_wrap=True, markup=False, highlight=False)
        for r in results:
            console.print(f"  {r.phase}: {r.duration_s:.1f} s, gate {r.gate}; "
                          f"report {shown(Path(r.report))}; communication: {_communication(r)}",
                          soft_wrap=True, markup=False, highlight=False)
        return
    table = Table(title=title)
    for column in ("phase", "duration", "gate", "report", "communication"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(r.phase, f"{r.duration_s:.1f} s", r.gate, shown(Path(r.report)), _communication(r))
    console.print(table)
