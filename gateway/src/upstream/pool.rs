//! Named backend pools: round-robin over plain-HTTP backends, with active
//! HTTP health checks (pingora-load-balancing) that eject and re-admit, and
//! the per-pool timeouts and keep-alive settings every peer carries.
//!
//! Selection is our own, over one health flag per backend that each check
//! round refreshes: Pingora's `LoadBalancer::select_with` hashes every
//! candidate (SipHash) to look up its readiness, ~1,500 instructions per
//! request (bench/RESULTS.md); an atomic counter and a flag read cost a few
//! dozen. The checks themselves stay Pingora's, each under a deadline of
//! its own (`BoundedCheck`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};

use crate::config::{Config, PoolConfig};

pub struct Pool {
    pub name: Arc<str>,
    /// Runs the health checks; not consulted per request.
    lb: LoadBalancer<RoundRobin>,
    /// The configured backends, in config order; a request names them by index.
    backends: Vec<Backend>,
    /// Per backend: passed its health checks (as of the last check round).
    healthy: Box<[AtomicBool]>,
    /// Round-robin position.
    next: AtomicUsize,
    cfg: PoolConfig,
}

/// Indices of the backends one request has tried, in order (a request tries
/// each backend of its pool at most once).
pub type Tried = smallvec::SmallVec<[usize; 4]>;

#[derive(Debug, thiserror::Error)]
#[error("config key `pools.{pool}`: {reason}")]
pub struct PoolError {
    pool: String,
    reason: String,
}

impl Pool {
    fn new(name: &str, cfg: &PoolConfig) -> Result<Pool, PoolError> {
        let err = |reason: String| PoolError {
            pool: name.to_owned(),
            reason,
        };
        let mut lb =
            LoadBalancer::<RoundRobin>::try_from_iter(cfg.backends.iter().copied()).map_err(|e| err(e.to_string()))?;
        let mut hc = HttpHealthCheck::new(&cfg.health_check_host, false);
        let healthy = cfg.health_check_statuses.clone();
        hc.validator = Some(Box::new(move |resp| {
            if healthy.contains(&resp.status.as_u16()) {
                Ok(())
            } else {
                pingora_error::Error::e_explain(
                    pingora_error::ErrorType::HTTPStatus(resp.status.as_u16()),
                    "health check status not in health_check_statuses",
                )
            }
        }));
        hc.req.set_uri(
            cfg.health_check_path
                .parse()
                .map_err(|e| err(format!("health_check_path: {e}")))?,
        );
        hc.consecutive_failure = cfg.health_check_threshold;
        hc.consecutive_success = cfg.health_check_threshold;
        hc.reuse_connection = true;
        let probe_timeout = cfg
            .health_check_interval
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        hc.peer_template.options.connection_timeout = Some(probe_timeout);
        hc.peer_template.options.read_timeout = Some(probe_timeout);
        lb.set_health_check(Box::new(BoundedCheck {
            inner: hc,
            // A connect and a read, each within its own timeout.
            deadline: probe_timeout * 2,
        }));
        lb.health_check_frequency = Some(cfg.health_check_interval);
        let backends: Vec<Backend> = cfg
            .backends
            .iter()
            .map(|a| Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(*a),
                weight: 1,
                ext: Default::default(),
            })
            .collect();
        Ok(Pool {
            name: Arc::from(name),
            lb,
            // Healthy until a check says otherwise, as Pingora's own state starts.
            healthy: backends.iter().map(|_| AtomicBool::new(true)).collect(),
            backends,
            next: AtomicUsize::new(0),
            cfg: cfg.clone(),
        })
    }

    /// A backend for this request: the next healthy one not tried yet; if no
    /// backend is healthy, any untried one (better than refusing all traffic
    /// when health checks themselves are wrong).
    pub fn select(&self, tried: &[usize]) -> Option<usize> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let pick = |healthy_only: bool| {
            (0..n)
                .map(|i| start.wrapping_add(i) % n)
                .find(|&i| !tried.contains(&i) && (!healthy_only || self.healthy[i].load(Ordering::Relaxed)))
        };
        pick(true).or_else(|| pick(false))
    }

    /// The address of backend `i` (for logs).
    pub fn addr(&self, i: usize) -> Option<std::net::SocketAddr> {
        self.cfg.backends.get(i).copied()
    }

    pub fn len(&self) -> usize {
        self.cfg.backends.len()
    }

    /// A pool always has a backend (validated config); for completeness.
    pub fn is_empty(&self) -> bool {
        self.cfg.backends.is_empty()
    }

    /// The peer for backend `i` (from [`Pool::select`]), carrying this pool's timeouts.
    pub fn peer(&self, i: usize) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(self.cfg.backends[i], false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.cfg.connect_timeout);
        o.total_connection_timeout = Some(self.cfg.connect_timeout);
        o.read_timeout = Some(self.cfg.read_timeout);
        o.write_timeout = Some(self.cfg.write_timeout);
        o.idle_timeout = Some(self.cfg.idle_timeout);
        Box::new(peer)
    }

    /// Health of every backend, for metrics and `/readyz`: what selection
    /// sees.
    pub fn health(&self) -> Vec<(String, bool)> {
        self.cfg
            .backends
            .iter()
            .zip(self.healthy.iter())
            .map(|(a, ok)| (a.to_string(), ok.load(Ordering::Relaxed)))
            .collect()
    }

    /// Probe every backend forever at the configured interval; after each
    /// round, selection sees the new health.
    pub async fn run_health_checks(self: Arc<Self>) {
        let every = self.cfg.health_check_interval;
        loop {
            let checked = self.lb.backends();
            checked.run_health_check(true).await;
            for (b, flag) in self.backends.iter().zip(self.healthy.iter()) {
                flag.store(checked.ready(b), Ordering::Relaxed);
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Pingora's HTTP check with a deadline on the whole check. Its own
/// timeouts bound each connect and each read, so a backend trickling its
/// answer byte by byte would hold its check, and with it the round that
/// refreshes every backend's health flag (a dead neighbour would stay
/// "healthy"): past the deadline the check fails.
struct BoundedCheck {
    inner: HttpHealthCheck,
    deadline: Duration,
}

#[async_trait]
impl HealthCheck for BoundedCheck {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        match tokio::time::timeout(self.deadline, self.inner.check(target)).await {
            Ok(answer) => answer,
            Err(_) => pingora_error::Error::e_explain(
                pingora_error::ErrorType::ReadTimedout,
                format!("health check not answered within {:?}", self.deadline),
            ),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await;
    }

    fn backend_summary(&self, target: &Backend) -> String {
        self.inner.backend_summary(target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

pub struct Pools {
    pools: HashMap<String, Arc<Pool>>,
    default: Arc<Pool>,
}

impl Pools {
    pub fn from_config(cfg: &Config) -> Result<Pools, PoolError> {
        let mut pools = HashMap::new();
        for (name, p) in &cfg.pools {
            pools.insert(name.clone(), Arc::new(Pool::new(name, p)?));
        }
        let default = pools.get("default").cloned().ok_or_else(|| PoolError {
            pool: "default".into(),
            reason: "a `default` pool is required".into(),
        })?;
        Ok(Pools { pools, default })
    }

    pub fn default_pool(&self) -> &Arc<Pool> {
        &self.default
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }
}
