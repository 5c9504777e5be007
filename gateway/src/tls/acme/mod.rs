//! Automatic certificates for tenants' custom domains (ACME, instant-acme).
//! This file holds the shared state ([`Acme`]), the guard, errors and the
//! bounds; the parts: `worker` (scans, NOTIFY, one attempt per name),
//! `protocol` (account and order through instant-acme), `challenge`
//! (answering validations), `certs` (certificates between the database and
//! memory), `policy` (rate-limit unit, back-off, renewal point: pure),
//! `seal` (secrets at rest), `rekey` (re-sealing them after a key
//! rotation), `report` (the CLI's view).
//!
//! - Guard: only names in the domain table whose tenant is active and that
//!   are not under a base domain (the wildcard covers those) ever get an
//!   order; the check goes through the tenant cache, so floods of random
//!   SNI names cost no queries beyond the cache's.
//! - When: proactively (domain NOTIFY, periodic scan for missing, expiring or
//!   due-for-retry names), on demand at a handshake (bounded wait), and on an
//!   operator's `gateway acme renew`.
//! - Fleet: one order per name across all gateways (a lease on the name's
//!   `acme_names` row, see Bounds); challenges live in the database so any
//!   gateway answers HTTP-01 or TLS-ALPN-01; certificates live in the
//!   database (keys AES-256-GCM encrypted) and every gateway loads them on
//!   NOTIFY.
//! - Renewal when between 60 % and 66.7 % of the lifetime has passed
//!   (jittered; a third or more is left); failures back off exponentially
//!   with jitter, capped; the last certificate keeps being served; order
//!   budgets for the fleet, for each tenant (its share of the fleet's, so
//!   one tenant's bulk import or hundreds of throwaway domains do not
//!   hold back another's first certificate) and per registrable domain
//!   (Public Suffix List).
//!
//! Bounds: orders must never starve the database connections that answer
//! challenges, and every attempt ends with its bookkeeping written.
//!
//! - At most `acme.max_concurrent_orders` orders run in this gateway, at
//!   most half of them (at least one) for one tenant's names; further
//!   attempts wait for a slot (`Slots`, semaphores) holding no database
//!   connection. Gauges: `tenant_gateway_acme_orders_in_progress` and
//!   `tenant_gateway_acme_orders_waiting`.
//! - Three pools: order work (bookkeeping, scans, certificate loads; the pool
//!   handed to [`Acme::new`]), challenge answers (`ANSWER_CONNECTIONS`
//!   connections, used by [`Acme::http01`] and [`Acme::alpn_key`] only) and
//!   LISTEN (one connection, held by the listener only).
//! - The per-name exclusion is a lease row (`lease_owner`, `lease_until`),
//!   claimed and released by single statements, not a session advisory lock:
//!   a session lock pins a pooled connection for the whole ACME exchange
//!   (minutes when the CA is slow), so concurrent orders would empty any
//!   pool sized below them, and a dedicated pool per slot would still cost
//!   a server connection per running order for nothing. A lease costs a
//!   connection only for the length of a statement. If a gateway dies
//!   mid-order its lease expires after `LEASE` = `ORDER_DEADLINE` +
//!   `LEASE_GRACE`; a lease left by this very process (one attempt per name
//!   runs here at a time) is taken over at once. A gateway that stops
//!   (SIGTERM, or the old process of an upgrade) stops its attempts and
//!   frees its leases at once (`Acme::stop`). The ACME account is no
//!   longer created under a lock either: if two gateways of a fresh fleet
//!   create one at once, the first stored wins and the other stays unused.
//! - Every database step of order work is bounded by `QUERY_DEADLINE` (10 s),
//!   reading a challenge answer by `ANSWER_DEADLINE` (5 s), and the CA
//!   exchange of one attempt by `ORDER_DEADLINE` (5 min: account, order,
//!   both challenge types' validation polls of up to 60 s, finalisation,
//!   download).
//! - A claimed attempt always ends in one transaction that frees the lease:
//!   issued (certificate, reset failures), or failed (failures + 1, error,
//!   back-off `next_attempt_at`, order row `failed`) also when the order
//!   errs, times out or its certificate cannot be stored; written once more
//!   after a transient database error; or, when the gateway stops mid-order,
//!   in the one statement of `Acme::stop` (lease freed, order `stopped`).
//!   `gateway acme status` shows
//!   "pending" only while a lease is live, so an attempt that ended (or
//!   whose gateway died) never leaves a name pending.
//!
//! Size: the header above is the design of the whole ACME side; the code
//! here is the shared state and the bounds, ~100 lines of it tests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use prometheus::IntGauge;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::store::{Cert, CertStore};
use crate::clock::unix_now;
use crate::config::{AcmeConfig, ChallengeKind};
use crate::metrics::Metrics;
use crate::tenant::cache::{Resolution, TenantCache};
use crate::tenant::Status;

mod certs;
mod challenge;
mod policy;
mod protocol;
mod rekey;
mod report;
mod seal;
mod worker;

pub use certs::{restore_certificates, retire_certificates};
pub use policy::{backoff, registered_domain, renewal_point};
pub use rekey::{rekey, RekeyReport};
pub use report::{force_renewal, status_report};
pub use seal::{Opener, Seal};

const CERTS_CHANNEL: &str = "tenant_gateway_certs";
const RENEW_CHANNEL: &str = "tenant_gateway_acme";
/// Connections of the challenge-answer pool.
const ANSWER_CONNECTIONS: u32 = 2;
/// Bound on one database step of order work (a query or a short transaction).
const QUERY_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on reading one challenge answer (the CA's own request waits for it).
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// Names per statement when the certificates in memory are checked after a
/// LISTEN gap (`refresh_loaded`).
const REFRESH_BATCH: usize = 500;
/// Bound on the CA exchange of one order attempt.
const ORDER_DEADLINE: Duration = Duration::from_secs(300);
/// Beyond `ORDER_DEADLINE`, the lease covers the bounded steps before the
/// order (four) and the final record (two tries): at most a minute.
const LEASE_GRACE: Duration = Duration::from_secs(120);
const LEASE: Duration = ORDER_DEADLINE.saturating_add(LEASE_GRACE);
/// At shutdown, the longest running attempts get to end by themselves
/// before they are stopped (`Acme::stop`).
const STOP_WAIT: Duration = Duration::from_secs(2);
/// SET clause freeing a name's lease (and with it the "pending" status).
const FREE_LEASE: &str = "lease_owner = NULL, lease_until = NULL, ordering_since = NULL, updated_at = now()";
/// How long a rate-limited name waits before the next try.
const RATE_LIMITED_RETRY: Duration = Duration::from_secs(600);
/// The advisory lock (transaction-scoped) under which an order's budgets
/// are counted and its row logged, fleet-wide.
const ORDER_BUDGET_LOCK: i64 = 0x7467_6275_6467; // "tgbudg"
/// A gateway's sealing key counts as live (`tenant_gateway.sealing_keys`,
/// migration 0008) for the longer of this and three of its scan intervals
/// after it said so: while another key is live, a secret this gateway
/// cannot open is left alone, not replaced.
const KEY_LIVE_FOR: Duration = Duration::from_secs(600);

/// Why a stored `what` that opens under no key of this gateway is left as
/// it is: another sealing key is live (`Acme::other_key_live`).
fn left_for_other_key(what: &str) -> String {
    format!(
        "the stored {what} opens under no key of this gateway, and another gateway seals with another key \
         (acme.key_env differs across the fleet): left for it, not replaced"
    )
}
/// Bound on loading one stored certificate at a handshake.
const LOAD_DEADLINE: Duration = Duration::from_secs(2);

/// The ACME work's own connections (orders, scans, loads, reloads); the
/// challenge answers have theirs (`ANSWER_CONNECTIONS`).
pub const CONNECTIONS: u32 = 4;

/// Certificate NOTIFYs' reloads that run at once (the others wait): half
/// the ACME connections, so a bulk renewal's NOTIFYs leave the rest to
/// handshakes' loads and the orders.
const RELOADS_AT_ONCE: usize = CONNECTIONS as usize / 2;
/// Names one scan takes per query (missing, due for renewal).
const SCAN_BATCH: i64 = 500;
/// The query for names without any certificate reads every listed name
/// (an anti-join): it runs at the first scan and then every this many
/// scans. New names do not wait for it: their NOTIFY starts an attempt.
const MISSING_EVERY: u64 = 10;
/// `acme_names.last_error` of a name the guard refused: the scan skips it
/// until its next attempt time, a change to the name (NOTIFY) clears it.
const NOT_ELIGIBLE: &str = "not eligible";
/// How long the scan leaves a refused name alone.
const NOT_ELIGIBLE_RETRY: &str = "1 hour";
/// A stored certificate whose `renew_after` passed longer ago than this is
/// overdue (`tenant_gateway_stored_certificates_renewal_overdue`): a scan
/// takes a due name within `check_interval_secs`, so a day of delay means
/// its renewals fail or do not run.
const RENEWAL_OVERDUE_AFTER: &str = "1 day";
/// Whether certificate row `c`'s name is held back as not eligible, in the
/// words of migration 0004's partial index (a unit test keeps the two
/// alike).
const HELD_BACK: &str =
    "SELECT 1 FROM tenant_gateway.acme_names n WHERE n.name = c.name AND n.last_error = 'not eligible'";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{what} took longer than {limit:?}")]
    Timeout { what: &'static str, limit: Duration },
    #[error("{0}")]
    Other(String),
    /// A stored secret (a certificate's key, the account's credentials) that
    /// no configured key opens, or stored data that does not parse: the
    /// gateway replaces it (a new order, a new account) rather than fail
    /// for ever (docs/operations.md, "Rotating the sealing key").
    #[error("stored {what} cannot be used: {why}")]
    Unreadable { what: String, why: String },
}

impl AcmeError {
    /// The CA does not know our account (RFC 8555 `accountDoesNotExist`,
    /// e.g. its state was wiped): a new one must be created.
    fn account_unknown(&self) -> bool {
        matches!(
            self,
            AcmeError::Acme(instant_acme::Error::Api(problem))
                if problem.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist"))
        )
    }

    /// Worth one more try: the database was briefly unreachable, busy or slow.
    fn is_transient(&self) -> bool {
        match self {
            AcmeError::Timeout { .. } => true,
            AcmeError::Db(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed) => true,
            AcmeError::Db(sqlx::Error::Database(e)) => e.code().is_some_and(|c| transient_sqlstate(&c)),
            _ => false,
        }
    }
}

/// SQLSTATEs worth one retry: connection exceptions (class 08), serialization
/// failure and deadlock, too many connections, lock not available, and the
/// server shutting down or restarting.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "53300" | "55P03" | "57P01" | "57P02" | "57P03"
        )
}

fn other(e: impl std::fmt::Display) -> AcmeError {
    AcmeError::Other(e.to_string())
}

/// Run `step` under `limit`.
async fn bounded_by<T, E>(
    limit: Duration,
    what: &'static str,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, AcmeError>
where
    AcmeError: From<E>,
{
    match tokio::time::timeout(limit, step).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(AcmeError::Timeout { what, limit }),
    }
}

/// One database step of order work, under [`QUERY_DEADLINE`].
async fn bounded<T, E>(what: &'static str, step: impl Future<Output = Result<T, E>>) -> Result<T, AcmeError>
where
    AcmeError: From<E>,
{
    bounded_by(QUERY_DEADLINE, what, step).await
}

/// [`bounded_by`], run once more after a transient failure.
async fn retry_once<T, F, Fut>(limit: Duration, what: &'static str, mut step: F) -> Result<T, AcmeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AcmeError>>,
{
    match bounded_by(limit, what, step()).await {
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "ACME: {what} failed; trying once more");
            bounded_by(limit, what, step()).await
        }
        done => done,
    }
}

/// +1 on a gauge for as long as it lives (also when its future is dropped).
struct GaugeHold(IntGauge);

impl GaugeHold {
    fn new(gauge: &IntGauge) -> GaugeHold {
        gauge.inc();
        GaugeHold(gauge.clone())
    }
}

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The cap on concurrent orders in this gateway, with its two gauges, and
/// each tenant's share of it: one tenant's names hold at most half the
/// slots (at least one), so its orders that take their whole deadline (its
/// names pointing at a server that never answers the CA) or its bulk import
/// leave the rest to the other tenants. A tenant's names wait for their
/// share before they wait for a slot, so they queue behind no one else's.
struct Slots {
    permits: Arc<Semaphore>,
    /// Per tenant with an attempt waiting or running: its share's permits
    /// (dropped when no attempt holds them).
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    share: usize,
    waiting: IntGauge,
    running: IntGauge,
}

/// One order slot. Field order matters: the running gauge drops before the
/// permits, so the gauge never shows more than the cap.
struct Slot {
    _running: GaugeHold,
    _permit: OwnedSemaphorePermit,
    _share: OwnedSemaphorePermit,
}

impl Slots {
    fn new(cap: u32, waiting: IntGauge, running: IntGauge) -> Slots {
        let cap = usize::try_from(cap.max(1)).unwrap_or(1);
        Slots {
            permits: Arc::new(Semaphore::new(cap)),
            shares: Mutex::default(),
            share: (cap / 2).max(1),
            waiting,
            running,
        }
    }

    /// Wait (counted in the waiting gauge) for a free slot within
    /// `tenant`'s share.
    async fn acquire(&self, tenant: &str) -> Result<Slot, AcmeError> {
        let _waiting = GaugeHold::new(&self.waiting);
        let share = {
            let mut shares = self.shares.lock();
            // Only the map holds an idle tenant's semaphore.
            shares.retain(|_, s| Arc::strong_count(s) > 1);
            shares
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
                .clone()
        };
        let share = share.acquire_owned().await.map_err(other)?;
        let permit = self.permits.clone().acquire_owned().await.map_err(other)?;
        Ok(Slot {
            _running: GaugeHold::new(&self.running),
            _permit: permit,
            _share: share,
        })
    }

    #[cfg(test)]
    fn tenants(&self) -> usize {
        self.shares.lock().len()
    }
}

/// What the checks under a fresh lease decided.
enum Prepared {
    /// Another gateway just stored a good certificate.
    NotNeeded,
    /// Held back by a rate limit (the reason).
    RateLimited(String),
    /// The stored certificate opens under no key of this gateway, and
    /// another gateway seals with another key (the reason).
    KeyConflict(String),
    /// Go: the new `acme_orders` row.
    Order(i64),
}

pub struct Acme {
    cfg: AcmeConfig,
    /// Order work: bookkeeping, scans, certificate loads, the account.
    db: PgPool,
    /// Challenge answers only, so orders can never starve them.
    answers: PgPool,
    /// The LISTEN connection only.
    listen_db: PgPool,
    seal: Seal,
    store: Arc<CertStore>,
    /// Who may have a certificate: the tenant cache in production.
    guard: Arc<dyn NameGuard>,
    base_domains: Vec<String>,
    metrics: Arc<Metrics>,
    /// This process: host name, pid and a random part (unique, so `stop`
    /// ends only its own orders). Logged on its orders, and the owner of
    /// the order leases it takes.
    gateway_id: String,
    slots: Slots,
    account: tokio::sync::Mutex<Option<Account>>,
    wanted: mpsc::UnboundedSender<(String, bool)>,
    wanted_rx: Mutex<Option<mpsc::UnboundedReceiver<(String, bool)>>>,
    /// Names with an attempt running, marked when they change meanwhile
    /// (`Acme::mark_changed`): looked at again when it ends.
    in_progress: crate::inflight::InFlight,
    /// The running attempts, and their stop at shutdown (`Acme::stop`).
    attempts: tokio_util::task::TaskTracker,
    stopping: tokio_util::sync::CancellationToken,
    /// Handshakes waiting for a name's certificate: a NOTIFY for such a
    /// name loads it even though it is not in memory.
    waiting: certs::Waiters,
    /// One database load per name at a time (handshakes coalesce on it).
    loading: certs::Loading,
    /// The certificates in memory are to be checked against the database
    /// (`refresh_loaded`) before the next scan.
    refresh_due: std::sync::atomic::AtomicBool,
    /// NOTIFY reloads running at once ([`RELOADS_AT_ONCE`]): a fleet's
    /// bulk renewal NOTIFYs every name in memory, and each reload is a
    /// query on the ACME pool.
    reload_slots: tokio::sync::Semaphore,
    /// [`Acme::recheck_served`] is running; it is to run (again).
    rechecking: std::sync::atomic::AtomicBool,
    recheck_again: std::sync::atomic::AtomicBool,
    /// Custom names need an active claim (`custom_domains.verification`):
    /// the scan for missing certificates asks only for claimed names.
    claims_required: bool,
    /// Lookups strip a leading `www.` (`tenant.strip_www`): `www.` of a
    /// served name is served, and gets a certificate of its own.
    strip_www: bool,
    /// With `strip_www`: where a `www.` name points, looked at before it is
    /// ordered (no look: ordered as any served name).
    www_dns: Option<crate::hostnames::check::Checker>,
    /// Scans run so far (the missing-names query runs every `MISSING_EVERY`).
    scans: std::sync::atomic::AtomicU64,
    /// TLS-ALPN-01 certificates built for validations in progress.
    alpn_keys: Mutex<challenge::AlpnKeys>,
    /// Challenge lookups per client (`acme.challenge_rate`; None: no limit).
    challenge_limit: Option<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>,
    /// Handshake-caused certificate loads per client (`acme.load_rate`;
    /// None: no limit).
    load_limit: Option<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>,
}

impl Acme {
    /// `db` is the pool for order work; the challenge-answer and LISTEN
    /// pools are opened alongside it with the same connect options.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: AcmeConfig,
        db: PgPool,
        keys: &crate::config::AcmeKeys,
        store: Arc<CertStore>,
        cache: Arc<TenantCache>,
        strip_www: bool,
        base_domains: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Acme {
        let (tx, rx) = mpsc::unbounded_channel();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        // Host name and pid say which process it is; the random part makes
        // it unique (two containers on one host network may share both), as
        // `stop` ends the orders logged under it.
        let gateway_id = format!("{}:{}/{:08x}", host.trim(), std::process::id(), rand::random::<u32>());
        let opts = (*db.connect_options()).clone();
        let acquire = db.options().get_acquire_timeout();
        let answers = crate::tenant::lookup::lazy_pool(
            opts.clone().application_name("tenant-gateway-acme-answers"),
            ANSWER_CONNECTIONS,
            acquire,
        );
        let listen_db =
            crate::tenant::lookup::lazy_pool(opts.application_name("tenant-gateway-acme-listen"), 1, acquire);
        // The rate per second, a burst of twice that (validated to fit).
        let challenge_limit = crate::limits::quota(cfg.challenge_rate, cfg.challenge_rate.saturating_mul(2))
            .map(governor::RateLimiter::dashmap);
        let load_limit =
            crate::limits::quota(cfg.load_rate, cfg.load_rate.saturating_mul(2)).map(governor::RateLimiter::dashmap);
        Acme {
            slots: Slots::new(
                cfg.max_concurrent_orders,
                metrics.acme_orders_waiting.clone(),
                metrics.acme_orders_in_progress.clone(),
            ),
            cfg,
            db,
            answers,
            listen_db,
            seal: Seal::from_keys(keys),
            store,
            guard: Arc::new(CacheGuard { cache, strip_www }),
            base_domains,
            metrics,
            gateway_id,
            account: tokio::sync::Mutex::new(None),
            wanted: tx,
            wanted_rx: Mutex::new(Some(rx)),
            in_progress: crate::inflight::InFlight::default(),
            attempts: tokio_util::task::TaskTracker::new(),
            stopping: tokio_util::sync::CancellationToken::new(),
            waiting: Mutex::default(),
            loading: Mutex::default(),
            refresh_due: std::sync::atomic::AtomicBool::new(false),
            reload_slots: tokio::sync::Semaphore::new(RELOADS_AT_ONCE),
            rechecking: std::sync::atomic::AtomicBool::new(false),
            recheck_again: std::sync::atomic::AtomicBool::new(false),
            claims_required: false,
            strip_www,
            www_dns: None,
            scans: std::sync::atomic::AtomicU64::new(0),
            alpn_keys: Mutex::default(),
            challenge_limit,
            load_limit,
        }
    }

    /// The scan for missing certificates considers only names with an active
    /// claim (with `custom_domains.verification = "required"`).
    pub fn with_claims_required(mut self, required: bool) -> Acme {
        self.claims_required = required;
        self
    }

    /// With `tenant.strip_www`: the DNS look a `www.` name served through
    /// its stripped name must pass before it is ordered (`www_may_order`).
    pub fn with_www_check_if(mut self, dns: Option<crate::hostnames::check::Checker>) -> Acme {
        self.www_dns = dns;
        self
    }

    /// Create the gateway's schema (idempotent, serialised across the fleet).
    pub async fn migrate(db: &PgPool) -> Result<(), AcmeError> {
        Ok(crate::schema::migrate(db).await?)
    }

    /// A name's order state, for the operator API (`None`: never ordered).
    /// On the order work's pool, under its deadline: the answers' pool is
    /// the CA's alone.
    pub async fn name_state(&self, name: &str) -> Result<Option<serde_json::Value>, AcmeError> {
        let row: Option<(i32, Option<String>, i64, bool, bool)> = bounded(
            "reading a name's order state",
            sqlx::query_as(
                "SELECT failures, last_error, extract(epoch FROM next_attempt_at)::bigint, force_renew, \
                        coalesce(lease_until > now(), false) \
                   FROM tenant_gateway.acme_names WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(&self.db),
        )
        .await?;
        Ok(row.map(|(failures, last_error, next_attempt, forced, ordering)| {
            serde_json::json!({
                "failures": failures,
                "last_error": last_error,
                "next_attempt_at": next_attempt,
                "force_renew": forced,
                "ordering": ordering,
            })
        }))
    }

    /// The `limit` stored certificates that expire first, fleet-wide, in
    /// memory or not, each with its name's ACME state, for the operator API
    /// (the names behind the stored-certificate gauges). Read through the
    /// expiry index from its first entry: its cost is the limit's, not the
    /// number of names.
    pub async fn first_to_expire(&self, limit: i64) -> Result<Vec<serde_json::Value>, AcmeError> {
        type Row = (String, i64, i64, bool, Option<i32>, Option<String>, Option<i64>);
        let rows: Vec<Row> = bounded(
            "listing the stored certificates that expire first",
            sqlx::query_as(&format!(
                "SELECT c.name, extract(epoch FROM c.not_after)::bigint, extract(epoch FROM c.renew_after)::bigint,
                        c.renew_after <= now() - interval '{RENEWAL_OVERDUE_AFTER}',
                        n.failures, n.last_error, extract(epoch FROM n.next_attempt_at)::bigint
                   FROM tenant_gateway.certificates c
                   LEFT JOIN tenant_gateway.acme_names n ON n.name = c.name
                  WHERE c.removed_at IS NULL
                  ORDER BY c.not_after, c.name LIMIT $1"
            ))
            .bind(limit)
            .fetch_all(&self.db),
        )
        .await?;
        let now = unix_now();
        Ok(rows
            .into_iter()
            .map(|(name, not_after, renew_after, overdue, failures, last_error, next)| {
                // The name's own row says it (the gauges' `HELD_BACK`).
                let held_back = last_error.as_deref() == Some(NOT_ELIGIBLE);
                serde_json::json!({
                    "name": name,
                    "not_after": not_after,
                    "days_left": (not_after - now) / 86_400,
                    "renew_after": renew_after,
                    "renewal_overdue": overdue && !held_back,
                    "held_back": held_back,
                    "failures": failures.unwrap_or(0),
                    "last_error": last_error,
                    "next_attempt_at": next,
                })
            })
            .collect())
    }

    /// Ask the fleet to renew `name` now (as `gateway acme renew`).
    pub async fn renew(&self, name: &str) -> Result<(), AcmeError> {
        force_renewal(&self.db, name).await
    }

    pub async fn eligible(&self, name: &str) -> bool {
        self.eligible_for(name).await.is_some()
    }

    /// The tenant an order for `name` would be made for (and counted
    /// against), `None` when the name is not eligible.
    pub(super) async fn eligible_for(&self, name: &str) -> Option<String> {
        if !self.custom(name) {
            return None;
        }
        policy::ordered_for(&self.guard.resolve(name).await).map(str::to_owned)
    }

    /// Whether `name` may be ordered as far as DNS can tell: a `www.` name
    /// served only because lookups strip `www.` (no tenant listed it) must
    /// point here ([`Checker::www_points_here`](crate::hostnames::check::Checker::www_points_here)),
    /// since any client can ask for one in a handshake, and an order for a
    /// name that does not exist or points elsewhere fails at the CA after
    /// spending its tenant's, its domain's and the fleet's order budgets.
    /// Every other name: yes. `Err`: why not.
    pub(super) async fn www_may_order(&self, name: &str) -> Result<(), String> {
        let Some(dns) = &self.www_dns else {
            return Ok(());
        };
        if crate::tenant::host::lookup_name(name, self.strip_www) == name {
            return Ok(());
        }
        use crate::hostnames::policy::Pointing;
        match dns.www_points_here(name).await {
            Pointing::Here => Ok(()),
            Pointing::Elsewhere { detail, .. } | Pointing::Unknown(detail) => Err(detail),
        }
    }

    /// Not under a base domain (whose certificates are the operator's
    /// files): a name whose certificate ACME looks after.
    fn custom(&self, name: &str) -> bool {
        crate::hostnames::needs_claim(name, &self.base_domains)
    }
}

/// The one question ACME asks about a name: what the domain table (and
/// the name's claim) say, as the request path sees it. Narrow, so the
/// rules on top of it (`policy::eligible`, `policy::served`) are pure.
#[async_trait::async_trait]
pub trait NameGuard: Send + Sync {
    async fn resolve(&self, name: &str) -> Resolution;
}

/// The tenant cache as the guard: cached, coalesced, negatively cached, so
/// floods of random SNI names cost no queries beyond the cache's own. A name
/// is looked up as a request's host is (`www.` stripped when lookups strip
/// it), so `www.` of a served name is served and eligible as the name is.
struct CacheGuard {
    cache: Arc<TenantCache>,
    strip_www: bool,
}

#[async_trait::async_trait]
impl NameGuard for CacheGuard {
    async fn resolve(&self, name: &str) -> Resolution {
        let lookup = crate::tenant::host::lookup_name(name, self.strip_www);
        self.cache.resolve(lookup).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_back_test_is_the_one_its_index_covers() {
        let marked = format!("last_error = '{NOT_ELIGIBLE}'");
        assert!(HELD_BACK.ends_with(&marked), "{HELD_BACK}");
        let migration = include_str!("../../../migrations/0004_certificate_expiry.sql");
        assert!(migration.contains(&format!("WHERE {marked};")), "{migration}");
    }

    #[test]
    fn transient_errors_are_the_database_being_briefly_away() {
        let timeout = AcmeError::Timeout {
            what: "x",
            limit: Duration::from_secs(1),
        };
        assert!(timeout.is_transient());
        assert!(AcmeError::Db(sqlx::Error::PoolTimedOut).is_transient());
        assert!(AcmeError::Db(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())).is_transient());
        assert!(!AcmeError::Db(sqlx::Error::RowNotFound).is_transient());
        assert!(!AcmeError::Other("bad certificate".into()).is_transient());
        for code in ["08006", "08001", "40001", "40P01", "53300", "55P03", "57P01"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "57014"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }

    #[tokio::test]
    async fn bounded_steps_end_at_their_deadline() {
        let never = std::future::pending::<Result<(), AcmeError>>();
        let e = bounded_by(Duration::from_millis(10), "a stuck query", never)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                AcmeError::Timeout {
                    what: "a stuck query",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("a stuck query took longer than"), "{e}");
        let done = bounded_by(Duration::from_secs(60), "x", async { Ok::<_, sqlx::Error>(7) }).await;
        assert_eq!(done.unwrap(), 7);
    }

    #[tokio::test]
    async fn retry_once_retries_transient_errors_only_and_once() {
        let calls = std::cell::Cell::new(0);
        let r = retry_once(Duration::from_secs(60), "x", || async {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                Err(AcmeError::Db(sqlx::Error::PoolTimedOut))
            } else {
                Ok(calls.get())
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);

        calls.set(0);
        let r: Result<(), _> = retry_once(Duration::from_secs(60), "x", || async {
            calls.set(calls.get() + 1);
            Err(AcmeError::Db(sqlx::Error::PoolTimedOut))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 2, "one retry, not more");

        calls.set(0);
        let r: Result<(), _> = retry_once(Duration::from_secs(60), "x", || async {
            calls.set(calls.get() + 1);
            Err(AcmeError::Other("not transient".into()))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn slots_cap_orders_and_count_the_waiting() {
        let waiting = IntGauge::new("waiting", "w").unwrap();
        let running = IntGauge::new("running", "r").unwrap();
        let slots = Slots::new(2, waiting.clone(), running.clone());
        let first = slots.acquire("a").await.unwrap();
        let _second = slots.acquire("b").await.unwrap();
        assert_eq!((running.get(), waiting.get()), (2, 0));
        // A third waits (it can never finish while both slots are held).
        let mut third = Box::pin(slots.acquire("c"));
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut third)
            .await
            .is_err());
        assert_eq!((running.get(), waiting.get()), (2, 1));
        // A waiter that gives up is no longer counted.
        let mut fourth = Box::pin(slots.acquire("d"));
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut fourth)
            .await
            .is_err());
        assert_eq!(waiting.get(), 2);
        drop(fourth);
        assert_eq!(waiting.get(), 1);
        // A slot freed goes to the waiter; running never exceeds the cap.
        drop(first);
        assert!(running.get() <= 2);
        let third = tokio::time::timeout(Duration::from_secs(30), third)
            .await
            .expect("the freed slot")
            .unwrap();
        assert_eq!((running.get(), waiting.get()), (2, 0));
        drop(third);
        assert_eq!(running.get(), 1);
    }

    #[tokio::test]
    async fn one_tenant_holds_at_most_half_the_slots_and_waits_behind_no_one_else() {
        let waiting = IntGauge::new("waiting", "w").unwrap();
        let running = IntGauge::new("running", "r").unwrap();
        let slots = Slots::new(4, waiting.clone(), running.clone());
        let a1 = slots.acquire("a").await.unwrap();
        let _a2 = slots.acquire("a").await.unwrap();
        // A's third waits for its own share, not for a slot: two are free.
        let mut a3 = Box::pin(slots.acquire("a"));
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut a3).await.is_err());
        assert_eq!((running.get(), waiting.get()), (2, 1));
        // B takes the two other slots at once, ahead of A's waiting third.
        let b1 = tokio::time::timeout(Duration::from_secs(30), slots.acquire("b"))
            .await
            .expect("a free slot")
            .unwrap();
        let b2 = tokio::time::timeout(Duration::from_secs(30), slots.acquire("b"))
            .await
            .expect("a free slot")
            .unwrap();
        assert_eq!(running.get(), 4);
        // A's own slot freed: its third goes.
        drop(a1);
        let _a3 = tokio::time::timeout(Duration::from_secs(30), a3)
            .await
            .expect("A's freed share")
            .unwrap();
        assert_eq!((running.get(), waiting.get()), (4, 0));
        drop(b1);
        drop(b2);
        // B has no attempt left: its share is forgotten at the next acquire.
        let _c = slots.acquire("c").await.unwrap();
        assert_eq!(slots.tenants(), 2, "a and c");
    }

    #[test]
    fn a_single_slot_is_every_tenants_share() {
        let g = || IntGauge::new("g", "g").unwrap();
        assert_eq!(Slots::new(1, g(), g()).share, 1);
        assert_eq!(Slots::new(4, g(), g()).share, 2);
        assert_eq!(Slots::new(5, g(), g()).share, 2);
    }
}
