"""Whether row level security hides rows from the role we connect as.

On Supabase every tenant table has RLS on, with policies through `auth.uid()`: a role that is
neither superuser nor BYPASSRLS (nor the table's owner, unless FORCE ROW LEVEL SECURITY) sees
only the rows its policies allow, which for a reader with no tenant is none, silently. Every
integrity check would then pass on zero rows. So before judging anything, the checks and the
rollback steps ask `require_sight()`, which refuses such a role with one line and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from rollback.errors import ConfigError

_SIGHT = """
SELECT c.relname
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname = ANY(%(tables)s)
   AND n.nspname = ANY(current_schemas(false))
   AND c.relkind IN ('r', 'p')
   AND c.relrowsecurity
   AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = current_user
                    AND (r.rolsuper OR r.rolbypassrls))
   AND NOT (pg_has_role(current_user, c.relowner, 'USAGE') AND NOT c.relforcerowsecurity)
 ORDER BY c.relname
"""


def blind_tables(conn: psycopg.Connection[Any], tables: Sequence[str]) -> tuple[str, list[str]]:
    """(the role, the tables among `tables` whose rows RLS may hide from it)."""
    role_row = conn.execute("SELECT current_user").fetchone()
    role = str(role_row[0]) if role_row else "?"
    rows = conn.execute(_SIGHT, {"tables": list(tables)}).fetchall()
    return role, [str(r[0]) for r in rows]


def require_sight(conn: psycopg.Connection[Any], tables: Sequence[str],
                  service_role: str | None = None, who: str = "DATABASE_URL") -> None:
    """Raise ConfigError (exit 2) when RLS hides rows of `tables` from the connected role."""
    role, blind = blind_tables(conn, tables)
    conn.rollback()
    if not blind:
        return
    shown = ", ".join(blind[:4]) + (f" and {len(blind) - 4} more" if len(blind) > 4 else "")
    service = f"the service role ({service_role}) or " if service_role else ""
    raise ConfigError(
        f"{who} connects as role {role!r}, which is neither superuser nor BYPASSRLS, and row "
        f"level security is on for {shown}: it would see only the rows its policies allow "
        f"(none, for a reader without a tenant), so nothing could be judged. Connect as "
        f"{service}a reader with BYPASSRLS (CREATE ROLE rollback_reader LOGIN BYPASSRLS; "
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO rollback_reader)"
    )
