-- =====================================================================
-- Migration 001: the platform's core tables (sandbox model of the "tistis" shape)
--
-- Tenants (the customers: clinics, restaurants, shops), their branches, the people who sign
-- in (user_roles, over Supabase's auth.users), staff, leads, appointments and inventory.
--
-- Needs what Supabase provides (see sandbox/platform/tistis/supabase/bootstrap.sql): the auth
-- schema with auth.users and auth.uid(), and the roles anon, authenticated, service_role.
--
-- Row level security: every tenant table is visible only to users holding a user_roles row
-- for that tenant. A role without BYPASSRLS and without such a row sees no rows at all and no
-- error. The backend uses service_role, which bypasses row level security.
-- =====================================================================

-- ---------------------------------------------------------------------
-- Tenants and branches
-- ---------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    vertical    text NOT NULL DEFAULT 'clinic',
    plan        text NOT NULL DEFAULT 'starter',
    status      text NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS branches (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name             text NOT NULL,
    slug             text NOT NULL,
    city             text,
    state            text,
    address          text,
    is_active        boolean NOT NULL DEFAULT true,
    is_headquarters  boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, slug)
);
CREATE INDEX IF NOT EXISTS idx_branches_tenant ON branches(tenant_id);

-- ---------------------------------------------------------------------
-- Who may act for which tenant
-- ---------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS user_roles (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'manager', 'staff')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, tenant_id)
);
CREATE INDEX IF NOT EXISTS idx_user_roles_user ON user_roles(user_id);
CREATE INDEX IF NOT EXISTS idx_user_roles_tenant ON user_roles(tenant_id);

-- ---------------------------------------------------------------------
-- Staff; a person may work at several branches
-- ---------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS staff (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    display_name  text NOT NULL,
    role          text NOT NULL DEFAULT 'staff',
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_staff_tenant ON staff(tenant_id);

CREATE TABLE IF NOT EXISTS staff_branches (
    staff_id   uuid NOT NULL REFERENCES staff(id) ON DELETE CASCADE,
    branch_id  uuid NOT NULL REFERENCES branches(id) ON DELETE CASCADE,
    PRIMARY KEY (staff_id, branch_id)
);

-- ---------------------------------------------------------------------
-- Leads: people who contacted a tenant. Never deleted, only marked (deleted_at).
-- ---------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS leads (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    branch_id       uuid REFERENCES branches(id) ON DELETE SET NULL,
    first_name      text,
    last_name       text,
    full_name       text,
    phone           text NOT NULL,
    email           text,
    status          text NOT NULL DEFAULT 'new' CHECK (status IN (
                        'new', 'contacted', 'qualified', 'appointment_scheduled',
                        'converted', 'lost', 'inactive')),
    classification  text NOT NULL DEFAULT 'warm' CHECK (classification IN ('hot', 'warm', 'cold')),
    source          text NOT NULL DEFAULT 'whatsapp' CHECK (source IN (
                        'whatsapp', 'instagram', 'facebook', 'website', 'phone',
                        'walk_in', 'referral', 'other')),
    deleted_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_leads_tenant ON leads(tenant_id);
CREATE INDEX IF NOT EXISTS idx_leads_tenant_created ON leads(tenant_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_leads_phone ON leads(tenant_id, phone);
CREATE INDEX IF NOT EXISTS idx_leads_not_deleted ON leads(tenant_id) WHERE deleted_at IS NULL;

-- ---------------------------------------------------------------------
-- Appointments always happen at a branch
-- ---------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS appointments (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    branch_id         uuid NOT NULL REFERENCES branches(id) ON DELETE CASCADE,
    lead_id           uuid REFERENCES leads(id) ON DELETE SET NULL,
    staff_id          uuid REFERENCES staff(id) ON DELETE SET NULL,
    service_id        uuid,
    scheduled_at      timestamptz NOT NULL,
    duration_minutes  integer NOT NULL DEFAULT 30,
    status            text NOT NULL DEFAULT 'scheduled' CHECK (status IN (
                          'scheduled', 'confirmed', 'completed', 'cancelled', 'no_show')),
    notes             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_appointments_tenant_scheduled ON appointments(tenant_id, scheduled_at DESC);
CREATE INDEX IF NOT EXISTS idx_appointments_lead ON appointments(lead_id);

-- ---------------------------------------------------------------------
-- Stock per branch
-- ---------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS inventory_items (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    branch_id     uuid REFERENCES branches(id) ON DELETE CASCADE,
    name          text NOT NULL,
    quantity      integer NOT NULL DEFAULT 0,
    min_quantity  integer NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_inventory_items_tenant ON inventory_items(tenant_id, branch_id);

-- ---------------------------------------------------------------------
-- Row level security: tenants are kept apart by the user's memberships
-- ---------------------------------------------------------------------
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE branches ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE staff ENABLE ROW LEVEL SECURITY;
ALTER TABLE staff_branches ENABLE ROW LEVEL SECURITY;
ALTER TABLE leads ENABLE ROW LEVEL SECURITY;
ALTER TABLE appointments ENABLE ROW LEVEL SECURITY;

-- A user sees their own memberships only (this policy reads no other table, so the policies
-- below that read user_roles cannot recurse).
DROP POLICY IF EXISTS user_roles_own_rows ON user_roles;
CREATE POLICY user_roles_own_rows ON user_roles
    FOR SELECT
    USING (user_id = auth.uid());

DROP POLICY IF EXISTS tenants_member_access ON tenants;
CREATE POLICY tenants_member_access ON tenants
    FOR ALL
    USING (id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()))
    WITH CHECK (id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()));

DROP POLICY IF EXISTS branches_tenant_access ON branches;
CREATE POLICY branches_tenant_access ON branches
    FOR ALL
    USING (tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()))
    WITH CHECK (tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()));

DROP POLICY IF EXISTS staff_tenant_access ON staff;
CREATE POLICY staff_tenant_access ON staff
    FOR ALL
    USING (tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()))
    WITH CHECK (tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()));

-- staff_branches has no tenant column: it follows the staff member's tenant.
DROP POLICY IF EXISTS staff_branches_tenant_access ON staff_branches;
CREATE POLICY staff_branches_tenant_access ON staff_branches
    FOR ALL
    USING (staff_id IN (
        SELECT s.id FROM staff s
        WHERE s.tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid())))
    WITH CHECK (staff_id IN (
        SELECT s.id FROM staff s
        WHERE s.tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid())));

DROP POLICY IF EXISTS leads_tenant_access ON leads;
CREATE POLICY leads_tenant_access ON leads
    FOR ALL
    USING (tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()))
    WITH CHECK (tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()));

DROP POLICY IF EXISTS appointments_tenant_access ON appointments;
CREATE POLICY appointments_tenant_access ON appointments
    FOR ALL
    USING (tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()))
    WITH CHECK (tenant_id IN (SELECT ur.tenant_id FROM user_roles ur WHERE ur.user_id = auth.uid()));
