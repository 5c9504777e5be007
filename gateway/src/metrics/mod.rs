//! Prometheus metrics. Gateway-wide handles are created once and shared;
//! per-tenant series live in [`tenant`], cached on each tenant's cache
//! entry. The request path only bumps atomics.

pub mod per_thread;
pub mod sampled;
pub mod tenant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `result` label values of `tenant_gateway_acme_orders_total`.
pub const ACME_ORDER_RESULTS: [&str; 3] = ["issued", "failed", "rate_limited"];

pub struct Metrics {
    registry: Registry,
    /// Per thread: written by every request that finds its tenant cached.
    pub cache_hits: per_thread::PerThread,
    pub cache_negative_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_stale_served: IntCounter,
    pub cache_clears: IntCounter,
    pub lookup_queries: IntCounter,
    pub lookup_errors: IntCounter,
    pub lookup_seconds: Histogram,
    pub notify_invalidations: IntCounter,
    pub upstream_retries: IntCounter,
    pub cache_evictions: IntCounter,
    /// Per thread: written twice by every request.
    pub requests_in_flight: per_thread::PerThread,
    pub tls_connections: IntGauge,
    /// 1 healthy / 0 ejected, by pool and backend (refreshed at scrape).
    pub backend_up: IntGaugeVec,
    pub tenants: tenant::TenantMetrics,
    /// ACME orders by name and result (issued, failed, rate_limited).
    pub acme_orders: IntCounterVec,
    /// Challenge lookups refused by `acme.challenge_rate`, by kind.
    pub acme_challenges_refused: IntCounterVec,
    pub acme_scans: IntCounter,
    /// ACME orders holding one of the `acme.max_concurrent_orders` slots.
    pub acme_orders_in_progress: IntGauge,
    /// ACME order attempts waiting for a slot.
    pub acme_orders_waiting: IntGauge,
    pub cache_entries: IntGauge,
    pub invalidation_connected: IntGauge,
    /// TLS handshakes by result: ok, failed, timeout.
    pub tls_handshakes: IntCounterVec,
    /// notAfter of every loaded certificate, by name.
    pub cert_expiry: prometheus::IntGaugeVec,
    /// Open connections by public listener (http, https).
    pub connections_open: IntGaugeVec,
    /// Connections closed at accept, by listener and reason.
    pub connections_refused: IntCounterVec,
    /// Connections cut by a deadline, by kind.
    pub deadline_hits: IntCounterVec,
    pub lingering_closes: IntCounterVec,
    /// Bodies streamed because the bytes of bodies being read first were at
    /// `limits.request_body_buffer_total_mib`.
    pub bodies_over_budget: IntCounter,
    /// Response bodies taken whole from the backend before the client had
    /// them (`limits.response_body_buffer_bytes`).
    pub responses_held: IntCounter,
    /// Response bodies streamed because the bodies held were at
    /// `limits.response_body_buffer_total_mib`.
    pub responses_over_budget: IntCounter,
    /// Bytes of the bodies' budgets in use, by kind (request, response);
    /// set when scraped.
    pub body_buffer_bytes: IntGaugeVec,
    /// Lookups that hit the client-side deadline.
    pub lookup_timeouts: IntCounter,
    /// Rows the lookup query returned that the gateway refuses.
    pub bad_rows: IntCounter,
    /// Background refreshes of entries past `positive_ttl` (stale-while-revalidate).
    pub cache_refreshes: IntCounter,
    /// 1 while the database answers the invalidation listener's health query.
    pub database_up: IntGauge,
    /// WebSocket connections sent a close frame at shutdown.
    pub websocket_closes: IntCounter,
    /// Lookups sent to the primary because the replica lagged behind a NOTIFY.
    pub lookup_primary_fallbacks: IntCounter,
    /// Custom-hostname claims by status (the whole fleet's, from the database).
    pub hostnames: IntGaugeVec,
    /// Age of the oldest pending claim (0: none pending).
    pub hostnames_oldest_pending_seconds: IntGauge,
    /// Ownership checks this gateway ran, by method and result.
    pub hostname_checks: IntCounterVec,
    /// Stored certificates loaded at a handshake, by result.
    pub certificate_loads: IntCounterVec,
    /// Issued certificates in memory (refreshed at scrape).
    pub certificates_in_memory: IntGauge,
    /// Log lines dropped because `LOG_BUFFER_LINES` were waiting (read
    /// from the log's writer at scrape).
    pub log_lines_dropped: sampled::Sampled,
    /// Panics of any of the process's threads (read from the log's panic
    /// hook at scrape).
    pub panics: sampled::Sampled,
    /// notAfter of the first stored certificate to expire, fleet-wide (0:
    /// none stored); refreshed by each ACME scan.
    pub stored_certificates_earliest_expiry: IntGauge,
    /// Stored certificates whose renewal is overdue by more than
    /// `acme::RENEWAL_OVERDUE_AFTER`, fleet-wide; refreshed by each ACME scan.
    pub stored_certificates_renewal_overdue: IntGauge,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// Register a metric (built from constants: names are valid and unique).
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

/// A counter kept elsewhere, read at each scrape ([`sampled`]).
fn sampled_counter(r: &Registry, name: &str, help: &str, read: fn() -> u64) -> sampled::Sampled {
    register(r, sampled::Sampled::counter(name, help, read).expect("valid metric"))
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

/// [`counter`] for one written by every request ([`per_thread`]).
fn per_thread_counter(r: &Registry, name: &str, help: &str) -> per_thread::PerThread {
    register(r, per_thread::PerThread::counter(name, help).expect("valid metric"))
}

/// [`gauge`] for one written by every request ([`per_thread`]).
fn per_thread_gauge(r: &Registry, name: &str, help: &str) -> per_thread::PerThread {
    register(r, per_thread::PerThread::gauge(name, help).expect("valid metric"))
}

impl Metrics {
    pub fn new(max_tenant_labels: usize) -> Metrics {
        let r = Registry::new();
        let lookup_seconds = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "tenant_gateway_lookup_duration_seconds",
                    "Latency of the tenant lookup query.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .expect("valid metric"),
        );
        let backend_up = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "tenant_gateway_backend_up",
                    "1 if the backend passes health checks, by pool and backend.",
                ),
                &["pool", "backend"],
            )
            .expect("valid metric"),
        );
        let cache_entries = gauge(&r, "tenant_gateway_cache_entries", "Known hosts currently cached.");
        let invalidation_connected = gauge(
            &r,
            "tenant_gateway_invalidation_listener_up",
            "1 while the LISTEN connection for cache invalidation is established.",
        );
        let tls_handshakes = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tenant_gateway_tls_handshakes_total",
                    "TLS handshakes by result (ok, failed, timeout).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let cert_expiry = register(
            &r,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "tenant_gateway_certificate_expiry_timestamp_seconds",
                    "notAfter of each loaded certificate, by name.",
                ),
                &["name"],
            )
            .expect("valid metric"),
        );
        let acme_orders = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tenant_gateway_acme_orders_total",
                    "ACME orders by name and result (issued, failed, rate_limited).",
                ),
                &["name", "result"],
            )
            .expect("valid metric"),
        );
        Metrics {
            body_buffer_bytes: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "tenant_gateway_body_buffer_bytes",
                        "Bytes of limits.request_body_buffer_total_mib (kind=request) and response_body_buffer_total_mib (kind=response) the bodies held now take: each counts its Content-Length.",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            connections_open: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "tenant_gateway_connections_open",
                        "Open client connections by public listener.",
                    ),
                    &["listener"],
                )
                .expect("valid metric"),
            ),
            connections_refused: counter_vec(
                &r,
                "tenant_gateway_connections_refused_total",
                "Client connections closed at accept, by listener and reason (listener_cap, per_ip_cap, accept_error).",
                &["listener", "reason"],
            ),
            deadline_hits: counter_vec(
                &r,
                "tenant_gateway_deadline_hits_total",
                "Client connections (HTTP/2: streams) cut by a deadline, by kind (tls_handshake, request_head, body_rate, idle, send).",
                &["kind"],
            ),
            lingering_closes: counter_vec(
                &r,
                "tenant_gateway_lingering_closes_total",
                "Lingering closes (limits.lingering_close_ms) by how they ended: client_closed (the client closed or the connection failed), bound (the client still sent or held it open).",
                &["end"],
            ),
            bodies_over_budget: counter(
                &r,
                "tenant_gateway_request_bodies_over_budget_total",
                "Request bodies streamed instead of read first: the bodies being read held limits.request_body_buffer_total_mib.",
            ),
            responses_held: counter(
                &r,
                "tenant_gateway_response_bodies_held_total",
                "Response bodies taken whole from the backend before the client had them (limits.response_body_buffer_bytes).",
            ),
            responses_over_budget: counter(
                &r,
                "tenant_gateway_response_bodies_over_budget_total",
                "Response bodies streamed instead of held: the bodies held at once were at limits.response_body_buffer_total_mib.",
            ),
            lookup_timeouts: counter(
                &r,
                "tenant_gateway_db_timeouts_total",
                "Tenant lookups that hit the client-side deadline (database.lookup_deadline_ms).",
            ),
            bad_rows: counter(
                &r,
                "tenant_gateway_db_bad_rows_total",
                "Rows of the lookup query the gateway refused (bad schema name or status); that host only.",
            ),
            cache_refreshes: counter(
                &r,
                "tenant_gateway_cache_background_refreshes_total",
                "Lookups run in the background for cached tenants past positive_ttl or marked stale.",
            ),
            lookup_primary_fallbacks: counter(
                &r,
                "tenant_gateway_db_primary_fallbacks_total",
                "Lookups sent to the primary because the read replica had not replayed the newest NOTIFY yet.",
            ),
            websocket_closes: counter(
                &r,
                "tenant_gateway_websocket_shutdown_closes_total",
                "WebSocket connections sent a close frame (1001, going away) at shutdown.",
            ),
            database_up: gauge(
                &r,
                "tenant_gateway_database_up",
                "1 while the database answers the invalidation listener's health query within its deadline.",
            ),
            acme_scans: counter(
                &r,
                "tenant_gateway_acme_scans_total",
                "ACME scans for missing, expiring or due certificates.",
            ),
            acme_orders,
            acme_challenges_refused: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "tenant_gateway_acme_challenges_refused_total",
                        "Challenge lookups (http-01 tokens, tls-alpn-01 handshakes) refused by acme.challenge_rate, by kind.",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            hostnames: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "tenant_gateway_custom_hostnames",
                        "Custom-hostname claims by status (pending, verified, active, failed, expired, removed, moved), fleet-wide.",
                    ),
                    &["status"],
                )
                .expect("valid metric"),
            ),
            hostnames_oldest_pending_seconds: gauge(
                &r,
                "tenant_gateway_custom_hostnames_oldest_pending_seconds",
                "Age of the oldest pending custom-hostname claim (0 when none is pending).",
            ),
            certificate_loads: counter_vec(
                &r,
                "tenant_gateway_certificate_loads_total",
                "Stored certificates loaded into memory at a handshake, by result (loaded, not_stored, unreadable: no configured key opens it, error, timeout, refused: the client is over acme.load_rate).",
                &["result"],
            ),
            certificates_in_memory: gauge(
                &r,
                "tenant_gateway_certificates_in_memory",
                "Issued certificates in memory (at most acme.certificate_cache_size).",
            ),
            stored_certificates_earliest_expiry: gauge(
                &r,
                "tenant_gateway_stored_certificates_earliest_expiry_timestamp_seconds",
                "notAfter of the stored certificate that expires first, in memory or not, fleet-wide (0 when none is stored).",
            ),
            stored_certificates_renewal_overdue: gauge(
                &r,
                "tenant_gateway_stored_certificates_renewal_overdue",
                "Stored certificates, fleet-wide, whose renewal time passed more than a day ago (renewals failing or not running).",
            ),
            hostname_checks: counter_vec(
                &r,
                "tenant_gateway_custom_hostname_checks_total",
                "Ownership checks run by this gateway, by method and result (proven, not_yet, other_proof); method recheck: an active or moved claim's look at where its name points (here, elsewhere, unknown: no answer to go by).",
                &["method", "result"],
            ),
            acme_orders_in_progress: gauge(
                &r,
                "tenant_gateway_acme_orders_in_progress",
                "ACME orders running (at most acme.max_concurrent_orders).",
            ),
            acme_orders_waiting: gauge(
                &r,
                "tenant_gateway_acme_orders_waiting",
                "ACME order attempts waiting for a slot (acme.max_concurrent_orders).",
            ),
            log_lines_dropped: sampled_counter(
                &r,
                "tenant_gateway_log_lines_dropped_total",
                "Log lines dropped because LOG_BUFFER_LINES lines were waiting for the log's writer (its reader, e.g. a stopped collector's pipe, did not keep up).",
                crate::logging::dropped_lines,
            ),
            panics: sampled_counter(
                &r,
                "tenant_gateway_panics_total",
                "Panics of any of the gateway's threads, each logged as 'a thread panicked' (a request's panic ends only its own task; the gateway goes on).",
                crate::logging::panics,
            ),
            tls_handshakes,
            cert_expiry,
            invalidation_connected,
            cache_hits: per_thread_counter(
                &r,
                "tenant_gateway_cache_hits_total",
                "Tenant cache hits (fresh known hosts).",
            ),
            cache_negative_hits: counter(
                &r,
                "tenant_gateway_cache_negative_hits_total",
                "Tenant cache hits for unknown hosts.",
            ),
            cache_misses: counter(
                &r,
                "tenant_gateway_cache_misses_total",
                "Tenant cache misses (including stale entries).",
            ),
            cache_stale_served: counter(
                &r,
                "tenant_gateway_cache_stale_served_total",
                "Stale tenants served because the database was unreachable.",
            ),
            cache_clears: counter(
                &r,
                "tenant_gateway_cache_clears_total",
                "Whole-cache invalidations (listener reconnects).",
            ),
            lookup_queries: counter(
                &r,
                "tenant_gateway_db_queries_total",
                "Tenant lookup queries sent to the database.",
            ),
            lookup_errors: counter(
                &r,
                "tenant_gateway_db_errors_total",
                "Tenant lookup queries that failed.",
            ),
            notify_invalidations: counter(
                &r,
                "tenant_gateway_notify_invalidations_total",
                "Host names evicted by NOTIFY.",
            ),
            upstream_retries: counter(
                &r,
                "tenant_gateway_upstream_retries_total",
                "Requests retried on another backend after a connect failure.",
            ),
            cache_evictions: counter(
                &r,
                "tenant_gateway_cache_evictions_total",
                "Known hosts evicted from the cache by its size bound.",
            ),
            requests_in_flight: per_thread_gauge(&r, "tenant_gateway_requests_in_flight", "Requests being handled."),
            tls_connections: gauge(&r, "tenant_gateway_tls_connections_active", "Open TLS connections."),
            backend_up,
            tenants: tenant::TenantMetrics::new(max_tenant_labels),
            lookup_seconds,
            cache_entries,
            registry: r,
        }
    }

    /// Text exposition format: gateway-wide families, then per-tenant ones.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encode error: {e}\n");
        }
        let mut out = String::from_utf8(buf).unwrap_or_default();
        self.tenants.render(&mut out);
        out
    }
}
