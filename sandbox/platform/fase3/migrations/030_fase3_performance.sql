-- FASE 3: performance. Indexes for the branch-filtered queries of FASE 1 and 2, a materialized
-- view of per-branch metrics with its RPC functions, and two views to watch all of it.
-- Requires 020_fase2_branch_keys.sql (idx_api_keys_branch_scope uses its columns).
-- One object per statement, named plainly: the rollback driver reads the names from here.

-- Indexes ---------------------------------------------------------------------------------

CREATE INDEX idx_leads_branch_active_statuses ON leads (branch_id, status, created_at DESC)
    WHERE status IN ('new', 'contacted', 'qualified');

CREATE INDEX idx_leads_branch_search ON leads (branch_id, phone, email);

CREATE INDEX idx_appointments_branch_scheduled ON appointments (branch_id, scheduled_at);

CREATE INDEX idx_appointments_branch_scheduled_desc ON appointments (branch_id, scheduled_at DESC);

CREATE INDEX idx_staff_branches_branch_id ON staff_branches (branch_id);

CREATE INDEX idx_staff_branches_staff_id ON staff_branches (staff_id);

CREATE INDEX idx_leads_tenant_branch_created ON leads (tenant_id, branch_id, created_at DESC);

CREATE INDEX idx_appointments_tenant_branch_scheduled ON appointments (tenant_id, branch_id, scheduled_at DESC);

CREATE INDEX idx_leads_branch_covering ON leads (branch_id, created_at DESC)
    INCLUDE (id, status, full_name, phone, email);

CREATE INDEX idx_appointments_branch_covering ON appointments (branch_id, scheduled_at DESC)
    INCLUDE (id, status, lead_id, staff_id);

CREATE INDEX idx_api_keys_hash_active ON api_keys (key_hash) WHERE is_active;

CREATE INDEX idx_api_keys_branch_scope ON api_keys (branch_id, scope_type) WHERE scope_type = 'branch';

-- Per-branch metrics, precomputed: dashboards read this instead of counting live rows ------

CREATE MATERIALIZED VIEW mv_branch_performance_metrics AS
SELECT b.id        AS branch_id,
       b.tenant_id AS tenant_id,
       b.name      AS branch_name,
       coalesce(l.leads_total, 0)             AS leads_total,
       coalesce(l.leads_last_30d, 0)          AS leads_last_30d,
       coalesce(l.leads_qualified, 0)         AS leads_qualified,
       coalesce(a.appointments_total, 0)      AS appointments_total,
       coalesce(a.appointments_upcoming, 0)   AS appointments_upcoming,
       coalesce(a.appointments_completed, 0)  AS appointments_completed,
       coalesce(a.appointments_no_show, 0)    AS appointments_no_show,
       now()       AS refreshed_at
  FROM branches b
  LEFT JOIN (
        SELECT branch_id,
               count(*) AS leads_total,
               count(*) FILTER (WHERE created_at >= now() - interval '30 days') AS leads_last_30d,
               count(*) FILTER (WHERE status = 'qualified') AS leads_qualified
          FROM leads
         GROUP BY branch_id
       ) l ON l.branch_id = b.id
  LEFT JOIN (
        SELECT branch_id,
               count(*) AS appointments_total,
               count(*) FILTER (WHERE scheduled_at >= now()
                                  AND status IN ('scheduled', 'confirmed')) AS appointments_upcoming,
               count(*) FILTER (WHERE status = 'completed') AS appointments_completed,
               count(*) FILTER (WHERE status = 'no_show') AS appointments_no_show
          FROM appointments
         GROUP BY branch_id
       ) a ON a.branch_id = b.id;

-- Views -------------------------------------------------------------------------------------

CREATE VIEW vw_fase3_index_usage AS
SELECT s.relname                        AS table_name,
       s.indexrelname                   AS index_name,
       s.idx_scan                       AS scans,
       s.idx_tup_read                   AS tuples_read,
       s.idx_tup_fetch                  AS tuples_fetched,
       pg_relation_size(s.indexrelid)   AS size_bytes
  FROM pg_stat_user_indexes s
 WHERE s.indexrelname IN (
        'idx_leads_branch_active_statuses', 'idx_leads_branch_search',
        'idx_appointments_branch_scheduled', 'idx_appointments_branch_scheduled_desc',
        'idx_staff_branches_branch_id', 'idx_staff_branches_staff_id',
        'idx_leads_tenant_branch_created', 'idx_appointments_tenant_branch_scheduled',
        'idx_leads_branch_covering', 'idx_appointments_branch_covering',
        'idx_api_keys_hash_active', 'idx_api_keys_branch_scope');

CREATE VIEW vw_cache_freshness AS
SELECT 'mv_branch_performance_metrics'::text AS object_name,
       min(m.refreshed_at)                   AS refreshed_at,
       now() - min(m.refreshed_at)           AS age,
       count(*)                              AS row_count
  FROM mv_branch_performance_metrics m;

-- Functions ---------------------------------------------------------------------------------

-- One row per FASE 3 index: does it exist, and is it valid (usable by the planner)?
CREATE OR REPLACE FUNCTION validate_fase3_indexes()
RETURNS TABLE (index_name text, table_name text, is_present boolean, is_valid boolean)
LANGUAGE sql STABLE AS $$
    SELECT n.name,
           i.indrelid::regclass::text,
           i.indexrelid IS NOT NULL,
           coalesce(i.indisvalid, false)
      FROM unnest(ARRAY[
            'idx_leads_branch_active_statuses', 'idx_leads_branch_search',
            'idx_appointments_branch_scheduled', 'idx_appointments_branch_scheduled_desc',
            'idx_staff_branches_branch_id', 'idx_staff_branches_staff_id',
            'idx_leads_tenant_branch_created', 'idx_appointments_tenant_branch_scheduled',
            'idx_leads_branch_covering', 'idx_appointments_branch_covering',
            'idx_api_keys_hash_active', 'idx_api_keys_branch_scope'
           ]) WITH ORDINALITY AS n(name, position)
      LEFT JOIN pg_index i ON i.indexrelid = to_regclass(n.name)
     ORDER BY n.position;
$$;

-- Items at or below their minimum stock; all the tenant's branches when p_branch_id is NULL.
CREATE OR REPLACE FUNCTION get_low_stock_items(p_tenant_id uuid, p_branch_id uuid)
RETURNS TABLE (item_id uuid, branch_id uuid, name text, quantity integer, min_quantity integer,
               shortfall integer)
LANGUAGE sql STABLE AS $$
    SELECT i.id, i.branch_id, i.name, i.quantity, i.min_quantity, i.min_quantity - i.quantity
      FROM inventory_items i
     WHERE i.tenant_id = p_tenant_id
       AND (p_branch_id IS NULL OR i.branch_id = p_branch_id)
       AND i.quantity <= i.min_quantity
     ORDER BY i.min_quantity - i.quantity DESC, i.name;
$$;

-- Per-branch figures from the materialized view; all the tenant's branches when p_branch_id
-- is NULL. As fresh as the last refresh_branch_performance_metrics() (see vw_cache_freshness).
CREATE OR REPLACE FUNCTION get_branch_stats_summary(p_tenant_id uuid, p_branch_id uuid)
RETURNS TABLE (branch_id uuid, branch_name text, leads_total bigint, leads_last_30d bigint,
               leads_qualified bigint, appointments_total bigint, appointments_upcoming bigint,
               appointments_completed bigint, appointments_no_show bigint,
               refreshed_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT m.branch_id, m.branch_name, m.leads_total, m.leads_last_30d, m.leads_qualified,
           m.appointments_total, m.appointments_upcoming, m.appointments_completed,
           m.appointments_no_show, m.refreshed_at
      FROM mv_branch_performance_metrics m
     WHERE m.tenant_id = p_tenant_id
       AND (p_branch_id IS NULL OR m.branch_id = p_branch_id)
     ORDER BY m.branch_name;
$$;

CREATE OR REPLACE FUNCTION refresh_branch_performance_metrics() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    REFRESH MATERIALIZED VIEW mv_branch_performance_metrics;
END;
$$;
