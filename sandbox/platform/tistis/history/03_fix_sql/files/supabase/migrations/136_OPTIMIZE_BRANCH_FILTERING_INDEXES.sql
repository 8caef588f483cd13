-- =====================================================================
-- FASE 3 - Migration 136: indexes for branch-filtered queries
--
-- Corrected so that it runs in the Supabase SQL editor:
-- - no CONCURRENTLY: the editor runs the whole file in one transaction, where
--   CREATE INDEX CONCURRENTLY is refused
-- - no now() in index predicates (an index predicate must be immutable): the two
--   appointment indexes cover all rows instead of upcoming / past ones
-- - the columns the tables have: leads.full_name (not name), appointments.service_id
--   (not service_type)
-- - the statistics view reads relname / indexrelname, the columns pg_stat_user_indexes has
-- Every statement is IF NOT EXISTS / OR REPLACE: running it twice changes nothing.
-- =====================================================================

-- ---------------------------------------------------------------------
-- leads and appointments by branch
-- ---------------------------------------------------------------------

-- open leads of a branch, newest first (the list's default filters)
CREATE INDEX IF NOT EXISTS idx_leads_branch_active_statuses
    ON leads(branch_id, created_at DESC)
    WHERE status IN ('new', 'contacted', 'qualified');

-- the list's search (name, phone, e-mail) inside one branch
CREATE INDEX IF NOT EXISTS idx_leads_branch_search
    ON leads(branch_id, full_name, phone, email)
    WHERE status IS NOT NULL;

-- a branch's agenda, both directions
CREATE INDEX IF NOT EXISTS idx_appointments_branch_scheduled
    ON appointments(branch_id, scheduled_at);

CREATE INDEX IF NOT EXISTS idx_appointments_branch_scheduled_desc
    ON appointments(branch_id, scheduled_at DESC);

-- who works where, from either side
CREATE INDEX IF NOT EXISTS idx_staff_branches_branch_id
    ON staff_branches(branch_id, staff_id);

CREATE INDEX IF NOT EXISTS idx_staff_branches_staff_id
    ON staff_branches(staff_id, branch_id);

-- ---------------------------------------------------------------------
-- tenant and branch together
-- ---------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS idx_leads_tenant_branch_created
    ON leads(tenant_id, branch_id, created_at DESC)
    WHERE status IS NOT NULL;

CREATE INDEX IF NOT EXISTS idx_appointments_tenant_branch_scheduled
    ON appointments(tenant_id, branch_id, scheduled_at DESC);

-- ---------------------------------------------------------------------
-- covering indexes: a list page read from the index alone
-- ---------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS idx_leads_branch_covering
    ON leads(branch_id, created_at DESC)
    INCLUDE (id, tenant_id, phone, full_name, status, source);

CREATE INDEX IF NOT EXISTS idx_appointments_branch_covering
    ON appointments(branch_id, scheduled_at)
    INCLUDE (id, tenant_id, lead_id, staff_id, status, service_id);

-- ---------------------------------------------------------------------
-- api_keys: the lookup of every request, and branch keys of a tenant
-- ---------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS idx_api_keys_hash_active
    ON api_keys(key_hash)
    WHERE is_active = true;

CREATE INDEX IF NOT EXISTS idx_api_keys_branch_scope
    ON api_keys(tenant_id, branch_id, scope_type)
    WHERE is_active = true;

-- fresh statistics so the planner considers the new indexes at once
ANALYZE leads;
ANALYZE appointments;
ANALYZE staff;
ANALYZE staff_branches;
ANALYZE api_keys;
ANALYZE branches;

-- ---------------------------------------------------------------------
-- monitoring: how often each of the indexes above has been used
-- ---------------------------------------------------------------------
CREATE OR REPLACE VIEW vw_fase3_index_usage AS
SELECT
    s.schemaname,
    s.relname AS tablename,
    s.indexrelname AS indexname,
    s.idx_scan AS index_scans,
    s.idx_tup_read AS tuples_read,
    s.idx_tup_fetch AS tuples_fetched,
    pg_size_pretty(pg_relation_size(s.indexrelid)) AS index_size
FROM pg_stat_user_indexes s
WHERE s.schemaname = 'public'
  AND s.indexrelname LIKE 'idx\_%branch%'
ORDER BY s.idx_scan DESC;

-- After deployment: do the twelve indexes exist, and have any of them been scanned yet?
CREATE OR REPLACE FUNCTION validate_fase3_indexes()
RETURNS TABLE(check_name text, status text, details text)
LANGUAGE plpgsql
AS $$
DECLARE
    expected text[] := ARRAY[
        'idx_leads_branch_active_statuses', 'idx_leads_branch_search',
        'idx_appointments_branch_scheduled', 'idx_appointments_branch_scheduled_desc',
        'idx_staff_branches_branch_id', 'idx_staff_branches_staff_id',
        'idx_leads_tenant_branch_created', 'idx_appointments_tenant_branch_scheduled',
        'idx_leads_branch_covering', 'idx_appointments_branch_covering',
        'idx_api_keys_hash_active', 'idx_api_keys_branch_scope'];
    present integer;
    scanned integer;
BEGIN
    SELECT count(*) INTO present
      FROM pg_indexes i
     WHERE i.schemaname = 'public' AND i.indexname = ANY (expected);

    SELECT count(*) INTO scanned
      FROM pg_stat_user_indexes s
     WHERE s.schemaname = 'public' AND s.indexrelname = ANY (expected) AND s.idx_scan > 0;

    check_name := 'Index Existence';
    status := CASE WHEN present = cardinality(expected) THEN 'PASS' ELSE 'FAIL' END;
    details := format('Found %s/%s expected indexes', present, cardinality(expected));
    RETURN NEXT;

    check_name := 'Index Usage';
    status := CASE WHEN scanned >= 3 THEN 'PASS' ELSE 'WARN' END;
    details := format('%s indexes have recorded scans', scanned);
    RETURN NEXT;
END;
$$;

GRANT SELECT ON vw_fase3_index_usage TO authenticated, service_role;
GRANT EXECUTE ON FUNCTION validate_fase3_indexes() TO authenticated, service_role;
