-- Custom hostnames (docs/operations.md, "Custom domains"): a tenant's claim
-- on a name outside the base domains, proven before the gateway routes the
-- name or orders its certificate (gateway/src/hostnames/). One row per name,
-- so a name belongs to one claim at a time; a claim is bound to one tenant
-- and one random token. Applied by every gateway at start-up; idempotent.
CREATE TABLE IF NOT EXISTS tenant_gateway.custom_hostnames (
    name             text PRIMARY KEY
                     CHECK (name = lower(name) AND length(name) BETWEEN 1 AND 253),
    tenant           text NOT NULL,
    status           text NOT NULL
                     CHECK (status IN ('pending', 'verified', 'active', 'failed', 'expired', 'removed')),
    method           text NOT NULL CHECK (method IN ('txt', 'http', 'cname', 'operator')),
    token            text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- End of the verification window: unproven by then, `expired` or `failed`.
    verify_by        timestamptz NOT NULL,
    verified_at      timestamptz,
    activated_at     timestamptz,
    removed_at       timestamptz,
    checks           integer NOT NULL DEFAULT 0,
    next_check_at    timestamptz NOT NULL DEFAULT now(),
    last_checked_at  timestamptz,
    last_error       text,
    -- A check found a proof record holding another value (not this claim's token).
    saw_other_proof  boolean NOT NULL DEFAULT false,
    -- One checker per name across the fleet (NULL or expired: free).
    lease_owner      text,
    lease_until      timestamptz
);
CREATE INDEX IF NOT EXISTS custom_hostnames_due_idx
    ON tenant_gateway.custom_hostnames (next_check_at) WHERE status IN ('pending', 'verified');

-- Every change to a claim, with who made it (operator actions are logged here
-- and in the gateway's log).
CREATE TABLE IF NOT EXISTS tenant_gateway.custom_hostname_events (
    id      bigserial PRIMARY KEY,
    name    text NOT NULL,
    tenant  text NOT NULL,
    event   text NOT NULL,
    actor   text NOT NULL,
    detail  text,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS custom_hostname_events_name_idx
    ON tenant_gateway.custom_hostname_events (name, id);

-- A certificate whose name is no longer served: not presented (every gateway
-- drops it on the NOTIFY this update sends), deleted after a grace period.
ALTER TABLE tenant_gateway.certificates ADD COLUMN IF NOT EXISTS removed_at timestamptz;
