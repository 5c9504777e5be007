//! The admin listener (never the public port): `/healthz` (process is up),
//! `/readyz` (the default pool has a healthy backend; with `?database=1`
//! also the database answers), `/metrics`, and the operator API under
//! `/api/v1/` (JSON, `Authorization: Bearer <token>`; off unless
//! `admin.token_env` names a token):
//!
//! - `GET  /api/v1/explain?host=H`: what the gateway does with a host and
//!   why (normalised and lookup names, cache state and age, tenant, status,
//!   pool and backend health, the certificate SNI would select, ACME state,
//!   limits, the answer a request gets);
//! - `POST /api/v1/purge?host=H` or `?all=1`: forget cached answers;
//! - `GET  /api/v1/certs`: every loaded certificate and its expiry;
//! - `GET  /api/v1/certs/stored?limit=N`: the stored certificates that
//!   expire first (database), with their renewal state;
//! - `POST /api/v1/certs/renew?name=N`: force an ACME renewal;
//! - `POST /api/v1/reload`: reload the config file's pools, pages and
//!   per-tenant and per-client limits (refused whole, 422, if invalid or if
//!   anything else changed), then the `[tls]` certificate files (as SIGHUP,
//!   which re-reads them even after a refused config);
//! - custom hostnames (with `custom_domains.verification = "required"`):
//!   `POST /api/v1/hostnames?name=N&tenant=T[&method=txt|http|cname][&preverified=1]`
//!   claims a name and answers the verification instructions;
//!   `GET /api/v1/hostnames[?status=S][&failing=1][&limit=N][&after=NAME]` lists claims
//!   a page at a time;
//!   `GET /api/v1/hostnames/status?name=N` shows one (claim, instructions,
//!   certificate, history); `POST /api/v1/hostnames/retry?name=N` checks
//!   again now; `POST /api/v1/hostnames/remove?name=N` (or `DELETE
//!   /api/v1/hostnames?name=N`) removes it.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::clock::unix_now;
use crate::metrics::Metrics;
use crate::reload::{Live, Reloader};
use crate::tenant::cache::{Resolution, TenantCache};
use crate::tenant::{host, Status};
use crate::tls::acme::Acme;
use crate::tls::store::CertStore;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Pools (and pages) in effect.
    pub live: Arc<arc_swap::ArcSwap<Live>>,
    /// Config reloads (`POST /api/v1/reload`).
    pub reloader: Arc<Reloader>,
    pub cache: Arc<TenantCache>,
    /// The operator API's bearer token; `None`: the API is off.
    pub token: Option<String>,
    /// `/metrics` asks for the token too (`admin.metrics_token`).
    pub metrics_token: bool,
    pub strip_www: bool,
    pub base_domains: Vec<String>,
    /// The landing pool's name (`tenant.landing_pool`), if any.
    pub landing: Option<String>,
    pub certs: Arc<CertStore>,
    pub acme: Option<Arc<Acme>>,
    /// Custom-hostname claims (None: verification is off).
    pub hostnames: Option<HostnamesApi>,
    /// The request and response bodies' budgets, by kind (for
    /// `tenant_gateway_body_buffer_bytes`).
    pub body_budgets: [(&'static str, crate::body::Budget); 2],
}

/// What the hostname endpoints need.
pub struct HostnamesApi {
    pub store: crate::hostnames::store::Store,
    pub cfg: crate::hostnames::settings::CustomDomainsConfig,
    /// The schema is prepared before the first claim is touched (the
    /// checkers prepare it too, in the background, at start-up).
    pub schema: tokio::sync::OnceCell<()>,
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

/// The longest an operator API call may take: 503 `deadline` past it.
/// Its database statements have timeouts of the server's, which a frozen
/// or partitioned server never applies, so without this a call would wait
/// for the database as long as it is gone, holding its admin connection;
/// a script retrying its calls would then fill the listener's caps
/// (`admin.max_connections_per_ip`, `admin.max_connections`) and
/// `/readyz` and `/metrics`, which never wait for the database, would be
/// refused with them.
pub const API_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /api/v1/certs/stored`: how many certificates by default, and at most.
const STORED_DEFAULT: i64 = 50;
const STORED_MAX: i64 = 1_000;

/// `GET /api/v1/hostnames`: claims per page by default, and at most.
pub const LIST_DEFAULT: i64 = 100;
pub const LIST_MAX: i64 = 1_000;

/// `limit` of a listing: `default` when absent, else a whole number from 1
/// to `max` (or what the 400 `bad_limit` says).
fn limit_param(query: Option<&str>, default: i64, max: i64) -> Result<i64, String> {
    match query_param(query, "limit").map(|l| l.parse::<i64>()) {
        None => Ok(default),
        Some(Ok(n)) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(format!("limit: a whole number from 1 to {max}")),
    }
}

fn json_reply(status: u16, v: Value) -> Response<Vec<u8>> {
    reply(status, "application/json", format!("{v}\n"))
}

fn error(status: u16, code: &str, message: &str) -> Response<Vec<u8>> {
    json_reply(status, json!({ "error": code, "message": message }))
}

/// The value of `key` in a query string (percent-decoding `%XX` and `+`).
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    let pair = query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })?;
    decode(pair)
}

/// The first parameter of a query string that is given twice or whose
/// value does not decode to UTF-8: the operator API answers 400 naming it,
/// where reading it as absent would change what a call does (a filter
/// dropped, a default limit used).
fn bad_query_param(query: Option<&str>) -> Option<String> {
    let mut seen = Vec::new();
    for kv in query?.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if seen.contains(&k) || decode(v).is_none() {
            return Some(k.to_owned());
        }
        seen.push(k);
    }
    None
}

/// A query value percent-decoded (`%XX`, `+` as a space); `None` if it is
/// not valid UTF-8 or holds a NUL (which no PostgreSQL text can, so a
/// value handed to a query unchecked would be a 500).
fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.contains('\0'))
}

/// Constant-time comparison of the presented token with ours.
fn token_matches(presented: &[u8], ours: &[u8]) -> bool {
    presented.len() == ours.len() && presented.iter().zip(ours).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Active => "active",
        Status::Suspended => "suspended",
        Status::Deleted => "deleted",
        Status::Unverified => "unverified",
    }
}

impl Admin {
    fn readyz(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let live = self.live.load_full();
        let pools: serde_json::Map<String, Value> = live
            .pools
            .all()
            .map(|p| {
                let backends: serde_json::Map<String, Value> =
                    p.health().into_iter().map(|(a, ok)| (a, Value::Bool(ok))).collect();
                (p.name.to_string(), Value::Object(backends))
            })
            .collect();
        let backends_ready = live.pools.default_pool().health().iter().any(|(_, ok)| *ok);
        let database = self.metrics.database_up.get() == 1;
        let want_db = query_param(query, "database").is_some_and(|v| v == "1" || v == "true");
        let ready = backends_ready && (database || !want_db);
        let body = json!({ "ready": ready, "pools": pools, "database": database });
        json_reply(if ready { 200 } else { 503 }, body)
    }

    fn metrics_text(&self) -> Response<Vec<u8>> {
        let (known, _unknown) = self.cache.entry_counts();
        self.metrics.cache_entries.set(i64::try_from(known).unwrap_or(i64::MAX));
        self.metrics
            .certificates_in_memory
            .set(i64::try_from(self.certs.issued_len()).unwrap_or(i64::MAX));
        for (kind, budget) in &self.body_budgets {
            self.metrics
                .body_buffer_bytes
                .with_label_values(&[kind])
                .set(i64::try_from(budget.held()).unwrap_or(i64::MAX));
        }
        // Only the live pools' backends: one removed by a reload goes.
        self.metrics.backend_up.reset();
        for pool in self.live.load_full().pools.all() {
            for (backend, up) in pool.health() {
                self.metrics
                    .backend_up
                    .with_label_values(&[&*pool.name, backend.as_str()])
                    .set(i64::from(up));
            }
        }
        reply(200, "text/plain; version=0.0.4", self.metrics.render())
    }

    /// `explain`: resolves the host as a request would (the cache state is
    /// reported as it was before).
    async fn explain(&self, raw: &str) -> Response<Vec<u8>> {
        let normalized = match tenancy::normalize_host(raw) {
            Ok(h) => h,
            Err(e) => {
                return json_reply(
                    200,
                    json!({ "host": raw, "valid": false, "reason": e.to_string(), "answer": "bad_request (400)" }),
                )
            }
        };
        let lookup = host::lookup_name(&normalized, self.strip_www).to_owned();
        let base = self.base_domains.iter().find(|b| tenancy::is_under(&normalized, b));
        let (cache_state, cache_age) = self.cache.peek(&lookup);
        let mut out = json!({
            "host": raw,
            "valid": true,
            "normalized": normalized,
            "lookup_name": lookup,
            "base_domain": base,
            "cache": { "state": cache_state, "age_secs": cache_age },
        });
        let live = self.live.load_full();
        let landing = self
            .landing
            .as_ref()
            .filter(|_| self.base_domains.contains(&normalized));
        let (answer, pool_name) = if let Some(pool) = landing {
            (format!("landing pool {pool} (unstamped)"), Some(pool.clone()))
        } else {
            match self.cache.resolve(&lookup).await {
                Resolution::Found(t) => {
                    let pool = t.pool().unwrap_or("default").to_owned();
                    out["tenant"] = json!({
                        "schema": t.schema(),
                        "x_tenant": stamp::encode_tenant(t.schema()),
                        "status": status_name(t.status),
                        "pinned_pool": t.pool(),
                        "limits": t.limiter().map(|l| {
                            let s = l.spec();
                            json!({ "rps": s.rps, "burst": s.burst, "max_concurrent": s.max_concurrent })
                        }),
                    });
                    let answer = match t.status {
                        Status::Active if live.pools.get(&pool).is_some() => format!("proxied to pool {pool}"),
                        Status::Active => format!("unavailable (503): pool {pool} is not configured"),
                        Status::Suspended => "suspended (403)".into(),
                        Status::Deleted => "deleted (404 or 410)".into(),
                        Status::Unverified => {
                            "unverified (404): custom hostname without an active claim of this tenant".into()
                        }
                    };
                    (answer, Some(pool))
                }
                Resolution::NotFound => ("not_found (404)".into(), None),
                Resolution::Unavailable => ("unavailable (503): the database cannot be asked".into(), None),
                Resolution::Misconfigured => (
                    "misconfigured (503): the row for this host is refused; see the gateway log".into(),
                    None,
                ),
            }
        };
        out["answer"] = json!(answer);
        if let Some(p) = pool_name.as_deref().and_then(|n| live.pools.get(n)) {
            let backends: serde_json::Map<String, Value> =
                p.health().into_iter().map(|(a, ok)| (a, Value::Bool(ok))).collect();
            out["pool"] = json!({ "name": &*p.name, "backends": backends });
        }
        // The certificate a handshake with this SNI gets.
        out["certificate"] = match self.certs.resolve(Some(&normalized)) {
            Some(c) => json!({
                "names": c.names,
                "not_after": c.not_after,
                "days_left": (c.not_after - unix_now()) / 86_400,
                "source": c.source.clone(),
            }),
            None => Value::Null,
        };
        if let Some(acme) = &self.acme {
            out["acme"] = match acme.name_state(&normalized).await {
                Ok(state) => json!({ "eligible": acme.eligible(&normalized).await, "order": state }),
                Err(e) => json!({ "error": e.to_string() }),
            };
        }
        json_reply(200, out)
    }

    fn certs(&self) -> Response<Vec<u8>> {
        let now = unix_now();
        let list: Vec<Value> = self
            .certs
            .all()
            .iter()
            .map(|c| {
                json!({
                    "names": c.names,
                    "not_after": c.not_after,
                    "days_left": (c.not_after - now) / 86_400,
                    "source": c.source.clone(),
                })
            })
            .collect();
        json_reply(200, json!({ "certificates": list }))
    }

    async fn api(&self, method: &Method, path: &str, query: Option<&str>) -> Response<Vec<u8>> {
        if let Some(key) = bad_query_param(query) {
            let key = key.get(..key.floor_char_boundary(64)).unwrap_or_default();
            return error(
                400,
                "bad_parameter",
                &format!("query parameter `{key}` is given twice or is not valid percent-encoded UTF-8"),
            );
        }
        match (method, path) {
            (&Method::GET, "/api/v1/explain") => match query_param(query, "host") {
                Some(h) => self.explain(&h).await,
                None => error(400, "missing_host", "give ?host=NAME"),
            },
            (&Method::POST, "/api/v1/purge") => {
                let all = query_param(query, "all").is_some_and(|v| v == "1" || v == "true");
                if all && query_param(query, "host").is_some() {
                    return error(400, "host_and_all", "give ?host=NAME or ?all=1, not both");
                }
                if all {
                    self.cache.purge_all();
                    tracing::info!("operator API: purged the whole tenant cache");
                    return json_reply(200, json!({ "purged": "all" }));
                }
                let Some(raw) = query_param(query, "host") else {
                    return error(400, "missing_host", "give ?host=NAME or ?all=1");
                };
                match tenancy::normalize_host(&raw) {
                    Ok(h) => {
                        let name = host::lookup_name(&h, self.strip_www).to_owned();
                        self.cache.purge(&name);
                        tracing::info!(host = %name, "operator API: purged from the tenant cache");
                        json_reply(200, json!({ "purged": name }))
                    }
                    Err(e) => error(400, "bad_host", &e.to_string()),
                }
            }
            (&Method::GET, "/api/v1/certs") => self.certs(),
            (&Method::GET, "/api/v1/certs/stored") => {
                let Some(acme) = &self.acme else {
                    return error(400, "no_acme", "stored certificates exist only with [acme] enabled");
                };
                let limit = match limit_param(query, STORED_DEFAULT, STORED_MAX) {
                    Ok(n) => n,
                    Err(message) => return error(400, "bad_limit", &message),
                };
                match acme.first_to_expire(limit).await {
                    Ok(list) => json_reply(200, json!({ "certificates": list })),
                    Err(e) => error(503, "database", &e.to_string()),
                }
            }
            (&Method::POST, "/api/v1/certs/renew") => {
                let (Some(acme), Some(name)) = (&self.acme, query_param(query, "name")) else {
                    return error(400, "no_acme_or_name", "ACME must be on and ?name=NAME given");
                };
                let n = match tenancy::normalize_domain(&name) {
                    Ok(n) => n,
                    Err(e) => return error(400, "bad_name", &e.to_string()),
                };
                // What the ACME guard would refuse is refused here, not left
                // forced for ever (a typo, a base-domain name, a suspended
                // tenant's).
                if !acme.eligible(&n).await {
                    return error(
                        409,
                        "not_eligible",
                        &format!("{n} is not eligible for a certificate: not in the domain table, its tenant not active, its claim not active, or under a base domain"),
                    );
                }
                match acme.renew(&n).await {
                    Ok(()) => {
                        tracing::info!(name = n, "operator API: certificate renewal requested");
                        json_reply(202, json!({ "renewal_requested": n }))
                    }
                    Err(e) => error(503, "database", &e.to_string()),
                }
            }
            (&Method::POST, "/api/v1/reload") => {
                // The config first (pools, pages, limits); refused as a whole if invalid.
                let changed = match self.reloader.reload() {
                    Ok(changed) => changed,
                    Err(e) => {
                        tracing::error!(error = %e, "operator API: config reload refused; the running config stays");
                        return error(422, "reload_refused", &e.to_string());
                    }
                };
                tracing::info!(?changed, "operator API: config reloaded");
                let files = match self.reloader.reload_certificates() {
                    Ok(n) => n,
                    // A failed reload keeps what is loaded, and says why.
                    Err(e) => return error(422, "reload_refused", &format!("{e:#}")),
                };
                json_reply(
                    200,
                    json!({ "reloaded": "config", "changed": changed, "certificate_files": files }),
                )
            }
            (m, p) if p == "/api/v1/hostnames" || p.starts_with("/api/v1/hostnames/") => {
                self.hostnames(m, p, query).await
            }
            _ => error(404, "not_found", "unknown operator API endpoint"),
        }
    }

    async fn hostnames(&self, method: &Method, path: &str, query: Option<&str>) -> Response<Vec<u8>> {
        let Some(h) = &self.hostnames else {
            return error(
                404,
                "verification_off",
                "custom hostname claims are off (custom_domains.verification = \"none\")",
            );
        };
        let prepared = h.schema.get_or_try_init(|| crate::schema::migrate(h.store.db())).await;
        if let Err(e) = prepared {
            return error(
                503,
                "database",
                &format!("cannot prepare the tenant_gateway schema: {e}"),
            );
        }
        let ops = crate::hostnames::ops::Ops {
            store: &h.store,
            cfg: &h.cfg,
            base_domains: &self.base_domains,
            strip_www: self.strip_www,
        };
        let name = query_param(query, "name");
        let need_name = || error(400, "missing_name", "give ?name=HOSTNAME");
        let result = match (method, path) {
            (&Method::GET, "/api/v1/hostnames") => {
                let limit = match limit_param(query, LIST_DEFAULT, LIST_MAX) {
                    Ok(n) => n,
                    Err(message) => return error(400, "bad_limit", &message),
                };
                let (status, after) = (query_param(query, "status"), query_param(query, "after"));
                let failing = query_param(query, "failing").is_some_and(|v| v == "1" || v == "true");
                ops.list(status.as_deref(), after.as_deref(), limit, failing).await
            }
            (&Method::POST, "/api/v1/hostnames") => {
                let (Some(name), Some(tenant)) = (name, query_param(query, "tenant")) else {
                    return error(400, "missing_argument", "give ?name=HOSTNAME&tenant=SCHEMA");
                };
                let method = match query_param(query, "method") {
                    None => None,
                    Some(m) => match crate::hostnames::policy::Method::parse(&m) {
                        Some(m) => Some(m),
                        None => return error(400, "bad_method", "method is one of txt, http, cname"),
                    },
                };
                let preverified = query_param(query, "preverified").is_some_and(|v| v == "1" || v == "true");
                ops.add(&name, &tenant, method, preverified, "api").await
            }
            (&Method::GET, "/api/v1/hostnames/status") => match name {
                Some(n) => ops.status(&n).await,
                None => return need_name(),
            },
            (&Method::POST, "/api/v1/hostnames/retry") => match name {
                Some(n) => ops.retry(&n, "api").await,
                None => return need_name(),
            },
            (&Method::POST, "/api/v1/hostnames/remove") | (&Method::DELETE, "/api/v1/hostnames") => match name {
                Some(n) => ops.remove(&n, "api").await,
                None => return need_name(),
            },
            _ => return error(404, "not_found", "unknown operator API endpoint"),
        };
        match result {
            Ok(v) => json_reply(200, v),
            Err(e) => error(e.http_status(), "hostnames", &e.to_string()),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path, query) = (
            req.method.clone(),
            req.uri.path().to_owned(),
            req.uri.query().map(str::to_owned),
        );
        match path.as_str() {
            "/healthz" => reply(200, "text/plain", "ok\n".into()),
            "/readyz" => self.readyz(query.as_deref()),
            "/metrics" => match self.metrics_token {
                true => self
                    .authorized(&req.headers, &path)
                    .unwrap_or_else(|| self.metrics_text()),
                false => self.metrics_text(),
            },
            p if p.starts_with("/api/") => {
                if self.token.is_none() {
                    return error(404, "api_off", "the operator API is off: set admin.token_env");
                }
                match self.authorized(&req.headers, p) {
                    Some(refused) => refused,
                    None => match tokio::time::timeout(API_DEADLINE, self.api(&method, p, query.as_deref())).await {
                        Ok(answer) => answer,
                        Err(_) => {
                            let path = p.get(..p.floor_char_boundary(100)).unwrap_or_default();
                            tracing::warn!(
                                path,
                                "operator API: no answer within {API_DEADLINE:?}; is the database answering?"
                            );
                            error(
                                503,
                                "deadline",
                                &format!(
                                    "no answer within {} s (is the database answering?); a change asked for may or may not have been made: look again",
                                    API_DEADLINE.as_secs()
                                ),
                            )
                        }
                    },
                }
            }
            _ => reply(404, "text/plain", "not found\n".into()),
        }
    }
}

impl Admin {
    /// `None` if the request presents the token, else the 401 to answer
    /// (a `None` token, the API off, refuses everything).
    fn authorized(&self, headers: &http::HeaderMap, path: &str) -> Option<Response<Vec<u8>>> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if self
            .token
            .as_ref()
            .is_some_and(|token| token_matches(presented, token.as_bytes()))
        {
            return None;
        }
        // The path as far as a log line needs it: a client chooses it.
        let path = path.get(..path.floor_char_boundary(100)).unwrap_or_default();
        tracing::warn!(path, "admin listener: refused (bad or missing token)");
        Some(error(
            401,
            "unauthorized",
            "Authorization: Bearer <admin token> required",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param(Some("host=Shop.Example.com%3A443&x=1"), "host").as_deref(),
            Some("Shop.Example.com:443")
        );
        assert_eq!(query_param(Some("a=1&all=1"), "all").as_deref(), Some("1"));
        assert_eq!(query_param(Some("a=1"), "host"), None);
        assert_eq!(query_param(None, "host"), None);
        assert_eq!(query_param(Some("host=%zz"), "host"), None);
    }

    #[test]
    fn a_parameter_given_twice_undecodable_or_with_a_nul_is_named() {
        assert_eq!(bad_query_param(None), None);
        assert_eq!(bad_query_param(Some("host=a.example&x=1&")), None);
        assert_eq!(bad_query_param(Some("status=%E9")).as_deref(), Some("status"));
        assert_eq!(bad_query_param(Some("limit=%G1")).as_deref(), Some("limit"));
        assert_eq!(bad_query_param(Some("name=%")).as_deref(), Some("name"));
        assert_eq!(bad_query_param(Some("host=a&host=b")).as_deref(), Some("host"));
        assert_eq!(bad_query_param(Some("after=a%00b")).as_deref(), Some("after"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"secret-token", b"secret-token"));
        assert!(!token_matches(b"secret-toke", b"secret-token"));
        assert!(!token_matches(b"", b"secret-token"));
        assert!(!token_matches(b"secret-tokeN", b"secret-token"));
    }
}
