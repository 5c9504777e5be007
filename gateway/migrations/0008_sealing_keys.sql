-- The sealing keys (`acme.key_env`) gateways run with, by fingerprint (an
-- HMAC of a fixed text under the key: it tells keys apart and reveals
-- nothing of them), each with until when a gateway running with it counts
-- as live: each says so at start and every ACME scan, for the longer of 10
-- minutes and three of its scan intervals. A gateway that finds a stored
-- secret no key of its own opens replaces it (a new certificate, a new
-- account) only while no other sealing key is live: otherwise the fleet's
-- gateways seal with different keys, and replacing what the others wrote
-- would have them replace it back, order after order. Applied by every
-- gateway at start-up; idempotent.
CREATE TABLE IF NOT EXISTS tenant_gateway.sealing_keys (
    fingerprint text PRIMARY KEY,
    live_until  timestamptz NOT NULL
);
