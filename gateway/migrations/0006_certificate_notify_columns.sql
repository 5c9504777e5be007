-- A certificate's NOTIFY (gateways reload or drop it) fires when the row is
-- stored or a column a gateway reads from it changes, and no longer when only
-- its sealed key does: `gateway acme rekey` re-seals every stored key after a
-- key rotation without changing a certificate, and 100,000 re-sealed rows
-- must not make every gateway reload what it holds. A column added to the
-- table later belongs in this list if a gateway reads it.
DROP TRIGGER IF EXISTS notify_certificate ON tenant_gateway.certificates;
CREATE TRIGGER notify_certificate
    AFTER INSERT OR UPDATE OF name, chain_pem, not_before, not_after, issued_at, removed_at, renew_after
    ON tenant_gateway.certificates
    FOR EACH ROW EXECUTE FUNCTION tenant_gateway.notify_certificate();
