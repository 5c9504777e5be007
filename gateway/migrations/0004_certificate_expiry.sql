-- Fleet-wide certificate health without reading every row: the stored
-- certificate that expires first is the first entry of this index, so the
-- scan's health statement stays O(log n) at 100,000 names (the renewals
-- overdue count uses certificates_renew_idx of 0003).
CREATE INDEX IF NOT EXISTS certificates_expiry_idx
    ON tenant_gateway.certificates (not_after) WHERE removed_at IS NULL;
-- The names held back as not eligible, which both gauges leave out: few, so
-- the statement reads them through this index instead of every name's row.
CREATE INDEX IF NOT EXISTS acme_names_held_back_idx
    ON tenant_gateway.acme_names (name) WHERE last_error = 'not eligible';
