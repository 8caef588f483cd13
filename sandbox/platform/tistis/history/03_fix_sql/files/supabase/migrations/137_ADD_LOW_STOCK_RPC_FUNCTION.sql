-- =====================================================================
-- FASE 3 - Migration 137: RPC functions and cached views for the API's cache layer
--
-- Corrected so that it runs in the Supabase SQL editor against the production schema:
-- - no inventory_items (production has no such table): get_low_stock_items is gone and
--   the materialized view has no inventory columns
-- - get_branch_stats_summary returns one jsonb document (dropped first: a function's
--   result type cannot be changed in place)
-- - the materialized view is rebuilt from scratch, and refreshed without CONCURRENTLY
-- =====================================================================

-- ---------------------------------------------------------------------
-- a branch's leads and appointments, counted, as one jsonb value
-- ---------------------------------------------------------------------
DROP FUNCTION IF EXISTS get_branch_stats_summary(uuid, uuid);

CREATE OR REPLACE FUNCTION get_branch_stats_summary(p_tenant_id uuid, p_branch_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
    lead_figures        jsonb;
    appointment_figures jsonb;
BEGIN
    SELECT jsonb_build_object(
               'total', count(*),
               'new', count(*) FILTER (WHERE l.status = 'new'),
               'contacted', count(*) FILTER (WHERE l.status = 'contacted'),
               'qualified', count(*) FILTER (WHERE l.status = 'qualified'),
               'converted', count(*) FILTER (WHERE l.status = 'converted'))
      INTO lead_figures
      FROM leads l
     WHERE l.tenant_id = p_tenant_id
       AND l.branch_id = p_branch_id
       AND l.deleted_at IS NULL;

    SELECT jsonb_build_object(
               'total', count(*),
               'today', count(*) FILTER (WHERE a.scheduled_at::date = CURRENT_DATE),
               'upcoming', count(*) FILTER (WHERE a.scheduled_at > now() AND a.status = 'confirmed'),
               'completed', count(*) FILTER (WHERE a.status = 'completed'))
      INTO appointment_figures
      FROM appointments a
     WHERE a.tenant_id = p_tenant_id
       AND a.branch_id = p_branch_id;

    RETURN jsonb_build_object(
        'branch_id', p_branch_id,
        'leads', lead_figures,
        'appointments', appointment_figures,
        'generated_at', now());
END;
$$;

GRANT EXECUTE ON FUNCTION get_branch_stats_summary(uuid, uuid) TO authenticated, service_role;

-- ---------------------------------------------------------------------
-- branch performance, precomputed (refresh every few minutes)
-- ---------------------------------------------------------------------
DROP MATERIALIZED VIEW IF EXISTS mv_branch_performance_metrics CASCADE;

CREATE MATERIALIZED VIEW mv_branch_performance_metrics AS
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
    now() AS refreshed_at
FROM branches b
LEFT JOIN leads l ON l.branch_id = b.id AND l.tenant_id = b.tenant_id AND l.deleted_at IS NULL
LEFT JOIN appointments a ON a.branch_id = b.id AND a.tenant_id = b.tenant_id
WHERE b.is_active = true
GROUP BY b.id, b.tenant_id, b.name, b.is_headquarters;

-- one row per branch (a unique index also allows REFRESH ... CONCURRENTLY by hand)
CREATE UNIQUE INDEX idx_mv_branch_performance_branch_id
    ON mv_branch_performance_metrics(branch_id);

CREATE INDEX idx_mv_branch_performance_tenant
    ON mv_branch_performance_metrics(tenant_id);

GRANT SELECT ON mv_branch_performance_metrics TO authenticated, service_role;

-- ---------------------------------------------------------------------
-- the refresh, for a cron job or an API route
-- ---------------------------------------------------------------------
CREATE OR REPLACE FUNCTION refresh_branch_performance_metrics()
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
BEGIN
    REFRESH MATERIALIZED VIEW mv_branch_performance_metrics;
END;
$$;

GRANT EXECUTE ON FUNCTION refresh_branch_performance_metrics() TO service_role;

-- ---------------------------------------------------------------------
-- how old the materialized figures are (depends on the materialized view)
-- ---------------------------------------------------------------------
CREATE OR REPLACE VIEW vw_cache_freshness AS
SELECT
    'mv_branch_performance_metrics'::text AS view_name,
    max(m.refreshed_at) AS last_refresh,
    extract(epoch FROM now() - max(m.refreshed_at)) AS seconds_since_refresh,
    CASE
        WHEN extract(epoch FROM now() - max(m.refreshed_at)) < 600 THEN 'FRESH'
        WHEN extract(epoch FROM now() - max(m.refreshed_at)) < 1800 THEN 'STALE'
        ELSE 'VERY_STALE'
    END AS freshness_status
FROM mv_branch_performance_metrics m;

GRANT SELECT ON vw_cache_freshness TO authenticated, service_role;
