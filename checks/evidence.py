"""What a check saw, kept for the report: values, requests, latency series and warnings.

Each check that asks for the `evidence` fixture gets one `Evidence`; the report plugin renders
it into the HTML report (and Allure) and turns its warnings into the `warn` verdict. Every text
goes through the session's redactor, so no key or database password reaches a report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

BODY_EXCERPT = 300


@dataclass(frozen=True)
class RequestRecord:
    method: str
    url: str
    status: int | str
    elapsed_ms: float | None
    body: str
    note: str = ""


@dataclass(frozen=True)
class Series:
    """Latencies of one endpoint's sample, in request order, with the limits they were held to."""

    name: str
    values_ms: tuple[float, ...]
    warn_ms: float
    alert_ms: float
    p95_ms: float | None


@dataclass
class Evidence:
    redact: Callable[[str], str] = field(default=lambda text: text, repr=False)
    values: dict[str, Any] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def record(self, **values: Any) -> None:
        """Measured values worth showing beside the verdict (counts, percentiles, ids)."""
        self.values.update({k: self.redact(v) if isinstance(v, str) else v for k, v in values.items()})

    def request(self, response: httpx.Response, note: str = "") -> None:
        """A request and its answer: method, URL (no secrets), status and a body excerpt."""
        request = response.request
        elapsed = response.elapsed.total_seconds() * 1000 if response.is_closed else None
        self.requests.append(RequestRecord(
            method=request.method,
            url=self.redact(str(request.url)),
            status=response.status_code,
            elapsed_ms=elapsed,
            body=self.redact(excerpt(response)),
            note=note,
        ))

    def failed_request(self, method: str, url: str, error: str, elapsed_ms: float | None,
                       status: int | None = None, *, sent: bool = True) -> None:
        """A failed request: with its status when it was answered (a 500 and its body), "not
        sent" when the session's breaker held it back (the path was found failing or hung by an
        earlier check: `error` names it), or "no answer" with the transport error (timeout,
        refused connection)."""
        shown: int | str = status if status is not None else "no answer" if sent else "not sent"
        self.requests.append(RequestRecord(method, self.redact(url), shown, elapsed_ms,
                                           self.redact(error)))

    def latencies(self, name: str, values_ms: list[float], *, warn_ms: float, alert_ms: float,
                  p95_ms: float | None) -> None:
        self.series.append(Series(name, tuple(values_ms), warn_ms, alert_ms, p95_ms))

    def warn(self, message: str) -> None:
        """The check passes, but this is shown in the terminal summary, HTML and JUnit."""
        self.warnings.append(self.redact(message))

    def to_json(self) -> dict[str, Any]:
        return {
            "values": self.values,
            "warnings": self.warnings,
            "requests": [r.__dict__ for r in self.requests],
            "latencies": [
                {"endpoint": s.name, "p95_ms": s.p95_ms, "values_ms": list(s.values_ms)}
                for s in self.series
            ],
        }


def excerpt(response: httpx.Response, limit: int = BODY_EXCERPT) -> str:
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return "<body not read>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
