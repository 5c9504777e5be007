//! Metrics, dashboards and alerts against the real thing: promtool checks and
//! unit-tests the alert rules; a real Prometheus scrapes a gateway serving
//! several tenants and evaluates every PromQL expression of the dashboards
//! and rules; counters match the traffic exactly; tenant labels are capped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::tls::{dev_certs, probe};
use e2e::*;
use serde_json::Value;

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}

fn tool_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .expect("run promtool (scripts/deps.sh installs prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let g = grafana_dir();
    let out = tool_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(g.join("alerts.yml")),
    );
    assert!(out.contains("SUCCESS: 16 rules found"), "{out}");
    tool_ok(
        Command::new("promtool")
            .arg("test")
            .arg("rules")
            .arg(g.join("alerts_test.yml")),
    );
    tool_ok(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(g.join("prometheus.yml")),
    );
}

struct Prometheus {
    _proc: Proc,
    port: u16,
    client: http::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tenant-gateway\n    authorization:\n      credentials: {ADMIN_TOKEN}\n\
             \x20   static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n",
            grafana_dir().join("alerts.yml").display()
        );
        let path = write_file(dir.path(), "prometheus.yml", &cfg);
        let mut c = Command::new("prometheus");
        c.arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut proc_ = Proc::spawn("prometheus", c, dir.path().join("prometheus.log")).unwrap();
        wait_healthy(&mut proc_, port, "/-/ready", Duration::from_secs(60)).unwrap();
        Prometheus {
            _proc: proc_,
            port,
            client: http::client(),
            _dir: dir,
        }
    }

    /// Instant query; `Err` carries Prometheus' error (e.g. a parse error).
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let r = self
            .client
            .request(http::Method::POST, &url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("query={}", urlencode(q)))
            .send()
            .map_err(|e| e.to_string())?;
        let v = r.json();
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL expression of a dashboard: (panel title, expr).
fn dashboard_exprs(path: &Path) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "{}: panel {} has no query",
            path.display(),
            p["title"]
        );
        for t in targets {
            out.push((
                p["title"].as_str().unwrap_or_default().to_owned(),
                t["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

fn rule_exprs() -> Vec<(String, String)> {
    // The rules file is simple YAML: take each `expr:` (inline or block).
    let text = std::fs::read_to_string(grafana_dir().join("alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut alert = String::new();
    while let Some(l) = lines.next() {
        let t = l.trim();
        if let Some(a) = t.strip_prefix("- alert:") {
            alert = a.trim().to_owned();
        } else if let Some(e) = t.strip_prefix("expr:") {
            let e = e.trim();
            if e == "|" {
                let mut block = Vec::new();
                while let Some(n) = lines.peek() {
                    if n.trim().is_empty() || n.trim().starts_with("for:") {
                        break;
                    }
                    block.push(lines.next().unwrap_or_default().trim().to_owned());
                }
                out.push((alert.clone(), block.join(" ")));
            } else {
                out.push((alert.clone(), e.to_owned()));
            }
        }
    }
    assert_eq!(out.len(), 16, "{out:?}");
    out
}

#[test]
fn every_dashboard_and_alert_expression_works_against_real_prometheus() {
    let pg = Postgres::start().unwrap();
    app_cli_ok(&pg.url(), &["migrate"]);
    for t in ["ferrari", "mclaren", "paused"] {
        create_tenant(&pg.url(), t, &[&format!("{t}.myapp.localhost")]);
    }
    app_cli_ok(&pg.url(), &["tenant", "suspend", "paused"]);
    app_cli_ok(
        &pg.url(),
        &["domain", "add", "www.ferrari-cars.test", "--tenant", "ferrari"],
    );
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    // ACME against Pebble too, so the certificates dashboard has ACME series.
    let ports = GatewayPorts::free();
    let pebble = Pebble::start(certs.path(), ports.http, ports.tls, 3600).unwrap();
    let s = Stack::builder()
        .database(pg)
        .apps(1)
        .certs(certs)
        .ports(ports)
        .tls("redirect_http = false")
        // `/metrics` behind the admin token: Prometheus scrapes with it.
        // Ownership verification on, its checks against Pebble's DNS
        // server, so the custom-domain panels have claims and checks to show.
        .config(&format!(
            "[admin]\ntoken_env = \"TG_ADMIN_TOKEN\"\nmetrics_token = true\n\
             [acme]\nenabled = true\ndirectory_url = \"{}\"\nca_root = \"{}\"\ncheck_interval_secs = 1\n\
             [custom_domains]\nresolver = \"127.0.0.1:{}\"\ncheck_interval_secs = 1",
            pebble.directory(),
            pebble.directory_ca().display(),
            pebble.dns().port,
        ))
        .start();
    let gw = &s.gw;
    // The custom domain routes (and gets its certificate) by an operator's
    // word; another claim waits for a proof that never comes.
    gw.cli(
        &s.pg.url(),
        &[
            "hostnames",
            "add",
            "www.ferrari-cars.test",
            "--tenant",
            "ferrari",
            "--preverified",
        ],
    );
    gw.cli(
        &s.pg.url(),
        &[
            "hostnames",
            "add",
            "unproven.ferrari-cars.test",
            "--tenant",
            "ferrari",
            "--method",
            "txt",
        ],
    );
    wait_until("ACME certificate", Duration::from_secs(60), || {
        probe(ports.tls, Some("www.ferrari-cars.test"), &[]).is_ok_and(|p| p.names == ["www.ferrari-cars.test"])
    })
    .unwrap();
    // Without the token, `/metrics` is refused.
    let bare = http::client()
        .get(&format!("http://127.0.0.1:{}/metrics", gw.admin_port))
        .send()
        .unwrap();
    assert_eq!(bare.status, 401, "{}", bare.body);
    let prom = Prometheus::start(gw.admin_port);

    // Traffic for several tenants, refused requests, unknown hosts (lookups),
    // TLS handshakes good and bad, kept going while the queries run.
    let stop = Arc::new(AtomicBool::new(false));
    let (port, tls_port) = (gw.port, gw.tls_port);
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut hosts = vec!["ferrari.myapp.localhost".to_string(); 6];
                hosts.extend(vec!["mclaren.myapp.localhost".to_string(); 3]);
                hosts.push("paused.myapp.localhost".into());
                hosts.push(format!("unknown-{round}.myapp.localhost"));
                fire_requests(port, "/projects", hosts, 4);
                let _ = probe(tls_port, Some("ferrari.myapp.localhost"), &["h2"]);
                let _ = probe(tls_port, Some("no-cert.example"), &[]);
                round += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    wait_until("Prometheus sees traffic rates", Duration::from_secs(60), || {
        prom.query("sum(rate(tenant_gateway_tenant_requests_total[5s])) > 0")
            .is_ok_and(|r| !r.is_empty())
    })
    .unwrap();

    let tenants = ["ferrari", "mclaren", "paused"];
    let mut failures = Vec::new();
    for file in ["overview.json", "tenant.json", "certificates.json"] {
        for (title, expr) in dashboard_exprs(&grafana_dir().join("dashboards").join(file)) {
            let expr = expr.replace("$__rate_interval", "10s");
            let candidates: Vec<String> = if expr.contains("$tenant") {
                tenants.iter().map(|t| expr.replace("$tenant", t)).collect()
            } else {
                vec![expr.clone()]
            };
            // Data may need a scrape or two to show up: bounded retry.
            let ok = wait_until(&format!("{file} / {title}"), Duration::from_secs(15), || {
                candidates.iter().any(|q| prom.query(q).is_ok_and(|r| !r.is_empty()))
            });
            if ok.is_err() {
                failures.push(format!("{file} / {title}: {expr} -> {:?}", prom.query(&candidates[0])));
            }
        }
    }
    for (alert, expr) in rule_exprs() {
        if let Err(e) = prom.query(&expr) {
            failures.push(format!("alert {alert}: {expr} -> {e}"));
        }
    }
    // The tenant variable's values come from the same series.
    let labels = prom
        .client
        .get(&format!(
            "http://127.0.0.1:{}/api/v1/label/tenant/values?match[]=tenant_gateway_tenant_requests_total",
            prom.port
        ))
        .send()
        .unwrap()
        .json();
    for t in tenants {
        assert!(labels["data"].as_array().unwrap().iter().any(|v| v == t), "{labels}");
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert!(
        failures.is_empty(),
        "queries without data or failing:\n{}",
        failures.join("\n")
    );
}

/// Scrape once `tenant_requests_total{labels}` has reached `expected`.
/// Requests are counted in Pingora's logging phase, which runs after the
/// response has reached the client, so the last few may land a moment after
/// the client has its answers. Overcounting still fails: the wait ends at
/// the deadline and the caller's exact assertions see the real value.
fn scrape_settled(gw: &Gateway, labels: &[(&str, &str)], expected: f64) -> String {
    let mut text = String::new();
    let _ = wait_until("request counters to settle", Duration::from_secs(10), || {
        text = gw.scrape().unwrap();
        metric_sum(&text, "tenant_gateway_tenant_requests_total", labels) >= expected
    });
    text
}

fn tenant_label_values(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| {
            l.starts_with("tenant_gateway_tenant_requests_total{")
                || l.starts_with("tenant_gateway_tenant_request_duration_seconds_count{")
        })
        .filter_map(|l| l.split("tenant=\"").nth(1)?.split('"').next().map(str::to_owned))
        .collect()
}

#[test]
fn counters_match_reality_and_tenant_labels_are_capped() {
    let pg = Postgres::start().unwrap();
    app_cli_ok(&pg.url(), &["migrate"]);
    for t in ["ferrari", "mclaren"] {
        create_tenant(&pg.url(), t, &[&format!("{t}.myapp.localhost")]);
    }
    // Real tenants from the domain table, plus any tNNNNN.bench.test as a
    // synthetic tenant (so 20,000 tenants need no 20,000 schemas).
    let query = "SELECT t.schema_name, t.status, t.backend_pool FROM public.domains d JOIN public.tenants t ON t.id = d.tenant_id WHERE d.domain = $1 \
                 UNION ALL SELECT substring($1 from '^(t[0-9]+)[.]bench[.]test$'), 'active', NULL::text WHERE $1 ~ '^t[0-9]+[.]bench[.]test$'";
    let s = Stack::builder()
        .database(pg)
        .apps(1)
        .config(&format!("query = \"{query}\""))
        .start();
    let gw = &s.gw;

    let (n, m) = (123usize, 45usize);
    let mut hosts = vec!["ferrari.myapp.localhost".to_string(); n];
    hosts.extend(vec!["mclaren.myapp.localhost".to_string(); m]);
    let statuses = fire_requests(gw.port, "/whoami", hosts, 8);
    assert!(statuses.iter().all(|s| *s == 200));
    let text = scrape_settled(gw, &[], (n + m) as f64);
    assert_eq!(
        metric_sum(&text, "tenant_gateway_tenant_requests_total", &[("tenant", "ferrari")]),
        n as f64
    );
    assert_eq!(
        metric_sum(&text, "tenant_gateway_tenant_requests_total", &[("tenant", "mclaren")]),
        m as f64
    );
    assert_eq!(
        metric_sum(
            &text,
            "tenant_gateway_tenant_requests_total",
            &[("tenant", "ferrari"), ("class", "2xx"), ("method", "GET")]
        ),
        n as f64
    );
    assert_eq!(
        metric_sum(
            &text,
            "tenant_gateway_tenant_request_duration_seconds_count",
            &[("tenant", "mclaren")]
        ),
        m as f64
    );
    assert!(
        metric_sum(
            &text,
            "tenant_gateway_tenant_response_bytes_total",
            &[("tenant", "ferrari")]
        ) > 0.0
    );
    // The histogram's count is its `+Inf` bucket, per tenant.
    for (tenant, count) in [("ferrari", n), ("mclaren", m)] {
        let inf = metric_sum(
            &text,
            "tenant_gateway_tenant_request_duration_seconds_bucket",
            &[("tenant", tenant), ("le", "+Inf")],
        );
        assert_eq!(inf, count as f64, "{tenant}");
    }
    // Gateway-wide counters kept per worker thread (two workers here) sum
    // to the traffic: one lookup per request, a hit or a miss, and nothing
    // left in flight once every request is logged.
    let lookups = metric_sum(&text, "tenant_gateway_cache_hits_total", &[])
        + metric_sum(&text, "tenant_gateway_cache_misses_total", &[]);
    assert_eq!(lookups, (n + m) as f64, "cache hits + misses");
    assert!(metric_sum(&text, "tenant_gateway_cache_hits_total", &[]) >= (n + m - 16) as f64);
    assert_eq!(metric_sum(&text, "tenant_gateway_requests_in_flight", &[]), 0.0);

    // 20,000 distinct tenants: at most cap (10,000) own labels + `other`.
    let bench: Vec<String> = (0..20_000).map(|i| format!("t{i:05}.bench.test")).collect();
    let statuses = fire_requests(gw.port, "/", bench, 32);
    assert_eq!(statuses.len(), 20_000);
    assert!(
        statuses.iter().all(|s| *s != 0 && *s != 404),
        "synthetic tenants must resolve"
    );
    let text = scrape_settled(gw, &[], (n + m + 20_000) as f64);
    let labels = tenant_label_values(&text);
    let fixed = ["unknown", "landing"];
    let tenant_labels = labels.iter().filter(|l| !fixed.contains(&l.as_str())).count();
    assert!(tenant_labels <= 10_001, "{tenant_labels} tenant label values");
    assert!(labels.contains("other"));
    assert!(metric_sum(&text, "tenant_gateway_tenant_label_overflow_total", &[]) >= 10_000.0 - 2.0);
    // Every request is counted somewhere: own label or `other`.
    assert_eq!(
        metric_sum(&text, "tenant_gateway_tenant_requests_total", &[]) as usize,
        n + m + 20_000
    );
    // Unknown hosts add no label value, and the raw Host never becomes one.
    let unknown: Vec<String> = (0..500).map(|i| format!("nobody{i}.example")).collect();
    let statuses = fire_requests(gw.port, "/", unknown, 16);
    assert!(statuses.iter().all(|s| *s == 404));
    let settled = scrape_settled(gw, &[("tenant", "unknown")], 500.0);
    let after = tenant_label_values(&settled);
    assert_eq!(after, labels, "unknown hosts changed the tenant label set");
    assert_eq!(
        metric_sum(
            &settled,
            "tenant_gateway_tenant_requests_total",
            &[("tenant", "unknown")]
        ),
        500.0
    );
}
