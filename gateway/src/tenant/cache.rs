//! The tenant cache in front of the lookup query.
//!
//! - Known hosts live in a bounded [`HostTable`]; an entry is fresh for
//!   `positive_ttl`. Past it, and up to `max_stale`, it is still served at
//!   once while one background query refreshes it (stale-while-revalidate):
//!   a cached tenant never waits for the database.
//! - Entries marked stale by `clear` (the invalidation channel was
//!   interrupted, so a change may have been missed) are revalidated before
//!   use while the database is known to answer; while it is not, they are
//!   served and refreshed in the background like expired ones.
//! - Unknown hosts, and hosts whose row the gateway refuses (a bad schema
//!   name or status: that host's problem only, never a database outage),
//!   live in a *separate*, separately bounded cache with `negative_ttl`, so
//!   a flood of random subdomains cannot evict tenants.
//! - Every query has a client-side deadline; a failure or timeout opens a
//!   short fail-fast window in which uncached hosts get 503 at once.
//! - Concurrent misses for one name share one query (per-name `OnceCell`);
//!   the entry goes when the query is answered or its last waiter leaves.
//! - `invalidate` (NOTIFY) evicts names. A query that overlapped an
//!   invalidation or a clear answers its request but is not kept: it is
//!   inserted, then removed again if the change counter moved, so a NOTIFY
//!   can never be overtaken by an older row.
//! - A connection keeps the fresh answer for the host it kept
//!   ([`TenantMemo`]); its later requests for that host use it while the
//!   change counter has not moved and the entry it came from is fresh: no
//!   hash, no shard lock, no shared line written.
//! - Times are stored as 32-bit ticks of 100 ms since start (wrapping after
//!   13 years), to keep an entry at 32 bytes plus its host name.
//! - A tenant's domains share one record when the lookups built equal ones
//!   (`tenant::records`).
//!
//! The rules are tested against a fake `TenantSource` (coalescing,
//! deadlines, stale-while-revalidate, bad rows, cancellation, connections'
//! memos).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::lookup::LookupError;
use super::records::Records;
use super::table::HostTable;
use super::Tenant;
use crate::config::CacheConfig;
use crate::metrics::Metrics;

/// Where tenants come from (the lookup query; a fake in tests).
#[async_trait]
pub trait TenantSource: Send + Sync + 'static {
    /// `Ok(None)`: the host is not in the domain table. `fresh_as_of`: the
    /// answer must include every change up to this WAL position of the
    /// primary (the newest NOTIFY's; 0: none), so a lagging read replica's
    /// older row is never the answer.
    async fn find(&self, host: &str, fresh_as_of: u64) -> Result<Option<Tenant>, LookupError>;
}

/// The answer for one host.
#[derive(Debug, Clone)]
pub enum Resolution {
    Found(Arc<Tenant>),
    NotFound,
    /// The database cannot be asked and nothing usable is cached.
    Unavailable,
    /// The database holds a row for this host that the gateway refuses.
    Misconfigured,
}

/// What the negative table remembers about a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negative {
    Unknown,
    BadRow,
}

/// 100 ms since the cache was created (entries' stamps: when their query started).
type Tick = u32;
const TICK_MS: u64 = 100;

/// Ticks from `fetched` to `now` (wrapping: right for ages under 6 years).
/// A `now` read before `fetched` (a request's start, passed in after its
/// Host lookup waited while another query stored the entry) is age 0, not
/// a wrapped age past every bound that would drop a fresh entry.
fn age(now: Tick, fetched: Tick) -> Tick {
    match now.wrapping_sub(fetched) {
        d if d > Tick::MAX / 2 => 0,
        d => d,
    }
}

/// What one query found (shared by everybody who waited for it).
#[derive(Debug, Clone)]
enum Answer {
    Tenant(Arc<Tenant>),
    Unknown,
    BadRow,
}

type Outcome = Result<Answer, ()>;

/// A cache lookup without the database.
enum Cached {
    /// With the entry's stamp (for a connection's [`TenantMemo`]).
    Fresh(Arc<Tenant>, Tick),
    Negative(Negative),
    /// Usable but due: past `positive_ttl`, or marked stale (`marked`).
    Due {
        tenant: Arc<Tenant>,
        marked: bool,
    },
    Miss,
}

/// A connection's copy of the fresh answer for the host it kept
/// (`tenant::host::HostMemo`), so its later requests for that host skip the
/// table: SipHash of the name, the shard's lock (a line every worker serving
/// that host writes) and the entry (~350 instructions per request,
/// bench/RESULTS.md, seventh round).
///
/// It is taken from a fresh entry, together with the change counter read
/// before that entry was, and answers only while the counter has not moved
/// and the entry it came from would still be fresh. Every invalidation,
/// clear and purge moves the counter before and after it removes names, and
/// so does the removal of an entry a query had to take back: no NOTIFY and
/// no lost invalidation channel leaves a memo answering. Its answers are
/// thus never older than the table's own: a change without a NOTIFY is seen
/// within `positive_ttl` of the query the answer came from. (A table entry
/// evicted for room while a memo serves is asked for again by the next
/// connection; the memo's reads do not mark it as read for the sweep.)
#[derive(Debug, Default)]
pub struct TenantMemo(Mutex<Option<Memo>>);

#[derive(Debug)]
struct Memo {
    name: Box<str>,
    tenant: Arc<Tenant>,
    /// The table entry's stamp: when its query started.
    stamp: Tick,
    /// `TenantCache::changes`, read before the entry was.
    changes: u64,
}

impl TenantMemo {
    /// The tenant kept for `name`, if the counter still reads `changes` and
    /// `fresh` says the entry's stamp is.
    fn get(&self, name: &str, changes: u64, fresh: impl FnOnce(Tick) -> bool) -> Option<Arc<Tenant>> {
        let memo = self.0.lock();
        let m = memo.as_ref()?;
        (m.changes == changes && *m.name == *name && fresh(m.stamp)).then(|| m.tenant.clone())
    }

    /// Keep a fresh answer (the first name the connection asks for, and
    /// that name again once its memo ran out).
    fn keep(&self, name: &str, tenant: &Arc<Tenant>, stamp: Tick, changes: u64) {
        let mut memo = self.0.lock();
        match memo.as_mut() {
            Some(m) if *m.name == *name => {
                m.tenant = tenant.clone();
                m.stamp = stamp;
                m.changes = changes;
            }
            Some(_) => {}
            None => {
                *memo = Some(Memo {
                    name: name.into(),
                    tenant: tenant.clone(),
                    stamp,
                    changes,
                })
            }
        }
    }
}

/// After a failed query, skip the database for this long (fail fast, no storm).
const DB_RETRY_AFTER: Duration = Duration::from_millis(250);

pub struct TenantCache {
    source: Arc<dyn TenantSource>,
    positive: HostTable<Arc<Tenant>>,
    negative: HostTable<Negative>,
    inflight: Mutex<HashMap<Arc<str>, Arc<OnceCell<Outcome>>>>,
    /// Bumped by every invalidation and clear: a query that overlapped one is
    /// not kept.
    changes: AtomicU64,
    positive_ttl: Tick,
    negative_ttl: Tick,
    max_stale: Tick,
    deadline: Duration,
    started: Instant,
    /// Milliseconds since `started` before which the database is not retried.
    db_retry_at_ms: AtomicU64,
    /// The invalidation listener is connected and its health query answers.
    listener_up: AtomicBool,
    /// The primary's WAL position at the newest NOTIFY (see `TenantSource::find`).
    fresh_as_of: AtomicU64,
    /// One record per tenant for the domains its lookups return.
    records: Records,
    metrics: Arc<Metrics>,
}

impl TenantCache {
    /// `deadline` bounds each query (database.lookup_deadline_ms).
    pub fn new(
        source: Arc<dyn TenantSource>,
        cfg: &CacheConfig,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> TenantCache {
        let ticks = |d: Duration| Tick::try_from(d.as_millis() / u128::from(TICK_MS)).unwrap_or(Tick::MAX);
        TenantCache {
            source,
            positive: HostTable::new(cfg.max_entries),
            negative: HostTable::new(cfg.negative_max_entries),
            inflight: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            positive_ttl: ticks(cfg.positive_ttl),
            negative_ttl: ticks(cfg.negative_ttl),
            max_stale: ticks(cfg.max_stale),
            deadline,
            started: Instant::now(),
            db_retry_at_ms: AtomicU64::new(0),
            listener_up: AtomicBool::new(false),
            fresh_as_of: AtomicU64::new(0),
            records: Records::default(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Resolve a normalised host name.
    pub async fn resolve(self: &Arc<Self>, host: &str) -> Resolution {
        self.resolve_at(host, Instant::now()).await
    }

    /// [`Self::resolve`] with a clock reading the caller already has (the
    /// request's start, microseconds old): a cache hit reads no clock.
    pub async fn resolve_at(self: &Arc<Self>, host: &str, now: Instant) -> Resolution {
        self.resolve_kept(host, now, None).await
    }

    /// [`Self::resolve_at`] for the host a connection kept, with the
    /// connection's memo of its answer (see [`TenantMemo`]).
    pub async fn resolve_kept(self: &Arc<Self>, host: &str, now: Instant, memo: Option<&TenantMemo>) -> Resolution {
        match self.resolve_cached(host, now, memo) {
            Ok(answer) => answer,
            // Boxed, so the query's future is not part of every caller's:
            // the request filter's future is allocated per request, and
            // its size is that of the largest thing it awaits (1,648 bytes
            // with the query inline, past the allocator's small sizes).
            Err(due) => Box::pin(self.resolve_from_database(host, due)).await,
        }
    }

    /// What the cache answers without the database; `Err`: the database is
    /// to be asked, with the due entry to fall back on if it fails.
    fn resolve_cached(
        self: &Arc<Self>,
        host: &str,
        now: Instant,
        memo: Option<&TenantMemo>,
    ) -> Result<Resolution, Option<Arc<Tenant>>> {
        let tick = self.tick_at(now);
        // Read before the memo or the entry: a change from here on moves it.
        let changes = self.changes.load(Ordering::SeqCst);
        if let Some(t) = memo.and_then(|m| m.get(host, changes, |stamp| age(tick, stamp) < self.positive_ttl)) {
            self.metrics.cache_hits.inc();
            return Ok(Resolution::Found(t));
        }
        match self.cached_at(host, tick) {
            Cached::Fresh(t, stamp) => {
                self.metrics.cache_hits.inc();
                if let Some(m) = memo {
                    m.keep(host, &t, stamp, changes);
                }
                Ok(Resolution::Found(t))
            }
            Cached::Negative(n) => {
                self.metrics.cache_negative_hits.inc();
                Ok(match n {
                    Negative::Unknown => Resolution::NotFound,
                    Negative::BadRow => Resolution::Misconfigured,
                })
            }
            Cached::Due { tenant, marked } if marked && self.database_answers() => {
                // A change may have been missed and the database can say: ask,
                // falling back to the old answer if it fails after all.
                self.metrics.cache_misses.inc();
                Err(Some(tenant))
            }
            Cached::Due { tenant, marked } => {
                self.metrics.cache_hits.inc();
                if marked {
                    self.metrics.cache_stale_served.inc();
                }
                self.refresh_in_background(host);
                Ok(Resolution::Found(tenant))
            }
            Cached::Miss => {
                self.metrics.cache_misses.inc();
                Err(None)
            }
        }
    }

    /// The database's answer for a host the cache could not answer for;
    /// if it fails, `due` (served stale) or [`Resolution::Unavailable`].
    async fn resolve_from_database(&self, host: &str, due: Option<Arc<Tenant>>) -> Resolution {
        match self.fetch(host).await {
            Ok(answer) => answer.into(),
            Err(()) => match due {
                Some(tenant) => {
                    self.metrics.cache_stale_served.inc();
                    Resolution::Found(tenant)
                }
                None => Resolution::Unavailable,
            },
        }
    }

    /// The database is believed to answer: the listener's health query
    /// passes and no query failed in the last fail-fast window.
    fn database_answers(&self) -> bool {
        self.listener_up.load(Ordering::Acquire) && self.now_ms() >= self.db_retry_at_ms.load(Ordering::Relaxed)
    }

    /// Set by the invalidation listener.
    pub fn set_listener_up(&self, up: bool) {
        self.listener_up.store(up, Ordering::Release);
    }

    /// One background query for `host`, unless one is running or the
    /// database is in its fail-fast window.
    fn refresh_in_background(self: &Arc<Self>, host: &str) {
        if self.now_ms() < self.db_retry_at_ms.load(Ordering::Relaxed) || self.inflight.lock().contains_key(host) {
            return;
        }
        self.metrics.cache_refreshes.inc();
        let (me, host) = (self.clone(), host.to_owned());
        tokio::spawn(async move {
            let _ = me.fetch(&host).await;
        });
    }

    /// What the cache can answer without the database: the one definition
    /// of "fresh" (not marked stale, younger than the TTL).
    fn cached(&self, host: &str) -> Cached {
        self.cached_at(host, self.tick())
    }

    fn cached_at(&self, host: &str, now: Tick) -> Cached {
        match self.positive.get(host, |t| age(now, t) >= self.max_stale) {
            Some(p) if !p.stale && age(now, p.stamp) < self.positive_ttl => Cached::Fresh(p.value, p.stamp),
            Some(p) => Cached::Due {
                tenant: p.value,
                marked: p.stale,
            },
            None => match self.negative.get(host, |t| age(now, t) >= self.negative_ttl) {
                Some(n) => Cached::Negative(n.value),
                None => Cached::Miss,
            },
        }
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Milliseconds from `started` to `now`.
    fn ms_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    fn tick(&self) -> Tick {
        self.tick_at(Instant::now())
    }

    fn tick_at(&self, now: Instant) -> Tick {
        (self.ms_at(now) / TICK_MS) as Tick
    }

    /// One query per name at a time; everybody waiting shares its outcome.
    async fn fetch(&self, host: &str) -> Outcome {
        let key: Arc<str> = Arc::from(host);
        let cell = {
            let mut inflight = self.inflight.lock();
            inflight.entry(key.clone()).or_default().clone()
        };
        // Removes the entry when answered, or when the last waiter is
        // cancelled (a client that went away), whichever comes first.
        let _leave = Leave {
            inflight: &self.inflight,
            key: &key,
            cell: &cell,
        };
        cell.get_or_init(|| self.query(key.clone())).await.clone()
    }

    async fn query(&self, key: Arc<str>) -> Outcome {
        // Answered meanwhile by a query that finished while we queued.
        match self.cached(&key) {
            Cached::Fresh(t, _) => return Ok(Answer::Tenant(t)),
            Cached::Negative(Negative::Unknown) => return Ok(Answer::Unknown),
            Cached::Negative(Negative::BadRow) => return Ok(Answer::BadRow),
            Cached::Due { .. } | Cached::Miss => {}
        }
        if self.now_ms() < self.db_retry_at_ms.load(Ordering::Relaxed) {
            return Err(());
        }
        let fetched = self.tick();
        let changes = self.changes.load(Ordering::SeqCst);
        self.metrics.lookup_queries.inc();
        let start = Instant::now();
        let fresh_as_of = self.fresh_as_of.load(Ordering::SeqCst);
        let result = match tokio::time::timeout(self.deadline, self.source.find(&key, fresh_as_of)).await {
            Ok(r) => r,
            Err(_) => {
                self.metrics.lookup_timeouts.inc();
                Err(LookupError::Deadline(self.deadline))
            }
        };
        self.metrics.lookup_seconds.observe(start.elapsed().as_secs_f64());
        let now = self.tick();
        // An invalidation or clear during the query may have been meant for
        // this name: answer the request, but do not keep a possibly stale row.
        // Insert first, then check: a change counted after the check runs its
        // eviction after this insert.
        let overlapped = || self.changes.load(Ordering::SeqCst) != changes;
        let negative = |n: Negative| {
            if !overlapped() {
                self.forget(&key);
                self.negative
                    .insert(&key, n, fetched, |t| age(now, t) >= self.negative_ttl);
                if overlapped() {
                    self.negative.remove(&key);
                }
            }
        };
        match result {
            Ok(Some(t)) => {
                let t = self.records.share(t);
                if !overlapped() {
                    self.negative.remove(&key);
                    let swept = self
                        .positive
                        .insert(&key, t.clone(), fetched, |t| age(now, t) >= self.max_stale);
                    self.metrics.cache_evictions.inc_by(swept.evicted as u64);
                    if overlapped() {
                        self.forget(&key);
                    }
                }
                Ok(Answer::Tenant(t))
            }
            Ok(None) => {
                negative(Negative::Unknown);
                Ok(Answer::Unknown)
            }
            Err(e @ LookupError::BadRow { .. }) => {
                // That host's problem only: no fail-fast window for the others.
                self.metrics.bad_rows.inc();
                tracing::warn!(host = %key, error = %e, "tenant lookup: refusing the row for this host");
                negative(Negative::BadRow);
                Ok(Answer::BadRow)
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

    /// Answers from now on must be as fresh as the primary's WAL position
    /// `lsn` (read right after a NOTIFY, before its names are evicted).
    pub fn require_fresh_as_of(&self, lsn: u64) {
        self.fresh_as_of.fetch_max(lsn, Ordering::SeqCst);
    }

    /// Evict these names (NOTIFY from the database).
    pub fn invalidate<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        self.changing(|| {
            for name in names {
                self.positive.remove(name);
                self.negative.remove(name);
                self.metrics.notify_invalidations.inc();
            }
        });
    }

    /// Remove a tenant entry outside an invalidation; a connection's memo
    /// taken from it meanwhile ends with it.
    fn forget(&self, key: &str) {
        if self.positive.remove(key) {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Moves the change counter before `change` (a query that overlaps it
    /// is not kept) and after it: a connection's memo taken from an entry
    /// read between the first move and the removal carries the counter
    /// after the first move, so the second one ends it.
    fn changing(&self, change: impl FnOnce()) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        change();
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Mark every entry stale (the invalidation channel was interrupted, so
    /// changes may have been missed). Stale entries still serve during an outage.
    pub fn clear(&self) {
        self.changing(|| {
            self.positive.mark_all_stale();
            self.negative.clear();
        });
        self.metrics.cache_clears.inc();
    }

    /// What the cache holds for `host`, without asking the database (the
    /// operator API's `explain`): a state name and the entry's age.
    pub fn peek(&self, host: &str) -> (&'static str, Option<u64>) {
        let now = self.tick();
        let secs = |stamp: Tick| Some(u64::from(age(now, stamp)) * TICK_MS / 1000);
        match self.positive.get(host, |t| age(now, t) >= self.max_stale) {
            Some(p) if p.stale => ("stale", secs(p.stamp)),
            Some(p) if age(now, p.stamp) < self.positive_ttl => ("fresh", secs(p.stamp)),
            Some(p) => ("due", secs(p.stamp)),
            None => match self.negative.get(host, |t| age(now, t) >= self.negative_ttl) {
                Some(n) if n.value == Negative::BadRow => ("misconfigured", secs(n.stamp)),
                Some(n) => ("unknown", secs(n.stamp)),
                None => ("absent", None),
            },
        }
    }

    /// Forget `host` (operator purge): its next request asks the database.
    pub fn purge(&self, host: &str) {
        self.invalidate([host]);
    }

    /// Forget everything (operator purge): every next request asks the database.
    pub fn purge_all(&self) {
        self.changing(|| {
            self.positive.clear();
            self.negative.clear();
        });
        self.metrics.cache_clears.inc();
    }

    /// Entries currently held (expired ones until found; for metrics and
    /// the benchmark).
    pub fn entry_counts(&self) -> (u64, u64) {
        (self.positive.len() as u64, self.negative.len() as u64)
    }

    /// Names with a query in flight (for tests).
    #[cfg(test)]
    fn inflight_len(&self) -> usize {
        self.inflight.lock().len()
    }
}

impl From<Answer> for Resolution {
    fn from(a: Answer) -> Resolution {
        match a {
            Answer::Tenant(t) => Resolution::Found(t),
            Answer::Unknown => Resolution::NotFound,
            Answer::BadRow => Resolution::Misconfigured,
        }
    }
}

/// Leaves the in-flight map when a waiter is done or dropped.
struct Leave<'a> {
    inflight: &'a Mutex<HashMap<Arc<str>, Arc<OnceCell<Outcome>>>>,
    key: &'a Arc<str>,
    cell: &'a Arc<OnceCell<Outcome>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock();
        let ours = inflight.get(self.key).is_some_and(|c| Arc::ptr_eq(c, self.cell));
        // Answered, or nobody but the map and this waiter holds the cell.
        if ours && (self.cell.initialized() || Arc::strong_count(self.cell) <= 2) {
            inflight.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::tenant::Status;

    #[test]
    fn an_age_read_before_the_entry_was_stamped_is_zero() {
        assert_eq!(age(7, 5), 2);
        assert_eq!(age(5, 7), 0, "a clock reading older than the stamp");
        assert_eq!(age(3, Tick::MAX - 1), 5, "across the wrap");
    }

    /// A domain table in memory whose answers can be held back.
    #[derive(Default)]
    struct Fake {
        rows: Mutex<HashMap<String, Result<Option<&'static str>, &'static str>>>,
        queries: AtomicUsize,
        /// While set, queries wait for `release` (a frozen database).
        frozen: AtomicBool,
        release: tokio::sync::Notify,
    }

    impl Fake {
        fn set(&self, host: &str, row: Result<Option<&'static str>, &'static str>) {
            self.rows.lock().insert(host.into(), row);
        }
    }

    #[async_trait]
    impl TenantSource for Fake {
        async fn find(&self, host: &str, _fresh_as_of: u64) -> Result<Option<Tenant>, LookupError> {
            // The row is read first: a frozen query answers what it read.
            let row = self.rows.lock().get(host).cloned().unwrap_or(Ok(None));
            self.queries.fetch_add(1, Ordering::SeqCst);
            if self.frozen.load(Ordering::SeqCst) {
                self.release.notified().await;
            }
            match row {
                Ok(Some(schema)) => Ok(Tenant::new(schema, Status::Active, None)),
                Ok(None) => Ok(None),
                Err("bad") => Err(LookupError::BadRow {
                    host: host.into(),
                    reason: "schema `public` is reserved".into(),
                }),
                Err(_) => Err(LookupError::Task("database down".into())),
            }
        }
    }

    fn cache(fake: &Arc<Fake>, ttl: u64) -> Arc<TenantCache> {
        let cfg = CacheConfig {
            positive_ttl: Duration::from_secs(ttl),
            ..CacheConfig::default()
        };
        let c = TenantCache::new(
            fake.clone(),
            &cfg,
            Duration::from_millis(200),
            Arc::new(Metrics::new(10)),
        );
        c.set_listener_up(true);
        Arc::new(c)
    }

    fn schema(r: &Resolution) -> Option<&str> {
        match r {
            Resolution::Found(t) => Some(t.schema()),
            _ => None,
        }
    }

    /// Make every cached entry older than its TTL.
    fn age_entries(c: &TenantCache, ticks: Tick) {
        for shard_key in ["a.test", "b.test", "new.test"] {
            if let Some(f) = c.positive.get(shard_key, |_| false) {
                c.positive
                    .insert(shard_key, f.value, c.tick().wrapping_sub(ticks), |_| false);
            }
        }
    }

    #[tokio::test]
    async fn a_frozen_database_answers_uncached_hosts_503_within_the_deadline() {
        let fake = Arc::new(Fake::default());
        let c = cache(&fake, 60);
        fake.frozen.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.resolve("new.test").await })
            })
            .collect();
        for w in waiters {
            assert!(matches!(w.await.unwrap(), Resolution::Unavailable));
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        // Coalesced: one query for five waiters; then fail fast, no query.
        assert_eq!(fake.queries.load(Ordering::SeqCst), 1);
        assert!(matches!(c.resolve("other.test").await, Resolution::Unavailable));
        assert_eq!(fake.queries.load(Ordering::SeqCst), 1);
        assert_eq!(c.inflight_len(), 0);
    }

    #[tokio::test]
    async fn a_tenants_domains_share_its_record_and_no_other_tenants() {
        let fake = Arc::new(Fake::default());
        let c = cache(&fake, 60);
        fake.set("a.test", Ok(Some("ferrari")));
        fake.set("www.a.test", Ok(Some("ferrari")));
        fake.set("b.test", Ok(Some("mclaren")));
        let found = |r: Resolution| match r {
            Resolution::Found(t) => t,
            other => panic!("{other:?}"),
        };
        let a = found(c.resolve("a.test").await);
        let www = found(c.resolve("www.a.test").await);
        let b = found(c.resolve("b.test").await);
        assert!(Arc::ptr_eq(&a, &www), "one record for one tenant");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!((www.schema(), b.schema()), ("ferrari", "mclaren"));
        // A domain moved to another tenant gets that tenant's record.
        fake.set("www.a.test", Ok(Some("mclaren")));
        c.invalidate(["www.a.test"]);
        let moved = found(c.resolve("www.a.test").await);
        assert!(Arc::ptr_eq(&moved, &b) && moved.schema() == "mclaren");
        assert_eq!(found(c.resolve("a.test").await).schema(), "ferrari");
    }

    #[test]
    fn a_lookup_future_is_small_whatever_a_query_holds() {
        // The request filter awaits a lookup on every request, and its own
        // future, allocated per request, is as large as what it awaits: the
        // query's future (hundreds of bytes) stays behind a box.
        let fake = Arc::new(Fake::default());
        let c = cache(&fake, 60);
        let lookup = c.resolve_kept("a.test", Instant::now(), None);
        let size = std::mem::size_of_val(&lookup);
        assert!(size <= 160, "{size} bytes");
    }

    #[tokio::test]
    async fn a_hit_is_judged_at_the_clock_reading_given() {
        let fake = Arc::new(Fake::default());
        fake.set("a.test", Ok(Some("alpha")));
        let c = cache(&fake, 60);
        assert_eq!(schema(&c.resolve("a.test").await), Some("alpha"));
        let now = Instant::now();
        assert_eq!(schema(&c.resolve_at("a.test", now).await), Some("alpha"));
        assert_eq!(fake.queries.load(Ordering::SeqCst), 1, "fresh: served from memory");
        // Read past the TTL: due, so served and refreshed in the background.
        let later = now + Duration::from_secs(61);
        assert_eq!(schema(&c.resolve_at("a.test", later).await), Some("alpha"));
        assert!(matches!(c.cached_at("a.test", c.tick_at(later)), Cached::Due { .. }));
        assert!(matches!(c.cached_at("a.test", c.tick_at(now)), Cached::Fresh(..)));
    }

    #[tokio::test]
    async fn unknown_hosts_are_remembered_apart_until_invalidated() {
        let fake = Arc::new(Fake::default());
        fake.set("a.test", Ok(Some("alpha")));
        let c = cache(&fake, 60);
        for _ in 0..3 {
            assert!(matches!(c.resolve("unknown.test").await, Resolution::NotFound));
        }
        assert_eq!(fake.queries.load(Ordering::SeqCst), 1, "negative entry reused");
        assert_eq!(c.positive.len(), 0, "unknown hosts never take a tenant's slot");
        assert_eq!(schema(&c.resolve("a.test").await), Some("alpha"));
        // The row appears; its NOTIFY evicts the negative entry.
        fake.set("unknown.test", Ok(Some("beta")));
        c.invalidate(["unknown.test"]);
        assert_eq!(schema(&c.resolve("unknown.test").await), Some("beta"));
        assert_eq!(fake.queries.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn expired_entries_are_served_at_once_and_refreshed_in_the_background() {
        let fake = Arc::new(Fake::default());
        fake.set("a.test", Ok(Some("alpha")));
        let c = cache(&fake, 1);
        assert_eq!(schema(&c.resolve("a.test").await), Some("alpha"));
        age_entries(&c, 20);
        fake.frozen.store(true, Ordering::SeqCst);
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(schema(&c.resolve("a.test").await), Some("alpha"));
        }
        assert!(start.elapsed() < Duration::from_millis(100), "{:?}", start.elapsed());
        // One background refresh at a time: it starts (polled for, bounded),
        // and the ten reads made only that one.
        let started = async {
            while fake.queries.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), started).await.unwrap();
        assert_eq!(fake.queries.load(Ordering::SeqCst), 2);
        // The database answers again with a new tenant for the host.
        fake.frozen.store(false, Ordering::SeqCst);
        fake.set("a.test", Ok(Some("beta")));
        let refreshed = async {
            loop {
                if schema(&c.resolve("a.test").await) == Some("beta") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refreshed).await.unwrap();
    }

    #[tokio::test]
    async fn marked_entries_revalidate_while_the_database_answers_and_not_otherwise() {
        let fake = Arc::new(Fake::default());
        fake.set("a.test", Ok(Some("alpha")));
        let c = cache(&fake, 60);
        c.resolve("a.test").await;
        fake.set("a.test", Ok(Some("beta")));
        c.clear();
        // Listener up: the missed change is picked up before use.
        assert_eq!(schema(&c.resolve("a.test").await), Some("beta"));
        c.clear();
        c.set_listener_up(false);
        fake.frozen.store(true, Ordering::SeqCst);
        let start = Instant::now();
        assert_eq!(schema(&c.resolve("a.test").await), Some("beta"));
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_bad_row_is_that_hosts_problem_only() {
        let fake = Arc::new(Fake::default());
        fake.set("public.test", Err("bad"));
        fake.set("b.test", Ok(Some("beta")));
        let c = cache(&fake, 60);
        assert!(matches!(c.resolve("public.test").await, Resolution::Misconfigured));
        // No fail-fast window: another new host is looked up and found.
        assert_eq!(schema(&c.resolve("b.test").await), Some("beta"));
        // Negatively cached: no second query for the bad host.
        let before = fake.queries.load(Ordering::SeqCst);
        assert!(matches!(c.resolve("public.test").await, Resolution::Misconfigured));
        assert_eq!(fake.queries.load(Ordering::SeqCst), before);
        // A NOTIFY for the fixed row takes effect.
        fake.set("public.test", Ok(Some("public_site")));
        c.invalidate(["public.test"]);
        assert_eq!(schema(&c.resolve("public.test").await), Some("public_site"));
    }

    #[tokio::test]
    async fn database_errors_open_the_fail_fast_window_and_stale_entries_survive_it() {
        let fake = Arc::new(Fake::default());
        fake.set("a.test", Ok(Some("alpha")));
        let c = cache(&fake, 60);
        c.resolve("a.test").await;
        fake.set("new.test", Err("down"));
        assert!(matches!(c.resolve("new.test").await, Resolution::Unavailable));
        c.clear();
        // Listener up but inside the fail-fast window: served, not asked.
        let before = fake.queries.load(Ordering::SeqCst);
        assert_eq!(schema(&c.resolve("a.test").await), Some("alpha"));
        assert_eq!(fake.queries.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn cancelled_waiters_leave_no_entry_behind() {
        let fake = Arc::new(Fake::default());
        fake.frozen.store(true, Ordering::SeqCst);
        let c = cache(&fake, 60);
        let waiting = {
            let c = c.clone();
            tokio::spawn(async move { c.resolve("gone.test").await })
        };
        while c.inflight_len() == 0 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(c.inflight_len(), 0);
    }

    #[tokio::test]
    async fn an_invalidation_during_a_query_is_not_overtaken() {
        let fake = Arc::new(Fake::default());
        fake.set("a.test", Ok(Some("alpha")));
        let c = cache(&fake, 60);
        fake.frozen.store(true, Ordering::SeqCst);
        let q = {
            let c = c.clone();
            tokio::spawn(async move { c.resolve("a.test").await })
        };
        while fake.queries.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The row changes and its NOTIFY arrives while the query is out.
        fake.set("a.test", Ok(Some("beta")));
        c.invalidate(["a.test"]);
        fake.release.notify_one();
        // The request gets what its query read, but it is not kept.
        assert_eq!(schema(&q.await.unwrap()), Some("alpha"));
        assert!(matches!(c.cached("a.test"), Cached::Miss));
        fake.frozen.store(false, Ordering::SeqCst);
        assert_eq!(schema(&c.resolve("a.test").await), Some("beta"));
    }

    /// What a connection's memo holds for `name` now (at `now`).
    fn memo_answer(c: &TenantCache, memo: &TenantMemo, name: &str, now: Instant) -> Option<String> {
        let tick = c.tick_at(now);
        memo.get(name, c.changes.load(Ordering::SeqCst), |s| {
            age(tick, s) < c.positive_ttl
        })
        .map(|t| t.schema().to_owned())
    }

    /// Two requests of the connection for `name` (the first may ask the
    /// table or the database, the second keeps a fresh answer): both answers.
    async fn ask_twice(c: &Arc<TenantCache>, memo: &TenantMemo, name: &str, now: Instant) -> Option<String> {
        let first = schema(&c.resolve_kept(name, now, Some(memo)).await).map(str::to_owned);
        let second = schema(&c.resolve_kept(name, now, Some(memo)).await).map(str::to_owned);
        assert_eq!(first, second, "{name}");
        second
    }

    #[tokio::test]
    async fn a_connections_memo_answers_its_host_until_anything_changes() {
        let fake = Arc::new(Fake::default());
        fake.set("a.test", Ok(Some("alpha")));
        fake.set("b.test", Ok(Some("bravo")));
        let c = cache(&fake, 60);
        let memo = TenantMemo::default();
        let now = Instant::now();
        // A miss is not kept (the query's answer comes next time, from the table).
        assert_eq!(schema(&c.resolve_kept("a.test", now, Some(&memo)).await), Some("alpha"));
        assert_eq!(memo_answer(&c, &memo, "a.test", now), None);
        assert_eq!(schema(&c.resolve_kept("a.test", now, Some(&memo)).await), Some("alpha"));
        assert_eq!(memo_answer(&c, &memo, "a.test", now).as_deref(), Some("alpha"));
        // It answers its own name only, and keeps the first one.
        assert_eq!(ask_twice(&c, &memo, "b.test", now).await.as_deref(), Some("bravo"));
        assert_eq!(memo_answer(&c, &memo, "b.test", now), None);
        assert_eq!(memo_answer(&c, &memo, "a.test", now).as_deref(), Some("alpha"));
        // Not past the entry's TTL.
        assert_eq!(memo_answer(&c, &memo, "a.test", now + Duration::from_secs(61)), None);
        // A NOTIFY for any name ends it; the next request asks the table,
        // and the database, and keeps the new answer.
        fake.set("a.test", Ok(Some("charlie")));
        c.invalidate(["a.test"]);
        assert_eq!(memo_answer(&c, &memo, "a.test", now), None);
        assert_eq!(ask_twice(&c, &memo, "a.test", now).await.as_deref(), Some("charlie"));
        assert_eq!(memo_answer(&c, &memo, "a.test", now).as_deref(), Some("charlie"));
        // So do a lost invalidation channel and a purge.
        c.clear();
        assert_eq!(memo_answer(&c, &memo, "a.test", now), None);
        assert_eq!(ask_twice(&c, &memo, "a.test", now).await.as_deref(), Some("charlie"));
        assert!(memo_answer(&c, &memo, "a.test", now).is_some());
        c.purge_all();
        assert_eq!(memo_answer(&c, &memo, "a.test", now), None);
    }

    #[tokio::test]
    async fn a_memo_taken_while_names_are_being_removed_ends_with_the_removal() {
        let fake = Arc::new(Fake::default());
        fake.set("a.test", Ok(Some("alpha")));
        let c = cache(&fake, 60);
        let memo = TenantMemo::default();
        let now = Instant::now();
        assert_eq!(schema(&c.resolve("a.test").await), Some("alpha"));
        // A request reads the counter and the entry after an invalidation
        // moved the counter but before it removed the name.
        c.changing(|| {
            let changes = c.changes.load(Ordering::SeqCst);
            if let Cached::Fresh(t, stamp) = c.cached_at("a.test", c.tick_at(now)) {
                memo.keep("a.test", &t, stamp, changes);
            }
            assert_eq!(memo_answer(&c, &memo, "a.test", now).as_deref(), Some("alpha"));
            c.positive.remove("a.test");
        });
        assert_eq!(memo_answer(&c, &memo, "a.test", now), None);
        // The same for an entry a query takes back (`forget`).
        assert_eq!(ask_twice(&c, &memo, "a.test", now).await.as_deref(), Some("alpha"));
        assert!(memo_answer(&c, &memo, "a.test", now).is_some());
        c.forget("a.test");
        assert_eq!(memo_answer(&c, &memo, "a.test", now), None);
    }
}
