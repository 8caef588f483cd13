"""Scheduled health, as the shipped examples run it: each scheduler's own command, read from its
file (the crontab, the Kubernetes CronJobs, the GitHub workflow), run as separate one-cycle
processes against a broken sandbox, alerts exactly once, and its daily report job, run with
the environment that scheduler gives it, shows the incident still open.

Alerts travel through Apprise to a real webhook receiver on 127.0.0.1 (tests/receivers.py),
which also stands in for the Pushgateway.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollback.probes import USER_AGENT
from tests.conftest import Sandbox
from tests.receivers import Receiver

ROOT = Path(__file__).resolve().parent.parent
#: what the examples expect the scheduler's environment (a file, a Secret, secrets) to hold
SECRET_NAMES = ("TEST_API_KEY", "DATABASE_URL", "ROLLBACK_NOTIFY_URLS")
TARGET_NAMES = ("API_BASE_URL", "ROLLBACK_PROFILE", *SECRET_NAMES)


@dataclass(frozen=True)
class Scheduled:
    """One scheduler's two commands (argv after `rollback`) and the variables each run gets."""

    name: str
    cycle: list[str]
    cycle_env: set[str]
    report: list[str]
    report_env: set[str]


def _after_rollback(command: str) -> list[str]:
    """The argv after `rollback` in a shell command line (`cd ... && rollback health ... >> x`)."""
    for part in re.split(r"&&|;|\|", command):
        words = shlex.split(part.split(">>")[0])
        if words and words[0].endswith("rollback") and len(words) > 1:
            return words[1:]
    raise AssertionError(f"no rollback command in {command!r}")


def from_cron() -> Scheduled:
    lines = [line for line in (ROOT / "examples/cron/rollback-health.cron").read_text().splitlines()
             if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    commands = [_after_rollback(" ".join(line.split()[6:])) for line in lines]
    cycle = next(c for c in commands if "--continuous" in c)
    report = next(c for c in commands if "--report" in c)
    sourced = set(TARGET_NAMES)  # both lines source ./rollback.env, which holds all of them
    return Scheduled("cron", cycle, sourced, report, sourced)


def _k8s_container(jobs: dict[str, Any], name: str) -> tuple[list[str], set[str]]:
    container = jobs[name]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    names = {entry["name"] for entry in container.get("env", [])}
    if any("secretRef" in source for source in container.get("envFrom", [])):
        names |= set(SECRET_NAMES)  # the rollback-health Secret of the file's header
    args = container["args"]
    assert args[0] == "rollback"
    return args[1:], names


def from_kubernetes() -> Scheduled:
    documents = yaml.safe_load_all((ROOT / "examples/kubernetes/rollback-health-cronjobs.yaml").read_text())
    jobs = {d["metadata"]["name"]: d for d in documents if d and d["kind"] == "CronJob"}
    cycle, cycle_env = _k8s_container(jobs, "rollback-health-check")
    report, report_env = _k8s_container(jobs, "rollback-health-report")
    return Scheduled("kubernetes", cycle, cycle_env, report, report_env)


def _workflow_step(workflow: dict[str, Any], job: str, keyword: str) -> tuple[list[str], set[str]]:
    steps = workflow["jobs"][job]["steps"]
    step = next(s for s in steps if keyword in str(s.get("run", "")))
    names = {*workflow.get("env", {}), *workflow["jobs"][job].get("env", {}), *step.get("env", {})}
    return _after_rollback(step["run"]), names


def from_github() -> Scheduled:
    workflow = yaml.safe_load((ROOT / ".github/workflows/scheduled-health.yml").read_text())
    cycle, cycle_env = _workflow_step(workflow, "cycle", "--continuous")
    report, report_env = _workflow_step(workflow, "daily-report", "--report")
    return Scheduled("github", cycle, cycle_env, report, report_env)


SCHEDULERS = {"cron": from_cron, "kubernetes": from_kubernetes, "github": from_github}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_runs_one_damped_cycle_and_a_daily_report(name: str) -> None:
    scheduled = SCHEDULERS[name]()
    assert scheduled.cycle[:4] == ["health", "--continuous", "--max-cycles", "1"], scheduled.cycle
    assert scheduled.report[:4] == ["health", "--report", "--since", "24h"], scheduled.report
    assert set(TARGET_NAMES) <= scheduled.cycle_env
    # the report names the same target as the cycles, or it cannot find their alert state
    assert {"API_BASE_URL", "DATABASE_URL"} <= scheduled.report_env


def test_the_systemd_examples_run_the_damped_monitor_and_the_daily_report() -> None:
    units = ROOT / "examples/systemd"
    monitor = _after_rollback(re.search(r"^ExecStart=(.*)$", (units / "rollback-health.service").read_text(),
                                        re.M).group(1))  # type: ignore[union-attr]
    report = _after_rollback(re.search(r"^ExecStart=(.*)$",
                                       (units / "rollback-health-report.service").read_text(),
                                       re.M).group(1))  # type: ignore[union-attr]
    assert monitor[:2] == ["health", "--continuous"]
    assert report[:4] == ["health", "--report", "--since", "24h"]
    for unit in ("rollback-health.service", "rollback-health-report.service"):
        assert "EnvironmentFile=/etc/rollback/rollback.env" in (units / unit).read_text()


def _environment(box: Sandbox, names: set[str], notify: str) -> dict[str, str]:
    env = box.env(ROLLBACK_NOTIFY_URLS=notify, ROLLBACK_PROFILE=box.shape)
    for variable in TARGET_NAMES:  # what the scheduler would not give this job
        if variable not in names:
            env.pop(variable, None)
    return env


def _with_pushgateway(argv: list[str], url: str) -> list[str]:
    return [url if previous == "--pushgateway" else arg
            for previous, arg in zip(["", *argv[:-1]], argv, strict=True)]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_two_separate_one_cycle_runs_against_a_broken_sandbox_alert_exactly_once(
    name: str, tistis_sandbox: Sandbox, receiver: Receiver, tmp_path: Path,
) -> None:
    scheduled = SCHEDULERS[name]()
    box = tistis_sandbox
    cycle = _with_pushgateway(scheduled.cycle, f"http://127.0.0.1:{receiver.port}")

    def run(argv: list[str], names: set[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rollback", *argv], cwd=tmp_path,
                              env=_environment(box, names, receiver.url()), capture_output=True,
                              text=True, timeout=120, check=False)

    try:
        with box.chaos(error_rate=1.0):
            first = run(cycle, scheduled.cycle_env)
            assert receiver.titles == [], first.stdout + first.stderr  # one failing cycle: damped
            second = run(cycle, scheduled.cycle_env)
            third = run(cycle, scheduled.cycle_env)
    finally:
        box.sql("DELETE FROM api_key_usage_logs WHERE user_agent = %s", (USER_AGENT,))
    assert [first.returncode, second.returncode, third.returncode] == [0, 1, 1], second.stdout
    assert receiver.titles == ["[ALERT] sandbox: Error rate failing"]
    assert "HTTP 500" in receiver.notices[0]["message"]
    if "--pushgateway" in cycle:  # each run pushed its metrics (after its cycle, and as it ends)
        assert len({body for _, body in receiver.puts}) >= 3
    history = list((tmp_path / "logs").glob("health-history-*.jsonl"))
    assert len(history) == 1 and history[0].read_text().count('"kind":"cycle"') == 3

    report = run(scheduled.report, scheduled.report_env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "3 cycles over 1 d, 1 incidents (1 open)" in report.stdout, report.stdout
    if "--output" in scheduled.report:
        page = tmp_path / scheduled.report[scheduled.report.index("--output") + 1]
    else:
        (page,) = (tmp_path / "reports").glob("health-report-*.html")
    text = page.read_text(encoding="utf-8")
    assert "Error rate" in text and "still open" in text
