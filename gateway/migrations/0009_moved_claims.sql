-- Active claims that look at where their names point
-- (`custom_domains.recheck_interval_secs`, gateway/src/hostnames/): a claim
-- whose name has pointed elsewhere for `moved_after_secs` is `moved` (not
-- routed, its certificate retired) and is removed if it does not point here
-- again within `moved_window_secs`. `failing_since`: since when every answer
-- has said elsewhere; `moved_at`: when the claim moved. The due index now
-- covers the active and moved claims the checkers lease when rechecks are
-- on. Applied by every gateway at start-up; idempotent.
ALTER TABLE tenant_gateway.custom_hostnames ADD COLUMN IF NOT EXISTS failing_since timestamptz;
ALTER TABLE tenant_gateway.custom_hostnames ADD COLUMN IF NOT EXISTS moved_at timestamptz;
ALTER TABLE tenant_gateway.custom_hostnames DROP CONSTRAINT IF EXISTS custom_hostnames_status_check;
ALTER TABLE tenant_gateway.custom_hostnames ADD CONSTRAINT custom_hostnames_status_check
    CHECK (status IN ('pending', 'verified', 'active', 'failed', 'expired', 'removed', 'moved'));
CREATE INDEX IF NOT EXISTS custom_hostnames_recheck_due_idx
    ON tenant_gateway.custom_hostnames (next_check_at) WHERE status IN ('active', 'moved');
-- Listing the claims whose names point elsewhere (`?failing=1`,
-- `gateway hostnames list --failing`): few among many, by name.
CREATE INDEX IF NOT EXISTS custom_hostnames_failing_idx
    ON tenant_gateway.custom_hostnames (name) WHERE failing_since IS NOT NULL;
