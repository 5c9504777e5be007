//! One tenant record for all of a tenant's cached domains, instead of one
//! per domain.
//!
//! Each cached domain holds an `Arc<Tenant>`; built per lookup, the record
//! and its name are two allocations (64 + 8 to 32 bytes) for every domain,
//! about half of what a cached domain costs (bench/RESULTS.md). A tenant with
//! a subdomain, a custom domain and its `www.` holds three equal records.
//! Here a lookup's record is exchanged for the one already built for its
//! tenant when every field is equal: the names, status and pin, and the
//! very same limiter and metric handles (so a record is shared only where a
//! fresh one would be indistinguishable).
//!
//! Bounded: at most [`CAP`] tenants are remembered (a hash of the schema
//! name and a weak reference each, ~24 bytes; a weak reference keeps its
//! record's 64-byte allocation, not its name, until it is forgotten: at most
//! 1.3 MiB in all); when full, references whose records are gone are
//! dropped, and if most are still alive the memory of all is cleared, so a
//! full map costs O(1) per lookup amortised. A tenant not remembered gets
//! its own record, as before. Only lookups (cache misses) come here, never
//! a request served from the cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::Tenant;

/// Tenants remembered at once.
pub const CAP: usize = 16_384;

#[derive(Default)]
pub struct Records {
    /// Hash of the schema name → the record last built for it (a collision
    /// only costs sharing: the records are compared whole).
    by_schema: Mutex<HashMap<u64, Weak<Tenant>>>,
    hasher: RandomState,
}

impl Records {
    /// `t` as a shared record: the one already built for its tenant if equal
    /// in every field, else `t` (remembered for the tenant's next domain).
    pub fn share(&self, t: Tenant) -> Arc<Tenant> {
        self.share_bounded(t, CAP)
    }

    fn share_bounded(&self, t: Tenant, cap: usize) -> Arc<Tenant> {
        let key = self.hasher.hash_one(t.schema());
        let mut map = self.by_schema.lock();
        if let Some(same) = map.get(&key).and_then(Weak::upgrade).filter(|r| r.same_record(&t)) {
            return same;
        }
        let t = Arc::new(t);
        if map.len() >= cap && !map.contains_key(&key) {
            map.retain(|_, r| r.strong_count() > 0);
            if map.len() > cap / 4 * 3 {
                map.clear();
            }
        }
        map.insert(key, Arc::downgrade(&t));
        t
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.by_schema.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Status;

    fn tenant(schema: &str, status: Status, pool: Option<&str>) -> Tenant {
        Tenant::new(schema, status, pool).expect("short")
    }

    #[test]
    fn equal_records_of_one_tenant_are_one_record() {
        let r = Records::default();
        let a = r.share(tenant("acme", Status::Active, None));
        let b = r.share(tenant("acme", Status::Active, None));
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn records_differing_in_any_field_are_never_shared() {
        let r = Records::default();
        let base = r.share(tenant("acme", Status::Active, None));
        for other in [
            tenant("acme2", Status::Active, None),
            tenant("acm", Status::Active, None),
            tenant("acme", Status::Suspended, None),
            tenant("acme", Status::Active, Some("eu")),
            tenant("acme", Status::Active, Some("")),
        ] {
            let got = r.share(other);
            assert!(!Arc::ptr_eq(&base, &got), "{got:?}");
        }
        // The record last built for a tenant is the one shared next.
        let suspended = r.share(tenant("acme", Status::Suspended, None));
        let again = r.share(tenant("acme", Status::Suspended, None));
        assert!(Arc::ptr_eq(&suspended, &again));
        assert_eq!((again.schema(), again.status), ("acme", Status::Suspended));
    }

    #[test]
    fn a_full_map_forgets_dead_records_first_and_stays_bounded() {
        let r = Records::default();
        let kept: Vec<Arc<Tenant>> = (0..3)
            .map(|i| r.share_bounded(tenant(&format!("t{i}"), Status::Active, None), 4))
            .collect();
        // Dropped at once: only weak references remain.
        drop(r.share_bounded(tenant("gone", Status::Active, None), 4));
        assert_eq!(r.remembered(), 4);
        // Full: the dead one goes, the live ones stay shared.
        let new = r.share_bounded(tenant("new", Status::Active, None), 4);
        assert_eq!(r.remembered(), 4);
        let again = r.share_bounded(tenant("t0", Status::Active, None), 4);
        assert!(Arc::ptr_eq(&kept[0], &again));
        // Full of live records: all forgotten, then remembered afresh.
        let _newer = r.share_bounded(tenant("newer", Status::Active, None), 4);
        assert_eq!(r.remembered(), 1);
        drop(new);
        for n in 0..100 {
            r.share_bounded(tenant(&format!("x{n}"), Status::Active, None), 4);
            assert!(r.remembered() <= 4);
        }
    }
}
