-- A tenant's change NOTIFYs its domains in chunks: PostgreSQL refuses a
-- NOTIFY payload of 8000 bytes or more, so a tenant with a few hundred
-- domains could not be suspended, deleted, pinned or limited while 0003's
-- trigger sent them all in one. Each chunk stays under 7800 bytes (counted
-- in bytes: a domain may be stored in a non-ASCII form), as the triggers
-- `gateway triggers` installs do.
CREATE OR REPLACE FUNCTION public.tenant_gateway_notify_tenants() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    chunk jsonb := '[]'::jsonb;
    name text;
BEGIN
    FOR name IN SELECT d.domain FROM public.domains d WHERE d.tenant_id = NEW.id LOOP
        IF octet_length(chunk::text) + octet_length(to_jsonb(name)::text) + 2 > 7800 THEN
            PERFORM pg_notify('tenant_gateway', chunk::text);
            chunk := '[]'::jsonb;
        END IF;
        chunk := chunk || to_jsonb(name);
    END LOOP;
    IF chunk <> '[]'::jsonb THEN
        PERFORM pg_notify('tenant_gateway', chunk::text);
    END IF;
    RETURN NULL;
END $$;
