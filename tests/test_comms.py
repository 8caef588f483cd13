"""Messages that tell the truth: the communication of a run says what its gate really found.

After a failed gate no customer-facing message (e-mail, in-app notice, status page) says that
things work: customers get the "investigating" e-mail, which promises nothing, and FASE 2's
per-tenant messages wait for a gate that passes. The product and the support contacts are the
settings' `[communication]`, and durations leave out the wait at the confirmation prompt.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from rollback.runs import comms
from rollback.runs.journal import Journal, replay
from tests.conftest import Sandbox
from tests.targets import Target, make_target, run_in_terminal, to_toml

#: what a customer must not read while the gate fails: each one says or promises that it works
PROMISES = re.compile(r"work(s|ing)? (exactly )?as before|do not need to do anything|resolved|"
                      r"operating normally|no data was (changed or )?lost|checks pass|"
                      r"no key stopped working|keep working", re.IGNORECASE)
COMMUNICATION = {"product": "Acme Scheduling API", "support_email": "help@acme.test",
                 "support_phone": "+52 55 1234 5678", "status_page_url": "https://status.acme.test"}


def with_communication(target: Target) -> Target:
    data = tomllib.loads(target.config.read_text())
    data["communication"] = COMMUNICATION
    data["gate"] = {**data["gate"], "deadline_s": 8}  # a failing gate gives up quickly
    target.config.write_text(to_toml(data))
    return target


def customer_facing(folder: Path) -> dict[str, str]:
    names = [p for p in folder.rglob("*") if p.is_file() and (
        p.name.startswith(("customer_email", "status_page", "in_app_notice"))
        or p.parent.name in ("customer_emails", "in_app_notices"))]
    return {str(p.relative_to(folder)): p.read_text() for p in names}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("phase", ["fase1", "fase2"])
def test_after_a_failed_gate_no_customer_message_says_it_works(
        fresh_sandbox: Sandbox, tmp_path: Path, phase: str) -> None:
    target = with_communication(make_target(fresh_sandbox, tmp_path / "t"))
    with fresh_sandbox.chaos(error_rate=1.0, paths=["/v1/leads"]):
        failed = target.rollback("run", phase, "--yes")
    assert failed.returncode == 1 and "gate failed" in failed.stderr, failed.stderr
    (record,) = target.runs()
    folder = target.reports / record.run_id / "communication"
    seen = customer_facing(folder)
    assert sorted(seen) == ["customer_email.txt", "status_page.md"], sorted(seen)
    for name, text in seen.items():
        assert not PROMISES.search(text), f"{name} promises: {PROMISES.search(text)}\n{text}"
    email = seen["customer_email.txt"]
    assert "investigating" in email and "Acme Scheduling API" in email
    assert "help@acme.test or +52 55 1234 5678" in email and "https://status.acme.test" in email
    assert "TIS TIS" not in "".join(p.read_text() for p in folder.rglob("*") if p.is_file())
    assert "**Investigating**" in seen["status_page.md"]
    incidents = (folder / "slack_incidents.md").read_text()
    assert "validation FAILING" in incidents and "Mitigated" not in incidents
    assert "do not tell customers the issue is resolved" in (folder / "cs_briefing.md").read_text()

    # once the platform is healthy, the resumed run's gate passes and the messages say so
    passed = target.rollback("run", phase, "--yes")
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr
    assert f"resuming run {record.run_id}" in passed.stdout
    after = customer_facing(folder)
    if phase == "fase2":
        assert any(name.startswith("customer_emails/") for name in after)
        assert (folder / "in_app_notices.json").is_file()
        assert "customer_email.txt" not in after  # the investigating e-mail is gone
    else:
        assert "rolled back a recent change" in after["customer_email.txt"]
        assert "investigating" not in after["customer_email.txt"]
    assert "**Monitoring**" in after["status_page.md"]
    assert "Mitigated, monitoring" in (folder / "slack_incidents.md").read_text()


def test_investigating_is_what_a_run_without_a_passed_gate_documents() -> None:
    assert comms.documents_for("fase2", gate_passed=False) == [*comms.COMMON, "customer_email.txt"]
    assert "customer_emails/<tenant>.txt" in comms.documents_for("fase2")


# --- durations -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_wait_at_the_confirmation_prompt_is_not_in_the_run_s_duration(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    target = make_target(fresh_sandbox, tmp_path / "t")
    wait = 12.0
    ran = run_in_terminal(target, ["run", "fase1"], "ROLLBACK FASE1", wait_s=wait, timeout=240)
    assert ran.code == 0, ran.output[-3000:]
    (record,) = target.runs()
    assert record.duration_s is not None
    # the run was blocked at least `wait` seconds at the prompt; none of it is counted. Not a
    # speed bound: the run's time plus the wait fit in the wall time however slow the machine;
    # the slack (a quarter of the wait) is for the moment between the prompt showing and the
    # run starting its clock; a run that counted the wait would be over by 9 s less its start-up
    assert record.duration_s <= ran.wall_s - wait + wait / 4, (record.duration_s, ran.wall_s)
    briefing = (target.reports / record.run_id / "communication" / "cs_briefing.md").read_text()
    shown = re.search(r"\((?:(\d+) min )?(\d+) s\)", briefing)
    assert shown is not None
    assert int(shown.group(1) or 0) * 60 + int(shown.group(2)) <= record.duration_s + 1


def test_a_run_s_working_time_counts_each_attempt_and_its_preflight(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, "20260122T101500Z-fase1-aaaa1111")
    path = journal.path
    lines = [
        '{"ts": "2026-01-22T10:15:10.000Z", "event": "run_started", "run_id": "r", "phase": "fase1"}',
        '{"ts": "2026-01-22T10:15:10.100Z", "event": "step_finished", "step": "preflight", '
        '"duration_s": 2.0}',
        '{"ts": "2026-01-22T10:15:20.000Z", "event": "step_started", "step": "deploy"}',
        # killed; an hour later a resumed attempt, confirmed after its own pre-flight (1 s)
        '{"ts": "2026-01-22T11:15:00.000Z", "event": "run_resumed", "run_id": "r"}',
        '{"ts": "2026-01-22T11:15:00.100Z", "event": "step_finished", "step": "preflight", '
        '"duration_s": 1.0}',
        '{"ts": "2026-01-22T11:15:05.000Z", "event": "run_finished", "state": "succeeded"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    record = replay(path)
    assert record.active_s() == pytest.approx(2.0 + 10.0 + 1.0 + 5.0)
