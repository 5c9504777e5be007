-- Shared (public) schema: the django-tenants style tenancy model.
CREATE TABLE IF NOT EXISTS public.tenants (
    id           bigserial PRIMARY KEY,
    schema_name  text NOT NULL UNIQUE
                 CHECK (schema_name ~ '^[a-z_][a-z0-9_]{0,62}$'
                        AND schema_name NOT IN ('public', 'information_schema')
                        AND schema_name NOT LIKE 'pg\_%'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);

CREATE TABLE IF NOT EXISTS public.domains (
    id          bigserial PRIMARY KEY,
    domain      text NOT NULL UNIQUE
                CHECK (domain = lower(domain) AND length(domain) BETWEEN 1 AND 253
                       AND domain !~ '[:/\s]' AND right(domain, 1) <> '.'),
    tenant_id   bigint NOT NULL REFERENCES public.tenants(id) ON DELETE CASCADE,
    is_primary  boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS domains_tenant_id_idx ON public.domains (tenant_id);
-- At most one primary domain per tenant.
CREATE UNIQUE INDEX IF NOT EXISTS domains_one_primary_idx ON public.domains (tenant_id) WHERE is_primary;
