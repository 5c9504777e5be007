-- Each order names the tenant it was made for, so each tenant's share of the
-- hourly order budget (`acme.orders_per_tenant_per_hour`) is counted across
-- the fleet (gateway/src/tls/acme/policy.rs). Orders logged by gateways
-- older than this have none and count only against the fleet's and the
-- registrable domain's budgets.
-- Applied by every gateway at start-up; idempotent.
ALTER TABLE tenant_gateway.acme_orders ADD COLUMN IF NOT EXISTS tenant text;
