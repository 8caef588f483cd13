"""Removing secrets (API keys, database passwords) from text bound for a report or a message."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
#: metadata / environment names whose values are never shown
SECRET_NAME = re.compile(r"(?i)(key|token|secret|passw|database_url|dsn|notify_url|auth)")
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")


def safe_url(url: str) -> str:
    """A URL without its password or query string values: postgresql://user:***@host/db."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


class Redactor:
    """Replaces every known secret value, and any URL password, with `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            found.add(secret)
            password = urlsplit(secret).password if "://" in secret else None
            if password:
                found.add(password)
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted((s for s in found if len(s) >= 4), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)

    def contains_secret(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets)
