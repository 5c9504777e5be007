//! The tenant cache in front of the lookup query.
//!
//! - Known hosts live in a bounded moka cache; an entry is fresh for
//!   `positive_ttl` and kept up to `max_stale` so it can be served while the
//!   database is unreachable (stale-if-error).
//! - Unknown hosts live in a *separate*, separately bounded cache with
//!   `negative_ttl`, so a flood of random subdomains cannot evict tenants.
//! - Concurrent misses for one name share one query (per-name `OnceCell`).
//! - `invalidate` (NOTIFY) evicts names; `clear` (listener reconnect) marks
//!   everything stale by bumping an epoch, so the next request revalidates
//!   but a database outage can still fall back to the old answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use tokio::sync::OnceCell;

use super::lookup::Lookup;
use super::Tenant;
use crate::config::CacheConfig;
use crate::metrics::Metrics;

/// The answer for one host.
#[derive(Debug, Clone)]
pub enum Resolution {
    Found(Arc<Tenant>),
    NotFound,
    /// The database cannot be asked and nothing usable is cached.
    Unavailable,
}

/// Stored inline in the cache (no extra allocation per entry): the shared
/// tenant, when it was fetched and under which epoch.
#[derive(Clone)]
struct Positive {
    tenant: Arc<Tenant>,
    fetched: Instant,
    epoch: u64,
}

type Outcome = Result<Option<Arc<Tenant>>, ()>;

/// A cache lookup without the database.
enum Cached {
    Fresh(Arc<Tenant>),
    /// Known not to exist (negative entry of the current epoch).
    Unknown,
    /// Ask the database; an expired or old-epoch entry, if any, is the
    /// stale-if-error fallback.
    Miss(Option<Positive>),
}

/// After a failed query, skip the database for this long (fail fast, no storm).
const DB_RETRY_AFTER: Duration = Duration::from_millis(250);

pub struct TenantCache {
    lookup: Lookup,
    positive: Cache<Arc<str>, Positive>,
    negative: Cache<Arc<str>, u64>,
    inflight: Mutex<HashMap<Arc<str>, Arc<OnceCell<Outcome>>>>,
    /// Bumped by `clear`: entries of older epochs are stale.
    epoch: AtomicU64,
    /// Bumped by every invalidation: a query that overlapped one is not cached.
    changes: AtomicU64,
    positive_ttl: Duration,
    max_stale: Duration,
    started: Instant,
    /// Milliseconds since `started` before which the database is not retried.
    db_retry_at_ms: AtomicU64,
    metrics: Arc<Metrics>,
}

impl TenantCache {
    pub fn new(lookup: Lookup, cfg: &CacheConfig, metrics: Arc<Metrics>) -> TenantCache {
        let evictions = metrics.cache_evictions.clone();
        let positive = Cache::builder()
            .max_capacity(cfg.max_entries)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .time_to_live(Duration::from_secs(cfg.max_stale_secs))
            .build();
        let negative = Cache::builder()
            .max_capacity(cfg.negative_max_entries)
            .time_to_live(Duration::from_secs(cfg.negative_ttl_secs))
            .build();
        TenantCache {
            lookup,
            positive,
            negative,
            inflight: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            positive_ttl: Duration::from_secs(cfg.positive_ttl_secs),
            max_stale: Duration::from_secs(cfg.max_stale_secs),
            started: Instant::now(),
            db_retry_at_ms: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn lookup(&self) -> &Lookup {
        &self.lookup
    }

    /// Resolve a normalised host name.
    pub async fn resolve(&self, host: &str) -> Resolution {
        let stale = match self.cached(host) {
            Cached::Fresh(t) => {
                self.metrics.cache_hits.inc();
                return Resolution::Found(t);
            }
            Cached::Unknown => {
                self.metrics.cache_negative_hits.inc();
                return Resolution::NotFound;
            }
            Cached::Miss(stale) => stale,
        };
        self.metrics.cache_misses.inc();
        match self.fetch(host).await {
            Ok(Some(t)) => Resolution::Found(t),
            Ok(None) => Resolution::NotFound,
            Err(()) => match stale {
                Some(p) if p.fetched.elapsed() < self.max_stale => {
                    self.metrics.cache_stale_served.inc();
                    Resolution::Found(p.tenant)
                }
                _ => Resolution::Unavailable,
            },
        }
    }

    /// What the cache can answer without the database: the one definition
    /// of "fresh" (current epoch, younger than the positive TTL).
    fn cached(&self, host: &str) -> Cached {
        let epoch = self.epoch.load(Ordering::Acquire);
        match self.positive.get(host) {
            Some(p) if p.epoch == epoch && p.fetched.elapsed() < self.positive_ttl => Cached::Fresh(p.tenant),
            Some(p) => Cached::Miss(Some(p)),
            None if self.negative.get(host) == Some(epoch) => Cached::Unknown,
            None => Cached::Miss(None),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One query per name at a time; everybody waiting shares its outcome.
    async fn fetch(&self, host: &str) -> Outcome {
        let key: Arc<str> = Arc::from(host);
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.entry(key.clone()).or_default().clone()
        };
        let outcome = cell.get_or_init(|| self.query(key.clone())).await.clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        outcome
    }

    async fn query(&self, key: Arc<str>) -> Outcome {
        // Answered meanwhile by a query that finished while we queued.
        match self.cached(&key) {
            Cached::Fresh(t) => return Ok(Some(t)),
            Cached::Unknown => return Ok(None),
            Cached::Miss(_) => {}
        }
        if self.now_ms() < self.db_retry_at_ms.load(Ordering::Relaxed) {
            return Err(());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let changes = self.changes.load(Ordering::Acquire);
        self.metrics.lookup_queries.inc();
        let start = Instant::now();
        let result = self.lookup.find(&key).await;
        self.metrics.lookup_seconds.observe(start.elapsed().as_secs_f64());
        // An invalidation during the query may have been meant for this name:
        // answer the request, but do not cache a possibly stale row.
        let cacheable = self.changes.load(Ordering::Acquire) == changes;
        match result {
            Ok(Some(t)) => {
                let t = Arc::new(t);
                if cacheable {
                    self.negative.invalidate(&key);
                    self.positive.insert(
                        key,
                        Positive {
                            tenant: t.clone(),
                            fetched: Instant::now(),
                            epoch,
                        },
                    );
                }
                Ok(Some(t))
            }
            Ok(None) => {
                if cacheable {
                    self.positive.invalidate(&key);
                    self.negative.insert(key, epoch);
                }
                Ok(None)
            }
            Err(e) => {
                self.metrics.lookup_errors.inc();
                self.db_retry_at_ms
                    .store(self.now_ms() + DB_RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
                tracing::warn!(host = %key, error = %e, "tenant lookup failed");
                Err(())
            }
        }
    }

    /// Evict these names (NOTIFY from the database).
    pub fn invalidate<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        for name in names {
            self.positive.invalidate(name);
            self.negative.invalidate(name);
            self.metrics.notify_invalidations.inc();
        }
    }

    /// Mark every entry stale (the invalidation channel was interrupted, so
    /// changes may have been missed). Stale entries still serve during an outage.
    pub fn clear(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.negative.invalidate_all();
        self.metrics.cache_clears.inc();
    }

    /// Entries currently held (approximate; for metrics and the benchmark).
    pub fn entry_counts(&self) -> (u64, u64) {
        (self.positive.entry_count(), self.negative.entry_count())
    }
}
