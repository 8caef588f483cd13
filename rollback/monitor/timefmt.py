"""UTC times as the monitor writes them: ISO 8601 in records, compact stamps in file names."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """2026-01-22T10:15:00.123Z"""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def stamp(moment: datetime) -> str:
    """20260122T101500Z: run ids and file names."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def day(moment: datetime) -> str:
    """20260122: the day in daily file names."""
    return moment.astimezone(UTC).strftime("%Y%m%d")


def clock(moment: datetime) -> str:
    """10:15:00Z: a time of day for terminal lines."""
    return moment.astimezone(UTC).strftime("%H:%M:%SZ")
