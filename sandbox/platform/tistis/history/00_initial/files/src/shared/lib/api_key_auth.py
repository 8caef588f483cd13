"""API key helpers of the public API v1: where a request comes from, and whether a key may be
used from there.

The framework authenticates every /api/v1 request (`Authorization: Bearer tis_live_...`; only
the SHA-256 of a key is stored and looked up) and asks this module for the caller's address,
which is logged with the request and kept as the key's last_used_ip, and whether the key's
ip_whitelist admits it (403 IP_NOT_ALLOWED otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# ======================
# CLIENT ADDRESS
# ======================


def client_ip(headers: Mapping[str, str], peer: str | None) -> str | None:
    """The caller's address: the first X-Forwarded-For entry (the client as the edge saw it),
    else X-Real-IP, else the address of the connection."""
    forwarded = headers.get("x-forwarded-for", "").split(",")[0].strip()
    if forwarded:
        return forwarded
    real_ip = headers.get("x-real-ip", "").strip()
    if real_ip:
        return real_ip
    return peer


# ======================
# IP WHITELIST
# ======================


def ip_allowed(ip: str, whitelist: Sequence[str]) -> bool:
    """Whether the key's whitelist admits `ip`, an exact match. An empty whitelist admits every
    address; the framework does not ask then."""
    wanted = ip.strip()
    return any(entry.strip() == wanted for entry in whitelist)


# ======================
# KEY DISPLAY
# ======================


def key_hint(raw_key: str) -> str:
    """What the dashboard shows of a key: its last four characters ("...a4f7")."""
    return raw_key[-4:]
