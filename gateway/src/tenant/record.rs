//! The cached tenant record: what the domain table says about a host, kept
//! small because the cache holds one per tenant (up to `cache.max_entries`).
//! 40 bytes behind its `Arc` plus one string allocation: the schema and the
//! pinned pool's name share it, the metric handle is a single pointer, and
//! so is the tenant's limiter (shared with the limit registry).

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

use crate::limits::Limiter;
use crate::metrics::tenant::TenantStats;

/// A tenant's lifecycle state as stored in the tenant table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Suspended,
    Deleted,
}

/// What the domain table says about a host. Shared by `Arc`: the request
/// path clones a pointer, never the strings.
#[derive(Debug)]
pub struct Tenant {
    /// The schema name followed by the pinned pool's name (if any).
    names: Box<str>,
    /// This tenant's metric handles, attached on first use.
    stats: AttachOnce<TenantStats>,
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
            stats: AttachOnce::default(),
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

    /// This tenant's metric handles, attached by `init` on first use.
    pub fn stats(&self, init: impl FnOnce() -> Arc<TenantStats>) -> &TenantStats {
        self.stats.get_or_init(init)
    }
}

/// An `Arc<T>` set at most once, in one pointer (a `OnceLock<Arc<T>>` takes
/// two words). Concurrent first uses may both run `init`; one wins, the
/// other's `Arc` is dropped.
pub struct AttachOnce<T> {
    ptr: AtomicPtr<T>,
    /// Send/Sync as an `Arc<T>` is, not as a raw pointer is.
    _owns: PhantomData<Arc<T>>,
}

impl<T> Default for AttachOnce<T> {
    fn default() -> Self {
        AttachOnce {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }
}

impl<T> AttachOnce<T> {
    pub fn get(&self) -> Option<&T> {
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Arc::into_raw` in
        // `get_or_init` and that reference is released only in `drop`, which
        // `&self` outlives.
        unsafe { p.as_ref() }
    }

    pub fn get_or_init(&self, init: impl FnOnce() -> Arc<T>) -> &T {
        if let Some(v) = self.get() {
            return v;
        }
        let new = Arc::into_raw(init()).cast_mut();
        match self
            .ptr
            .compare_exchange(ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: `new` is now owned by the slot (see `get`).
            Ok(_) => unsafe { &*new },
            Err(existing) => {
                // SAFETY: `new` lost the race and was never shared; give its
                // reference back. `existing` is owned by the slot.
                unsafe {
                    drop(Arc::from_raw(new));
                    &*existing
                }
            }
        }
    }
}

impl<T> Drop for AttachOnce<T> {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // SAFETY: the slot's one reference, from `Arc::into_raw`.
            unsafe { drop(Arc::from_raw(p)) }
        }
    }
}

impl<T> std::fmt::Debug for AttachOnce<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.get().is_some() {
            "AttachOnce(set)"
        } else {
            "AttachOnce(unset)"
        })
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

    #[test]
    fn attach_once_keeps_the_first_and_releases_everything() {
        let first = Arc::new(1u32);
        let second = Arc::new(2u32);
        let slot = AttachOnce::default();
        assert!(slot.get().is_none());
        assert_eq!(*slot.get_or_init(|| first.clone()), 1);
        assert_eq!(*slot.get_or_init(|| second.clone()), 1);
        assert_eq!((Arc::strong_count(&first), Arc::strong_count(&second)), (2, 1));
        drop(slot);
        assert_eq!(Arc::strong_count(&first), 1);
    }

    #[test]
    fn attach_once_races_settle_on_one_value() {
        let slot = Arc::new(AttachOnce::default());
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (slot, made) = (slot.clone(), made.clone());
                std::thread::spawn(move || {
                    *slot.get_or_init(|| {
                        made.fetch_add(1, Ordering::Relaxed);
                        Arc::new(i)
                    })
                })
            })
            .collect();
        let seen: Vec<usize> = threads.into_iter().map(|t| t.join().expect("no panic")).collect();
        assert!(seen.iter().all(|v| *v == seen[0]));
        assert!(made.load(Ordering::Relaxed) >= 1);
    }
}
