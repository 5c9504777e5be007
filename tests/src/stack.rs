//! The one stack builder every suite starts from: a PostgreSQL cluster with
//! the usual two tenants (or the suite's own setup), upstream-apps (on the
//! same cluster or their own), development certificates and a TLS listener
//! when asked, and a gateway with the usual config plus the suite's lines.
//! Further gateways with the same config on the same database come from
//! [`Stack::gateway`]; a suite with more parts (Pebble, Django) keeps them
//! beside its `Stack`.

use crate::tls::{dev_certs, issue};
use crate::*;

/// A running stack. Fields drop in order: the gateway stops first.
pub struct Stack {
    pub gw: Gateway,
    pub apps: Vec<UpstreamApp>,
    /// The gateway's database (domain table, claims, certificates).
    pub pg: Postgres,
    /// The upstream-apps' own cluster, when separate from `pg`.
    pub app_pg: Option<Postgres>,
    /// Development certificates (`wildcard.pem` for `*.myapp.localhost`,
    /// `custom/` with one for `www.ferrari-cars.test` when asked).
    pub certs: tempfile::TempDir,
    /// The development CA, when TLS is on.
    pub ca: Option<PathBuf>,
    /// The first gateway's ports (for restarting it on the same ones).
    pub ports: GatewayPorts,
    /// How the first gateway was started (database, config body, grace,
    /// environment), without its ports.
    launcher: GatewayBuilder,
    pub client: http::Client,
}

/// A suite's own database setup (instead of `two_tenants`).
type Setup = Box<dyn FnOnce(&Postgres)>;

/// How a [`Stack`] is built. Defaults: a new cluster with ferrari and
/// mclaren, two upstream-apps in pool `default`, base domain
/// `myapp.localhost`, no TLS, one second of shutdown grace.
pub struct StackBuilder {
    pg: Option<Postgres>,
    setup: Option<Setup>,
    apps: usize,
    app_extra: String,
    separate_app_db: bool,
    certs: Option<tempfile::TempDir>,
    tls: Option<String>,
    custom_cert: bool,
    config: String,
    pools: Option<String>,
    /// Grace, ports and environment; database and body are set at start.
    gateway: GatewayBuilder,
    wait_backends: bool,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder {
            pg: None,
            setup: None,
            apps: 2,
            app_extra: String::new(),
            separate_app_db: false,
            certs: None,
            tls: None,
            custom_cert: false,
            config: String::new(),
            pools: None,
            gateway: Gateway::builder("", ""),
            wait_backends: false,
        }
    }

    /// The stack a Pebble test needs: `pg` as the suite set it up, one
    /// upstream-app, TLS with the development certificates in `certs`
    /// (which Pebble uses too), on `ports` (which Pebble validates
    /// against); `config` holds the `[acme]` lines and more.
    pub fn for_pebble(pg: Postgres, certs: tempfile::TempDir, ports: GatewayPorts, config: &str) -> Stack {
        Stack::builder()
            .database(pg)
            .apps(1)
            .certs(certs)
            .ports(ports)
            .tls("")
            .config(config)
            .start()
    }

    /// Another gateway on this stack's database with its config, on new
    /// ports unless given.
    pub fn gateway(&self) -> GatewayBuilder {
        self.launcher.clone()
    }

    /// Stop the first gateway (SIGTERM, waiting for it to exit) and start
    /// it again on its own ports with the same config.
    pub fn restart_gateway(&mut self) {
        self.restart_gateway_as(|b| b);
    }

    /// [`Stack::restart_gateway`] as `change` makes its builder (a changed
    /// config or environment, kept for later restarts).
    pub fn restart_gateway_as(&mut self, change: impl FnOnce(GatewayBuilder) -> GatewayBuilder) {
        assert!(self.gw.proc_.terminate(Duration::from_secs(15)), "gateway did not stop");
        self.launcher = change(self.launcher.clone());
        self.gw = self.gateway().ports(self.ports).start().expect("gateway restarts");
    }

    pub fn ca(&self) -> &Path {
        self.ca.as_deref().expect("stack built with .tls()")
    }

    /// The `custom/` certificate directory (`tls.cert_dir`).
    pub fn custom_dir(&self) -> PathBuf {
        self.certs.path().join("custom")
    }

    /// An HTTPS client trusting the development CA, resolving the two
    /// tenants' subdomains to this gateway's TLS port.
    pub fn https(&self) -> http::Client {
        tls::https_client(
            self.ca(),
            self.gw.tls_port,
            &["ferrari.myapp.localhost", "mclaren.myapp.localhost"],
            &["http/1.1"],
        )
    }

    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.gw.tls_port)
    }

    /// The sum of a metric's series with these labels, as scraped now.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.gw.scrape().unwrap_or_default(), name, labels)
    }

    /// `GET path` through the gateway for `host`, with more headers.
    pub fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> http::Resp {
        let mut r = self.client.get(&self.gw.url(path)).header("host", host);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send().expect("request through gateway")
    }

    /// `POST path` with a JSON body through the gateway for `host`.
    pub fn post(&self, host: &str, path: &str, body: serde_json::Value) -> http::Resp {
        self.client
            .request(http::Method::POST, &self.gw.url(path))
            .header("host", host)
            .json(&body)
            .send()
            .expect("request through gateway")
    }

    /// `GET target` written byte for byte (for what an HTTP client library
    /// will not send: repeated or odd headers, absolute-form targets).
    pub fn raw_get(&self, target: &str, headers: &[&str]) -> (u16, String) {
        let head: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        raw_http(
            self.gw.port,
            format!("GET {target} HTTP/1.1\r\n{head}Connection: close\r\n\r\n"),
        )
        .expect("raw request through gateway")
    }

    /// The upstream-app's `/whoami` for `host` (must answer 200).
    pub fn whoami(&self, host: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let r = self.get(host, "/whoami", headers);
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        r.json()
    }
}

impl StackBuilder {
    /// Use this cluster (already set up by the suite) instead of a new one
    /// with the two tenants.
    pub fn database(mut self, pg: Postgres) -> StackBuilder {
        self.pg = Some(pg);
        self
    }

    /// Set the new cluster up with this instead of `two_tenants`.
    pub fn setup(mut self, f: impl FnOnce(&Postgres) + 'static) -> StackBuilder {
        self.setup = Some(Box::new(f));
        self
    }

    /// How many upstream-apps (pool `default` holds them all).
    pub fn apps(mut self, n: usize) -> StackBuilder {
        self.apps = n;
        self
    }

    /// Config lines for the upstream-apps.
    pub fn app_config(mut self, extra: &str) -> StackBuilder {
        self.app_extra = extra.to_owned();
        self
    }

    /// The upstream-apps on their own cluster (with the same two tenants),
    /// so the gateway's database can be stopped while backends work.
    pub fn separate_app_database(mut self) -> StackBuilder {
        self.separate_app_db = true;
        self
    }

    /// Development certificates already made in this directory (`dev_certs`,
    /// e.g. so Pebble could start with them before the gateway).
    pub fn certs(mut self, dir: tempfile::TempDir) -> StackBuilder {
        self.certs = Some(dir);
        self
    }

    /// A TLS listener with the wildcard development certificate; `extra`
    /// goes into the `[tls]` section (and may open further sections).
    pub fn tls(mut self, extra: &str) -> StackBuilder {
        self.tls = Some(extra.to_owned());
        self
    }

    /// Also `tls.cert_dir` holding a certificate for `www.ferrari-cars.test`.
    pub fn custom_certificate(mut self) -> StackBuilder {
        self.custom_cert = true;
        self
    }

    /// Lines after `[tenant]`'s `base_domains` (more keys, or sections).
    pub fn config(mut self, extra: &str) -> StackBuilder {
        self.config.push_str(extra);
        self.config.push('\n');
        self
    }

    /// Pool sections instead of `default` holding every upstream-app (for
    /// backends the suite started itself).
    pub fn pools(mut self, pools: String) -> StackBuilder {
        self.pools = Some(pools);
        self
    }

    pub fn grace(mut self, secs: u64) -> StackBuilder {
        self.gateway = self.gateway.grace(secs);
        self
    }

    /// Ports chosen beforehand (e.g. handed to Pebble first).
    pub fn ports(mut self, ports: GatewayPorts) -> StackBuilder {
        self.gateway = self.gateway.ports(ports);
        self
    }

    /// One more environment variable for the gateways.
    pub fn env(mut self, key: &str, value: &str) -> StackBuilder {
        self.gateway = self.gateway.env(key, value);
        self
    }

    /// Where the gateways' output goes ([`GatewayBuilder::log_file`]).
    pub fn log_file(mut self, path: &Path) -> StackBuilder {
        self.gateway = self.gateway.log_file(path);
        self
    }

    /// Wait until the gateway counts every upstream-app healthy.
    pub fn wait_backends(mut self) -> StackBuilder {
        self.wait_backends = true;
        self
    }

    pub fn start(self) -> Stack {
        let pg = match self.pg {
            Some(pg) => pg,
            None => {
                let pg = Postgres::start().expect("PostgreSQL");
                match self.setup {
                    Some(f) => f(&pg),
                    None => two_tenants(&pg),
                }
                pg
            }
        };
        let app_pg = self.separate_app_db.then(|| {
            let p = Postgres::start().expect("PostgreSQL for the apps");
            two_tenants(&p);
            p
        });
        let app_url = app_pg.as_ref().unwrap_or(&pg).url();
        let apps: Vec<UpstreamApp> = (0..self.apps)
            .map(|_| UpstreamApp::start(&app_url, &self.app_extra).expect("upstream-app"))
            .collect();
        let made = self.certs.is_some();
        let certs = match self.certs {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("temp dir"),
        };
        let mut body = format!("[tenant]\nbase_domains = [\"myapp.localhost\"]\n{}\n", self.config);
        let mut ca = None;
        if let Some(tls_extra) = &self.tls {
            ca = Some(match made {
                true => certs.path().join("ca.pem"),
                false => dev_certs(certs.path()),
            });
            let mut cert_dir = String::new();
            if self.custom_cert {
                let custom = certs.path().join("custom");
                std::fs::create_dir_all(&custom).expect("custom cert dir");
                issue(certs.path(), &["www.ferrari-cars.test"], &custom.join("ferrari-cars"));
                cert_dir = format!("cert_dir = \"{}\"\n", custom.display());
            }
            body.push_str(&format!(
                "[tls]\nlisten = \"127.0.0.1:{{TLS_PORT}}\"\n{cert_dir}\
                 certificates = [{{ cert_file = \"{0}/wildcard.pem\", key_file = \"{0}/wildcard.key\" }}]\n{tls_extra}\n",
                certs.path().display()
            ));
        }
        let ports: Vec<u16> = apps.iter().map(|a| a.port).collect();
        body.push_str(&self.pools.unwrap_or_else(|| pools_toml(&[("default", &ports)])));
        let ports_of_gw = self.gateway.ports.unwrap_or_else(GatewayPorts::free);
        let mut launcher = self.gateway;
        launcher.db_url = pg.url();
        launcher.body = body;
        launcher.ports = None;
        let gw = launcher.clone().ports(ports_of_gw).start().expect("gateway");
        if self.wait_backends {
            for port in &ports {
                gw.wait_backend("default", *port, true, Duration::from_secs(10))
                    .expect("backend healthy");
            }
        }
        Stack {
            gw,
            apps,
            pg,
            app_pg,
            certs,
            ca,
            ports: ports_of_gw,
            launcher,
            client: http::client(),
        }
    }
}
