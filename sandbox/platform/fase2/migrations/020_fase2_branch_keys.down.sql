-- Undo 020_fase2_branch_keys.sql. Run it only after every branch key has been converted to a
-- tenant key and the FASE 2 code is reverted: dropping the columns loses each key's branch.

DROP FUNCTION IF EXISTS api_key_has_branch_access(uuid, uuid);
DROP TRIGGER IF EXISTS validate_api_key_branch_ownership ON api_keys;
DROP FUNCTION IF EXISTS validate_api_key_branch_ownership();
DROP INDEX IF EXISTS idx_api_keys_branch;
DROP INDEX IF EXISTS idx_api_keys_tenant_branch;
DROP INDEX IF EXISTS idx_api_keys_scope_type;
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_branch_scope_consistency;
-- Also drops FASE 3's idx_api_keys_branch_scope, which is built on these columns.
ALTER TABLE api_keys
    DROP COLUMN IF EXISTS branch_context,
    DROP COLUMN IF EXISTS scope_type,
    DROP COLUMN IF EXISTS branch_id;
