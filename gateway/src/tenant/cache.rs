//! The tenant cache in front of the lookup query.
//!
//! - Known hosts live in a bounded [`HostTable`]; an entry is fresh for
//!   `positive_ttl` and kept up to `max_stale` so it can be served while the
//!   database is unreachable (stale-if-error).
//! - Unknown hosts live in a *separate*, separately bounded cache with
//!   `negative_ttl`, so a flood of random subdomains cannot evict tenants.
//! - Concurrent misses for one name share one query (per-name `OnceCell`).
//! - `invalidate` (NOTIFY) evicts names; `clear` (listener reconnect) marks
//!   every known host stale, so the next request revalidates but a database
//!   outage can still fall back to the old answer.
//! - A query that overlapped an invalidation or a clear answers its request
//!   but is not kept: it is inserted, then removed again if the change
//!   counter moved, so a NOTIFY can never be overtaken by an older row.
//! - Times are stored as 32-bit ticks of 100 ms since start (wrapping after
//!   13 years), to keep an entry at 32 bytes plus its host name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::lookup::Lookup;
use super::table::HostTable;
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

/// A cached tenant that may not be fresh: the stale-if-error fallback.
struct Stale {
    tenant: Arc<Tenant>,
    fetched: Tick,
}

/// 100 ms since the cache was created (entries' stamps: when their query started).
type Tick = u32;
const TICK_MS: u64 = 100;

/// Ticks from `fetched` to `now` (wrapping: right for ages under 13 years).
fn age(now: Tick, fetched: Tick) -> Tick {
    now.wrapping_sub(fetched)
}

type Outcome = Result<Option<Arc<Tenant>>, ()>;

/// A cache lookup without the database.
enum Cached {
    Fresh(Arc<Tenant>),
    /// Known not to exist (a fresh negative entry).
    Unknown,
    /// Ask the database; an expired or stale entry, if any, is the
    /// stale-if-error fallback.
    Miss(Option<Stale>),
}

/// After a failed query, skip the database for this long (fail fast, no storm).
const DB_RETRY_AFTER: Duration = Duration::from_millis(250);

pub struct TenantCache {
    lookup: Lookup,
    positive: HostTable<Arc<Tenant>>,
    negative: HostTable<()>,
    inflight: Mutex<HashMap<Arc<str>, Arc<OnceCell<Outcome>>>>,
    /// Bumped by every invalidation and clear: a query that overlapped one is
    /// not kept.
    changes: AtomicU64,
    positive_ttl: Tick,
    negative_ttl: Tick,
    max_stale: Tick,
    started: Instant,
    /// Milliseconds since `started` before which the database is not retried.
    db_retry_at_ms: AtomicU64,
    metrics: Arc<Metrics>,
}

impl TenantCache {
    pub fn new(lookup: Lookup, cfg: &CacheConfig, metrics: Arc<Metrics>) -> TenantCache {
        let ticks = |secs: u64| Tick::try_from(secs.saturating_mul(1000 / TICK_MS)).unwrap_or(Tick::MAX);
        TenantCache {
            lookup,
            positive: HostTable::new(cfg.max_entries),
            negative: HostTable::new(cfg.negative_max_entries),
            inflight: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            positive_ttl: ticks(cfg.positive_ttl_secs),
            negative_ttl: ticks(cfg.negative_ttl_secs),
            max_stale: ticks(cfg.max_stale_secs),
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
                Some(p) if age(self.tick(), p.fetched) < self.max_stale => {
                    self.metrics.cache_stale_served.inc();
                    Resolution::Found(p.tenant)
                }
                _ => Resolution::Unavailable,
            },
        }
    }

    /// What the cache can answer without the database: the one definition
    /// of "fresh" (not marked stale, younger than the TTL).
    fn cached(&self, host: &str) -> Cached {
        let now = self.tick();
        match self.positive.get(host, |t| age(now, t) >= self.max_stale) {
            Some(p) if !p.stale && age(now, p.stamp) < self.positive_ttl => Cached::Fresh(p.value),
            Some(p) => Cached::Miss(Some(Stale {
                tenant: p.value,
                fetched: p.stamp,
            })),
            None => match self.negative.get(host, |t| age(now, t) >= self.negative_ttl) {
                Some(_) => Cached::Unknown,
                None => Cached::Miss(None),
            },
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn tick(&self) -> Tick {
        (self.now_ms() / TICK_MS) as Tick
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
        let fetched = self.tick();
        let changes = self.changes.load(Ordering::SeqCst);
        self.metrics.lookup_queries.inc();
        let start = Instant::now();
        let result = self.lookup.find(&key).await;
        self.metrics.lookup_seconds.observe(start.elapsed().as_secs_f64());
        let now = self.tick();
        // An invalidation or clear during the query may have been meant for
        // this name: answer the request, but do not keep a possibly stale row.
        // Insert first, then check: a change counted after the check runs its
        // eviction after this insert.
        let overlapped = || self.changes.load(Ordering::SeqCst) != changes;
        match result {
            Ok(Some(t)) => {
                let t = Arc::new(t);
                if !overlapped() {
                    self.negative.remove(&key);
                    let swept = self
                        .positive
                        .insert(&key, t.clone(), fetched, |t| age(now, t) >= self.max_stale);
                    self.metrics.cache_evictions.inc_by(swept.evicted as u64);
                    if overlapped() {
                        self.positive.remove(&key);
                    }
                }
                Ok(Some(t))
            }
            Ok(None) => {
                if !overlapped() {
                    self.positive.remove(&key);
                    self.negative
                        .insert(&key, (), fetched, |t| age(now, t) >= self.negative_ttl);
                    if overlapped() {
                        self.negative.remove(&key);
                    }
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
        self.changes.fetch_add(1, Ordering::SeqCst);
        for name in names {
            self.positive.remove(name);
            self.negative.remove(name);
            self.metrics.notify_invalidations.inc();
        }
    }

    /// Mark every entry stale (the invalidation channel was interrupted, so
    /// changes may have been missed). Stale entries still serve during an outage.
    pub fn clear(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.positive.mark_all_stale();
        self.negative.clear();
        self.metrics.cache_clears.inc();
    }

    /// Entries currently held (expired ones until found; for metrics and
    /// the benchmark).
    pub fn entry_counts(&self) -> (u64, u64) {
        (self.positive.len() as u64, self.negative.len() as u64)
    }
}
