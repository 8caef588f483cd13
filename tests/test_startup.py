"""The `rollback` command's garbage-collector policy (rollback.startup): its start-up deferred,
settled once the work begins, frozen at exit; and a process that is not the command's (this
test run, a caller's program) left as it was."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollback import startup

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def process_gc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This test process's collector and the module's state, as they were, afterwards."""
    monkeypatch.setattr(startup, "_owned", False)
    monkeypatch.setattr(startup, "_deferred", False)
    frozen = gc.get_freeze_count()
    yield
    gc.enable()
    if gc.get_freeze_count() > frozen:
        gc.unfreeze()


@pytest.mark.usefixtures("process_gc")
def test_a_process_not_the_commands_is_left_alone() -> None:
    frozen = gc.get_freeze_count()
    startup.defer()
    assert gc.isenabled()
    startup.settle()
    startup.at_exit()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


@pytest.mark.usefixtures("process_gc")
def test_the_commands_start_up_is_deferred_then_settled() -> None:
    startup.own()
    startup.defer()
    assert not gc.isenabled()
    kept = [[object()] for _ in range(1000)]  # alive at the settle: frozen with the imports
    before = gc.get_freeze_count()
    startup.settle()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(kept)
    startup.settle()  # a second settle (run_validation's, after conftest.py's) changes nothing
    assert gc.isenabled()


@pytest.mark.usefixtures("process_gc")
def test_a_collector_the_caller_turned_off_stays_off() -> None:
    startup.own()
    gc.disable()
    startup.defer()
    startup.settle()
    assert not gc.isenabled()  # defer() did not take it over, so settle() leaves it off


@pytest.mark.usefixtures("process_gc")
def test_at_exit_freezes_everything_and_settles_a_start_up_left_open() -> None:
    startup.own()
    startup.defer()
    startup.at_exit()
    assert gc.isenabled() and gc.get_freeze_count() > 0


def test_collecting_the_checks_ends_the_commands_start_up(tmp_path: Path) -> None:
    """conftest.py settles a deferred start-up once the checks are collected: the collector is
    on again while they run, not only when run_validation returns. A real pytest collection of
    checks/ in a process that deferred its start-up as `rollback validate` does (no request is
    sent: the target is named but only collected for)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import gc\n"
        "import pytest\n"
        "from rollback import startup\n"
        "startup.own()\n"
        "startup.defer()\n"
        "seen = []\n"
        "class Seen:\n"
        "    @pytest.hookimpl(trylast=True)  # after every other plugin's, conftest.py's too\n"
        "    def pytest_collection_finish(self, session):\n"
        "        seen.append(gc.isenabled())\n"
        "code = pytest.main(['checks', '-m', 'fase2', '--collect-only', '-q',\n"
        "                    '-p', 'no:cacheprovider'], plugins=[Seen()])\n"
        "print(code, seen)\n", encoding="utf-8")
    env = {**os.environ, "API_BASE_URL": "http://127.0.0.1:9", "TEST_API_KEY": "tis_test_x",
           "ROLLBACK_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("", encoding="utf-8")
    for name in ("DATABASE_URL", "TEST_BRANCH_API_KEY", "TEST_REVOKED_API_KEY"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, str(probe)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 [True]", result.stdout[-2000:]


def test_the_command_exits_with_its_code_and_its_output_whole() -> None:
    """at_exit() runs on every way out of main(): a usage error still says its line, exit 2."""
    result = subprocess.run([sys.executable, "-m", "rollback", "validate", "fase9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "fase9" in result.stderr and "--help" in result.stderr


def test_httpx_is_imported_without_its_command_line_which_still_runs() -> None:
    """rollback/__init__.py: httpx's own CLI (rich's progress bars, pygments) is not imported
    with httpx; `httpx.main` still is the real one when called."""
    probe = ("import sys, rollback, httpx; "
             "print(sorted(m for m in ('httpx._main', 'rich.progress', 'pygments') "
             "if m in sys.modules and getattr(sys.modules[m], '__file__', None)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    called = subprocess.run([sys.executable, "-c", "import sys, rollback, httpx; "
                             "sys.argv = ['httpx', '--help']; httpx.main()"],
                            capture_output=True, text=True, timeout=120)
    assert called.returncode == 0 and "HTTPX" in called.stdout, called.stderr
