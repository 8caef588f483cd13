-- FASE 2: API keys scoped to one branch of their tenant.
-- A key is either tenant-wide (scope_type 'tenant', no branch) or confined to one branch.

ALTER TABLE api_keys
    ADD COLUMN branch_id uuid REFERENCES branches(id) ON DELETE CASCADE,
    ADD COLUMN scope_type text NOT NULL DEFAULT 'tenant' CHECK (scope_type IN ('tenant', 'branch')),
    ADD COLUMN branch_context jsonb;

ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_branch_scope_consistency CHECK (
        (scope_type = 'tenant' AND branch_id IS NULL)
        OR (scope_type = 'branch' AND branch_id IS NOT NULL)
    );

-- A foreign key cannot say "a branch of the key's own tenant": a trigger does.
CREATE OR REPLACE FUNCTION validate_api_key_branch_ownership() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.branch_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM branches b WHERE b.id = NEW.branch_id AND b.tenant_id = NEW.tenant_id
    ) THEN
        RAISE EXCEPTION 'branch % does not belong to tenant % of API key %',
            NEW.branch_id, NEW.tenant_id, NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER validate_api_key_branch_ownership
    BEFORE INSERT OR UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION validate_api_key_branch_ownership();

CREATE INDEX idx_api_keys_branch ON api_keys(branch_id) WHERE branch_id IS NOT NULL;
CREATE INDEX idx_api_keys_tenant_branch ON api_keys(tenant_id, branch_id);
CREATE INDEX idx_api_keys_scope_type ON api_keys(scope_type);

-- Whether a key may read a branch: the branch is its tenant's and the key is tenant-wide or
-- confined to exactly that branch. Positional parameters: the names equal column names.
CREATE OR REPLACE FUNCTION api_key_has_branch_access(key_id uuid, branch_id uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1
          FROM api_keys k
          JOIN branches b ON b.id = $2 AND b.tenant_id = k.tenant_id
         WHERE k.id = $1
           AND (k.scope_type = 'tenant' OR k.branch_id = $2)
    );
$$;
