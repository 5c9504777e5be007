//! The request path, phase by phase (Pingora's `ProxyHttp`):
//!
//! 1. `request_filter`: gather the facts (host, path, TLS, SNI), ask
//!    [`crate::decide`] what happens before the lookup (bad host, ACME
//!    challenge, landing, redirect), resolve the tenant through the cache,
//!    ask `decide` again (a page: 400/403/404/410/421/503 without touching a
//!    backend, a redirect, or the tenant's pool), then the tenant's rates;
//!    then (`proceed`) a request body with a length within
//!    `limits.request_body_buffer_bytes` is read whole ([`crate::body`])
//!    and only then is a slot of the tenant's in-flight cap taken: a
//!    request still arriving holds neither a backend nor the cap.
//!    An HTTP/2 stream's response writes get the send timeout (a client
//!    keeping one stream's window shut; the socket's own stalls are
//!    [`crate::conn::stream`]'s).
//! 2. `upstream_peer`: next healthy backend of that pool not tried yet.
//! 3. `upstream_request_filter`: apply [`crate::headers`]' edits (strip
//!    every client tenant header, forwarding headers, request id, Host,
//!    origin-form target, the `X-Tenant` stamp).
//! 4. `request_body_filter`: a body read first into a copy of its own goes
//!    in place of the last part Pingora hands on ([`crate::body`]); an
//!    HTTP/2 body streamed to the backend is held to the minimum rate as
//!    its parts come (408 below it).
//! 5. `response_filter`: while the process shuts down, responses say
//!    `Connection: close` so keep-alive clients reconnect elsewhere.
//! 6. `response_body_filter`: a response body of known, bounded length is
//!    held until it is whole ([`crate::response_body`]), so the backend's
//!    worker is free before a slow client has read it.
//! 7. `fail_to_proxy`: 502/504 pages for backend failures and timeouts, 408
//!    and 413 for a client's body (a
//!    response already begun ends short instead: no page after its head);
//!    a client that took none of its response within the send timeout
//!    gets nothing more.
//! 8. `logging`: one access-log line per request.
//!
//! Size: this is the one module that speaks Pingora's `ProxyHttp`; it holds
//! each phase and the helpers that write pages, redirects and headers into
//! Pingora's session, so the decisions themselves stay in `decide`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use ipnet::IpNet;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::conn::stream::{ConnFacts, Sni};
use crate::decide;
use crate::headers;
use crate::limits::{Full, Limits, Refused};
use crate::metrics::tenant::{method_index, rejection_index, Observation};
use crate::metrics::Metrics;
use crate::pages::{wants_json, PageKind};
use crate::reload::Live;
use crate::tenant::cache::{Resolution, TenantCache};
use crate::tenant::{host, Tenant};
use crate::upstream::pool::{Pool, Tried};

#[derive(Clone)]
pub struct Gateway {
    pub cache: Arc<TenantCache>,
    /// Pools, pages and the landing pool in effect (swapped by a config reload).
    pub live: Arc<arc_swap::ArcSwap<Live>>,
    pub signer: stamp::Signer,
    pub strip_www: bool,
    pub base_domains: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    /// Which forwarding headers are set (the others are only stripped).
    pub forward: headers::Forward,
    pub metrics: Arc<Metrics>,
    pub tls: Option<Arc<TlsRouting>>,
    /// ACME: HTTP-01 challenges are answered from the database.
    pub acme: Option<Arc<crate::tls::acme::Acme>>,
    /// Per-tenant rate and concurrency limits.
    pub limits: Arc<Limits>,
    /// `limits.send_timeout_ms`, for HTTP/2 streams.
    pub send_timeout: std::time::Duration,
    /// Which request bodies are read whole before a backend is chosen.
    pub bodies: crate::body::Buffering,
    /// What the bodies being read at once may hold.
    pub body_budget: crate::body::RequestBudget,
    /// Which response bodies are held whole before the client has them.
    pub response_bodies: crate::response_body::Buffering,
    /// What the response bodies held at once may hold.
    pub response_budget: crate::body::Budget,
}

/// What the request path needs to know about TLS.
pub struct TlsRouting {
    /// Plain-HTTP → HTTPS redirects, when enabled.
    pub redirect: Option<Redirect>,
}

pub struct Redirect {
    /// Port in the Location header (omitted when 443).
    pub port: u16,
    /// Paths served over plain HTTP (see [`crate::route::exempt`]).
    pub exempt: Vec<String>,
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    request_id: headers::RequestId,
    /// The client's own request id, sent once: forwarded as it came.
    request_id_as_sent: bool,
    host: Option<host::Host>,
    /// The `Host` going upstream already is `host` exactly
    /// ([`host::goes_as_is`]): forwarded as it is.
    host_as_sent: bool,
    /// That header's value, for a host the connection did not keep (its
    /// kept host's forwarding values are the connection's already): shared
    /// by `X-Forwarded-Host` instead of a copy of the host.
    host_value: Option<http::HeaderValue>,
    tenant: Option<Arc<Tenant>>,
    pool: Option<Arc<Pool>>,
    /// Backends tried, as indices into `pool`.
    tried: Tried,
    /// Set when the gateway answered by itself.
    page: Option<PageKind>,
    /// The request arrived over TLS.
    tls: bool,
    /// Sent to the landing pool (bare base domain).
    landing: bool,
    /// Counted in `requests_in_flight`.
    in_flight: bool,
    /// The tenant's concurrency slot, held until the backend's response has
    /// come whole and the request's body has all been sent (or the request
    /// ends): a client still reading the response holds no backend, so it
    /// holds no slot of the tenant's cap either.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Held back by a limit: the rejection reason.
    limited: Option<&'static str>,
    /// Whether the response body is held was decided ([`Gateway::hold_response`]).
    response_decided: bool,
    /// The response body being held whole.
    held_response: Option<Box<crate::response_body::Held>>,
    /// A request body read first into a copy of its own (larger than
    /// Pingora's buffer): sent in place of the last part Pingora hands on.
    request_body: Option<Box<HeldRequest>>,
    /// The connection closes on this request's unread body: it lingers
    /// once the request is logged ([`ConnFacts::linger_on_close`]).
    linger: bool,
    /// An HTTP/2 request body streamed to the backend (not read first):
    /// held to `limits.min_body_rate` as its parts come.
    streamed: Option<Streamed>,
}

/// An HTTP/2 request body on its way to the backend
/// ([`crate::body::Buffering::below_rate`]).
#[derive(Debug, Clone, Copy)]
struct Streamed {
    /// When the request was ready to go to the backend.
    since: Instant,
    /// The body's bytes handed on so far.
    bytes: u64,
}

/// What [`Gateway`]'s `request_body_filter` returns: done, and of no size
/// (its box allocates nothing).
struct Filtered;

impl std::future::Future for Filtered {
    type Output = Result<()>;

    fn poll(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A request body read first, with its shares of the budget, given back
/// once the response begins (a retry, which sends it again, comes only
/// before).
struct HeldRequest {
    body: bytes::Bytes,
    _shares: crate::body::Shares,
}

/// What the gateway answers itself instead of proxying.
enum Reply {
    /// One of its pages; `retry_after`: seconds for a `Retry-After` header.
    Page { kind: PageKind, retry_after: Option<u64> },
    /// An HTTP-01 key authorization (or 404 without one).
    Challenge(Option<String>),
    /// 308 to HTTPS on `port`.
    Redirect { host: host::Host, port: u16 },
    /// One of its pages, after which the connection ends (the request's
    /// body was not read whole).
    Closing(PageKind),
}

impl Reply {
    fn page(kind: PageKind) -> Reply {
        Reply::Page {
            kind,
            retry_after: None,
        }
    }
}

impl Gateway {
    /// Answer with one of the gateway's own pages. Returns `Ok(true)` for
    /// `request_filter` ("response sent"). `close`: tell the client this
    /// connection ends after the page; `retry_after`: seconds for a
    /// `Retry-After` header.
    async fn respond_page(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        kind: PageKind,
        close: bool,
        retry_after: Option<u64>,
    ) -> Result<bool> {
        ctx.page = Some(kind);
        let json = wants_json(session.req_header().headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
        let (status, body, ctype) = {
            let live = self.live.load();
            let page = live.pages.get(kind);
            match json {
                true => (page.status, page.json.clone(), "application/json"),
                false => (page.status, page.html.clone(), "text/html; charset=utf-8"),
            }
        };
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header(CONTENT_TYPE, ctype)?;
        resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(secs) = retry_after {
            resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
        }
        if close || session.is_process_shutting_down() {
            // Pingora writes `Connection` from its keepalive state.
            session.set_keepalive(None);
        }
        // The connection ends after this page (asked for here, by the
        // client's `Connection: close`, or by Pingora at shutdown; Pingora
        // drains a body only on a connection kept alive): a body still on
        // its way is drained before the close, so the client reads this
        // page, not a reset. Not for a client too slow already: lingering
        // would only give it longer.
        if kind != PageKind::RequestTimeout
            && !session.is_http2()
            && session.downstream_session.get_keepalive().is_none()
            && !session.is_body_done()
        {
            if let Some(conn) = ConnFacts::of(session.digest()) {
                conn.linger_on_close();
                ctx.linger = true;
            }
        }
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    /// The HTTP-01 key authorization (200 text/plain) or 404.
    async fn respond_challenge(&self, session: &mut Session, ctx: &mut Ctx, answer: Option<String>) -> Result<bool> {
        let Some(body) = answer else {
            return self.respond_page(session, ctx, PageKind::NotFound, false, None).await;
        };
        let mut resp = ResponseHeader::build(200, Some(4))?;
        resp.insert_header(CONTENT_TYPE, "text/plain")?;
        resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(bytes::Bytes::from(body)), true)
            .await?;
        Ok(true)
    }

    /// 308 to the same host and path over HTTPS.
    async fn redirect_to_https(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        host: host::Host,
        port: u16,
    ) -> Result<bool> {
        let pq = session
            .req_header()
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let location = if port == 443 {
            format!("https://{}{pq}", &*host)
        } else {
            format!("https://{}:{port}{pq}", &*host)
        };
        let mut resp = ResponseHeader::build(308, Some(4))?;
        resp.insert_header(http::header::LOCATION, location.as_str())?;
        resp.insert_header(CONTENT_LENGTH, "0")?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        ctx.host = Some(host);
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }

    /// The request filter's work up to its answer: `None` to proxy (pool
    /// and tenant in `ctx`), else what the gateway answers itself.
    async fn route(&self, session: &mut Session, ctx: &mut Ctx) -> Option<Reply> {
        self.metrics.requests_in_flight.inc();
        ctx.in_flight = true;
        (ctx.request_id, ctx.request_id_as_sent) = headers::request_id(&session.req_header().headers);

        // Gather the facts, ask `decide`, act.
        let req = session.req_header();
        if !forwardable_target(req.raw_path(), &req.method) {
            tracing::debug!(request_id = %ctx.request_id, "request target in no form the gateway forwards");
            return Some(Reply::page(PageKind::BadRequest));
        }
        let conn = ConnFacts::of(session.digest());
        let host = match host::request_host(&req.headers, &req.uri, conn.map(|f| &f.host)) {
            Ok((h, sent)) => {
                ctx.host_as_sent = host::goes_as_is(req.version, &req.uri, &h, sent.is_some());
                if matches!(h, host::Host::Own(_)) {
                    ctx.host_value = sent.cloned();
                }
                Some(h)
            }
            Err(e) => {
                tracing::debug!(error = %e, request_id = %ctx.request_id, "bad host");
                None
            }
        };
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let path = session.req_header().uri.path();
        let redirect = self.tls.as_ref().and_then(|t| t.redirect.as_ref());
        // The configuration is read through a guard, not a clone of its
        // `Arc` (whose count is a cache line every worker would write on
        // every request), and only in blocks without a wait: a guard is
        // meant to be short-lived. What a later phase needs is cloned out.
        let (first, landing) = {
            let live = self.live.load();
            let first = decide::first(&decide::Facts {
                host: host.as_deref(),
                path,
                tls: ctx.tls,
                acme: self.acme.is_some(),
                redirect: redirect.map(|r| decide::RedirectPolicy {
                    port: r.port,
                    exempt: &r.exempt,
                }),
                landing: live.landing.is_some(),
                base_domains: &self.base_domains,
            });
            let landing = match first {
                decide::First::Landing => live.landing.clone(),
                _ => None,
            };
            (first, landing)
        };
        let redirect = match first {
            decide::First::Page(kind) => return Some(Reply::page(kind)),
            decide::First::AcmeChallenge(token) => {
                let answer = match (token, &self.acme) {
                    (Some(_), Some(acme)) if !acme.admit_challenge(Self::client_ip(session), "http-01") => {
                        return Some(Reply::Page {
                            kind: PageKind::RateLimited,
                            retry_after: Some(1),
                        });
                    }
                    (Some(token), Some(acme)) => Box::pin(acme.http01(token)).await,
                    _ => None,
                };
                ctx.host = host;
                return Some(Reply::Challenge(answer));
            }
            decide::First::Redirect { port } => {
                let host = host.unwrap_or_default();
                return Some(Reply::Redirect { host, port });
            }
            decide::First::Landing => {
                ctx.pool = landing;
                ctx.host = host;
                ctx.landing = true;
                drop_header_case(session.req_header_mut());
                return None;
            }
            decide::First::Lookup { redirect } => redirect,
        };
        let host = host.unwrap_or_default();
        // The host the connection kept comes with the connection's memo of
        // its tenant (`TenantMemo`).
        let memo = conn.filter(|_| matches!(host, host::Host::Kept(_))).map(|c| &c.tenant);
        let resolution = self
            .cache
            .resolve_kept(host::lookup_name(&host, self.strip_www), ctx.start, memo)
            .await;
        let sni_tenant;
        let sni = match (&resolution, ctx.tls) {
            (Resolution::Found(_), true) => match conn.map(|f| &f.tls) {
                Some(Some(Sni::Absent)) => decide::SniFact::Agrees,
                Some(Some(Sni::Name(sni))) if **sni == *host => decide::SniFact::Agrees,
                Some(Some(Sni::Name(sni))) => {
                    sni_tenant = match self
                        .cache
                        .resolve_at(host::lookup_name(sni, self.strip_www), ctx.start)
                        .await
                    {
                        Resolution::Found(t) => Some(t),
                        _ => None,
                    };
                    decide::SniFact::OtherName {
                        tenant: sni_tenant.as_deref().map(Tenant::schema),
                    }
                }
                Some(Some(Sni::Invalid)) | Some(None) | None => decide::SniFact::Invalid,
            },
            _ => decide::SniFact::Agrees,
        };
        let (decision, pool) = {
            let live = self.live.load();
            let decision = decide::decide(&resolution, redirect, sni, |name| live.pools.get(name).is_some());
            let pool = match decision {
                decide::Decision::Proxy(decide::PoolChoice::Default) => Some(live.pools.default_pool().clone()),
                decide::Decision::Proxy(decide::PoolChoice::Pinned(name)) => live.pools.get(name).cloned(),
                _ => None,
            };
            (decision, pool)
        };
        ctx.host = Some(host);
        match (&resolution, decision) {
            (_, decide::Decision::Redirect { port }) => {
                // Counted like before the lookup existed: not as a tenant's request.
                let host = ctx.host.take().unwrap_or_default();
                return Some(Reply::Redirect { host, port });
            }
            (Resolution::Found(t), decide::Decision::Page { kind, attributed }) => {
                if attributed {
                    ctx.tenant = Some(t.clone());
                }
                if kind == PageKind::Unavailable {
                    tracing::error!(tenant = %t.schema(), pool = ?t.pool(), "tenant is pinned to a pool that is not configured");
                }
                return Some(Reply::page(kind));
            }
            (_, decide::Decision::Page { kind, .. }) => return Some(Reply::page(kind)),
            (_, decide::Decision::Proxy(_)) => {}
        }
        // The tenant moves into the context (one reference for the request,
        // not a second one to write and drop); `decide` proxies found
        // tenants only.
        let (Resolution::Found(tenant), Some(pool)) = (resolution, pool) else {
            return Some(Reply::page(PageKind::Unavailable));
        };
        // Fairness: the tenant's rate (and its clients'); its in-flight cap
        // once the request is ready to go (`Self::proceed`).
        let rated = tenant
            .limiter()
            .map(|l| self.limits.check_rate(l, || self.rate_client(session)));
        ctx.tenant = Some(tenant);
        if let Some(Err(refused)) = rated {
            return Some(Self::refused(ctx, refused));
        }
        ctx.pool = Some(pool);
        drop_header_case(session.req_header_mut());
        None
    }

    /// A request [`Self::route`] proxies, made ready to go: a small body read
    /// whole first (no backend is held while the client sends it), then a
    /// slot among the tenant's requests in flight to the backends.
    async fn proceed(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Option<Reply>> {
        if !session.is_body_empty() {
            // Refused before any of it is read (a client waiting for
            // `100 Continue` sends none); the connection closes, as its
            // body may be on its way.
            if self.bodies.declares_too_large(&session.req_header().headers) {
                return Ok(Some(Reply::Closing(PageKind::PayloadTooLarge)));
            }
            if let Some(len) = self.bodies.length(&session.req_header().headers) {
                // Boxed: only a request with a body needs the read's state
                // in this future, allocated per request.
                if !Box::pin(self.read_body_first(session, ctx, len)).await? {
                    return Ok(Some(Reply::Closing(PageKind::RequestTimeout)));
                }
            }
        }
        if let Some(limiter) = ctx.tenant.as_ref().and_then(|t| t.limiter()) {
            let slot = match self.limits.try_slot(limiter) {
                Ok(slot) => Ok(slot),
                // Boxed: the wait's timer would otherwise sit in this
                // future, allocated per request, for the rare request
                // that waits.
                Err(Full) => Box::pin(self.limits.wait_slot(limiter)).await,
            };
            match slot {
                Ok(slot) => ctx.slot = slot,
                Err(refused) => {
                    // Answered here: it went to no pool.
                    ctx.pool = None;
                    return Ok(Some(Self::refused(ctx, refused)));
                }
            }
        }
        // A body still to come goes to the backend as it comes. Over
        // HTTP/1 the connection's deadlines hold it to the minimum rate;
        // an HTTP/2 stream's parts are looked at as they come
        // (`request_body_filter`).
        if session.is_http2() && !session.is_body_done() {
            ctx.streamed = Some(Streamed {
                since: Instant::now(),
                bytes: 0,
            });
        }
        Ok(None)
    }

    /// The page for a request a limit held back.
    fn refused(ctx: &mut Ctx, refused: Refused) -> Reply {
        let (kind, reason) = match refused {
            Refused::Rate { .. } => (PageKind::RateLimited, "rate_limited"),
            Refused::ClientRate { .. } => (PageKind::RateLimited, "client_rate_limited"),
            Refused::Busy { .. } => (PageKind::Busy, "busy"),
        };
        ctx.limited = Some(reason);
        Reply::Page {
            kind,
            retry_after: Some(refused.retry_after_secs()),
        }
    }

    /// Reads the request's body (`len` bytes) whole before it goes
    /// anywhere: into Pingora's request body buffer, from which Pingora
    /// sends it on, or a larger one into `ctx.request_body`
    /// ([`crate::body::Reading`]). No backend is chosen or held while the
    /// client sends. Unless the bodies being read hold the whole budget
    /// already (or, for a copy, the half copies may hold): then it is
    /// streamed.
    ///
    /// `false`: a part of the body did not come within its rate, the idle
    /// bound or its deadline ([`crate::body::Buffering::next_wait`]; the
    /// 408 page follows). The client's own failures (gone, reset, cut for its
    /// rate by `conn::stream`) are the downstream's, answered with nothing,
    /// as when a body is streamed (Pingora leaves a filter's errors
    /// without a side, which `fail_to_proxy` would answer 500). A body
    /// that came whole with its head is answered 431.
    async fn read_body_first(&self, session: &mut Session, ctx: &mut Ctx, len: u64) -> Result<bool> {
        use crate::body::{Read, Reading};
        let Some(shares) = self.body_budget.take(len, self.rate_client(session)) else {
            self.metrics.bodies_over_budget.inc();
            return Ok(true);
        };
        if crate::body::expects_continue(session.req_header().version, &session.req_header().headers) {
            // The client waits for this before it sends.
            session.write_continue_response().await.map_err(|e| e.into_down())?;
        }
        // The backend gets the body at once: it is not asked to say
        // `100 Continue` (an HTTP/2 client's too: Pingora drops 1xx there).
        if session.req_header().headers.contains_key(http::header::EXPECT) {
            session.req_header_mut().remove_header(&http::header::EXPECT);
        }
        let start = Instant::now();
        let mut reading = Reading::new(len);
        let mut copy = bytes::BytesMut::new();
        let read = async {
            loop {
                if reading.buffer_now() {
                    session.enable_retry_buffering();
                }
                let wait = self.bodies.next_wait(len, reading.read(), start.elapsed());
                let Some(chunk) = tokio::time::timeout(wait, session.read_request_body())
                    .await
                    .map_err(|_| Error::explain(ErrorType::ReadTimedout, "request body read first"))??
                else {
                    break;
                };
                reading.took(chunk.len());
                if reading.copied() {
                    if copy.capacity() == 0 {
                        // Its length is the budget's share: taken at once.
                        copy.reserve(usize::try_from(len).unwrap_or(usize::MAX));
                    }
                    copy.extend_from_slice(&chunk);
                }
            }
            Ok::<(), Box<Error>>(())
        };
        let late = || {
            self.metrics.deadline_hits.with_label_values(&["body_rate"]).inc();
            tracing::debug!(len, elapsed = ?start.elapsed(), "request body not read first within its rate or deadline");
            Ok(false)
        };
        match read.await {
            Ok(()) => match reading.end() {
                Read::InBuffer => Ok(true),
                Read::Copied => {
                    ctx.request_body = Some(Box::new(HeldRequest {
                        body: copy.freeze(),
                        _shares: shares,
                    }));
                    Ok(true)
                }
                Read::WithHead => Error::e_explain(
                    ErrorType::HTTPStatus(431),
                    "a request body read first came whole with its head",
                ),
                Read::Short => Error::e_explain(ErrorType::ConnectionClosed, "request body shorter than its length")
                    .map_err(|e| e.into_down()),
            },
            // Ours, or Pingora's own bound on one HTTP/1 read (60 s).
            Err(e) if *e.etype() == ErrorType::ReadTimedout => late(),
            Err(e) => Err(e.into_down()),
        }
    }

    /// At a response body's first chunk that is not its last, once the
    /// response's head has been written: hold the rest of the body whole
    /// if [`crate::response_body`] says so and the budget has room (else
    /// it is streamed, as every body was before). Pingora filters a batch
    /// of what it read (the head and the chunks read with it) before it
    /// writes any of it: those chunks go on as they came, and a body that
    /// arrives in one read costs nothing here.
    #[cold]
    fn hold_response(&self, session: &Session, body: &mut Option<bytes::Bytes>, ctx: &mut Ctx) {
        // Not written yet; or a `100 Continue` (the gateway's own, for a body
        // it read first) or another 1xx head, which HTTP/1 records too: the
        // final head, which frames the body, is still to come.
        let Some(head) = final_head(session) else {
            return;
        };
        ctx.response_decided = true;
        if session.was_upgraded() {
            return;
        }
        let Some(len) = self.response_bodies.length(&head.headers) else {
            return;
        };
        let Some(share) = self.response_budget.take(len, self.rate_client(session)) else {
            self.metrics.responses_over_budget.inc();
            return;
        };
        let mut held = crate::response_body::Held::new(len, share);
        if held.take_in(body, false) == crate::response_body::Step::Started {
            self.metrics.responses_held.inc();
        }
        ctx.held_response = Some(Box::new(held));
    }

    /// Writes what [`Self::route`] decided to answer.
    async fn reply(&self, session: &mut Session, ctx: &mut Ctx, reply: Reply) -> Result<bool> {
        match reply {
            Reply::Page { kind, retry_after } => self.respond_page(session, ctx, kind, false, retry_after).await,
            Reply::Challenge(answer) => self.respond_challenge(session, ctx, answer).await,
            Reply::Redirect { host, port } => self.redirect_to_https(session, ctx, host, port).await,
            Reply::Closing(kind) => self.respond_page(session, ctx, kind, true, None).await,
        }
    }

    /// Per-tenant metrics for one finished request (atomics only).
    fn record(&self, session: &Session, e: Option<&Error>, ctx: &Ctx, status: u16, seconds: f64) {
        let tenants = &self.metrics.tenants;
        let owned;
        let stats = match &ctx.tenant {
            Some(t) => match t.stats() {
                Some(s) => s,
                None => {
                    owned = tenants.for_tenant(t.schema());
                    &owned
                }
            },
            None if ctx.landing => tenants.landing(),
            None => tenants.unknown(),
        };
        stats.observe(&Observation {
            method_index: method_index(&session.req_header().method),
            status,
            seconds,
            request_bytes: session.body_bytes_read() as u64,
            response_bytes: session.body_bytes_sent() as u64,
            upstream_error: e.is_some_and(|e| *e.esource() == pingora_error::ErrorSource::Upstream),
            retries: ctx.tried.len().saturating_sub(1) as u64,
            rejection: ctx.limited.or(ctx.page.map(|p| p.name())).and_then(rejection_index),
        });
    }

    fn client_ip(session: &Session) -> Option<IpAddr> {
        session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
    }

    /// Who a rate per client counts, and whose bodies are bounded per client
    /// (`body::Budget::per_client`): the peer, or behind a trusted proxy the
    /// address it forwarded for ([`headers::forwarded_client`]); an IPv6
    /// client per /64, as the connection caps count it.
    fn rate_client(&self, session: &Session) -> Option<IpAddr> {
        let peer = Self::client_ip(session);
        let client = match self.trusted(peer) {
            true => headers::forwarded_client(&session.req_header().headers, |ip| self.trusted(Some(ip))).or(peer),
            false => peer,
        };
        client.map(crate::conn::limits::client_key)
    }

    fn trusted(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.trusted_proxies.iter().any(|n| n.contains(&ip)))
    }
}

/// The response head written to the client, unless none is yet or it is
/// a 1xx other than 101 (HTTP/1 records a `100 Continue` too; the final
/// head follows it).
fn final_head(session: &Session) -> Option<&ResponseHeader> {
    session
        .response_written()
        .filter(|h| !h.status.is_informational() || h.status.as_u16() == 101)
}

/// An empty request header (no allocation) to stand in while the real one's
/// parts are edited.
/// Whether a request target (as the client sent it: Pingora's raw path) is
/// one the gateway forwards: origin form (`/path`), absolute form (whose
/// authority Pingora checks against `Host`, giving its path as the URI),
/// or `*` for `OPTIONS`. Any other, an authority form outside `CONNECT` or
/// a request line Pingora escaped into a target (`G ET /x` reads as method
/// `G`, target `ET%20/x`), has no path of its own: Pingora gives `/` as its
/// URI, so forwarded, the backend would get a request the client never
/// sent. Refused with a 400.
pub fn forwardable_target(raw: &[u8], method: &http::Method) -> bool {
    match raw {
        [b'/', ..] => true,
        b"*" => method == http::Method::OPTIONS,
        _ => matches!(raw_target_authority(raw), RawTargetAuthority::Absolute { .. }),
    }
}

fn placeholder() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

/// The client's HTTP/1 request without Pingora's map of its header names'
/// case, once it is to be proxied. Pingora starts the request it sends
/// upstream from a clone of the client's, that map included, and
/// `upstream_request_filter` drops the clone's map at once (the request
/// goes upstream without one); dropping the client's first saves cloning
/// and dropping a second map on every request (bench/RESULTS.md, seventh
/// round). Nothing else reads it: the client's request is only read after
/// this, and it is never written anywhere.
///
/// Kept as it is: a target the URI does not give back byte for byte
/// (absolute form, CONNECT, not UTF-8), since Pingora still reads the
/// client's raw target and a rebuilt request keeps only the URI.
fn drop_header_case(req: &mut RequestHeader) {
    let target_from_uri = req.raw_path_is_utf8()
        && req
            .uri
            .path_and_query()
            .is_some_and(|pq| pq.as_str().as_bytes() == req.raw_path());
    if req.has_case() && target_from_uri {
        *req = RequestHeader::from(http::request::Parts::from(std::mem::replace(req, placeholder())));
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context inside the request's future, which
    /// it boxes (by copying it whole) once per request; a pointer there
    /// instead of 168 bytes makes that copy ~480 bytes shorter, since the
    /// context sits in more than one of the future's states
    /// (bench/RESULTS.md).
    type CTX = Box<Ctx>;

    /// No downstream modules: Pingora's default adds a (disabled) response
    /// compression module whose per-request context and filters cost about
    /// 1 % of a request; responses pass through as the backend sent them.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx {
            start: Instant::now(),
            request_id: headers::RequestId::default(),
            request_id_as_sent: false,
            host: None,
            host_as_sent: false,
            host_value: None,
            tenant: None,
            pool: None,
            tried: Tried::new(),
            page: None,
            tls: false,
            landing: false,
            in_flight: false,
            slot: None,
            limited: None,
            response_decided: false,
            held_response: None,
            request_body: None,
            linger: false,
            streamed: None,
        })
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        // A stream whose window the client keeps shut leaves its socket
        // free, so only Pingora's per-write timeout sees it.
        if session.is_http2() {
            session.set_write_timeout(Some(self.send_timeout));
        }
        // Boxed: this future is allocated per request and is as large as
        // the largest thing it awaits; writing a response inline (and the
        // lookup's query, boxed in `tenant::cache`) made it 1,648 bytes,
        // past the allocator's small sizes (~240 instructions per request,
        // bench/RESULTS.md, eighth round). For the same reason no answer
        // of `route` is kept across `proceed`.
        if let Some(reply) = self.route(session, ctx).await {
            return Box::pin(self.reply(session, ctx, reply)).await;
        }
        match self.proceed(session, ctx).await? {
            None => Ok(false),
            Some(reply) => Box::pin(self.reply(session, ctx, reply)).await,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Box<Ctx>) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no pool chosen"))?;
        // Every backend tried: Pingora asks again only to retry a request
        // whose reused connection closed before any answer (a connect
        // failure is retried only while an untried backend remains,
        // `fail_to_connect`), which a new connection to that same backend
        // (the last tried: one that refused to connect may come earlier)
        // serves: a pool of one backend would answer 502 to every request
        // that met a keep-alive connection the backend had just closed.
        let backend = pool
            .select(&ctx.tried)
            .or_else(|| ctx.tried.last().copied())
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no backend available"))?;
        let peer = pool.peer(backend);
        ctx.tried.push(backend);
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet: safe to try another backend of the same pool.
        if ctx.pool.as_ref().is_some_and(|p| ctx.tried.len() < p.len()) {
            self.metrics.upstream_retries.inc();
            e.set_retry(true);
        }
        e
    }

    /// A body read first into a copy of its own goes in place of the last
    /// part Pingora hands on from its buffer ([`crate::body::Reading`]),
    /// on the first attempt and on a retry alike.
    ///
    /// Not an `async fn`: Pingora calls this for every request (a request
    /// without a body once, with none), and `async_trait` would box a
    /// future holding the arguments, an allocation per request. The work
    /// is done here and the future returned is `Filtered`, which has no
    /// size, so its box allocates nothing.
    fn request_body_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        body: &'life2 mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &'life3 mut Box<Ctx>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'async_trait>>
    where
        Box<Ctx>: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        // A body without a length (chunked, HTTP/2 without one) is held to
        // `max_request_body_bytes` as it comes (one with a length was, by
        // it, before it was read): 413 if nothing was answered yet.
        // (Off by default: then only the field is read.)
        if self.bodies.max_body > 0
            && body.is_some()
            && self.bodies.too_large(session.body_bytes_read() as u64)
            && !session.was_upgraded()
        {
            return Box::pin(std::future::ready(Error::e_explain(
                ErrorType::HTTPStatus(413),
                "request body over limits.max_request_body_bytes",
            )));
        }
        // An HTTP/2 body streamed to the backend, below the minimum rate:
        // 408 if nothing was answered yet (a byte every few seconds would
        // otherwise hold the backend's worker for ever: Pingora's read
        // timeout on the backend restarts with each part).
        if let (Some(streamed), Some(part)) = (ctx.streamed.as_mut(), body.as_ref()) {
            streamed.bytes = streamed.bytes.saturating_add(part.len() as u64);
            if self.bodies.below_rate(streamed.bytes, streamed.since.elapsed()) {
                self.metrics.deadline_hits.with_label_values(&["body_rate"]).inc();
                return Box::pin(std::future::ready(Error::e_explain(
                    ErrorType::HTTPStatus(408),
                    "request body below limits.min_body_rate",
                )));
            }
        }
        // Only in place of the last part Pingora hands on whole, from its
        // buffer (never an upgraded connection's bytes). A request without
        // a copy (nearly all) looks no further.
        if let Some(held) = &ctx.request_body {
            if body.is_some() && end_of_stream && !session.was_upgraded() {
                *body = Some(held.body.clone());
            }
        }
        Box::pin(Filtered)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let host = ctx.host.as_deref().unwrap_or_default();
        let ip = Self::client_ip(session);
        let mut edits = headers::Edits::new();
        let mut facts = headers::Upstream {
            peer: ip,
            trusted: self.trusted(ip),
            host,
            host_as_sent: ctx.host_as_sent,
            host_value: ctx.host_value.as_ref(),
            tls: ctx.tls,
            forward: self.forward,
            request_id: (!ctx.request_id_as_sent).then_some(ctx.request_id.as_str()),
            stamped: ctx.tenant.is_some(),
            built: None,
        };
        let conn = ConnFacts::of(session.digest());
        if !facts.trusted {
            // Built by the connection's first request, used by later ones
            // (`headers::Forwarding`).
            facts.built = conn.and_then(|c| c.forwarding.get_or_init(|| headers::Forwarding::new(&facts)).as_ref());
        }
        headers::upstream(&req.headers, &facts, &mut edits);
        // The request sent upstream is rebuilt from its parts (taken, not
        // copied: Pingora hands us its own copy of the client's request)
        // with the edits written straight into the header map: Pingora's
        // `insert_header` re-parses each name and keeps a second map for
        // the client's header case (~1,600 instructions per header, see
        // bench/RESULTS.md); without that map, names go out in lower case
        // (well-known ones title-cased), as they do for HTTP/2 clients.
        let end_stream = req.send_end_stream();
        let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder()));
        headers::to_origin_form(&mut parts.uri)
            .map_err(|headers::BadTarget| Error::explain(ErrorType::InvalidHTTPHeader, "bad request target"))?;
        if let Some(tenant) = &ctx.tenant {
            let signed = headers::Signed {
                method: parts.method.as_str(),
                host,
                path: parts.uri.path(),
                now: crate::clock::unix_secs(),
            };
            headers::stamp(
                &self.signer,
                tenant.schema(),
                &signed,
                conn.map(|c| &c.stamp),
                &mut edits,
            );
        }
        headers::apply(&mut edits, &mut parts.headers)
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "header value"))?;
        *req = RequestHeader::from(parts);
        if end_stream == Some(false) {
            req.set_send_end_stream(false);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        // A body read first is not sent again once the response begins: its
        // final head, or a 101 (Pingora calls this for a 100 or 103 too, after
        // which the request may still be retried and needs its copy).
        if ctx.request_body.is_some() && (!resp.status.is_informational() || resp.status == 101) {
            ctx.request_body = None;
        }
        // Shutting down: this response is the connection's last.
        if session.is_process_shutting_down() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<std::time::Duration>> {
        use crate::response_body::{h2_send_time, Step};
        // The backend is done with the request once its response has come
        // whole and the client's body has all gone to it (a backend may
        // answer before it has read the body, and then still read it).
        if end_of_stream && ctx.slot.is_some() && session.is_body_done() {
            ctx.slot = None;
        }
        match ctx.held_response.as_mut() {
            Some(held) => match held.take_in(body, end_of_stream) {
                Step::Started => self.metrics.responses_held.inc(),
                Step::Whole if session.is_http2() => {
                    let len = body.as_ref().map_or(0, |b| b.len());
                    session.set_write_timeout(Some(h2_send_time(self.send_timeout, len)));
                }
                Step::Passed | Step::Holding | Step::Whole => {}
            },
            None if !end_of_stream && !ctx.response_decided => self.hold_response(session, body, ctx),
            // A body that came in one read is on its way already.
            None => {}
        }
        Ok(None)
    }

    /// What a client causes is its request's access line (`error=`) and
    /// counters, not an ERROR line of Pingora's each: a client's own
    /// oversized request (413 over `limits.max_request_body_bytes`, 431 for
    /// a body that came with a huge head), its HTTP/2 body streamed below
    /// `limits.min_body_rate` (408), and every failure on the
    /// client's side (it closed or reset its connection or stream, took
    /// nothing written to it, sent a malformed body). Any client could
    /// otherwise fill the error log and drown the lines about backends and
    /// the gateway itself.
    ///
    /// Only the kinds of failure a client causes at will; any other error
    /// Pingora puts on the client's side stays an ERROR line. (HTTP/2's
    /// catch-all kind is among them: mostly a stream the client reset or
    /// closed, it would also carry the proxy misusing the HTTP/2 library,
    /// which then shows in the access line only.)
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        use ErrorType::*;
        match error.etype() {
            HTTPStatus(408 | 413 | 431) => true,
            ConnectionClosed | ReadError | WriteError | ReadTimedout | WriteTimedout | H2Error | InvalidHTTPHeader => {
                *error.esource() == pingora_error::ErrorSource::Downstream
            }
            _ => false,
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Box<Ctx>) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if *e.esource() == pingora_error::ErrorSource::Upstream =>
            {
                504
            }
            // An HTTP/2 stream the client took none of (proxied, or one of
            // our own pages; the socket's own stall fails as a write
            // error): its header went out, nothing more can reach it.
            ErrorType::WriteTimedout if *e.esource() != pingora_error::ErrorSource::Upstream => {
                self.metrics.deadline_hits.with_label_values(&["send"]).inc();
                0
            }
            _ => match e.esource() {
                pingora_error::ErrorSource::Upstream => 502,
                pingora_error::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        // A response already begun (its head out, perhaps part of its
        // body): what was written goes out, then the connection ends
        // (HTTP/2: the stream is reset), which tells the client the body is
        // short. A page here would be read as the rest of the body.
        if final_head(session).is_some() {
            session.downstream_session.shutdown().await;
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if matches!(code, 408 | 413 | 502 | 504) {
            let kind = match code {
                408 => PageKind::RequestTimeout,
                413 => PageKind::PayloadTooLarge,
                504 => PageKind::GatewayTimeout,
                _ => PageKind::BadGateway,
            };
            if self.respond_page(session, ctx, kind, true, None).await.is_err() {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
        } else if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        if ctx.in_flight {
            self.metrics.requests_in_flight.dec();
        }
        // A `100 Continue` alone is no answer (the client left before one).
        let status = final_head(session).map_or(0, |r| r.status.as_u16());
        let seconds = ctx.start.elapsed().as_secs_f64();
        self.record(session, e, ctx, status, seconds);
        let req = session.req_header();
        tracing::info!(
            target: "access",
            tenant = %ctx.tenant.as_ref().map(|t| t.schema()).unwrap_or("-"),
            host = %ctx.host.as_deref().unwrap_or("-"),
            method = %req.method,
            path = %req.uri.path(),
            status,
            pool = %ctx.pool.as_ref().map(|p| &*p.name).unwrap_or("-"),
            backend = %ctx
                .pool
                .as_ref()
                .zip(ctx.tried.last())
                .and_then(|(p, &i)| p.addr(i))
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            attempts = ctx.tried.len(),
            page = %ctx.page.map(|p| p.name()).unwrap_or("-"),
            latency_ms = seconds * 1e3,
            request_id = %ctx.request_id,
            error = %e.map(|e| e.to_string()).as_deref().unwrap_or("-"),
        );
        if ctx.linger {
            // Pingora's error paths drop the session without the shutdown
            // that lingers, so it is done here, on every path (where the
            // session is finished normally, its own shutdown then finds it
            // done). The request's holdings go back first: a lingering
            // client holds nothing of its tenant's.
            ctx.slot = None;
            ctx.held_response = None;
            ctx.request_body = None;
            session.downstream_session.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_origin_absolute_and_asterisk_targets_are_forwarded() {
        use http::Method;
        for (target, method) in [
            ("/", Method::GET),
            ("/w/1?q=2", Method::POST),
            ("http://ferrari.myapp.localhost/w", Method::GET),
            ("https://ferrari.myapp.localhost", Method::GET),
            ("*", Method::OPTIONS),
        ] {
            assert!(forwardable_target(target.as_bytes(), &method), "{target}");
        }
        for (target, method) in [
            ("ET%20/w/1", Method::GET),
            ("ferrari.myapp.localhost:80", Method::GET),
            ("*", Method::GET),
            ("w/1", Method::GET),
            ("", Method::GET),
            ("http:/\\host/", Method::GET),
            ("://host/", Method::GET),
        ] {
            assert!(!forwardable_target(target.as_bytes(), &method), "{target}");
        }
    }

    fn request(target: &[u8]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", Some(2)).unwrap();
        req.set_raw_path(target).unwrap();
        req.append_header("X-Custom-Name", "1").unwrap();
        req.append_header("Host", "acme.myapp.test").unwrap();
        req
    }

    #[test]
    fn an_origin_form_request_loses_only_its_header_case() {
        let mut req = request(b"/a/b?c=d");
        assert!(req.has_case());
        let before = req.as_owned_parts();
        drop_header_case(&mut req);
        assert!(!req.has_case());
        assert_eq!(req.method, before.method);
        assert_eq!(req.uri, before.uri);
        assert_eq!(req.version, before.version);
        assert_eq!(req.headers, before.headers);
        assert_eq!(req.raw_path(), b"/a/b?c=d");
        assert!(req.raw_path_is_utf8());
    }

    #[test]
    fn a_target_the_uri_does_not_give_back_is_kept_with_its_case() {
        for target in [&b"http://acme.myapp.test/a?b"[..], b"/caf\xe9"] {
            let mut req = request(target);
            drop_header_case(&mut req);
            assert!(req.has_case(), "{target:?}");
            assert_eq!(req.raw_path(), target);
        }
    }
}
