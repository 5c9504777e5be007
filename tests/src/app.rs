//! The reference upstream-app: its CLI, tenants, the server, and hand-made stamps.

use crate::*;

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

/// The test gateways' stamp key k1 (or k2 with `rotated`).
pub fn stamp_key(rotated: bool) -> stamp::Key {
    let key = if rotated {
        stamp::Key::new(STAMP_KEY2_ID, STAMP_SECRET2.as_bytes().to_vec())
    } else {
        stamp::Key::new(STAMP_KEY_ID, STAMP_SECRET.as_bytes().to_vec())
    };
    key.expect("test key")
}

/// Sign like the gateway does, with key k1 (or k2 with `rotated`).
pub fn sign(tenant: &str, method: &str, host: &str, path: &str, ts: u64, rotated: bool) -> String {
    let signer = stamp::Signer::new(stamp_key(rotated));
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
