//! Test support for the end-to-end suites: a throwaway PostgreSQL cluster
//! (initdb + pg_ctl on a free port), the project's real binaries started as
//! child processes and stopped by PID, readiness by polling with a bound,
//! and a signer for hand-made stamps.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const STAMP_KEY_ID: &str = "k1";
pub const STAMP_SECRET: &str = "e2e-stamp-secret-0123456789abcdef";
pub const STAMP_KEY2_ID: &str = "k2";
pub const STAMP_SECRET2: &str = "e2e-rotated-secret-fedcba9876543210";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

/// The workspace's target directory, derived from the running test binary.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// Path of a workspace binary (built by `cargo build --workspace` before tests).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

fn am_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql (run scripts/test.sh, which installs them)",
    )
}

/// Run a PostgreSQL binary, as the `postgres` user when we are root.
fn pg_command(tool: &str) -> Command {
    let path = pg_bindir().join(tool);
    if am_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run_ok(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A temporary directory the `postgres` user owns (when we are root).
fn postgres_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    if am_root() {
        let mut c = Command::new("chown");
        c.arg("postgres:postgres").arg(dir.path());
        run_ok(c, "chown")?;
    }
    Ok(dir)
}

/// A throwaway PostgreSQL cluster on 127.0.0.1 and a free port.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
    frozen: bool,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let dir = postgres_dir("tg-pg-")?;
        let data = dir.path().join("data");
        let mut initdb = pg_command("initdb");
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        run_ok(initdb, "initdb")?;
        let mut pg = Postgres {
            dir,
            port: 0,
            running: false,
            frozen: false,
        };
        pg.port = free_port();
        pg.start_server()?;
        Ok(pg)
    }

    /// A streaming replica of `primary` (pg_basebackup -R) on a free port,
    /// started and replaying.
    pub fn replica_of(primary: &Postgres) -> Result<Postgres> {
        let dir = postgres_dir("tg-pg-replica-")?;
        let mut base = pg_command("pg_basebackup");
        base.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-D",
        ])
        .arg(dir.path().join("data"));
        run_ok(base, "pg_basebackup")?;
        let mut replica = Postgres {
            dir,
            port: free_port(),
            running: false,
            frozen: false,
        };
        replica.start_server()?;
        wait_until("the replica replays", Duration::from_secs(30), || {
            replica.psql("SELECT pg_is_in_recovery()").is_ok_and(|r| r == "t")
        })?;
        Ok(replica)
    }

    /// Start the server on this cluster's data dir and port (again).
    pub fn start_server(&mut self) -> Result<()> {
        let mut ctl = pg_command("pg_ctl");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        run_ok(ctl, "pg_ctl start").map_err(|e| {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            e.context(log)
        })?;
        self.running = true;
        Ok(())
    }

    /// Stop the server (fast shutdown: open sessions are disconnected).
    pub fn stop_server(&mut self) -> Result<()> {
        let mut ctl = pg_command("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "60", "-m", "fast", "stop"]);
        run_ok(ctl, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's PID (first line of `postmaster.pid`).
    fn postmaster_pid(&self) -> Result<String> {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))?;
        text.lines().next().map(str::to_owned).context("empty postmaster.pid")
    }

    /// A partition as the gateway sees it: SIGSTOP the postmaster and every
    /// backend, so connections stay open and nothing answers.
    pub fn freeze(&mut self) -> Result<()> {
        let pid = self.postmaster_pid()?;
        run_ok(signal_cmd("kill", &["-STOP", &pid]), "kill -STOP postmaster")?;
        // pkill exits 1 when nothing matched; the postmaster always has children.
        run_ok(signal_cmd("pkill", &["-STOP", "-P", &pid]), "pkill -STOP backends")?;
        self.frozen = true;
        Ok(())
    }

    /// Undo `freeze` (SIGCONT).
    pub fn thaw(&mut self) -> Result<()> {
        let pid = self.postmaster_pid()?;
        run_ok(signal_cmd("pkill", &["-CONT", "-P", &pid]), "pkill -CONT backends")?;
        run_ok(signal_cmd("kill", &["-CONT", &pid]), "kill -CONT postmaster")?;
        self.frozen = false;
        Ok(())
    }

    /// Run SQL with psql (from the same PostgreSQL installation).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let mut c = Command::new(pg_bindir().join("psql"));
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.url(),
            "-c",
            sql,
        ]);
        let out = run_ok(c, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

fn signal_cmd(tool: &str, args: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args(args);
    c
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.frozen {
            let _ = self.thaw();
        }
        if self.running {
            let mut ctl = pg_command("pg_ctl");
            ctl.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-w", "-t", "30", "-m", "immediate", "stop"]);
            let _ = ctl.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// A child process stopped by PID when dropped (SIGTERM, then SIGKILL).
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal by PID.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM and wait (bounded) for exit; returns whether it exited in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() && !self.terminate(Duration::from_secs(5)) {
            self.kill();
        }
    }
}

/// Wait until `GET http://127.0.0.1:<port><path>` answers 200, or the process dies.
pub fn wait_healthy(proc_: &mut Proc, port: u16, path: &str, timeout: Duration) -> Result<()> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let client = http::client();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = proc_.exited() {
            bail!(
                "{} exited ({status}) before becoming healthy:\n{}",
                proc_.name,
                proc_.log()
            );
        }
        if client.get(&url).send().is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not healthy at {url} after {timeout:?}:\n{}",
                proc_.name,
                proc_.log()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub mod django;

/// Minimal blocking HTTP client: reqwest's async client on a private runtime.
pub mod http {
    pub use ::reqwest::{Method, Version};

    pub struct Client {
        rt: tokio::runtime::Runtime,
        client: ::reqwest::Client,
    }

    pub struct Req<'a> {
        rt: &'a tokio::runtime::Runtime,
        rb: ::reqwest::RequestBuilder,
    }

    pub struct Resp {
        pub status: u16,
        pub version: ::reqwest::Version,
        pub headers: ::reqwest::header::HeaderMap,
        pub body: String,
    }

    impl Resp {
        pub fn status(&self) -> ::reqwest::StatusCode {
            ::reqwest::StatusCode::from_u16(self.status).expect("status")
        }
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
        }
    }

    pub fn client() -> Client {
        client_with(::reqwest::Client::builder())
    }

    /// A client from a customised builder (TLS roots, name resolution, ...).
    pub fn client_with(builder: ::reqwest::ClientBuilder) -> Client {
        // reqwest builds a TLS config even for plain-HTTP clients.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = builder
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("client");
        Client { rt, client }
    }

    impl Client {
        pub fn get(&self, url: &str) -> Req<'_> {
            Req {
                rt: &self.rt,
                rb: self.client.get(url),
            }
        }
        pub fn request(&self, method: ::reqwest::Method, url: &str) -> Req<'_> {
            Req {
                rt: &self.rt,
                rb: self.client.request(method, url),
            }
        }
    }

    impl Req<'_> {
        pub fn header(self, k: &str, v: &str) -> Self {
            Req {
                rt: self.rt,
                rb: self.rb.header(k, v),
            }
        }
        pub fn json(self, v: &serde_json::Value) -> Self {
            Req {
                rt: self.rt,
                rb: self.rb.json(v),
            }
        }
        pub fn body(self, b: impl Into<::reqwest::Body>) -> Self {
            Req {
                rt: self.rt,
                rb: self.rb.body(b),
            }
        }
        pub fn send(self) -> ::reqwest::Result<Resp> {
            self.rt.block_on(async move {
                let r = self.rb.send().await?;
                let status = r.status().as_u16();
                let version = r.version();
                let headers = r.headers().clone();
                let body = r.text().await?;
                Ok(Resp {
                    status,
                    version,
                    headers,
                    body,
                })
            })
        }
    }
}

/// Write a file into `dir` and return its path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create file");
    f.write_all(contents.as_bytes()).expect("write file");
    p
}

/// Environment every binary gets: database URL and both stamp secrets.
pub fn common_env(cmd: &mut Command, db_url: &str) {
    cmd.env("DATABASE_URL", db_url)
        .env("TG_STAMP_KEY_K1", STAMP_SECRET)
        .env("TG_STAMP_KEY_K2", STAMP_SECRET2)
        .env("TG_CERT_KEY", CERT_KEY_HEX)
        .env("TG_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info,sqlx=warn")
        .env_remove("UPSTREAM_APP_CONFIG");
}

/// Run an upstream-app CLI command against `db_url`.
pub fn app_cli(db_url: &str, args: &[&str]) -> Output {
    let mut c = Command::new(bin("upstream-app"));
    common_env(&mut c, db_url);
    c.args(args).stdin(Stdio::null()).output().expect("run upstream-app")
}

/// Run an upstream-app CLI command that must succeed; returns stdout.
pub fn app_cli_ok(db_url: &str, args: &[&str]) -> String {
    let out = app_cli(db_url, args);
    assert!(
        out.status.success(),
        "upstream-app {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `upstream-app tenant create SCHEMA --name SCHEMA --domain D...` (must succeed).
pub fn create_tenant(db_url: &str, schema: &str, domains: &[&str]) {
    let mut args = vec!["tenant", "create", schema, "--name", schema];
    for d in domains {
        args.extend(["--domain", d]);
    }
    app_cli_ok(db_url, &args);
}

/// Migrate, then the two tenants most suites use: ferrari
/// (ferrari.myapp.localhost, www.ferrari-cars.test) and mclaren
/// (mclaren.myapp.localhost, mclaren-racing.test).
pub fn two_tenants(pg: &Postgres) {
    app_cli_ok(&pg.url(), &["migrate"]);
    create_tenant(
        &pg.url(),
        "ferrari",
        &["ferrari.myapp.localhost", "www.ferrari-cars.test"],
    );
    create_tenant(
        &pg.url(),
        "mclaren",
        &["mclaren.myapp.localhost", "mclaren-racing.test"],
    );
}

/// The usual stack: PostgreSQL with ferrari and mclaren (`two_tenants`),
/// a default pool of two upstream-apps, and a gateway with base domain
/// `myapp.localhost`; `extra` goes after the `[tenant]` lines (more keys or
/// sections).
pub fn two_tenant_stack(extra: &str) -> (Postgres, Vec<UpstreamApp>, Gateway) {
    let pg = Postgres::start().expect("PostgreSQL");
    two_tenants(&pg);
    let apps = vec![
        UpstreamApp::start(&pg.url(), "").expect("upstream-app"),
        UpstreamApp::start(&pg.url(), "").expect("upstream-app"),
    ];
    let pools = pools_toml(&[("default", &[apps[0].port, apps[1].port])]);
    let gw = Gateway::start(
        &pg.url(),
        &format!("[tenant]\nbase_domains = [\"myapp.localhost\"]\n{extra}\n{pools}"),
    )
    .expect("gateway");
    (pg, apps, gw)
}

/// The `name` of every object in a JSON array (e.g. a project list).
pub fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// How many `/slow` requests these upstream-apps have begun serving.
pub fn slow_requests_started(apps: &[UpstreamApp]) -> usize {
    apps.iter()
        .map(|a| a.proc_.log().matches("slow request started").count())
        .sum()
}

/// A running upstream-app server.
pub struct UpstreamApp {
    pub proc_: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl UpstreamApp {
    /// Start with both stamp keys accepted; `extra` is appended to the TOML.
    pub fn start(db_url: &str, extra: &str) -> Result<UpstreamApp> {
        UpstreamApp::start_on(db_url, extra, free_port())
    }

    /// Start on a given port (e.g. to bring a killed backend back).
    pub fn start_on(db_url: &str, extra: &str, port: u16) -> Result<UpstreamApp> {
        let dir = tempfile::tempdir()?;
        let cfg = format!(
            "listen = \"127.0.0.1:{port}\"\n{extra}\n\
             [stamp]\nkeys = [{{ id = \"k1\", secret_env = \"TG_STAMP_KEY_K1\" }}, {{ id = \"k2\", secret_env = \"TG_STAMP_KEY_K2\" }}]\n"
        );
        let path = write_file(dir.path(), "upstream-app.toml", &cfg);
        let mut c = Command::new(bin("upstream-app"));
        common_env(&mut c, db_url);
        c.arg("--config").arg(&path).arg("serve");
        let mut proc_ = Proc::spawn("upstream-app", c, dir.path().join("app.log"))?;
        wait_healthy(&mut proc_, port, "/healthz", Duration::from_secs(30))?;
        Ok(UpstreamApp { proc_, port, _dir: dir })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Current unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sign like the gateway does, with key k1 (or k2 with `rotated`).
pub fn sign(tenant: &str, method: &str, host: &str, path: &str, ts: u64, rotated: bool) -> String {
    let key = if rotated {
        stamp::Key::new(STAMP_KEY2_ID, STAMP_SECRET2.as_bytes().to_vec())
    } else {
        stamp::Key::new(STAMP_KEY_ID, STAMP_SECRET.as_bytes().to_vec())
    };
    let signer = stamp::Signer::new(key.expect("test key"));
    signer.sign(
        &stamp::Request {
            tenant,
            method,
            host: &stamp::normalize_host(host),
            path,
        },
        ts,
    )
}

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
            "[pools.{name}]\nbackends = [{}]\nhealth_check_interval_ms = 200\nhealth_check_threshold = 1\nconnect_timeout_ms = 500\n\n",
            list.join(", ")
        ));
    }
    s
}

impl Gateway {
    /// Start a gateway on free ports. `body` is appended to the generated
    /// `[listen]` section (so it may add more sections, e.g. pools).
    pub fn start(db_url: &str, body: &str) -> Result<Gateway> {
        Gateway::start_with_grace(db_url, body, 1)
    }

    /// Like `start`, with `listen.shutdown_grace_secs` set.
    pub fn start_with_grace(db_url: &str, body: &str, grace_secs: u64) -> Result<Gateway> {
        Gateway::start_with_ports(db_url, body, grace_secs, GatewayPorts::free())
    }

    /// Start on ports chosen beforehand (e.g. handed to Pebble first).
    pub fn start_with_ports(db_url: &str, body: &str, grace_secs: u64, ports: GatewayPorts) -> Result<Gateway> {
        Gateway::start_with_env(db_url, body, grace_secs, ports, &[])
    }

    /// Like `start_with_ports`, with more environment variables.
    pub fn start_with_env(
        db_url: &str,
        body: &str,
        grace_secs: u64,
        ports: GatewayPorts,
        env: &[(&str, &str)],
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
        c.envs(env.iter().copied());
        c.arg("--config").arg(&path);
        let mut proc_ = Proc::spawn("gateway", c, dir.path().join("gateway.log"))?;
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
        let mut c = Command::new(bin("gateway"));
        common_env(&mut c, db_url);
        c.arg("--config")
            .arg(self.dir.path().join("gateway.toml"))
            .args(args)
            .output()
            .expect("run the gateway CLI")
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
    pub fn scrape(&self) -> ::reqwest::Result<String> {
        http::client()
            .get(&format!("http://127.0.0.1:{}/metrics", self.admin_port))
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

/// Send raw bytes to 127.0.0.1:`port` and read the response head and body
/// (until the peer closes or `Content-Length` is satisfied).
pub fn raw_http(port: u16, request: &str) -> Result<(u16, String)> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
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
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    Ok((status, text))
}

/// TLS helpers: dev certificates via `gateway certs`, a probing client that
/// reports which certificate a handshake presented, and HTTPS clients.
pub mod tls {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use anyhow::{Context, Result};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// Dev CA + `*.myapp.localhost` wildcard in `dir` (via `gateway certs dev`); returns the CA path.
    pub fn dev_certs(dir: &Path) -> PathBuf {
        let out = std::process::Command::new(super::bin("gateway"))
            .args(["certs", "dev", "--domain", "myapp.localhost", "--dir"])
            .arg(dir)
            .output()
            .expect("gateway certs dev");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir.join("ca.pem")
    }

    /// A certificate for `names` signed by the dev CA in `ca_dir`, written to `out`.pem/.key.
    pub fn issue(ca_dir: &Path, names: &[&str], out: &Path) {
        let mut c = std::process::Command::new(super::bin("gateway"));
        c.args(["certs", "issue", "--dir"]).arg(ca_dir).arg("--out").arg(out);
        for n in names {
            c.args(["--name", n]);
        }
        let out = c.output().expect("gateway certs issue");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    fn roots(ca: &Path) -> rustls::RootCertStore {
        let pem = std::fs::read(ca).expect("CA file");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(c.expect("CA PEM")).expect("CA cert");
        }
        roots
    }

    /// Client config trusting `ca`, offering `alpn`, without session resumption.
    pub fn client_config(ca: &Path, alpn: &[&str]) -> rustls::ClientConfig {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots(ca))
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg
    }

    /// HTTPS client resolving `hosts` to the gateway's TLS port.
    pub fn https_client(ca: &Path, port: u16, hosts: &[&str], alpn: &[&str]) -> super::http::Client {
        let mut b = reqwest::Client::builder()
            .use_preconfigured_tls(client_config(ca, alpn))
            .https_only(true);
        for h in hosts {
            b = b.resolve(h, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }
        super::http::client_with(b)
    }

    /// Accepts any certificate and records the chain it saw.
    #[derive(Debug)]
    struct Recorder(Mutex<Vec<CertificateDer<'static>>>, Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for Recorder {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.0.lock().unwrap().push(end_entity.clone().into_owned());
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.1.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.1.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }

    /// What a handshake presented.
    #[derive(Debug)]
    pub struct Presented {
        /// DNS SANs of the leaf certificate.
        pub names: Vec<String>,
        pub alpn: Option<String>,
        pub version: String,
    }

    /// Handshake with SNI `sni` (None: no SNI, by connecting to an IP name)
    /// and report the certificate presented, without verifying it.
    pub fn probe(port: u16, sni: Option<&str>, alpn: &[&str]) -> Result<Presented> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let recorder = Arc::new(Recorder(Mutex::new(Vec::new()), provider()));
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(recorder.clone())
                .with_no_client_auth();
            cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
            cfg.resumption = rustls::client::Resumption::disabled();
            let name: ServerName<'static> = match sni {
                Some(s) => ServerName::try_from(s.to_owned())?,
                None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            };
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let tls = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
            )
            .await
            .context("handshake timed out")??;
            let (_, conn) = tls.get_ref();
            let alpn = conn.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned());
            let version = format!("{:?}", conn.protocol_version());
            let leaf = recorder.0.lock().unwrap().first().cloned().context("no certificate")?;
            Ok(Presented {
                names: san_names(&leaf),
                alpn,
                version,
            })
        })
    }

    pub fn san_names(der: &CertificateDer<'_>) -> Vec<String> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("X.509");
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for gn in &san.value.general_names {
                if let GeneralName::DNSName(n) = gn {
                    names.push(n.to_string());
                }
            }
        }
        names
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
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
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

    pub fn clear_txt(&self, name: &str) {
        self.manage("clear-txt", serde_json::json!({ "host": format!("{name}.") }));
    }
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
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
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

/// A minimal RFC 6455 client over any byte stream (plain TCP or TLS), for
/// the upstream-app's `/ws` echo through the gateway. Sends a spoofed
/// `X-Tenant: mclaren` on the upgrade, which the gateway must drop.
pub mod ws {
    use std::io::{Read, Write};

    use anyhow::{bail, ensure, Result};

    /// Send the upgrade request for `host` and read the 101 head.
    pub fn upgrade<S: Read + Write>(s: &mut S, host: &str) -> Result<()> {
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Tenant: mclaren\r\n\r\n"
        )?;
        s.flush()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        Ok(())
    }

    /// Send one masked text frame (< 64 KiB) and read one unmasked text frame.
    pub fn round_trip<S: Read + Write>(s: &mut S, msg: &str) -> Result<String> {
        let mask = [7u8, 1, 8, 2];
        let mut frame = vec![0x81];
        match msg.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n)?.to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame)?;
        s.flush()?;
        let mut hdr = [0u8; 2];
        s.read_exact(&mut hdr)?;
        ensure!(hdr[0] == 0x81 && hdr[1] & 0x80 == 0, "unexpected frame header {hdr:?}");
        let len = match hdr[1] {
            126 => {
                let mut ext = [0u8; 2];
                s.read_exact(&mut ext)?;
                usize::from(u16::from_be_bytes(ext))
            }
            127 => bail!("reply too large"),
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        Ok(String::from_utf8(payload)?)
    }
}
