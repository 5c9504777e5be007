//! The README's first command: `scripts/demo.sh` sets everything up, serves
//! what it prints, and leaves nothing running once stopped as a user stops
//! it (Ctrl-C). Run with its own state directory, certificates and free
//! ports, on the binaries the suite built (`DEMO_BIN`: a `cargo build` from
//! inside `cargo test` would wait on cargo's lock of the target directory).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::http;
use e2e::tls::https_client;
use e2e::*;

const TENANT_HOSTS: [&str; 4] = [
    "ferrari.myapp.localhost",
    "mclaren.myapp.localhost",
    "www.ferrari-cars.localhost",
    "nobody.myapp.localhost",
];

#[test]
fn the_demo_script_serves_what_it_prints_and_stops_cleanly() {
    let dir = tempfile::Builder::new().prefix("tg-demo").tempdir().unwrap();
    // The script's PostgreSQL runs as `postgres` (when we are root) in a
    // directory under this one, which it must be able to enter.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (http, https, admin, pg) = (free_port(), free_port(), free_port(), free_port());
    let apps = [free_port(), free_port()];
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin_dir = bin("gateway").parent().unwrap().to_path_buf();

    let mut cmd = Command::new("bash");
    cmd.arg(repo.join("scripts/demo.sh"))
        .current_dir(repo)
        .env("DEMO_ROOT", dir.path().join("state"))
        .env("DEMO_CERTS", dir.path().join("certs"))
        .env("DEMO_BIN", &bin_dir)
        .env("DEMO_HTTP_PORT", http.to_string())
        .env("DEMO_HTTPS_PORT", https.to_string())
        .env("DEMO_ADMIN_PORT", admin.to_string())
        .env("DEMO_APP_PORTS", format!("{} {}", apps[0], apps[1]))
        .env("DEMO_PG_PORT", pg.to_string())
        .env_remove("DATABASE_URL");
    let _leftovers = Leftovers(dir.path().to_path_buf());
    let mut demo = Proc::spawn("demo.sh", cmd, dir.path().join("demo.log")).unwrap();

    // Ready once it prints what to curl (it seeds a project per tenant first).
    wait_until("the demo to say it is running", Duration::from_secs(180), || {
        assert!(demo.exited().is_none(), "demo.sh exited early:\n{}", demo.log());
        demo.log().contains("Tenant Gateway demo is running")
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", demo.log()));
    let printed = demo.log();
    assert!(
        printed.contains(&format!("https://ferrari.myapp.localhost:{https}/projects")),
        "{printed}"
    );

    let ca = dir.path().join("certs/ca.pem");
    let tls = https_client(&ca, https, &TENANT_HOSTS, &["h2", "http/1.1"]);
    let url = |host: &str, path: &str| format!("https://{host}:{https}{path}");

    let projects = tls.get(&url("ferrari.myapp.localhost", "/projects")).send().unwrap();
    assert_eq!(projects.status, 200, "{}", projects.body);
    assert!(projects.body.contains("ferrari demo project"), "{}", projects.body);
    assert!(
        !projects.body.contains("mclaren"),
        "another tenant's rows: {}",
        projects.body
    );

    let whoami = tls.get(&url("mclaren.myapp.localhost", "/whoami")).send().unwrap();
    assert_eq!(whoami.status, 200, "{}", whoami.body);
    assert_eq!(whoami.json()["schema"], "mclaren", "{}", whoami.body);
    assert_eq!(whoami.json()["tenant"], "mclaren", "{}", whoami.body);

    // The custom domain is served with its own certificate (the wildcard
    // would not verify for this name) and routes to its tenant.
    let custom = tls.get(&url("www.ferrari-cars.localhost", "/projects")).send().unwrap();
    assert_eq!(custom.status, 200, "{}", custom.body);
    assert!(custom.body.contains("ferrari demo project"), "{}", custom.body);

    let spoofed = tls
        .get(&url("ferrari.myapp.localhost", "/whoami"))
        .header("X-Tenant", "mclaren")
        .send()
        .unwrap();
    assert_eq!(spoofed.json()["tenant"], "ferrari", "{}", spoofed.body);

    let unknown = tls.get(&url("nobody.myapp.localhost", "/")).send().unwrap();
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    let plain = http::client_with(
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(
                "ferrari.myapp.localhost",
                std::net::SocketAddr::from(([127, 0, 0, 1], http)),
            ),
    );
    let redirect = plain
        .get(&format!("http://ferrari.myapp.localhost:{http}/projects"))
        .send()
        .unwrap();
    assert_eq!(redirect.status, 308);
    assert_eq!(
        redirect.headers["location"],
        url("ferrari.myapp.localhost", "/projects").as_str()
    );

    let metrics = http::client()
        .get(&format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("tenant=\"ferrari\""), "{}", metrics.body);

    // Ctrl-C: the script stops what it started, PostgreSQL included.
    demo.signal("INT");
    wait_until("demo.sh to exit", Duration::from_secs(60), || demo.exited().is_some())
        .unwrap_or_else(|e| panic!("{e}:\n{}", demo.log()));
    for port in [http, https, admin, pg, apps[0], apps[1]] {
        wait_until(&format!("port {port} to close"), Duration::from_secs(30), || {
            !port_open(port)
        })
        .unwrap_or_else(|e| panic!("{e}: something the demo started is still running:\n{}", demo.log()));
    }
}

/// If the test fails before the script has stopped its children, they
/// still run: stopped here by what identifies them (every one of them is
/// started with a path in this test's own temporary directory).
struct Leftovers(std::path::PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let pattern = self.0.to_string_lossy().into_owned();
        let running = || {
            Command::new("pgrep")
                .args(["-f", &pattern])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !running() {
            return;
        }
        let _ = Command::new("pkill").args(["-TERM", "-f", &pattern]).status();
        if wait_until("the demo's processes to stop", Duration::from_secs(20), || !running()).is_err() {
            let _ = Command::new("pkill").args(["-KILL", "-f", &pattern]).status();
        }
    }
}
