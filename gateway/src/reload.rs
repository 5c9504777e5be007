//! Config reload on a running gateway (SIGHUP or the operator API), for the
//! parts that can change without new listeners: backend pools (with their
//! health checks), pages, and the per-tenant and per-client limits. The new
//! file goes through the same validation as at start; a file that fails it,
//! or that changes anything else (listeners, database, TLS, ACME, ...: that
//! needs a new process, see "Deploying and upgrading"), is refused and the
//! running config stays, with the reason logged and returned.
//!
//! The request path reads pools, pages and the landing pool from one
//! [`Live`] snapshot behind an `ArcSwap` (one atomic load per request).
//! The certificate files of `[tls]` are re-read here too, for SIGHUP and
//! the API alike.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::pages::{PageError, Pages};
use crate::tenant::cache::TenantCache;
use crate::tls::store::CertStore;
use crate::upstream::pool::{Pool, PoolError, Pools};

/// What the request path reads on every request, swapped whole on reload.
pub struct Live {
    pub pools: Arc<Pools>,
    pub pages: Arc<Pages>,
    pub landing: Option<Arc<Pool>>,
}

impl Live {
    pub fn from_config(cfg: &Config) -> Result<Live, ReloadError> {
        let pools = Arc::new(Pools::from_config(cfg)?);
        let landing = cfg.tenant.landing_pool.as_deref().and_then(|p| pools.get(p).cloned());
        Ok(Live {
            pages: Arc::new(Pages::load(&cfg.pages)?),
            landing,
            pools,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error("these sections changed and need a new process (gateway --upgrade): {}", .0.join(", "))]
    NeedsUpgrade(Vec<String>),
}

/// The config sections a reload may change.
const RELOADABLE: &[&str] = &["pools", "pages"];

/// Sections (and `limits` keys) that differ between two configs and cannot
/// change on a running process.
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<String> {
    let as_table = |c: &Config| -> toml::Table { toml::Table::try_from(c).unwrap_or_default() };
    let (mut a, mut b) = (as_table(old), as_table(new));
    // In [limits], the tenant and client limits reload; the listener bounds do not.
    for t in [&mut a, &mut b] {
        if let Some(toml::Value::Table(limits)) = t.get_mut("limits") {
            limits.remove("tenant");
            limits.remove("client");
        }
    }
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| !RELOADABLE.contains(&k.as_str()))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Reloads the config file the gateway was started with.
pub struct Reloader {
    path: PathBuf,
    running: Mutex<Config>,
    live: Arc<ArcSwap<Live>>,
    limits: Arc<Limits>,
    cache: Arc<TenantCache>,
    /// The health-check tasks of the pools in effect.
    health: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The runtime they run on: the one of the first start (the side
    /// tasks'), not that of whoever reloads (the operator API's).
    health_runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Where the `[tls]` certificate files go (None without TLS).
    certs: Option<(Arc<CertStore>, Arc<Metrics>)>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        live: Arc<ArcSwap<Live>>,
        limits: Arc<Limits>,
        cache: Arc<TenantCache>,
        certs: Option<(Arc<CertStore>, Arc<Metrics>)>,
    ) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(running),
            live,
            limits,
            cache,
            health: Mutex::new(Vec::new()),
            health_runtime: std::sync::OnceLock::new(),
            certs,
        }
    }

    /// Re-read the `[tls]` certificate files of the running config; how many
    /// were loaded (None without TLS). A failure keeps the loaded set.
    pub fn reload_certificates(&self) -> anyhow::Result<Option<usize>> {
        let Some((store, metrics)) = &self.certs else {
            return Ok(None);
        };
        let tls = self.running.lock().tls.clone();
        let (certs, default) = crate::tls::files::load_certs(&tls)?;
        let n = certs.len();
        store.replace_files(certs, default);
        crate::tls::files::publish_cert_metrics(store, metrics);
        Ok(Some(n))
    }

    /// (Re)start the health checks of the pools in effect, on the runtime
    /// of the first start (a reload through the operator API runs on the
    /// admin listener's, where a `/metrics` flood must not delay them).
    pub fn start_health_checks(&self) {
        let runtime = self.health_runtime.get_or_init(tokio::runtime::Handle::current);
        let pools = self.live.load().pools.clone();
        let mut health = self.health.lock();
        for h in health.drain(..) {
            h.abort();
        }
        for pool in pools.all() {
            health.push(runtime.spawn(pool.clone().run_health_checks()).abort_handle());
        }
    }

    /// Read and apply the config file; what changed, or why nothing did.
    pub fn reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let new = Config::load(&self.path)?;
        let mut running = self.running.lock();
        let fixed = fixed_changes(&running, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsUpgrade(fixed));
        }
        let pools_changed = toml::Table::try_from(&running.pools).ok() != toml::Table::try_from(&new.pools).ok();
        let live = match pools_changed {
            true => Live::from_config(&new)?,
            // Unchanged pools stay as they are: each backend's health (an
            // ejected one stays out) and the checks that follow it.
            false => {
                let old = self.live.load();
                Live {
                    pools: old.pools.clone(),
                    pages: Arc::new(Pages::load(&new.pages)?),
                    landing: old.landing.clone(),
                }
            }
        };
        let mut changed = Vec::new();
        if pools_changed {
            changed.push("pools");
        }
        if toml::Table::try_from(&running.pages).ok() != toml::Table::try_from(&new.pages).ok() {
            changed.push("pages");
        }
        self.live.store(Arc::new(live));
        if pools_changed {
            self.start_health_checks();
        }
        if self.limits.set_settings(new.limits_settings()) {
            // Cached tenants carry limiters of the old defaults: revalidate them.
            self.cache.clear();
            changed.push("limits");
        }
        *running = new;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Config {
        let c: Config = toml::from_str(s).unwrap();
        c.validate().unwrap();
        c
    }

    const BASE: &str = "[pools.default]\nbackends = [\"127.0.0.1:1\"]\n";

    #[test]
    fn pools_pages_and_tenant_limits_reload_the_rest_needs_a_new_process() {
        let old = parse(BASE);
        let ok = parse(
            "[pools.default]\nbackends = [\"127.0.0.1:2\"]\n[pages]\ndeleted_status = 410\n\
             [limits.tenant]\nrps = 5\n[limits.client]\nrps = 1\n",
        );
        assert!(fixed_changes(&old, &ok).is_empty(), "{:?}", fixed_changes(&old, &ok));
        let fixed = parse(&format!(
            "{BASE}[listen]\nthreads = 7\n[limits]\nrequest_head_timeout_ms = 5\n[tenant]\nstrip_www = true\n"
        ));
        assert_eq!(fixed_changes(&old, &fixed), ["limits", "listen", "tenant"]);
    }
}
