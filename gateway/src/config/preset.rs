//! The built-in lookup and ACME domain queries: our own schema's, and the
//! django-tenants preset's built from the app's configured tables.

use super::*;

/// Our own schema's lookup (domains are stored lower-case, a CHECK says so).
pub(super) const DEFAULT_LOOKUP: &str = "SELECT t.schema_name, t.status, t.backend_pool, \
                    t.rate_limit_rps, t.rate_limit_burst, t.max_concurrent \
               FROM public.domains d JOIN public.tenants t ON t.id = d.tenant_id \
              WHERE d.domain = $1";

pub(super) const DEFAULT_ACME_DOMAINS: &str =
    "SELECT d.domain FROM public.domains d JOIN public.tenants t ON t.id = d.tenant_id \
                            WHERE t.status = 'active'";

/// The django-tenants tables, quoted (validated by `validate`).
pub(super) struct DjangoSql {
    tenant: String,
    domain: String,
    active: Option<String>,
}

impl DjangoSql {
    pub(super) fn new(d: &DjangoConfig) -> DjangoSql {
        let q = |n: &str| quoted_ident(n).unwrap_or_else(|| tenancy::quote_ident(n));
        DjangoSql {
            tenant: q(&d.tenant_table),
            domain: q(&d.domain_table),
            active: d.active_column.as_deref().map(q),
        }
    }

    /// Domains are stored as typed: matched case-insensitively (the
    /// triggers install an index on `lower(domain)`), an exact-case row first.
    pub(super) fn lookup(&self) -> String {
        let status = match &self.active {
            Some(col) => format!("CASE WHEN c.{col} THEN 'active' ELSE 'suspended' END"),
            None => "'active'::text".into(),
        };
        format!(
            "SELECT c.schema_name, {status}, NULL::text \
               FROM {} d JOIN {} c ON c.id = d.tenant_id \
              WHERE lower(d.domain) = $1 ORDER BY d.domain = $1 DESC, d.id LIMIT 1",
            self.domain, self.tenant
        )
    }

    pub(super) fn acme_domains(&self) -> String {
        let active = match &self.active {
            Some(col) => format!(" WHERE c.{col}"),
            None => String::new(),
        };
        format!(
            "SELECT DISTINCT lower(d.domain) FROM {} d JOIN {} c ON c.id = d.tenant_id{active}",
            self.domain, self.tenant
        )
    }
}
