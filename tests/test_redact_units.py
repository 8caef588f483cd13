"""The toolkit's one redactor (`checks._plugin.redact`), as each of its users sees it: a run's log
and journal (`Run.redact`), the monitor's delivery failures (`Notifier`), and the tokens of a
notification URL. No sandbox: in-process only (the forms of a secret and personal data are in
tests/test_reliability_secrets.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from checks._plugin.redact import MASK, Redactor, safe_url, url_tokens
from rollback.monitor.alerts import EventKind
from rollback.monitor.notify import Message, Notifier


def test_redactor_hides_secrets_url_passwords_and_key_shaped_strings() -> None:
    redact = Redactor(["postgresql://app:s3cr3t-pw@db:5432/x", "json://hooks.example/T0/abcdef"])
    text = redact("url postgresql://app:s3cr3t-pw@db:5432/x, pw s3cr3t-pw, key "
                  "tis_live_AbCdEfGh12345678 other postgresql://u:p4ss@h/db hook "
                  "json://hooks.example/T0/abcdef")
    assert "s3cr3t-pw" not in text and "AbCdEfGh12345678" not in text and "p4ss" not in text
    assert "hooks.example/T0" not in text
    assert "other postgresql://u:***@h/db" in text  # the user stays, to say whose password it was


@pytest.mark.parametrize(("text", "masked"), [
    ("https://u:pw@h/x", "https://u:***@h/x"),
    ("https://tok3n@h/x", "https://***@h/x"),          # userinfo without a password: a token
    ("https://u:a:b@h/x", "https://u:***@h/x"),        # a password holding a colon
    ("https://h/x@y", "https://h/x@y"),               # an @ in the path is no userinfo
    ("mailto:ops@example.com", "mailto:ops@example.com"),
    ("key tis_test_AbCdEfGh end", "key tis_*** end"),  # 8 characters: key-shaped
    ("key tis_test_AbCdEfG end", "key tis_test_AbCdEfG end"),  # 7: not
    ("key tis_demo_AbCdEfGh1 end", "key tis_demo_AbCdEfGh1 end"),
])
def test_url_userinfo_and_key_shapes_are_masked_without_being_told(text: str, masked: str) -> None:
    assert Redactor()(text) == masked
    assert Redactor().contains_secret(text) == (text != masked)


@pytest.mark.parametrize(("secret", "text", "masked"), [
    ("abcd", "x abcd y", f"x {MASK} y"),                  # 4 characters: masked
    ("abc", "x abc y", "x abc y"),                        # 3: would mask half the text
    ("  s3cr3t-value \n", "is s3cr3t-value.", f"is {MASK}."),   # trimmed
    ("line\nbreak!", "b'line\\nbreak!'", f"b'{MASK}'"),   # as repr() quotes it
    ("a,b1b2b3,c", "saw b1b2b3", f"saw {MASK}"),          # a part of a list, 6 characters ...
    ("a,b1b2b,c", "saw b1b2b", "saw b1b2b"),              # ... 5 are too few
    ("s3cr3t", "s3cr3ts3cr3t", MASK * 2),
])
def test_each_form_of_a_known_secret(secret: str, text: str, masked: str) -> None:
    assert Redactor([secret])(text) == masked


def test_the_longest_secret_wins_and_personal_data_follows_the_twin() -> None:
    redact = Redactor(["s3cr3t-pw", "s3cr3t-pw-longer"], mask_pii=True)
    assert redact("is s3cr3t-pw-longer") == f"is {MASK}"
    shown = redact.with_pii(False)
    assert shown.mask_pii is False and redact.mask_pii is True
    assert shown("s3cr3t-pw-longer a@example.com") == f"{MASK} a@example.com"
    assert redact("s3cr3t-pw a@example.com") == f"{MASK} {MASK}"


@pytest.mark.parametrize(("text", "masked"), [
    ('{"first_name": "Ana"}', '{"first_name": "***"}'),
    ("{'phone': '+5255'}", "{'phone': '***'}"),         # the quote it had
    ('{"contact_name":"A \\"B\\""}', '{"contact_name":"***"}'),
    ('{"e_mail" = "x"}', '{"e_mail" = "***"}'),
    ('{"username": "ana"}', '{"username": "ana"}'),     # not a personal field
    ("call +52 55 1234 5678 now", "call *** now"),
    ("call +52 1234 now", "call +52 1234 now"),         # too short for a phone number
])
def test_personal_fields_keep_their_key_and_quote(text: str, masked: str) -> None:
    assert Redactor(mask_pii=True)(text) == masked


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:pw@db:5432/x?sslmode=require#f", "postgresql://u:***@db:5432/x?sslmode=require"),
    ("postgresql://u:u@db/x", "postgresql://u:***@db/x"),   # the user's name is not the password
])
def test_safe_url_masks_the_password_once_and_drops_the_fragment(url: str, shown: str) -> None:
    assert safe_url(url) == shown


# --- the tokens of notification URLs --------------------------------------------------------------


def test_every_token_of_a_notification_url_is_known() -> None:
    assert url_tokens("slack://TokenA/TokenB/TokenC/#alerts") == [
        "slack://TokenA/TokenB/TokenC/#alerts", "TokenB", "TokenC", "TokenA"]
    assert url_tokens("mailtos://ops:hunter22@mail.example.com") == [
        "mailtos://ops:hunter22@mail.example.com", "ops", "hunter22"]
    assert url_tokens("json://localhost:8080/abc/long?token=t0k3n&x=1&flag") == [
        "json://localhost:8080/abc/long?token=t0k3n&x=1&flag", "long", "t0k3n"]
    assert url_tokens("json://a%40b:p%2Fw@h.example/x") == [
        "json://a%40b:p%2Fw@h.example/x", "a@b", "p/w"]


def test_every_url_of_a_list_gives_its_tokens() -> None:
    assert url_tokens(" slack://TokenA , json://h.example/path ") == [
        "slack://TokenA", "TokenA", "json://h.example/path", "path"]
    assert url_tokens("") == []


# --- its users ------------------------------------------------------------------------------------


class _Server:
    """An Apprise service whose delivery fails with a message naming its tokens."""

    def __init__(self, error: str) -> None:
        self.error = error

    def notify(self, **_: Any) -> bool:
        raise RuntimeError(self.error)

    def url(self, privacy: bool = False) -> str:
        return "slack://T...A/?format=markdown"


def test_a_failed_delivery_is_logged_without_the_urls_tokens() -> None:
    logged: list[str] = []
    notifier = Notifier("slack://TokenA/TokenB/TokenC json://u:hunter22@h.example/x", logged.append)
    notifier._deliver(_Server("refused TokenB and TokenC for hunter22: " + "x" * 400),
                      Message("t", "b", EventKind.ALERT))
    assert notifier.failed == 1 and len(logged) == 1
    line = logged[0]
    assert line.startswith("ALERT-DELIVERY-FAILED alert to slack://T...A/: RuntimeError: refused "
                           f"{MASK} and {MASK} for {MASK}: x")
    assert len(line) == len("ALERT-DELIVERY-FAILED alert to slack://T...A/: ") + 300  # cut to 300


def test_a_runs_log_hides_its_secrets_and_its_notification_tokens(tmp_path: Path) -> None:
    from rollback.config import load_settings
    from rollback.runs.core import Options, Run, SilentUi

    settings = load_settings({"DATABASE_URL": "postgresql://app:pw-9f8e7d@db:5432/x",
                              "ROLLBACK_NOTIFY_URLS": "slack://TokenA/TokenB/TokenC"},
                             overrides={"paths": {"logs_dir": str(tmp_path)}})
    run = Run(settings, Options("fase1"), SilentUi(), dry=True,
              started=datetime(2026, 1, 22, 10, 15, tzinfo=UTC))
    assert run.redact("db pw-9f8e7d, hook TokenB said no") == f"db {MASK}, hook {MASK} said no"


def test_a_secret_with_non_ascii_text_is_masked_as_repr_quotes_it() -> None:
    # repr() keeps the ä but escapes the newline; unicode_escape escapes both: each form is known
    redact = Redactor(["pässwort-1\n"])
    assert redact("header b'pässwort-1\\n'") == f"header b'{MASK}'"
    assert redact("json p\\xe4sswort-1\\n") == f"json {MASK}"


def test_query_values_of_four_characters_and_values_holding_an_equals_sign_are_tokens() -> None:
    assert url_tokens("json://h.example/x?k=abcd&t=a=bcd&s=abc") == [
        "json://h.example/x?k=abcd&t=a=bcd&s=abc", "abcd", "a=bcd"]
    assert url_tokens("json://a@b@TokenHost/x")[-1] == "TokenHost"   # the host after the last @


def test_a_secret_holding_another_is_masked_whole_whatever_their_alphabetical_order() -> None:
    assert Redactor(["zz12", "aazz12"])("key aazz12 end") == f"key {MASK} end"
