//! Debian's Pebble as the CA, pebble-challtestsrv as a real DNS server on
//! loopback, and a tiny HTTP server for customer-served files.

use crate::*;

/// Debian's Pebble (Let's Encrypt's test CA) on loopback, validating against
/// the given gateway ports, with every name resolving to 127.0.0.1 through
/// pebble-challtestsrv's DNS.
pub struct Pebble {
    pebble: Option<Proc>,
    dns: DnsServer,
    dir: tempfile::TempDir,
    pub port: u16,
    pub management_port: u16,
    ca: PathBuf,
}

/// Debian's `pebble-challtestsrv` as a real DNS server on loopback: every
/// name has A 127.0.0.1 unless set otherwise; TXT, A and CNAME records are
/// set through its management API.
pub struct DnsServer {
    _proc: Proc,
    pub port: u16,
    management: u16,
}

impl DnsServer {
    pub fn start(dir: &Path) -> Result<DnsServer> {
        let (port, management) = (free_port(), free_port());
        let mut c = Command::new("pebble-challtestsrv");
        c.args([
            "-management",
            &format!("127.0.0.1:{management}"),
            "-dns01",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]);
        let proc_ = Proc::spawn("pebble-challtestsrv", c, dir.join(format!("challtestsrv-{port}.log")))?;
        wait_until("challtestsrv", Duration::from_secs(20), || port_open(management))?;
        Ok(DnsServer {
            _proc: proc_,
            port,
            management,
        })
    }

    fn manage(&self, op: &str, body: serde_json::Value) {
        let r = http::client()
            .request(
                ::reqwest::Method::POST,
                &format!("http://127.0.0.1:{}/{op}", self.management),
            )
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("challtestsrv {op}: {e}"));
        assert_eq!(r.status, 200, "challtestsrv {op}: {}", r.body);
    }

    /// Publish a TXT record (replacing the name's TXT values).
    pub fn set_txt(&self, name: &str, value: &str) {
        self.manage("clear-txt", serde_json::json!({ "host": format!("{name}.") }));
        self.manage(
            "set-txt",
            serde_json::json!({ "host": format!("{name}."), "value": value }),
        );
    }

    /// Make `name` a CNAME to `target`.
    pub fn set_cname(&self, name: &str, target: &str) {
        self.manage(
            "set-cname",
            serde_json::json!({ "host": format!("{name}."), "target": format!("{target}.") }),
        );
    }

    /// Give `name` these A records instead of the default 127.0.0.1.
    pub fn set_a(&self, name: &str, addresses: &[&str]) {
        self.manage(
            "add-a",
            serde_json::json!({ "host": format!("{name}."), "addresses": addresses }),
        );
    }

    /// Drop `name`'s A records: it has the default 127.0.0.1 again.
    pub fn clear_a(&self, name: &str) {
        self.manage("clear-a", serde_json::json!({ "host": format!("{name}.") }));
    }

    pub fn clear_txt(&self, name: &str) {
        self.manage("clear-txt", serde_json::json!({ "host": format!("{name}.") }));
    }

    /// Answer every query for `name` with SERVFAIL (`false`: answer again).
    pub fn servfail(&self, name: &str, fail: bool) {
        let op = if fail { "set-servfail" } else { "clear-servfail" };
        self.manage(op, serde_json::json!({ "host": format!("{name}.") }));
    }
}

/// Read a request head from `s` (up to its blank line, and whatever came
/// with it): `None` if the stream ended or failed before a whole one came.
pub fn read_request_head(s: &mut impl std::io::Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// A plain HTTP server answering every request with the current `body`
/// (status 200), on a thread, until the test ends. Returns its port.
pub fn serve_text(body: std::sync::Arc<std::sync::Mutex<String>>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            read_request_head(&mut s);
            let body = body.lock().map(|b| b.clone()).unwrap_or_default();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

impl Pebble {
    /// `ca_dir` holds the dev CA (`gateway certs dev`), which signs Pebble's
    /// own HTTPS certificate. `validity_secs`: lifetime of issued certificates.
    pub fn start(ca_dir: &Path, http_port: u16, tls_port: u16, validity_secs: u64) -> Result<Pebble> {
        let dir = tempfile::tempdir()?;
        tls::issue(ca_dir, &["127.0.0.1", "localhost"], &dir.path().join("server"));
        let (port, management_port) = (free_port(), free_port());
        let cfg = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.path().join("server.pem"),
            "privateKey": dir.path().join("server.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        write_file(dir.path(), "pebble.json", &cfg.to_string());
        let dns = DnsServer::start(dir.path())?;
        let mut p = Pebble {
            pebble: None,
            dns,
            ca: ca_dir.join("ca.pem"),
            dir,
            port,
            management_port,
        };
        p.start_pebble()?;
        Ok(p)
    }

    /// (Re)start the Pebble process on the same ports. A restarted Pebble
    /// has a new root and forgets accounts, like a CA wiping its state.
    pub fn start_pebble(&mut self) -> Result<()> {
        let mut c = Command::new("pebble");
        c.arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns.port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let log = self.dir.path().join(format!("pebble-{}.log", rand::random::<u32>()));
        let mut proc_ = Proc::spawn("pebble", c, log)?;
        let port = self.port;
        wait_until("pebble", Duration::from_secs(20), || {
            port_open(port) || proc_.exited().is_some()
        })?;
        if let Some(status) = proc_.exited() {
            bail!("pebble exited ({status}):\n{}", proc_.log());
        }
        self.pebble = Some(proc_);
        Ok(())
    }

    /// The DNS server Pebble resolves names with (also for ownership checks).
    pub fn dns(&self) -> &DnsServer {
        &self.dns
    }

    pub fn stop_pebble(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            p.kill();
        }
    }

    pub fn log(&self) -> String {
        self.pebble.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The dev CA, which Pebble's HTTPS certificate chains to (for `acme.ca_root`).
    pub fn directory_ca(&self) -> &Path {
        &self.ca
    }

    /// The root Pebble issues under (new at every Pebble start).
    pub fn issuing_root(&self) -> Result<PathBuf> {
        let client = http::client_with(
            ::reqwest::Client::builder().use_preconfigured_tls(tls::client_config(&self.ca, &["http/1.1"])),
        );
        let r = client
            .get(&format!("https://127.0.0.1:{}/roots/0", self.management_port))
            .send()
            .context("fetch Pebble root")?;
        anyhow::ensure!(r.status == 200, "Pebble root: {} {}", r.status, r.body);
        Ok(write_file(
            self.dir.path(),
            &format!("root-{}.pem", rand::random::<u32>()),
            &r.body,
        ))
    }
}

/// ACME orders placed so far (0 before the gateway's schema exists).
pub fn orders(pg: &Postgres) -> i64 {
    pg.psql("SELECT count(*) FROM tenant_gateway.acme_orders")
        .unwrap_or_else(|_| "0".into())
        .parse()
        .unwrap_or(0)
}
