-- Undo 030_fase3_performance.sql (the guide's "option 2"): drop every object it made,
-- dependants first. Functionality stays; list queries get slower.

DROP VIEW IF EXISTS vw_cache_freshness;
DROP VIEW IF EXISTS vw_fase3_index_usage;
DROP FUNCTION IF EXISTS refresh_branch_performance_metrics();
DROP FUNCTION IF EXISTS get_branch_stats_summary(uuid, uuid);
DROP FUNCTION IF EXISTS get_low_stock_items(uuid, uuid);
DROP FUNCTION IF EXISTS validate_fase3_indexes();
DROP MATERIALIZED VIEW IF EXISTS mv_branch_performance_metrics;

DROP INDEX IF EXISTS idx_leads_branch_active_statuses;
DROP INDEX IF EXISTS idx_leads_branch_search;
DROP INDEX IF EXISTS idx_appointments_branch_scheduled;
DROP INDEX IF EXISTS idx_appointments_branch_scheduled_desc;
DROP INDEX IF EXISTS idx_staff_branches_branch_id;
DROP INDEX IF EXISTS idx_staff_branches_staff_id;
DROP INDEX IF EXISTS idx_leads_tenant_branch_created;
DROP INDEX IF EXISTS idx_appointments_tenant_branch_scheduled;
DROP INDEX IF EXISTS idx_leads_branch_covering;
DROP INDEX IF EXISTS idx_appointments_branch_covering;
DROP INDEX IF EXISTS idx_api_keys_hash_active;
DROP INDEX IF EXISTS idx_api_keys_branch_scope;
