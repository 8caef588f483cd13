"""The sandbox recovers from its own processes being killed: `up`, `status` and `down` find the
PostgreSQL and the API by what they are, not by the pids sandbox.json remembers, and take over.

Each test has an embedded sandbox of its own (its own PostgreSQL cluster, as `rollback sandbox
up` makes it without --database-url), driven through the CLI as an operator would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from sandbox import control
from tests.conftest import ROOT

#: each test builds and kills an embedded sandbox of its own: seconds, not milliseconds
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def sandbox_cli(*args: str, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACK_", "PYTEST_"))}
    return subprocess.run([sys.executable, "-m", "rollback", "sandbox", *args, "--dir", str(folder)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)


def status_of(folder: Path) -> dict[str, str]:
    result = sandbox_cli("status", folder=folder)
    assert result.returncode == 0, result.stderr
    pairs = (line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def leads_answer(state: control.State) -> int:
    path = "/api/v1/leads" if state.shape == "tistis" else "/v1/leads"
    response = httpx.get(state.api_base_url + path, timeout=10,
                         headers={"Authorization": f"Bearer {state.keys['tenant']}"})
    return response.status_code


@pytest.fixture(params=["contract", "tistis"])
def embedded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "sbx"
    started = sandbox_cli("up", "--shape", request.param, "--tenants", "5", folder=folder)
    assert started.returncode == 0, started.stdout + started.stderr
    yield folder
    sandbox_cli("down", folder=folder)
    state = control.State.load(folder)
    if state is not None:  # nothing may outlive the test, whatever it broke
        for process in control.api_processes(state):
            process.kill()
        server = state.postgres()
        if server is not None:
            for process in server.processes():
                process.kill()


def state_in(folder: Path) -> control.State:
    state = control.State.load(folder)
    assert state is not None
    return state


def test_up_after_kill_9_of_its_postgresql_brings_it_back_with_status_ready(embedded: Path) -> None:
    state = state_in(embedded)
    server = state.postgres()
    assert server is not None and status_of(embedded)["ready"] == "True"
    postmaster = server.postmaster_pid()
    assert postmaster is not None
    os.kill(postmaster, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(postmaster)], timeout=10)

    broken = status_of(embedded)
    assert broken["ready"] == "False" and broken["database"].startswith("embedded, stopped")
    assert (server.data_dir / "postmaster.pid").exists()  # left behind by the killed server

    again = sandbox_cli("up", folder=embedded)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" not in again.stdout
    assert f"removed the stale postmaster.pid of pid {postmaster}" in again.stdout
    back = status_of(embedded)
    assert back["ready"] == "True" and back["database"] == "embedded, running"
    state = state_in(embedded)
    assert [p.pid for p in control.api_processes(state)] == [state.api_pid]  # one API, known
    assert leads_answer(state) == 200  # the API reads the restarted database


def test_status_and_down_find_an_api_that_sandbox_json_lost_track_of(embedded: Path) -> None:
    state = state_in(embedded)
    serving = state.api_pid
    state.api_pid = 2**22 + 12345  # a pid that is not the API (as after a failed restart)
    state.save()

    seen = status_of(embedded)
    assert seen["ready"] == "True" and seen["api_pid"] == str(serving)
    assert f"(pid {serving}, taken over" in seen["api"]
    assert state_in(embedded).api_pid == serving

    state = state_in(embedded)
    state.api_pid = None
    state.save()
    stopped = sandbox_cli("down", folder=embedded)
    assert stopped.returncode == 0 and "sandbox stopped" in stopped.stdout
    assert not psutil.pid_exists(serving) or psutil.Process(serving).status() == psutil.STATUS_ZOMBIE
    assert control.api_processes(state) == []
    server = state.postgres()
    assert server is not None and server.processes() == []


def test_up_after_kill_9_of_its_api_starts_a_new_one(embedded: Path) -> None:
    state = state_in(embedded)
    assert state.api_pid is not None
    os.killpg(state.api_pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(state.api_pid)], timeout=10)
    assert status_of(embedded)["ready"] == "False"

    again = sandbox_cli("up", folder=embedded)
    assert again.returncode == 0, again.stdout + again.stderr
    assert status_of(embedded)["ready"] == "True"
    assert leads_answer(state_in(embedded)) == 200


def test_up_names_a_foreign_program_on_the_api_port_and_leaves_it_alone(embedded: Path) -> None:
    state = state_in(embedded)
    assert sandbox_cli("down", folder=embedded).returncode == 0
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", str(state.api_port),
                                 "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", state.api_port)) == 0:
                    break
            time.sleep(0.1)
        refused = sandbox_cli("up", folder=embedded)
        assert refused.returncode == 1
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"port {state.api_port} of the sandbox's API is taken by pid {squatter.pid}" in lines[0]
        assert squatter.poll() is None  # not ours: not killed
    finally:
        squatter.kill()
        squatter.wait(timeout=10)
