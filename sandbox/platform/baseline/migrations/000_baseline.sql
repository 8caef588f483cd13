-- Baseline schema of the platform, before FASE 1-3. Names follow the platform contract exactly.
CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    vertical    text NOT NULL CHECK (vertical IN ('clinic', 'restaurant', 'shop')),
    plan        text NOT NULL DEFAULT 'starter',
    status      text NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE branches (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        text NOT NULL,
    slug        text NOT NULL,
    city        text,
    state       text,
    is_active   boolean NOT NULL DEFAULT true,
    is_headquarters boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, slug)
);
CREATE INDEX idx_branches_tenant ON branches(tenant_id);

CREATE TABLE leads (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    branch_id       uuid REFERENCES branches(id) ON DELETE SET NULL,
    first_name      text,
    last_name       text,
    full_name       text,
    phone           text NOT NULL,
    email           text,
    status          text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'contacted', 'qualified', 'lost')),
    classification  text NOT NULL DEFAULT 'warm' CHECK (classification IN ('hot', 'warm', 'cold')),
    source          text NOT NULL DEFAULT 'api',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_leads_tenant_created ON leads(tenant_id, created_at DESC);

CREATE TABLE staff (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    display_name text NOT NULL,
    role        text NOT NULL DEFAULT 'staff',
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE staff_branches (
    staff_id    uuid NOT NULL REFERENCES staff(id) ON DELETE CASCADE,
    branch_id   uuid NOT NULL REFERENCES branches(id) ON DELETE CASCADE,
    PRIMARY KEY (staff_id, branch_id)
);

CREATE TABLE appointments (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    branch_id    uuid REFERENCES branches(id) ON DELETE SET NULL,
    lead_id      uuid REFERENCES leads(id) ON DELETE SET NULL,
    staff_id     uuid REFERENCES staff(id) ON DELETE SET NULL,
    service_id   uuid,
    scheduled_at timestamptz NOT NULL,
    duration_minutes integer NOT NULL DEFAULT 30,
    status       text NOT NULL DEFAULT 'scheduled'
                 CHECK (status IN ('scheduled', 'confirmed', 'completed', 'cancelled', 'no_show')),
    notes        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_appointments_tenant_scheduled ON appointments(tenant_id, scheduled_at DESC);

CREATE TABLE inventory_items (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    branch_id     uuid REFERENCES branches(id) ON DELETE CASCADE,
    name          text NOT NULL,
    quantity      integer NOT NULL DEFAULT 0,
    min_quantity  integer NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    created_by          uuid,
    name                text NOT NULL,
    description         text,
    key_hash            char(64) NOT NULL UNIQUE,
    key_hint            text NOT NULL,
    key_prefix          text NOT NULL,
    environment         text NOT NULL DEFAULT 'live' CHECK (environment IN ('live', 'test')),
    scopes              jsonb NOT NULL DEFAULT '[]'::jsonb,
    rate_limit_rpm      integer NOT NULL DEFAULT 60 CHECK (rate_limit_rpm BETWEEN 1 AND 1000),
    rate_limit_daily    integer NOT NULL DEFAULT 10000 CHECK (rate_limit_daily >= 1),
    ip_whitelist        text[],
    expires_at          timestamptz,
    last_used_at        timestamptz,
    last_used_endpoint  text,
    usage_count_today   integer NOT NULL DEFAULT 0,
    is_active           boolean NOT NULL DEFAULT true,
    revoked_at          timestamptz,
    revoked_by          uuid,
    revoke_reason       text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_api_keys_tenant ON api_keys(tenant_id);

CREATE TABLE api_key_usage_logs (
    id               bigserial PRIMARY KEY,
    api_key_id       uuid REFERENCES api_keys(id) ON DELETE CASCADE,
    tenant_id        uuid,
    endpoint         text NOT NULL,
    method           text NOT NULL,
    scope_used       text,
    request_path     text NOT NULL,
    query_params     jsonb NOT NULL DEFAULT '{}'::jsonb,
    status_code      integer NOT NULL,
    response_time_ms integer NOT NULL,
    error_message    text,
    error_code       text,
    user_agent       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_usage_logs_created ON api_key_usage_logs(created_at DESC);
