-- =====================================================================
-- Migration 134: API keys for programmatic access, and a log of every request made with them
--
-- A key is shown to its creator once; the database keeps only its SHA-256 hex digest
-- (key_hash), its last characters (key_hint) and its prefix (tis_live_ / tis_test_).
-- Keys carry scopes (a JSON array of strings), per-minute and per-day limits, an optional IP
-- allow-list and expiry, and usage counters that the API keeps up to date.
--
-- Only owners and admins of a tenant see its keys and logs (row level security); the backend
-- works as service_role, which bypasses row level security.
-- =====================================================================

-- ---------------------------------------------------------------------
-- 1. api_keys
-- ---------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS api_keys (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    created_by          uuid NOT NULL REFERENCES auth.users(id),

    name                varchar(100) NOT NULL,
    description         text,

    -- the secret itself is never stored
    key_hash            varchar(64) NOT NULL,
    key_hint            varchar(8) NOT NULL,
    key_prefix          varchar(20) NOT NULL,
    environment         varchar(10) NOT NULL DEFAULT 'live'
                            CHECK (environment IN ('live', 'test')),

    scopes              jsonb NOT NULL DEFAULT '[]'::jsonb,

    rate_limit_rpm      integer DEFAULT 60
                            CHECK (rate_limit_rpm > 0 AND rate_limit_rpm <= 1000),
    rate_limit_daily    integer DEFAULT 10000
                            CHECK (rate_limit_daily > 0 AND rate_limit_daily <= 1000000),

    ip_whitelist        text[],
    expires_at          timestamptz,

    -- kept current by the API on each authenticated request
    last_used_at        timestamptz,
    last_used_ip        inet,
    last_used_endpoint  varchar(255),
    usage_count         bigint DEFAULT 0,
    usage_count_today   integer DEFAULT 0,
    usage_reset_date    date DEFAULT CURRENT_DATE,

    is_active           boolean DEFAULT true,
    revoked_at          timestamptz,
    revoked_by          uuid REFERENCES auth.users(id),
    revoke_reason       text,

    metadata            jsonb DEFAULT '{}'::jsonb,

    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),

    UNIQUE (tenant_id, name),
    UNIQUE (key_hash)
);

COMMENT ON TABLE api_keys IS 'API keys of tenants; only the SHA-256 digest of each key is kept';

-- ---------------------------------------------------------------------
-- 2. indexes of api_keys
-- ---------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS idx_api_keys_tenant ON api_keys(tenant_id);
CREATE INDEX IF NOT EXISTS idx_api_keys_hash ON api_keys(key_hash);
CREATE INDEX IF NOT EXISTS idx_api_keys_active ON api_keys(tenant_id, is_active) WHERE is_active = true;
CREATE INDEX IF NOT EXISTS idx_api_keys_environment ON api_keys(tenant_id, environment);
CREATE INDEX IF NOT EXISTS idx_api_keys_created_by ON api_keys(created_by);
CREATE INDEX IF NOT EXISTS idx_api_keys_expires ON api_keys(expires_at) WHERE expires_at IS NOT NULL;

-- ---------------------------------------------------------------------
-- 3. updated_at follows every change of a row
-- ---------------------------------------------------------------------
CREATE OR REPLACE FUNCTION update_api_keys_updated_at()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS trigger_api_keys_updated_at ON api_keys;
CREATE TRIGGER trigger_api_keys_updated_at
    BEFORE UPDATE ON api_keys
    FOR EACH ROW
    EXECUTE FUNCTION update_api_keys_updated_at();

-- ---------------------------------------------------------------------
-- 4. the daily counter starts again on the first update of a new day
-- ---------------------------------------------------------------------
CREATE OR REPLACE FUNCTION reset_api_key_daily_usage()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.usage_reset_date IS DISTINCT FROM CURRENT_DATE THEN
        NEW.usage_count_today := 0;
        NEW.usage_reset_date := CURRENT_DATE;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS trigger_api_keys_daily_reset ON api_keys;
CREATE TRIGGER trigger_api_keys_daily_reset
    BEFORE UPDATE ON api_keys
    FOR EACH ROW
    EXECUTE FUNCTION reset_api_key_daily_usage();

-- ---------------------------------------------------------------------
-- 5. row level security of api_keys: owners and admins of the tenant
-- ---------------------------------------------------------------------
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS api_keys_select_policy ON api_keys;
CREATE POLICY api_keys_select_policy ON api_keys
    FOR SELECT
    USING (tenant_id IN (
        SELECT ur.tenant_id FROM user_roles ur
        WHERE ur.user_id = auth.uid() AND ur.role IN ('owner', 'admin')));

DROP POLICY IF EXISTS api_keys_insert_policy ON api_keys;
CREATE POLICY api_keys_insert_policy ON api_keys
    FOR INSERT
    WITH CHECK (
        tenant_id IN (
            SELECT ur.tenant_id FROM user_roles ur
            WHERE ur.user_id = auth.uid() AND ur.role IN ('owner', 'admin'))
        AND created_by = auth.uid());

DROP POLICY IF EXISTS api_keys_update_policy ON api_keys;
CREATE POLICY api_keys_update_policy ON api_keys
    FOR UPDATE
    USING (tenant_id IN (
        SELECT ur.tenant_id FROM user_roles ur
        WHERE ur.user_id = auth.uid() AND ur.role IN ('owner', 'admin')))
    WITH CHECK (tenant_id IN (
        SELECT ur.tenant_id FROM user_roles ur
        WHERE ur.user_id = auth.uid() AND ur.role IN ('owner', 'admin')));

-- deleting is for owners only; revoking (is_active = false) is the usual way
DROP POLICY IF EXISTS api_keys_delete_policy ON api_keys;
CREATE POLICY api_keys_delete_policy ON api_keys
    FOR DELETE
    USING (tenant_id IN (
        SELECT ur.tenant_id FROM user_roles ur
        WHERE ur.user_id = auth.uid() AND ur.role = 'owner'));

-- ---------------------------------------------------------------------
-- 6. api_key_usage_logs: one row per request made with a key
-- ---------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS api_key_usage_logs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    api_key_id        uuid NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    tenant_id         uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,

    endpoint          varchar(255) NOT NULL,
    method            varchar(10) NOT NULL
                          CHECK (method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')),
    scope_used        varchar(100),
    request_path      text,
    query_params      jsonb,

    status_code       integer NOT NULL,
    response_time_ms  integer,
    error_message     text,
    error_code        varchar(50),

    ip_address        inet,
    user_agent        text,
    origin            varchar(255),

    created_at        timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE api_key_usage_logs IS 'Requests made with API keys, for usage analytics and audits';

-- ---------------------------------------------------------------------
-- 7. indexes of api_key_usage_logs
-- ---------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS idx_usage_logs_api_key ON api_key_usage_logs(api_key_id);
CREATE INDEX IF NOT EXISTS idx_usage_logs_tenant ON api_key_usage_logs(tenant_id);
CREATE INDEX IF NOT EXISTS idx_usage_logs_created ON api_key_usage_logs(created_at DESC);
CREATE INDEX IF NOT EXISTS idx_usage_logs_key_date ON api_key_usage_logs(api_key_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_usage_logs_endpoint ON api_key_usage_logs(endpoint);
CREATE INDEX IF NOT EXISTS idx_usage_logs_status ON api_key_usage_logs(status_code) WHERE status_code >= 400;

-- ---------------------------------------------------------------------
-- 8. row level security of the logs: owners and admins read; only the backend writes
-- ---------------------------------------------------------------------
ALTER TABLE api_key_usage_logs ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS usage_logs_select_policy ON api_key_usage_logs;
CREATE POLICY usage_logs_select_policy ON api_key_usage_logs
    FOR SELECT
    USING (tenant_id IN (
        SELECT ur.tenant_id FROM user_roles ur
        WHERE ur.user_id = auth.uid() AND ur.role IN ('owner', 'admin')));

-- ---------------------------------------------------------------------
-- 9. validate_api_key: what the API needs to know about a presented key, by its digest
-- ---------------------------------------------------------------------
CREATE OR REPLACE FUNCTION validate_api_key(p_key_hash varchar)
RETURNS json
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
    k api_keys%ROWTYPE;
BEGIN
    SELECT * INTO k FROM api_keys WHERE key_hash = p_key_hash;
    IF NOT FOUND THEN
        RETURN json_build_object('valid', false, 'error', 'invalid_key',
                                 'message', 'API key not found');
    END IF;
    IF NOT coalesce(k.is_active, false) THEN
        RETURN json_build_object('valid', false, 'error', 'key_revoked',
                                 'message', 'API key has been revoked');
    END IF;
    IF k.expires_at IS NOT NULL AND k.expires_at < now() THEN
        RETURN json_build_object('valid', false, 'error', 'key_expired',
                                 'message', 'API key has expired');
    END IF;
    RETURN json_build_object(
        'valid', true,
        'key_id', k.id,
        'tenant_id', k.tenant_id,
        'name', k.name,
        'scopes', k.scopes,
        'rate_limit_rpm', k.rate_limit_rpm,
        'rate_limit_daily', k.rate_limit_daily,
        'ip_whitelist', k.ip_whitelist,
        'usage_today', CASE WHEN k.usage_reset_date = CURRENT_DATE
                            THEN k.usage_count_today ELSE 0 END
    );
END;
$$;

-- ---------------------------------------------------------------------
-- 10. what the backend role may do
-- ---------------------------------------------------------------------
GRANT SELECT, INSERT ON api_key_usage_logs TO service_role;
GRANT SELECT, UPDATE ON api_keys TO service_role;
GRANT EXECUTE ON FUNCTION validate_api_key(varchar) TO service_role;
