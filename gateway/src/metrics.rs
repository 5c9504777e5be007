//! Prometheus metrics. Handles are created once and shared, so the request
//! path only bumps atomics. (Per-tenant series come with the metrics issue.)

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub cache_hits: IntCounter,
    pub cache_negative_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_stale_served: IntCounter,
    pub cache_clears: IntCounter,
    pub lookup_queries: IntCounter,
    pub lookup_errors: IntCounter,
    pub lookup_seconds: Histogram,
    pub notify_invalidations: IntCounter,
    pub requests: IntCounterVec,
    pub upstream_retries: IntCounter,
    pub cache_entries: IntGauge,
    pub invalidation_connected: IntGauge,
    /// TLS handshakes by result: ok, failed, timeout.
    pub tls_handshakes: IntCounterVec,
    /// notAfter of every loaded certificate, by name.
    pub cert_expiry: prometheus::IntGaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let lookup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tenant_gateway_lookup_duration_seconds",
                "Latency of the tenant lookup query.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(lookup_seconds.clone())).expect("unique metric");
        let requests = IntCounterVec::new(
            Opts::new(
                "tenant_gateway_requests_total",
                "Requests by outcome of tenant resolution.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        r.register(Box::new(requests.clone())).expect("unique metric");
        let cache_entries =
            IntGauge::new("tenant_gateway_cache_entries", "Known hosts currently cached.").expect("valid metric");
        r.register(Box::new(cache_entries.clone())).expect("unique metric");
        let invalidation_connected = IntGauge::new(
            "tenant_gateway_invalidation_listener_up",
            "1 while the LISTEN connection for cache invalidation is established.",
        )
        .expect("valid metric");
        r.register(Box::new(invalidation_connected.clone()))
            .expect("unique metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "tenant_gateway_tls_handshakes_total",
                "TLS handshakes by result (ok, failed, timeout).",
            ),
            &["result"],
        )
        .expect("valid metric");
        r.register(Box::new(tls_handshakes.clone())).expect("unique metric");
        let cert_expiry = prometheus::IntGaugeVec::new(
            Opts::new(
                "tenant_gateway_certificate_expiry_timestamp_seconds",
                "notAfter of each loaded certificate, by name.",
            ),
            &["name"],
        )
        .expect("valid metric");
        r.register(Box::new(cert_expiry.clone())).expect("unique metric");
        Metrics {
            tls_handshakes,
            cert_expiry,
            invalidation_connected,
            cache_hits: counter(
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
            lookup_seconds,
            requests,
            cache_entries,
            registry: r,
        }
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encode error: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
