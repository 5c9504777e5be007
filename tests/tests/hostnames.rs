//! Custom hostnames with ownership verification (`[custom_domains]`
//! verification = "required"), against a real DNS server on loopback
//! (Debian's pebble-challtestsrv), Pebble as the CA and real PostgreSQL:
//! a pending name is neither routed nor ordered, even when a client sends
//! its SNI; the TXT token and the HTTP token prove a claim; a token proves
//! only its own (name, tenant) claim and a name moves between tenants only
//! by an operator's logged remove + add; removal stops the certificate
//! being presented on two gateways through NOTIFY and the stored
//! certificate is deleted after its grace period; a claim nobody proves
//! expires and can be retried; a domain row arriving while its claim is
//! being checked still activates it at once; listing one status walks only
//! that status's claims; with rechecks, an active claim whose name points
//! elsewhere moves (unrouted), comes back when it points here again, and is
//! removed when it does not, while a name its DNS cannot answer for stays.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::tls::{dev_certs, https_client, probe};
use e2e::*;

const SHOP: &str = "shop.ferrari-cars.test";

fn tenants(pg: &Postgres) {
    app_cli_ok(&pg.url(), &["migrate"]);
    create_tenant(&pg.url(), "ferrari", &["ferrari.myapp.localhost"]);
    create_tenant(&pg.url(), "mclaren", &["mclaren.myapp.localhost"]);
}

/// `[custom_domains]` with checks against `dns_port`, every second (the
/// `cname` method's target: `edge.myapp.localhost`). The `http` method may
/// connect to loopback, where every name of the test DNS server points.
fn verification(dns_port: u16, http_port: u16, methods: &str, window_secs: u64) -> String {
    format!(
        "{}http_private_addresses = true\n",
        verification_public_only(dns_port, http_port, methods, window_secs)
    )
}

/// [`verification`] with the default: the `http` method connects only to public addresses.
fn verification_public_only(dns_port: u16, http_port: u16, methods: &str, window_secs: u64) -> String {
    format!(
        "[custom_domains]\nverification = \"required\"\nmethods = [{methods}]\nresolver = \"127.0.0.1:{dns_port}\"\n\
         http_port = {http_port}\ncheck_interval_secs = 1\ncheck_timeout_ms = 3000\nverification_window_secs = {window_secs}\n\
         cname_target = \"edge.myapp.localhost\"\n"
    )
}

/// The two tenants, one upstream-app and the operator API, with
/// `custom_domains` (its checks asking the test's DNS server; lines before
/// its first section are `[tenant]` keys).
fn claims_stack(custom_domains: &str) -> Stack {
    Stack::builder()
        .setup(tenants)
        .apps(1)
        .config(custom_domains)
        .config("[admin]\ntoken_env = \"TG_ADMIN_TOKEN\"")
        .start()
}

/// The stack on `pg` with one upstream-app, TLS with the development
/// certificates in `certs` (which `pebble` uses too), ACME against `pebble`
/// (whose DNS also answers the checks), the operator API, on `ports`.
fn acme_stack(pg: Postgres, certs: tempfile::TempDir, ports: GatewayPorts, pebble: &Pebble, grace_secs: u64) -> Stack {
    let acme = format!(
        "[acme]\nenabled = true\ndirectory_url = \"{}\"\nca_root = \"{}\"\n\
         challenges = [\"http-01\"]\ncheck_interval_secs = 1\nretry_base_secs = 1\nretry_max_secs = 3\non_demand_timeout_ms = 8000\n\
         removed_certificate_grace_secs = {grace_secs}\n\
         [admin]\ntoken_env = \"TG_ADMIN_TOKEN\"\n{}",
        pebble.directory(),
        pebble.directory_ca().display(),
        verification(pebble.dns().port, 80, "\"txt\", \"http\"", 7 * 86_400),
    );
    Stack::for_pebble(pg, certs, ports, &acme)
}

/// Claim a name through the operator API (`POST /api/v1/hostnames?{query}`),
/// which must accept it; the claim as it answers.
fn claim(gw: &Gateway, query: &str) -> serde_json::Value {
    let (code, added) = gw.api(http::Method::POST, &format!("hostnames?{query}"), Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{query}: {added}");
    added
}

fn json(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A claim's row field, read straight from the database.
fn claim_field(pg: &Postgres, name: &str, column: &str) -> String {
    pg.psql(&format!(
        "SELECT {column} FROM tenant_gateway.custom_hostnames WHERE name = '{name}'"
    ))
    .unwrap_or_default()
}

/// Wait until the checkers have looked at `name` at least `n` times.
fn wait_checks(pg: &Postgres, name: &str, n: i64) {
    wait_until(&format!("{n} checks of {name}"), Duration::from_secs(30), || {
        claim_field(pg, name, "checks").parse::<i64>().unwrap_or(0) >= n
    })
    .unwrap();
}

fn wait_status(pg: &Postgres, name: &str, status: &str, timeout: Duration) {
    wait_until(&format!("{name} {status}"), timeout, || {
        claim_field(pg, name, "status") == status
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {name} is {} ({})",
            claim_field(pg, name, "status"),
            claim_field(pg, name, "last_error")
        )
    });
}

/// Wait until a plain-HTTP request for `host` reaches `tenant`'s backend.
fn wait_routed(gw: &Gateway, host: &str, tenant: &str) {
    wait_until(&format!("{host} routed to {tenant}"), Duration::from_secs(10), || {
        http::client()
            .get(&gw.url("/whoami"))
            .header("host", host)
            .send()
            .is_ok_and(|r| r.status == 200 && r.json()["tenant"] == tenant)
    })
    .unwrap();
}

/// Every claim `GET /api/v1/hostnames?{query}` lists, a page at a time
/// (each page after the previous one's `next`, until `next` is null), and
/// how many pages that took (at most ten).
fn page_through(gw: &Gateway, query: &str) -> (Vec<String>, i64) {
    let (mut listed, mut pages, mut after) = (Vec::new(), 0, String::new());
    loop {
        let (code, page) = gw.api(
            http::Method::GET,
            &format!("hostnames?{query}{after}"),
            Some(ADMIN_TOKEN),
        );
        assert_eq!(code, 200, "{page}");
        pages += 1;
        listed.extend(names(&page["claims"]));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return (listed, pages),
        }
        assert!(pages < 10, "paging does not end: {listed:?}");
    }
}

/// Status of a plain-HTTP request for `host` (unverified names get the
/// 404 page before any redirect to HTTPS).
fn http_status(port: u16, host: &str) -> u16 {
    raw_http(
        port,
        format!("GET /whoami HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .map(|(status, _)| status)
    .unwrap_or(0)
}

/// Wait until `name` is presented with Pebble's certificate and a verified
/// HTTPS request for it lands on `tenant`.
fn wait_served(pebble: &Pebble, tls_port: u16, name: &str, tenant: &str) {
    wait_until(&format!("certificate for {name}"), Duration::from_secs(60), || {
        probe(tls_port, Some(name), &["http/1.1"]).is_ok_and(|p| p.names == [name])
    })
    .unwrap_or_else(|e| panic!("{e}\nPebble log:\n{}", pebble.log()));
    let root = pebble.issuing_root().unwrap();
    let client = https_client(&root, tls_port, &[name], &["http/1.1"]);
    wait_until(&format!("{name} routed to {tenant}"), Duration::from_secs(10), || {
        client
            .get(&format!("https://{name}:{tls_port}/whoami"))
            .send()
            .is_ok_and(|r| r.status == 200 && r.json()["tenant"] == tenant)
    })
    .unwrap();
}

fn presented(tls_port: u16, name: &str) -> bool {
    probe(tls_port, Some(name), &["http/1.1"]).is_ok_and(|p| p.names.iter().any(|n| n == name))
}

#[test]
fn a_claim_routes_and_gets_a_certificate_only_once_proven_by_its_own_token() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let ports = GatewayPorts::free();
    let pebble = Pebble::start(certs.path(), ports.http, ports.tls, 3600).unwrap();
    let s = acme_stack(pg, certs, ports, &pebble, 86_400);
    let (pg, gw) = (&s.pg, &s.gw);
    let txt = format!("_tenant-gateway.{SHOP}");

    // The tenant's product adds the domain row: without a claim it routes nowhere.
    app_cli_ok(&pg.url(), &["domain", "add", SHOP, "--tenant", "ferrari"]);
    assert_eq!(http_status(ports.http, SHOP), 404);
    let added = json(gw.cli(&pg.url(), &["hostnames", "add", SHOP, "--tenant", "ferrari"]));
    assert_eq!(added["status"], "pending");
    assert_eq!(added["routed"], false);
    assert_eq!(added["instructions"]["txt_name"], txt);
    let token_a = added["instructions"]["txt_value"].as_str().unwrap().to_owned();
    assert_eq!(token_a.len(), 32);

    // (a) Pending, with someone else's value published: not routed, and no
    // order even when clients send the name as SNI.
    pebble.dns().set_txt(&txt, "someone-elses-token");
    wait_checks(pg, SHOP, 2);
    for _ in 0..3 {
        assert!(!presented(ports.tls, SHOP), "no certificate for a pending name");
    }
    assert_eq!(http_status(ports.http, SHOP), 404);
    assert_eq!(orders(pg), 0, "a pending name gets no order");
    let status = json(gw.cli(&pg.url(), &["hostnames", "status", SHOP]));
    assert_eq!(status["status"], "pending");
    assert_eq!(status["saw_other_proof"], true);
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("other value"),
        "{status}"
    );
    assert_eq!(status["certificate"]["status"], "none");
    let (code, explain) = gw.api(http::Method::GET, &format!("explain?host={SHOP}"), Some(ADMIN_TOKEN));
    assert_eq!(code, 200);
    assert!(
        explain["answer"].as_str().unwrap_or_default().starts_with("unverified"),
        "{explain}"
    );

    // (b) The owner publishes the token: verified within the check
    // interval, then active (the row maps the name to ferrari), routed,
    // and a certificate is ordered.
    pebble.dns().set_txt(&txt, &token_a);
    wait_status(pg, SHOP, "active", Duration::from_secs(20));
    wait_served(&pebble, ports.tls, SHOP, "ferrari");
    let status = json(gw.cli(&pg.url(), &["hostnames", "status", SHOP]));
    assert_eq!(status["routed"], true);
    assert_eq!(status["certificate"]["status"], "issued");

    // (d) Another tenant cannot claim the name while ferrari holds it
    // (CLI and API alike).
    let out = gw.cli_output(&pg.url(), &["hostnames", "add", SHOP, "--tenant", "mclaren"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("claimed by tenant `ferrari`"), "{stderr}");
    let (code, body) = gw.api(
        http::Method::POST,
        &format!("hostnames?name={SHOP}&tenant=mclaren"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 409, "{body}");

    // The app moves the row to mclaren on its own: the name now routes to
    // nobody (ferrari's claim does not cover mclaren), and its certificate
    // is no longer presented.
    pg.psql(&format!(
        "UPDATE public.domains SET tenant_id = (SELECT id FROM public.tenants WHERE schema_name = 'mclaren') \
          WHERE domain = '{SHOP}'"
    ))
    .unwrap();
    wait_until("moved row unrouted", Duration::from_secs(10), || {
        http_status(ports.http, SHOP) == 404 && !presented(ports.tls, SHOP)
    })
    .unwrap();
    // The claim is still active, and its status says the name is not routed.
    let status = json(gw.cli(&pg.url(), &["hostnames", "status", SHOP]));
    assert_eq!(status["status"], "active", "{status}");
    assert_eq!(status["routed"], false, "{status}");
    let (code, status) = gw.api(
        http::Method::GET,
        &format!("hostnames/status?name={SHOP}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["routed"], false, "{status}");

    // The operator moves the name explicitly: remove, then mclaren's own
    // claim with a fresh token. Ferrari's token, still published, does
    // not prove mclaren's claim.
    let removed = gw.cli_output(&pg.url(), &["hostnames", "remove", SHOP]);
    assert!(removed.status.success());
    let removal_log = String::from_utf8_lossy(&removed.stderr).into_owned();
    assert!(
        removal_log.contains("custom hostname removed") && removal_log.contains("actor=\"cli:"),
        "{removal_log}"
    );
    let added_b = json(gw.cli(&pg.url(), &["hostnames", "add", SHOP, "--tenant", "mclaren"]));
    let token_b = added_b["instructions"]["txt_value"].as_str().unwrap().to_owned();
    assert_ne!(token_a, token_b);
    let before = claim_field(pg, SHOP, "checks").parse::<i64>().unwrap_or(0);
    wait_checks(pg, SHOP, before + 3);
    assert_eq!(claim_field(pg, SHOP, "status"), "pending");
    assert_eq!(claim_field(pg, SHOP, "saw_other_proof"), "t");
    assert_eq!(http_status(ports.http, SHOP), 404);
    pebble.dns().set_txt(&txt, &token_b);
    wait_status(pg, SHOP, "active", Duration::from_secs(20));
    wait_served(&pebble, ports.tls, SHOP, "mclaren");

    // Every step is in the claim's history, the operator's with who did it.
    let history = json(gw.cli(&pg.url(), &["hostnames", "status", SHOP]))["events"].clone();
    let steps: Vec<(String, String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["tenant"].as_str().unwrap_or_default().to_owned(),
                e["actor"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let events: Vec<(&str, &str)> = steps.iter().map(|(e, t, _)| (e.as_str(), t.as_str())).collect();
    assert_eq!(
        events,
        [
            ("added", "ferrari"),
            ("active", "ferrari"),
            ("removed", "ferrari"),
            ("added", "mclaren"),
            ("active", "mclaren")
        ]
    );
    assert!(steps[2].2.starts_with("cli:"), "{steps:?}");
    assert_eq!(steps[1].2, "checker");
}

#[test]
fn the_http_token_proves_a_claim_and_an_unproven_claim_expires() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(dir.path()).unwrap();
    // The customer's own web server (every name resolves to 127.0.0.1).
    let file = Arc::new(Mutex::new("not the token".to_owned()));
    let web_port = serve_text(file.clone());
    let s = claims_stack(&verification(dns.port, web_port, "\"http\", \"txt\", \"cname\"", 20));
    let (pg, gw) = (&s.pg, &s.gw);
    app_cli_ok(&pg.url(), &["domain", "add", SHOP, "--tenant", "ferrari"]);

    // Two tenants claiming a new name at once: the second waits for the
    // first's row and is refused (409), the first's claim and token stay.
    // (The gateway creates its schema in the background at start.)
    wait_until("the gateway's schema", Duration::from_secs(30), || {
        pg.psql("SELECT to_regclass('tenant_gateway.custom_hostnames') IS NOT NULL")
            .is_ok_and(|t| t == "t")
    })
    .unwrap();
    let mut first = OpenTransaction::begin(
        &pg.url(),
        "INSERT INTO tenant_gateway.custom_hostnames (name, tenant, status, method, token, verify_by)
         VALUES ('race.test', 'ferrari', 'pending', 'http', 'first-token', now() + interval '1 hour')",
    );
    std::thread::scope(|scope| {
        let second = scope.spawn(|| {
            gw.api(
                http::Method::POST,
                "hostnames?name=race.test&tenant=mclaren",
                Some(ADMIN_TOKEN),
            )
        });
        pg.wait_until_blocked_by(&first, "the second claim waiting for the first's row");
        first.execute("COMMIT");
        let (code, refused) = second.join().unwrap();
        assert_eq!(code, 409, "{refused}");
    });
    assert_eq!(claim_field(pg, "race.test", "tenant"), "ferrari");
    assert_eq!(claim_field(pg, "race.test", "token"), "first-token");
    pg.psql("DELETE FROM tenant_gateway.custom_hostnames WHERE name = 'race.test'")
        .unwrap();

    // (c) Claimed through the operator API; the default method is http.
    let added = claim(gw, &format!("name={SHOP}&tenant=ferrari"));
    assert_eq!(added["method"], "http");
    assert_eq!(
        added["instructions"]["http_url"],
        format!("http://{SHOP}/.well-known/tenant-gateway/verification.txt")
    );
    let token = added["instructions"]["http_body"].as_str().unwrap().to_owned();
    wait_checks(pg, SHOP, 2);
    assert_eq!(claim_field(pg, SHOP, "status"), "pending");
    assert_eq!(claim_field(pg, SHOP, "saw_other_proof"), "t");
    assert_eq!(http_status(gw.port, SHOP), 404);
    // A hand-edited window that never ends (`infinity`) is read as far
    // ahead: the batch of due claims that holds it is still checked.
    pg.psql(&format!(
        "UPDATE tenant_gateway.custom_hostnames SET verify_by = 'infinity' WHERE name = '{SHOP}'"
    ))
    .unwrap();
    *file.lock().unwrap() = token;
    wait_status(pg, SHOP, "active", Duration::from_secs(15));
    wait_routed(gw, SHOP, "ferrari");
    let (code, status) = gw.api(
        http::Method::GET,
        &format!("hostnames/status?name={SHOP}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 200);
    assert_eq!(status["status"], "active");
    assert_eq!(status["certificate"]["status"], "none", "ACME is off here");

    // The opt-in cname method: proven once the name points at the target.
    app_cli_ok(&pg.url(), &["domain", "add", "pointed.test", "--tenant", "mclaren"]);
    let added = claim(gw, "name=pointed.test&tenant=mclaren&method=cname");
    assert_eq!(added["instructions"]["cname_target"], "edge.myapp.localhost");
    wait_checks(pg, "pointed.test", 2);
    assert_eq!(claim_field(pg, "pointed.test", "status"), "pending");
    dns.set_cname("pointed.test", "edge.myapp.localhost");
    wait_status(pg, "pointed.test", "active", Duration::from_secs(15));
    wait_routed(gw, "pointed.test", "mclaren");
    gw.api(
        http::Method::POST,
        "hostnames/remove?name=pointed.test",
        Some(ADMIN_TOKEN),
    );

    // A claim nobody proves expires at the end of its window (20 s here);
    // a retry opens a new one. The name was never routed.
    app_cli_ok(&pg.url(), &["domain", "add", "nowhere.test", "--tenant", "mclaren"]);
    claim(gw, "name=nowhere.test&tenant=mclaren&method=txt");
    wait_status(pg, "nowhere.test", "expired", Duration::from_secs(60));
    assert_eq!(http_status(gw.port, "nowhere.test"), 404);
    let (code, retried) = gw.api(
        http::Method::POST,
        "hostnames/retry?name=nowhere.test",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 200, "{retried}");
    assert_eq!(retried["status"], "pending");
    let (code, listed) = gw.api(http::Method::GET, "hostnames?status=pending", Some(ADMIN_TOKEN));
    assert_eq!(code, 200);
    assert_eq!(names(&listed["claims"]), ["nowhere.test"]);
    assert_eq!(listed["next"], serde_json::Value::Null);
    // Listed a page at a time: one claim per page, each page after the
    // previous one's `next`, until `next` is null.
    let (paged, _) = page_through(gw, "limit=1");
    assert_eq!(paged, ["nowhere.test", "pointed.test", SHOP]);
    for bad in ["limit=0", "limit=1001", "limit=x"] {
        let (code, v) = gw.api(http::Method::GET, &format!("hostnames?{bad}"), Some(ADMIN_TOKEN));
        assert_eq!((code, v["error"].as_str()), (400, Some("bad_limit")), "{bad}");
    }
    // Retrying an active claim is refused; bad arguments get a 400.
    let (code, _) = gw.api(
        http::Method::POST,
        &format!("hostnames/retry?name={SHOP}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 409);
    let (code, _) = gw.api(
        http::Method::POST,
        "hostnames?name=tenant.myapp.localhost&tenant=ferrari",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 400, "base-domain names need no claim");
    for name in ["localhost", "10.0.0.5", "intranet"] {
        let (code, v) = gw.api(
            http::Method::POST,
            &format!("hostnames?name={name}&tenant=ferrari"),
            Some(ADMIN_TOKEN),
        );
        assert_eq!(code, 400, "{name} is no customer's domain: {v}");
    }

    // Metrics: checks by method and result, claims by status.
    wait_until("claim gauges", Duration::from_secs(40), || {
        let m = gw.scrape().unwrap_or_default();
        metric_sum(&m, "tenant_gateway_custom_hostnames", &[("status", "active")]) == 1.0
            && metric_sum(&m, "tenant_gateway_custom_hostnames", &[("status", "pending")]) == 1.0
    })
    .unwrap();
    let m = gw.scrape().unwrap();
    assert!(
        metric_sum(
            &m,
            "tenant_gateway_custom_hostname_checks_total",
            &[("method", "http"), ("result", "other_proof")]
        ) >= 1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "tenant_gateway_custom_hostname_checks_total",
            &[("method", "http"), ("result", "proven")]
        ),
        1.0
    );

    // The pending claim's age moves with the clock between counts.
    wait_until("the pending claim's age", Duration::from_secs(40), || {
        let m = gw.scrape().unwrap_or_default();
        metric_sum(&m, "tenant_gateway_custom_hostnames_oldest_pending_seconds", &[]) >= 1.0
    })
    .unwrap();
    // The gauges count again when a claim's status changes, also by hand
    // in SQL (a trigger NOTIFYs on commit): the pending claim fails.
    pg.psql("UPDATE tenant_gateway.custom_hostnames SET status = 'failed' WHERE name = 'nowhere.test'")
        .unwrap();
    let mut m = String::new();
    wait_until("claim gauges after a change in SQL", Duration::from_secs(40), || {
        m = gw.scrape().unwrap_or_default();
        metric_sum(&m, "tenant_gateway_custom_hostnames", &[("status", "pending")]) == 0.0
            && metric_sum(&m, "tenant_gateway_custom_hostnames", &[("status", "failed")]) == 1.0
            && metric_sum(&m, "tenant_gateway_custom_hostnames_oldest_pending_seconds", &[]) == 0.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{m}"));
}

#[test]
fn the_http_method_connects_only_to_public_addresses_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(dir.path()).unwrap();
    // Where a claimant could point its name: the platform's own loopback
    // (the DNS server's default answer) or a cloud metadata address. A
    // listener on loopback stands for a service inside the network: the
    // check must never connect to it.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    const METADATA: &str = "metadata.ferrari-cars.test";
    dns.set_a(METADATA, &["169.254.169.254"]);
    let s = claims_stack(&verification_public_only(dns.port, trap_port, "\"http\"", 600));
    let (pg, gw) = (&s.pg, &s.gw);
    for (name, address) in [(SHOP, "127.0.0.1"), (METADATA, "169.254.169.254")] {
        claim(gw, &format!("name={name}&tenant=ferrari"));
        wait_checks(pg, name, 2);
        assert_eq!(claim_field(pg, name, "status"), "pending");
        let why = claim_field(pg, name, "last_error");
        assert!(why.contains("not public") && why.contains(address), "{why}");
    }
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the check connected to loopback: {other:?}"),
    }
}

/// Listing one status reads that status alone: among 5,000 active claims
/// the two failed ones come a page at a time from the (status, name) index,
/// not from a walk of the primary key past the others, even with the
/// statement planned for any parameter value (as PostgreSQL may plan a
/// prepared statement after its fifth run on a connection).
#[test]
fn listing_a_rare_status_pages_through_its_own_index() {
    const INDEX: &str = "custom_hostnames_status_name_idx";
    let s = Stack::builder()
        .setup(tenants)
        .apps(1)
        .config("[custom_domains]\nverification = \"required\"\n[admin]\ntoken_env = \"TG_ADMIN_TOKEN\"")
        .start();
    let (pg, gw) = (&s.pg, &s.gw);
    gw.cli(&pg.url(), &["hostnames", "list"]);
    pg.psql(
        "INSERT INTO tenant_gateway.custom_hostnames (name, tenant, status, method, token, verify_by)
         SELECT 'n' || lpad(i::text, 5, '0') || '.test', 'ferrari',
                CASE WHEN i IN (1234, 4321) THEN 'failed' ELSE 'active' END, 'txt', 'token', now()
           FROM generate_series(1, 5000) i;
         ANALYZE tenant_gateway.custom_hostnames",
    )
    .unwrap();
    pg.psql("ALTER SYSTEM SET plan_cache_mode = force_generic_plan")
        .unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
    wait_until("generic plans in force", Duration::from_secs(10), || {
        pg.psql("SHOW plan_cache_mode").is_ok_and(|m| m == "force_generic_plan")
    })
    .unwrap();
    // (scans of the status index, index entries of the primary key read)
    let stats = || -> (i64, i64) {
        let row = pg
            .psql(&format!(
                "SELECT (SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = '{INDEX}') || ' ' ||
                        (SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'custom_hostnames_pkey')"
            ))
            .unwrap();
        let mut n = row.split(' ').map(|n| n.parse::<i64>().unwrap());
        (n.next().unwrap(), n.next().unwrap())
    };
    let before = stats();
    let (paged, pages) = page_through(gw, "status=failed&limit=1");
    assert_eq!(paged, ["n01234.test", "n04321.test"]);
    // Every page was a walk of the status index (statistics reach the view
    // within seconds), and the primary key was not walked.
    wait_until("the pages counted as index scans", Duration::from_secs(30), || {
        stats().0 >= before.0 + pages
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} before, {:?} after {pages} pages", before, stats()));
    let read = stats().1 - before.1;
    assert!(read < 1000, "{read} primary-key entries read for two claims");
}

#[test]
fn a_migration_ended_by_a_deadlock_runs_again() {
    let s = Stack::builder().setup(tenants).apps(1).start();
    let (pg, gw) = (&s.pg, &s.gw);
    gw.cli(&pg.url(), &["hostnames", "list"]);
    // An older schema: the next command runs the scripts again, beside a
    // transaction that reads the certificates (and, once the migration
    // waits for that table, the order state it has just locked: a cycle).
    pg.psql("UPDATE tenant_gateway.schema_version SET version = 5").unwrap();
    // Its own deadlock check comes late: the migration's breaks the cycle.
    let mut reader = OpenTransaction::begin(
        &pg.url(),
        "SET deadlock_timeout = '30s'; SELECT count(*) FROM tenant_gateway.certificates",
    );
    let mut cli = gw.cli_command(&pg.url(), &["hostnames", "list"]);
    let migrating = std::thread::spawn(move || cli.output().expect("run the gateway CLI"));
    pg.wait_until_blocked_by(&reader, "the migration waits for the certificates");
    reader.execute("SELECT count(*) FROM tenant_gateway.acme_names; COMMIT");
    let out = migrating.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("running it again"), "{stderr}");
    // Every migration the gateway carries (gateway/migrations) ran.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/migrations"))
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.file_name().to_string_lossy().ends_with(".sql"))
        })
        .count();
    assert_eq!(
        pg.psql("SELECT max(version) FROM tenant_gateway.schema_version")
            .unwrap(),
        migrations.to_string()
    );
}

#[test]
fn removal_stops_the_certificate_on_two_gateways_through_notify() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let (claimed, row_only) = ("removed-claim.test", "removed-row.test");
    app_cli_ok(&pg.url(), &["domain", "add", claimed, "--tenant", "ferrari"]);
    app_cli_ok(&pg.url(), &["domain", "add", row_only, "--tenant", "ferrari"]);
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let (ports1, ports2) = (GatewayPorts::free(), GatewayPorts::free());
    let pebble = Pebble::start(certs.path(), ports1.http, ports1.tls, 3600).unwrap();
    let s = acme_stack(pg, certs, ports1, &pebble, 2);
    let gw2 = s.gateway().ports(ports2).start().unwrap();
    let (pg, gw1) = (&s.pg, &s.gw);
    for name in [claimed, row_only] {
        let added = json(gw1.cli(
            &pg.url(),
            &["hostnames", "add", name, "--tenant", "ferrari", "--preverified"],
        ));
        assert_eq!(added["method"], "operator");
        wait_status(pg, name, "active", Duration::from_secs(20));
        wait_served(&pebble, ports1.tls, name, "ferrari");
        wait_until(
            &format!("{name} on the second gateway"),
            Duration::from_secs(20),
            || presented(ports2.tls, name),
        )
        .unwrap();
    }

    // Each name's order was counted by the gateway that ran it.
    let orders = |name: &str| {
        [gw1, &gw2]
            .iter()
            .map(|g| {
                metric_sum(
                    &g.scrape().unwrap_or_default(),
                    "tenant_gateway_acme_orders_total",
                    &[("name", name)],
                )
            })
            .sum::<f64>()
    };
    for name in [claimed, row_only] {
        assert!(orders(name) >= 1.0, "{name}'s order is counted");
    }

    // The operator removes a claim.
    gw2.cli(&pg.url(), &["hostnames", "remove", claimed]);
    let since = Instant::now();
    wait_until("certificate gone from both gateways", PROPAGATION, || {
        !presented(ports1.tls, claimed) && !presented(ports2.tls, claimed)
    })
    .unwrap();
    eprintln!("gone after {:?}", since.elapsed());
    assert_eq!(http_status(ports1.http, claimed), 404);

    // The app deletes a domain row (the claim stays active).
    app_cli_ok(&pg.url(), &["domain", "remove", row_only]);
    let since = Instant::now();
    wait_until("certificate gone from both gateways", PROPAGATION, || {
        !presented(ports1.tls, row_only) && !presented(ports2.tls, row_only)
    })
    .unwrap();
    eprintln!("gone after {:?}", since.elapsed());
    // Neither gateway keeps the removed names' order series.
    for name in [claimed, row_only] {
        wait_until(&format!("{name}'s series dropped"), PROPAGATION, || orders(name) == 0.0).unwrap();
    }
    // Still presented: the other names' certificates are untouched.
    let wildcard = probe(ports1.tls, Some("ferrari.myapp.localhost"), &["http/1.1"]).unwrap();
    assert!(wildcard.names.iter().any(|n| n == "*.myapp.localhost"), "{wildcard:?}");

    // After the grace period (2 s here) the stored material is deleted.
    wait_until("retired certificates deleted", Duration::from_secs(30), || {
        pg.psql("SELECT count(*) FROM tenant_gateway.certificates")
            .is_ok_and(|n| n == "0")
    })
    .unwrap();
    // A restarted gateway presents nothing for them either.
    drop(gw2);
    let gw2 = s.gateway().ports(ports2).start().unwrap();
    assert!(!presented(ports2.tls, claimed) && !presented(ports2.tls, row_only));
    drop(gw2);
}

/// A stack whose claim for `later.test` (ferrari's) is proven and has been
/// checked once: `verified`, since no domain row maps the name yet.
fn verified_claim(check_interval_secs: u64) -> Stack {
    let s = Stack::builder()
        .setup(tenants)
        .apps(1)
        .config(&format!(
            "[custom_domains]\nverification = \"required\"\ncheck_interval_secs = {check_interval_secs}"
        ))
        .start();
    s.gw.cli(
        &s.pg.url(),
        &["hostnames", "add", "later.test", "--tenant", "ferrari", "--preverified"],
    );
    wait_until("the claim looked at", Duration::from_secs(15), || {
        !claim_field(&s.pg, "later.test", "last_checked_at").is_empty()
    })
    .unwrap();
    assert_eq!(claim_field(&s.pg, "later.test", "status"), "verified");
    assert!(claim_field(&s.pg, "later.test", "last_error").contains("does not map"));
    s
}

/// A claim proven before the app adds its domain row stays `verified`
/// (not routed); the row's NOTIFY activates it at once, not at the next
/// check (a minute here).
#[test]
fn a_verified_claim_activates_when_its_domain_row_appears() {
    let s = verified_claim(60);
    let (pg, gw) = (&s.pg, &s.gw);
    assert_eq!(http_status(gw.port, "later.test"), 404);
    app_cli_ok(&pg.url(), &["domain", "add", "later.test", "--tenant", "ferrari"]);
    wait_status(pg, "later.test", "active", Duration::from_secs(10));
    wait_routed(gw, "later.test", "ferrari");
}

/// The same when the row appears while the gateway's tenant LISTEN
/// connection is down (here: added with triggers off for the session, then
/// that connection terminated): no NOTIFY tells of it, but on reconnecting
/// the gateway looks at every verified claim at once, not at its next check
/// (an hour away here).
#[test]
fn a_verified_claim_whose_row_appeared_during_a_listen_gap_activates_on_reconnect() {
    let s = verified_claim(3600);
    let (pg, gw) = (&s.pg, &s.gw);
    pg.psql(
        "UPDATE tenant_gateway.custom_hostnames SET next_check_at = now() + interval '1 hour' \
         WHERE name = 'later.test'",
    )
    .unwrap();
    pg.psql(
        "SET session_replication_role = replica; \
         INSERT INTO public.domains (domain, tenant_id, is_primary) \
         SELECT 'later.test', id, false FROM public.tenants WHERE schema_name = 'ferrari'",
    )
    .unwrap();
    assert_eq!(claim_field(pg, "later.test", "status"), "verified");
    let killed = pg
        .psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'tenant-gateway-listen'")
        .unwrap();
    assert_eq!(killed, "1", "the gateway's tenant LISTEN connection");
    wait_status(pg, "later.test", "active", Duration::from_secs(20));
    wait_routed(gw, "later.test", "ferrari");
}

/// The domain row appears while the claim's check is reading the domain
/// table: the check reads the table as it was (no row) and writes the
/// claim back `verified` for a minute, after the row's NOTIFY found the
/// claim still leased. The change is not lost: the claim is looked at again
/// once the check's outcome is written, and activates within seconds.
/// (The lookup query here waits on an advisory lock the test holds, so the
/// check's read is paused with its snapshot taken.)
#[test]
fn a_domain_row_arriving_during_the_claims_check_still_activates_it() {
    const LOCK: i64 = 4242;
    let lookup = format!(
        "SELECT t.schema_name, t.status, t.backend_pool FROM public.domains d \
         JOIN public.tenants t ON t.id = d.tenant_id \
         WHERE d.domain = $1 AND (SELECT true FROM pg_advisory_xact_lock_shared({LOCK}))"
    );
    let s = Stack::builder()
        .setup(tenants)
        .apps(1)
        .config(&format!(
            "query = \"{lookup}\"\n\
             [custom_domains]\nverification = \"required\"\ncheck_interval_secs = 60"
        ))
        .start();
    let (pg, gw) = (&s.pg, &s.gw);
    let mut held = OpenTransaction::begin(&pg.url(), &format!("SELECT pg_advisory_xact_lock({LOCK})"));
    gw.cli(
        &pg.url(),
        &["hostnames", "add", "later.test", "--tenant", "ferrari", "--preverified"],
    );
    pg.wait_until_blocked_by(&held, "the claim's check reading the domain table");
    let since = gw.log_len();
    app_cli_ok(&pg.url(), &["domain", "add", "later.test", "--tenant", "ferrari"]);
    gw.wait_logged("the name changed during its check", since, Duration::from_secs(10));
    held.execute("COMMIT");
    wait_status(pg, "later.test", "active", Duration::from_secs(20));
    wait_routed(gw, "later.test", "ferrari");
}

/// With `custom_domains.verification = "none"` (the default) claims are
/// recorded but routing does not consult them: a claim's `routed` says
/// whether the domain table maps its name, to any tenant, whatever the
/// claim's status.
#[test]
fn without_verification_routed_follows_the_domain_row() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    app_cli_ok(&pg.url(), &["domain", "add", SHOP, "--tenant", "ferrari"]);
    let app = UpstreamApp::start(&pg.url(), "").unwrap();
    let gw = Gateway::start(&pg.url(), &pools_toml(&[("default", &[app.port])])).unwrap();
    let mapped = json(gw.cli(&pg.url(), &["hostnames", "add", SHOP, "--tenant", "mclaren"]));
    assert_eq!(mapped["status"], "pending", "{mapped}");
    assert_eq!(mapped["routed"], true, "{mapped}");
    let unmapped = json(gw.cli(&pg.url(), &["hostnames", "add", "nowhere.test", "--tenant", "ferrari"]));
    assert_eq!(unmapped["routed"], false, "{unmapped}");
}

/// Rechecks (`recheck_interval_secs`): an active claim whose name points
/// elsewhere for `moved_after_secs` moves (not routed), is active again
/// when the name points here within `moved_window_secs`, and is removed
/// after it, freeing the name. A name its DNS answers SERVFAIL for (no
/// answer to go by) stays active for longer than `moved_after_secs`, and
/// the other tenant's name routes throughout. An apex-like name without a
/// CNAME points here by its addresses (`cname_addresses`), and moves when
/// they change. A claim covers its name and `www.` of it (`strip_www`, as
/// the django-tenants preset has it): it stays while either points here,
/// and the `cname` method's proof is either pointing here.
#[test]
fn an_active_claim_whose_name_points_elsewhere_moves_then_comes_back_or_is_removed() {
    const A: &str = "shop.ferrari.test";
    const B: &str = "shop.mclaren.test";
    // Without a CNAME: here by its addresses (every name of the test DNS
    // server has 127.0.0.1 unless set otherwise).
    const APEX: &str = "ferrari-apex.test";
    const EDGE: &str = "edge.myapp.localhost";
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(dir.path()).unwrap();
    let s = claims_stack(&format!(
        "strip_www = true\n{}cname_addresses = [\"127.0.0.1\"]\nrecheck_interval_secs = 1\nmoved_after_secs = 3\nmoved_window_secs = 8\n",
        verification(dns.port, 80, "\"cname\", \"txt\"", 600)
    ));
    let (pg, gw) = (&s.pg, &s.gw);
    for (name, tenant) in [(A, "ferrari"), (B, "mclaren"), (APEX, "ferrari")] {
        app_cli_ok(&pg.url(), &["domain", "add", name, "--tenant", tenant]);
        if name != APEX {
            dns.set_cname(name, EDGE);
        }
        // Its `www.` name points elsewhere (the test DNS server would
        // answer 127.0.0.1, one of cname_addresses).
        dns.set_cname(&format!("www.{name}"), "elsewhere.example");
        claim(gw, &format!("name={name}&tenant={tenant}&method=cname"));
    }
    for (name, tenant) in [(A, "ferrari"), (B, "mclaren"), (APEX, "ferrari")] {
        wait_status(pg, name, "active", Duration::from_secs(30));
        wait_routed(gw, name, tenant);
    }
    // Active claims are looked at again (each look is recorded).
    let looked_again = |name: &str| {
        claim_field(
            pg,
            name,
            "last_checked_at > activated_at AND failing_since IS NULL AND last_error IS NULL",
        ) == "t"
    };
    wait_until("A looked at once active", Duration::from_secs(30), || looked_again(A)).unwrap();
    // A's stored certificate (ACME is off here: a row stands for one) is
    // retired while A is moved, and serves again when A comes back.
    pg.psql(&format!(
        "INSERT INTO tenant_gateway.certificates (name, chain_pem, key_enc, not_before, not_after) \
         VALUES ('{A}', 'stands for a chain', '\\x00', now(), now() + interval '90 days')"
    ))
    .unwrap();
    let retired = || {
        pg.psql(&format!(
            "SELECT removed_at IS NOT NULL FROM tenant_gateway.certificates WHERE name = '{A}'"
        ))
        .unwrap()
    };
    let events = |name: &str| {
        pg.psql(&format!(
            "SELECT string_agg(event || ':' || actor, ',' ORDER BY id) FROM tenant_gateway.custom_hostname_events \
              WHERE name = '{name}'"
        ))
        .unwrap()
    };

    // Only `www.` of A points here, the name itself elsewhere: a customer
    // keeping its apex elsewhere. Looked at for longer than 3 s, A stays.
    let changed = pg.psql("SELECT now()").unwrap();
    dns.set_cname(A, "elsewhere.example");
    dns.set_cname(&format!("www.{A}"), EDGE);
    wait_until("A looked at for over 4 s", Duration::from_secs(60), || {
        claim_field(
            pg,
            A,
            &format!("last_checked_at > '{changed}'::timestamptz + interval '4 seconds'"),
        ) == "t"
    })
    .unwrap();
    assert_eq!(claim_field(pg, A, "status"), "active");
    wait_routed(gw, A, "ferrari");

    // Both point elsewhere: A moves once every answer has said so for 3 s.
    // So does the apex name once its addresses are another platform's.
    dns.set_cname(&format!("www.{A}"), "elsewhere.example");
    dns.set_a(APEX, &["192.0.2.7"]);
    let pointed_away = Instant::now();
    wait_status(pg, A, "moved", Duration::from_secs(30));
    wait_status(pg, APEX, "moved", Duration::from_secs(30));
    assert!(claim_field(pg, APEX, "last_error").contains("192.0.2.7"));
    assert!(
        pointed_away.elapsed() >= Duration::from_secs(2),
        "moved after {:?}",
        pointed_away.elapsed()
    );
    assert!(claim_field(pg, A, "last_error").contains("elsewhere.example"));
    assert!(events(A).ends_with("active:checker,moved:checker"), "{}", events(A));
    wait_until("A unrouted", Duration::from_secs(10), || http_status(gw.port, A) == 404).unwrap();
    assert_eq!(retired(), "t");
    wait_routed(gw, B, "mclaren");
    let (code, status) = gw.api(
        http::Method::GET,
        &format!("hostnames/status?name={A}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 200);
    assert_eq!(status["status"], "moved");
    assert_eq!(status["routed"], false);
    assert_eq!(status["instructions"]["cname_target"], EDGE, "{status}");
    // The claims whose names point elsewhere, listed by themselves.
    assert_eq!(page_through(gw, "failing=1&limit=1").0, [APEX, A]);
    assert_eq!(page_through(gw, "failing=1&status=active").0, Vec::<String>::new());

    // Pointed here again within its window: active and routed again.
    dns.set_cname(A, EDGE);
    wait_status(pg, A, "active", Duration::from_secs(30));
    wait_routed(gw, A, "ferrari");
    assert_eq!(claim_field(pg, A, "failing_since IS NULL AND moved_at IS NULL"), "t");
    assert_eq!(page_through(gw, "failing=1").0, [APEX]);
    assert_eq!(retired(), "f");

    // B's DNS answers SERVFAIL: no answer to go by, however long. Its
    // looks keep failing for longer than moved_after_secs, and it stays.
    dns.servfail(B, true);
    wait_until("B's look failing", Duration::from_secs(30), || {
        claim_field(pg, B, "last_error").contains("the DNS answered Server Failure")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", claim_field(pg, B, "last_error")));
    let first_failed = claim_field(pg, B, "last_checked_at");
    wait_until("B failing for over 4 s", Duration::from_secs(60), || {
        claim_field(
            pg,
            B,
            &format!(
                "last_checked_at > '{first_failed}'::timestamptz + interval '4 seconds' AND last_error IS NOT NULL"
            ),
        ) == "t"
    })
    .unwrap();
    assert_eq!(claim_field(pg, B, "status"), "active");
    assert_eq!(claim_field(pg, B, "failing_since IS NULL"), "t");
    wait_routed(gw, B, "mclaren");
    dns.servfail(B, false);

    // A away again, and for longer than its window: removed, by the
    // checker, and the name is free for another tenant's claim.
    dns.set_cname(A, "elsewhere.example");
    wait_status(pg, A, "moved", Duration::from_secs(30));
    wait_status(pg, A, "removed", Duration::from_secs(40));
    assert!(events(A).ends_with("moved:checker,removed:checker"), "{}", events(A));
    assert_eq!(retired(), "t");
    assert_eq!(http_status(gw.port, A), 404);
    let added = claim(gw, &format!("name={A}&tenant=mclaren&method=txt"));
    assert_eq!(added["status"], "pending");
    assert_eq!(added["tenant"], "mclaren");
    wait_routed(gw, B, "mclaren");

    // The `cname` proof follows the same rule: a claim whose `www.` name
    // alone points here is proven.
    const WWW_ONLY: &str = "www-only.mclaren.test";
    app_cli_ok(&pg.url(), &["domain", "add", WWW_ONLY, "--tenant", "mclaren"]);
    dns.set_cname(WWW_ONLY, "elsewhere.example");
    dns.set_cname(&format!("www.{WWW_ONLY}"), EDGE);
    claim(gw, &format!("name={WWW_ONLY}&tenant=mclaren&method=cname"));
    wait_status(pg, WWW_ONLY, "active", Duration::from_secs(30));
    wait_routed(gw, WWW_ONLY, "mclaren");
}

/// A claim that ended unproven gives way: a name typed first by the wrong
/// tenant (a squatter, a typo) is refused to others only while its window
/// is open, and its holder cannot reopen it by `retry` once another tenant
/// asked for it meanwhile. With `strip_www`, a name that is `www.` of a `www.` name is
/// refused: it would be stored as the `www.` name and proven by where
/// that one points (here, for another tenant's claim on the apex).
#[test]
fn a_claim_that_ended_unproven_gives_way_to_another_tenants_and_www_www_is_refused() {
    const NAME: &str = "squatted.test";
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(dir.path()).unwrap();
    let s = claims_stack(&format!(
        "strip_www = true\n{}",
        verification(dns.port, 80, "\"txt\"", 3)
    ));
    let (pg, gw) = (&s.pg, &s.gw);
    let post = |query: &str| gw.api(http::Method::POST, &format!("hostnames?{query}"), Some(ADMIN_TOKEN));
    // mclaren's product sent it first; it is never proven.
    let first = claim(gw, &format!("name={NAME}&tenant=mclaren&method=txt"));
    let (code, refused) = post(&format!("name={NAME}&tenant=ferrari&method=txt"));
    assert_eq!(code, 409, "refused while its window is open: {refused}");
    // Asked again: the contest is recorded once.
    let (code, _) = post(&format!("name={NAME}&tenant=ferrari&method=txt"));
    assert_eq!(code, 409);
    wait_status(pg, NAME, "expired", Duration::from_secs(30));
    // Its holder cannot reopen it ahead of ferrari, which asked while it
    // was pending (a squatter retrying at each expiry kept the owner out).
    let (code, refused) = gw.api(
        http::Method::POST,
        &format!("hostnames/retry?name={NAME}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`ferrari` asked for it"),
        "{refused}"
    );
    assert_eq!(claim_field(pg, NAME, "status"), "expired");
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM tenant_gateway.custom_hostname_events WHERE name = '{NAME}' AND event = 'contested'"
        ))
        .unwrap(),
        "1"
    );
    // Ferrari's claim replaces it, with a token of its own.
    let second = claim(gw, &format!("name={NAME}&tenant=ferrari&method=txt"));
    assert_eq!(second["tenant"], "ferrari", "{second}");
    assert_eq!(second["status"], "pending", "{second}");
    let token = second["instructions"]["txt_value"].as_str().unwrap().to_owned();
    assert_ne!(first["instructions"]["txt_value"], token);
    app_cli_ok(&pg.url(), &["domain", "add", NAME, "--tenant", "ferrari"]);
    dns.set_txt(&format!("_tenant-gateway.{NAME}"), &token);
    wait_status(pg, NAME, "active", Duration::from_secs(30));
    wait_routed(gw, NAME, "ferrari");
    // An active claim is not replaced.
    let (code, refused) = post(&format!("name={NAME}&tenant=mclaren&method=txt"));
    assert_eq!(code, 409, "{refused}");
    assert_eq!(claim_field(pg, NAME, "tenant"), "ferrari");
    // `www.www.` of a name.
    let (code, refused) = post(&format!("name=www.www.{NAME}&tenant=mclaren&method=txt"));
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused["message"].as_str().unwrap_or_default().contains("www."),
        "{refused}"
    );
}

/// A moved claim whose name points here again comes back only by a proof
/// that names it: the name may have changed hands while it pointed
/// elsewhere, and a new owner pointing it here (to sign up with another
/// tenant) must not reach the old one. A `cname` claim comes back at once
/// (pointing here was all its proof), a `txt` claim once its TXT record
/// holds the claim's token again, an operator's (or `http`) claim only
/// when the operator vouches again.
#[test]
fn a_moved_claim_comes_back_only_by_a_proof_that_names_it() {
    const CNAME: &str = "by-cname.ferrari.test";
    const TXT: &str = "by-txt.ferrari.test";
    const VOUCHED: &str = "vouched.ferrari.test";
    const EDGE: &str = "edge.myapp.localhost";
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(dir.path()).unwrap();
    let s = claims_stack(&format!(
        "{}recheck_interval_secs = 1\nmoved_after_secs = 2\nmoved_window_secs = 300\n",
        verification(dns.port, 80, "\"cname\", \"txt\"", 600)
    ));
    let (pg, gw) = (&s.pg, &s.gw);
    let record = format!("_tenant-gateway.{TXT}");
    for name in [CNAME, TXT, VOUCHED] {
        app_cli_ok(&pg.url(), &["domain", "add", name, "--tenant", "ferrari"]);
        dns.set_cname(name, EDGE);
    }
    claim(gw, &format!("name={CNAME}&tenant=ferrari&method=cname"));
    let added = claim(gw, &format!("name={TXT}&tenant=ferrari&method=txt"));
    let token = added["instructions"]["txt_value"].as_str().unwrap().to_owned();
    dns.set_txt(&record, &token);
    claim(gw, &format!("name={VOUCHED}&tenant=ferrari&preverified=1"));
    for name in [CNAME, TXT, VOUCHED] {
        wait_status(pg, name, "active", Duration::from_secs(30));
        wait_routed(gw, name, "ferrari");
    }

    // All three point elsewhere, and the TXT record is gone (a domain
    // that lapsed and was registered again has none of it).
    for name in [CNAME, TXT, VOUCHED] {
        dns.set_cname(name, "elsewhere.example");
    }
    dns.clear_txt(&record);
    for name in [CNAME, TXT, VOUCHED] {
        wait_status(pg, name, "moved", Duration::from_secs(30));
        wait_until(&format!("{name} unrouted"), Duration::from_secs(10), || {
            http_status(gw.port, name) == 404
        })
        .unwrap();
    }

    // All three point here again: only the `cname` claim is back.
    let pointed_back = pg.psql("SELECT now()").unwrap();
    for name in [CNAME, TXT, VOUCHED] {
        dns.set_cname(name, EDGE);
    }
    wait_status(pg, CNAME, "active", Duration::from_secs(30));
    wait_routed(gw, CNAME, "ferrari");
    for (name, why) in [
        (TXT, "its TXT record holds the claim's token"),
        (VOUCHED, "add it again with preverified"),
    ] {
        wait_until(
            &format!("{name} looked at since it points here"),
            Duration::from_secs(30),
            || {
                claim_field(
                    pg,
                    name,
                    &format!(
                        "last_checked_at > '{pointed_back}'::timestamptz AND last_error LIKE 'points here again%'"
                    ),
                ) == "t"
            },
        )
        .unwrap_or_else(|e| panic!("{e}: {}", claim_field(pg, name, "last_error")));
        assert!(
            claim_field(pg, name, "last_error").contains(why),
            "{}",
            claim_field(pg, name, "last_error")
        );
        assert_eq!(claim_field(pg, name, "status"), "moved");
        assert_eq!(http_status(gw.port, name), 404, "{name} routed while moved");
    }

    // The TXT record with the claim's token again: back, routed.
    dns.set_txt(&record, &token);
    wait_status(pg, TXT, "active", Duration::from_secs(30));
    wait_routed(gw, TXT, "ferrari");
    // The operator vouches again: back, routed.
    claim(gw, &format!("name={VOUCHED}&tenant=ferrari&preverified=1"));
    wait_status(pg, VOUCHED, "active", Duration::from_secs(30));
    wait_routed(gw, VOUCHED, "ferrari");
}

/// A proof waits for its domain row only for `verification_window_secs`
/// (a domain can change hands meanwhile): a claim proven by its TXT record
/// while no row maps the name expires at the window's end, and a row that
/// arrives afterwards does not route it; a retry proves it again and it
/// activates. A preverified claim (an operator's word) waits for its row
/// as long as it takes.
#[test]
fn a_proof_waits_for_its_domain_row_only_for_the_verification_window() {
    const LATE: &str = "late.ferrari.test";
    const VOUCHED: &str = "vouched.ferrari.test";
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(dir.path()).unwrap();
    let s = claims_stack(&verification(dns.port, 80, "\"txt\"", 8));
    let (pg, gw) = (&s.pg, &s.gw);
    let added = claim(gw, &format!("name={LATE}&tenant=ferrari"));
    let token = added["instructions"]["txt_value"].as_str().unwrap().to_owned();
    dns.set_txt(&format!("_tenant-gateway.{LATE}"), &token);
    gw.cli(
        &pg.url(),
        &["hostnames", "add", VOUCHED, "--tenant", "ferrari", "--preverified"],
    );
    wait_status(pg, LATE, "verified", Duration::from_secs(15));
    wait_status(pg, LATE, "expired", Duration::from_secs(30));
    assert!(
        claim_field(pg, LATE, "last_error").contains("within verification_window_secs"),
        "{}",
        claim_field(pg, LATE, "last_error")
    );
    // The operator's claim, looked at after as long, still waits.
    wait_until(
        "the vouched claim looked at past the window",
        Duration::from_secs(30),
        || claim_field(pg, VOUCHED, "last_checked_at > verified_at + interval '8 seconds'") == "t",
    )
    .unwrap();
    assert_eq!(claim_field(pg, VOUCHED, "status"), "verified");

    // The rows arrive: the operator's claim activates; the expired one
    // does not route until a retry proves it again.
    for name in [LATE, VOUCHED] {
        app_cli_ok(&pg.url(), &["domain", "add", name, "--tenant", "ferrari"]);
    }
    wait_status(pg, VOUCHED, "active", Duration::from_secs(10));
    wait_routed(gw, VOUCHED, "ferrari");
    assert_eq!(claim_field(pg, LATE, "status"), "expired");
    assert_eq!(http_status(gw.port, LATE), 404);
    let (code, retried) = gw.api(
        http::Method::POST,
        &format!("hostnames/retry?name={LATE}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 200, "{retried}");
    wait_status(pg, LATE, "active", Duration::from_secs(15));
    wait_routed(gw, LATE, "ferrari");
}

/// Turning rechecks on for claims long active is no burst of DNS queries:
/// when the checkers start, active claims overdue for a recheck by more
/// than an interval are spread over the next interval; a claim due within
/// an interval keeps its time.
#[test]
fn active_claims_long_overdue_for_a_recheck_are_spread_over_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(dir.path()).unwrap();
    let mut s = claims_stack(&format!(
        "{}recheck_interval_secs = 3600\n",
        verification(dns.port, 80, "\"cname\"", 600)
    ));
    s.gw.cli(&s.pg.url(), &["hostnames", "list"]);
    // Held by another checker's lease, so the running gateway leaves them.
    let claims = |names: &str, due: &str| {
        format!(
            "INSERT INTO tenant_gateway.custom_hostnames \
               (name, tenant, status, method, token, verify_by, verified_at, activated_at, next_check_at, \
                lease_owner, lease_until) \
             SELECT {names}, 'ferrari', 'active', 'txt', 'token', now(), now() - interval '30 days', \
                    now() - interval '30 days', now() - interval '{due}', 'another', now() + interval '10 minutes'"
        )
    };
    s.pg.psql(&format!(
        "{} FROM generate_series(1, 50) AS i",
        claims("'old' || i || '.test'", "30 days")
    ))
    .unwrap();
    s.pg.psql(&claims("'recent.test'", "1 minute")).unwrap();
    let recent_due = |pg: &Postgres| {
        pg.psql("SELECT next_check_at FROM tenant_gateway.custom_hostnames WHERE name = 'recent.test'")
            .unwrap()
    };
    let recent_before = recent_due(&s.pg);
    let restarted_at = s.pg.psql("SELECT now()").unwrap();
    s.restart_gateway();
    let pg = &s.pg;
    wait_until("the overdue claims spread", Duration::from_secs(30), || {
        pg.psql(
            "SELECT count(*) FROM tenant_gateway.custom_hostnames \
              WHERE name LIKE 'old%' AND next_check_at < now()",
        )
        .is_ok_and(|n| n == "0")
    })
    .unwrap();
    // Within the next hour, after the restart, and not at one moment.
    let spread = pg
        .psql(&format!(
            "SELECT min(next_check_at) > '{restarted_at}'::timestamptz, \
                    max(next_check_at) <= now() + interval '1 hour', \
                    count(DISTINCT date_trunc('minute', next_check_at)) >= 10 \
               FROM tenant_gateway.custom_hostnames WHERE name LIKE 'old%'"
        ))
        .unwrap();
    assert_eq!(spread, "t|t|t");
    assert_eq!(recent_due(pg), recent_before);
}

/// A hostile (or unlucky) tenant's claims do not hold back another's: with
/// two check slots, mclaren claims 40 names whose `http` proof never
/// answers (a web server that takes connections and never replies: each
/// check takes its whole 3 s timeout), then ferrari claims one. Taken by
/// due time, ferrari's claim waited behind every one of mclaren's overdue
/// claims (about a minute for each of its checks); with the slots shared,
/// the next free slot is ferrari's and its claim is active within seconds,
/// while mclaren's claims go on being checked.
#[test]
fn one_tenants_many_unanswering_claims_do_not_hold_back_anothers() {
    const NAME: &str = "prompt.ferrari.test";
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(dir.path()).unwrap();
    // Connections complete in the kernel's queue; nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let s = claims_stack(&format!(
        "{}max_concurrent_checks = 2\n",
        verification(dns.port, silent_port, "\"http\", \"txt\"", 3600)
    ));
    let (pg, gw) = (&s.pg, &s.gw);
    for i in 0..40 {
        claim(gw, &format!("name=never{i}.mclaren.test&tenant=mclaren&method=http"));
    }
    let mclaren_checks = || {
        pg.psql("SELECT coalesce(sum(checks), 0) FROM tenant_gateway.custom_hostnames WHERE tenant = 'mclaren'")
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0)
    };
    // The flood is being checked (each check its whole timeout) and is
    // overdue by the time ferrari comes.
    wait_until("mclaren's first checks", Duration::from_secs(30), || {
        mclaren_checks() >= 4
    })
    .unwrap();
    app_cli_ok(&pg.url(), &["domain", "add", NAME, "--tenant", "ferrari"]);
    let added = claim(gw, &format!("name={NAME}&tenant=ferrari&method=txt"));
    let token = added["instructions"]["txt_value"].as_str().unwrap().to_owned();
    // Ferrari's first check finds no record yet; its next waits for a slot
    // again.
    wait_checks(pg, NAME, 1);
    dns.set_txt(&format!("_tenant-gateway.{NAME}"), &token);
    let published = Instant::now();
    wait_status(pg, NAME, "active", Duration::from_secs(25));
    wait_routed(gw, NAME, "ferrari");
    let before = mclaren_checks();
    wait_until("mclaren's claims still checked", Duration::from_secs(30), || {
        mclaren_checks() >= before + 2
    })
    .unwrap();
    assert_eq!(
        pg.psql("SELECT count(*) FROM tenant_gateway.custom_hostnames WHERE tenant = 'mclaren' AND status = 'pending'")
            .unwrap(),
        "40",
        "proven in {:?}",
        published.elapsed()
    );
}
