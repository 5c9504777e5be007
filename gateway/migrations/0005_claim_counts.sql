-- The claim gauges (claims by status, the oldest pending claim) were
-- counted by every gateway every 15 s: a sequential scan of every claim,
-- 30-48 ms of database time at 100,000 claims, although claims change
-- rarely. A statement that adds or removes claims, or a row whose status
-- (or creation time) changes, now NOTIFYs this channel when it commits
-- (one notification per transaction: PostgreSQL folds identical ones),
-- and a gateway counts again only after one (or when it could have missed
-- one: hostnames/worker.rs). A check that leaves a claim's status as it
-- was (most of them) notifies nothing.
CREATE OR REPLACE FUNCTION tenant_gateway.custom_hostnames_counted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenant_gateway_hostname_counts', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS custom_hostnames_counts ON tenant_gateway.custom_hostnames;
CREATE TRIGGER custom_hostnames_counts
    AFTER INSERT OR DELETE OR TRUNCATE ON tenant_gateway.custom_hostnames
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_gateway.custom_hostnames_counted();
DROP TRIGGER IF EXISTS custom_hostnames_status_counts ON tenant_gateway.custom_hostnames;
CREATE TRIGGER custom_hostnames_status_counts
    AFTER UPDATE OF status, created_at ON tenant_gateway.custom_hostnames
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION tenant_gateway.custom_hostnames_counted();
