"""Run the validation suite in `checks/` as pytest does, into a report folder, and read the verdict.

    result = run_validation("fase2", reports_root=Path("reports"), gate=True,
                            run_context=Path("logs/.../run-context.json"))
    result.exit_code   # 0 healthy (warnings allowed), 1 a check failed, 2 bad usage

The suite runs in this process (`pytest.main`), from the toolkit's own directory (where the root
conftest.py and pyproject.toml live), with only the plugins it uses, writing into
`<reports_root>/<UTC timestamp>-<selection>/`:

    report.html       self-contained pytest-html report with evidence and latency charts
    junit.xml         JUnit XML; warnings are the properties verdict=warn and warning=<text>
    allure-results/   Allure results (render with `allure serve`), only with allure=True
    pytest.log        the console output

A second interpreter is started only where isolation needs one (see `_needs_subprocess`): with
`-n` (pytest-xdist) and when called off the main thread. Counts come from the JUnit file, so
they are the same with or without `-n auto`.

Before pytest starts, the target must be configured (`checks.target.require_target`: no default
URL, a TEST_API_KEY without whitespace), else ConfigError, exit 2, and not one request sent.
A phase's checks without a `run_context` use the last run of that phase against the same target
(`checks.run_context.last_run`), and say which one, first in the output and in pytest.log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from rollback import startup
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
    #: None unless Allure results were asked for (allure=True, `--allure`)
    allure_results: Path | None
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
    return merged


#: the variable that names a run context (checks._plugin.options.RUN_CONTEXT_ENV; not imported
#: from there, so that the plugin is first imported by pytest, which rewrites its asserts)
RUN_CONTEXT_ENV = "ROLLBACK_RUN_CONTEXT"
#: the plugins the checks use, loaded by module (by entry-point name, `-p html` would have
#: pytest try to rewrite the standard library's `html`): no other installed pytest plugin
#: (hypothesis, anyio, ...) is imported, rewritten or asked to run its hooks
PLUGINS = ("pytest_html.plugin", "pytest_metadata.plugin", "pytest_timeout")
#: pytest's own plugins that no check uses (doctests, unittest cases, tmp_path, --stepwise,
#: --setup-plan, subtests, --pastebin): not imported, 0.1 s of CPU less at every run
UNUSED_BUILTINS = ("doctest", "unittest", "pastebin", "legacypath", "tmpdir", "stepwise",
                   "setuponly", "setupplan", "subtests")
#: rollback's own modules import the one redactor, checks._plugin.redact, before the checks
#: start; the package (a docstring) is then imported already, and its modules rewritten still
_ALREADY_IMPORTED = ("ignore:Module already imported so cannot be rewritten; checks._plugin:"
                     "pytest.PytestAssertRewriteWarning")


def _wants_xdist(args: Sequence[str]) -> bool:
    return any(a == "-n" or a.startswith(("-n", "--numprocesses", "--dist")) for a in args)


def _needs_subprocess(args: Sequence[str]) -> bool:
    """Where the checks cannot run in this process.

    With `-n` the checks run in xdist's worker processes anyway (a second interpreter each, so
    one more costs little), and its controller is kept in a process of its own: it waits for
    its workers on exit and a lost worker must not hang or take down the caller, which the
    subprocess's _stop can always end. Off the main thread, Ctrl-C, the run's timeout and
    pytest-timeout's SIGALRM cannot reach the checks: they would run unbounded.
    """
    return _wants_xdist(args) or threading.current_thread() is not threading.main_thread()


def _pytest_args(selection: str, html: Path, junit: Path, allure: Path | None, *, gate: bool,
                 run_context: Path | None, extra_args: Sequence[str]) -> list[str]:
    plugins = [*PLUGINS, *(["allure_pytest.plugin"] if allure else []),
               *(["xdist.plugin"] if _wants_xdist(extra_args) else [])]
    args = [
        "checks", "-m", SELECTIONS[selection],
        "--disable-plugin-autoload", *(a for name in plugins for a in ("-p", name)),
        # no cache folder written; no gc.collect() twice at the end (0.1-0.3 s) to find the
        # unraisable exceptions of test code: the checks are not the code under test
        "-p", "no:cacheprovider", "-p", "no:unraisableexception",
        *(a for name in UNUSED_BUILTINS for a in ("-p", f"no:{name}")),
        "-W", _ALREADY_IMPORTED,
        "--tb=short",
        f"--html={html}", "--self-contained-html",
        # xunit1: the family that keeps per-test <properties> (the warn verdict) in the file
        f"--junitxml={junit}", "-o", "junit_family=xunit1",
    ]
    if allure is not None:
        args.append(f"--alluredir={allure}")
    if gate:
        args.append("--gate")
    if run_context is not None:
        args.append(f"--run-context={run_context.resolve()}")
    args.append("--no-last-run")  # looked for by run_validation, from the caller's directory
    return args + list(extra_args)


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


def _in_subprocess(args: list[str], environment: dict[str, str], sink: TextIO,
                   echo: TextIO | None, timeout_s: float | None) -> int:
    environment = {**environment, "PYTHONDONTWRITEBYTECODE": environment.get(
        "PYTHONDONTWRITEBYTECODE", "1")}
    # umask 077: reports and logs quote response bodies; they are the owner's only (0600)
    process = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=TOOLKIT_ROOT,
                               env=environment, umask=0o077, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    timer = threading.Timer(timeout_s, _stop, (process,)) if timeout_s else None
    if timer is not None:
        timer.start()
    try:
        for line in process.stdout:
            sink.write(line)
            if echo is not None:
                echo.write(line)
        return process.wait()
    except BaseException:  # Ctrl-C, SIGTERM (as KeyboardInterrupt): no check outlives us
        # (pytest-xdist's workers end with their controller)
        _stop(process)
        raise
    finally:
        if timer is not None:
            timer.cancel()


class _Tee:
    """pytest's console, to pytest.log and to the caller's echo; not a terminal, as a pipe
    was not (no colours)."""

    def __init__(self, *files: TextIO | None) -> None:
        self.files = [f for f in files if f is not None]
        self.encoding = "utf-8"

    def write(self, text: str) -> int:
        for f in self.files:
            f.write(text)
        return len(text)

    def flush(self) -> None:
        for f in self.files:
            f.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _process_state(environment: Mapping[str, str]) -> Iterator[None]:
    """For one in-process run, the process as the `python -m pytest` subprocess saw it: this
    environment, the toolkit's directory, umask 077 (reports quote response bodies: owner only),
    and, on the way out, the caller's back, with the SIGALRM timer pytest-timeout borrows (a
    caller that is itself a timed pytest test keeps its own timeout)."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    alarm = signal.getsignal(signal.SIGALRM)
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(TOOLKIT_ROOT)
    mask = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(mask)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        signal.signal(signal.SIGALRM, alarm)
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, max(remaining - (time.monotonic() - started), 0.001))


class _Interrupted:
    """A plugin that notes whether pytest's session was cut short by a KeyboardInterrupt."""

    def __init__(self) -> None:
        self.seen = False

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.seen = self.seen or excinfo.errisinstance(KeyboardInterrupt)  # not pytest.exit()


def _in_process(args: list[str], environment: dict[str, str], sink: TextIO,
                echo: TextIO | None, timeout_s: float | None) -> int:
    """pytest.main here: no second interpreter, and the imports this process has are reused.

    Ctrl-C and SIGTERM (as KeyboardInterrupt, see sigterm_as_interrupt) stop the checks as they
    stopped the subprocess: pytest writes its reports, then the KeyboardInterrupt goes on to the
    caller. The timeout is a SIGINT to this thread: pytest stops and writes its reports, the
    run counts as failed; a second one comes 2 s later if pytest has not returned by then.
    """
    import pytest

    done, timed_out, lock = threading.Event(), threading.Event(), threading.Lock()
    main = threading.main_thread().ident
    assert main is not None
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if timed_out.is_set():
            if not done.is_set():
                raise KeyboardInterrupt
        elif callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def stop_at_timeout() -> None:
        assert timeout_s is not None
        if done.wait(timeout_s):
            return
        timed_out.set()
        for _ in range(3):
            with lock:
                if done.is_set():
                    return
                signal.pthread_kill(main, signal.SIGINT)
            if done.wait(2.0):
                return

    interrupted = _Interrupted()
    timer = threading.Thread(target=stop_at_timeout, name="validation-timeout", daemon=True) \
        if timeout_s else None
    tee = _Tee(sink, echo)
    code: int
    with _process_state(environment), contextlib.redirect_stdout(tee), \
            contextlib.redirect_stderr(tee):  # type: ignore[type-var]
        signal.signal(signal.SIGINT, on_sigint)
        try:
            if timer is not None:
                timer.start()
            try:
                code = int(pytest.main(args, plugins=[interrupted]))
            except KeyboardInterrupt:  # a second one, while pytest was writing its reports
                if not timed_out.is_set():
                    raise
                code = int(pytest.ExitCode.INTERRUPTED)
            finally:
                with lock:
                    done.set()
                if timer is not None:
                    timer.join()
        finally:
            signal.signal(signal.SIGINT, previous)
    if interrupted.seen and not timed_out.is_set():
        raise KeyboardInterrupt  # the caller's Ctrl-C or SIGTERM: reports written, now stop
    return code


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
    allure: bool = False,
) -> ValidationResult:
    """Run the checks of `selection` and return the verdict; see the module docstring.

    env replaces os.environ for the run (the secrets come from it); echo receives the console
    output as it comes; timeout_s bounds the whole run (each check is bounded anyway); allure
    also writes allure-results/.
    Raises UsageError for an unknown selection or when the toolkit's checks are not on disk,
    ConfigError for a target that is not configured (before any request).
    """
    if selection not in SELECTIONS:
        raise UsageError(f"unknown selection {selection!r}: choose one of {', '.join(SELECTIONS)}")
    if not (TOOLKIT_ROOT / "conftest.py").is_file() or not (TOOLKIT_ROOT / "checks").is_dir():
        raise UsageError(f"the validation suite is not at {TOOLKIT_ROOT} (conftest.py, checks/): "
                         "install the toolkit from its repository (pip install -e .)")
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
    allure_dir, log = (report_dir / "allure-results" if allure else None), report_dir / "pytest.log"
    args = _pytest_args(selection, html, junit, allure_dir, gate=gate, run_context=run_context,
                        extra_args=extra_args)
    started = time.perf_counter()
    log.touch(mode=0o600)
    with log.open("w", encoding="utf-8") as sink:
        if found is not None:
            sink.write(found.line + "\n")
            if echo is not None:
                echo.write(found.line + "\n")
        run = _in_subprocess if _needs_subprocess(extra_args) else _in_process
        try:
            code = run(args, environment, sink, echo, timeout_s)
        finally:
            startup.settle()  # when the checks were never collected (conftest.py settles then)
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
        allure_results=allure_dir,
        log=log,
        duration_s=time.perf_counter() - started,
        checks=checks,
        usage_error=usage,
    )
