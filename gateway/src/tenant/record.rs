//! The cached tenant record: what the domain table says about a host, kept
//! small because the cache holds one per domain (up to `cache.max_entries`;
//! a tenant's domains share an equal record: `tenant::records`).
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

    /// Indistinguishable from `other`: equal names, status and pin, and the
    /// very same limiter and metric handles (`tenant::records` shares such
    /// records between a tenant's domains).
    pub fn same_record(&self, other: &Tenant) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        self.names == other.names
            && self.schema_len == other.schema_len
            && self.pinned == other.pinned
            && self.status == other.status
            && same(&self.stats, &other.stats)
            && same(&self.limiter, &other.limiter)
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
    fn records_are_the_same_only_with_every_field_and_the_same_handles() {
        let metrics = crate::metrics::tenant::TenantMetrics::new(10);
        let t = || Tenant::new("acme", Status::Active, None).expect("short");
        assert!(t().same_record(&t()));
        let stats = metrics.for_tenant("acme");
        assert!(t()
            .with_stats(stats.clone())
            .same_record(&t().with_stats(stats.clone())));
        // Equal handles that are not the same ones: not the same record.
        let other_stats = crate::metrics::tenant::TenantMetrics::new(10).for_tenant("acme");
        assert!(!t().with_stats(stats.clone()).same_record(&t().with_stats(other_stats)));
        assert!(!t().with_stats(stats).same_record(&t()));
        // "ab" + pool "c" and "a" + pool "bc" share their concatenated names.
        let ab = Tenant::new("ab", Status::Active, Some("c")).expect("short");
        let a = Tenant::new("a", Status::Active, Some("bc")).expect("short");
        assert!(!ab.same_record(&a) && !a.same_record(&ab));
        let pinned_empty = Tenant::new("acme", Status::Active, Some("")).expect("short");
        assert!(!pinned_empty.same_record(&t()) && !t().same_record(&pinned_empty));
        for status in [Status::Suspended, Status::Deleted, Status::Unverified] {
            assert!(!Tenant::new("acme", status, None).expect("short").same_record(&t()));
        }
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
