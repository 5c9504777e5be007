//! The floor for the benchmark: a Pingora proxy with no tenancy at all
//! (round robin over the backends, one header set). `bench/run.py` runs it
//! next to the gateway so the table shows what Pingora itself costs.
//!
//! Usage: bare_pingora [--timeouts] [--tls ADDR CERT KEY] LISTEN BACKEND [BACKEND...]
//!
//! `--timeouts`: every peer carries the gateway's default upstream timeouts
//! (connect 1 s, read and write 30 s, idle 60 s), as a production proxy
//! must, on the timer the gateway uses for them
//! (`gateway::upstream::TOKIO_TIMERS_FROM_SECS`), and HTTP/2 connections
//! the gateway's idle timeout (`limits.idle_timeout_ms`, Pingora's
//! `h2_idle_timeout`); without it, none (Pingora's default). The
//! difference is what Pingora's per-operation timers cost
//! (bench/RESULTS.md).
//!
//! `--tls`: also serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on ADDR. The
//! pingora-core build here has no TLS of its own, so this listener is the
//! gateway's (`conn::listener` + `tls::accept`, default limits and
//! deadlines) in front of the same bare proxy: the HTTPS rows then compare
//! the tenancy work alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::{HttpProxy, ProxyHttp, Session};

// Same allocator as the gateway, so the difference is the tenancy work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    backends: Vec<String>,
    next: AtomicUsize,
    timeouts: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        let mut peer = HttpPeer::new(self.backends[i].as_str(), false, String::new());
        if self.timeouts {
            let o = &mut peer.options;
            o.connection_timeout = Some(Duration::from_secs(1));
            o.total_connection_timeout = Some(Duration::from_secs(1));
            o.read_timeout = Some(Duration::from_secs(30));
            o.write_timeout = Some(Duration::from_secs(30));
            o.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(&self, _s: &mut Session, req: &mut RequestHeader, _ctx: &mut ()) -> Result<()> {
        req.insert_header("x-tenant", "bare")
    }
}

/// The gateway's HTTPS listener (its TLS accept path, default connection
/// limits and deadlines) serving `app`, with one certificate for every name.
fn tls_listener(
    addr: &str,
    cert: &str,
    key: &str,
    app: Arc<HttpProxy<Bare>>,
) -> Result<impl pingora_core::services::Service, String> {
    use gateway::conn::{deadline::Timeouts, drain::Drain, limits, listener};
    use gateway::tls::{accept, store};
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("--tls {addr}: {e}"))?;
    let files = gateway::config::CertFiles {
        cert_file: cert.into(),
        key_file: key.into(),
    };
    let load = || store::Cert::load(&files).map_err(|e| format!("--tls certificate: {e}"));
    let certs = Arc::new(store::CertStore::new());
    certs.replace_files(vec![load()?], Some(load()?));
    let metrics = Arc::new(gateway::metrics::Metrics::new(100));
    let cfg = gateway::config::LimitsConfig::default();
    let (total, per_ip) = gateway::config::connection_caps(&cfg, 65_536);
    Ok(listener::Listener {
        name: "https",
        addr,
        socket: Some(listener::bind(addr).map_err(|e| format!("--tls {addr}: {e}"))?),
        app,
        handshake: Arc::new(accept::TlsHandshake {
            // Resumption off, as on every peer in the benchmark (a resumed
            // handshake skips the certificate signature).
            config: accept::server_config(certs.clone(), false).map_err(|e| e.to_string())?,
            store: certs,
            acme: None,
            timeout: Duration::from_secs(10),
            metrics: metrics.clone(),
        }),
        limits: limits::ConnLimits::new(total, limits::PerIp::new(per_ip as u64)),
        timeouts: Timeouts {
            head: cfg.request_head_timeout,
            idle: cfg.idle_timeout,
            send: cfg.send_timeout,
            min_body_rate: cfg.min_body_rate,
            body_grace: cfg.body_rate_grace,
            linger: cfg.lingering_close,
        },
        metrics,
        drain: Arc::new(Drain::default()),
    })
}

fn main() -> std::process::ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let timeouts = args.first().is_some_and(|a| a == "--timeouts");
    if timeouts {
        args.remove(0);
    }
    let tls = match args.first().map(String::as_str) {
        Some("--tls") if args.len() >= 4 => {
            let tls: Vec<String> = args.drain(..4).skip(1).collect();
            Some(tls)
        }
        _ => None,
    };
    let Some((listen, backends)) = args.split_first().filter(|(_, b)| !b.is_empty()) else {
        eprintln!("usage: bare_pingora [--timeouts] [--tls ADDR CERT KEY] LISTEN BACKEND [BACKEND...]");
        return std::process::ExitCode::from(2);
    };
    // A subscriber filtered by RUST_LOG, as the gateway has (bench/run.py
    // gives both the same filter). Without one, the spans the h2 crate
    // opens on every poll fall back to the `log` crate (tracing's `log`
    // feature, enabled by sqlx in this build) and cost this floor ~8,000
    // instructions (~0.45 µs) per HTTP/2 request that the gateway does not
    // pay (bench/RESULTS.md, fifth round).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let conf = ServerConf {
        threads: 1,
        // As the gateway runs by default (`listen.work_stealing = false`).
        work_stealing: false,
        // With `--timeouts`, on the timer the gateway chooses for them.
        fast_timeout_to_tokio_threshold_seconds: if timeouts {
            gateway::upstream::TOKIO_TIMERS_FROM_SECS
        } else {
            ServerConf::default().fast_timeout_to_tokio_threshold_seconds
        },
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let bare = Bare {
        backends: backends.to_vec(),
        next: AtomicUsize::new(0),
        timeouts,
    };
    if let Some(tls) = tls {
        let bare_tls = Bare {
            backends: backends.to_vec(),
            next: AtomicUsize::new(0),
            timeouts,
        };
        let mut app = pingora_proxy::http_proxy(&server.configuration, bare_tls);
        if timeouts {
            // As the gateway sets it: an idle HTTP/2 connection is closed
            // (HTTP/1's idle bound is the listener's, here as there).
            let mut options = pingora_core::apps::HttpServerOptions::default();
            options.h2_idle_timeout = Some(gateway::config::LimitsConfig::default().idle_timeout);
            app.server_options = Some(options);
        }
        let app = Arc::new(app);
        match tls_listener(&tls[0], &tls[1], &tls[2], app) {
            Ok(service) => {
                server.add_service(service);
            }
            Err(e) => {
                eprintln!("bare_pingora: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
