//! Fleet-wide cache invalidation: one LISTEN connection per gateway. The
//! database triggers (shared migration 0003) NOTIFY a JSON array of changed
//! host names; we evict them.
//!
//! The connection is also the gateway's view of database health: every
//! `health_check_interval` it runs `SELECT 1` with a deadline on that very
//! connection, so a partitioned or frozen server (connection open, nothing
//! answers) is noticed within interval + deadline, not only a closed one.
//! When either happens the cache is marked stale and told the database is
//! down (cached tenants are then served without waiting for it), and we
//! reconnect with backoff capped at one second; once LISTEN is
//! re-established the cache is marked stale again (anything in between may
//! have been missed) and told the database answers.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use super::cache::TenantCache;

/// Timing of the listener (from `[database]`).
#[derive(Debug, Clone, Copy)]
pub struct ListenTiming {
    pub connect_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    /// Lookups read a replica: read the primary's WAL position after each
    /// NOTIFY, so answers older than the change are not cached.
    pub track_lsn: bool,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A returning database is noticed within this (plus one connect).
const BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn connect(url: &str, channel: &str, connect_timeout: Duration) -> Result<PgListener, sqlx::Error> {
    // A pool of one so connecting is bounded by our timeout (the listener's
    // own default waits 30 s while the database is down).
    let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout)
        .connect_lazy_with(opts.application_name("tenant-gateway-listen"));
    let mut l = PgListener::connect_with(&pool).await?;
    // Report a lost connection at once instead of reconnecting inside try_recv.
    l.eager_reconnect(false);
    l.listen(channel).await?;
    Ok(l)
}

/// Why a listening session ended.
enum Lost {
    Closed,
    Error(sqlx::Error),
    Unhealthy(String),
}

/// Serve one connected listener until it is lost. `primary`: a connection
/// to read the primary's WAL position after a NOTIFY (replica lookups).
async fn listen(
    listener: &mut PgListener,
    cache: &TenantCache,
    timing: ListenTiming,
    primary: Option<&PgPool>,
    on_change: Option<&OnChange>,
) -> Lost {
    let mut probe = tokio::time::interval(timing.health_interval);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.tick().await;
    loop {
        tokio::select! {
            // try_recv is cancel-safe (sqlx reads whole messages or nothing).
            n = listener.try_recv() => match n {
                Ok(Some(n)) => {
                    // Whatever the payload says, what is read after it is
                    // read as of now.
                    if let Some(primary) = primary {
                        if let Err(lost) = fresh_as_of_primary(primary, cache, timing).await {
                            return lost;
                        }
                    }
                    match serde_json::from_str::<Vec<String>>(n.payload()) {
                        Ok(names) => {
                            tracing::debug!(?names, "tenant invalidation");
                            cache.invalidate(names.iter().map(String::as_str));
                            if let Some(f) = on_change {
                                f(Change::Names(names));
                            }
                        }
                        Err(_) => {
                            tracing::warn!(payload = n.payload(), "tenant invalidation: unexpected payload; clearing cache");
                            // Which names changed is unknown: as after a gap.
                            cache.clear();
                            if let Some(f) = on_change {
                                f(Change::Resumed { fresh: true });
                            }
                        }
                    }
                }
                Ok(None) => return Lost::Closed,
                Err(e) => return Lost::Error(e),
            },
            _ = probe.tick() => {
                let health = sqlx::query("SELECT 1").execute(&mut *listener);
                match tokio::time::timeout(timing.health_timeout, health).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Lost::Error(e),
                    Err(_) => return Lost::Unhealthy(format!("no answer to the health query within {:?}", timing.health_timeout)),
                }
            }
        }
    }
}

/// Lookups on a replica answer only once it has replayed what the primary
/// has now: a change already committed (a NOTIFY's, or one made while
/// nothing listened) is at or before the primary's insert position (the
/// write position can still be behind it with `synchronous_commit = off`).
async fn fresh_as_of_primary(primary: &PgPool, cache: &TenantCache, timing: ListenTiming) -> Result<(), Lost> {
    let lsn = sqlx::query_scalar::<_, String>("SELECT pg_current_wal_insert_lsn()::text").fetch_one(primary);
    match tokio::time::timeout(timing.health_timeout, lsn).await {
        Ok(Ok(text)) => match super::lookup::parse_lsn(&text) {
            Some(lsn) => cache.require_fresh_as_of(lsn),
            None => tracing::warn!(lsn = text, "tenant invalidation: unreadable WAL position"),
        },
        Ok(Err(e)) => return Err(Lost::Error(e)),
        Err(_) => return Err(Lost::Unhealthy("no answer for the WAL position".into())),
    }
    Ok(())
}

/// How long a side listener may stay silent before it is asked `SELECT 1`
/// ([`next_notification`]).
pub const SIDE_PROBE_EVERY: Duration = Duration::from_secs(10);

/// The next notification of a side listener (ACME, custom hostnames), or
/// `None` once its connection is lost, closed, or does not answer `SELECT 1`
/// within `probe_timeout` after [`SIDE_PROBE_EVERY`] without a
/// notification: a connection lost without a word (a failover, a dropped
/// NAT entry) would otherwise be waited on forever while its notifications
/// go elsewhere (for ACME: renewed certificates would not reach memory
/// until the old ones expire).
pub async fn next_notification(
    listener: &mut PgListener,
    probe_timeout: Duration,
) -> Option<sqlx::postgres::PgNotification> {
    loop {
        tokio::select! {
            // try_recv is cancel-safe (sqlx reads whole messages or nothing).
            n = listener.try_recv() => return n.ok().flatten(),
            _ = tokio::time::sleep(SIDE_PROBE_EVERY) => {
                let health = sqlx::query("SELECT 1").execute(&mut *listener);
                match tokio::time::timeout(probe_timeout, health).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "LISTEN connection fails its probe");
                        return None;
                    }
                    Err(_) => {
                        tracing::warn!("LISTEN connection does not answer its probe within {probe_timeout:?}");
                        return None;
                    }
                }
            }
        }
    }
}

/// Called with the names of every NOTIFY after the cache dropped them, and
/// each time LISTEN is (re-)established (the certificate side acts on
/// domain changes through it).
pub type OnChange = Arc<dyn Fn(Change) + Send + Sync>;

/// What [`OnChange`] hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These names' domain rows or tenants changed.
    Names(Vec<String>),
    /// LISTEN is established: changes made while it was not were not heard.
    /// `fresh`: lookups now answer as of the primary's position (always,
    /// without replica lookups); if not, a replica's answers may predate the
    /// gap's changes.
    Resumed { fresh: bool },
}

pub async fn run(
    url: String,
    channel: String,
    cache: Arc<TenantCache>,
    timing: ListenTiming,
    on_change: Option<OnChange>,
) {
    let metrics = || cache.metrics();
    let primary = match timing.track_lsn {
        true => PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timing.connect_timeout)
            .connect_lazy(&url)
            .map_err(|e| tracing::error!(error = %e, "tenant invalidation: no pool for the WAL position"))
            .ok(),
        false => None,
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let connecting = tokio::time::timeout(
            timing.connect_timeout + timing.health_timeout,
            connect(&url, &channel, timing.connect_timeout),
        );
        let mut listener = match connecting.await {
            Ok(Ok(l)) => l,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connecting timed out".to_owned(),
                };
                tracing::warn!(
                    error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "tenant invalidation: cannot LISTEN"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        // What changed while nothing listened is read as of now, on a
        // replica too (the certificate side looks its names up at once, and
        // retires what it finds unserved: not on a replica's old answers).
        let fresh = match &primary {
            Some(primary) => fresh_as_of_primary(primary, &cache, timing).await.is_ok(),
            None => true,
        };
        if !fresh {
            tracing::warn!(
                "tenant invalidation: no WAL position of the primary; a replica's answers may lag, \
                 so certificates are not checked for this gap"
            );
        }
        cache.clear();
        cache.set_listener_up(true);
        metrics().invalidation_connected.set(1);
        metrics().database_up.set(1);
        tracing::info!(channel = %channel, "tenant invalidation: listening");
        if let Some(f) = on_change.as_ref() {
            f(Change::Resumed { fresh });
        }
        let lost = listen(&mut listener, &cache, timing, primary.as_ref(), on_change.as_ref()).await;
        cache.set_listener_up(false);
        metrics().invalidation_connected.set(0);
        metrics().database_up.set(0);
        cache.clear();
        match lost {
            Lost::Closed => tracing::warn!("tenant invalidation: connection lost; cache marked stale"),
            Lost::Error(e) => tracing::warn!(error = %e, "tenant invalidation: connection error; cache marked stale"),
            Lost::Unhealthy(why) => {
                tracing::warn!(reason = %why, "tenant invalidation: database not answering; cache marked stale")
            }
        }
        // Dropping a listener whose server does not answer must not block us.
        drop(listener);
    }
}
