"""What a request carries through the pipeline and the extension hooks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

from app.auth import ApiKey


@dataclass
class RequestContext:
    key: ApiKey
    path: str
    params: Mapping[str, str]
    # The one branch this key may see, or None for a tenant-wide key. The baseline never sets
    # it: a phase extension does, in `on_authenticated`.
    scope_branch_id: UUID | None = None
    # Extra response headers from extensions, sent on success (errors carry their own).
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def tenant_id(self) -> UUID:
        return self.key.tenant_id


@dataclass
class ListQuery:
    """A validated list request. Extensions may narrow it by setting `branch_id`."""

    resource: str  # "leads", "appointments" or "branches"
    page: int
    page_size: int
    status: str | None
    search: str | None
    # The branch to filter on (the `id` column for branches). The baseline applies it and
    # reports it in `filters.branch_id`; only extensions set it.
    branch_id: UUID | None = None
