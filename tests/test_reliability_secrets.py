"""Secrets and least privilege, after a full rehearsal on a sandbox of its own.

The rehearsal is what `rollback demo` does, run as an operator would (FASE 3 option 2, then
FASE 2, then FASE 1, each with its gate; history; a health check), with a notification URL
that carries a token. Then:

- no artifact under logs/ or reports/ (logs, journals, HTML, JUnit, Allure, communication
  files), no notification sent and nothing printed on the terminal holds a raw API key, the
  database password or the notification token;
- the files with secrets-adjacent content (backup CSV, run context, object definitions,
  journals, run logs) are readable by their owner only;
- the whole suite runs green as a database role that may only SELECT, and sends no writing
  request unless --allow-writes.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Sandbox, SandboxFactory
from tests.targets import Target, make_target

KEY_SHAPE = re.compile(rb"tis_(?:live|test)_[A-Za-z0-9]{16,}")


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        type(self).bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Rehearsal:
    """A sandbox rolled back through all three phases, and everything that left a trace."""

    target: Target
    secrets: dict[str, str]
    terminal: list[str] = field(default_factory=list)
    notifications: list[bytes] = field(default_factory=list)

    @property
    def box(self) -> Sandbox:
        return self.target.box

    def artifacts(self) -> list[Path]:
        return sorted(p for folder in (self.target.logs, self.target.reports)
                      for p in folder.rglob("*") if p.is_file())


#: the rehearsal (a sandbox, a plan, three runs, history, health: about 40 s on a quiet 2-core
#: machine, twice that beside other work) is set up inside the timeout of whichever of its tests
#: comes first, so each of them carries the rehearsal's budget, not the default 60 s
REHEARSAL_BUDGET = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def rehearsal(sandbox_factory: SandboxFactory,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    box = sandbox_factory.make()
    _Receiver.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = secrets.token_hex(12)
    notify = f"json://127.0.0.1:{server.server_port}/hooks/{token}"
    password = psycopg.conninfo.conninfo_to_dict(box.database_url)["password"]
    found = {f"key {name}": value for name, value in box.keys.items() if value}
    found.update({"database password": str(password), "notification token": token})
    # [gate] allure: the gates write Allure results too, to prove them free of secrets as well
    target = make_target(box, tmp_path_factory.mktemp("rehearsal"), gate={"allure": True})
    done = Rehearsal(target, found, notifications=_Receiver.bodies)
    try:
        for args in (["plan", "fase3", "--db-option", "2"], ["run", "fase3", "--db-option", "2", "--yes"],
                     ["run", "fase2", "--yes"], ["run", "fase1", "--yes"], ["history"],
                     ["health"]):
            result = target.rollback(*args, ROLLBACK_NOTIFY_URLS=notify)
            assert result.returncode == 0, f"{args}: {result.stderr}\n{result.stdout[-2000:]}"
            done.terminal.append(result.stdout + result.stderr)
        yield done
    finally:
        server.shutdown()
        sandbox_factory.destroy(box)


@REHEARSAL_BUDGET
@pytest.mark.slow
def test_no_artifact_message_or_output_holds_a_secret(rehearsal: Rehearsal) -> None:
    files = rehearsal.artifacts()
    kinds = {p.suffix for p in files}
    assert {".log", ".jsonl", ".html", ".xml", ".csv", ".json", ".md", ".txt"} <= kinds, kinds
    assert any("allure-results" in p.parts for p in files)
    assert rehearsal.notifications, "the notification URL was never called"
    places = [(str(p), p.read_bytes()) for p in files]
    places += [(f"terminal output {n}", text.encode()) for n, text in enumerate(rehearsal.terminal)]
    places += [(f"notification {n}", body) for n, body in enumerate(rehearsal.notifications)]
    leaks = [f"{what} in {where}" for where, data in places
             for what, secret in rehearsal.secrets.items() if secret.encode() in data]
    leaks += [f"a raw key {m.group()[:12]}... in {where}" for where, data in places
              for m in KEY_SHAPE.finditer(data)]
    assert not leaks, "\n".join(leaks)


@REHEARSAL_BUDGET
def test_secret_adjacent_files_are_readable_by_their_owner_only(rehearsal: Rehearsal) -> None:
    logs = rehearsal.target.logs
    runs = [p.parent for p in logs.glob("*/journal.jsonl")]
    assert len(runs) == 3
    adjacent = [p for run in runs for p in run.rglob("*") if p.is_file()]
    adjacent += list(logs.glob("rollback-*.log"))
    names = {p.name for p in adjacent}
    assert {"journal.jsonl", "api_keys_backup.csv", "run-context.json", "fase3_objects.json"} <= names
    loose = [f"{p} {p.stat().st_mode & 0o777:o}" for p in adjacent if p.stat().st_mode & 0o077]
    loose += [f"{run} {run.stat().st_mode & 0o777:o}" for run in runs if run.stat().st_mode & 0o077]
    assert not loose, "\n".join(loose)


# --- read-only -------------------------------------------------------------------------------------


@pytest.fixture
def select_only(rehearsal: Rehearsal) -> Iterator[str]:
    """A role that may connect and SELECT, nothing else; its DATABASE_URL."""
    box = rehearsal.box
    params = psycopg.conninfo.conninfo_to_dict(box.database_url)
    role, password = f"select_only_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    statements = [
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(str(params["dbname"])),
                                                           sql.Identifier(role)),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)),
    ]
    with psycopg.connect(box.database_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    yield (f"postgresql://{role}:{password}@{params['host']}:{params['port']}/{params['dbname']}")
    with psycopg.connect(box.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def methods_since(box: Sandbox, since: Any) -> dict[str, int]:
    return dict(box.sql("SELECT method, count(*) FROM api_key_usage_logs WHERE created_at > %s "
                        "GROUP BY method", (since,)))


def validate_all(rehearsal: Rehearsal, database_url: str, folder: Path,
                 *extra: str) -> subprocess.CompletedProcess[str]:
    return rehearsal.target.rollback("validate", "all", "--reports", str(folder), *extra,
                                     DATABASE_URL=database_url)


@REHEARSAL_BUDGET
@pytest.mark.slow
def test_the_whole_suite_is_green_as_a_select_only_role_and_sends_only_gets(
        rehearsal: Rehearsal, select_only: str, tmp_path: Path) -> None:
    box = rehearsal.box
    with psycopg.connect(select_only) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE api_keys SET name = name WHERE false")  # the role cannot write
    since = box.sql("SELECT now()")[0][0]
    result = validate_all(rehearsal, select_only, tmp_path / "read")
    assert result.returncode == 0, result.stdout[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " 0 failed" in summary, summary
    sent = methods_since(box, since)
    assert sent.get("GET", 0) > 50, sent  # the checks did talk to the API
    assert set(sent) == {"GET"}, f"writing requests without --allow-writes: {sent}"

    since = box.sql("SELECT now()")[0][0]
    allowed = validate_all(rehearsal, select_only, tmp_path / "write", "--allow-writes")
    assert allowed.returncode == 0, allowed.stdout[-3000:]
    assert methods_since(box, since).get("POST", 0) >= 1  # the write check, and only when asked
    junit = next((tmp_path / "write").glob("*/junit.xml")).read_text()
    assert 'name="test_lead_can_be_created"' in junit


# --- every error path redacted; personal data masked; reports the owner's only --------------------

from checks._plugin.redact import Redactor  # noqa: E402
from rollback.validate import run_validation  # noqa: E402


@pytest.mark.parametrize(("secret", "text"), [
    ("tis_test_" + "a" * 32 + "\n",                                 # httpx/h11 quoting a header
     "LocalProtocolError: Illegal header value b'Bearer tis_test_" + "a" * 32 + "\\n'"),
    ("tis_test_" + "b" * 32 + "\n", "key tis_test_" + "b" * 32 + " (trimmed)"),
    ("postgresql://u:pw-9f8e7d@db:5432/x", "connection to postgresql://u:pw-9f8e7d@db:5432/x failed"),
    ("postgresql://u:pw-9f8e7d@db:5432/x", "password pw-9f8e7d alone"),
    ("", "GET https://user:hunter22@api.example.com/v1/leads: refused"),   # any URL's userinfo
    ("", "GET https://tok3n@api.example.com/v1/leads: refused"),
    ("slack://tok3n/B/C mailto://u:hunter22@x.example", "sent to slack://tok3n/B/C"),  # a list
    ("", "body: {\"key\": \"tis_live_" + "a" * 32 + "\"}"),          # a key nobody told us of
])
def test_every_form_of_a_secret_is_masked(secret: str, text: str) -> None:
    redact = Redactor([secret] if secret else [])
    masked = redact(text)
    assert redact.contains_secret(text) and "***" in masked
    for leak in ("a" * 32, "b" * 32, "pw-9f8e7d", "hunter22", "tok3n"):
        assert leak not in masked


def test_personal_data_is_masked_unless_asked_to_show_it() -> None:
    body = ('{"id": "3f2c9a1b-0000-4000-8000-000000000001", "first_name": "Ana", '
            '"full_name": "Ana Ruiz", "phone": "+52 55 1234 5678", "email": "ana.ruiz@example.mx", '
            '"notes": "call +1 (555) 123-4567 or write to a.r@example.com", '
            '"created_at": "2026-01-22 10:15:00+00"}')
    masked = Redactor(mask_pii=True)(body)
    for personal in ("Ana", "Ruiz", "1234 5678", "ana.ruiz@", "555", "a.r@example.com"):
        assert personal not in masked
    for kept in ("3f2c9a1b-0000-4000-8000-000000000001", "2026-01-22 10:15:00+00", '"notes"'):
        assert kept in masked
    assert Redactor(mask_pii=False)(body) == body
    assert Redactor(mask_pii=True).with_pii(False)(body) == body


def test_reports_mask_personal_data_by_default_and_are_the_owners_only(sandbox: Sandbox,
                                                                       tmp_path: Path) -> None:
    emails = [r[0] for r in sandbox.sql(
        "SELECT email FROM leads WHERE tenant_id = %s AND email IS NOT NULL", (sandbox.tenant_id,))]
    assert emails
    masked = run_validation("health", reports_root=tmp_path / "masked", env=sandbox.env(),
                            extra_args=["-k", "contract_shape or records_belong"])
    shown = run_validation("health", reports_root=tmp_path / "shown", env=sandbox.env(),
                           extra_args=["-k", "contract_shape or records_belong", "--show-pii"])
    assert masked.exit_code == shown.exit_code == 0, masked.log.read_text()[-2000:]
    files = [p for p in masked.report_dir.rglob("*") if p.is_file()]
    assert masked.html in files and masked.junit_xml in files and masked.log in files
    for path in files:
        text = path.read_text(errors="replace")
        assert not [e for e in emails if e in text], f"{path.name} holds a lead's e-mail"
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    assert any(e in shown.html.read_text(errors="replace") for e in emails)
    assert masked.report_dir.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:pw-9f8e7d@db:5432/x", "postgresql://u:***@db:5432/x"),
    ("postgresql://u@db:5432/x?sslmode=require", "postgresql://u@db:5432/x?sslmode=require"),
    ("https://api.example.com/v1", "https://api.example.com/v1"),
])
def test_safe_url_hides_the_password_only(url: str, shown: str) -> None:
    from checks._plugin.redact import safe_url

    assert safe_url(url) == shown


def test_short_values_are_not_masked_everywhere_and_longest_secrets_win() -> None:
    redact = Redactor(["abc", "tis_test_" + "c" * 20, "tis_test_" + "c" * 20 + "dd"])
    assert redact("abc def") == "abc def"  # a 3-character secret would mask half the text
    assert redact("key tis_test_" + "c" * 20 + "dd end") == "key *** end"
    assert Redactor(["x" * 4])("a xxxx b") == "a *** b"
