-- =====================================================================
-- Migration 135 (FASE 2): API keys confined to one branch of their tenant
--
-- Until now every key saw all branches of its tenant. A key may now name one branch
-- (branch_id) and say so (scope_type = 'branch'); keys without a branch stay tenant-wide, so
-- existing integrations keep working unchanged.
--
-- A foreign key cannot check that the branch belongs to the key's own tenant: the trigger
-- below does, and it also records the branch's name in branch_context.
--
-- There is no down script. To undo by hand: drop the trigger, its function,
-- api_key_has_branch_access, the view, the constraint and the three indexes; the columns are
-- better left in place (dropping them loses data) and ignored by the application.
-- =====================================================================

-- ---------------------------------------------------------------------
-- 1. the new columns (all nullable: old rows and old code need not know them)
-- ---------------------------------------------------------------------
ALTER TABLE api_keys
    ADD COLUMN IF NOT EXISTS branch_id uuid REFERENCES branches(id) ON DELETE CASCADE;

ALTER TABLE api_keys
    ADD COLUMN IF NOT EXISTS scope_type varchar(20) DEFAULT 'tenant'
        CHECK (scope_type IN ('tenant', 'branch'));

ALTER TABLE api_keys
    ADD COLUMN IF NOT EXISTS branch_context jsonb DEFAULT '{}'::jsonb;

COMMENT ON COLUMN api_keys.branch_id IS 'The one branch a branch key may read; NULL for a tenant-wide key';
COMMENT ON COLUMN api_keys.scope_type IS 'tenant: every branch of the tenant; branch: only branch_id';
COMMENT ON COLUMN api_keys.branch_context IS 'Facts about the branch of a branch key, kept by a trigger';

-- ---------------------------------------------------------------------
-- 2. every key that exists already is a tenant-wide key
-- ---------------------------------------------------------------------
UPDATE api_keys
   SET scope_type = 'tenant',
       branch_context = jsonb_build_object(
           'legacy', true,
           'migrated_at', now()::text,
           'note', 'key created before branch scoping: tenant-wide access')
 WHERE scope_type IS NULL OR scope_type = 'tenant';

-- ---------------------------------------------------------------------
-- 3. indexes
-- ---------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS idx_api_keys_branch
    ON api_keys(branch_id)
    WHERE branch_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS idx_api_keys_tenant_branch
    ON api_keys(tenant_id, branch_id)
    WHERE branch_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS idx_api_keys_scope_type
    ON api_keys(scope_type);

-- ---------------------------------------------------------------------
-- 4. integrity: a branch key has a branch, a tenant key has none
-- ---------------------------------------------------------------------
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_branch_scope_consistency
    CHECK (
        (scope_type = 'tenant' AND branch_id IS NULL)
        OR (scope_type = 'branch' AND branch_id IS NOT NULL)
    );

-- The branch must exist and be the key's tenant's. Runs on every insert and update of a key
-- that has a branch, and rewrites branch_context each time (so any value written to it by a
-- client is replaced). The errors carry no SQLSTATE of their own: they are P0001.
CREATE OR REPLACE FUNCTION validate_api_key_branch_ownership()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    owner_tenant uuid;
    found_name   text;
BEGIN
    IF NEW.branch_id IS NULL THEN
        RETURN NEW;
    END IF;

    SELECT b.tenant_id, b.name INTO owner_tenant, found_name
      FROM branches b
     WHERE b.id = NEW.branch_id;

    IF owner_tenant IS NULL THEN
        RAISE EXCEPTION 'Branch % does not exist', NEW.branch_id;
    END IF;

    IF owner_tenant <> NEW.tenant_id THEN
        RAISE EXCEPTION 'Branch % does not belong to tenant %', NEW.branch_id, NEW.tenant_id;
    END IF;

    IF NEW.scope_type IS NULL THEN
        NEW.scope_type := 'branch';
    END IF;

    NEW.branch_context := jsonb_build_object(
        'branch_id', NEW.branch_id::text,
        'branch_name', found_name,
        'created_at', now()::text
    );

    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS trigger_validate_api_key_branch ON api_keys;
CREATE TRIGGER trigger_validate_api_key_branch
    BEFORE INSERT OR UPDATE ON api_keys
    FOR EACH ROW
    EXECUTE FUNCTION validate_api_key_branch_ownership();

-- ---------------------------------------------------------------------
-- 5. may this key read that branch?
-- ---------------------------------------------------------------------
CREATE OR REPLACE FUNCTION api_key_has_branch_access(p_api_key_id uuid, p_required_branch_id uuid)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
    k_scope  varchar(20);
    k_branch uuid;
    k_active boolean;
BEGIN
    SELECT k.scope_type, k.branch_id, k.is_active INTO k_scope, k_branch, k_active
      FROM api_keys k
     WHERE k.id = p_api_key_id;

    IF NOT FOUND OR NOT coalesce(k_active, false) THEN
        RETURN false;
    END IF;
    IF k_scope = 'tenant' THEN
        RETURN true;
    END IF;
    IF k_scope = 'branch' THEN
        RETURN k_branch = p_required_branch_id;
    END IF;
    RETURN false;
END;
$$;

-- ---------------------------------------------------------------------
-- 6. validate_api_key now also tells the key's branch and scope
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
        'branch_id', k.branch_id,
        'scope_type', k.scope_type,
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
-- 7. keys with their tenant's and branch's names, for analytics
-- ---------------------------------------------------------------------
CREATE OR REPLACE VIEW api_keys_with_branch_info AS
SELECT
    k.id,
    k.tenant_id,
    k.branch_id,
    k.scope_type,
    k.name,
    k.environment,
    k.is_active,
    k.created_at,
    k.last_used_at,
    k.usage_count,
    t.name AS tenant_name,
    b.name AS branch_name,
    b.address AS branch_address
FROM api_keys k
LEFT JOIN tenants t ON t.id = k.tenant_id
LEFT JOIN branches b ON b.id = k.branch_id;

-- ---------------------------------------------------------------------
-- 8. grants
-- ---------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION api_key_has_branch_access(uuid, uuid) TO service_role;
GRANT SELECT ON api_keys_with_branch_info TO service_role;
