-- =====================================================================
-- FASE 3 - Migration 137: RPC functions and cached views for the API's cache layer
--
-- get_low_stock_items:        items of a tenant (optionally one branch) below their minimum
-- get_branch_stats_summary:   one row of counters for a branch's dashboard widgets
-- mv_branch_performance_metrics, refreshed every 5 minutes by a cron job through
-- refresh_branch_performance_metrics(), and vw_cache_freshness to see how old it is.
--
-- To undo: drop the functions, the view, and the materialized view (CASCADE).
-- =====================================================================

-- ---------------------------------------------------------------------
-- low stock, most missing first
-- ---------------------------------------------------------------------
CREATE OR REPLACE FUNCTION get_low_stock_items(p_tenant_id uuid, p_branch_id uuid DEFAULT NULL)
RETURNS TABLE(
    id uuid,
    tenant_id uuid,
    branch_id uuid,
    branch_name text,
    name text,
    quantity integer,
    min_quantity integer,
    stock_deficit integer,
    last_updated_at timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
AS $$
BEGIN
    RETURN QUERY
    SELECT i.id, i.tenant_id, i.branch_id, b.name, i.name, i.quantity, i.min_quantity,
           i.min_quantity - i.quantity, i.updated_at
      FROM inventory_items i
      LEFT JOIN branches b ON b.id = i.branch_id
     WHERE i.tenant_id = p_tenant_id
       AND i.quantity < i.min_quantity
       AND (p_branch_id IS NULL OR i.branch_id = p_branch_id)
     ORDER BY i.min_quantity - i.quantity DESC, i.name;
END;
$$;

GRANT EXECUTE ON FUNCTION get_low_stock_items(uuid, uuid) TO authenticated;
GRANT EXECUTE ON FUNCTION get_low_stock_items(uuid, uuid) TO service_role;

-- ---------------------------------------------------------------------
-- a branch's counters in one row
-- ---------------------------------------------------------------------
CREATE OR REPLACE FUNCTION get_branch_stats_summary(p_tenant_id uuid, p_branch_id uuid)
RETURNS TABLE(
    branch_id uuid,
    leads_total bigint,
    leads_new bigint,
    leads_contacted bigint,
    leads_qualified bigint,
    leads_converted bigint,
    appointments_total bigint,
    appointments_today bigint,
    appointments_upcoming bigint,
    appointments_completed bigint,
    inventory_items bigint,
    low_stock_items bigint,
    generated_at timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
AS $$
    SELECT
        p_branch_id,
        (SELECT count(*) FROM leads l WHERE l.tenant_id = p_tenant_id AND l.branch_id = p_branch_id),
        (SELECT count(*) FROM leads l WHERE l.tenant_id = p_tenant_id AND l.branch_id = p_branch_id
                                        AND l.status = 'new'),
        (SELECT count(*) FROM leads l WHERE l.tenant_id = p_tenant_id AND l.branch_id = p_branch_id
                                        AND l.status = 'contacted'),
        (SELECT count(*) FROM leads l WHERE l.tenant_id = p_tenant_id AND l.branch_id = p_branch_id
                                        AND l.status = 'qualified'),
        (SELECT count(*) FROM leads l WHERE l.tenant_id = p_tenant_id AND l.branch_id = p_branch_id
                                        AND l.status = 'converted'),
        (SELECT count(*) FROM appointments a WHERE a.tenant_id = p_tenant_id AND a.branch_id = p_branch_id),
        (SELECT count(*) FROM appointments a WHERE a.tenant_id = p_tenant_id AND a.branch_id = p_branch_id
                                               AND a.scheduled_at::date = CURRENT_DATE),
        (SELECT count(*) FROM appointments a WHERE a.tenant_id = p_tenant_id AND a.branch_id = p_branch_id
                                               AND a.scheduled_at > now() AND a.status = 'confirmed'),
        (SELECT count(*) FROM appointments a WHERE a.tenant_id = p_tenant_id AND a.branch_id = p_branch_id
                                               AND a.status = 'completed'),
        (SELECT count(*) FROM inventory_items i WHERE i.tenant_id = p_tenant_id AND i.branch_id = p_branch_id),
        (SELECT count(*) FROM inventory_items i WHERE i.tenant_id = p_tenant_id AND i.branch_id = p_branch_id
                                                  AND i.quantity < i.min_quantity),
        now()
$$;

GRANT EXECUTE ON FUNCTION get_branch_stats_summary(uuid, uuid) TO authenticated;
GRANT EXECUTE ON FUNCTION get_branch_stats_summary(uuid, uuid) TO service_role;

-- ---------------------------------------------------------------------
-- branch performance, precomputed
-- ---------------------------------------------------------------------
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_branch_performance_metrics AS
SELECT
    b.id AS branch_id,
    b.tenant_id,
    b.name AS branch_name,
    b.is_headquarters,
    count(DISTINCT l.id) FILTER (WHERE l.created_at > now() - interval '30 days') AS leads_30d,
    count(DISTINCT l.id) FILTER (WHERE l.created_at > now() - interval '7 days') AS leads_7d,
    count(DISTINCT l.id) FILTER (WHERE l.status = 'converted'
                                   AND l.updated_at > now() - interval '30 days') AS conversions_30d,
    count(DISTINCT a.id) FILTER (WHERE a.created_at > now() - interval '30 days') AS appointments_30d,
    count(DISTINCT a.id) FILTER (WHERE a.status = 'completed'
                                   AND a.updated_at > now() - interval '30 days') AS completed_appointments_30d,
    count(DISTINCT ii.id) AS total_inventory_items,
    count(DISTINCT ii.id) FILTER (WHERE ii.quantity < ii.min_quantity) AS low_stock_items,
    now() AS refreshed_at
FROM branches b
LEFT JOIN leads l ON l.branch_id = b.id AND l.tenant_id = b.tenant_id
LEFT JOIN appointments a ON a.branch_id = b.id AND a.tenant_id = b.tenant_id
LEFT JOIN inventory_items ii ON ii.branch_id = b.id AND ii.tenant_id = b.tenant_id
WHERE b.is_active = true
GROUP BY b.id, b.tenant_id, b.name, b.is_headquarters;

CREATE UNIQUE INDEX IF NOT EXISTS idx_mv_branch_performance_branch_id
    ON mv_branch_performance_metrics(branch_id);

CREATE INDEX IF NOT EXISTS idx_mv_branch_performance_tenant
    ON mv_branch_performance_metrics(tenant_id);

GRANT SELECT ON mv_branch_performance_metrics TO authenticated;
GRANT SELECT ON mv_branch_performance_metrics TO service_role;

-- ---------------------------------------------------------------------
-- refresh without blocking readers (needs the unique index above)
-- ---------------------------------------------------------------------
CREATE OR REPLACE FUNCTION refresh_branch_performance_metrics()
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY mv_branch_performance_metrics;
END;
$$;

GRANT EXECUTE ON FUNCTION refresh_branch_performance_metrics() TO service_role;

-- ---------------------------------------------------------------------
-- how old the cached figures are
-- ---------------------------------------------------------------------
CREATE OR REPLACE VIEW vw_cache_freshness AS
SELECT
    'mv_branch_performance_metrics' AS view_name,
    max(refreshed_at) AS last_refresh,
    extract(epoch FROM now() - max(refreshed_at)) AS seconds_since_refresh,
    CASE
        WHEN extract(epoch FROM now() - max(refreshed_at)) < 600 THEN 'FRESH'
        WHEN extract(epoch FROM now() - max(refreshed_at)) < 1800 THEN 'STALE'
        ELSE 'VERY_STALE'
    END AS freshness_status
FROM mv_branch_performance_metrics;

GRANT SELECT ON vw_cache_freshness TO authenticated;
GRANT SELECT ON vw_cache_freshness TO service_role;
