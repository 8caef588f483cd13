"""The health monitor against the real sandbox: real HTTP, a real database, a real webhook receiver.

Notices travel through Apprise (`json://127.0.0.1:PORT/...`) to a small `http.server` on
127.0.0.1; metrics are scraped from the monitor's own /metrics endpoint while the fault lasts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollback.config import Settings, load_settings
from rollback.monitor import Monitor, Options
from rollback.monitor.alerts import AlertBook
from rollback.monitor.checks import Cycle
from rollback.probes import USER_AGENT, probe_api_health, probe_database, sample_endpoints
from sandbox import control
from tests.conftest import Sandbox, run_cli
from tests.receivers import SECRET, Receiver
from tests.reliability import FakeApi, start, wait_gone, wait_until
from tests.targets import make_target

T = TypeVar("T")


def rollback(*args: str, env: dict[str, str], cwd: Path,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollback", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# --- an API that answers badly ---------------------------------------------------------------


@pytest.fixture
def fake_api() -> Iterator[Callable[[str], str]]:
    """The URL of an API on 127.0.0.1 that answers badly (`tests.reliability.FakeApi`'s modes:
    'silent' never answers, 'endless' sends 200 headers and a body that never ends)."""
    made: list[FakeApi] = []

    def make(mode: str) -> str:
        made.append(FakeApi(mode))
        return made[-1].url

    yield make
    for fake in made:
        fake.close()


def selected_checks(report_dir: Path) -> int | None:
    """How many checks a validation selected, as its pytest.log's header says; None when it was
    stopped before pytest had collected them."""
    log = (report_dir / "pytest.log").read_text()
    found = re.search(r"collected (\d+) items?(?: / (\d+) deselected / (\d+) selected)?", log)
    if found is None:
        return None
    return int(found.group(3) or found.group(1))


def scrape(port: int) -> dict[str, float]:
    """The monitor's /metrics as {'name{label="v"}': value}; {} while it does not answer."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            values[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return values


@pytest.fixture
def box(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The shared sandbox, put back afterwards: the 5xx our injected faults leave in
    api_key_usage_logs would fail the real-traffic check of every later test for 15 minutes."""
    yield sandbox
    sandbox.sql("DELETE FROM api_key_usage_logs WHERE user_agent = %s", (USER_AGENT,))


# --- probes ----------------------------------------------------------------------------------


def test_probes_measure_a_healthy_sandbox(box: Sandbox) -> None:
    with httpx.Client(base_url=box.api_base_url, timeout=5) as client:
        health = probe_api_health(client)
        samples = sample_endpoints(client, box.keys["tenant"], ["/v1/leads", "/v1/branches"], 4)
    assert health.available and health.database == "ok" and health.version
    assert [(s.path, s.requests, s.errors, s.succeeded) for s in samples] == [
        ("/v1/leads", 4, 0, 4), ("/v1/branches", 4, 0, 4)]
    assert all(s.p95_ms is not None and 0 < s.p50_ms <= s.p95_ms for s in samples)  # type: ignore[operator]
    db = probe_database(box.database_url)
    assert db.ok and db.connect_ms is not None and db.connect_ms > 0


def test_health_probe_reports_the_database_error_the_api_admits(box: Sandbox) -> None:
    with box.chaos(health="db_error"), httpx.Client(base_url=box.api_base_url, timeout=5) as client:
        health = probe_api_health(client)
    assert not health.available
    assert health.reason == "HTTP 503, status degraded, database error"


def test_sampled_server_errors_are_counted(box: Sandbox) -> None:
    with box.chaos(error_rate=1.0, paths=["/v1/leads"]), \
            httpx.Client(base_url=box.api_base_url, timeout=5) as client:
        leads, branches = sample_endpoints(client, box.keys["tenant"], ["/v1/leads", "/v1/branches"], 3)
    assert (leads.errors, leads.labels) == (3, {"HTTP 500": 3})
    assert leads.p95_ms is None
    assert branches.errors == 0


def test_database_probe_failure_says_why_without_the_password() -> None:
    db = probe_database("postgresql://monitor:s3cret-pw@127.0.0.1:1/platform", timeout_s=2)
    assert not db.ok and db.reason is not None
    assert db.reason.startswith("cannot connect") and "s3cret-pw" not in db.reason


def test_database_probe_session_is_read_only(box: Sandbox) -> None:
    import psycopg

    # The probe's own options, applied to a session we can try to write in.
    with psycopg.connect(box.database_url, options="-c default_transaction_read_only=on") as conn, \
            pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("CREATE TEMP TABLE monitor_may_not_write (x int)")


# --- the continuous monitor, as a user runs it -----------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)  # a monitor process through an outage and back: 60 s is tight on a busy machine
def test_api_outage_sends_one_alert_and_one_recovery_and_shows_in_metrics_and_report(
    fresh_sandbox: Sandbox, receiver: Receiver, tmp_path: Path
) -> None:
    env = fresh_sandbox.env(ROLLBACK_NOTIFY_URLS=receiver.url())
    port = control.free_port()
    monitor = subprocess.Popen(
        [sys.executable, "-m", "rollback", "health", "--continuous", "--interval", "1", "--duration", "150s",
         "--metrics-port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # the process starts first (imports, the metrics server): slow on a busy machine
        wait_for("three healthy cycles", lambda: scrape(port).get("rollback_health_cycles_total", 0) >= 3,
                 timeout=60)
        assert scrape(port)["rollback_health_up"] == 1

        control.stop_api(fresh_sandbox.state)
        during = wait_for("the alert to fire", lambda: (
            m if (m := scrape(port)).get('rollback_health_alert_firing{check="api"}') == 1 else None))
        assert during['rollback_health_check_up{check="api"}'] == 0
        assert during["rollback_health_up"] == 0
        assert during['rollback_health_check_up{check="database"}'] == 1
        assert during['rollback_health_alerts_total{check="api",kind="alert"}'] == 1
        wait_for("the alert to reach the receiver", lambda: receiver.titles)
        time.sleep(3)  # three more failing cycles: still one notice

        control.start_api(fresh_sandbox.state)
        wait_for("the recovery to reach the receiver", lambda: len(receiver.titles) >= 2)
        after = scrape(port)
        assert after['rollback_health_alert_firing{check="api"}'] == 0
        assert after['rollback_health_check_last_success_timestamp_seconds{check="api"}'] > time.time() - 5
        time.sleep(2.5)  # healthy cycles send nothing more
        monitor.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = monitor.communicate(timeout=20)
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.communicate()

    assert monitor.returncode == 0, output
    assert [(n["type"], n["path"]) for n in receiver.notices] == [
        ("failure", "/hooks/rollback"), ("success", "/hooks/rollback")]
    alert, recovery = receiver.notices
    assert alert["title"] == "[ALERT] sandbox: API available failing"
    assert "connection refused" in alert["message"]
    assert recovery["title"].startswith("[RECOVERED] sandbox: API available ok again after")
    assert "stopped (interrupted)" in output
    assert "incidents: 1 alerted, 1 recovered, 0 still open" in output

    logs = tmp_path / "logs"
    (alert_file,) = logs.glob("health-alert-*-api.json")
    incident = json.loads(alert_file.read_text())
    assert incident["state"] == "resolved" and incident["ended"] > incident["started"]
    (check_log,) = logs.glob("health-check-*.log")
    assert "api=fail" in check_log.read_text()
    assert SECRET not in check_log.read_text() and SECRET not in output

    report_file = tmp_path / "health.html"
    done = rollback("health", "--report", "--since", "1h", "--output", str(report_file),
                    env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 incidents (0 open)" in done.stdout
    html = report_file.read_text()
    assert "API available" in html and incident["started"] in html and incident["ended"] in html
    assert 'fill="#d62728" fill-opacity="0.12"' in html  # the incident drawn on the charts


class Collect:
    """A view that keeps what it is shown."""

    def __init__(self) -> None:
        self.cycles: list[Cycle] = []
        self.notes: list[str] = []

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def note(self, line: str) -> None:
        self.notes.append(line)

    def cycle(self, cycle: Cycle, book: AlertBook, missed_total: int) -> None:
        self.cycles.append(cycle)


def run_in_thread(settings: Settings, options: Options,
                  view: Collect | None = None) -> tuple[Monitor, threading.Thread, list[Cycle]]:
    """A monitor in this process (no signal handlers off the main thread); its cycles, as seen."""
    view = view or Collect()
    monitor = Monitor(settings, options, view)
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    return monitor, thread, view.cycles


def settings_for(box: Sandbox, tmp_path: Path, **env: str) -> Settings:
    return load_settings(env=box.env(**env), overrides={"paths": {"logs_dir": tmp_path / "logs"},
                                                        "health": {"samples_per_endpoint": 3}})


def test_server_errors_alert_on_error_rate_and_show_in_metrics_and_pushes(
    box: Sandbox, receiver: Receiver, tmp_path: Path
) -> None:
    port = control.free_port()
    settings = settings_for(box, tmp_path, ROLLBACK_NOTIFY_URLS=receiver.url("errors"))
    monitor, thread, seen = run_in_thread(settings, Options(
        interval_s=0.25, metrics_port=port, pushgateway=f"http://127.0.0.1:{receiver.port}"))
    try:
        wait_for("two healthy cycles", lambda: len(seen) >= 2)
        with box.chaos(error_rate=1.0):
            firing = 'rollback_health_alert_firing{check="error_rate"}'
            during = wait_for("the error-rate alert", lambda: (
                m if (m := scrape(port)).get(firing) == 1 else None))
        assert during["rollback_health_error_ratio"] == 1.0
        assert during['rollback_health_check_up{check="api"}'] == 1
        wait_for("the recovery", lambda: len(receiver.titles) >= 2)
    finally:
        monitor.stop()
        thread.join(20)
    assert receiver.titles == ["[ALERT] sandbox: Error rate failing",
                               "[RECOVERED] sandbox: Error rate ok again after " + receiver.titles[1].rsplit(
                                   "after ", 1)[1]]
    assert "HTTP 500" in receiver.notices[0]["message"]
    pushed = [body for path, body in receiver.puts
              if path == "/metrics/job/rollback_health/mode/continuous/target/sandbox"]
    assert pushed and "rollback_health_cycles_total" in pushed[-1]


def test_slow_endpoint_alerts_on_response_time_and_skips_missed_slots(box: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(box, tmp_path)
    with box.chaos(latency_ms=1100, paths=["/v1/branches"]):
        monitor, thread, seen = run_in_thread(settings, Options(interval_s=0.5, max_cycles=3))
        thread.join(30)
    assert [c.checks["latency"].status for c in seen] == ["fail"] * 3
    assert seen[0].checks["api"].status == "pass"
    assert "to /v1/branches > alert 1000 ms" in seen[0].checks["latency"].detail
    # each cycle takes over 1.1 s on a 0.5 s schedule: the next one starts on the first free slot
    # of its own (3 on, or more on a loaded machine), inside that slot, never shifted off the grid;
    # the slots in between are skipped and logged as such
    slots = [c.slot for c in seen]
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert slots[0] == 0 and all(gap >= 3 for gap in gaps), slots
    assert all(c.lag_ms < 0.9 * 500 for c in seen), [round(c.lag_ms) for c in seen]
    assert [i.check for i in monitor.book.open_incidents] == ["latency"]
    text = next((tmp_path / "logs").glob("health-check-*.log")).read_text()
    skipped = [int(n) for n in re.findall(r"(\d+) slot\(s\) of 0\.5 s skipped", text)]
    assert skipped == [gap - 1 for gap in gaps], (skipped, slots)


def test_a_dead_pushgateway_and_a_dead_webhook_do_not_stop_the_monitor(box: Sandbox, tmp_path: Path) -> None:
    dead = control.free_port()
    settings = settings_for(box, tmp_path, ROLLBACK_NOTIFY_URLS=f"json://user:tok3n@127.0.0.1:{dead}/x")
    with box.chaos(health="db_error"):
        _, thread, seen = run_in_thread(settings, Options(
            interval_s=0.2, max_cycles=4, pushgateway=f"http://127.0.0.1:{dead}"))
        thread.join(30)
    assert len(seen) == 4
    text = next((tmp_path / "logs").glob("health-check-*.log")).read_text()
    assert text.count("PUSHGATEWAY push") == 1  # logged when it starts failing, not every cycle
    assert "ALERT-DELIVERY-FAILED alert to json://user:****@127.0.0.1" in text
    assert "tok3n" not in text


def test_alerts_still_go_out_when_logs_cannot_be_written(box: Sandbox, receiver: Receiver,
                                                         tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    settings = load_settings(env=box.env(ROLLBACK_NOTIFY_URLS=receiver.url()), overrides={
        "paths": {"logs_dir": tmp_path / "not-a-folder" / "logs"}})
    view = Collect()
    with box.chaos(health="db_error"):
        _, thread, seen = run_in_thread(settings, Options(interval_s=0.2, max_cycles=3), view)
        thread.join(30)
    assert len(seen) == 3
    wait_for("the alert", lambda: receiver.titles)
    assert receiver.titles == ["[ALERT] sandbox: API available failing"]
    assert sum("cannot write under" in n for n in view.notes) == 1  # once, not every cycle


def test_an_endless_body_counts_as_the_api_unavailable_within_the_probe_timeout(
    box: Sandbox, tmp_path: Path, fake_api: Callable[[str], str]
) -> None:
    settings = load_settings(env=box.env(API_BASE_URL=fake_api("endless")), overrides={
        "paths": {"logs_dir": tmp_path / "logs"}, "health": {"probe_timeout_s": 1}})
    _, thread, seen = run_in_thread(settings, Options(interval_s=0.2, max_cycles=2))
    thread.join(40)
    assert not thread.is_alive(), f"the monitor still waits for the answer's end after {len(seen)} cycles"
    assert [(c.checks["api"].status, c.checks["api"].detail) for c in seen] == [
        ("fail", "/health: timeout")] * 2
    # the body never ends: a cycle that ends at all was cut by a timeout; ten times the probe's
    # 1 s is "its own timeout, not some later one", with room for a loaded machine
    assert all(c.duration_ms < 10 * 1000 for c in seen), [round(c.duration_ms) for c in seen]


# --- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--continuous", "--interval", "fast"], "--interval 'fast': expected a number with a unit"),
    (["--continuous", "--duration", "0s"], "--duration '0s': must be more than zero"),
    (["--duration", "1h"], "--duration only applies with --continuous"),
    (["--since", "2h"], "--since only applies with --report"),
    (["--report", "--since", "yesterday"], "--since 'yesterday'"),
])
def test_bad_options_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    done = rollback("health", *args, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_duration_stops_the_monitor_by_itself(box: Sandbox, tmp_path: Path) -> None:
    # a 1 s interval: a healthy cycle takes a fraction of it even on a loaded machine, so each
    # of the 3 slots of the 3 s gets its cycle
    done = rollback("health", "--continuous", "--interval", "1", "--duration", "3s",
                    env=box.env(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped (--duration 3 s reached) after 3 cycles" in done.stdout
    assert done.stdout.count(" cycle=") == 3  # plain lines: stdout is not a terminal


def test_health_once_runs_the_health_checks_into_a_report(fresh_sandbox: Sandbox, receiver: Receiver,
                                                          tmp_path: Path) -> None:
    # A sandbox of its own: the real-traffic check reads the last 15 minutes of usage logs,
    # where other tests' injected faults on the shared sandbox may still be.
    done = rollback("health", "--pushgateway", f"http://127.0.0.1:{receiver.port}",
                    env=fresh_sandbox.env(), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "healthy health:" in done.stdout
    (report,) = (tmp_path / "reports").glob("*-health/report.html")
    assert report.stat().st_size > 10_000
    ((path, body),) = receiver.puts
    assert path == "/metrics/job/rollback_health/mode/once/target/sandbox"
    assert "rollback_health_up 1.0" in body and 'rollback_health_check_up{check="' in body


def test_health_once_exits_1_when_a_health_check_fails(box: Sandbox, tmp_path: Path) -> None:
    with box.chaos(health="db_error"):
        done = rollback("health", env=box.env(), cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "unhealthy" in done.stdout


def test_the_monitor_commands_are_on_the_toolkit_cli() -> None:
    from rollback.cli import cli

    assert {"health", "logs"} <= set(cli.commands)
    assert "prune" in cli.commands["logs"].commands  # type: ignore[attr-defined]


@pytest.mark.timeout(120)  # a fresh sandbox, then a monitor process: 60 s is tight on a busy machine
def test_sigterm_stops_the_continuous_monitor_facing_an_endless_api_with_its_summary(
    fresh_sandbox: Sandbox, tmp_path: Path, fake_api: Callable[[str], str]
) -> None:
    target = make_target(fresh_sandbox, tmp_path / "t", health={"probe_timeout_s": 1, "fire_after": 2})
    # each cycle waits its 1 s probe timeout on a 100 ms schedule: the signal lands inside one
    monitor = start(target, "health", "--continuous", "--interval", "100ms", folder=tmp_path,
                    name="monitor", API_BASE_URL=fake_api("endless"))
    try:
        wait_until(lambda: monitor.output().count(" cycle=") >= 2, "two cycles", monitor, timeout=30)
        monitor.process.send_signal(signal.SIGTERM)
        # the cycle in progress ends within its 1 s probe timeout (the body never ends: any exit
        # at all is the timeout's); 30 s leaves room for a busy machine to write the summary
        code = monitor.wait(timeout=30)
    finally:
        if monitor.alive():
            monitor.process.kill()
    output = monitor.output()
    assert code == 1, output  # exit 1: an incident (the API) is still open
    assert "stopped (terminated) after" in output
    assert "OPEN API available failing since" in output and "/health: timeout" in output
    assert "Traceback" not in output


@pytest.mark.timeout(120)  # a fresh sandbox, then a whole CLI run: 60 s is tight on a busy machine
def test_health_once_against_a_hung_api_stops_at_its_overall_budget(
    fresh_sandbox: Sandbox, tmp_path: Path, fake_api: Callable[[str], str]
) -> None:
    target = make_target(fresh_sandbox, tmp_path / "t", target={"request_timeout_s": 1},
                         thresholds={"check_timeout_s": 2})
    done = run_cli("health", env=target.env(API_BASE_URL=fake_api("silent")), cwd=tmp_path, timeout=50)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the health checks did not finish within 6 s" in done.stdout
    # the budget is 3 x [thresholds] check_timeout_s (6 s), whatever the number of checks: it
    # stops the checks, and those not reached have no verdict. Without it every check gets one
    # (about 30 s here, each waiting for its own timeout). Counted, not timed: a loaded machine
    # reaches fewer checks in 6 s, never more
    summary = re.search(r"unhealthy health: (\d+) passed \(\d+ with warnings\), (\d+) failed, "
                        r"(\d+) skipped in", done.stdout)
    assert summary is not None, done.stdout[-1000:]
    reached = sum(int(n) for n in summary.groups())
    (report_dir,) = target.reports.glob("*-health")
    selected = selected_checks(report_dir)
    assert selected is not None or reached == 0, done.stdout[-1000:]  # stopped even before collecting
    assert selected is None or reached < selected, (reached, selected, done.stdout[-1000:])


@pytest.mark.timeout(120)  # a fresh sandbox, then a whole CLI run: 60 s is tight on a busy machine
def test_sigterm_stops_health_once_and_its_checks_with_exit_130(
    fresh_sandbox: Sandbox, tmp_path: Path, fake_api: Callable[[str], str]
) -> None:
    target = make_target(fresh_sandbox, tmp_path / "t")
    once = start(target, "health", folder=tmp_path, name="once", API_BASE_URL=fake_api("silent"))

    def checking() -> bool:  # the checks run in the command's process (a child only with -n)
        logs = list(target.reports.glob("*-health/pytest.log"))
        return bool(logs) and "collected" in logs[0].read_text()

    wait_until(checking, "the health checks to start", once, timeout=60)
    checks = once.children()
    try:
        once.process.send_signal(signal.SIGTERM)
        code = once.wait(timeout=20)
        wait_gone(checks, timeout=2)  # nothing it started outlives the command
    finally:
        once.process.kill()
        for process in checks:
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert code == 130, once.output()
    assert once.stderr.read_text().strip().splitlines()[-1] == "interrupted"
