//! The admin listener (never the public port): `/healthz` (process is up),
//! `/readyz` (the default pool has a healthy backend), `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::tenant::cache::TenantCache;
use crate::upstream::pool::Pools;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub pools: Arc<Pools>,
    pub cache: Arc<TenantCache>,
}

fn reply(status: u16, ctype: &str, body: String) -> Response<Vec<u8>> {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => reply(200, "text/plain", "ok\n".into()),
            "/readyz" => {
                let pools: serde_json::Map<String, serde_json::Value> = self
                    .pools
                    .all()
                    .map(|p| {
                        let backends: serde_json::Map<String, serde_json::Value> = p
                            .health()
                            .into_iter()
                            .map(|(a, ok)| (a, serde_json::Value::Bool(ok)))
                            .collect();
                        (p.name.to_string(), serde_json::Value::Object(backends))
                    })
                    .collect();
                let ready = self.pools.default_pool().health().iter().any(|(_, ok)| *ok);
                let body = serde_json::json!({ "ready": ready, "pools": pools });
                reply(if ready { 200 } else { 503 }, "application/json", format!("{body}\n"))
            }
            "/metrics" => {
                let (known, _unknown) = self.cache.entry_counts();
                self.metrics.cache_entries.set(i64::try_from(known).unwrap_or(i64::MAX));
                for pool in self.pools.all() {
                    for (backend, up) in pool.health() {
                        self.metrics
                            .backend_up
                            .with_label_values(&[&*pool.name, backend.as_str()])
                            .set(i64::from(up));
                    }
                }
                reply(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            _ => reply(404, "text/plain", "not found\n".into()),
        }
    }
}
