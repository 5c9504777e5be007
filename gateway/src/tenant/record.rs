//! The cached tenant record: what the domain table says about a host, kept
//! small because the cache holds one per tenant (up to `cache.max_entries`).
//! 40 bytes behind its `Arc` plus one string allocation: the schema and the
//! pinned pool's name share it; the metric handle and the limiter are one
//! pointer each, attached when the lookup builds the record (no lazily set
//! cell on the request path).

use std::sync::Arc;

use crate::limits::Limiter;
use crate::metrics::tenant::TenantStats;

/// A tenant's lifecycle state as stored in the tenant table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Suspended,
    Deleted,
    /// A custom hostname whose claim is not active for this tenant
    /// (`hostnames::policy::routes`): not routed, no certificate.
    Unverified,
}

/// What the domain table says about a host. Shared by `Arc`: the request
/// path clones a pointer, never the strings.
#[derive(Debug)]
pub struct Tenant {
    /// The schema name followed by the pinned pool's name (if any).
    names: Box<str>,
    /// This tenant's metric handles (None: not attached; the caller finds them).
    stats: Option<Arc<TenantStats>>,
    /// Its rate and concurrency limits (None: unlimited).
    limiter: Option<Arc<Limiter>>,
    schema_len: u32,
    pinned: bool,
    pub status: Status,
}

impl Tenant {
    /// `None` if the schema name is longer than 4 GiB (a validated schema
    /// name is at most 63 bytes).
    pub fn new(schema: &str, status: Status, pool: Option<&str>) -> Option<Tenant> {
        let schema_len = u32::try_from(schema.len()).ok()?;
        let names = match pool {
            Some(pool) => [schema, pool].concat().into_boxed_str(),
            None => schema.into(),
        };
        Some(Tenant {
            names,
            stats: None,
            limiter: None,
            schema_len,
            pinned: pool.is_some(),
            status,
        })
    }

    /// With its limiter (from [`crate::limits::Limits::limiter`]).
    pub fn with_limiter(mut self, limiter: Option<Arc<Limiter>>) -> Tenant {
        self.limiter = limiter;
        self
    }

    pub fn limiter(&self) -> Option<&Limiter> {
        self.limiter.as_deref()
    }

    /// Schema name: the value stamped into `X-Tenant`.
    pub fn schema(&self) -> &str {
        self.names.get(..self.schema_len as usize).unwrap_or_default()
    }

    /// Dedicated backend pool, if the tenant is pinned to one.
    pub fn pool(&self) -> Option<&str> {
        self.pinned
            .then(|| self.names.get(self.schema_len as usize..).unwrap_or_default())
    }

    /// With its metric handles (from the per-tenant metrics).
    pub fn with_stats(mut self, stats: Arc<TenantStats>) -> Tenant {
        self.stats = Some(stats);
        self
    }

    /// This tenant's metric handles, if attached.
    pub fn stats(&self) -> Option<&TenantStats> {
        self.stats.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_is_small() {
        assert_eq!(std::mem::size_of::<Tenant>(), 40);
    }

    #[test]
    fn names_share_one_string() {
        let t = Tenant::new("acme", Status::Active, Some("eu-west")).expect("short");
        assert_eq!((t.schema(), t.pool()), ("acme", Some("eu-west")));
        let t = Tenant::new("acme", Status::Suspended, None).expect("short");
        assert_eq!((t.schema(), t.pool(), t.status), ("acme", None, Status::Suspended));
        // An empty pool name is still a pin (to a pool that cannot exist).
        let t = Tenant::new("acme", Status::Active, Some("")).expect("short");
        assert_eq!(t.pool(), Some(""));
    }
}
