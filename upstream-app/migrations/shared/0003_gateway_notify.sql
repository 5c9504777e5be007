-- Routing invalidation for Tenant Gateway: every change to a domain or a
-- tenant NOTIFYs channel `tenant_gateway` with a JSON array of the affected
-- host names, so every gateway process evicts them from its cache.
CREATE OR REPLACE FUNCTION public.tenant_gateway_notify_domains() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    names jsonb := '[]'::jsonb;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        names := names || to_jsonb(OLD.domain);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        names := names || to_jsonb(NEW.domain);
    END IF;
    PERFORM pg_notify('tenant_gateway', names::text);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public.tenant_gateway_notify_tenants() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    names jsonb;
BEGIN
    SELECT coalesce(jsonb_agg(d.domain), '[]'::jsonb) INTO names
      FROM public.domains d WHERE d.tenant_id = NEW.id;
    IF names <> '[]'::jsonb THEN
        PERFORM pg_notify('tenant_gateway', names::text);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS tenant_gateway_domains ON public.domains;
CREATE TRIGGER tenant_gateway_domains
    AFTER INSERT OR UPDATE OR DELETE ON public.domains
    FOR EACH ROW EXECUTE FUNCTION public.tenant_gateway_notify_domains();

DROP TRIGGER IF EXISTS tenant_gateway_tenants ON public.tenants;
CREATE TRIGGER tenant_gateway_tenants
    AFTER UPDATE ON public.tenants
    FOR EACH ROW EXECUTE FUNCTION public.tenant_gateway_notify_tenants();
