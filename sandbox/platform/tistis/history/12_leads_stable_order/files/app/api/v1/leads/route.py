"""TIS TIS public API v1: leads.

    GET  /api/v1/leads   scope leads:read    ?page, ?pageSize (at most 100), ?status, ?search
    POST /api/v1/leads   scope leads:write   JSON {"phone", "name", "email"}

Every request is authenticated with an API key (by the framework, with the helpers of
src/shared/lib/api_key_auth.py), rate limited per key, counted on the key and logged in
api_key_usage_logs. The list answers {data, total, page, pageSize, filters}.
"""

from __future__ import annotations

from app.extensions import Extension
from app.resources import ListResource

# What runs around the route, in this order: each one sees what those before it did.
EXTENSIONS: list[Extension] = []

# ======================
# GET /api/v1/leads
# ======================

LEADS = ListResource(
    name="leads",
    path="/api/v1/leads",
    scope="leads:read",
    table="leads",
    order_by="created_at DESC, id",  # ties broken by id: pages never overlap
    search_columns=("full_name", "phone", "email"),
    # select('*'): every column of the lead, soft-deleted ones included (no deleted_at filter)
    columns="*",
    branch_column="branch_id",
    # passed through as given: an unknown status lists nothing
    statuses=None,
)

# Paging: page from 1, pageSize 20 by default and at most 100; anything unparsable falls back
# to the default instead of answering 400.

# FASE 1: ?branch_id=<uuid> narrows the list to one branch of the key's tenant
# (src/lib/api/branch_query_filter.py): X-Filtered-Branch-ID and X-Branch-Filter-Warning,
# 400 INVALID_BRANCH_ID, 403 BRANCH_ACCESS_DENIED.
from src.lib.api.branch_query_filter import branch_query_filter  # noqa: E402

EXTENSIONS.append(branch_query_filter)

# ======================
# POST /api/v1/leads
# ======================

CREATE_SCOPE = "leads:write"

# The phone is required: whitespace is removed, then it must be 7 to 20 characters long.
PHONE_LENGTH = (7, 20)

# A phone the tenant already has answers 409 DUPLICATE_LEAD with the existing lead's id. A new
# lead starts as 'new'; its source is the column's default.

# FASE 2: branch-specific API keys (src/shared/lib/api_key_auth.py). A key with scope_type
# 'branch' lists only its own branch, whatever ?branch_id says, and the leads it creates are
# assigned to that branch.
from src.shared.lib.api_key_auth import branch_key_scope  # noqa: E402

EXTENSIONS.append(branch_key_scope)

# ======================
# RESPONSES
# ======================

# Errors are {"error": text, "code": CODE} with the HTTP status; a 401 names the realm in
# WWW-Authenticate. Every answer after authentication carries X-RateLimit-Limit,
# X-RateLimit-Remaining and X-RateLimit-Reset; over the limit it is 429 RATE_LIMIT_EXCEEDED.
# A database failure is 500 DATABASE_ERROR, anything else 500 INTERNAL_ERROR.

# FASE 3: performance and deprecation. Answers to ?branch_id carry the deprecation headers
# (src/shared/lib/api_deprecation.py); the list is cached per key, scope, path and query
# (src/shared/lib/branch_filter_cache.py).
from src.shared.lib.api_deprecation import deprecation_headers  # noqa: E402
from src.shared.lib.branch_filter_cache import branch_filter_cache  # noqa: E402

EXTENSIONS.append(deprecation_headers)
EXTENSIONS.append(branch_filter_cache)
