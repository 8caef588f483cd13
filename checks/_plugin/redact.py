"""Removing secrets (API keys, database passwords) and personal data from text bound for a
report, a log or a message.

    Redactor(secrets)                   every known secret (each URL of a list too), also as an
                                        error message quotes it (repr-escaped: httpx's "Illegal
                                        header value b'...\\n'"), any URL's user and password,
                                        and anything shaped like an API key become `***`
    Redactor(secrets, mask_pii=True)    also personal data of response bodies: e-mail addresses,
                                        international phone numbers, and the values of personal
                                        name, phone and e-mail fields (`"full_name": "***"`)
    safe_url(url)                       a URL without its password
    url_tokens(urls)                    every piece of each notification URL that may be a token
                                        (user, password, path segments, query values, a host
                                        without a dot): `Redactor(url_tokens(urls))` masks them

The one redactor of the toolkit: the checks' reports, the drivers' run logs and journals
(`rollback.runs.core.Run.redact`) and the monitor's delivery failures (`rollback.monitor.notify`)
all use it. The checks mask personal data by default (`--show-pii` shows it, see conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
#: metadata / environment names whose values are never shown
SECRET_NAME = re.compile(r"(?i)(key|token|secret|passw|database_url|dsn|notify_url|auth)")
#: scheme://user:password@ or scheme://token@ (userinfo without a password is a secret too)
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<info>[^/@\s]+)@(?=[^\s/@]+)")
#: an API key of the platform's shape, known or not (a key from a response body, a log line)
_API_KEY = re.compile(r"\btis_(?:live|test)_[A-Za-z0-9]{8,}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
#: +CC then 7 to 14 more digits, spaces, dots, dashes or brackets between them
_PHONE = re.compile(r"\+\d[\d\s().-]{6,18}\d")
#: the value of a personal field in JSON, a Python repr or a form: "first_name": "Ana"
_PII_FIELD = re.compile(
    r"""(?P<key>(?<![\w])["']?(?:(?:first|last|full|middle|display|contact|customer)_?name"""
    r"""|phone(?:_?number)?|mobile|telephone|whatsapp|e_?mail)["']?\s*[:=]\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""", re.IGNORECASE)


def safe_url(url: str) -> str:
    """A URL without its password or query string values: postgresql://user:***@host/db."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def url_tokens(urls: str) -> list[str]:
    """Every piece of each notification URL in `urls` (a list, as ROLLBACK_NOTIFY_URLS gives it)
    that may be a token: the URL, its user and password, path segments and query values of 4
    characters or more, and a host without a dot (`slack://TokenA/TokenB/TokenC`,
    `discord://webhook_id/token`: there the host is a token)."""
    found = []
    for url in re.split(r"[\s,]+", urls):
        if not url:
            continue
        parts = urlsplit(url)
        found.append(url)
        if parts.username:
            found.append(unquote(parts.username))
        if parts.password:
            found.append(unquote(parts.password))
        found.extend(unquote(seg) for seg in parts.path.split("/") if len(seg) >= 4)
        found.extend(unquote(value) for pair in parts.query.split("&") if "=" in pair
                     for value in [pair.split("=", 1)[1]] if len(value) >= 4)
        host = parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0]
        if host and "." not in host and host.lower() != "localhost":
            found.append(host)
    return found


def _forms(secret: str) -> set[str]:
    """A secret as text may carry it: as is, trimmed, and escaped as repr() and JSON show it."""
    forms = {secret, secret.strip(), repr(secret)[1:-1], secret.encode("unicode_escape").decode()}
    for part in {secret, *re.split(r"[\s,]+", secret)}:  # notification URLs come as a list
        if len(part) >= 6:
            forms.add(part)
        password = urlsplit(part).password if "://" in part else None
        if password:
            forms.add(password)
    return {f for f in forms if len(f) >= 4}


def _userinfo(match: re.Match[str]) -> str:
    user, sep, _ = match["info"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if sep else f"{match['scheme']}{MASK}@"


def _field(match: re.Match[str]) -> str:
    quote = match["value"][0]
    return f"{match['key']}{quote}{MASK}{quote}"


class Redactor:
    """Replaces every known secret, and any URL's user and password, with `***`; with
    `mask_pii` also personal data (see the module docstring)."""

    def __init__(self, secrets: Iterable[str] = (), *, mask_pii: bool = False) -> None:
        found: set[str] = set()
        for secret in secrets:
            if secret:
                found |= _forms(secret)
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted(found, key=len, reverse=True)
        self.mask_pii = mask_pii

    def with_pii(self, mask: bool) -> Redactor:
        """The same secrets, personal data masked or shown."""
        twin = Redactor(mask_pii=mask)
        twin._secrets = self._secrets
        return twin

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _USERINFO.sub(_userinfo, text)
        text = _API_KEY.sub("tis_***", text)
        if self.mask_pii:
            text = _PII_FIELD.sub(_field, text)
            text = _EMAIL.sub(MASK, text)
            text = _PHONE.sub(MASK, text)
        return text

    def contains_secret(self, text: str) -> bool:
        """Whether the text holds anything this redactor would mask."""
        return self(text) != text
