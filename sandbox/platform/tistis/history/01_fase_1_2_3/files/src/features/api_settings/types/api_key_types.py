"""FASE 2: the shapes of an API key as the settings routes and the dashboard see them."""

from __future__ import annotations

from typing import Literal, TypedDict

ScopeType = Literal["tenant", "branch"]
SCOPE_TYPES: tuple[ScopeType, ...] = ("tenant", "branch")

API_SCOPES = ("leads:read", "leads:write", "appointments:read", "branches:read")


class CreateAPIKeyRequest(TypedDict, total=False):
    name: str
    description: str
    environment: Literal["live", "test"]
    scopes: list[str]
    scope_type: ScopeType
    branch_id: str | None
    rate_limit_rpm: int
    rate_limit_daily: int
    expires_at: str | None


class APIKeyListItem(TypedDict):
    id: str
    name: str
    key_hint: str
    environment: str
    scope_type: ScopeType
    branch_id: str | None
    branch_name: str | None
    is_active: bool
    last_used_at: str | None
