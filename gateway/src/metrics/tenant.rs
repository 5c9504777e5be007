//! Per-tenant metrics with bounded cardinality and no locks or allocation on
//! the request path.
//!
//! Each tenant's counters are plain atomics in a [`TenantStats`], created
//! once per schema name and cached on the tenant's cache entry (`Tenant`),
//! so recording a request is a handful of `fetch_add`s. At most `cap`
//! distinct tenants get their own series; later ones share `other` and
//! `tenant_gateway_tenant_label_overflow_total` counts each tenant folded.
//! Requests with no tenant (unknown or malformed hosts) count under the fixed
//! label `unknown`, the landing pool under `landing`; both are always present,
//! so the label values are at most `cap` + `other` + these two. Rendered in
//! the text exposition format at scrape time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

/// Methods with their own series; everything else is `other`.
pub const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];
/// Status classes.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Why the gateway refused a request itself.
pub const REJECTIONS: [&str; 12] = [
    "not_found",
    "suspended",
    "deleted",
    "misdirected",
    "unavailable",
    "bad_request",
    "misconfigured",
    "rate_limited",
    "client_rate_limited",
    "busy",
    "request_timeout",
    "payload_too_large",
];
/// Request duration histogram buckets, seconds.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

pub const OTHER: &str = "other";
pub const UNKNOWN: &str = "unknown";
pub const LANDING: &str = "landing";
/// Prefix of the label of a tenant whose schema is named like one of the
/// gateway's own buckets above. A colon cannot occur in a schema name, so no
/// tenant's label can equal a bucket's or another tenant's.
pub const RESERVED_PREFIX: &str = "schema:";

/// The `tenant` label value for a schema.
pub fn tenant_label(schema: &str) -> std::borrow::Cow<'_, str> {
    if [OTHER, UNKNOWN, LANDING].contains(&schema) {
        format!("{RESERVED_PREFIX}{schema}").into()
    } else {
        schema.into()
    }
}

type Getter = fn(&TenantStats) -> u64;

/// One tenant's counters, laid out for the request path: an ordinary
/// request (a response within 25 ms, no body) adds to four counters on two
/// cache lines. The first line holds the duration sum, the byte counts and
/// the first five duration slots; the method rows of `requests` start on
/// the third (a line boundary). With many tenants taking turns these lines
/// are cold, and with one busy tenant on several cores each write takes the
/// line from another core, so each line and each locked add counts
/// (bench/RESULTS.md, sixth round).
#[repr(C, align(64))]
pub struct TenantStats {
    duration_sum_nanos: AtomicU64,
    response_bytes: AtomicU64,
    request_bytes: AtomicU64,
    /// Slot `i` counts durations up to `BUCKETS[i]` not counted by a lower
    /// slot; the last one those above every bound (`+Inf`). The histogram's
    /// count is their sum, so it always equals its `+Inf` bucket.
    duration_slots: [AtomicU64; BUCKETS.len() + 1],
    requests: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    upstream_errors: AtomicU64,
    upstream_retries: AtomicU64,
    rejected: [AtomicU64; REJECTIONS.len()],
    label: Arc<str>,
}

/// What one finished request contributes.
pub struct Observation {
    pub method_index: usize,
    pub status: u16,
    pub seconds: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_error: bool,
    pub retries: u64,
    pub rejection: Option<usize>,
}

pub fn method_index(method: &http::Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

pub fn rejection_index(name: &str) -> Option<usize> {
    REJECTIONS.iter().position(|r| *r == name)
}

impl std::fmt::Debug for TenantStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantStats").field("label", &self.label).finish()
    }
}

impl TenantStats {
    fn new(label: &str) -> TenantStats {
        TenantStats {
            duration_sum_nanos: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            request_bytes: AtomicU64::new(0),
            duration_slots: Default::default(),
            requests: Default::default(),
            upstream_errors: AtomicU64::new(0),
            upstream_retries: AtomicU64::new(0),
            rejected: Default::default(),
            label: Arc::from(label),
        }
    }

    /// Requests observed (the histogram's count).
    fn count(&self) -> u64 {
        self.duration_slots.iter().map(|s| s.load(Relaxed)).sum()
    }

    #[cfg(test)]
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn observe(&self, o: &Observation) {
        let class = usize::from(o.status / 100).clamp(1, 5) - 1;
        self.requests[o.method_index.min(METHODS.len() - 1)][class].fetch_add(1, Relaxed);
        // Cumulative buckets are summed at render time; record the first slot that fits.
        let slot = BUCKETS.iter().position(|le| o.seconds <= *le).unwrap_or(BUCKETS.len());
        self.duration_slots[slot].fetch_add(1, Relaxed);
        self.duration_sum_nanos.fetch_add((o.seconds * 1e9) as u64, Relaxed);
        // Most requests have no body: adding zero would still be a locked write.
        if o.request_bytes > 0 {
            self.request_bytes.fetch_add(o.request_bytes, Relaxed);
        }
        if o.response_bytes > 0 {
            self.response_bytes.fetch_add(o.response_bytes, Relaxed);
        }
        if o.upstream_error {
            self.upstream_errors.fetch_add(1, Relaxed);
        }
        if o.retries > 0 {
            self.upstream_retries.fetch_add(o.retries, Relaxed);
        }
        if let Some(r) = o.rejection {
            self.rejected[r.min(REJECTIONS.len() - 1)].fetch_add(1, Relaxed);
        }
    }
}

/// All tenants' stats, bounded by `cap` distinct labels.
pub struct TenantMetrics {
    cap: usize,
    by_tenant: Mutex<HashMap<Arc<str>, Arc<TenantStats>>>,
    other: Arc<TenantStats>,
    unknown: Arc<TenantStats>,
    landing: Arc<TenantStats>,
    overflow: AtomicU64,
}

impl TenantMetrics {
    pub fn new(cap: usize) -> TenantMetrics {
        TenantMetrics {
            cap,
            by_tenant: Mutex::new(HashMap::new()),
            other: Arc::new(TenantStats::new(OTHER)),
            unknown: Arc::new(TenantStats::new(UNKNOWN)),
            landing: Arc::new(TenantStats::new(LANDING)),
            overflow: AtomicU64::new(0),
        }
    }

    /// The stats for a tenant: its own while under the cap, else `other`.
    /// Called once per tenant cache entry, not per request.
    pub fn for_tenant(&self, schema: &str) -> Arc<TenantStats> {
        let mut map = self.by_tenant.lock();
        if let Some(s) = map.get(schema) {
            return s.clone();
        }
        if map.len() >= self.cap {
            self.overflow.fetch_add(1, Relaxed);
            return self.other.clone();
        }
        let s = Arc::new(TenantStats::new(&tenant_label(schema)));
        map.insert(Arc::from(schema), s.clone());
        s
    }

    pub fn unknown(&self) -> &Arc<TenantStats> {
        &self.unknown
    }

    pub fn landing(&self) -> &Arc<TenantStats> {
        &self.landing
    }

    /// Text exposition of every per-tenant family.
    pub fn render(&self, out: &mut String) {
        let mut all: Vec<Arc<TenantStats>> = self.by_tenant.lock().values().cloned().collect();
        all.sort_by(|a, b| a.label.cmp(&b.label));
        // `unknown` and `landing` are always present, so traffic never adds
        // a label value; `other` appears once the cap is reached.
        if self.overflow.load(Relaxed) > 0 || self.other.count() > 0 {
            all.push(self.other.clone());
        }
        all.push(self.unknown.clone());
        all.push(self.landing.clone());
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            out,
            "tenant_gateway_tenant_requests_total",
            "counter",
            "Requests by tenant, method and status class.",
        );
        for s in &all {
            for (mi, m) in METHODS.iter().enumerate() {
                for (ci, c) in CLASSES.iter().enumerate() {
                    let v = s.requests[mi][ci].load(Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "tenant_gateway_tenant_requests_total{{tenant=\"{}\",method=\"{m}\",class=\"{c}\"}} {v}",
                            s.label
                        );
                    }
                }
            }
        }
        family(
            out,
            "tenant_gateway_tenant_request_duration_seconds",
            "histogram",
            "Request duration by tenant, seconds.",
        );
        for s in &all {
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += s.duration_slots[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "tenant_gateway_tenant_request_duration_seconds_bucket{{tenant=\"{}\",le=\"{le}\"}} {cumulative}",
                    s.label
                );
            }
            let count = cumulative + s.duration_slots[BUCKETS.len()].load(Relaxed);
            let sum = s.duration_sum_nanos.load(Relaxed) as f64 / 1e9;
            let l = &s.label;
            let _ = writeln!(
                out,
                "tenant_gateway_tenant_request_duration_seconds_bucket{{tenant=\"{l}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "tenant_gateway_tenant_request_duration_seconds_sum{{tenant=\"{l}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "tenant_gateway_tenant_request_duration_seconds_count{{tenant=\"{l}\"}} {count}"
            );
        }
        let simple: [(&str, &str, Getter); 4] = [
            (
                "tenant_gateway_tenant_request_bytes_total",
                "Request body bytes received, by tenant.",
                |s| s.request_bytes.load(Relaxed),
            ),
            (
                "tenant_gateway_tenant_response_bytes_total",
                "Response body bytes sent, by tenant.",
                |s| s.response_bytes.load(Relaxed),
            ),
            (
                "tenant_gateway_tenant_upstream_errors_total",
                "Requests that failed talking to a backend, by tenant.",
                |s| s.upstream_errors.load(Relaxed),
            ),
            (
                "tenant_gateway_tenant_upstream_retries_total",
                "Retries on another backend, by tenant.",
                |s| s.upstream_retries.load(Relaxed),
            ),
        ];
        for (name, help, get) in simple {
            family(out, name, "counter", help);
            for s in &all {
                let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", s.label, get(s));
            }
        }
        family(
            out,
            "tenant_gateway_tenant_rejected_total",
            "counter",
            "Requests the gateway refused itself, by tenant and reason.",
        );
        for s in &all {
            for (ri, r) in REJECTIONS.iter().enumerate() {
                let v = s.rejected[ri].load(Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "tenant_gateway_tenant_rejected_total{{tenant=\"{}\",reason=\"{r}\"}} {v}",
                        s.label
                    );
                }
            }
        }
        family(
            out,
            "tenant_gateway_tenant_label_overflow_total",
            "counter",
            "Tenants folded into the `other` label by the cap.",
        );
        let _ = writeln!(
            out,
            "tenant_gateway_tenant_label_overflow_total {}",
            self.overflow.load(Relaxed)
        );
        family(
            out,
            "tenant_gateway_tenant_labels",
            "gauge",
            "Distinct tenant label values in use.",
        );
        let _ = writeln!(out, "tenant_gateway_tenant_labels {}", all.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(status: u16, seconds: f64) -> Observation {
        Observation {
            method_index: 0,
            status,
            seconds,
            request_bytes: 10,
            response_bytes: 100,
            upstream_error: false,
            retries: 0,
            rejection: None,
        }
    }

    #[test]
    fn cap_folds_into_other_and_counts() {
        let m = TenantMetrics::new(2);
        let a = m.for_tenant("a");
        assert!(Arc::ptr_eq(&a, &m.for_tenant("a")));
        m.for_tenant("b");
        assert_eq!(m.for_tenant("c").label(), OTHER);
        assert_eq!(m.for_tenant("d").label(), OTHER);
        assert_eq!(m.overflow.load(Relaxed), 2);
        m.for_tenant("c").observe(&obs(200, 0.01));
        let mut text = String::new();
        m.render(&mut text);
        assert!(text.contains("tenant_gateway_tenant_label_overflow_total 3"));
        assert!(text.contains("tenant=\"other\",method=\"GET\",class=\"2xx\"} 1"));
        // a, b, other, unknown, landing
        assert!(text.contains("tenant_gateway_tenant_labels 5"), "{text}");
    }

    #[test]
    fn tenants_named_like_a_bucket_get_their_own_label() {
        let m = TenantMetrics::new(10);
        for name in [OTHER, UNKNOWN, LANDING] {
            let t = m.for_tenant(name);
            assert_eq!(t.label(), format!("schema:{name}"));
            t.observe(&obs(200, 0.01));
        }
        assert_eq!(m.for_tenant("others").label(), "others");
        let mut text = String::new();
        m.render(&mut text);
        for name in [OTHER, UNKNOWN, LANDING] {
            assert!(
                text.contains(&format!("tenant=\"schema:{name}\",method=\"GET\",class=\"2xx\"}} 1")),
                "{text}"
            );
            // The gateway's own buckets saw none of those requests.
            assert!(
                !text.contains(&format!("tenant=\"{name}\",method=\"GET\",class=\"2xx\"}} 1")),
                "{text}"
            );
        }
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = TenantMetrics::new(10);
        let s = m.for_tenant("t");
        s.observe(&obs(200, 0.0005));
        s.observe(&obs(503, 0.3));
        s.observe(&obs(404, 60.0));
        let mut text = String::new();
        m.render(&mut text);
        assert!(text.contains("_bucket{tenant=\"t\",le=\"0.001\"} 1"), "{text}");
        assert!(text.contains("_bucket{tenant=\"t\",le=\"0.5\"} 2"));
        assert!(text.contains("_bucket{tenant=\"t\",le=\"10\"} 2"));
        assert!(text.contains("_bucket{tenant=\"t\",le=\"+Inf\"} 3"));
        assert!(text.contains("_count{tenant=\"t\"} 3"));
        assert!(text.contains("class=\"5xx\"} 1"));
    }

    #[test]
    fn an_ordinary_request_writes_two_cache_lines() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(align_of::<TenantStats>(), 64);
        let line = |offset: usize| offset / 64;
        let first = line(offset_of!(TenantStats, duration_sum_nanos));
        assert_eq!(first, 0);
        assert_eq!(line(offset_of!(TenantStats, response_bytes)), first);
        assert_eq!(line(offset_of!(TenantStats, request_bytes)), first);
        let slots = offset_of!(TenantStats, duration_slots);
        // Up to 25 ms: the first five slots.
        assert_eq!(BUCKETS[4], 0.025);
        assert_eq!(line(slots + 4 * size_of::<AtomicU64>()), first);
        // One method's row (every status class) on one line.
        let requests = offset_of!(TenantStats, requests);
        assert_eq!(requests % 64, 0);
        assert!(size_of::<[AtomicU64; CLASSES.len()]>() <= 64);
    }

    #[test]
    fn the_count_is_every_slot_and_zero_bytes_are_not_added() {
        let m = TenantMetrics::new(10);
        let s = m.for_tenant("t");
        s.observe(&Observation {
            request_bytes: 0,
            ..obs(200, 0.0005)
        });
        s.observe(&obs(200, 1e6));
        assert_eq!(s.count(), 2);
        assert_eq!(s.request_bytes.load(Relaxed), 10);
        assert_eq!(s.response_bytes.load(Relaxed), 200);
    }
}
