-- Per-tenant limits the gateway enforces (its [limits.tenant] defaults apply
-- where these are NULL): requests per second with a burst, and concurrent
-- requests in flight to the backends. The gateway reads them with the tenant
-- (lookup query columns 4-6); changing them NOTIFYs like any tenant change.
ALTER TABLE public.tenants
    ADD COLUMN IF NOT EXISTS rate_limit_rps integer CHECK (rate_limit_rps IS NULL OR rate_limit_rps >= 0),
    ADD COLUMN IF NOT EXISTS rate_limit_burst integer CHECK (rate_limit_burst IS NULL OR rate_limit_burst >= 1),
    ADD COLUMN IF NOT EXISTS max_concurrent integer CHECK (max_concurrent IS NULL OR max_concurrent >= 0);
