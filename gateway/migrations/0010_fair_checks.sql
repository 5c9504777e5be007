-- The checkers share their slots between tenants (gateway/src/hostnames/
-- share.rs): each round walks the tenants with pending or verified claims
-- (one seek per tenant) and takes each one's earliest due claims, and
-- counts the checks each tenant has running (the claims leased now: few
-- among many). Applied by every gateway at start-up; idempotent.
CREATE INDEX IF NOT EXISTS custom_hostnames_open_by_tenant_idx
    ON tenant_gateway.custom_hostnames (tenant, next_check_at) WHERE status IN ('pending', 'verified');
CREATE INDEX IF NOT EXISTS custom_hostnames_leased_idx
    ON tenant_gateway.custom_hostnames (tenant) WHERE lease_owner IS NOT NULL;
