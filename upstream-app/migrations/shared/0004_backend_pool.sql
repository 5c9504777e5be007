-- Optional dedicated backend pool per tenant (the "separate database" tier):
-- the gateway sends such a tenant only to the named pool.
ALTER TABLE public.tenants ADD COLUMN IF NOT EXISTS backend_pool text
    CHECK (backend_pool IS NULL OR backend_pool ~ '^[a-z0-9_-]{1,64}$');
