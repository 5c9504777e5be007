-- Listing the claims of one status a page at a time (`GET /api/v1/hostnames
-- ?status=S&after=NAME`, `gateway hostnames list --status S`) walks this
-- index from NAME within S, so a rare status among many claims (the few
-- `failed` among 100,000 `active`) costs a page's rows, not a walk past the
-- others. Applied by every gateway at start-up; idempotent.
CREATE INDEX IF NOT EXISTS custom_hostnames_status_name_idx
    ON tenant_gateway.custom_hostnames (status, name);
