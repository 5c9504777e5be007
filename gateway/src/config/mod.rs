//! Typed gateway configuration (`config/gateway.toml`). The file is read
//! straight into the typed model (`Duration`s from the `_ms`/`_secs` keys,
//! `SocketAddr`s, `IpNet`s, enums: adapters in `units`), so values of the
//! wrong form are refused, each with its key's path, and runtime code never
//! converts; `validate` then checks the model as a whole and reports every
//! problem with its key. Every default lives in this file except those of
//! `[custom_domains]`, which live with their validation in
//! `hostnames::settings`. Secrets (database URL, stamp key) are read from
//! environment variables whose names the config gives.
//!
//! Size: this file is the file schema, every section's struct with its
//! defaults and a doc comment per key (but `[custom_domains]`'s), kept in
//! one place so the whole file format reads top to bottom; validation is in
//! `validate`, the built-in queries in `preset`, the tests in `tests`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};

mod preset;
pub(crate) mod units;
mod validate;

use preset::{DjangoSql, DEFAULT_ACME_DOMAINS, DEFAULT_LOOKUP};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{} config keys are wrong:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl ConfigError {
    /// One error for `errs` (at least one): the error itself if it is the
    /// only one, else all of them, nested lists flattened.
    pub fn all(errs: impl IntoIterator<Item = ConfigError>) -> ConfigError {
        let mut flat: Vec<ConfigError> = Vec::new();
        for e in errs {
            match e {
                ConfigError::Several(inner) => flat.extend(inner),
                e => flat.push(e),
            }
        }
        match flat.len() {
            1 => flat.remove(0),
            _ => ConfigError::Several(flat),
        }
    }

    /// The offending key of an `Invalid` error.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub database: DatabaseConfig,
    pub tenant: TenantConfig,
    pub stamp: StampConfig,
    pub headers: HeadersConfig,
    pub pages: PagesConfig,
    pub tls: TlsConfig,
    pub metrics: MetricsConfig,
    pub acme: AcmeConfig,
    pub limits: LimitsConfig,
    pub admin: AdminConfig,
    /// Custom hostnames: ownership verification before routing.
    pub custom_domains: crate::hostnames::settings::CustomDomainsConfig,
    /// Named backend pools; `default` is required.
    pub pools: BTreeMap<String, PoolConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Public plain-HTTP listener.
    pub http: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`); keep it off public interfaces.
    pub admin: SocketAddr,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Pingora's work-stealing runtime (tasks move between threads). Off:
    /// each thread runs the connections it accepted, like nginx workers;
    /// 20-25 % less CPU per request in `bench/` (see bench/RESULTS.md).
    pub work_stealing: bool,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[serde(rename = "shutdown_grace_secs", with = "units::secs")]
    pub shutdown_grace: Duration,
    /// Unix socket over which a running gateway hands its listening sockets
    /// to a new one started with `--upgrade` (on SIGQUIT). One per gateway
    /// on a host.
    pub upgrade_sock: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Environment variable holding the PostgreSQL URL (the primary: LISTEN,
    /// ACME coordination, and lookups unless `lookup_url_env` is set).
    pub url_env: String,
    /// Environment variable holding a URL for lookups only: a streaming
    /// replica or a pooler. Unset: lookups use `url_env`.
    pub lookup_url_env: Option<String>,
    /// Named prepared statements for lookups; turn off behind a
    /// transaction-mode pooler that cannot keep them (PgBouncer < 1.21).
    pub lookup_prepared_statements: bool,
    pub max_connections: u32,
    /// Bound on acquiring a connection (fails fast while the database is down).
    #[serde(rename = "connect_timeout_ms", with = "units::ms")]
    pub connect_timeout: Duration,
    /// `statement_timeout` for the lookup query.
    #[serde(rename = "query_timeout_ms", with = "units::ms")]
    pub query_timeout: Duration,
    /// Client-side bound on one whole lookup (waiting for a connection and
    /// the query): past it the request gets the 503 page, whatever the
    /// server does (`statement_timeout` needs a server that answers).
    #[serde(rename = "lookup_deadline_ms", with = "units::ms")]
    pub lookup_deadline: Duration,
    /// How often the invalidation listener's connection is probed with a
    /// query (a partitioned database is noticed within interval + timeout).
    #[serde(rename = "health_check_interval_ms", with = "units::ms")]
    pub health_check_interval: Duration,
    /// Deadline of that probe.
    #[serde(rename = "health_check_timeout_ms", with = "units::ms")]
    pub health_check_timeout: Duration,
    /// Niceness (0-19) of the thread that runs lookups of uncached names.
    /// When the CPU is saturated, requests for cached tenants then come
    /// first and a flood of unknown names slows down only itself.
    pub lookup_nice: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryPreset {
    /// Our schema: `public.domains` joined to `public.tenants`.
    Default,
    /// An existing django-tenants database: `customers_domain` joined to `customers_client`.
    DjangoTenants,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Which built-in lookup query to use when `query` is not set.
    pub preset: QueryPreset,
    /// Custom lookup query: `$1` is the normalised host; returns 2, 3 or 6
    /// columns: (schema_name text, status text[, pool text[, rps, burst,
    /// max_concurrent]]), the last three the tenant's limit overrides
    /// (NULL: the default).
    pub query: Option<String>,
    /// LISTEN channel carrying invalidated host names.
    pub notify_channel: String,
    /// Look up `example.com` for `www.example.com`, as django-tenants'
    /// `remove_www` does (any leading `www.`). Default: on with the
    /// django-tenants preset, off otherwise.
    pub strip_www: Option<bool>,
    /// The schema whose domains are served as the public tenant (stamped
    /// with this name), as django-tenants' `PUBLIC_SCHEMA_NAME`. Default:
    /// `public` with the django-tenants preset; none otherwise (then a row
    /// naming a reserved schema is refused as misconfigured).
    pub public_schema: Option<String>,
    /// The django-tenants preset's tables and columns.
    pub django: DjangoConfig,
    /// Base domains of the service (`myapp.com` for `*.myapp.com`).
    pub base_domains: Vec<String>,
    /// Pool for the bare base domain (django-tenants' public tenant), if any.
    pub landing_pool: Option<String>,
    pub cache: CacheConfig,
}

/// Where a django-tenants app keeps its tenants and domains (the tables of
/// `TENANT_MODEL` and `TENANT_DOMAIN_MODEL`: `<app_label>_<model>`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DjangoConfig {
    /// Table of `TENANT_MODEL` (columns `id`, `schema_name`).
    pub tenant_table: String,
    /// Table of `TENANT_DOMAIN_MODEL` (columns `id`, `domain`, `tenant_id`).
    pub domain_table: String,
    /// A boolean column of the tenant table: false serves the `suspended`
    /// page. None: every tenant is active.
    pub active_column: Option<String>,
}

impl Default for DjangoConfig {
    fn default() -> Self {
        DjangoConfig {
            tenant_table: "customers_client".into(),
            domain_table: "customers_domain".into(),
            active_column: None,
        }
    }
}

/// A table (optionally `schema.table`) or column name, quoted for SQL.
pub fn quoted_ident(name: &str) -> Option<String> {
    let part_ok = |p: &str| {
        let mut b = p.bytes();
        b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
            && p.len() <= 63
    };
    let parts: Vec<&str> = name.split('.').collect();
    (parts.len() <= 2 && parts.iter().all(|p| part_ok(p))).then(|| {
        parts
            .iter()
            .map(|p| tenancy::quote_ident(p))
            .collect::<Vec<_>>()
            .join(".")
    })
}

/// Longest `limits.lingering_close_ms` (a lingering connection keeps its
/// place under the connection caps).
pub const MAX_LINGER: Duration = Duration::from_secs(300);

/// Upper bound of the cache's time settings (its clock is 32-bit).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Most worker threads `listen.threads` may ask for (each is a runtime and
/// an OS thread; past what the OS grants, start-up would fail in Pingora).
pub const MAX_THREADS: usize = 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bound on cached known hosts.
    pub max_entries: u64,
    /// Bound on cached unknown hosts (separate, so floods cannot evict tenants).
    pub negative_max_entries: u64,
    #[serde(rename = "positive_ttl_secs", with = "units::secs")]
    pub positive_ttl: Duration,
    #[serde(rename = "negative_ttl_secs", with = "units::secs")]
    pub negative_ttl: Duration,
    /// While the database is unreachable, serve cached tenants up to this age.
    #[serde(rename = "max_stale_secs", with = "units::secs")]
    pub max_stale: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StampConfig {
    /// The key the gateway signs with (see docs/stamp.md).
    pub signing_key: stamp::KeyConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Peers (CIDRs) whose X-Forwarded-* / Forwarded headers are appended to
    /// rather than overwritten.
    #[serde(with = "units::nets")]
    pub trusted_proxies: Vec<IpNet>,
    /// Forwarding headers the gateway sets. One left out is still removed
    /// from what the client sent (never passed on unchecked); each costs
    /// its value's string and a header write on every request.
    pub forward: Vec<ForwardHeader>,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            trusted_proxies: Vec::new(),
            forward: vec![
                ForwardHeader::Forwarded,
                ForwardHeader::XForwardedFor,
                ForwardHeader::XForwardedProto,
                ForwardHeader::XForwardedHost,
            ],
        }
    }
}

/// A forwarding header (`headers.forward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardHeader {
    /// RFC 7239 `Forwarded: for=…;host=…;proto=…`.
    Forwarded,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagesConfig {
    /// Status for tombstoned tenants: 404 (default, reveals nothing) or 410.
    pub deleted_status: u16,
    /// Replace the built-in page bodies: one entry per kind (`bad_request`,
    /// `not_found`, `suspended`, `deleted`, `unavailable`, `misdirected`,
    /// `bad_gateway`, `gateway_timeout`, `misconfigured`, `rate_limited`,
    /// `unverified`, `busy`, `request_timeout`, `payload_too_large`).
    pub custom: BTreeMap<crate::pages::PageKind, PageFiles>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PageFiles {
    pub html_file: Option<PathBuf>,
    pub json_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Distinct tenant label values; further tenants are folded into `other`.
    pub max_tenant_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_tenant_labels: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ChallengeKind {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// External account binding (some CAs require it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EabConfig {
    pub kid: String,
    /// Environment variable holding the base64url HMAC key.
    pub hmac_key_env: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Obtain and renew certificates for tenants' custom domains.
    pub enabled: bool,
    /// ACME directory (Let's Encrypt production by default; staging:
    /// <https://acme-staging-v02.api.letsencrypt.org/directory>).
    pub directory_url: String,
    /// Contact URIs, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// PEM file with the root to trust for the directory's HTTPS (e.g. Pebble's);
    /// the system roots when absent.
    pub ca_root: Option<PathBuf>,
    pub eab: Option<EabConfig>,
    /// Challenge types in order of preference; the next is tried when one fails.
    pub challenges: Vec<ChallengeKind>,
    /// Environment variable holding the 32-byte key (64 hex digits) that
    /// encrypts private keys and account credentials at rest.
    pub key_env: String,
    /// Environment variables holding further keys that only decrypt: secrets
    /// sealed with them still open, new ones are sealed with `key_env`'s
    /// (a key rotation, docs/operations.md; `gateway acme rekey` re-seals).
    pub decrypt_key_envs: Vec<String>,
    /// Names that need certificates: `SELECT <domain>` rows; active tenants
    /// only. Default: derived from `tenant.preset` (see `Config::acme_domains_query`).
    pub domains_query: Option<String>,
    /// How often to look for missing, expiring or due-for-retry certificates.
    #[serde(rename = "check_interval_secs", with = "units::secs")]
    pub check_interval: Duration,
    /// How long a handshake for an eligible name without a certificate waits.
    #[serde(rename = "on_demand_timeout_ms", with = "units::ms")]
    pub on_demand_timeout: Duration,
    /// Retry backoff after a failed order: base doubling per failure, capped, with jitter.
    #[serde(rename = "retry_base_secs", with = "units::secs")]
    pub retry_base: Duration,
    #[serde(rename = "retry_max_secs", with = "units::secs")]
    pub retry_max: Duration,
    /// New orders allowed per hour, across all names.
    pub orders_per_hour: u32,
    /// New orders allowed per hour for one tenant's names (at most
    /// `orders_per_hour`): its share, so one tenant cannot spend the
    /// fleet's budget.
    pub orders_per_tenant_per_hour: u32,
    /// New orders allowed per week per registered domain (Let's Encrypt allows 50).
    pub orders_per_domain_per_week: u32,
    /// Orders this gateway runs at once; further names wait for a slot.
    pub max_concurrent_orders: u32,
    /// How long a retired certificate (its name removed: no longer
    /// presented) stays stored before it is deleted.
    #[serde(rename = "removed_certificate_grace_secs", with = "units::secs")]
    pub removed_certificate_grace: Duration,
    /// Issued certificates kept in memory (the rest load from the database
    /// at their first handshake).
    pub certificate_cache_size: usize,
    /// Challenge lookups (HTTP-01 tokens, `acme-tls/1` handshakes) one
    /// client address (IPv6: its /64) may cause per second, with a burst of
    /// twice that; 0: no limit. Each costs a query on the challenge
    /// answers' two connections, which the CA's validations need.
    pub challenge_rate: u32,
    /// Stored certificates one client address (IPv6: its /64) may have
    /// loaded per second by handshakes for names not in memory, with a
    /// burst of twice that; 0: no limit. Each load is a query on the ACME
    /// connections, which every tenant's first handshakes and the orders
    /// need.
    pub load_rate: u32,
}

/// Most `acme.challenge_rate` and `acme.load_rate` may be (the burst,
/// twice that, must fit a u32).
pub const MAX_CHALLENGE_RATE: u32 = 1_000_000;

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: false,
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".into(),
            contact: Vec::new(),
            ca_root: None,
            eab: None,
            challenges: vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
            key_env: "TG_CERT_KEY".into(),
            decrypt_key_envs: Vec::new(),
            domains_query: None,
            check_interval: Duration::from_secs(60),
            on_demand_timeout: Duration::from_millis(8_000),
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(86_400),
            orders_per_hour: 50,
            orders_per_tenant_per_hour: 10,
            orders_per_domain_per_week: 20,
            max_concurrent_orders: 4,
            removed_certificate_grace: Duration::from_secs(86_400),
            certificate_cache_size: 10_000,
            challenge_rate: 20,
            load_rate: 20,
        }
    }
}

/// The admin listener and the operator API on it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Environment variable holding the operator API's bearer token (at
    /// least 16 characters). Unset: the API is off (404).
    pub token_env: Option<String>,
    /// `/metrics` also asks for the token (needs `token_env`).
    pub metrics_token: bool,
    /// Open connections on the admin listener; more are closed at accept.
    pub max_connections: usize,
    /// Open admin connections per client address (IPv6: per /64); more
    /// are closed at accept. `None`: [`AdminConfig::max_connections_per_ip`].
    #[serde(rename = "max_connections_per_ip")]
    pub per_ip: Option<usize>,
}

impl AdminConfig {
    /// Admin connections one client address may hold: as configured, or a
    /// quarter of `max_connections` (at least 1), so one stuck scraper or
    /// leaking script cannot keep the others (Prometheus, a load
    /// balancer's `/readyz`) out.
    pub fn max_connections_per_ip(&self) -> usize {
        self.per_ip.unwrap_or((self.max_connections / 4).max(1))
    }
}

/// Most connections `admin.max_connections` may allow: the listener is
/// for a few scrapers and operators, and its sockets come out of the same
/// file descriptors as the public listeners'.
pub const MAX_ADMIN_CONNECTIONS: usize = 4096;

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token_env: None,
            metrics_token: false,
            max_connections: 64,
            per_ip: None,
        }
    }
}

/// Bounds on what one client can hold on the public listeners (see
/// docs/operations.md, "Limits and timeouts").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open connections per public listener. Default: derived from the file
    /// descriptor limit (a quarter of it, less a reserve, each).
    pub max_connections: Option<usize>,
    /// Open connections per client address (IPv6: per /64), both public
    /// listeners together. Default: max_connections / 16, at least 64 and
    /// at most max_connections.
    pub max_connections_per_ip: Option<usize>,
    /// From accept (or a keep-alive request's first byte) to the end of the
    /// request head; past it the connection is cut.
    #[serde(rename = "request_head_timeout_ms", with = "units::ms")]
    pub request_head_timeout: Duration,
    /// A keep-alive connection with no next request is closed after this.
    #[serde(rename = "idle_timeout_ms", with = "units::ms")]
    pub idle_timeout: Duration,
    /// A response the client takes none of for this long is cut: the
    /// connection (a full socket), or the HTTP/2 stream (a closed window).
    #[serde(rename = "send_timeout_ms", with = "units::ms")]
    pub send_timeout: Duration,
    /// Minimum average request-body rate in bytes per second, counting only
    /// time spent waiting for the client; 0 disables.
    pub min_body_rate: u64,
    /// Waiting time a body may take before the minimum rate applies.
    #[serde(rename = "body_rate_grace_ms", with = "units::ms")]
    pub body_rate_grace: Duration,
    /// A request body of at most this many bytes (its `Content-Length`) is
    /// read whole before a backend is chosen, so a slow client holds no
    /// backend worker while it sends; 0: every body is streamed. At most
    /// 1 GiB.
    pub request_body_buffer_bytes: u64,
    /// What the bodies being read first may hold at once, in MiB; past it
    /// a body is streamed.
    pub request_body_buffer_total_mib: u64,
    /// A request body larger than this many bytes is refused with 413: by
    /// its `Content-Length` before any of it is read, or, without one, once
    /// that many bytes have come. 0: no bound.
    pub max_request_body_bytes: u64,
    /// A connection closed on a request body not read (a 413, a 502
    /// during an upload) reads and drops what the client still sends for at
    /// most this long, so the client reads the answer instead of a reset;
    /// 0: closed at once.
    #[serde(rename = "lingering_close_ms", with = "units::ms")]
    pub lingering_close: Duration,
    /// A response body of 16 KiB to this many bytes (its `Content-Length`)
    /// is taken from the backend whole before the client has it, so a slow
    /// reader holds no backend worker; 0: every response is streamed.
    /// Bodies without a length and responses saying `X-Accel-Buffering: no`
    /// are always streamed. At most 1 GiB.
    pub response_body_buffer_bytes: u64,
    /// What the response bodies being held may hold at once, in MiB; past
    /// it a body is streamed.
    pub response_body_buffer_total_mib: u64,
    /// Per-tenant fairness defaults (a tenant's row may override them).
    pub tenant: TenantLimitsConfig,
    /// Per client address within a tenant.
    pub client: ClientLimitsConfig,
}

/// `[limits.tenant]`: each tenant's requests per second (token bucket) and
/// requests in flight to the backends, per gateway process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimitsConfig {
    /// Requests per second; 0: unlimited.
    pub rps: u32,
    /// Requests allowed at once above the rate (bucket size); default: rps.
    pub burst: Option<u32>,
    /// Requests in flight to the backends; 0: unlimited.
    pub max_concurrent: u32,
    /// How long a request over max_concurrent waits for a slot before 503.
    #[serde(rename = "queue_timeout_ms", with = "units::ms")]
    pub queue_timeout: Duration,
    /// Requests of one tenant waiting for a slot at once; more get 503 at once.
    pub max_queued: u32,
}

impl Default for TenantLimitsConfig {
    fn default() -> Self {
        TenantLimitsConfig {
            rps: 0,
            burst: None,
            max_concurrent: 0,
            queue_timeout: Duration::from_millis(100),
            max_queued: 64,
        }
    }
}

/// `[limits.client]`: requests per second of one client address within one
/// tenant (so a tenant's abusive client does not spend the tenant's budget).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimitsConfig {
    /// Requests per second; 0: off.
    pub rps: u32,
    /// Default: rps.
    pub burst: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: None,
            max_connections_per_ip: None,
            request_head_timeout: Duration::from_millis(10_000),
            idle_timeout: Duration::from_millis(60_000),
            send_timeout: Duration::from_millis(60_000),
            min_body_rate: 500,
            body_rate_grace: Duration::from_millis(10_000),
            request_body_buffer_bytes: 8 << 20,
            request_body_buffer_total_mib: 128,
            max_request_body_bytes: 0,
            lingering_close: Duration::from_millis(5_000),
            response_body_buffer_bytes: 8 << 20,
            response_body_buffer_total_mib: 256,
            tenant: TenantLimitsConfig::default(),
            client: ClientLimitsConfig::default(),
        }
    }
}

/// File descriptors kept for everything but client connections (database,
/// backends' health checks, certificates, logs).
const FD_RESERVE: u64 = 256;

/// The connection caps in effect for a file descriptor limit: each client
/// connection may hold a backend connection too, over two public listeners.
pub fn connection_caps(cfg: &LimitsConfig, nofile: u64) -> (usize, usize) {
    let derived = usize::try_from(nofile.saturating_sub(FD_RESERVE) / 4)
        .unwrap_or(usize::MAX)
        .max(1);
    let total = cfg.max_connections.unwrap_or(derived);
    let per_ip = cfg.max_connections_per_ip.unwrap_or((total / 16).max(64).min(total));
    (total, per_ip)
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownSni {
    /// Fail the handshake with an alert.
    Alert,
    /// Present `tls.default_certificate`.
    Default,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// HTTPS listener; TLS is off when absent.
    pub listen: Option<SocketAddr>,
    /// Certificates loaded at start and on SIGHUP (names come from their SANs).
    pub certificates: Vec<CertFiles>,
    /// Directory of `<name>.pem` + `<name>.key` pairs, loaded at start and on SIGHUP.
    pub cert_dir: Option<PathBuf>,
    /// What a ClientHello for a name without a certificate gets.
    pub unknown_sni: UnknownSni,
    /// Certificate for unknown names when `unknown_sni = "default"` (use one
    /// that names no tenant).
    pub default_certificate: Option<CertFiles>,
    /// Answer plain HTTP with 308 to HTTPS.
    pub redirect_http: bool,
    /// Port written into redirects (default: the port of `tls.listen`; omitted when 443).
    pub redirect_port: Option<u16>,
    /// Paths served over plain HTTP instead of redirected: each exempts
    /// itself and everything below it, matched on whole segments of the
    /// normalised path (`/healthz` exempts `/healthz` and `/healthz/x`, not
    /// `/healthzzz`). `/.well-known/acme-challenge/` is exempt when ACME is on.
    pub redirect_exempt: Vec<String>,
    /// TLS session resumption (tickets and a session cache).
    pub session_resumption: bool,
    #[serde(rename = "handshake_timeout_ms", with = "units::ms")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: None,
            certificates: Vec::new(),
            cert_dir: None,
            unknown_sni: UnknownSni::Alert,
            default_certificate: None,
            redirect_http: true,
            redirect_port: None,
            redirect_exempt: Vec::new(),
            session_resumption: true,
            handshake_timeout: Duration::from_millis(10_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `host:port` of each backend (plain HTTP).
    pub backends: Vec<SocketAddr>,
    #[serde(default = "defaults::health_path")]
    pub health_check_path: String,
    /// Host header of the health check (a Django app answers only hosts in
    /// its ALLOWED_HOSTS).
    #[serde(default = "defaults::health_host")]
    pub health_check_host: String,
    /// Statuses that count as healthy.
    #[serde(default = "defaults::health_statuses")]
    pub health_check_statuses: Vec<u16>,
    #[serde(default = "defaults::health_interval")]
    #[serde(rename = "health_check_interval_ms", with = "units::ms")]
    pub health_check_interval: Duration,
    /// Consecutive failures before a backend is ejected / successes before re-admitted.
    #[serde(default = "defaults::health_threshold")]
    pub health_check_threshold: usize,
    #[serde(default = "defaults::connect_timeout")]
    #[serde(rename = "connect_timeout_ms", with = "units::ms")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::read_timeout")]
    #[serde(rename = "read_timeout_ms", with = "units::ms")]
    pub read_timeout: Duration,
    #[serde(default = "defaults::write_timeout")]
    #[serde(rename = "write_timeout_ms", with = "units::ms")]
    pub write_timeout: Duration,
    /// How long an idle upstream keep-alive connection is kept.
    #[serde(default = "defaults::idle_timeout")]
    #[serde(rename = "idle_timeout_secs", with = "units::secs")]
    pub idle_timeout: Duration,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn health_path() -> String {
        "/healthz".into()
    }
    pub(super) fn health_host() -> String {
        "localhost".into()
    }
    pub(super) fn health_statuses() -> Vec<u16> {
        vec![200]
    }
    pub(super) fn health_interval() -> Duration {
        Duration::from_millis(1000)
    }
    pub(super) fn health_threshold() -> usize {
        2
    }
    pub(super) fn connect_timeout() -> Duration {
        Duration::from_millis(1000)
    }
    pub(super) fn read_timeout() -> Duration {
        Duration::from_millis(30_000)
    }
    pub(super) fn write_timeout() -> Duration {
        Duration::from_millis(30_000)
    }
    pub(super) fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            threads: 2,
            work_stealing: false,
            shutdown_grace: Duration::from_secs(10),
            upgrade_sock: PathBuf::from("/tmp/tenant-gateway-upgrade.sock"),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url_env: "DATABASE_URL".into(),
            lookup_url_env: None,
            lookup_prepared_statements: true,
            max_connections: 4,
            connect_timeout: Duration::from_millis(1000),
            query_timeout: Duration::from_millis(2000),
            lookup_deadline: Duration::from_millis(2500),
            health_check_interval: Duration::from_millis(1000),
            health_check_timeout: Duration::from_millis(2000),
            lookup_nice: 10,
        }
    }
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            preset: QueryPreset::Default,
            query: None,
            notify_channel: "tenant_gateway".into(),
            strip_www: None,
            public_schema: None,
            django: DjangoConfig::default(),
            base_domains: Vec::new(),
            landing_pool: None,
            cache: CacheConfig::default(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
            negative_max_entries: 10_000,
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            max_stale: Duration::from_secs(3600),
        }
    }
}

impl Default for StampConfig {
    fn default() -> Self {
        StampConfig {
            signing_key: stamp::KeyConfig {
                id: "k1".into(),
                secret_env: "TG_STAMP_KEY_K1".into(),
            },
        }
    }
}

impl Default for PagesConfig {
    fn default() -> Self {
        PagesConfig {
            deleted_status: 404,
            custom: BTreeMap::new(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The file schema read into the typed model (durations, addresses,
    /// networks, page kinds, enums); a value of the wrong type or form is
    /// reported with its key's path (`pools.default.backends[0]: …`), every
    /// such key at once, one per line (`toml_keys::parse`).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml_keys::parse(text)
    }

    /// The lookup query in effect.
    pub fn lookup_query(&self) -> String {
        match (&self.tenant.query, self.tenant.preset) {
            (Some(q), _) => q.clone(),
            (None, QueryPreset::Default) => DEFAULT_LOOKUP.into(),
            (None, QueryPreset::DjangoTenants) => DjangoSql::new(&self.tenant.django).lookup(),
        }
    }

    /// The ACME domains query in effect.
    pub fn acme_domains_query(&self) -> String {
        match (&self.acme.domains_query, self.tenant.preset) {
            (Some(q), _) => q.clone(),
            (None, QueryPreset::Default) => DEFAULT_ACME_DOMAINS.into(),
            (None, QueryPreset::DjangoTenants) => DjangoSql::new(&self.tenant.django).acme_domains(),
        }
    }

    /// The limits registry's settings.
    pub fn limits_settings(&self) -> crate::limits::LimitsSettings {
        let t = &self.limits.tenant;
        let c = &self.limits.client;
        crate::limits::LimitsSettings {
            defaults: crate::limits::LimitSpec {
                rps: t.rps,
                burst: t.burst.unwrap_or(t.rps).max(1),
                max_concurrent: t.max_concurrent,
            },
            queue_timeout: t.queue_timeout,
            max_queued: t.max_queued,
            client_rps: c.rps,
            client_burst: c.burst.unwrap_or(c.rps).max(1),
        }
    }

    /// `[acme]` with the domains query in effect filled in.
    pub fn acme_effective(&self) -> AcmeConfig {
        AcmeConfig {
            domains_query: Some(self.acme_domains_query()),
            ..self.acme.clone()
        }
    }

    /// Whether a leading `www.` is stripped before the lookup.
    pub fn strip_www(&self) -> bool {
        self.tenant
            .strip_www
            .unwrap_or(self.tenant.preset == QueryPreset::DjangoTenants)
    }

    /// The public tenant's schema, if any.
    pub fn public_schema(&self) -> Option<&str> {
        match (&self.tenant.public_schema, self.tenant.preset) {
            (Some(s), _) => Some(s),
            (None, QueryPreset::DjangoTenants) => Some("public"),
            (None, QueryPreset::Default) => None,
        }
    }

    /// The operator API's token, if the API is on.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(var) = &self.admin.token_env else {
            return Ok(None);
        };
        let token = std::env::var(var)
            .map_err(|_| invalid("admin.token_env", format!("environment variable `{var}` is not set")))?;
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "admin.token_env",
                format!("`{var}` must hold at least 16 visible ASCII characters"),
            ));
        }
        Ok(Some(token))
    }

    /// The keys of secrets at rest (ACME): `acme.key_env`'s seals and
    /// opens, each of `acme.decrypt_key_envs` only opens. Every variable
    /// that is unset, not 64 hex digits or a key given twice is named.
    pub fn acme_keys(&self) -> Result<AcmeKeys, ConfigError> {
        self.acme_keys_from(|var| std::env::var(var).ok())
    }

    /// [`Config::acme_keys`] with the environment as `env`.
    fn acme_keys_from(&self, env: impl Fn(&str) -> Option<String>) -> Result<AcmeKeys, ConfigError> {
        let read = |key: String, var: &str| -> Result<[u8; 32], ConfigError> {
            let raw = env(var).ok_or_else(|| invalid(&key, format!("environment variable `{var}` is not set")))?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(raw.trim(), &mut bytes)
                .map_err(|_| invalid(&key, format!("`{var}` must hold 64 hex digits (32 bytes)")))?;
            Ok(bytes)
        };
        let mut errs = Vec::new();
        let seal = read("acme.key_env".into(), &self.acme.key_env)
            .map_err(|e| errs.push(e))
            .ok();
        // The EAB key is read only when an account is created, long after
        // start: checked here, so a bad one refuses the start.
        if let Some(eab) = &self.acme.eab {
            use base64::Engine;
            let var = &eab.hmac_key_env;
            match env(var) {
                None => errs.push(invalid(
                    "acme.eab.hmac_key_env",
                    format!("environment variable `{var}` is not set"),
                )),
                Some(raw) => {
                    if base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(raw.trim())
                        .is_err()
                    {
                        errs.push(invalid(
                            "acme.eab.hmac_key_env",
                            format!("`{var}` must hold the CA's HMAC key in base64url without padding"),
                        ));
                    }
                }
            }
        }
        let mut open_also: Vec<[u8; 32]> = Vec::new();
        for (i, var) in self.acme.decrypt_key_envs.iter().enumerate() {
            let key = format!("acme.decrypt_key_envs[{i}]");
            match read(key.clone(), var) {
                // The same key twice is a rotation step gone wrong (the old
                // key missing): secrets sealed with it would not open.
                Ok(k) if seal == Some(k) || open_also.contains(&k) => errs.push(invalid(
                    key,
                    format!("`{var}` holds a key given earlier (acme.key_env or another entry)"),
                )),
                Ok(k) => open_also.push(k),
                Err(e) => errs.push(e),
            }
        }
        match (seal, errs.len()) {
            (Some(seal), 0) => Ok(AcmeKeys { seal, open_also }),
            _ => Err(ConfigError::all(errs)),
        }
    }

    /// Resolve the environment: database URL and signing key.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        let url = self.database_url();
        let key =
            stamp::Key::from_config(&self.stamp.signing_key).map_err(|e| invalid("stamp.signing_key", e.to_string()));
        let lookup_url = match &self.database.lookup_url_env {
            None => Ok(None),
            Some(var) => std::env::var(var)
                .map_err(|_| {
                    invalid(
                        "database.lookup_url_env",
                        format!("environment variable `{var}` is not set"),
                    )
                })
                .and_then(|u| match u.parse::<sqlx::postgres::PgConnectOptions>() {
                    Ok(_) => Ok(Some(u)),
                    Err(e) => Err(invalid(
                        "database.lookup_url_env",
                        format!("`{var}` is not a valid PostgreSQL URL: {e}"),
                    )),
                }),
        };
        match (url, key, lookup_url) {
            (Ok(database_url), Ok(key), Ok(lookup_url)) => Ok(Secrets {
                lookup_url,
                database_url,
                signer: stamp::Signer::new(key),
            }),
            (url, key, lookup_url) => Err(ConfigError::all(
                [url.err(), key.err(), lookup_url.err()].into_iter().flatten(),
            )),
        }
    }

    /// `database.url_env`'s URL, checked.
    fn database_url(&self) -> Result<String, ConfigError> {
        let var = &self.database.url_env;
        let url = std::env::var(var)
            .map_err(|_| invalid("database.url_env", format!("environment variable `{var}` is not set")))?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "database.url_env",
                format!("`{var}` must hold a postgres:// or postgresql:// URL"),
            ));
        }
        url.parse::<sqlx::postgres::PgConnectOptions>().map_err(|e| {
            invalid(
                "database.url_env",
                format!("`{var}` is not a valid PostgreSQL URL: {e}"),
            )
        })?;
        Ok(url)
    }

    /// Everything the environment must give, each variable's problem
    /// named by its key (not only the first): the secrets, the admin
    /// token, and with ACME on its keys.
    pub fn environment(&self) -> Result<(Secrets, Option<String>, Option<AcmeKeys>), ConfigError> {
        let secrets = self.secrets();
        let token = self.admin_token();
        let keys = match self.acme.enabled {
            true => self.acme_keys().map(Some),
            false => Ok(None),
        };
        match (secrets, token, keys) {
            (Ok(s), Ok(t), Ok(k)) => Ok((s, t, k)),
            (s, t, k) => Err(ConfigError::all([s.err(), t.err(), k.err()].into_iter().flatten())),
        }
    }

    /// The effective config as TOML (contains no secrets: only env var names).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

/// The keys of secrets at rest ([`Config::acme_keys`]); never printed.
pub struct AcmeKeys {
    /// Seals new secrets and opens.
    pub seal: [u8; 32],
    /// Only open (a rotation in progress), tried after `seal`.
    pub open_also: Vec<[u8; 32]>,
}

/// How many keys, never their bytes.
impl std::fmt::Debug for AcmeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AcmeKeys {{ seal: <redacted>, open_also: <{} redacted> }}",
            self.open_also.len()
        )
    }
}

pub struct Secrets {
    pub database_url: String,
    /// Lookups' own URL (`database.lookup_url_env`), if any.
    pub lookup_url: Option<String>,
    pub signer: stamp::Signer,
}

#[cfg(test)]
mod tests;
