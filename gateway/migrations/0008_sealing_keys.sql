-- The sealing keys (`acme.key_env`) gateways run with, by fingerprint (an
-- HMAC of a fixed text under the key: it tells keys apart and reveals
-- nothing of them), each with when a gateway last said it seals with it
-- (at start and every ACME scan). A gateway that finds a stored secret no
-- key of its own opens replaces it (a new certificate, a new account) only
-- while no other sealing key has been seen lately: otherwise the fleet's
-- gateways seal with different keys, and replacing what the others wrote
-- would have them replace it back, order after order. Applied by every
-- gateway at start-up; idempotent.
CREATE TABLE IF NOT EXISTS tenant_gateway.sealing_keys (
    fingerprint text PRIMARY KEY,
    seen_at     timestamptz NOT NULL DEFAULT now()
);
