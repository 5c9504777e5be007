//! Named backend pools: round-robin (pingora-load-balancing) over plain-HTTP
//! backends, with active HTTP health checks that eject and re-admit, and the
//! per-pool timeouts and keep-alive settings every peer carries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};

use crate::config::{Config, PoolConfig};

pub struct Pool {
    pub name: Arc<str>,
    lb: LoadBalancer<RoundRobin>,
    cfg: PoolConfig,
}

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
        lb.set_health_check(Box::new(hc));
        lb.health_check_frequency = Some(cfg.health_check_interval);
        Ok(Pool {
            name: Arc::from(name),
            lb,
            cfg: cfg.clone(),
        })
    }

    /// A backend for this request: the next healthy one not tried yet; if no
    /// backend is healthy, any untried one (better than refusing all traffic
    /// when health checks themselves are wrong).
    pub fn select(&self, tried: &[Backend]) -> Option<Backend> {
        let max = self.cfg.backends.len() * 2 + 1;
        self.lb
            .select_with(b"", max, |b, healthy| healthy && !tried.contains(b))
            .or_else(|| self.lb.select_with(b"", max, |b, _| !tried.contains(b)))
    }

    pub fn len(&self) -> usize {
        self.cfg.backends.len()
    }

    /// A pool always has a backend (validated config); for completeness.
    pub fn is_empty(&self) -> bool {
        self.cfg.backends.is_empty()
    }

    /// The peer for a backend, carrying this pool's timeouts.
    pub fn peer(&self, backend: &Backend) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(backend.addr.clone(), false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.cfg.connect_timeout);
        o.total_connection_timeout = Some(self.cfg.connect_timeout);
        o.read_timeout = Some(self.cfg.read_timeout);
        o.write_timeout = Some(self.cfg.write_timeout);
        o.idle_timeout = Some(self.cfg.idle_timeout);
        Box::new(peer)
    }

    /// Health of every backend, for metrics and `/readyz`.
    pub fn health(&self) -> Vec<(String, bool)> {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .map(|b| (b.addr.to_string(), backends.ready(b)))
            .collect()
    }

    /// Probe every backend forever at the configured interval.
    pub async fn run_health_checks(self: Arc<Self>) {
        let every = self.cfg.health_check_interval;
        loop {
            self.lb.backends().run_health_check(true).await;
            tokio::time::sleep(every).await;
        }
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
