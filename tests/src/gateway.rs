//! The gateway under test: config, ports, start, CLI, operator API,
//! metrics, raw HTTP, the usual two-tenant stack.

use crate::*;

/// A running gateway with its admin listener (and TLS listener when configured).
pub struct Gateway {
    pub proc_: Proc,
    pub port: u16,
    pub admin_port: u16,
    /// The port substituted for `{TLS_PORT}` in the config body.
    pub tls_port: u16,
    pub dir: tempfile::TempDir,
}

/// The three listening ports of a gateway.
#[derive(Debug, Clone, Copy)]
pub struct GatewayPorts {
    pub http: u16,
    pub admin: u16,
    pub tls: u16,
}

impl GatewayPorts {
    pub fn free() -> GatewayPorts {
        GatewayPorts {
            http: free_port(),
            admin: free_port(),
            tls: free_port(),
        }
    }
}

/// The operator API token of the test gateways (`admin.token_env = "TG_ADMIN_TOKEN"`).
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// The key the test gateways encrypt stored private keys with.
pub const CERT_KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// `[pools.<name>]` sections for backends on these ports (fast health checks).
pub fn pools_toml(pools: &[(&str, &[u16])]) -> String {
    let mut s = String::new();
    for (name, ports) in pools {
        let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        s.push_str(&format!(
            "[pools.{name}]\nbackends = [{}]\nhealth_check_interval_ms = 200\nhealth_check_threshold = 2\nconnect_timeout_ms = 500\n\n",
            list.join(", ")
        ));
    }
    s
}

/// How a gateway is started: its database, config body, shutdown grace,
/// ports and extra environment ([`Gateway::builder`]). A `Stack` keeps one
/// (without ports) to start more gateways like its first.
#[derive(Clone)]
pub struct GatewayBuilder {
    pub(crate) db_url: String,
    pub(crate) body: String,
    grace_secs: u64,
    pub(crate) ports: Option<GatewayPorts>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
}

impl GatewayBuilder {
    /// `listen.shutdown_grace_secs` (default 1).
    pub fn grace(mut self, secs: u64) -> GatewayBuilder {
        self.grace_secs = secs;
        self
    }

    /// Ports chosen beforehand (e.g. handed to Pebble first); default: free ones.
    pub fn ports(mut self, ports: GatewayPorts) -> GatewayBuilder {
        self.ports = Some(ports);
        self
    }

    /// One more environment variable (a later one of the same name wins).
    pub fn env(mut self, key: &str, value: &str) -> GatewayBuilder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The config body with the first `from` (which must be there) replaced by `to`.
    pub fn edit_config(mut self, from: &str, to: &str) -> GatewayBuilder {
        assert!(self.body.contains(from), "the config has no {from:?}:\n{}", self.body);
        self.body = self.body.replacen(from, to, 1);
        self
    }

    /// Where the gateway's stdout and stderr go (default: `gateway.log`
    /// in its directory). A FIFO here is a log nobody reads until the test
    /// does; [`Proc::log`] (which reads to its end) must not be used then.
    pub fn log_file(mut self, path: &Path) -> GatewayBuilder {
        self.log = Some(path.to_owned());
        self
    }

    pub fn start(self) -> Result<Gateway> {
        let ports = self.ports.unwrap_or_else(GatewayPorts::free);
        Gateway::launch(
            &self.db_url,
            &self.body,
            self.grace_secs,
            ports,
            &self.env,
            self.log.as_deref(),
        )
    }
}

impl Gateway {
    /// A gateway on `db_url` whose config is `body` after the generated
    /// `[listen]` section (so it may add more sections, e.g. pools);
    /// `{TLS_PORT}` in it becomes the TLS port. Most suites start from
    /// [`crate::Stack::builder`] instead.
    pub fn builder(db_url: &str, body: &str) -> GatewayBuilder {
        GatewayBuilder {
            db_url: db_url.to_owned(),
            body: body.to_owned(),
            grace_secs: 1,
            ports: None,
            env: Vec::new(),
            log: None,
        }
    }

    /// `Gateway::builder(db_url, body).start()`.
    pub fn start(db_url: &str, body: &str) -> Result<Gateway> {
        Gateway::builder(db_url, body).start()
    }

    fn launch(
        db_url: &str,
        body: &str,
        grace_secs: u64,
        ports: GatewayPorts,
        env: &[(String, String)],
        log: Option<&Path>,
    ) -> Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let GatewayPorts {
            http: port,
            admin: admin_port,
            tls: tls_port,
        } = ports;
        let mut body = body.replace("{TLS_PORT}", &tls_port.to_string());
        // Suites about other things route custom domains without claims
        // (the behaviour they were written for); hostnames.rs sets its own.
        if !body.contains("[custom_domains]") {
            body.push_str("\n[custom_domains]\nverification = \"none\"\n");
        }
        let cfg = format!(
            "[listen]\nhttp = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin_port}\"\nthreads = 2\nshutdown_grace_secs = {grace_secs}\n\
             upgrade_sock = \"{}\"\n\n{body}",
            dir.path().join("upgrade.sock").display()
        );
        let path = write_file(dir.path(), "gateway.toml", &cfg);
        let mut c = Command::new(bin("gateway"));
        common_env(&mut c, db_url);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        c.arg("--config").arg(&path);
        let log = log.map_or_else(|| dir.path().join("gateway.log"), Path::to_owned);
        let mut proc_ = Proc::spawn("gateway", c, log)?;
        wait_healthy(&mut proc_, admin_port, "/healthz", Duration::from_secs(30))?;
        wait_until("gateway public port", Duration::from_secs(10), || port_open(port))?;
        let gw = Gateway {
            proc_,
            port,
            admin_port,
            tls_port,
            dir,
        };
        if body.contains("[tls]") {
            wait_until("gateway TLS port", Duration::from_secs(10), || port_open(tls_port))?;
        }
        // Ready for tests once cache invalidation is live (so nothing cached
        // before it can be marked stale by the first LISTEN).
        wait_until("invalidation listener", Duration::from_secs(20), || {
            gw.metric("tenant_gateway_invalidation_listener_up") == 1.0
        })?;
        Ok(gw)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `gateway --config <this gateway's config> ARGS` against `db_url`; its
    /// stdout (panics with stderr if it fails).
    pub fn cli(&self, db_url: &str, args: &[&str]) -> String {
        let out = self.cli_output(db_url, args);
        assert!(
            out.status.success(),
            "gateway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `gateway --config <this gateway's config> ARGS`, whatever its outcome.
    pub fn cli_output(&self, db_url: &str, args: &[&str]) -> Output {
        self.cli_output_env(db_url, args, &[])
    }

    /// [`Gateway::cli_output`] with more environment variables.
    pub fn cli_output_env(&self, db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.cli_command(db_url, args);
        c.envs(env.iter().copied());
        c.output().expect("run the gateway CLI")
    }

    /// The command [`Gateway::cli_output`] runs (to run it elsewhere, e.g.
    /// on another thread).
    pub fn cli_command(&self, db_url: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin("gateway"));
        common_env(&mut c, db_url);
        c.arg("--config").arg(self.dir.path().join("gateway.toml")).args(args);
        c
    }

    /// Start a new gateway process with this one's config and `--upgrade`,
    /// and wait until it waits for the sockets (then SIGQUIT this one).
    pub fn upgrade(&self, db_url: &str) -> Result<Proc> {
        let mut c = Command::new(bin("gateway"));
        common_env(&mut c, db_url);
        c.arg("--config")
            .arg(self.dir.path().join("gateway.toml"))
            .arg("--upgrade");
        let proc_ = Proc::spawn("gateway-upgraded", c, self.dir.path().join("gateway-upgraded.log"))?;
        let sock = self.dir.path().join("upgrade.sock");
        wait_until("the new process waits for the sockets", Duration::from_secs(30), || {
            sock.exists()
        })?;
        Ok(proc_)
    }

    /// How long the gateway's log is now, for [`Gateway::wait_logged`].
    pub fn log_len(&self) -> usize {
        self.proc_.log().len()
    }

    /// Wait (up to `timeout`) until the gateway has logged `text` after the
    /// first `since` bytes of its log ([`Gateway::log_len`] taken before
    /// the step that should make it log; 0: anywhere); the log is shown if
    /// it does not.
    pub fn wait_logged(&self, text: &str, since: usize, timeout: Duration) {
        self.proc_.log_when(&format!("{text:?}"), timeout, |log| {
            log.get(since..).is_some_and(|after| after.contains(text))
        });
    }

    /// The value of an unlabelled metric (or the sum over its label sets).
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.scrape().unwrap_or_default(), name, &[])
    }

    /// `METHOD /api/v1/<path>` on the admin listener with `token` (None: no
    /// Authorization header): (status, JSON body or Null).
    pub fn api(&self, method: http::Method, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let client = http::client();
        let mut r = client.request(method, &format!("http://127.0.0.1:{}/api/v1/{path}", self.admin_port));
        if let Some(t) = token {
            r = r.header("authorization", &format!("Bearer {t}"));
        }
        let r = r.send().expect("admin listener answers");
        (r.status, serde_json::from_str(&r.body).unwrap_or_default())
    }

    /// The admin listener's `/metrics` text.
    /// `/metrics`, with the admin token (asked for with `admin.metrics_token`).
    pub fn scrape(&self) -> ::reqwest::Result<String> {
        http::client()
            .get(&format!("http://127.0.0.1:{}/metrics", self.admin_port))
            .header("authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .send()
            .map(|r| r.body)
    }

    /// Wait until `/readyz` reports every listed backend of `pool` with `healthy`.
    pub fn wait_backend(&self, pool: &str, backend_port: u16, healthy: bool, timeout: Duration) -> Result<()> {
        let client = http::client();
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        let key = format!("127.0.0.1:{backend_port}");
        wait_until(&format!("backend {key} healthy={healthy}"), timeout, || {
            client
                .get(&url)
                .send()
                .ok()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
                .is_some_and(|v| v["pools"][pool][&key] == healthy)
        })
    }
}

/// Sum of the samples of metric `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            if !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// `n` TCP connections to 127.0.0.1:`port` from source address `from` (a
/// loopback alias: another client address), in blocking mode, each
/// connected within 5 s.
pub fn connections_from(from: &str, port: u16, n: usize) -> Vec<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..n {
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            socket
                .bind(format!("{from}:0").parse().expect("an address"))
                .expect("bind the source address");
            let conn = tokio::time::timeout(Duration::from_secs(5), socket.connect(([127, 0, 0, 1], port).into()))
                .await
                .expect("connect in time")
                .expect("connect");
            let conn = conn.into_std().expect("a std stream");
            conn.set_nonblocking(false).expect("blocking mode");
            held.push(conn);
        }
        held
    })
}

/// Send raw bytes to 127.0.0.1:`port` and read the response head and body
/// (until the peer closes or `Content-Length` is satisfied).
pub fn raw_http(port: u16, request: impl AsRef<[u8]>) -> Result<(u16, String)> {
    let mut s = connect(port)?;
    s.write_all(request.as_ref())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if buf.is_empty() => return Err(e.into()),
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            if content_length(&text[..end]).is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok((status_of(&text)?, text))
}

/// The status code of a response that starts `text`.
fn status_of(text: &str) -> Result<u16> {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))
}

/// The `Content-Length` of a response head.
fn content_length(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok())
}

/// A connection to 127.0.0.1:`port` whose reads give up after 10 s.
fn connect(port: u16) -> Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// One kept-alive client connection to 127.0.0.1: each [`KeepAlive::send`]
/// writes a request and reads exactly one response ([`exchange`]), so the
/// next request goes out on the same connection.
pub struct KeepAlive {
    stream: TcpStream,
}

impl KeepAlive {
    pub fn connect(port: u16) -> Result<KeepAlive> {
        Ok(KeepAlive { stream: connect(port)? })
    }

    /// The status and the body of the response to `request`.
    pub fn send(&mut self, request: &str) -> Result<(u16, String)> {
        let (head, body) = exchange(&mut self.stream, request)?;
        Ok((status_of(&head)?, body))
    }
}

/// Write `request` on `stream` and read exactly its response: the head
/// byte by byte (so nothing after it is consumed), the body by
/// `Content-Length`; the connection stays open for the next. A socket
/// read timeout (a paced connection's) is waited through, for 10 s in all.
/// Returns the head and the body.
pub fn exchange(stream: &mut TcpStream, request: &str) -> Result<(String, String)> {
    stream.write_all(request.as_bytes())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        read_some(stream, &mut byte, deadline)
            .with_context(|| format!("after {:?}", String::from_utf8_lossy(&head)))?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len = content_length(&head).with_context(|| format!("no Content-Length in {head:?}"))?;
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        got += read_some(stream, &mut body[got..], deadline).with_context(|| format!("in the body after {head:?}"))?;
    }
    Ok((head, String::from_utf8_lossy(&body).into_owned()))
}

/// One read of at least a byte, waiting through read timeouts until
/// `deadline`; the peer closing is an error.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize> {
    loop {
        match stream.read(buf) {
            Ok(0) => bail!("connection closed"),
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    && Instant::now() < deadline => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// GET `path` once per host (as the Host header) against 127.0.0.1:`port`,
/// `concurrency` at a time; returns the statuses (0 for transport errors).
pub fn fire_requests(port: u16, path: &str, hosts: Vec<String>, concurrency: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let url = format!("http://127.0.0.1:{port}{path}");
    rt.block_on(async move {
        // Every request bounded: a hung one fails the test instead of CI.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("client");
        let hosts = Arc::new(hosts);
        let next = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, hosts, next, url) = (client.clone(), hosts.clone(), next.clone(), url.clone());
            set.spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(h) = hosts.get(i) else { break };
                    let r = client.get(&url).header("host", h).send().await;
                    out.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
                }
                out
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.extend(r.expect("request task"));
        }
        all
    })
}
