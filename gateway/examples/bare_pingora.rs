//! The floor for the benchmark: a Pingora proxy with no tenancy at all
//! (round robin over the backends, one header set). `bench/run.py` runs it
//! next to the gateway so the table shows what Pingora itself costs.
//!
//! Usage: bare_pingora [--timeouts] LISTEN BACKEND [BACKEND...]
//!
//! `--timeouts`: every peer carries the gateway's default upstream timeouts
//! (connect 1 s, read and write 30 s, idle 60 s), as a production proxy
//! must; without it, none (Pingora's default). The difference is what
//! Pingora's per-operation timers cost (bench/RESULTS.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};

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

fn main() -> std::process::ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let timeouts = args.first().is_some_and(|a| a == "--timeouts");
    if timeouts {
        args.remove(0);
    }
    let Some((listen, backends)) = args.split_first().filter(|(_, b)| !b.is_empty()) else {
        eprintln!("usage: bare_pingora [--timeouts] LISTEN BACKEND [BACKEND...]");
        return std::process::ExitCode::from(2);
    };
    let conf = ServerConf {
        threads: 1,
        // As the gateway runs by default (`listen.work_stealing = false`).
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let bare = Bare {
        backends: backends.to_vec(),
        next: AtomicUsize::new(0),
        timeouts,
    };
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
