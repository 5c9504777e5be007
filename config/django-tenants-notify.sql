-- Cache invalidation for Tenant Gateway in front of an existing django-tenants
-- database (tenant.preset = "django-tenants"). Run once, e.g.:
--   psql "$DATABASE_URL" -f config/django-tenants-notify.sql
-- Every change to customers_domain / customers_client NOTIFYs channel
-- `tenant_gateway` with a JSON array of the affected host names.
CREATE OR REPLACE FUNCTION tenant_gateway_notify_domains() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    names jsonb := '[]'::jsonb;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN names := names || to_jsonb(OLD.domain); END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN names := names || to_jsonb(NEW.domain); END IF;
    PERFORM pg_notify('tenant_gateway', names::text);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tenant_gateway_notify_clients() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    names jsonb;
BEGIN
    SELECT coalesce(jsonb_agg(d.domain), '[]'::jsonb) INTO names
      FROM customers_domain d WHERE d.tenant_id = NEW.id;
    IF names <> '[]'::jsonb THEN PERFORM pg_notify('tenant_gateway', names::text); END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS tenant_gateway_domains ON customers_domain;
CREATE TRIGGER tenant_gateway_domains AFTER INSERT OR UPDATE OR DELETE ON customers_domain
    FOR EACH ROW EXECUTE FUNCTION tenant_gateway_notify_domains();
DROP TRIGGER IF EXISTS tenant_gateway_clients ON customers_client;
CREATE TRIGGER tenant_gateway_clients AFTER UPDATE ON customers_client
    FOR EACH ROW EXECUTE FUNCTION tenant_gateway_notify_clients();
