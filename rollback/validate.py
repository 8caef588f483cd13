"""Run the validation suite in `checks/` as pytest does, into a report folder, and read the verdict.

    result = run_validation("fase2", reports_root=Path("reports"), gate=True,
                            run_context=Path("logs/.../run-context.json"))
    result.exit_code   # 0 healthy (warnings allowed), 1 a check failed, 2 bad usage

The suite runs as a `python -m pytest` subprocess from the toolkit's own directory (where the
root conftest.py and pyproject.toml live), writing into `<reports_root>/<UTC timestamp>-<selection>/`:

    report.html       self-contained pytest-html report with evidence and latency charts
    junit.xml         JUnit XML; warnings are the properties verdict=warn and warning=<text>
    allure-results/   Allure results (render with `allure serve`)
    pytest.log        the console output

Counts come from the JUnit file, so they are the same with or without `-n auto`.

Before pytest starts, the target must be configured (`checks.target.require_target`: no default
URL, a TEST_API_KEY without whitespace), else ConfigError, exit 2, and not one request sent.
A phase's checks without a `run_context` use the last run of that phase against the same target
(`checks.run_context.last_run`), and say which one, first in the output and in pytest.log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

from rollback.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, load_settings
from rollback.errors import UsageError

Selection = Literal["fase1", "fase2", "fase3", "all", "health"]
SELECTIONS: dict[str, str] = {
    "fase1": "fase1",
    "fase2": "fase2",
    "fase3": "fase3",
    "health": "health",
    "all": "fase1 or fase2 or fase3 or health",
}
TOOLKIT_ROOT = Path(__file__).resolve().parent.parent

PHASES = ("fase1", "fase2", "fase3")
#: pytest exit code -> the CLI's: 0 healthy, 1 a check failed (or the run broke), 2 bad usage
_EXIT_CODES = {0: 0, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2}

Verdict = Literal["pass", "warn", "fail", "skip", "inconclusive"]


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict as JUnit recorded it."""

    nodeid: str
    verdict: Verdict
    message: str = ""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationResult:
    exit_code: int
    pytest_exit_code: int
    selection: str
    report_dir: Path
    html: Path
    junit_xml: Path
    allure_results: Path
    log: Path
    duration_s: float
    checks: tuple[CheckResult, ...] = field(default=(), repr=False)
    #: pytest's one-line reason when it refused to run the checks at all (bad settings, a
    #: database role that row level security blinds): exit code 2
    usage_error: str | None = None

    def _count(self, *verdicts: str) -> int:
        return sum(1 for c in self.checks if c.verdict in verdicts)

    @property
    def passed(self) -> int:
        """Checks that passed, with or without a warning."""
        return self._count("pass", "warn")

    @property
    def warned(self) -> int:
        return self._count("warn")

    @property
    def failed(self) -> int:
        return self._count("fail")

    @property
    def skipped(self) -> int:
        return self._count("skip", "inconclusive")

    @property
    def healthy(self) -> bool:
        return self.exit_code == 0

    def check(self, name: str) -> CheckResult:
        """The check whose node id ends with `name` (a function name, with its [param] if any)."""
        found = [c for c in self.checks if c.nodeid.endswith(("::" + name, name))]
        if len(found) != 1:
            raise KeyError(f"{len(found)} checks match {name!r}")
        return found[0]

    def summary(self) -> str:
        return (f"{self.selection}: {self.passed} passed ({self.warned} with warnings), "
                f"{self.failed} failed, {self.skipped} skipped in {self.duration_s:.1f} s; "
                f"report {self.html}")


def _nodeid(case: ET.Element) -> str:
    classname, name = case.get("classname", ""), case.get("name", "")
    module = classname.replace(".", "/")
    return f"{module}.py::{name}" if module else name


def _verdict(case: ET.Element) -> tuple[Verdict, str, tuple[str, ...]]:
    props = [(p.get("name"), p.get("value") or "") for p in case.iter("property")]
    recorded = [v for n, v in props if n == "verdict"]
    warnings = tuple(v for n, v in props if n == "warning")
    for tag in ("failure", "error"):
        node = case.find(tag)
        if node is not None:
            message = node.get("message") or (node.text or "").strip()[:500]
            return "fail", message.removeprefix("Failed: "), warnings
    node = case.find("skipped")
    if node is not None:
        kind: Verdict = "inconclusive" if "inconclusive" in recorded else "skip"
        return kind, node.get("message") or "", warnings
    return ("warn" if warnings else "pass"), "", warnings


def read_junit(path: Path) -> tuple[CheckResult, ...]:
    """Every test case of a JUnit file with its verdict (error counts as fail)."""
    if not path.is_file():
        return ()
    root = ET.parse(path).getroot()
    results = []
    for case in root.iter("testcase"):
        verdict, message, warnings = _verdict(case)
        results.append(CheckResult(_nodeid(case), verdict, message, warnings))
    return tuple(results)


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(os.environ if env is None else env)
    # pytest runs in the toolkit's directory: keep the caller's rollback.toml in force.
    if CONFIG_ENV not in merged:
        local = Path.cwd() / DEFAULT_CONFIG_FILE
        if local.is_file():
            merged[CONFIG_ENV] = str(local.resolve())
    merged.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return merged


def _stop(process: subprocess.Popen[str], grace_s: float = 2.0) -> None:
    """Stop the checks: a Ctrl-C in a terminal reached them too, so give them a moment to end
    by themselves; then as Ctrl-C would (pytest still writes its reports), then harder."""
    for sig in (None, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                process.send_signal(sig)
            except (ProcessLookupError, PermissionError):
                return
        try:
            process.wait(timeout=grace_s / 2 if sig is None else grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_validation(
    selection: Selection,
    *,
    reports_root: Path,
    gate: bool = False,
    extra_args: Sequence[str] = (),
    run_context: Path | None = None,
    env: Mapping[str, str] | None = None,
    echo: TextIO | None = None,
    timeout_s: float | None = None,
) -> ValidationResult:
    """Run the checks of `selection` and return the verdict; see the module docstring.

    env replaces os.environ for the run (the secrets come from it); echo receives the console
    output as it comes; timeout_s bounds the whole run (each check is bounded anyway).
    Raises UsageError for an unknown selection or when the toolkit's checks are not on disk,
    ConfigError for a target that is not configured (before any request).
    """
    if selection not in SELECTIONS:
        raise UsageError(f"unknown selection {selection!r}: choose one of {', '.join(SELECTIONS)}")
    if not (TOOLKIT_ROOT / "conftest.py").is_file() or not (TOOLKIT_ROOT / "checks").is_dir():
        raise UsageError(f"the validation suite is not at {TOOLKIT_ROOT} (conftest.py, checks/): "
                         "install the toolkit from its repository (pip install -e .)")
    from checks._plugin.options import RUN_CONTEXT_ENV
    from checks.run_context import last_run
    from checks.target import require_target

    environment = _environment(env)
    settings = load_settings(env=environment)
    require_target(settings)
    found = None
    if run_context is None and selection in PHASES and not environment.get(RUN_CONTEXT_ENV):
        found = last_run(settings, selection)  # here: [paths] logs_dir is the caller's
        run_context = found.context.source if found.context is not None else None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_dir = (reports_root / f"{stamp}-{selection}").resolve()
    suffix = 1
    while report_dir.exists():  # two runs in the same second get two folders
        suffix += 1
        report_dir = (reports_root / f"{stamp}-{selection}-{suffix}").resolve()
    report_dir.mkdir(parents=True, mode=0o700)
    html, junit = report_dir / "report.html", report_dir / "junit.xml"
    allure, log = report_dir / "allure-results", report_dir / "pytest.log"
    command = [
        sys.executable, "-m", "pytest", "checks",
        "-m", SELECTIONS[selection],
        "-p", "no:randomly", "-p", "no:cacheprovider",
        "--tb=short",
        f"--html={html}", "--self-contained-html",
        # xunit1: the family that keeps per-test <properties> (the warn verdict) in the file
        f"--junitxml={junit}", "-o", "junit_family=xunit1",
        f"--alluredir={allure}",
    ]
    if gate:
        command.append("--gate")
    if run_context is not None:
        command.append(f"--run-context={run_context.resolve()}")
    command.append("--no-last-run")  # looked for above, from the caller's directory
    command += list(extra_args)
    started = time.perf_counter()
    log.touch(mode=0o600)
    with log.open("w", encoding="utf-8") as sink:
        if found is not None:
            sink.write(found.line + "\n")
            if echo is not None:
                echo.write(found.line + "\n")
        # umask 077: reports and logs quote response bodies; they are the owner's only (0600)
        process = subprocess.Popen(command, cwd=TOOLKIT_ROOT, env=environment, umask=0o077,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        timer = threading.Timer(timeout_s, _stop, (process,)) if timeout_s else None
        if timer is not None:
            timer.start()
        try:
            for line in process.stdout:
                sink.write(line)
                if echo is not None:
                    echo.write(line)
            code = process.wait()
        except BaseException:  # Ctrl-C, SIGTERM (as KeyboardInterrupt): no check outlives us
            # (pytest-xdist's workers end with their controller)
            _stop(process)
            raise
        finally:
            if timer is not None:
                timer.cancel()
    checks = read_junit(junit)
    usage = None
    if code == 4:
        usage = next((line.removeprefix("ERROR: ").strip() for line in
                      log.read_text(encoding="utf-8", errors="replace").splitlines()
                      if line.startswith("ERROR: ")), None)
    return ValidationResult(
        exit_code=_EXIT_CODES.get(code, 1),
        pytest_exit_code=code,
        selection=selection,
        report_dir=report_dir,
        html=html,
        junit_xml=junit,
        allure_results=allure,
        log=log,
        duration_s=time.perf_counter() - started,
        checks=checks,
        usage_error=usage,
    )
