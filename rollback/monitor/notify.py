"""Deliver alert notices through Apprise to the URLs in ROLLBACK_NOTIFY_URLS, off the cycle's thread.

One worker thread sends notices in order, so a slow or dead webhook never delays a cycle. A
failed delivery becomes one line in the monitor's log naming the service by Apprise's privacy
URL (tokens and passwords masked) and never stops the monitor. The raw URLs are secrets: they
are only ever handed to Apprise, and what Apprise says of a failure goes through the toolkit's
one redactor (`checks._plugin.redact`), told every token of every URL, before it is logged.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apprise

from checks._plugin.redact import Redactor, url_tokens
from rollback.errors import ConfigError
from rollback.monitor.alerts import AlertEvent, EventKind
from rollback.monitor.schedule import format_duration
from rollback.monitor.timefmt import iso

_SPLIT = re.compile(r"[\s,]+")
_TYPES = {
    EventKind.ALERT: apprise.NotifyType.FAILURE,
    EventKind.REMINDER: apprise.NotifyType.WARNING,
    EventKind.RECOVERY: apprise.NotifyType.SUCCESS,
}


def split_urls(value: str | None) -> list[str]:
    return [u for u in _SPLIT.split(value or "") if u]


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    kind: EventKind


def compose(event: AlertEvent, target: str, api_base_url: str) -> Message:
    """The notice people read: what, where, since when, and what the check saw."""
    inc = event.incident
    lasted = format_duration(inc.duration(event.at).total_seconds())
    if event.kind is EventKind.ALERT:
        title = f"[ALERT] {target}: {inc.title} failing"
        body = (f"{inc.title} has failed {inc.failing_cycles} cycles in a row since {iso(inc.started)}.\n"
                f"{inc.detail}")
    elif event.kind is EventKind.REMINDER:
        title = f"[STILL FAILING] {target}: {inc.title} for {lasted}"
        body = (f"{inc.title} has been failing since {iso(inc.started)} ({lasted}, reminder "
                f"{inc.reminders}).\nNow: {inc.last_detail}")
    else:
        title = f"[RECOVERED] {target}: {inc.title} ok again after {lasted}"
        body = (f"{inc.title} failed from {iso(inc.started)} to {iso(inc.ended or event.at)} "
                f"({lasted}).\nNow: {inc.last_detail}")
    body += f"\nTarget: {api_base_url} · incident {inc.id}"
    return Message(title, body, event.kind)


class _Capture(logging.Handler):
    """Collects what Apprise logs while one delivery runs on this thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


class Notifier:
    """Queue of notices and the one thread that hands them to Apprise."""

    def __init__(self, urls: str | None, log: Callable[[str], None]) -> None:
        self._log = log
        self._servers: list[Any] = []
        for number, url in enumerate(split_urls(urls), start=1):
            server = apprise.Apprise.instantiate(url, suppress_exceptions=True)
            if server is None:
                scheme = url.split("://", 1)[0] if "://" in url else "?"
                raise ConfigError(
                    f"ROLLBACK_NOTIFY_URLS: entry {number} (scheme {scheme!r}) is not a URL Apprise "
                    "can send to; see https://github.com/caronc/apprise/wiki for the URL of each service"
                )
            self._servers.append(server)
        self._redact = Redactor(url_tokens(urls or ""))
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[Message | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        _quiet_apprise()

    @property
    def targets(self) -> list[str]:
        """The services, as privacy URLs (safe to print)."""
        return [_shown(s) for s in self._servers]

    def send(self, message: Message) -> None:
        if not self._servers:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="alert-delivery", daemon=True)
            self._thread.start()
        self._queue.put(message)

    def close(self, timeout: float = 15.0) -> None:
        """Deliver what is queued (waiting at most `timeout` s), then stop the worker."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._log(f"ALERT-DELIVERY gave up waiting: {self._queue.qsize()} notices not sent")
        self._thread = None

    def _work(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            for server in self._servers:
                self._deliver(server, message)

    def _deliver(self, server: Any, message: Message) -> None:
        capture = _Capture()
        logger = logging.getLogger("apprise")
        logger.addHandler(capture)
        try:
            ok = bool(server.notify(body=message.body, title=message.title,
                                    notify_type=_TYPES[message.kind]))
        except Exception as exc:  # a plugin bug must not kill the delivery thread
            ok = False
            capture.messages.append(f"{type(exc).__name__}: {exc}")
        finally:
            logger.removeHandler(capture)
        where = _shown(server)
        if ok:
            self.delivered += 1
            self._log(f"ALERT-DELIVERED {message.kind} to {where}")
            return
        self.failed += 1
        why = self._redact(capture.messages[0] if capture.messages else "no detail from Apprise")[:300]
        self._log(f"ALERT-DELIVERY-FAILED {message.kind} to {where}: {why}")


def _shown(server: Any) -> str:
    """Apprise's privacy URL (secrets masked) without its long tail of default options."""
    return str(server.url(privacy=True)).split("?", 1)[0]


def _quiet_apprise() -> None:
    """Apprise's own lines would tear the live view and may name more than we want: keep them in."""
    logger = logging.getLogger("apprise")
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
