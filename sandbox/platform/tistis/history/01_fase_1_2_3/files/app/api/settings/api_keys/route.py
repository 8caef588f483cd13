"""FASE 2: /api/settings/api-keys, where owners and admins create and list their API keys.

Dashboard routes (a signed-in user, not an API key). New in this phase: a key may be
confined to one branch of the tenant (`scope_type = 'branch'` with `branch_id`); the
database trigger checks that the branch is the tenant's and fills `branch_context`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from src.features.api_settings.types.api_key_types import API_SCOPES, SCOPE_TYPES, CreateAPIKeyRequest


class InvalidRequest(ValueError):
    """400 VALIDATION_ERROR with this text."""


def parse_create_request(body: Mapping[str, Any], tenant_branches: Collection[str]) -> CreateAPIKeyRequest:
    """The validated body of POST /api/settings/api-keys."""
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 100:
        raise InvalidRequest("name is required (at most 100 characters)")
    scopes = body.get("scopes") or []
    if not isinstance(scopes, list) or not scopes or any(s not in API_SCOPES for s in scopes):
        raise InvalidRequest(f"scopes must be a non-empty list of {', '.join(API_SCOPES)}")
    scope_type = body.get("scope_type") or "tenant"
    if scope_type not in SCOPE_TYPES:
        raise InvalidRequest("scope_type must be 'tenant' or 'branch'")
    branch_id = body.get("branch_id") or None
    if scope_type == "branch" and branch_id not in tenant_branches:
        raise InvalidRequest("a branch key needs branch_id, a branch of this tenant")
    if scope_type == "tenant":
        branch_id = None
    return CreateAPIKeyRequest(
        name=name.strip(),
        scopes=list(scopes),
        scope_type=scope_type,
        branch_id=branch_id,
        environment="test" if body.get("environment") == "test" else "live",
    )


LIST_KEYS_SQL = """
    SELECT k.id, k.name, k.key_hint, k.environment, coalesce(k.scope_type, 'tenant') AS scope_type,
           k.branch_id, b.name AS branch_name, k.is_active, k.last_used_at
      FROM api_keys k
      LEFT JOIN branches b ON b.id = k.branch_id
     WHERE k.tenant_id = %s
     ORDER BY k.created_at DESC
"""
