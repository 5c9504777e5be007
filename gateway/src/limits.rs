//! Per-tenant fairness: a request rate (token bucket with burst) and a cap
//! on requests in flight to the backends, per tenant, so one tenant's flood
//! cannot take a shared pool's capacity from the others; optionally a rate
//! per client address within a tenant, so one abusive client cannot spend
//! its tenant's whole budget.
//!
//! - Rates are GCRA (the `governor` crate: a token bucket with burst kept in
//!   one atomic word); the per-client limiter is governor's keyed limiter.
//!   Pingora's own `pingora-limits` estimates rates (a count-min sketch over
//!   a sliding window), which fits "how busy is this key" but not a bucket
//!   with a burst and a time until the next token (`Retry-After`).
//! - Concurrency is a tokio semaphore per tenant; a request over the cap
//!   waits (FIFO) up to `queue_timeout`, at most `max_queued` at a time, then
//!   gets 503 with `Retry-After`. The request path checks the rates when a
//!   request's head has arrived ([`Limits::check_rate`]) and takes the slot
//!   once the request is ready to go to a backend, after any body the
//!   gateway reads first (`crate::body`): [`Limits::try_slot`], then
//!   [`Limits::wait_slot`] if none is free.
//! - Each tenant's limits are the config's defaults overridden by its row
//!   (lookup query columns 4-6). [`Limits::limiter`] hands out one
//!   [`Limiter`] per schema and spec, kept in a registry so its state
//!   survives cache refreshes; a changed spec (a NOTIFY, then a lookup)
//!   gets a fresh limiter. Limiters no cached tenant refers to are dropped
//!   by [`Limits::sweep`].
//!
//! Limits are per gateway process: a fleet of N gateways behind a balancer
//! lets a tenant through at about N times the configured rate.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One tenant's effective limits (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitSpec {
    pub rps: u32,
    pub burst: u32,
    pub max_concurrent: u32,
}

/// A tenant row's overrides (None: the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides {
    pub rps: Option<u32>,
    pub burst: Option<u32>,
    pub max_concurrent: Option<u32>,
}

impl LimitSpec {
    /// The defaults with a row's overrides applied (a rate without its own
    /// burst keeps the default burst, at least the rate itself).
    pub fn with(self, o: Overrides) -> LimitSpec {
        let rps = o.rps.unwrap_or(self.rps);
        let burst = o.burst.unwrap_or(if o.rps.is_some() {
            self.burst.max(rps)
        } else {
            self.burst
        });
        LimitSpec {
            rps,
            burst: burst.max(1),
            max_concurrent: o.max_concurrent.unwrap_or(self.max_concurrent),
        }
    }

    fn unlimited(&self) -> bool {
        self.rps == 0 && self.max_concurrent == 0
    }
}

/// A rate per second with a burst (at least 1); `None` for rate 0 (no limit).
pub(crate) fn quota(rps: u32, burst: u32) -> Option<Quota> {
    let rps = NonZeroU32::new(rps)?;
    Some(Quota::per_second(rps).allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(rps)))
}

/// Every slot of a tenant's in-flight cap is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Why a request was held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The tenant's rate: 429.
    Rate { retry_after_secs: u64 },
    /// One client's rate within the tenant: 429.
    ClientRate { retry_after_secs: u64 },
    /// The tenant's requests in flight stayed at the cap: 503.
    Busy { retry_after_secs: u64 },
}

impl Refused {
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Refused::Rate { retry_after_secs }
            | Refused::ClientRate { retry_after_secs }
            | Refused::Busy { retry_after_secs } => retry_after_secs,
        }
    }
}

/// One tenant's limiter state.
pub struct Limiter {
    spec: LimitSpec,
    rate: Option<DefaultDirectRateLimiter>,
    slots: Option<Arc<Semaphore>>,
    queued: AtomicU32,
    /// Key of this tenant in the per-client limiter.
    key: u64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("spec", &self.spec).finish()
    }
}

impl Limiter {
    pub fn spec(&self) -> LimitSpec {
        self.spec
    }
}

/// Whole seconds until `d` has passed (at least 1: `Retry-After` is in seconds).
fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

const SHARDS: usize = 16;

/// Every tenant's limiter, and the per-client limiter. The settings can be
/// replaced on a running gateway ([`Limits::set_settings`], config reload).
pub struct Limits {
    settings: ArcSwap<LimitsSettings>,
    shards: [Mutex<HashMap<Arc<str>, Arc<Limiter>>>; SHARDS],
    hasher: RandomState,
    client: ArcSwapOption<DefaultKeyedRateLimiter<(u64, IpAddr)>>,
    clock: DefaultClock,
}

/// What `[limits.tenant]` and `[limits.client]` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsSettings {
    pub defaults: LimitSpec,
    pub queue_timeout: Duration,
    pub max_queued: u32,
    pub client_rps: u32,
    pub client_burst: u32,
}

impl Limits {
    pub fn new(s: LimitsSettings) -> Limits {
        Limits {
            settings: ArcSwap::from_pointee(s),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            client: ArcSwapOption::from(quota(s.client_rps, s.client_burst).map(|q| Arc::new(RateLimiter::keyed(q)))),
            clock: DefaultClock::default(),
        }
    }

    /// New settings (config reload); `false` if nothing changed. Tenants get
    /// limiters of the new defaults when next looked up.
    pub fn set_settings(&self, s: LimitsSettings) -> bool {
        let old = **self.settings.load();
        if old == s {
            return false;
        }
        if (old.client_rps, old.client_burst) != (s.client_rps, s.client_burst) {
            self.client
                .store(quota(s.client_rps, s.client_burst).map(|q| Arc::new(RateLimiter::keyed(q))));
        }
        self.settings.store(Arc::new(s));
        true
    }

    fn shard(&self, key: u64) -> parking_lot::MutexGuard<'_, HashMap<Arc<str>, Arc<Limiter>>> {
        self.shards[(key >> 32) as usize % SHARDS].lock()
    }

    /// The limiter of `schema` with these overrides: the registered one if
    /// its spec is the same, else a fresh one. `None` when the tenant is
    /// unlimited and no per-client limit is configured.
    pub fn limiter(&self, schema: &str, overrides: Overrides) -> Option<Arc<Limiter>> {
        let spec = self.settings.load().defaults.with(overrides);
        if spec.unlimited() && self.client.load().is_none() {
            return None;
        }
        let key = self.hasher.hash_one(schema);
        let mut shard = self.shard(key);
        if let Some(l) = shard.get(schema).filter(|l| l.spec == spec) {
            return Some(l.clone());
        }
        let limiter = Arc::new(Limiter {
            spec,
            rate: quota(spec.rps, spec.burst).map(RateLimiter::direct),
            slots: (spec.max_concurrent > 0).then(|| Arc::new(Semaphore::new(spec.max_concurrent as usize))),
            queued: AtomicU32::new(0),
            key,
        });
        shard.insert(Arc::from(schema), limiter.clone());
        Some(limiter)
    }

    /// Whether one more request of `limiter`'s tenant from `client` (asked
    /// only when `[limits.client]` is on) is within the rates (the client's
    /// within the tenant, then the tenant's); it is counted if so.
    pub fn check_rate(&self, limiter: &Limiter, client: impl FnOnce() -> Option<IpAddr>) -> Result<(), Refused> {
        if let Some(per_client) = self.client.load().as_deref() {
            if let Some(Err(not_until)) = client().map(|ip| per_client.check_key(&(limiter.key, ip))) {
                return Err(Refused::ClientRate {
                    retry_after_secs: ceil_secs(not_until.wait_time_from(self.clock.now())),
                });
            }
        }
        if let Some(rate) = &limiter.rate {
            if let Err(not_until) = rate.check() {
                return Err(Refused::Rate {
                    retry_after_secs: ceil_secs(not_until.wait_time_from(self.clock.now())),
                });
            }
        }
        Ok(())
    }

    /// A slot among the tenant's requests in flight to the backends, to hold
    /// while the request is proxied, if one is free (`Ok(None)`: the tenant
    /// has no cap); `Err(Full)`: wait for one ([`Limits::wait_slot`]).
    pub fn try_slot(&self, limiter: &Limiter) -> Result<Option<OwnedSemaphorePermit>, Full> {
        let Some(slots) = &limiter.slots else { return Ok(None) };
        slots.clone().try_acquire_owned().map(Some).map_err(|_| Full)
    }

    /// A slot once one is freed, or `Busy` after a brief bounded wait (at
    /// most `max_queued` requests of a tenant wait at once).
    pub async fn wait_slot(&self, limiter: &Limiter) -> Result<Option<OwnedSemaphorePermit>, Refused> {
        let settings = **self.settings.load();
        let Some(slots) = &limiter.slots else { return Ok(None) };
        let busy = Refused::Busy { retry_after_secs: 1 };
        // Counted out when the wait ends, however it ends (a wait dropped
        // half-way must not keep its place in the queue for ever).
        let queued = Queued::enter(&limiter.queued);
        if queued.ahead >= settings.max_queued {
            return Err(busy);
        }
        let waited = tokio::time::timeout(settings.queue_timeout, slots.clone().acquire_owned()).await;
        match waited {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(busy),
        }
    }

    /// Drop limiters no cached tenant refers to, and idle per-client state.
    pub fn sweep(&self) {
        for shard in &self.shards {
            shard.lock().retain(|_, l| Arc::strong_count(l) > 1);
        }
        if let Some(c) = self.client.load().as_deref() {
            c.retain_recent();
            c.shrink_to_fit();
        }
    }

    /// Tenants with a limiter.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// A request counted among its tenant's waiting ones while this lives.
struct Queued<'a> {
    count: &'a AtomicU32,
    /// How many were waiting before it.
    ahead: u32,
}

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicU32) -> Queued<'a> {
        let ahead = count.fetch_add(1, Ordering::AcqRel);
        Queued { count, ahead }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Limits {
        /// The checks in the request path's order.
        async fn admit(
            &self,
            limiter: &Limiter,
            client: Option<IpAddr>,
        ) -> Result<Option<OwnedSemaphorePermit>, Refused> {
            self.check_rate(limiter, || client)?;
            match self.try_slot(limiter) {
                Ok(slot) => Ok(slot),
                Err(Full) => self.wait_slot(limiter).await,
            }
        }
    }

    fn limits(rps: u32, burst: u32, conc: u32) -> Limits {
        Limits::new(LimitsSettings {
            defaults: LimitSpec {
                rps,
                burst,
                max_concurrent: conc,
            },
            queue_timeout: Duration::from_millis(50),
            max_queued: 2,
            client_rps: 0,
            client_burst: 0,
        })
    }

    #[test]
    fn overrides_replace_defaults_field_by_field() {
        let d = LimitSpec {
            rps: 100,
            burst: 200,
            max_concurrent: 10,
        };
        assert_eq!(d.with(Overrides::default()), d);
        let o = Overrides {
            rps: Some(5),
            ..Overrides::default()
        };
        assert_eq!(
            d.with(o),
            LimitSpec {
                rps: 5,
                burst: 200,
                max_concurrent: 10
            }
        );
        let o = Overrides {
            rps: Some(500),
            max_concurrent: Some(0),
            ..Overrides::default()
        };
        assert_eq!(
            d.with(o),
            LimitSpec {
                rps: 500,
                burst: 500,
                max_concurrent: 0
            }
        );
    }

    #[tokio::test]
    async fn the_bucket_allows_the_burst_then_refuses_with_retry_after() {
        let l = limits(1, 3, 0);
        let a = l.limiter("a", Overrides::default()).unwrap();
        for _ in 0..3 {
            assert!(l.admit(&a, None).await.is_ok());
        }
        assert!(matches!(
            l.admit(&a, None).await,
            Err(Refused::Rate { retry_after_secs: 1 })
        ));
        // Another tenant has its own bucket.
        let b = l.limiter("b", Overrides::default()).unwrap();
        assert!(l.admit(&b, None).await.is_ok());
    }

    #[tokio::test]
    async fn the_concurrency_cap_queues_briefly_then_refuses() {
        let l = limits(0, 1, 1);
        let a = l.limiter("a", Overrides::default()).unwrap();
        let held = l.admit(&a, None).await.unwrap();
        assert!(held.is_some());
        assert!(matches!(l.admit(&a, None).await, Err(Refused::Busy { .. })));
        // A slot freed while queued is taken.
        let waiter = {
            let l = Arc::new(l);
            let a = a.clone();
            let l2 = l.clone();
            let t = tokio::spawn(async move { l2.admit(&a, None).await.map(|p| p.is_some()) });
            tokio::task::yield_now().await;
            drop(held);
            (t, l)
        };
        assert_eq!(waiter.0.await.unwrap(), Ok(true));
    }

    #[tokio::test]
    async fn a_wait_dropped_half_way_leaves_its_place_in_the_queue() {
        let l = limits(0, 1, 1);
        let a = l.limiter("a", Overrides::default()).unwrap();
        let held = l.wait_slot(&a).await.unwrap();
        // More waits than `max_queued` (2), each dropped while it waits.
        for _ in 0..3 {
            assert!(tokio::time::timeout(Duration::ZERO, l.wait_slot(&a)).await.is_err());
        }
        assert_eq!(a.queued.load(Ordering::Acquire), 0);
        // So the next one still queues, and takes the slot when it is freed.
        let l = Arc::new(l);
        let (l2, a2) = (l.clone(), a.clone());
        let waiter = tokio::spawn(async move { l2.wait_slot(&a2).await.map(|p| p.is_some()) });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(true));
    }

    #[tokio::test]
    async fn the_registry_keeps_state_across_refreshes_and_renews_on_a_new_spec() {
        let l = limits(1, 1, 0);
        let first = l.limiter("a", Overrides::default()).unwrap();
        assert!(Arc::ptr_eq(&first, &l.limiter("a", Overrides::default()).unwrap()));
        let raised = l
            .limiter(
                "a",
                Overrides {
                    rps: Some(50),
                    ..Overrides::default()
                },
            )
            .unwrap();
        assert_eq!(raised.spec().rps, 50);
        assert!(!Arc::ptr_eq(&first, &raised));
        drop((first, raised));
        l.sweep();
        assert_eq!(l.len(), 0);
        assert!(limits(0, 1, 0).limiter("a", Overrides::default()).is_none());
    }

    #[tokio::test]
    async fn one_client_cannot_spend_its_tenants_budget() {
        let l = Limits::new(LimitsSettings {
            defaults: LimitSpec {
                rps: 1000,
                burst: 1000,
                max_concurrent: 0,
            },
            queue_timeout: Duration::from_millis(50),
            max_queued: 2,
            client_rps: 1,
            client_burst: 2,
        });
        let a = l.limiter("a", Overrides::default()).unwrap();
        let (bad, good): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(l.admit(&a, Some(bad)).await.is_ok());
        assert!(l.admit(&a, Some(bad)).await.is_ok());
        assert!(matches!(l.admit(&a, Some(bad)).await, Err(Refused::ClientRate { .. })));
        assert!(l.admit(&a, Some(good)).await.is_ok());
    }
}
