-- =====================================================================
-- Migration 136: an audit trail of API key changes
--
-- The API writes one row each time a key is created, changed, rotated, revoked or deleted:
-- who did it, what the key looked like before and after, and from where. Owners and admins
-- of the tenant may read the trail; only the backend (service_role) writes it.
--
-- Written by the application, not by a trigger: api_keys keeps exactly its own triggers,
-- and bulk maintenance of keys does not multiply into audit rows.
--
-- (This number once belonged to a FASE 3 index migration, renumbered 174 since.)
-- =====================================================================

CREATE TABLE IF NOT EXISTS api_key_audit_logs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    api_key_id   uuid REFERENCES api_keys(id) ON DELETE SET NULL,
    action       varchar(30) NOT NULL
                     CHECK (action IN ('created', 'updated', 'rotated', 'revoked', 'deleted')),
    actor_id     uuid REFERENCES auth.users(id) ON DELETE SET NULL,
    severity     varchar(10) NOT NULL DEFAULT 'info'
                     CHECK (severity IN ('info', 'warning', 'critical')),
    old_values   jsonb,
    new_values   jsonb,
    ip_address   inet,
    user_agent   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE api_key_audit_logs IS 'Who created, changed, rotated, revoked or deleted which API key';

CREATE INDEX IF NOT EXISTS idx_api_key_audit_tenant_created
    ON api_key_audit_logs(tenant_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_api_key_audit_key
    ON api_key_audit_logs(api_key_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_api_key_audit_action
    ON api_key_audit_logs(tenant_id, action);

ALTER TABLE api_key_audit_logs ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS api_key_audit_select_policy ON api_key_audit_logs;
CREATE POLICY api_key_audit_select_policy ON api_key_audit_logs
    FOR SELECT
    USING (tenant_id IN (
        SELECT ur.tenant_id FROM user_roles ur
        WHERE ur.user_id = auth.uid() AND ur.role IN ('owner', 'admin')));

-- Old trail rows go after a retention period; for a scheduled job. Returns how many went.
CREATE OR REPLACE FUNCTION cleanup_old_api_key_audit_logs(p_retention_days integer DEFAULT 365)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
    removed integer;
BEGIN
    DELETE FROM api_key_audit_logs
     WHERE created_at < now() - make_interval(days => p_retention_days);
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END;
$$;

GRANT SELECT ON api_key_audit_logs TO authenticated, service_role;
GRANT INSERT ON api_key_audit_logs TO service_role;
GRANT EXECUTE ON FUNCTION cleanup_old_api_key_audit_logs(integer) TO service_role;
