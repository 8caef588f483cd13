"""Helpers of the tests that run the checks against a sandbox changed on purpose: a bad deploy,
a phase's code taken back by hand, leads arriving behind the API's back, a failing validation,
and putting the shared sandbox back afterwards.

Shared by the check and report test modules (no test module imports another's helpers: they
live here).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from checks.probe import USER_AGENT as CHECKS_AGENT
from rollback.probes import USER_AGENT as MONITOR_AGENT
from rollback.runs import gitops, phasecode
from rollback.validate import ValidationResult, run_validation
from tests.conftest import Sandbox

Patches = list[tuple[str, str, str]]
GIT_AUTHOR = ("-c", "user.name=test", "-c", "user.email=test@example.com")
#: the name of the leads `leads_arriving` writes (and deletes afterwards)
WRITER = "rollback-test-arriving-lead"


def deploy_patched(box: Sandbox, patches: Patches) -> None:
    """Apply (file, old, new) replacements to the checkout, commit them, deploy."""
    for name, old, new in patches:
        path = box.repo / name
        text = path.read_text()
        assert old in text, f"{name} no longer holds {old!r}: update this test's patch"
        path.write_text(text.replace(old, new))
    gitops.git(box.repo, *GIT_AUTHOR, "commit", "-q", "-am", "A bad deploy (test)")
    box.deploy()


def roll_back_code(box: Sandbox, phase: str) -> None:
    """Take the phase's code back as the profile's manifest says, commit, and deploy."""
    spec = box.profile.phase(phase)
    if spec.whole_commits:  # the commits of its trailer, reverted whole
        assert spec.find.trailer, spec
        commits = gitops.out(box.repo, "log", "--format=%H",
                             f"--grep={spec.find.trailer}: {phase}").split()
        for commit in commits:  # newest first
            gitops.git(box.repo, *GIT_AUTHOR, "revert", "--no-edit", commit)
    else:  # its files and hunks out of the commit that carries several phases
        assert spec.find.subject, spec
        commits = gitops.out(box.repo, "log", "--format=%H", "--grep", spec.find.subject).split()
        plan = phasecode.plan_revert(box.repo, commits, phasecode.phase_code(spec))
        phasecode.apply_revert(box.repo, plan, f"Revert {phase.upper()} by hand\n\nRollback-Run: test")
    assert commits, f"no commit of {phase} in {box.repo}"
    box.deploy()


@contextlib.contextmanager
def leads_arriving(box: Sandbox, every_s: float = 0.4) -> Iterator[None]:
    """New leads of the test tenant, written straight into the database (as the platform's
    other writers do: no API request tells a response cache) while the block runs. A cache that
    sets no header shows only then. The leads are deleted afterwards."""
    stop, failures = threading.Event(), []

    def write() -> None:
        try:
            with psycopg.connect(box.database_url, autocommit=True) as conn:
                while not stop.wait(every_s):
                    conn.execute("INSERT INTO leads (id, tenant_id, branch_id, phone, full_name) "
                                 "VALUES (%s, %s, %s, %s, %s)",
                                 (uuid.uuid4(), box.tenant_id, box.branch_id,
                                  f"+52{uuid.uuid4().int % 10**10:010d}", WRITER))
        except psycopg.Error as exc:  # reported by the test, not lost in a thread
            failures.append(exc)

    thread = threading.Thread(target=write, name="leads-arriving", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        box.sql("DELETE FROM leads WHERE full_name = %s", (WRITER,))
    assert not failures, f"the lead writer failed: {failures[0]}"


def failed(result: ValidationResult, check: str, *fragments: str) -> None:
    """The check failed, and its message holds every fragment."""
    __tracebackhide__ = True
    outcome = result.check(check)
    assert outcome.verdict == "fail", f"{check} is {outcome.verdict}; log:\n{result.log.read_text()[-3000:]}"
    for fragment in fragments:
        assert fragment in outcome.message, f"{fragment!r} not in {outcome.message!r}"


def put_back(box: Sandbox) -> None:
    """The 500s we caused would fail the real-traffic check of later tests for 15 minutes."""
    box.sql("DELETE FROM api_key_usage_logs WHERE user_agent IN (%s, %s)", (CHECKS_AGENT, MONITOR_AGENT))


def failing_validation(box: Sandbox, reports_root: Path) -> ValidationResult:
    """`rollback validate health` while every leads request answers 500."""
    try:
        with box.chaos(error_rate=1.0, paths=[box.profile.leads_path]):
            return run_validation("health", reports_root=reports_root, env=box.env())
    finally:
        put_back(box)
