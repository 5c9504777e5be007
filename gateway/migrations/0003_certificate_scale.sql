-- Certificates at scale (100,000 names): scans read only what is due, by
-- index. `renew_after` is set when a certificate is stored (60-67 % of its
-- lifetime, jittered so a bulk import does not renew at once); rows stored
-- before it existed renew at two thirds.
ALTER TABLE tenant_gateway.certificates ADD COLUMN IF NOT EXISTS renew_after timestamptz;
UPDATE tenant_gateway.certificates
   SET renew_after = not_after - (not_after - not_before) / 3
 WHERE renew_after IS NULL;
CREATE INDEX IF NOT EXISTS certificates_renew_idx
    ON tenant_gateway.certificates (renew_after) WHERE removed_at IS NULL;
CREATE INDEX IF NOT EXISTS certificates_retired_idx
    ON tenant_gateway.certificates (removed_at) WHERE removed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS acme_names_next_attempt_idx
    ON tenant_gateway.acme_names (next_attempt_at);
CREATE INDEX IF NOT EXISTS acme_names_forced_idx
    ON tenant_gateway.acme_names (name) WHERE force_renew;
