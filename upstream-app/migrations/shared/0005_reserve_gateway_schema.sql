-- The gateway keeps certificates and ACME state in schema `tenant_gateway`:
-- no tenant may take that name.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'tenants_not_gateway_schema') THEN
        ALTER TABLE public.tenants ADD CONSTRAINT tenants_not_gateway_schema CHECK (schema_name <> 'tenant_gateway');
    END IF;
END $$;
