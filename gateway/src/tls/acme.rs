//! Automatic certificates for tenants' custom domains (ACME, instant-acme).
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
//! - Renewal at a third of the lifetime; failures back off exponentially
//!   with jitter, capped; the last certificate keeps being served; global
//!   and per-registrable-domain (Public Suffix List) order rate limits.
//!
//! Bounds: orders must never starve the database connections that answer
//! challenges, and every attempt ends with its bookkeeping written.
//!
//! - At most `acme.max_concurrent_orders` orders run in this gateway; further
//!   attempts wait for a slot ([`Slots`], a semaphore) holding no database
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
//!   runs here at a time) is taken over at once. The ACME account is no
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
//!   after a transient database error. `gateway acme status` shows
//!   "pending" only while a lease is live, so an attempt that ended (or
//!   whose gateway died) never leaves a name pending.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
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
use crate::config::{AcmeConfig, ChallengeKind};
use crate::metrics::Metrics;
use crate::tenant::cache::{Resolution, TenantCache};
use crate::tenant::Status;

const CERTS_CHANNEL: &str = "tenant_gateway_certs";
const RENEW_CHANNEL: &str = "tenant_gateway_acme";
/// Connections of the challenge-answer pool.
const ANSWER_CONNECTIONS: u32 = 2;
/// Bound on one database step of order work (a query or a short transaction).
const QUERY_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on reading one challenge answer (the CA's own request waits for it).
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// Bound on the CA exchange of one order attempt.
const ORDER_DEADLINE: Duration = Duration::from_secs(300);
/// Beyond `ORDER_DEADLINE`, the lease covers the bounded steps before the
/// order (four) and the final record (two tries): at most a minute.
const LEASE_GRACE: Duration = Duration::from_secs(120);
const LEASE: Duration = ORDER_DEADLINE.saturating_add(LEASE_GRACE);
/// SET clause freeing a name's lease (and with it the "pending" status).
const FREE_LEASE: &str = "lease_owner = NULL, lease_until = NULL, ordering_since = NULL, updated_at = now()";
/// How long a rate-limited name waits before the next try.
const RATE_LIMITED_RETRY: &str = "10 minutes";
/// Bound on loading one stored certificate at a handshake.
const LOAD_DEADLINE: Duration = Duration::from_secs(2);
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

/// Counts a handshake waiting for a name's certificate while it lives.
struct Waiting<'a> {
    map: &'a Mutex<HashMap<String, usize>>,
    name: String,
}

impl<'a> Waiting<'a> {
    fn new(map: &'a Mutex<HashMap<String, usize>>, name: &str) -> Waiting<'a> {
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default() += 1;
        Waiting {
            map,
            name: name.to_owned(),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.name);
            }
        }
    }
}

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
}

impl AcmeError {
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

/// The cap on concurrent orders in this gateway, with its two gauges.
struct Slots {
    permits: Arc<Semaphore>,
    waiting: IntGauge,
    running: IntGauge,
}

/// One order slot. Field order matters: the running gauge drops before the
/// permit, so the gauge never shows more than the cap.
struct Slot {
    _running: GaugeHold,
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    fn new(cap: u32, waiting: IntGauge, running: IntGauge) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(usize::try_from(cap.max(1)).unwrap_or(1))),
            waiting,
            running,
        }
    }

    /// Wait (counted in the waiting gauge) for a free slot.
    async fn acquire(&self) -> Result<Slot, AcmeError> {
        let _waiting = GaugeHold::new(&self.waiting);
        let permit = self.permits.clone().acquire_owned().await.map_err(other)?;
        Ok(Slot {
            _running: GaugeHold::new(&self.running),
            _permit: permit,
        })
    }
}

/// What the checks under a fresh lease decided.
enum Prepared {
    /// Another gateway just stored a good certificate.
    NotNeeded,
    /// Held back by a rate limit (the reason).
    RateLimited(String),
    /// Go: the new `acme_orders` row.
    Order(i64),
}

/// AES-256-GCM with a random nonce per message; the row's identity is the
/// associated data, so a ciphertext cannot be moved to another row.
pub struct Seal(LessSafeKey);

impl Seal {
    pub fn new(key: &[u8; 32]) -> Seal {
        Seal(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"),
        ))
    }

    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, AcmeError> {
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| other("no randomness"))?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| other("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, aad: &str, data: &[u8]) -> Result<Vec<u8>, AcmeError> {
        if data.len() < 12 + 16 {
            return Err(other("ciphertext too short"));
        }
        let (nonce, rest) = data.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| other("bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| other("decryption failed (wrong acme.key_env key?)"))?;
        Ok(plain.to_vec())
    }
}

/// The unit of the per-domain order limit: the registrable domain (public
/// suffix plus one label) by the Public Suffix List compiled into the `psl`
/// crate, so `shop.ferrari.co.uk` counts against `ferrari.co.uk` and tenants
/// under the same public suffix (`co.uk`, `github.io`) never share a limit.
/// A name that is itself a public suffix, or a single label, is its own unit.
pub fn registered_domain(name: &str) -> String {
    psl::domain_str(name).unwrap_or(name).to_owned()
}

/// Backoff before retry number `failures`: base·2^(failures-1), capped, ±50 % jitter.
/// When a certificate valid from `not_before` to `not_after` is renewed:
/// between 60 % and 66.7 % of its lifetime (`jitter` in 0..1).
pub fn renewal_point(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0) as f64;
    not_before + (lifetime * (0.6 + jitter.clamp(0.0, 1.0) / 15.0)) as i64
}

pub fn backoff(base: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(30)));
    let capped = exp.min(max);
    capped.mul_f64(jitter.clamp(0.5, 1.5)).min(max)
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
    cache: Arc<TenantCache>,
    base_domains: Vec<String>,
    metrics: Arc<Metrics>,
    gateway_id: String,
    /// This process as a lease owner: the gateway id and a random nonce.
    lease_owner: String,
    slots: Slots,
    account: tokio::sync::Mutex<Option<Account>>,
    wanted: mpsc::UnboundedSender<(String, bool)>,
    wanted_rx: Mutex<Option<mpsc::UnboundedReceiver<(String, bool)>>>,
    in_progress: Mutex<HashSet<String>>,
    /// Handshakes waiting for a name's certificate: a NOTIFY for such a
    /// name loads it even though it is not in memory.
    waiting: Mutex<HashMap<String, usize>>,
    /// One database load per name at a time (handshakes coalesce on it).
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Custom names need an active claim (`custom_domains.verification`):
    /// the scan for missing certificates asks only for claimed names.
    claims_required: bool,
    /// Scans run so far (the missing-names query runs every `MISSING_EVERY`).
    scans: std::sync::atomic::AtomicU64,
    alpn_keys: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
}

impl Acme {
    /// `db` is the pool for order work; the challenge-answer and LISTEN
    /// pools are opened alongside it with the same connect options.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: AcmeConfig,
        db: PgPool,
        key: &[u8; 32],
        store: Arc<CertStore>,
        cache: Arc<TenantCache>,
        base_domains: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Acme {
        let (tx, rx) = mpsc::unbounded_channel();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let gateway_id = format!("{}:{}", host.trim(), std::process::id());
        let opts = (*db.connect_options()).clone();
        let acquire = db.options().get_acquire_timeout();
        let answers = crate::tenant::lookup::lazy_pool(
            opts.clone().application_name("tenant-gateway-acme-answers"),
            ANSWER_CONNECTIONS,
            acquire,
        );
        let listen_db =
            crate::tenant::lookup::lazy_pool(opts.application_name("tenant-gateway-acme-listen"), 1, acquire);
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
            seal: Seal::new(key),
            store,
            cache,
            base_domains,
            metrics,
            lease_owner: format!("{gateway_id}/{:08x}", rand::random::<u32>()),
            gateway_id,
            account: tokio::sync::Mutex::new(None),
            wanted: tx,
            wanted_rx: Mutex::new(Some(rx)),
            in_progress: Mutex::default(),
            waiting: Mutex::default(),
            loading: Mutex::default(),
            claims_required: false,
            scans: std::sync::atomic::AtomicU64::new(0),
            alpn_keys: Mutex::default(),
        }
    }

    /// The scan for missing certificates considers only names with an active
    /// claim (with `custom_domains.verification = "required"`).
    pub fn with_claims_required(mut self, required: bool) -> Acme {
        self.claims_required = required;
        self
    }

    /// Create the gateway's schema (idempotent, serialised across the fleet).
    pub async fn migrate(db: &PgPool) -> Result<(), AcmeError> {
        Ok(crate::schema::migrate(db).await?)
    }

    /// The guard: in the domain table, tenant active, not under a base domain.
    /// A name's order state, for the operator API (`None`: never ordered).
    pub async fn name_state(&self, name: &str) -> Result<Option<serde_json::Value>, AcmeError> {
        let row: Option<(i32, Option<String>, i64, bool, bool)> = sqlx::query_as(
            "SELECT failures, last_error, extract(epoch FROM next_attempt_at)::bigint, force_renew, \
                    coalesce(lease_until > now(), false) \
               FROM tenant_gateway.acme_names WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.answers)
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

    /// Ask the fleet to renew `name` now (as `gateway acme renew`).
    pub async fn renew(&self, name: &str) -> Result<(), AcmeError> {
        force_renewal(&self.db, name).await
    }

    pub async fn eligible(&self, name: &str) -> bool {
        if self.base_domains.iter().any(|b| tenancy::is_under(name, b)) {
            return false;
        }
        matches!(self.cache.resolve(name).await, Resolution::Found(t) if t.status == Status::Active)
    }

    // ---- serving challenges (any gateway) ----

    /// The key authorization for an HTTP-01 token, if a challenge is pending.
    pub async fn http01(&self, token: &str) -> Option<String> {
        if token.is_empty()
            || token.len() > 128
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        self.challenge_answer("http-01", token).await
    }

    /// A pending challenge's key authorization, from the answers' own pool.
    async fn challenge_answer(&self, kind: &'static str, key: &str) -> Option<String> {
        let query = sqlx::query_scalar(
            "SELECT key_authorization FROM tenant_gateway.acme_challenges WHERE kind = $1 AND key = $2",
        )
        .bind(kind)
        .bind(key)
        .fetch_optional(&self.answers);
        match bounded_by(ANSWER_DEADLINE, "reading a challenge answer", query).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(kind, key, error = %e, "ACME: cannot read the challenge answer");
                None
            }
        }
    }

    /// The TLS-ALPN-01 challenge certificate for a name, if a challenge is pending.
    pub async fn alpn_key(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let ka = self.challenge_answer("tls-alpn-01", name).await?;
        if let Some((cached_ka, key)) = self.alpn_keys.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            if *cached_ka == ka {
                return Some(key.clone());
            }
        }
        let key = match alpn_challenge_key(name, &ka) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::warn!(name, error = %e, "cannot build the TLS-ALPN-01 certificate");
                return None;
            }
        };
        self.alpn_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (ka, key.clone()));
        Some(key)
    }

    /// A handshake for `name` found no certificate in memory. A name not
    /// served (the tenant cache says so, negatively cached) costs nothing
    /// more; a served name's stored certificate is loaded (one indexed
    /// query, coalesced per name, under `LOAD_DEADLINE`); an eligible name
    /// without one is ordered, and the handshake waits (bounded) for it.
    pub async fn on_demand(&self, name: &str) {
        if self.store.lookup(name).is_some() || self.served(name).await != Some(true) {
            return;
        }
        if self.load_coalesced(name).await {
            return;
        }
        if !self.eligible(name).await {
            return;
        }
        let _waiting = Waiting::new(&self.waiting, name);
        let _ = self.wanted.send((name.to_owned(), false));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.on_demand_timeout_ms);
        while tokio::time::Instant::now() < deadline {
            if self.store.issued(name).is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(name, "on-demand certificate not ready in time; handshake falls back");
    }

    /// Load `name`'s stored certificate into memory unless a concurrent
    /// handshake already did; whether it is in memory now.
    async fn load_coalesced(&self, name: &str) -> bool {
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone();
        let loaded = {
            let _turn = gate.lock().await;
            if self.store.issued(name).is_some() {
                true
            } else {
                let result = match tokio::time::timeout(LOAD_DEADLINE, self.load_one(name)).await {
                    Ok(Ok(Some(_))) => "loaded",
                    Ok(Ok(None)) => "not_stored",
                    Ok(Err(e)) => {
                        tracing::warn!(name, error = %e, "cannot load a stored certificate");
                        "error"
                    }
                    Err(_) => "timeout",
                };
                self.metrics.certificate_loads.with_label_values(&[result]).inc();
                result == "loaded"
            }
        };
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else is waiting on this gate.
        if Arc::strong_count(&gate) <= 2 {
            loading.remove(name);
        }
        loaded
    }

    // ---- certificates in the database ----

    async fn load_one(&self, name: &str) -> Result<Option<Arc<Cert>>, AcmeError> {
        let row = bounded(
            "loading a certificate",
            sqlx::query(
                "SELECT chain_pem, key_enc, removed_at IS NOT NULL, extract(epoch FROM renew_after)::bigint \
                   FROM tenant_gateway.certificates WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(&self.db),
        )
        .await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<bool, _>(2)? {
            self.unpresent(name);
            return Ok(None);
        }
        let chain: String = row.try_get(0)?;
        let key_enc: Vec<u8> = row.try_get(1)?;
        let key = self.seal.open(&format!("cert:{name}"), &key_enc)?;
        let renew_at: Option<i64> = row.try_get(3)?;
        let cert = Cert::from_pem(chain.as_bytes(), &key, &format!("database:{name}"))
            .map_err(other)?
            .with_renew_at(renew_at);
        self.metrics.cert_expiry.with_label_values(&[name]).set(cert.not_after);
        self.store.add_issued(cert);
        Ok(self.store.issued(name))
    }

    /// Stop presenting a name's issued certificate in this gateway.
    fn unpresent(&self, name: &str) {
        if self.store.remove_issued(name) {
            let _ = self.metrics.cert_expiry.remove_label_values(&[name]);
            tracing::info!(name, "ACME: certificate retired; no longer presented");
        }
    }

    /// Whether `name` is still served (routed to a tenant in any state):
    /// `None` when the database cannot tell.
    async fn served(&self, name: &str) -> Option<bool> {
        match self.cache.resolve(name).await {
            Resolution::Found(t) => Some(t.status != Status::Unverified),
            Resolution::NotFound => Some(false),
            Resolution::Unavailable | Resolution::Misconfigured => None,
        }
    }

    /// Names whose domain rows or claims changed (called after the tenant
    /// cache dropped them): a presented certificate of a name no longer
    /// served is retired fleet-wide; a name that needs one gets an attempt.
    pub fn names_changed(self: &Arc<Self>, names: Vec<String>) {
        let me = self.clone();
        tokio::spawn(async move {
            for name in names {
                if me.base_domains.iter().any(|b| tenancy::is_under(&name, b)) {
                    continue;
                }
                match me.served(&name).await {
                    Some(false) => {
                        if let Err(e) = me.retire(&name).await {
                            tracing::error!(name, error = %e, "ACME: cannot retire the certificate of a removed name");
                        }
                    }
                    Some(true) => {
                        if let Err(e) = me.welcome_back(&name).await {
                            tracing::warn!(name, error = %e, "ACME: cannot clear the name's retirement");
                        }
                        me.spawn_attempt(name, false);
                    }
                    None => {}
                }
            }
        });
    }

    /// A name served (again): a retired certificate of it serves again, and
    /// a refusal by the guard no longer holds its next attempt back.
    async fn welcome_back(&self, name: &str) -> Result<(), AcmeError> {
        bounded(
            "clearing a retirement",
            sqlx::query(
                "UPDATE tenant_gateway.certificates SET removed_at = NULL WHERE name = $1 AND removed_at IS NOT NULL",
            )
            .bind(name)
            .execute(&self.db),
        )
        .await?;
        bounded(
            "clearing a refusal",
            sqlx::query(
                "UPDATE tenant_gateway.acme_names SET next_attempt_at = now(), last_error = NULL
                  WHERE name = $1 AND last_error = $2",
            )
            .bind(name)
            .bind(NOT_ELIGIBLE)
            .execute(&self.db),
        )
        .await?;
        Ok(())
    }

    /// The scan's query for names that need a first certificate: listed
    /// by the domains query, not under a base domain ($1 names, $2
    /// suffixes), no live certificate, not held back, and (with claims)
    /// an active claim; at most $3.
    fn missing_sql(&self) -> String {
        let domains = self.cfg.domains_query.as_deref().unwrap_or_default();
        let domains = domains.trim().trim_end_matches(';');
        let claimed = match self.claims_required {
            true => {
                " AND EXISTS (SELECT 1 FROM tenant_gateway.custom_hostnames h \
                              WHERE h.name = d.name AND h.status = 'active')"
            }
            false => "",
        };
        format!(
            "SELECT d.name FROM ({domains}) AS d(name) \
              WHERE NOT (d.name = ANY($1::text[]) \
                         OR EXISTS (SELECT 1 FROM unnest($2::text[]) AS s(suffix) \
                                     WHERE right(d.name, length(s.suffix)) = s.suffix)) \
                AND NOT EXISTS (SELECT 1 FROM tenant_gateway.certificates c \
                                 WHERE c.name = d.name AND c.removed_at IS NULL) \
                AND NOT EXISTS (SELECT 1 FROM tenant_gateway.acme_names n \
                                 WHERE n.name = d.name AND n.next_attempt_at > now()){claimed} \
              LIMIT $3"
        )
    }

    /// Retire a name's stored certificate: the update NOTIFYs every gateway,
    /// which drop it; its material is deleted after the grace period.
    async fn retire(&self, name: &str) -> Result<(), AcmeError> {
        self.unpresent(name);
        bounded(
            "retiring a certificate",
            sqlx::query(
                "UPDATE tenant_gateway.certificates SET removed_at = now() WHERE name = $1 AND removed_at IS NULL",
            )
            .bind(name)
            .execute(&self.db),
        )
        .await?;
        Ok(())
    }

    /// Delete certificates retired longer than `removed_certificate_grace_secs`.
    async fn delete_retired(&self) -> Result<(), AcmeError> {
        let deleted: Vec<String> = bounded(
            "deleting retired certificates",
            sqlx::query_scalar(
                "WITH gone AS (DELETE FROM tenant_gateway.certificates
                                WHERE removed_at < now() - make_interval(secs => $1) RETURNING name)
                 DELETE FROM tenant_gateway.acme_names n USING gone WHERE n.name = gone.name AND n.lease_owner IS NULL
                 RETURNING n.name",
            )
            .bind(self.cfg.removed_certificate_grace_secs as f64)
            .fetch_all(&self.db),
        )
        .await?;
        if !deleted.is_empty() {
            tracing::info!(names = ?deleted, "ACME: retired certificates deleted after the grace period");
        }
        Ok(())
    }

    /// Reload the certificates in memory (after a LISTEN gap: a renewal or
    /// a retirement may have been missed), one query per name in memory
    /// (at most `certificate_cache_size`).
    async fn refresh_loaded(&self) {
        for name in self.store.issued_names() {
            if let Err(e) = self.load_one(&name).await {
                tracing::warn!(name, error = %e, "ACME: cannot refresh a certificate in memory");
            }
        }
    }

    // ---- the worker ----

    /// Runs for the life of the gateway.
    pub async fn run(self: Arc<Self>) {
        let mut delay = Duration::from_millis(200);
        loop {
            match bounded("preparing the schema", Acme::migrate(&self.db)).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: cannot prepare the tenant_gateway schema; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Nothing is loaded up front: stored certificates come into memory
        // at their first handshake (`on_demand`), so start-up does not grow
        // with the number of names.
        tracing::info!(
            cache_size = self.cfg.certificate_cache_size,
            "ACME: ready; stored certificates load at their first handshake"
        );
        tokio::spawn(self.clone().listen());
        let Some(mut rx) = self.wanted_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(self.cfg.check_interval_secs));
        loop {
            tokio::select! {
                Some((name, force)) = rx.recv() => self.spawn_attempt(name, force),
                _ = tick.tick() => {
                    if let Err(e) = self.scan().await {
                        tracing::warn!(error = %e, "ACME: scan failed");
                    }
                }
            }
        }
    }

    /// NOTIFY: new or retired certificates (load or drop) and forced
    /// renewals. Domain changes arrive through [`Acme::names_changed`].
    async fn listen(self: Arc<Self>) {
        loop {
            let mut l = match bounded("connecting the ACME listener", self.listener()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: cannot LISTEN; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Anything missed while not listening: refresh what is in memory, rescan.
            self.refresh_loaded().await;
            let _ = self.scan().await;
            while let Ok(Some(n)) = l.try_recv().await {
                match n.channel() {
                    // A certificate stored, renewed or retired: in memory (or
                    // awaited by a handshake) it is reloaded (or dropped);
                    // otherwise it loads at its first handshake.
                    CERTS_CHANNEL if self.wanted_here(n.payload()) => {
                        if let Err(e) = self.load_one(n.payload()).await {
                            tracing::error!(name = n.payload(), error = %e, "ACME: cannot load new certificate");
                        }
                    }
                    RENEW_CHANNEL => self.spawn_attempt(n.payload().to_owned(), true),
                    _ => {}
                }
            }
            tracing::warn!("ACME: LISTEN connection lost; reconnecting");
        }
    }

    /// Whether a certificate NOTIFY concerns this gateway's memory.
    fn wanted_here(&self, name: &str) -> bool {
        self.store.issued(name).is_some()
            || self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name)
    }

    /// The listener holds the LISTEN pool's one connection, nobody else's.
    async fn listener(&self) -> Result<PgListener, sqlx::Error> {
        let mut l = PgListener::connect_with(&self.listen_db).await?;
        l.eager_reconnect(false);
        l.listen_all([CERTS_CHANNEL, RENEW_CHANNEL]).await?;
        Ok(l)
    }

    /// Names that lack a certificate, need renewal or were forced.
    async fn scan(self: &Arc<Self>) -> Result<(), AcmeError> {
        self.metrics.acme_scans.inc();
        self.delete_retired().await?;
        // A fixed number of queries whatever the number of names: each
        // returns only what is due (indexes of migration 0003), in batches.
        let nth = self.scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if nth.is_multiple_of(MISSING_EVERY) {
            let suffixes: Vec<String> = self.base_domains.iter().map(|b| format!(".{b}")).collect();
            let missing: Vec<String> = bounded(
                "listing names without a certificate",
                sqlx::query_scalar(&self.missing_sql())
                    .bind(&self.base_domains)
                    .bind(&suffixes)
                    .bind(SCAN_BATCH)
                    .fetch_all(&self.db),
            )
            .await?;
            for name in missing {
                self.spawn_attempt(name, false);
            }
        }
        let due: Vec<String> = bounded(
            "listing renewals due",
            sqlx::query_scalar(
                "SELECT c.name FROM tenant_gateway.certificates c
                  WHERE c.removed_at IS NULL AND c.renew_after <= now()
                    AND NOT EXISTS (SELECT 1 FROM tenant_gateway.acme_names n
                                     WHERE n.name = c.name AND n.next_attempt_at > now())
                  ORDER BY c.renew_after LIMIT $1",
            )
            .bind(SCAN_BATCH)
            .fetch_all(&self.db),
        )
        .await?;
        for name in due {
            self.spawn_attempt(name, false);
        }
        let retries: Vec<String> = bounded(
            "listing retries due",
            sqlx::query_scalar(
                "SELECT name FROM tenant_gateway.acme_names
                  WHERE next_attempt_at <= now() AND failures > 0 AND NOT force_renew
                  ORDER BY next_attempt_at LIMIT $1",
            )
            .bind(SCAN_BATCH)
            .fetch_all(&self.db),
        )
        .await?;
        for name in retries {
            self.spawn_attempt(name, false);
        }
        let forced: Vec<String> = bounded(
            "listing forced renewals",
            sqlx::query_scalar("SELECT name FROM tenant_gateway.acme_names WHERE force_renew").fetch_all(&self.db),
        )
        .await?;
        for name in forced {
            self.spawn_attempt(name, true);
        }
        Ok(())
    }

    fn spawn_attempt(self: &Arc<Self>, name: String, force: bool) {
        if !self
            .in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone())
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.attempt(&name, force).await {
                tracing::warn!(name, error = %e, "ACME: attempt failed");
            }
            me.in_progress.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        });
    }

    async fn attempt(&self, name: &str, force_hint: bool) -> Result<(), AcmeError> {
        if !self.eligible(name).await {
            tracing::debug!(name, "ACME: not eligible; no order");
            // The scan leaves it alone for a while (a change to the name
            // clears this at once: `welcome_back`).
            bounded(
                "holding back a refused name",
                sqlx::query(&format!(
                    "INSERT INTO tenant_gateway.acme_names (name, next_attempt_at, last_error)
                     VALUES ($1, now() + interval '{NOT_ELIGIBLE_RETRY}', $2)
                     ON CONFLICT (name) DO UPDATE SET next_attempt_at = EXCLUDED.next_attempt_at,
                         last_error = EXCLUDED.last_error, updated_at = now()
                      WHERE acme_names.lease_owner IS NULL AND NOT acme_names.force_renew"
                ))
                .bind(name)
                .bind(NOT_ELIGIBLE)
                .execute(&self.db),
            )
            .await?;
            return Ok(());
        }
        bounded(
            "registering the name",
            sqlx::query("INSERT INTO tenant_gateway.acme_names (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .execute(&self.db),
        )
        .await?;
        let (due, forced): (bool, bool) = bounded(
            "reading the name's state",
            sqlx::query_as(
                "SELECT next_attempt_at <= now(), force_renew FROM tenant_gateway.acme_names WHERE name = $1",
            )
            .bind(name)
            .fetch_one(&self.db),
        )
        .await?;
        let now = unix_now();
        if !forced && self.store.issued(name).is_some_and(|c| !c.renewal_due(now)) {
            return Ok(());
        }
        if !due {
            tracing::debug!(name, force_hint, "ACME: backing off");
            return Ok(());
        }
        // Wait for one of this gateway's order slots, holding no connection.
        let _slot = self.slots.acquire().await?;
        // One order per name across the fleet.
        let Some(forced) = self.claim(name).await? else {
            tracing::debug!(
                name,
                "ACME: another gateway holds the order lease (or the name is not due)"
            );
            return Ok(());
        };
        match self.prepare(name, forced).await {
            Ok(Prepared::Order(order_id)) => self.run_order(name, order_id).await,
            Ok(Prepared::NotNeeded) => self.release(name, None).await,
            Ok(Prepared::RateLimited(why)) => {
                tracing::warn!(name, reason = %why, "ACME: rate limit holds back the order for {name}: {why}");
                self.metrics
                    .acme_orders
                    .with_label_values(&[name, "rate_limited"])
                    .inc();
                self.release(name, Some(&why)).await
            }
            Err(e) => {
                if let Err(e) = self.release(name, None).await {
                    tracing::error!(name, error = %e, "ACME: cannot free the order lease; it expires on its own");
                }
                Err(e)
            }
        }
    }

    /// Take the name's order lease if it is due and the lease is free,
    /// expired, or left by this process (which runs one attempt per name at
    /// a time). `Some(force_renew)` when taken.
    async fn claim(&self, name: &str) -> Result<Option<bool>, AcmeError> {
        bounded(
            "claiming the order lease",
            sqlx::query_scalar(
                "UPDATE tenant_gateway.acme_names
                    SET lease_owner = $2, lease_until = now() + make_interval(secs => $3),
                        ordering_since = now(), updated_at = now()
                  WHERE name = $1 AND next_attempt_at <= now()
                    AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until <= now())
              RETURNING force_renew",
            )
            .bind(name)
            .bind(&self.lease_owner)
            .bind(LEASE.as_secs_f64())
            .fetch_optional(&self.db),
        )
        .await
    }

    /// Free the lease without an order; `held_back`: a rate limit's reason.
    async fn release(&self, name: &str, held_back: Option<&str>) -> Result<(), AcmeError> {
        let sql = match held_back {
            None => format!("UPDATE tenant_gateway.acme_names SET {FREE_LEASE} WHERE name = $1 AND lease_owner = $2"),
            Some(_) => format!(
                "UPDATE tenant_gateway.acme_names SET {FREE_LEASE}, next_attempt_at = now() + interval '{RATE_LIMITED_RETRY}',
                     last_error = $3 WHERE name = $1 AND lease_owner = $2"
            ),
        };
        let last_error = held_back.map(|why| format!("rate limited: {why}"));
        let (sql, last_error) = (&sql, &last_error);
        retry_once(QUERY_DEADLINE, "freeing the order lease", || async move {
            sqlx::query(sql)
                .bind(name)
                .bind(&self.lease_owner)
                .bind(last_error)
                .execute(&self.db)
                .await?;
            Ok(())
        })
        .await
    }

    /// Under a fresh lease: re-check (another gateway may have just
    /// finished), apply the rate limits, log the order.
    async fn prepare(&self, name: &str, forced: bool) -> Result<Prepared, AcmeError> {
        let stored = self.load_one(name).await?;
        if !forced && stored.is_some_and(|c| !c.renewal_due(unix_now())) {
            return Ok(Prepared::NotNeeded);
        }
        if let Some(why) = self.rate_limited(name).await? {
            return Ok(Prepared::RateLimited(why));
        }
        let order_id = bounded(
            "logging the order",
            sqlx::query_scalar(
                "INSERT INTO tenant_gateway.acme_orders (name, registered_domain, gateway) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(name)
            .bind(registered_domain(name))
            .bind(&self.gateway_id)
            .fetch_one(&self.db),
        )
        .await?;
        Ok(Prepared::Order(order_id))
    }

    /// The order under `ORDER_DEADLINE`, then its record, whatever happened.
    async fn run_order(&self, name: &str, order_id: i64) -> Result<(), AcmeError> {
        tracing::info!(name, gateway = %self.gateway_id, "ACME: ordering a certificate");
        let issued = match bounded_by(ORDER_DEADLINE, "the order", self.order(name)).await {
            Ok((chain, key_pem)) => self.store_issued(name, order_id, &chain, &key_pem).await,
            Err(e) => Err(e),
        };
        let Err(e) = issued else { return Ok(()) };
        self.metrics.acme_orders.with_label_values(&[name, "failed"]).inc();
        let (failures, wait) = self.record_failure(name, order_id, &e.to_string()).await.map_err(|write| {
            tracing::error!(name, error = %write, order_error = %e, "ACME: cannot record the failed order; its lease expires on its own");
            write
        })?;
        tracing::warn!(name, failures, retry_in_secs = wait.as_secs_f64(), error = %e, "ACME: order failed; keeping the current certificate");
        Ok(())
    }

    /// Store a new certificate and end the attempt as issued (one transaction).
    async fn store_issued(&self, name: &str, order_id: i64, chain: &str, key_pem: &str) -> Result<(), AcmeError> {
        let cert = Cert::from_pem(chain.as_bytes(), key_pem.as_bytes(), name).map_err(other)?;
        let key_enc = self.seal.seal(&format!("cert:{name}"), key_pem.as_bytes())?;
        let (not_before, not_after) = (cert.not_before as f64, cert.not_after as f64);
        // Renewal between 60 % and 66.7 % of the lifetime, spread so that
        // names issued together do not renew together.
        let renew_at = renewal_point(cert.not_before, cert.not_after, rand::random::<f64>());
        let cert = cert.with_renew_at(Some(renew_at));
        let key_enc = &key_enc;
        retry_once(QUERY_DEADLINE, "storing the certificate", || async move {
            let mut tx = self.db.begin().await?;
            sqlx::query(
                "INSERT INTO tenant_gateway.certificates
                     (name, chain_pem, key_enc, not_before, not_after, issued_at, renew_after)
                 VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5), now(), to_timestamp($6))
                 ON CONFLICT (name) DO UPDATE SET chain_pem = EXCLUDED.chain_pem, key_enc = EXCLUDED.key_enc,
                     not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after, issued_at = now(),
                     renew_after = EXCLUDED.renew_after, removed_at = NULL",
            )
            .bind(name)
            .bind(chain)
            .bind(key_enc)
            .bind(not_before)
            .bind(not_after)
            .bind(renew_at as f64)
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "UPDATE tenant_gateway.acme_names SET failures = 0, last_error = NULL, force_renew = false,
                     next_attempt_at = now(), {FREE_LEASE} WHERE name = $1 AND lease_owner = $2"
            ))
            .bind(name)
            .bind(&self.lease_owner)
            .execute(&mut *tx)
            .await?;
            end_order(&mut tx, name, order_id, "issued").await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
        self.metrics.cert_expiry.with_label_values(&[name]).set(cert.not_after);
        self.store.add_issued(cert);
        self.metrics.acme_orders.with_label_values(&[name, "issued"]).inc();
        tracing::info!(name, "ACME: certificate issued and stored");
        Ok(())
    }

    /// End the attempt as failed (one transaction): failures + 1, the error,
    /// the back-off, the lease freed. Returns the failures and the back-off
    /// (none when another gateway has taken over the expired lease).
    async fn record_failure(&self, name: &str, order_id: i64, error: &str) -> Result<(i32, Duration), AcmeError> {
        let jitter = 0.5 + f64::from(rand::random::<u32>()) / f64::from(u32::MAX);
        retry_once(QUERY_DEADLINE, "recording the failed order", || async move {
            let mut tx = self.db.begin().await?;
            let failures: Option<i32> = sqlx::query_scalar(&format!(
                "UPDATE tenant_gateway.acme_names SET failures = failures + 1, last_error = $3, {FREE_LEASE}
                  WHERE name = $1 AND lease_owner = $2 RETURNING failures"
            ))
            .bind(name)
            .bind(&self.lease_owner)
            .bind(error)
            .fetch_optional(&mut *tx)
            .await?;
            let mut wait = Duration::ZERO;
            if let Some(failures) = failures {
                wait = backoff(
                    Duration::from_secs(self.cfg.retry_base_secs),
                    Duration::from_secs(self.cfg.retry_max_secs),
                    u32::try_from(failures).unwrap_or(1),
                    jitter,
                );
                sqlx::query("UPDATE tenant_gateway.acme_names SET next_attempt_at = now() + make_interval(secs => $2) WHERE name = $1")
                    .bind(name)
                    .bind(wait.as_secs_f64())
                    .execute(&mut *tx)
                    .await?;
            }
            end_order(&mut tx, name, order_id, "failed").await?;
            tx.commit().await?;
            Ok((failures.unwrap_or(0), wait))
        })
        .await
    }

    async fn rate_limited(&self, name: &str) -> Result<Option<String>, AcmeError> {
        let (hour, week): (i64, i64) = bounded(
            "counting recent orders",
            sqlx::query_as(
                "SELECT count(*) FILTER (WHERE started_at > now() - interval '1 hour'),
                        count(*) FILTER (WHERE registered_domain = $1 AND started_at > now() - interval '7 days')
                   FROM tenant_gateway.acme_orders WHERE started_at > now() - interval '7 days'",
            )
            .bind(registered_domain(name))
            .fetch_one(&self.db),
        )
        .await?;
        if hour >= i64::from(self.cfg.orders_per_hour) {
            return Ok(Some(format!("{hour} orders in the last hour (acme.orders_per_hour)")));
        }
        if week >= i64::from(self.cfg.orders_per_domain_per_week) {
            return Ok(Some(format!(
                "{week} orders for {} this week (acme.orders_per_domain_per_week)",
                registered_domain(name)
            )));
        }
        Ok(None)
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let account = self.load_or_create_account().await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    fn account_builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        Ok(match &self.cfg.ca_root {
            Some(root) => Account::builder_with_root(root)?,
            None => Account::builder()?,
        })
    }

    /// The stored account for the directory, if any (decrypted).
    async fn stored_account(&self, dir: &str, aad: &str) -> Result<Option<Account>, AcmeError> {
        let stored: Option<Vec<u8>> = bounded(
            "loading the ACME account",
            sqlx::query_scalar("SELECT credentials_enc FROM tenant_gateway.acme_accounts WHERE directory = $1")
                .bind(dir)
                .fetch_optional(&self.db),
        )
        .await?;
        let Some(enc) = stored else { return Ok(None) };
        let creds: AccountCredentials = serde_json::from_slice(&self.seal.open(aad, &enc)?).map_err(other)?;
        Ok(Some(self.account_builder()?.from_credentials(creds).await?))
    }

    /// The stored account, or a new one (stored encrypted). No lock is held
    /// across the CA exchange: when two gateways create one at once, the
    /// first stored wins and the other's stays unused at the CA.
    async fn load_or_create_account(&self) -> Result<Account, AcmeError> {
        let dir = &self.cfg.directory_url;
        let aad = format!("account:{dir}");
        if let Some(account) = self.stored_account(dir, &aad).await? {
            return Ok(account);
        }
        let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
        let eab = match &self.cfg.eab {
            Some(e) => {
                use base64::Engine;
                let raw =
                    std::env::var(&e.hmac_key_env).map_err(|_| other(format!("{} is not set", e.hmac_key_env)))?;
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(raw.trim())
                    .map_err(other)?;
                Some(ExternalAccountKey::new(e.kid.clone(), &key))
            }
            None => None,
        };
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = self
            .account_builder()?
            .create(&new, dir.to_owned(), eab.as_ref())
            .await?;
        let enc = self.seal.seal(&aad, &serde_json::to_vec(&creds).map_err(other)?)?;
        let stored = bounded(
            "storing the ACME account",
            sqlx::query(
                "INSERT INTO tenant_gateway.acme_accounts (directory, credentials_enc) VALUES ($1, $2)
                 ON CONFLICT (directory) DO NOTHING",
            )
            .bind(dir)
            .bind(enc)
            .execute(&self.db),
        )
        .await?;
        if stored.rows_affected() == 0 {
            if let Some(theirs) = self.stored_account(dir, &aad).await? {
                tracing::info!(directory = %dir, "ACME: another gateway stored an account first; using it");
                return Ok(theirs);
            }
        }
        tracing::info!(directory = %dir, "ACME: account created");
        Ok(account)
    }

    /// Try each configured challenge type in turn.
    async fn order(&self, name: &str) -> Result<(String, String), AcmeError> {
        let result = self.order_each(name).await;
        if let Err(e) = &result {
            // The CA no longer knows our account (e.g. it was wiped): start over next time.
            if e.to_string().contains("accountDoesNotExist") {
                tracing::warn!(directory = %self.cfg.directory_url, "ACME: account unknown to the CA; a new one will be created");
                *self.account.lock().await = None;
                bounded(
                    "forgetting the ACME account",
                    sqlx::query("DELETE FROM tenant_gateway.acme_accounts WHERE directory = $1")
                        .bind(&self.cfg.directory_url)
                        .execute(&self.db),
                )
                .await?;
            }
        }
        result
    }

    async fn order_each(&self, name: &str) -> Result<(String, String), AcmeError> {
        let account = self.account().await?;
        let mut last = AcmeError::Other("no challenge type configured".into());
        for kind in &self.cfg.challenges {
            match self.order_with(&account, name, *kind).await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    tracing::warn!(name, challenge = ?kind, error = %e, "ACME: order failed with this challenge");
                    bounded(
                        "clearing challenges",
                        sqlx::query("DELETE FROM tenant_gateway.acme_challenges WHERE name = $1")
                            .bind(name)
                            .execute(&self.db),
                    )
                    .await?;
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn order_with(
        &self,
        account: &Account,
        name: &str,
        kind: ChallengeKind,
    ) -> Result<(String, String), AcmeError> {
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other_status => return Err(other(format!("authorization is {other_status:?}"))),
                }
                let ctype = match kind {
                    ChallengeKind::Http01 => ChallengeType::Http01,
                    ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
                };
                let mut challenge = authz
                    .challenge(ctype)
                    .ok_or_else(|| other(format!("the CA offers no {kind:?} challenge")))?;
                let ka = challenge.key_authorization();
                let (db_kind, key) = match kind {
                    ChallengeKind::Http01 => ("http-01", challenge.token.clone()),
                    ChallengeKind::TlsAlpn01 => ("tls-alpn-01", name.to_owned()),
                };
                bounded(
                    "publishing the challenge",
                    sqlx::query(
                        "INSERT INTO tenant_gateway.acme_challenges (kind, key, name, key_authorization) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, key) DO UPDATE SET key_authorization = EXCLUDED.key_authorization, created_at = now()",
                    )
                    .bind(db_kind)
                    .bind(&key)
                    .bind(name)
                    .bind(ka.as_str())
                    .execute(&self.db),
                )
                .await?;
                challenge.set_ready().await?;
            }
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .timeout(Duration::from_secs(60));
        let status = order.poll_ready(&policy).await?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .and_then(|p| p.detail.clone())
                .unwrap_or_else(|| format!("{status:?}"));
            return Err(other(format!("order not ready: {detail}")));
        }
        let key = rcgen::KeyPair::generate().map_err(other)?;
        let csr = rcgen::CertificateParams::new(vec![name.to_owned()])
            .and_then(|p| p.serialize_request(&key))
            .map_err(other)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&policy).await?;
        Ok((chain, key.serialize_pem()))
    }
}

/// The end of an order attempt inside its final transaction: the order
/// row's result, and the name's challenges gone.
async fn end_order(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
    order_id: i64,
    result: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tenant_gateway.acme_orders SET result = $2 WHERE id = $1")
        .bind(order_id)
        .bind(result)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM tenant_gateway.acme_challenges WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The self-signed certificate carrying the acmeIdentifier extension
/// (RFC 8737), served only to `acme-tls/1` ClientHellos. Its critical
/// extension makes webpki refuse it, so it is built as a `CertifiedKey`.
fn alpn_challenge_key(name: &str, key_authorization: &str) -> Result<CertifiedKey, AcmeError> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(other)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate().map_err(other)?;
    let cert = params.self_signed(&key).map_err(other)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = super::provider().key_provider.load_private_key(der).map_err(other)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `gateway acme status`: every custom domain with its certificate state.
pub async fn status_report(db: &PgPool, cfg: &AcmeConfig, base_domains: &[String]) -> Result<Vec<String>, AcmeError> {
    Acme::migrate(db).await?;
    let mut names: Vec<String> = sqlx::query_scalar(cfg.domains_query.as_deref().unwrap_or_default())
        .fetch_all(db)
        .await?;
    names.retain(|n| !base_domains.iter().any(|b| tenancy::is_under(n, b)));
    let known: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM tenant_gateway.acme_names UNION SELECT name FROM tenant_gateway.certificates",
    )
    .fetch_all(db)
    .await?;
    for k in known {
        if !names.contains(&k) {
            names.push(k);
        }
    }
    names.sort();
    let mut lines = vec![format!("{:<40} {:<10} DETAIL", "DOMAIN", "STATUS")];
    for name in names {
        let cert: Option<(String, bool)> = sqlx::query_as(
            "SELECT to_char(not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'),
                    now() >= not_after - (not_after - not_before) / 3
               FROM tenant_gateway.certificates WHERE name = $1",
        )
        .bind(&name)
        .fetch_optional(db)
        .await?;
        let state: Option<(i32, Option<String>, String, bool, bool)> = sqlx::query_as(
            "SELECT failures, last_error, to_char(next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'),
                    coalesce(lease_until > now(), false), force_renew
               FROM tenant_gateway.acme_names WHERE name = $1",
        )
        .bind(&name)
        .fetch_optional(db)
        .await?;
        let (status, detail) = match (&cert, &state) {
            (_, Some((f, err, next, _, _))) if *f > 0 => (
                "failing",
                format!(
                    "{} failures, last error: {}; next retry {next}{}",
                    f,
                    err.as_deref().unwrap_or("?"),
                    cert.as_ref()
                        .map(|(until, _)| format!("; serving the certificate valid until {until}"))
                        .unwrap_or_default()
                ),
            ),
            (_, Some((_, _, _, true, _))) => ("pending", "order in progress".to_owned()),
            (Some((until, due)), Some((_, _, _, _, forced))) => (
                "valid",
                format!(
                    "until {until}{}",
                    if *forced {
                        " (renewal forced)"
                    } else if *due {
                        " (renewal due)"
                    } else {
                        ""
                    }
                ),
            ),
            (Some((until, _)), None) => ("valid", format!("until {until}")),
            (None, _) => ("none", "no certificate yet".to_owned()),
        };
        lines.push(format!("{name:<40} {status:<10} {detail}"));
    }
    Ok(lines)
}

/// `gateway acme renew <name>`: force a renewal (picked up by one gateway).
pub async fn force_renewal(db: &PgPool, name: &str) -> Result<(), AcmeError> {
    Acme::migrate(db).await?;
    sqlx::query(
        "INSERT INTO tenant_gateway.acme_names (name, force_renew, next_attempt_at) VALUES ($1, true, now())
         ON CONFLICT (name) DO UPDATE SET force_renew = true, next_attempt_at = now(), updated_at = now()",
    )
    .bind(name)
    .execute(db)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(RENEW_CHANNEL)
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let s = Seal::new(&[7u8; 32]);
        let c = s.seal("cert:a.test", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!c.windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(s.open("cert:a.test", &c).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        assert!(s.open("cert:b.test", &c).is_err(), "ciphertext moved to another row");
        assert!(Seal::new(&[8u8; 32]).open("cert:a.test", &c).is_err(), "wrong key");
    }

    #[test]
    fn renewals_spread_between_60_and_67_percent_of_the_lifetime() {
        let (from, to) = (1_000, 1_000 + 90 * 86_400);
        assert_eq!(renewal_point(from, to, 0.0), from + 54 * 86_400);
        let late = renewal_point(from, to, 1.0);
        assert!(late > from + 59 * 86_400 && late <= to - 30 * 86_400, "{late}");
        assert_eq!(renewal_point(from, to, 7.0), late, "jitter is clamped");
        assert_eq!(renewal_point(to, from, 0.5), to, "a nonsense validity renews at once");
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(100));
        assert_eq!(backoff(b, m, 1, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(b, m, 2, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(b, m, 3, 1.0), Duration::from_secs(40));
        assert_eq!(backoff(b, m, 30, 1.0), m);
        assert_eq!(backoff(b, m, 1, 0.5), Duration::from_secs(5));
        assert!(backoff(b, m, 30, 1.5) <= m);
    }

    #[test]
    fn registered_domains() {
        assert_eq!(registered_domain("www.ferrari-cars.com"), "ferrari-cars.com");
        assert_eq!(registered_domain("ferrari-cars.com"), "ferrari-cars.com");
        assert_eq!(registered_domain("localhost"), "localhost");
        // Two tenants under one public suffix are two units, not one.
        assert_eq!(registered_domain("shop.ferrari.co.uk"), "ferrari.co.uk");
        assert_eq!(registered_domain("www.mclaren.co.uk"), "mclaren.co.uk");
        assert_eq!(registered_domain("a.b.ferrari.github.io"), "ferrari.github.io");
        assert_eq!(registered_domain("co.uk"), "co.uk");
        // Not on the list: the last two labels.
        assert_eq!(registered_domain("www.ferrari-cars.test"), "ferrari-cars.test");
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
        let first = slots.acquire().await.unwrap();
        let _second = slots.acquire().await.unwrap();
        assert_eq!((running.get(), waiting.get()), (2, 0));
        // A third waits (it can never finish while both slots are held).
        let mut third = Box::pin(slots.acquire());
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut third)
            .await
            .is_err());
        assert_eq!((running.get(), waiting.get()), (2, 1));
        // A waiter that gives up is no longer counted.
        let mut fourth = Box::pin(slots.acquire());
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

    #[test]
    fn the_lease_outlives_every_bounded_step_of_an_attempt() {
        // Before the order: claim, certificate load, rate limit, order row;
        // after it: the final record, tried twice.
        assert!(LEASE >= ORDER_DEADLINE + QUERY_DEADLINE * 6);
    }

    #[test]
    fn alpn_certificate_is_built() {
        let k = alpn_challenge_key("shop.test", "token.thumbprint").unwrap();
        assert_eq!(k.cert.len(), 1);
    }
}
