//! The one SQL query that maps a host name to a tenant. Configurable (see
//! `tenant.query` / `tenant.preset`); columns by position: schema name,
//! status, optional backend pool, and optionally the tenant's limit
//! overrides (requests per second, burst, max concurrent; NULL: default).
//!
//! Lookups may read a streaming replica or go through a transaction-mode
//! pooler (`database.lookup_url_env`); LISTEN stays on the primary. After a
//! NOTIFY the cache requires answers as fresh as the primary's WAL position
//! at that moment: a replica that has not replayed that far is not asked
//! (the lookup goes to the primary instead), so its older row can never be
//! cached over the change.
//!
//! Queries run on their own runtime thread, at a lower scheduling priority
//! (`database.lookup_nice`): the client work of a lookup (sqlx, two socket
//! round trips) costs more CPU than proxying a request, so under a flood of
//! uncached names it must not take the CPU from cached tenants' requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Column, Executor, PgPool, Row, Statement};

use super::cache::TenantSource;
use super::{Status, Tenant};
use crate::hostnames::policy::HostnameStatus;
use crate::limits::{Limits, Overrides};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("lookup query returned an invalid row for `{host}`: {reason}")]
    BadRow { host: String, reason: String },
    #[error("lookup task failed: {0}")]
    Task(String),
    #[error("no answer within the lookup deadline ({0:?})")]
    Deadline(std::time::Duration),
}

static LOOKUP_RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
static MAINTENANCE_RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();

/// Starts the lookup thread (at niceness `nice`) and the database pools'
/// maintenance thread, so a process that cannot have them refuses to
/// start with that error instead of failing on first use.
pub fn start_threads(nice: i32) -> std::io::Result<()> {
    for (cell, name, nice) in [
        (&LOOKUP_RT, "tenant-lookup", nice),
        (&MAINTENANCE_RT, "db-maintenance", 0),
    ] {
        if cell.get().is_none() {
            let rt = build_one_thread_runtime(name, nice)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start the {name} thread: {e}")))?;
            // Started before anything else asks for it: nothing races this.
            let _ = cell.set(rt);
        }
    }
    Ok(())
}

/// The lookup thread's runtime (also hosts its pool's maintenance task).
fn lookup_runtime(nice: i32) -> &'static tokio::runtime::Runtime {
    LOOKUP_RT.get_or_init(|| one_thread_runtime("tenant-lookup", nice))
}

/// A runtime of one worker thread of its own, at niceness `nice`, where
/// [`start_threads`] was not called first (tests, the CLI's commands).
fn one_thread_runtime(name: &'static str, nice: i32) -> tokio::runtime::Runtime {
    build_one_thread_runtime(name, nice).unwrap_or_else(|e| panic!("cannot start the {name} runtime: {e}"))
}

fn build_one_thread_runtime(name: &'static str, nice: i32) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || lower_priority(nice))
        .enable_all()
        .build()
}

/// Raise the calling thread's niceness (Linux: per thread).
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    if let Err(error) = crate::sys::set_thread_niceness(nice) {
        tracing::warn!(nice, %error, "cannot lower the lookup thread's priority");
    }
}

fn maintenance_runtime() -> &'static tokio::runtime::Runtime {
    MAINTENANCE_RT.get_or_init(|| one_thread_runtime("db-maintenance", 0))
}

/// The server's bound on any one statement of a [`lazy_pool`] (ACME, custom
/// hostnames): a little over their steps' own deadlines (10 s), so the
/// client's deadline is what reports, and a statement it gave up on (a lock
/// wait, a slow scan) ends on the server too. sqlx takes a connection back
/// only once its statement is over, so without this a pool's few
/// connections could all be parked behind statements nobody waits for.
pub const SIDE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A pool that connects on first use, its statements bounded by
/// [`SIDE_STATEMENT_TIMEOUT`]. sqlx spawns the pool's maintenance task on
/// the current runtime; the pool outlives any one Pingora service runtime,
/// so it gets its own.
pub fn lazy_pool(opts: PgConnectOptions, max_connections: u32, connect_timeout: Duration) -> PgPool {
    let _guard = maintenance_runtime().enter();
    pool_options(max_connections, connect_timeout).connect_lazy_with(bounded_statements(opts, SIDE_STATEMENT_TIMEOUT))
}

/// `opts` whose sessions end any statement after `timeout` (the server's
/// `statement_timeout`).
fn bounded_statements(opts: PgConnectOptions, timeout: Duration) -> PgConnectOptions {
    opts.options([("statement_timeout", timeout.as_millis().to_string())])
}

/// Bounded, no idle minimum, fail fast while the database is down.
fn pool_options(max_connections: u32, connect_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(connect_timeout)
}

pub struct Lookup {
    pool: PgPool,
    /// The server's bound on a lookup (`statement_timeout`), on every pool
    /// lookups use.
    query_timeout: Duration,
    query: Arc<str>,
    /// The public tenant's schema (`tenant.public_schema`), the one reserved
    /// name a row may carry.
    public_schema: Option<Arc<str>>,
    limits: Option<Arc<Limits>>,
    /// Records get their metric handles from here.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Lookups read a replica; this is the primary to fall back to.
    replica: Option<Arc<Replica>>,
    /// Named prepared statements (off behind a transaction-mode pooler).
    prepared: bool,
    /// Custom hostnames need an active claim (`custom_domains.verification`).
    claims: Option<Arc<Claims>>,
    rt: &'static tokio::runtime::Runtime,
}

/// The lookup of a custom hostname also reads its claim, in the same query.
struct Claims {
    /// `SELECT claim status, claim tenant, <lookup columns> ...`.
    query: Arc<str>,
    base_domains: Vec<String>,
}

/// The lookup query with the host's claim in front of its columns. The
/// configured query stays a subquery, so any query works unchanged.
pub fn with_claim_columns(query: &str) -> String {
    let inner = query.trim().trim_end_matches(';');
    format!(
        "SELECT h.status, h.tenant, q.* FROM ({inner}) q \
         LEFT JOIN tenant_gateway.custom_hostnames h ON h.name = $1"
    )
}

/// The replica side of lookups.
struct Replica {
    primary: PgPool,
    /// The newest replay position the replica reported.
    seen: AtomicU64,
    /// Lookups sent to the primary because the replica lagged.
    fallbacks: prometheus::IntCounter,
}

/// A `pg_lsn` as text (`16/B374D848`) as a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some(u64::from_str_radix(hi, 16).ok()? << 32 | u64::from_str_radix(lo, 16).ok()?)
}

impl Lookup {
    /// A lazily connecting pool: the gateway starts even while the database is down.
    pub fn new(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
        query_timeout: Duration,
        nice: i32,
    ) -> Result<Lookup, sqlx::Error> {
        let opts: PgConnectOptions = url.parse()?;
        let opts = bounded_statements(opts.application_name("tenant-gateway"), query_timeout);
        // sqlx spawns the pool's maintenance task on the current runtime: the
        // lookup runtime, where its connections are used.
        let rt = lookup_runtime(nice);
        let _guard = rt.enter();
        let pool = pool_options(max_connections, connect_timeout)
            // No ping before every query (a second round trip per lookup):
            // a connection found dead is retried once instead (`find`).
            .test_before_acquire(false)
            .connect_lazy_with(opts);
        Ok(Lookup {
            pool,
            query_timeout,
            query: Arc::from(""),
            public_schema: None,
            limits: None,
            metrics: None,
            replica: None,
            prepared: true,
            claims: None,
            rt,
        })
    }

    /// Lookups read the replica at this lookup's URL; `primary_url` is asked
    /// instead while the replica lags behind the newest NOTIFY.
    pub fn with_replica(
        mut self,
        primary_url: &str,
        connect_timeout: Duration,
        fallbacks: prometheus::IntCounter,
    ) -> Result<Lookup, sqlx::Error> {
        let opts: PgConnectOptions = primary_url.parse()?;
        // The lookups' own statement bound, as on the replica's pool.
        let opts = bounded_statements(opts, self.query_timeout);
        let _guard = self.rt.enter();
        let primary = pool_options(2, connect_timeout)
            .test_before_acquire(false)
            .connect_lazy_with(opts.application_name("tenant-gateway-fallback"));
        self.replica = Some(Arc::new(Replica {
            primary,
            seen: AtomicU64::new(0),
            fallbacks,
        }));
        Ok(self)
    }

    pub fn with_query(mut self, query: &str) -> Lookup {
        self.query = Arc::from(query);
        self
    }

    /// Unnamed statements instead of named prepared ones (a transaction-mode
    /// pooler such as PgBouncer before 1.21 cannot keep prepared statements).
    /// Custom hostnames (outside `base_domains`) route only with an active
    /// claim of the row's tenant.
    pub fn with_claims(mut self, base_domains: &[String]) -> Lookup {
        self.claims = Some(Arc::new(Claims {
            query: with_claim_columns(&self.query).into(),
            base_domains: base_domains.to_vec(),
        }));
        self
    }

    pub fn with_prepared_statements(mut self, prepared: bool) -> Lookup {
        self.prepared = prepared;
        self
    }

    /// Tenants found get their metric handles attached.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Lookup {
        self.metrics = Some(metrics);
        self
    }

    /// Tenants found get their limiter from `limits`.
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Lookup {
        self.limits = Some(limits);
        self
    }

    pub fn with_public_schema(mut self, public: Option<&str>) -> Lookup {
        self.public_schema = public.map(Arc::from);
        self
    }

    /// Check the query against the live database: one parameter, 2, 3 or 6 columns.
    pub async fn check_query(&self) -> Result<(), String> {
        let (pool, query) = (self.pool.clone(), self.query.clone());
        let columns = self
            .rt
            .spawn(async move {
                let stmt = pool.prepare(&query).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(stmt.columns().iter().map(|c| c.name().to_owned()).collect::<Vec<_>>())
            })
            .await
            .map_err(|e| e.to_string())??;
        if ![2, 3, 6].contains(&columns.len()) {
            return Err(format!(
                "returns {} columns; expected schema_name, status[, pool[, rps, burst, max_concurrent]]",
                columns.len()
            ));
        }
        tracing::debug!(?columns, "lookup query checked");
        Ok(())
    }
}

#[async_trait::async_trait]
impl TenantSource for Lookup {
    /// Look one host up, on the lookup thread. `Ok(None)`: not in the domain
    /// table. Dropping the future (the cache's deadline) aborts the query, so
    /// a stuck query gives its pooled connection back.
    async fn find(&self, host: &str, fresh_as_of: u64) -> Result<Option<Tenant>, LookupError> {
        let claimed = self
            .claims
            .as_ref()
            .filter(|c| crate::hostnames::needs_claim(host, &c.base_domains));
        let query = claimed.map_or_else(|| self.query.clone(), |c| c.query.clone());
        let claimed = claimed.is_some();
        let plain = self.query.clone();
        let (pool, name) = (self.pool.clone(), host.to_owned());
        let (public, limits, replica) = (self.public_schema.clone(), self.limits.clone(), self.replica.clone());
        let metrics = self.metrics.clone();
        let prepared = self.prepared;
        let task = self.rt.spawn(async move {
            let pool = match replica {
                Some(r) => r.pool_for(pool, fresh_as_of).await,
                None => pool,
            };
            let found = match find_on(&pool, &query, &name, public.as_deref(), prepared, claimed).await {
                // The claims table does not exist yet (a gateway's first
                // start, before its schema is prepared): no claim is active,
                // so the host is answered as unverified, not as an outage.
                Err(LookupError::Database(sqlx::Error::Database(e)))
                    if claimed && e.code().as_deref() == Some("42P01") =>
                {
                    find_on(&pool, &plain, &name, public.as_deref(), prepared, false)
                        .await?
                        .map(|(mut tenant, overrides)| {
                            tenant.status = Status::Unverified;
                            (tenant, overrides)
                        })
                }
                other => other?,
            };
            Ok(found.map(|(tenant, overrides)| {
                let limiter = limits.as_ref().and_then(|l| l.limiter(tenant.schema(), overrides));
                let tenant = tenant.with_limiter(limiter);
                match &metrics {
                    Some(m) => {
                        let stats = m.tenants.for_tenant(tenant.schema());
                        tenant.with_stats(stats)
                    }
                    None => tenant,
                }
            }))
        });
        let _abort = AbortOnDrop(task.abort_handle());
        task.await.map_err(|e| LookupError::Task(e.to_string()))?
    }
}

impl Replica {
    /// The replica, if it has replayed up to `fresh_as_of` (asked in a
    /// statement of its own, before the lookup's snapshot is taken), else
    /// the primary.
    async fn pool_for(&self, replica: PgPool, fresh_as_of: u64) -> PgPool {
        if self.seen.load(Ordering::SeqCst) >= fresh_as_of {
            return replica;
        }
        let replayed: Result<Option<String>, _> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
            .fetch_one(&replica)
            .await;
        if let Some(lsn) = replayed.ok().flatten().as_deref().and_then(parse_lsn) {
            self.seen.fetch_max(lsn, Ordering::SeqCst);
            if lsn >= fresh_as_of {
                return replica;
            }
        }
        self.fallbacks.inc();
        tracing::debug!(
            fresh_as_of,
            "replica behind the newest NOTIFY: this lookup reads the primary"
        );
        self.primary.clone()
    }
}

/// Aborts a spawned task when dropped (a no-op once it has finished).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A schema a row may name: any name the stamp carries (django-tenants'
/// rule), except PostgreSQL's and the gateway's own schemas, and `public`
/// unless it is the configured public tenant.
pub fn acceptable_schema(schema: &str, public: Option<&str>) -> Result<(), String> {
    if public == Some(schema) {
        return Ok(());
    }
    if !stamp::is_valid_tenant_name(schema) {
        return Err(
            "not a schema name the stamp carries (1-63 bytes; no quotes, `\\`, `;`, NUL, CR or LF; not pg_*)".into(),
        );
    }
    if ["public", "information_schema", tenancy::GATEWAY_SCHEMA].contains(&schema) {
        return Err("reserved schema (set tenant.public_schema to serve the public tenant)".into());
    }
    Ok(())
}

async fn find_on(
    pool: &PgPool,
    query: &str,
    host: &str,
    public: Option<&str>,
    prepared: bool,
    claimed: bool,
) -> Result<Option<(Tenant, Overrides)>, LookupError> {
    let fetch = || sqlx::query(query).persistent(prepared).bind(host).fetch_optional(pool);
    let row = match fetch().await {
        // A pooled connection the server closed (restart, idle kill): sqlx
        // drops it; one retry gets a fresh one.
        Err(sqlx::Error::Io(e)) => {
            tracing::debug!(error = %e, "lookup connection lost; retrying once");
            fetch().await?
        }
        other => other?,
    };
    let Some(row) = row else { return Ok(None) };
    let bad = |reason: String| LookupError::BadRow {
        host: host.to_owned(),
        reason,
    };
    // With claims, the claim's status and tenant come first.
    let at = if claimed { 2 } else { 0 };
    let columns = row.len() - at;
    let schema: String = row.try_get(at).map_err(|e| bad(e.to_string()))?;
    acceptable_schema(&schema, public).map_err(|e| bad(format!("schema `{schema}`: {e}")))?;
    let status: String = row.try_get(at + 1).map_err(|e| bad(e.to_string()))?;
    let mut status = match status.as_str() {
        "active" => Status::Active,
        "suspended" => Status::Suspended,
        "deleted" => Status::Deleted,
        other => return Err(bad(format!("unknown status `{other}`"))),
    };
    if claimed {
        let claim_status: Option<String> = row.try_get(0).map_err(|e| bad(e.to_string()))?;
        let claim_tenant: Option<String> = row.try_get(1).map_err(|e| bad(e.to_string()))?;
        let claim = claim_status
            .as_deref()
            .and_then(HostnameStatus::parse)
            .zip(claim_tenant.as_deref());
        if !crate::hostnames::policy::routes(&schema, claim) {
            status = Status::Unverified;
        }
    }
    let pool: Option<String> = if columns > 2 {
        row.try_get(at + 2).map_err(|e| bad(e.to_string()))?
    } else {
        None
    };
    let limit = |i: usize| -> Result<Option<u32>, LookupError> {
        if columns <= i {
            return Ok(None);
        }
        let v: Option<i32> = row.try_get(at + i).map_err(|e| bad(e.to_string()))?;
        v.map(|v| u32::try_from(v).map_err(|_| bad(format!("limit column {} is negative", i + 1))))
            .transpose()
    };
    let overrides = Overrides {
        rps: limit(3)?,
        burst: limit(4)?,
        max_concurrent: limit(5)?,
    };
    let tenant = Tenant::new(&schema, status, pool.as_deref()).ok_or_else(|| bad("schema name too long".into()))?;
    Ok(Some((tenant, overrides)))
}

#[cfg(test)]
mod tests {
    use super::{acceptable_schema, lazy_pool, parse_lsn, Lookup, SIDE_STATEMENT_TIMEOUT};
    use std::time::Duration;

    #[test]
    fn every_pool_bounds_its_statements_on_the_server() {
        let url = "postgres://u@127.0.0.1:1/db?options=-c%20search_path%3Dx";
        let side = lazy_pool(url.parse().unwrap(), 1, Duration::from_secs(1));
        let want = format!("statement_timeout={}", SIDE_STATEMENT_TIMEOUT.as_millis());
        let options = side.connect_options().get_options().unwrap_or_default().to_owned();
        assert!(options.contains(&want) && options.contains("search_path"), "{options}");
        let lookup = Lookup::new(url, 1, Duration::from_secs(1), Duration::from_millis(750), 0)
            .unwrap()
            .with_replica(
                url,
                Duration::from_secs(1),
                prometheus::IntCounter::new("t", "t").unwrap(),
            )
            .unwrap();
        for pool in [&lookup.pool, &lookup.replica.as_ref().unwrap().primary] {
            let options = pool.connect_options().get_options().unwrap_or_default().to_owned();
            assert!(options.contains("statement_timeout=750"), "{options}");
        }
    }

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn rows_may_name_any_schema_django_tenants_accepts_but_reserved_ones() {
        for ok in ["ferrari", "acme-eu", "Acme.EU", "café", "big tenant"] {
            assert!(acceptable_schema(ok, None).is_ok(), "{ok}");
        }
        for bad in [
            "public",
            "information_schema",
            "tenant_gateway",
            "pg_catalog",
            "PG_x",
            "a;b",
            "a\"b",
            "",
        ] {
            assert!(acceptable_schema(bad, None).is_err(), "{bad}");
        }
        assert!(acceptable_schema("public", Some("public")).is_ok());
        assert!(acceptable_schema("public", Some("www_site")).is_err());
        assert!(acceptable_schema(&"x".repeat(64), None).is_err());
    }
}
