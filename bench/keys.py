"""Raw API keys the benchmark knows, in its own sandboxes.

The sandbox exports one tenant-wide test key, limited to 1000 requests a minute; bulk keys have
no known raw key. The benchmark therefore mints tenant-wide keys (one per validation run, so
that no run is rate-limited by the previous ones) and adopts existing bulk keys for the read
load (it gives them a known raw key), spread evenly over the rows the conversion will touch.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

import psycopg

from sandbox.seed import ALL_SCOPES, key_hash

_ALPHABET = string.ascii_letters + string.digits
RPM, DAILY = 1000, 1_000_000


def raw_key(rng: random.Random) -> str:
    return "tis_live_" + "".join(rng.choices(_ALPHABET, k=32))


def mint_tenant_keys(url: str, tenant_id: str, count: int, rng: random.Random) -> list[str]:
    """`count` new tenant-wide keys of `tenant_id` with every scope; returns the raw keys."""
    raws = [raw_key(rng) for _ in range(count)]
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO api_keys (id, tenant_id, name, key_hash, key_hint, key_prefix, environment, "
            "scopes, rate_limit_rpm, rate_limit_daily, metadata) "
            "VALUES (gen_random_uuid(), %s, %s, %s, %s, 'tis_live_', 'live', %s::jsonb, %s, %s, "
            "'{\"bench\": true}')",
            [(tenant_id, f"Bench tenant key {i}", key_hash(raw), raw[-4:], json.dumps(ALL_SCOPES),
              RPM, DAILY) for i, raw in enumerate(raws)])
    return raws


def adopt_keys(url: str, *, scope_type: str, count: int, rng: random.Random) -> list[str]:
    """Give `count` active bulk keys of `scope_type`, evenly spread in id order (the order the
    conversion walks), a known raw key and the highest rate limit; returns the raw keys."""
    with psycopg.connect(url) as conn:
        ids = [r[0] for r in conn.execute(
            """
            WITH k AS (SELECT id, row_number() OVER (ORDER BY id) AS n, count(*) OVER () AS total
                         FROM api_keys
                        WHERE scope_type = %s AND is_active AND revoked_at IS NULL
                          AND expires_at IS NULL AND metadata ? 'bulk')
            SELECT id FROM k WHERE n %% greatest(total / %s, 1) = 0 ORDER BY id LIMIT %s
            """, (scope_type, count, count)).fetchall()]
        raws = [raw_key(rng) for _ in ids]
        rows: list[tuple[Any, ...]] = [(key_hash(raw), raw[-4:], RPM, DAILY, key_id)
                                       for raw, key_id in zip(raws, ids, strict=True)]
        conn.cursor().executemany(
            "UPDATE api_keys SET key_hash = %s, key_hint = %s, rate_limit_rpm = %s, "
            "rate_limit_daily = %s WHERE id = %s", rows)
    return raws
