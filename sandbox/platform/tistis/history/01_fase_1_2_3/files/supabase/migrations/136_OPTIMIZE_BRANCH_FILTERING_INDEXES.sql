-- =====================================================================
-- FASE 3 - Migration 136: indexes for branch-filtered queries
--
-- Since FASE 1 the list endpoints filter by branch as well as by tenant. These indexes are
-- meant to bring the p95 latency of those queries under 80 ms.
--
-- Built CONCURRENTLY so that production tables stay writable while the indexes are built.
-- Check afterwards with:  SELECT * FROM validate_fase3_indexes();
--                         SELECT * FROM vw_fase3_index_usage;
--
-- To undo: DROP INDEX CONCURRENTLY IF EXISTS for each index below, then drop the view and
-- the function.
-- =====================================================================

-- ---------------------------------------------------------------------
-- partial indexes for the most common queries
-- ---------------------------------------------------------------------

-- open leads of a branch (the default status filters), newest first
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_leads_branch_active_statuses
    ON leads(branch_id, created_at DESC)
    WHERE status IN ('new', 'contacted', 'qualified');

-- ?search= inside a branch: name, phone, e-mail
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_leads_branch_search
    ON leads(branch_id, name, phone, email)
    WHERE status IS NOT NULL;

-- the dashboard's upcoming confirmed appointments of a branch
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_appointments_branch_scheduled
    ON appointments(branch_id, scheduled_at)
    WHERE scheduled_at > NOW() AND status = 'confirmed';

-- past appointments of a branch, for reports
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_appointments_branch_scheduled_desc
    ON appointments(branch_id, scheduled_at DESC)
    WHERE scheduled_at < NOW();

-- staff of a branch and branches of a staff member (scheduling)
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_staff_branches_branch_id
    ON staff_branches(branch_id, staff_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_staff_branches_staff_id
    ON staff_branches(staff_id, branch_id);

-- ---------------------------------------------------------------------
-- tenant and branch filtered together (the usual double filter)
-- ---------------------------------------------------------------------
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_leads_tenant_branch_created
    ON leads(tenant_id, branch_id, created_at DESC)
    WHERE status IS NOT NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_appointments_tenant_branch_scheduled
    ON appointments(tenant_id, branch_id, scheduled_at DESC);

-- ---------------------------------------------------------------------
-- covering indexes: list pages without visiting the table
-- ---------------------------------------------------------------------
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_leads_branch_covering
    ON leads(branch_id, created_at DESC)
    INCLUDE (id, tenant_id, phone, name, status, source);

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_appointments_branch_covering
    ON appointments(branch_id, scheduled_at)
    INCLUDE (id, tenant_id, lead_id, staff_id, status, service_type);

-- ---------------------------------------------------------------------
-- api_keys: every request looks its key up by digest
-- ---------------------------------------------------------------------
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_api_keys_hash_active
    ON api_keys(key_hash)
    WHERE is_active = true AND (expires_at IS NULL OR expires_at > NOW());

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_api_keys_branch_scope
    ON api_keys(tenant_id, branch_id, scope_type)
    WHERE is_active = true;

-- statistics for the planner
ANALYZE leads;
ANALYZE appointments;
ANALYZE staff;
ANALYZE staff_branches;
ANALYZE api_keys;
ANALYZE branches;

-- ---------------------------------------------------------------------
-- monitoring
-- ---------------------------------------------------------------------
CREATE OR REPLACE VIEW vw_fase3_index_usage AS
SELECT
    schemaname,
    tablename,
    indexname,
    idx_scan AS index_scans,
    idx_tup_read AS tuples_read,
    idx_tup_fetch AS tuples_fetched,
    pg_size_pretty(pg_relation_size(indexrelid)) AS index_size
FROM pg_stat_user_indexes
WHERE schemaname = 'public'
  AND indexname LIKE 'idx_%_branch%'
ORDER BY idx_scan DESC;

-- four checks: existence, use, size, freshness of statistics
CREATE OR REPLACE FUNCTION validate_fase3_indexes()
RETURNS TABLE(check_name text, status text, details text)
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN QUERY
    SELECT 'Index Existence'::text,
           CASE WHEN count(*) >= 12 THEN 'PASS' ELSE 'FAIL' END::text,
           format('Found %s/12 expected indexes', count(*))::text
      FROM pg_indexes
     WHERE schemaname = 'public' AND indexname LIKE 'idx_%_branch%';

    RETURN QUERY
    SELECT 'Index Usage'::text,
           CASE WHEN count(*) >= 10 THEN 'PASS' ELSE 'WARN' END::text,
           format('%s indexes have recorded scans', count(*))::text
      FROM pg_stat_user_indexes
     WHERE schemaname = 'public' AND indexrelname LIKE 'idx_%_branch%' AND idx_scan > 0;

    RETURN QUERY
    SELECT 'Index Health'::text,
           CASE WHEN max(pg_relation_size(indexrelid)) < 100 * 1024 * 1024 THEN 'PASS' ELSE 'WARN' END::text,
           format('Largest branch index: %s', pg_size_pretty(max(pg_relation_size(indexrelid))))::text
      FROM pg_stat_user_indexes
     WHERE schemaname = 'public' AND indexrelname LIKE 'idx_%_branch%';

    RETURN QUERY
    SELECT 'Statistics Freshness'::text,
           CASE WHEN max(extract(epoch FROM now() - last_analyze)) < 86400 THEN 'PASS' ELSE 'WARN' END::text,
           format('Oldest analyze: %s hours ago',
                  round(max(extract(epoch FROM now() - last_analyze)) / 3600))::text
      FROM pg_stat_user_tables
     WHERE schemaname = 'public' AND relname IN ('leads', 'appointments', 'api_keys');
END;
$$;
