"""The guide's communication, rendered from the run's own facts and sent through Apprise.

Templates live in `rollback/templates/` (Jinja2, StrictUndefined: a missing fact is an error,
never an empty placeholder). Affected keys and tenants come from the run's backup table, so
they are exactly the keys the run converted, never "keys updated in the last 5 minutes".

Files, in `reports/<run id>/communication/`:

    slack_engineering.md, slack_incidents.md, status_page.md, cs_briefing.md, postmortem.md
    customer_email.txt                  FASE 1 and 3: one email for every customer
    customer_emails/<tenant slug>.txt   FASE 2: one per affected tenant, naming its keys
    in_app_notices/<tenant slug>.md     FASE 2: one per affected tenant
    in_app_notices.json                 FASE 2: the same, for import by the dashboard

Every document states the gate's real result. Until the gate has passed, what customers read
promises nothing: `customer_email.txt` is the "investigating" e-mail (for every phase), the status
page says investigating, and FASE 2's per-tenant e-mails and in-app notices are not rendered at
all; a later run that passes the gate renders them. The product name and the support contacts
come from the settings' `[communication]` section. Durations are the run's working time (see
`RunRecord.active_s`): not the wait at the confirmation prompt, not the time between attempts.

The Slack summary (#engineering when the gate passed, #incidents when it failed) goes to every
URL of ROLLBACK_NOTIFY_URLS; without it nothing is sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from rollback.actions import branch_keys
from rollback.runs import dbops
from rollback.runs.core import PHASE_TITLES, Run
from rollback.runs.journal import JOURNAL_NAME, StorageFault, events, replay, utc_now, who

PUBLIC = {
    "fase1": ("branch filtering on list endpoints", "Requests that send branch_id now receive "
              "unfiltered results for the key."),
    "fase2": ("branch-specific API keys", "Branch-specific API keys now work as account-wide keys."),
    "fase3": ("API performance optimizations", "Data is always fresh; some requests may be slower."),
}
COMMON = ["slack_engineering.md", "slack_incidents.md", "status_page.md", "cs_briefing.md",
          "postmortem.md"]
#: what customers get while the gate has not passed: it promises nothing
INVESTIGATING = "customer_email_investigating.txt.j2"


def documents_for(phase: str | list[str], gate_passed: bool = True) -> list[str]:
    """The files a run of `phase` (or, with --whole-commit, of several phases) writes; after a
    failed gate, customers get the investigating e-mail only."""
    phases = [phase] if isinstance(phase, str) else list(phase)
    if not gate_passed:
        return [*COMMON, "customer_email.txt"]
    names = list(COMMON)
    if "fase2" in phases:
        names += ["customer_emails/<tenant>.txt", "in_app_notices/<tenant>.md", "in_app_notices.json"]
    others = [p for p in phases if p != "fase2"]
    names += ["customer_email.txt"] if phases == others[:1] else [
        f"customer_email_{p}.txt" for p in others]
    return names


def covered(run: Run) -> list[str]:
    """The phases the run took back: its own, or with --whole-commit every phase of the commit."""
    return list(run.facts.get("phases") or [run.options.phase])


def environment() -> Environment:
    return Environment(loader=PackageLoader("rollback", "templates"), undefined=StrictUndefined,
                       autoescape=False, trim_blocks=True, lstrip_blocks=True,
                       keep_trailing_newline=True)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _timeline(run: Run) -> list[dict[str, str]]:
    path = run.dir / JOURNAL_NAME
    if not path.is_file():
        return []
    lines = []
    for event in events(path):
        kind, step = event.get("event"), event.get("step", "")
        text = {
            "run_started": "run started",
            "run_resumed": _resumed(event),
            "step_finished": f"{step}: {event.get('summary', '')}",
            "step_failed": f"{step} FAILED: {event.get('error', '')}",
            "step_undone": f"{step} taken back: {event.get('reason', '')}",
            "run_interrupted": f"run interrupted during {step or 'start-up'}",
        }.get(str(kind))
        if text:
            lines.append({"ts": str(event["ts"])[:19].replace("T", " "), "text": text})
    return lines


def _resumed(event: dict[str, Any]) -> str:
    previous = event.get("previous") or {}
    if previous.get("state") == "killed":  # it left no line of its own: say it here
        return (f"run resumed; its process {previous.get('pid', '?')} had been killed during "
                f"{previous.get('step') or 'start-up'}")
    return "run resumed"


def _worked_s(run: Run, now: datetime) -> float:
    """The run's working time until now, from its journal (not the confirmation prompt)."""
    path = run.dir / JOURNAL_NAME
    if path.is_file():
        return replay(path).active_s(now)
    return (now - run.started).total_seconds()


def context(run: Run) -> dict[str, Any]:
    """Everything the templates may use, from the run's facts (and its backup, for FASE 2)."""
    facts = run.facts
    now = utc_now()
    gate = facts.get("gate")
    passed = bool(isinstance(gate, dict) and gate.get("passed"))
    said = run.settings.communication
    tenants: list[branch_keys.AffectedTenant] = []
    backup = facts.get("fase2_backup")
    phases = covered(run)
    if "fase2" in phases and isinstance(backup, dict):
        with dbops.read_only(run.database_url) as conn:
            tenants = branch_keys.affected_from_backup(conn, backup["schema"], backup["table"])
    me = who()
    return {
        "product": said.product,
        "support_email": said.support_email,
        "support_contact": said.contact,
        "help_url": said.help_url,
        "status_page_url": said.status_page_url,
        "run_id": run.run_id,
        "phase": run.options.phase,
        # every phase the run took back (several with --whole-commit): a message about one of
        # them must not say that keys are untouched when FASE 2's were converted
        "phases": phases,
        "phase_title": PHASE_TITLES[run.options.phase],
        "phase_public": PUBLIC[run.options.phase][0],
        "public_impact": PUBLIC[run.options.phase][1],
        "status_title": (f"API: {PUBLIC[run.options.phase][0]} rolled back" if passed else
                         f"API: investigating an issue with {PUBLIC[run.options.phase][0]}"),
        "operator": me["user"],
        "host": me["host"],
        "started_at_text": _when(run.started),
        "finished_at_text": _when(now),
        "duration_text": _duration(_worked_s(run, now)),
        "commits": facts.get("commits_reverted") or [],
        "rollback_branch": facts.get("rollback_branch") or "(none)",
        "original_version": facts.get("original_version"),
        "deployed_version": facts.get("deployed_version"),
        "gate": gate,
        "succeeded": passed,
        "baseline": facts.get("baseline") or {},
        "backup": backup or {},
        "affected_tenants": tenants,
        "affected_keys": sum(len(t.keys) for t in tenants),
        "affected_active": sum(t.active_keys for t in tenants),
        "db_option": run.options.db_option,
        "dropped": facts.get("fase3_dropped") or [],
        "log_path": str(run.log_path),
        "timeline": _timeline(run),
        # the platform profile's list endpoints, as customers call them
        "endpoints": list(run.settings.platform.endpoints),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "tenant"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    try:  # whole or not at all: a full disk never leaves half an e-mail to be sent
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise StorageFault.of(path, exc, "the run stopped at its communication; free space and "
                              "run the same command again to render it") from None
    return path


def render_all(run: Run) -> list[Path]:
    """Render every document of the phase into the run's communication folder."""
    env = environment()
    facts = context(run)
    out = run.report_dir / "communication"
    written = [_write(out / name, env.get_template(name + ".j2").render(facts)) for name in COMMON]
    phases = covered(run)
    if not facts["succeeded"]:  # nothing that says it works, nothing a dashboard imports
        written.append(_write(out / "customer_email.txt",
                              env.get_template(INVESTIGATING).render(facts)))
        phases = []
    if "fase2" in phases:
        notices = []
        for tenant in facts["affected_tenants"]:
            per = {**facts, "tenant": tenant}
            slug = _slug(tenant.slug)
            written.append(_write(out / "customer_emails" / f"{slug}.txt",
                                  env.get_template("customer_email_fase2.txt.j2").render(per)))
            notice = env.get_template("in_app_notice_fase2.md.j2").render(per)
            written.append(_write(out / "in_app_notices" / f"{slug}.md", notice))
            notices.append({"tenant_id": tenant.tenant_id, "tenant_slug": tenant.slug,
                            "severity": "warning", "body_markdown": notice,
                            "key_ids": [k.id for k in tenant.keys]})
        written.append(_write(out / "in_app_notices.json", json.dumps(notices, indent=2) + "\n"))
    others = [p for p in phases if p != "fase2"]
    for phase in others:
        name = "customer_email.txt" if phases == [phase] else f"customer_email_{phase}.txt"
        written.append(_write(out / name, env.get_template(f"customer_email_{phase}.txt.j2").render(
            {**facts, "phase": phase, "phase_title": PHASE_TITLES[phase],
             "phase_public": PUBLIC[phase][0], "public_impact": PUBLIC[phase][1]})))
    _remove_stale(out, written)
    for path in written:
        run.note(f"wrote {path}")
    return written


def _remove_stale(out: Path, written: list[Path]) -> None:
    """Documents an earlier attempt rendered that this one did not (the investigating e-mail
    once the gate passes, the per-tenant messages once it fails): none may be sent by mistake."""
    keep = set(written)
    for name in ("customer_email.txt", "in_app_notices.json", "customer_emails", "in_app_notices"):
        path = out / name
        for old in sorted(path.glob("*")) if path.is_dir() else [path]:
            if old.is_file() and old not in keep:
                old.unlink()
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def notify(run: Run) -> int | None:
    """Send the Slack summary to ROLLBACK_NOTIFY_URLS. None when no URL is configured; else the
    number of URLs that took it (0 when sending failed: said loudly, never fatal to the run)."""
    secret = run.settings.secrets.notify_urls
    if secret is None or not secret.get_secret_value().strip():
        return None
    import apprise

    urls = [u for u in re.split(r"[\s,]+", secret.get_secret_value()) if u]
    gate = run.facts.get("gate") or {}
    passed = bool(gate.get("passed"))
    name = "slack_engineering.md" if passed else "slack_incidents.md"
    body = (run.report_dir / "communication" / name).read_text(encoding="utf-8")
    title = (f"Rollback {run.options.phase.upper()} {'done' if passed else 'NEEDS ATTENTION'} "
             f"({run.run_id})")
    sender = apprise.Apprise()
    accepted = sum(1 for url in urls if sender.add(url))
    if accepted < len(urls):
        run.say(f"{len(urls) - accepted} of {len(urls)} notification URL(s) are not valid Apprise "
                "URLs and were left out", "yellow")
    quiet = logging.getLogger("apprise")
    level, quiet.level = quiet.level, logging.CRITICAL  # its messages may quote the URLs
    try:
        ok = bool(accepted) and bool(sender.notify(title=title, body=body,
                                                   body_format=apprise.NotifyFormat.MARKDOWN))
    finally:
        with contextlib.suppress(Exception):
            quiet.setLevel(level)
    if not ok:
        run.say("sending the notification failed: post the Slack summary by hand from "
                f"{run.report_dir / 'communication' / name}", "bold red")
        return 0
    return accepted

