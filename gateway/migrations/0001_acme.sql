-- Tenant Gateway's own schema: ACME account, issued certificates (private
-- keys encrypted with AES-256-GCM by the gateway), per-name state, pending
-- challenges (so any gateway of the fleet can answer them) and an order log
-- (rate limits). Applied by every gateway at start-up; idempotent.
CREATE SCHEMA IF NOT EXISTS tenant_gateway;

CREATE TABLE IF NOT EXISTS tenant_gateway.acme_accounts (
    directory        text PRIMARY KEY,
    credentials_enc  bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS tenant_gateway.certificates (
    name        text PRIMARY KEY,
    chain_pem   text NOT NULL,
    key_enc     bytea NOT NULL,
    not_before  timestamptz NOT NULL,
    not_after   timestamptz NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS tenant_gateway.acme_names (
    name             text PRIMARY KEY,
    failures         integer NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    force_renew      boolean NOT NULL DEFAULT false,
    ordering_since   timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- The order lease: one order per name across the fleet without holding a
-- connection during the ACME exchange (see gateway/src/tls/acme.rs). NULL
-- when free; an expired lease is free.
ALTER TABLE tenant_gateway.acme_names
    ADD COLUMN IF NOT EXISTS lease_owner text,
    ADD COLUMN IF NOT EXISTS lease_until timestamptz;

CREATE TABLE IF NOT EXISTS tenant_gateway.acme_challenges (
    kind               text NOT NULL CHECK (kind IN ('http-01', 'tls-alpn-01')),
    key                text NOT NULL,   -- token (http-01) or name (tls-alpn-01)
    name               text NOT NULL,
    key_authorization  text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key)
);

CREATE TABLE IF NOT EXISTS tenant_gateway.acme_orders (
    id                 bigserial PRIMARY KEY,
    name               text NOT NULL,
    registered_domain  text NOT NULL,
    gateway            text NOT NULL,
    started_at         timestamptz NOT NULL DEFAULT now(),
    result             text
);
CREATE INDEX IF NOT EXISTS acme_orders_started_idx ON tenant_gateway.acme_orders (started_at);

CREATE OR REPLACE FUNCTION tenant_gateway.notify_certificate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenant_gateway_certs', NEW.name);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS notify_certificate ON tenant_gateway.certificates;
CREATE TRIGGER notify_certificate AFTER INSERT OR UPDATE ON tenant_gateway.certificates
    FOR EACH ROW EXECUTE FUNCTION tenant_gateway.notify_certificate();
