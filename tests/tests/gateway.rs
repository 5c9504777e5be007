//! The gateway data path end to end: real gateway processes in front of real
//! upstream-app processes, one (or two) real PostgreSQL clusters, real HTTP
//! clients. Two tenants and a hostile client in every test.

use std::time::{Duration, Instant};

use e2e::http;
use e2e::*;
use serde_json::{json, Value};

/// PostgreSQL with ferrari and mclaren (subdomains and custom domains), an
/// upstream-app pool of two, and one gateway; `extra` after `[tenant]`.
fn stack(extra: &str) -> Stack {
    Stack::builder().config(extra).start()
}

#[test]
fn tenants_are_isolated_through_the_gateway() {
    let s = stack("");
    assert_eq!(
        s.post("ferrari.myapp.localhost", "/projects", json!({ "name": "F1" }))
            .status,
        201
    );
    assert_eq!(
        s.post("www.ferrari-cars.test", "/projects", json!({ "name": "F2" }))
            .status,
        201
    );
    assert_eq!(
        s.post("mclaren-racing.test", "/projects", json!({ "name": "M1" }))
            .status,
        201
    );
    // One keep-alive client alternates hosts on reused connections, both to
    // the gateway and from the gateway to the backends.
    for _ in 0..10 {
        for host in [
            "ferrari.myapp.localhost",
            "WWW.Ferrari-Cars.test.",
            "www.ferrari-cars.test:8080",
        ] {
            assert_eq!(names(&s.get(host, "/projects", &[]).json()), ["F1", "F2"], "{host}");
        }
        for host in ["mclaren.myapp.localhost", "mclaren-racing.test"] {
            assert_eq!(names(&s.get(host, "/projects", &[]).json()), ["M1"], "{host}");
            assert_eq!(
                s.get(host, "/projects/2", &[]).status,
                404,
                "mclaren must not see ferrari's project 2"
            );
        }
    }
    let who = s.whoami("mclaren-racing.test", &[]);
    assert_eq!(
        (who["tenant"].as_str(), who["schema"].as_str()),
        (Some("mclaren"), Some("mclaren"))
    );
    // The backend got the normalised host and exactly one stamp.
    assert_eq!(who["host"], json!(["mclaren-racing.test"]));
    assert_eq!(who["tenant_headers"].as_array().unwrap().len(), 2, "{who}");
    // Both backends served traffic (round robin).
    for app in &s.apps {
        assert!(app.proc_.log().contains("tenant=ferrari"), "a backend got no traffic");
    }
    let mclaren = |l: &&str| l.contains("access") && l.contains("tenant=mclaren") && l.contains("GET");
    let access =
        s.gw.proc_
            .log_when("access line for mclaren", Duration::from_secs(10), |log| {
                log.lines().any(|l| mclaren(&l))
            });
    let line = access.lines().find(mclaren).expect("found above");
    for field in [
        "host=",
        "method=GET",
        "path=",
        "status=200",
        "pool=default",
        "backend=127.0.0.1:",
        "latency_ms=",
        "request_id=",
    ] {
        assert!(line.contains(field), "access log lacks {field}: {line}");
    }
    // LOG_FORMAT=json: the same line as one JSON object (the gateway writes
    // it itself, as tracing-subscriber's JSON format would: logging/json.rs).
    let gw = s.gateway().env("LOG_FORMAT", "json").start().unwrap();
    let r = s
        .client
        .get(&gw.url("/whoami"))
        .header("host", "mclaren-racing.test")
        .header("X-Tenant", "ferrari")
        .send()
        .unwrap();
    assert_eq!(r.status, 200);
    let log = gw.proc_.log_when("JSON access line", Duration::from_secs(10), |log| {
        log.lines().any(|l| l.contains("\"target\":\"access\""))
    });
    let line = log.lines().find(|l| l.contains("\"target\":\"access\"")).unwrap();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    let f = &v["fields"];
    assert_eq!(
        (&f["tenant"], &f["host"], &f["path"]),
        (&json!("mclaren"), &json!("mclaren-racing.test"), &json!("/whoami")),
        "{line}"
    );
    assert_eq!((&f["status"], &f["attempts"]), (&json!(200), &json!(1)), "{line}");
    assert!(f["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{line}");
    assert!(
        humantime::parse_rfc3339(v["timestamp"].as_str().unwrap_or_default()).is_ok(),
        "{line}"
    );
}

/// The `X-Tenant*` headers the backend received (`name: value`), as
/// `/whoami` reports them.
fn tenant_headers(who: &Value) -> Vec<&str> {
    who["tenant_headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect()
}

#[test]
fn spoofed_headers_never_change_the_tenant() {
    let s = stack("");
    let host = "ferrari.myapp.localhost";
    let spoofs: &[&[(&str, &str)]] = &[
        &[("X-Tenant", "mclaren")],
        &[("x-tenant", "mclaren")],
        &[("X_Tenant", "mclaren")],
        &[("X-Tenant-Signature", "v1;kid=k1;ts=1;sig=00")],
        &[("X-Tenant", "mclaren"), ("X-Tenant", "mclaren")],
        &[("x_tenant_signature", "forged"), ("X-TENANT-ID", "mclaren")],
        &[("Forwarded", "for=1.2.3.4;host=mclaren.myapp.localhost;proto=https")],
        &[("X-Forwarded-Host", "mclaren.myapp.localhost")],
        &[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")],
        // Headers only a proxy sets, in any spelling a backend reads alike.
        &[
            ("X-Real-IP", "6.6.6.6"),
            ("X_Real_IP", "6.6.6.6"),
            ("X-Forwarded-Port", "8443"),
            ("X-Forwarded-Prefix", "/mclaren"),
            ("X-Forwarded-Ssl", "on"),
            ("True-Client-IP", "6.6.6.6"),
        ],
    ];
    for headers in spoofs {
        let who = s.whoami(host, headers);
        assert_eq!(who["tenant"], "ferrari", "{headers:?}: {who}");
        assert_eq!(who["schema"], "ferrari", "{headers:?}");
        let stamped = tenant_headers(&who);
        assert_eq!(
            stamped.len(),
            2,
            "{headers:?}: client tenant headers survived: {stamped:?}"
        );
        assert!(stamped.contains(&"x-tenant: ferrari"), "{stamped:?}");
        assert_eq!(who["x_forwarded_for"], json!(["127.0.0.1"]), "{headers:?}");
        assert_eq!(who["x_forwarded_host"], json!([host]));
        assert_eq!(who["x_forwarded_proto"], json!(["http"]));
        assert_eq!(
            who["forwarded"],
            json!([format!("for=127.0.0.1;host={host};proto=http")])
        );
        let names = who["header_names"].as_array().unwrap();
        for name in [
            "x-real-ip",
            "x_real_ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-ssl",
            "true-client-ip",
        ] {
            assert!(!names.contains(&json!(name)), "{headers:?}: {name} passed: {who}");
        }
    }
    // A request id is added when absent and kept when sane.
    let who = s.whoami(host, &[]);
    assert_eq!(who["request_id"].as_array().unwrap()[0].as_str().unwrap().len(), 32);
    let who = s.whoami(host, &[("X-Request-Id", "abc-123")]);
    assert_eq!(who["request_id"], json!(["abc-123"]));
    // A second id, or one that is not sane, never reaches the backend: it
    // sees exactly one id (the gateway only skips re-setting an id, or Host,
    // when the request already carries exactly that value).
    let (status, body) = s.raw_get(
        "/whoami",
        &[
            "Host: ferrari.myapp.localhost",
            "X-Request-Id: abc-123",
            "X-Request-Id: evil",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"request_id\":[\"abc-123\"]"), "{body}");
    let (status, body) = s.raw_get("/whoami", &["Host: ferrari.myapp.localhost", "X-Request-Id: has space"]);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("has space"), "{body}");
    // A Host spelled differently reaches the backend normalised.
    let (status, body) = s.raw_get("/whoami", &["Host: FERRARI.MyApp.localhost."]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"host\":[\"ferrari.myapp.localhost\"]"), "{body}");
    assert!(body.contains("\"tenant\":\"ferrari\""), "{body}");
    // Absolute-form URI naming another tenant than Host: refused.
    let (status, _) = s.raw_get(
        "http://mclaren.myapp.localhost/whoami",
        &["Host: ferrari.myapp.localhost"],
    );
    assert_eq!(status, 400);
    // Absolute-form agreeing with Host: fine, and the tenant is Host's.
    let (status, body) = s.raw_get(
        "http://ferrari.myapp.localhost/whoami",
        &["Host: ferrari.myapp.localhost"],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tenant\":\"ferrari\""), "{body}");
    // Two Host headers: refused.
    let (status, _) = s.raw_get(
        "/whoami",
        &["Host: ferrari.myapp.localhost", "Host: mclaren.myapp.localhost"],
    );
    assert_eq!(status, 400);
    // A target that is not UTF-8 is refused (by Pingora), never passed on
    // altered.
    let (status, body) = raw_http(
        s.gw.port,
        b"GET /projects/1\xff HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("bad_id"), "{body}");
    // Non-ASCII UTF-8 goes upstream as it came and is what is signed: the
    // backend verifies the stamp over it, then refuses the id it names.
    let (status, body) = raw_http(
        s.gw.port,
        "GET /projects/caf\u{e9} HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("\"error\":\"bad_id\"") && body.contains("caf\u{e9}"),
        "{body}"
    );
}

#[test]
fn status_pages_are_served_without_a_backend() {
    let s = stack("");
    create_tenant(&s.pg.url(), "paused", &["paused.myapp.localhost"]);
    app_cli_ok(&s.pg.url(), &["tenant", "suspend", "paused"]);
    create_tenant(&s.pg.url(), "gone", &["gone.myapp.localhost"]);
    app_cli_ok(&s.pg.url(), &["tenant", "delete", "gone"]);
    let probe = "/probe-never-forwarded";
    let cases = [
        ("nobody.myapp.localhost", 404, "not_found"),
        ("evil.example", 404, "not_found"),
        ("paused.myapp.localhost", 403, "suspended"),
        ("gone.myapp.localhost", 404, "deleted"),
        ("bad..host", 400, "bad_request"),
        ("under_score-.test", 400, "bad_request"),
    ];
    for (host, status, kind) in cases {
        let html = s.get(host, probe, &[("accept", "text/html")]);
        assert_eq!(html.status, status, "{host}: {}", html.body);
        assert!(
            html.headers["content-type"].to_str().unwrap().starts_with("text/html"),
            "{host}"
        );
        assert!(html.body.contains("<html>"), "{host}");
        let j = s.get(host, probe, &[("accept", "application/json")]);
        assert_eq!(j.status, status);
        assert_eq!(j.json()["error"], kind, "{host}");
    }
    let long = format!("{}.test", vec!["a"; 130].join("."));
    assert_eq!(s.get(&long, probe, &[]).status, 400);
    let (status, _) = raw_http(
        s.gw.port,
        format!("GET {probe} HTTP/1.1\r\nHost: a\u{7f}b\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(status, 400);
    for app in &s.apps {
        assert!(!app.proc_.log().contains(probe), "a refused request reached a backend");
    }
    // The unknown host costs one query even when asked again.
    let before = s.gw.metric("tenant_gateway_db_queries_total");
    for _ in 0..20 {
        assert_eq!(s.get("nobody.myapp.localhost", "/", &[]).status, 404);
    }
    assert_eq!(s.gw.metric("tenant_gateway_db_queries_total"), before);
}

#[test]
fn cache_costs_one_query_per_name_and_floods_do_not_evict_tenants() {
    // Cache times and the lookup deadline far beyond the test's length: on a
    // slow machine the flood must neither outlive a negative entry (asking
    // a name again after its TTL costs a query) nor turn a slow lookup into
    // a 503.
    let s = stack(
        "[tenant.cache]\npositive_ttl_secs = 3600\nnegative_ttl_secs = 3600\nmax_stale_secs = 7200\n\
         [database]\nlookup_nice = 7\nlookup_deadline_ms = 30000\nquery_timeout_ms = 30000\n",
    );
    // Lookups of uncached names run on their own thread at the configured
    // niceness, so a flood of them yields the CPU to cached tenants.
    let pid = s.gw.proc_.pid();
    let threads: Vec<(String, i64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            // Fields after the command name: state is field 3, nice field 19.
            Some((comm.to_string(), rest.split(' ').nth(16)?.parse().ok()?))
        })
        .collect();
    assert!(threads.contains(&("tenant-lookup".into(), 7)), "{threads:?}");
    assert!(
        threads
            .iter()
            .filter(|(c, _)| c != "tenant-lookup")
            .all(|(_, n)| *n == 0),
        "{threads:?}"
    );
    let q = |s: &Stack| s.gw.metric("tenant_gateway_db_queries_total");
    let base = q(&s);
    // Concurrent misses for one name are coalesced into one query.
    let port = s.gw.port;
    let fire = |hosts: Vec<String>, concurrency: usize| fire_requests(port, "/whoami", hosts, concurrency);
    let statuses = fire(vec!["ferrari.myapp.localhost".to_string(); 1000], 16);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert_eq!(q(&s) - base, 1.0, "1,000 requests for one host must cost one query");

    // Warm a second hot tenant, then flood with 1,000 random unknown names
    // (10 requests each), hot tenants interleaved.
    assert_eq!(s.get("mclaren.myapp.localhost", "/whoami", &[]).status, 200);
    let before_flood = q(&s);
    let mut hosts = Vec::new();
    let seed: u64 = rand::random();
    for round in 0..10 {
        for i in 0..1000u64 {
            hosts.push(format!("r{:x}.myapp.localhost", seed.wrapping_add(i)));
            if i % 100 == round {
                hosts.push("ferrari.myapp.localhost".into());
                hosts.push("mclaren.myapp.localhost".into());
            }
        }
    }
    let statuses = fire(hosts, 16);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 200);
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 10_000);
    let flood_queries = q(&s) - before_flood;
    assert!(
        flood_queries <= 1000.0 + 0.0,
        "{flood_queries} queries for 1,000 distinct unknown names"
    );
    // Hot tenants stayed cached throughout: asking again costs nothing.
    let after = q(&s);
    for _ in 0..50 {
        assert_eq!(s.get("ferrari.myapp.localhost", "/whoami", &[]).status, 200);
        assert_eq!(s.get("mclaren.myapp.localhost", "/whoami", &[]).status, 200);
    }
    assert_eq!(q(&s), after, "hot tenants were evicted by the flood");
}

/// The tenant `/whoami` names through `gw` for `host`.
fn tenant_on_host(client: &http::Client, gw: &Gateway, host: &str) -> String {
    let r = client.get(&gw.url("/whoami")).header("host", host).send().unwrap();
    r.json()["tenant"].as_str().unwrap_or_default().to_owned()
}

/// Give ferrari's `www.ferrari-cars.test` to mclaren in the domain table
/// (its trigger sends the NOTIFY); when.
fn move_ferrari_cars_to_mclaren(pg: &Postgres) -> Instant {
    pg.psql(
        "UPDATE public.domains SET tenant_id = (SELECT id FROM public.tenants WHERE schema_name = 'mclaren') \
         WHERE domain = 'www.ferrari-cars.test'",
    )
    .unwrap();
    Instant::now()
}

#[test]
fn notify_moves_a_domain_on_every_gateway() {
    let s = stack("");
    let pools = pools_toml(&[("default", &[s.apps[0].port, s.apps[1].port])]);
    let gw2 = Gateway::start(&s.pg.url(), &pools).unwrap();
    let client = http::client();
    let tenant_on = |gw: &Gateway| tenant_on_host(&client, gw, "www.ferrari-cars.test");
    // Both cached as ferrari (positive TTL is 60 s: only NOTIFY can move them).
    assert_eq!(tenant_on(&s.gw), "ferrari");
    assert_eq!(tenant_on(&gw2), "ferrari");
    let moved = move_ferrari_cars_to_mclaren(&s.pg);
    wait_until("both gateways route to mclaren", PROPAGATION, || {
        tenant_on(&s.gw) == "mclaren" && tenant_on(&gw2) == "mclaren"
    })
    .unwrap_or_else(|e| panic!("{e} (after {:?})", moved.elapsed()));
    // Suspending a tenant is a change too, for each of its domains (which
    // share one tenant record in a gateway's cache) and for no other
    // tenant's. With 300 more of them: more than one NOTIFY's payload
    // (PostgreSQL refuses 8000 bytes) holds, so they go in chunks.
    const MANY: &str = "shop-0300.mclaren-racing-team.test";
    s.pg.psql(
        "INSERT INTO public.domains (domain, tenant_id)
         SELECT 'shop-' || lpad(i::text, 4, '0') || '.mclaren-racing-team.test', t.id
           FROM generate_series(1, 300) i, public.tenants t WHERE t.schema_name = 'mclaren'",
    )
    .unwrap();
    wait_until("the last of them routed", PROPAGATION, || {
        [&s.gw, &gw2]
            .iter()
            .all(|gw| tenant_on_host(&client, gw, MANY) == "mclaren")
    })
    .unwrap();
    app_cli_ok(&s.pg.url(), &["tenant", "suspend", "mclaren"]);
    let status_on = |gw: &Gateway, host: &str| client.get(&gw.url("/")).header("host", host).send().unwrap().status;
    wait_until("suspension seen", PROPAGATION, || {
        [&s.gw, &gw2].iter().all(|gw| {
            [
                "mclaren.myapp.localhost",
                "mclaren-racing.test",
                "www.ferrari-cars.test",
                MANY,
            ]
            .iter()
            .all(|h| status_on(gw, h) == 403)
        })
    })
    .unwrap();
    for gw in [&s.gw, &gw2] {
        assert_eq!(tenant_on_host(&client, gw, "ferrari.myapp.localhost"), "ferrari");
    }
    // A removed domain disappears.
    app_cli_ok(&s.pg.url(), &["domain", "remove", "mclaren-racing.test"]);
    wait_until("removal seen", PROPAGATION, || {
        client
            .get(&s.gw.url("/"))
            .header("host", "mclaren-racing.test")
            .send()
            .unwrap()
            .status
            == 404
    })
    .unwrap();
}

/// A connection keeps the tenant of the host it kept (the gateway's
/// `TenantMemo`) and the `X-Tenant` value of the first tenant it stamped
/// (`StampMemo`), so a change must end that on the open connection itself,
/// not only in the shared cache, and the other tenant's requests on the
/// same connection must carry their own stamp (the backend names the
/// tenant its verified stamp says). Two tenants on one keep-alive connection;
/// the connection's own host moves from one to the other while it stays
/// open (positive TTL 60 s: only the NOTIFY can move it in time).
#[test]
fn a_kept_connection_follows_its_domain_to_another_tenant() {
    let s = stack("");
    let mut conn = KeepAlive::connect(s.gw.port).unwrap();
    let mut ask = |host: &str| -> (u16, String) {
        let (status, body) = conn
            .send(&format!("GET /whoami HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .unwrap();
        let tenant = match status {
            200 => serde_json::from_str::<Value>(&body).unwrap()["tenant"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        (status, tenant)
    };
    // The connection's first host, until its answer comes from the
    // connection (a miss, a hit that keeps it, hits from the memo); the
    // other tenant's host on the same connection in between.
    for _ in 0..3 {
        assert_eq!(ask("www.ferrari-cars.test"), (200, "ferrari".into()));
        assert_eq!(ask("mclaren.myapp.localhost"), (200, "mclaren".into()));
    }
    let moved = move_ferrari_cars_to_mclaren(&s.pg);
    wait_until("the open connection routes to mclaren", PROPAGATION, || {
        ask("www.ferrari-cars.test") == (200, "mclaren".into())
    })
    .unwrap_or_else(|e| panic!("{e} (after {:?})", moved.elapsed()));
    for _ in 0..3 {
        assert_eq!(ask("www.ferrari-cars.test"), (200, "mclaren".into()));
        assert_eq!(ask("ferrari.myapp.localhost"), (200, "ferrari".into()));
    }
    // Suspending the tenant it now belongs to is a change too.
    app_cli_ok(&s.pg.url(), &["tenant", "suspend", "mclaren"]);
    wait_until("suspension seen on the open connection", PROPAGATION, || {
        ask("www.ferrari-cars.test").0 == 403
    })
    .unwrap();
}

#[test]
fn database_outage_serves_cached_tenants_and_503s_unknown_hosts() {
    // The gateway's domain table lives in its own cluster, so stopping it
    // leaves the backends (and their database) running.
    let mut routing = Postgres::start().unwrap();
    two_tenants(&routing);
    let s = stack("");
    let pools = pools_toml(&[("default", &[s.apps[0].port, s.apps[1].port])]);
    let gw = Gateway::start(&routing.url(), &pools).unwrap();
    let get = |host: &str| s.client.get(&gw.url("/whoami")).header("host", host).send().unwrap();
    assert_eq!(get("ferrari.myapp.localhost").status, 200);
    assert_eq!(get("never-seen.test").status, 404);
    routing.stop_server().unwrap();
    wait_until("gateway noticed the outage", Duration::from_secs(10), || {
        gw.metric("tenant_gateway_invalidation_listener_up") == 0.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc_.log()));
    for _ in 0..20 {
        let r = get("ferrari.myapp.localhost");
        assert_eq!(r.status, 200, "cached tenant must keep working: {}", r.body);
        assert_eq!(r.json()["tenant"], "ferrari");
        assert_eq!(
            get("mclaren.myapp.localhost").status,
            503,
            "never cached, database down"
        );
        assert_eq!(get("another-unknown.test").status, 503);
    }
    assert!(gw.metric("tenant_gateway_cache_stale_served_total") >= 1.0);
    routing.start_server().unwrap();
    wait_until("new hosts resolve again", Duration::from_secs(15), || {
        get("mclaren.myapp.localhost").status == 200
    })
    .unwrap();
    assert_eq!(get("mclaren.myapp.localhost").json()["tenant"], "mclaren");
    // And invalidation works again over the re-established LISTEN.
    routing
        .psql("DELETE FROM public.domains WHERE domain = 'ferrari.myapp.localhost'")
        .unwrap();
    wait_until("NOTIFY after reconnect", Duration::from_secs(5), || {
        get("ferrari.myapp.localhost").status == 404
    })
    .unwrap();
}

#[test]
fn backend_failure_and_dedicated_pools() {
    let pg = Postgres::start().unwrap();
    two_tenants(&pg);
    let a = UpstreamApp::start(&pg.url(), "").unwrap();
    let mut b = UpstreamApp::start(&pg.url(), "").unwrap();
    let big = UpstreamApp::start(&pg.url(), "").unwrap();
    let pools = pools_toml(&[("default", &[a.port, b.port]), ("big", &[big.port])]);
    let gw = Gateway::start(&pg.url(), &pools).unwrap();
    app_cli_ok(&pg.url(), &["tenant", "pin", "mclaren", "--pool", "big"]);
    let client = http::client();
    let get = |host: &str| {
        client
            .get(&gw.url("/whoami"))
            .header("host", host)
            .send()
            .unwrap_or_else(|e| panic!("{host}: {e}\n{}", gw.proc_.log()))
    };
    wait_until("pin seen", Duration::from_secs(2), || {
        get("mclaren.myapp.localhost");
        big.proc_.log().contains("tenant=mclaren")
    })
    .unwrap();
    for _ in 0..20 {
        assert_eq!(get("mclaren.myapp.localhost").json()["tenant"], "mclaren");
        assert_eq!(get("ferrari.myapp.localhost").json()["tenant"], "ferrari");
    }
    assert!(
        !a.proc_.log().contains("tenant=mclaren") && !b.proc_.log().contains("tenant=mclaren"),
        "pinned tenant reached the default pool"
    );
    assert!(
        !big.proc_.log().contains("tenant=ferrari"),
        "default tenant reached the dedicated pool"
    );

    // Kill one default backend: every request still succeeds, and a post
    // retried on the other backend after a failed connect carries its
    // whole body (read by the gateway first, sent from Pingora's buffer, or
    // from the gateway's own copy when larger than that buffer's 64 KiB).
    b.proc_.kill();
    // A post is not retried after a failure on a reused connection (it may
    // have reached the backend); two gets (retried) use up any connection
    // to the killed backend still pooled, so each post there connects anew.
    for _ in 0..2 {
        assert_eq!(get("ferrari.myapp.localhost").status, 200);
    }
    for i in 0..40 {
        let r = get("ferrari.myapp.localhost");
        assert_eq!(r.status, 200, "request {i} failed with one backend down: {}", r.body);
        let name = format!("retried {i} {}", "x".repeat(150));
        // Every other body is larger than Pingora's buffer: JSON padded
        // with white space at its start, so a part lost or repeated fails
        // to parse.
        let pad = if i % 2 == 0 { 0 } else { 100_000 + i };
        let r = client
            .request(::reqwest::Method::POST, &gw.url("/projects"))
            .header("host", "ferrari.myapp.localhost")
            .header("content-type", "application/json")
            .body(format!("{{{}\"name\": {}}}", " ".repeat(pad), json!(name)))
            .send()
            .unwrap_or_else(|e| panic!("post {i}: {e}\n{}", gw.proc_.log()));
        assert_eq!(r.status, 201, "post {i} failed with one backend down: {}", r.body);
        assert_eq!(r.json()["name"], name.as_str());
    }
    gw.wait_backend("default", b.port, false, Duration::from_secs(10))
        .unwrap();
    // Bring it back on the same port: re-admitted, and it gets traffic again.
    let port = b.port;
    b = UpstreamApp::start_on(&pg.url(), "", port).unwrap();
    gw.wait_backend("default", b.port, true, Duration::from_secs(10))
        .unwrap();
    wait_until("revived backend gets traffic", Duration::from_secs(5), || {
        get("ferrari.myapp.localhost");
        b.proc_.log().contains("tenant=ferrari")
    })
    .unwrap();
    // A dedicated pool that is entirely down fails the pinned tenant only; it never spills over.
    drop(big);
    let r = get("mclaren.myapp.localhost");
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(!a.proc_.log().contains("tenant=mclaren") && !b.proc_.log().contains("tenant=mclaren"));
    assert_eq!(get("ferrari.myapp.localhost").status, 200);
}

#[test]
fn websocket_upgrades_pass_through_with_the_tenant() {
    let s = stack("");
    for (host, tenant) in [
        ("ferrari.myapp.localhost", "ferrari"),
        ("mclaren-racing.test", "mclaren"),
    ] {
        let reply = ws_echo_once(s.gw.port, host, "hello").unwrap();
        assert_eq!(reply, format!("{tenant}: hello"));
    }
}

fn ws_echo_once(port: u16, host: &str, msg: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    ws::upgrade(&mut s, host)?;
    ws::round_trip(&mut s, msg)
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let mut s = Stack::builder().grace(4).start();
    let port = s.gw.port;
    let inflight = std::thread::spawn(move || {
        http::client()
            .get(&format!("http://127.0.0.1:{port}/slow/1500"))
            .header("host", "ferrari.myapp.localhost")
            .send()
    });
    wait_until("slow request reached a backend", Duration::from_secs(10), || {
        slow_requests_started(&s.apps) >= 1
    })
    .unwrap();
    s.gw.proc_.signal("TERM");
    let r = inflight.join().unwrap().expect("in-flight request completes");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tenant"], "ferrari");
    // New connections are refused while draining.
    assert!(!port_open(port), "still accepting connections after SIGTERM");
    assert!(
        s.gw.proc_.terminate(Duration::from_secs(15)),
        "gateway did not exit after SIGTERM"
    );
    assert!(!port_open(port), "listener still open after shutdown");
}

#[test]
fn bad_config_names_the_key() {
    let pg = Postgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ok_pool = "[pools.default]\nbackends = [\"127.0.0.1:1\"]\n";
    let cases = [
        (format!("{ok_pool}\n[tenant]\nstrip_wwww = true\n"), "strip_wwww"),
        (
            "[pools.big]\nbackends = [\"127.0.0.1:1\"]\n".to_string(),
            "pools.default",
        ),
        (
            "[pools.default]\nbackends = [\"http://127.0.0.1:1/\"]\n".to_string(),
            "pools.default.backends[0]",
        ),
        (
            format!("[database]\nurl_env = \"TG_BAD_URL\"\n{ok_pool}"),
            "database.url_env",
        ),
        (
            format!("[database]\nurl_env = \"TG_UNSET_VAR\"\n{ok_pool}"),
            "database.url_env",
        ),
        (
            format!("[stamp]\nsigning_key = {{ id = \"k1\", secret_env = \"TG_UNSET_VAR\" }}\n{ok_pool}"),
            "stamp.signing_key",
        ),
        (
            format!("[tenant]\nlanding_pool = \"nope\"\n{ok_pool}"),
            "tenant.landing_pool",
        ),
        // The second of two values of the wrong form is named too.
        (
            format!("{ok_pool}[listen]\nthreads = \"x\"\n[database]\nconnect_timeout_ms = \"1s\"\n"),
            "database.connect_timeout_ms",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = write_file(dir.path(), &format!("bad{i}.toml"), text);
        for sub in [&["check-config"][..], &[][..]] {
            let mut c = std::process::Command::new(bin("gateway"));
            common_env(&mut c, &pg.url());
            c.env("TG_BAD_URL", "mysql://nope").env_remove("TG_UNSET_VAR");
            let out = c.arg("--config").arg(&path).args(sub).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "config {i} accepted:\n{text}");
            assert!(err.contains(key), "config {i}: error does not name `{key}`: {err}");
        }
    }
    // check-config prints the effective config, without secrets.
    let path = write_file(dir.path(), "good.toml", ok_pool);
    // The log's settings (the environment's) are refused by name too, every
    // one of them.
    for sub in [&["check-config"][..], &[][..]] {
        let mut c = std::process::Command::new(bin("gateway"));
        common_env(&mut c, &pg.url());
        c.env("LOG_BUFFER_LINES", "0")
            .env("LOG_FORMAT", "yaml")
            .env("RUST_LOG", "info,[{");
        let out = c.arg("--config").arg(&path).args(sub).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        for name in ["LOG_BUFFER_LINES", "LOG_FORMAT", "RUST_LOG"] {
            assert!(err.contains(&format!("error: {name}: ")), "{name}: {err}");
        }
    }
    let mut c = std::process::Command::new(bin("gateway"));
    common_env(&mut c, &pg.url());
    let out = c.arg("check-config").arg("--config").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("positive_ttl_secs = 60") && text.contains("secret_env = \"TG_STAMP_KEY_K1\""),
        "{text}"
    );
    assert!(!text.contains(STAMP_SECRET), "secret printed");
}

#[test]
fn django_tenants_preset_fronts_an_existing_database() {
    // An existing django-tenants schema (tables of its own names, domains as
    // typed), with NOTIFY triggers generated by `gateway triggers install`.
    let dj = Postgres::start().unwrap();
    dj.psql(
        "CREATE TABLE tenants_client (id serial PRIMARY KEY, schema_name varchar(63) UNIQUE NOT NULL, name varchar(100),
                                      is_active boolean NOT NULL DEFAULT true);
         CREATE TABLE tenants_domain (id serial PRIMARY KEY, domain varchar(253) UNIQUE NOT NULL,
                                      tenant_id integer NOT NULL REFERENCES tenants_client(id), is_primary boolean NOT NULL DEFAULT true);
         INSERT INTO tenants_client (schema_name, name) VALUES ('ferrari', 'F'), ('mclaren', 'M');
         INSERT INTO tenants_domain (domain, tenant_id) VALUES ('Ferrari.Shop.test', 1), ('mclaren.shop.test', 2);",
    )
    .unwrap();
    // The backends keep their own database (they verify the stamp against it).
    let s = stack("");
    let pools = pools_toml(&[("default", &[s.apps[0].port])]);
    let gw = Gateway::start(
        &dj.url(),
        &format!(
            "[tenant]\npreset = \"django-tenants\"\n[tenant.django]\ntenant_table = \"tenants_client\"\n\
             domain_table = \"tenants_domain\"\nactive_column = \"is_active\"\n{pools}"
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| gw.cli(&dj.url(), args);
    assert!(cli(&["triggers", "print"]).contains("ON \"tenants_domain\" (lower(domain))"));
    cli(&["triggers", "install"]);
    cli(&["triggers", "install"]); // idempotent
    let index = dj
        .psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'tenants_domain_tg_lower_domain_idx'")
        .unwrap();
    assert_eq!(index, "1");
    let tenant_of = |host: &str| {
        let r = s.client.get(&gw.url("/whoami")).header("host", host).send().unwrap();
        let tenant = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v.get("tenant").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_default();
        (r.status, tenant)
    };
    // Stored with capitals, found regardless of case; `www.` removed as django-tenants does.
    assert_eq!(tenant_of("ferrari.shop.test"), (200, "ferrari".into()));
    assert_eq!(tenant_of("FERRARI.shop.test"), (200, "ferrari".into()));
    assert_eq!(tenant_of("mclaren.shop.test"), (200, "mclaren".into()));
    assert_eq!(tenant_of("www.mclaren.shop.test"), (200, "mclaren".into()));
    assert_eq!(
        s.client
            .get(&gw.url("/"))
            .header("host", "other.shop.test")
            .send()
            .unwrap()
            .status,
        404
    );
    // A domain moved (its row keeps its capitals): the lower-cased name is evicted.
    dj.psql("UPDATE tenants_domain SET tenant_id = 2 WHERE domain = 'Ferrari.Shop.test'")
        .unwrap();
    wait_until("django domain moved", PROPAGATION, || {
        tenant_of("ferrari.shop.test").1 == "mclaren"
    })
    .unwrap();
    // The active column: an inactive tenant gets the suspended page, at once.
    dj.psql("UPDATE tenants_client SET is_active = false WHERE schema_name = 'mclaren'")
        .unwrap();
    wait_until("tenant deactivated", PROPAGATION, || {
        tenant_of("mclaren.shop.test").0 == 403
    })
    .unwrap();
    // Removed triggers: no more NOTIFY (a change is only seen after the TTL).
    cli(&["triggers", "remove"]);
    let left = dj
        .psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tenant_gateway_%'")
        .unwrap();
    assert_eq!(left, "0");
}

#[test]
fn optional_behaviours_www_landing_trusted_proxies_pages_timeouts() {
    let pg = Postgres::start().unwrap();
    two_tenants(&pg);
    let app = UpstreamApp::start(&pg.url(), "").unwrap();
    let landing = UpstreamApp::start(&pg.url(), "").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = write_file(dir.path(), "404.json", "{\"error\":\"custom_not_found\"}");
    let body = format!(
        "[tenant]\nlanding_pool = \"landing\"\nstrip_www = true\nbase_domains = [\"myapp.localhost\"]\n\
         [headers]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [pages]\ndeleted_status = 410\n[pages.custom.not_found]\njson_file = \"{}\"\n\
         {}[pools.default]\nbackends = [\"127.0.0.1:{}\"]\nread_timeout_ms = 400\nhealth_check_interval_ms = 200\n",
        page.display(),
        pools_toml(&[("landing", &[landing.port])]),
        app.port
    );
    let gw = Gateway::start(&pg.url(), &body).unwrap();
    let client = http::client();
    let get = |host: &str, path: &str, headers: &[(&str, &str)]| {
        let mut r = client.get(&gw.url(path)).header("host", host);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send().unwrap()
    };
    // www. is stripped before the lookup: www.mclaren-racing.test → mclaren-racing.test.
    assert_eq!(
        get("www.mclaren-racing.test", "/whoami", &[]).json()["tenant"],
        "mclaren"
    );
    // The bare base domain goes to the landing pool, unstamped, client stamps stripped.
    let r = get(
        "myapp.localhost",
        "/whoami",
        &[("x-tenant", "ferrari"), ("x-tenant-signature", "v1;kid=k1;ts=1;sig=00")],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "stamp_missing");
    assert!(
        landing.proc_.log().contains("path=/whoami"),
        "landing backend not reached"
    );
    // A trusted proxy's X-Forwarded-For is appended to, not replaced.
    let who = get(
        "ferrari.myapp.localhost",
        "/whoami",
        &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https")],
    )
    .json();
    assert_eq!(who["x_forwarded_for"], json!(["203.0.113.7, 127.0.0.1"]));
    assert_eq!(who["x_forwarded_proto"], json!(["https"]));
    assert_eq!(who["tenant"], "ferrari");
    // So are the headers only a proxy sets, which a client's are not.
    let who = get(
        "ferrari.myapp.localhost",
        "/whoami",
        &[("x-real-ip", "203.0.113.7"), ("x-forwarded-port", "8443")],
    )
    .json();
    let names = &who["header_names"];
    for name in ["x-real-ip", "x-forwarded-port"] {
        assert!(names.as_array().unwrap().contains(&json!(name)), "{name}: {who}");
    }
    // Custom page and configured status for deleted tenants.
    assert_eq!(
        get("nobody.test", "/", &[("accept", "application/json")]).json()["error"],
        "custom_not_found"
    );
    app_cli_ok(&pg.url(), &["tenant", "delete", "mclaren"]);
    wait_until("tombstone seen", PROPAGATION, || {
        get("mclaren.myapp.localhost", "/", &[]).status == 410
    })
    .unwrap();
    // A backend slower than read_timeout_ms: the gateway gives up with the
    // 504 page long before the backend would answer (10 s).
    let start = Instant::now();
    let r = get(
        "ferrari.myapp.localhost",
        "/slow/10000",
        &[("accept", "application/json")],
    );
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "read timeout not applied: {:?}",
        start.elapsed()
    );
}

/// `headers.forward` leaves some forwarding headers out: the gateway does
/// not set them, and what a client sent under those names never reaches a
/// backend either (for either tenant).
#[test]
fn forwarding_headers_left_out_are_stripped_not_passed_on() {
    let s = stack("[headers]\nforward = [\"x-forwarded-proto\"]\n");
    let gw = &s.gw;
    let client = http::client();
    for tenant in ["ferrari", "mclaren"] {
        let who = client
            .get(&gw.url("/whoami"))
            .header("host", &format!("{tenant}.myapp.localhost"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6;host=evil.test")
            .header("x-forwarded-host", "evil.test")
            .header("x-forwarded-proto", "https")
            .send()
            .unwrap()
            .json();
        assert_eq!(who["tenant"], tenant);
        assert_eq!(who["x_forwarded_for"], json!([]), "{who}");
        assert_eq!(who["forwarded"], json!([]), "{who}");
        assert_eq!(who["x_forwarded_host"], json!([]), "{who}");
        assert_eq!(who["x_forwarded_proto"], json!(["http"]), "{who}");
    }
}

/// One kept-alive connection asks for two tenants' hosts in turn (one also
/// spelled differently), each request with spoofed forwarding headers: the
/// host and forwarding values a connection keeps from its first request
/// serve only requests that send those bytes, and every request carries
/// its own tenant and host.
#[test]
fn forwarding_values_follow_each_requests_host_on_one_connection() {
    let s = stack("");
    let mut conn = KeepAlive::connect(s.gw.port).unwrap();
    for (tenant, sent) in [
        ("ferrari", "ferrari.myapp.localhost"),
        ("mclaren", "mclaren.myapp.localhost"),
        ("ferrari", "FERRARI.MyApp.localhost."),
        ("ferrari", "ferrari.myapp.localhost"),
        ("mclaren", "mclaren.myapp.localhost"),
    ] {
        let host = format!("{tenant}.myapp.localhost");
        // Each request also claims the other tenant in the stamp's own
        // headers, which the stamp replaces rather than removes.
        let other = if tenant == "ferrari" { "mclaren" } else { "ferrari" };
        let (status, body) = conn
            .send(&format!(
                "GET /whoami HTTP/1.1\r\nHost: {sent}\r\nX-Forwarded-Host: evil.test\r\n\
                 Forwarded: for=6.6.6.6;host=evil.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
                 X-Tenant: {other}\r\nX-Tenant-Signature: v1;kid=k1;ts=1;sig=00\r\n\r\n"
            ))
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let who: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(who["tenant"], tenant, "{who}");
        let stamped = tenant_headers(&who);
        assert_eq!(stamped.len(), 2, "client tenant headers survived: {stamped:?}");
        assert!(stamped.contains(&format!("x-tenant: {tenant}").as_str()), "{stamped:?}");
        assert!(
            !stamped.iter().any(|h| h.contains(other) || h.ends_with("sig=00")),
            "{stamped:?}"
        );
        assert_eq!(who["host"], json!([host]), "{who}");
        assert_eq!(who["x_forwarded_host"], json!([host]), "{who}");
        assert_eq!(who["x_forwarded_for"], json!(["127.0.0.1"]), "{who}");
        assert_eq!(who["x_forwarded_proto"], json!(["http"]), "{who}");
        assert_eq!(
            who["forwarded"],
            json!([format!("for=127.0.0.1;host={host};proto=http")]),
            "{who}"
        );
    }
}

/// `limits.max_request_body_bytes`: a body declared larger is refused with
/// 413 before any of it is read (no backend is tried), one within it
/// passes, and a chunked body is refused once more than that came (the
/// backend, waiting for the rest, has not answered); the other tenant is
/// served throughout.
#[test]
fn request_bodies_over_the_bound_get_413() {
    use std::io::{Read, Write};
    let s = stack("[limits]\nmax_request_body_bytes = 1000\n");
    let gw = &s.gw;
    let client = http::client();
    // A project named `name`, its JSON padded with `pad` spaces in front.
    let post = |tenant: &str, name: &str, pad: usize| {
        client
            .request(::reqwest::Method::POST, &gw.url("/projects"))
            .header("host", &format!("{tenant}.myapp.localhost"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(format!("{}{}", " ".repeat(pad), json!({ "name": name })))
            .send()
            .unwrap()
    };
    let r = post("ferrari", "too large", 2000);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"], "payload_too_large");
    let r = post("mclaren", "just within", 1000 - 25);
    assert_eq!(r.status, 201, "{}", r.body);
    // The length declared twice (which Pingora frames the body by) is
    // refused by it all the same, before a backend is tried.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(
        format!(
            "POST /projects HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Type: application/json\r\n\
             Content-Length: 2000\r\nContent-Length: 2000\r\n\r\n{}",
            " ".repeat(2000)
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    drop(tcp);

    // Chunked: three chunks of 1,000 bytes of one JSON document.
    let doc = format!("{{\"name\": \"{}\"}}", "z".repeat(3000 - 12));
    assert_eq!(doc.len(), 3000);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(
        b"POST /projects HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Type: application/json\r\n\
          Accept: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    for part in doc.as_bytes().chunks(1000) {
        // The gateway may have answered and closed by the last chunks.
        let _ = tcp.write_all(format!("{:x}\r\n", part.len()).as_bytes());
        let _ = tcp.write_all(part);
        let _ = tcp.write_all(b"\r\n");
    }
    let _ = tcp.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}\n{}", gw.proc_.log());
    bodies_refused(&s, 3.0);
    // The declared ones tried no backend; none is an error line of Pingora's.
    let refused = |log: &str| {
        log.lines()
            .filter(|l| l.contains("page=payload_too_large") && l.contains("attempts=0"))
            .count()
    };
    let log = gw
        .proc_
        .log_when("two refused bodies", Duration::from_secs(10), |log| refused(log) >= 2);
    assert_eq!(refused(&log), 2, "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("Fail to proxy") && l.contains("request body over")),
        "{log}"
    );
    let r = post("mclaren", "after", 0);
    assert_eq!(r.status, 201, "{}", r.body);
}

/// A client refused by its `Content-Length`, or mid-body without one, that
/// sends its whole body anyway and reads only then (as many HTTP libraries
/// do) gets the 413 page: the gateway drains the upload before it closes.
/// Without that, its close with unread data resets the connection and the
/// client's write fails. The drain ends when the client closes, or at
/// `limits.lingering_close_ms` when it does not; the other tenant is
/// served meanwhile.
#[test]
fn a_refused_upload_is_drained_so_its_client_reads_the_page() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    const LINGER: Duration = Duration::from_secs(12);
    let s = stack(&format!(
        "[limits]\nmax_request_body_bytes = 1000\nlingering_close_ms = {}\n",
        LINGER.as_millis()
    ));
    let gw = &s.gw;
    let open = || s.metric("tenant_gateway_connections_open", &[("listener", "http")]);
    wait_until("no client connection open", Duration::from_secs(20), || open() == 0.0).unwrap();
    let connect = || {
        let tcp = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp
    };
    let post_head = |len: usize| {
        format!(
            "POST /projects HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // 32 MiB: far more than the sockets' buffers hold, so without the
    // drain the gateway's close meets unread data.
    let mut tcp = connect();
    tcp.write_all(post_head(32 << 20).as_bytes()).unwrap();
    let mib = vec![b' '; 1 << 20];
    for i in 0..32 {
        if let Err(e) = tcp.write_all(&mib) {
            panic!("the upload was cut after {i} MiB: {e}\n{}", gw.proc_.log());
        }
    }
    let read_page = |mut tcp: TcpStream, status: &str, error: &str| {
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
        assert!(answer.contains(error), "{answer}");
        // Its client closes: the drain ends then, long before its bound.
        drop(tcp);
        wait_until("the drained connection closed", LINGER / 2, || open() == 0.0).unwrap();
    };
    read_page(tcp, "413", "payload_too_large");

    // The same in chunks: refused once more than the bound has come (the
    // request went to a backend by then, and fails), drained all the same.
    let mut tcp = connect();
    tcp.write_all(
        b"POST /projects HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Type: application/json\r\n\
          Accept: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    for i in 0..32 {
        let sent = tcp
            .write_all(b"100000\r\n")
            .and_then(|()| tcp.write_all(&mib))
            .and_then(|()| tcp.write_all(b"\r\n"));
        if let Err(e) = sent {
            panic!("the chunked upload was cut after {i} MiB: {e}\n{}", gw.proc_.log());
        }
    }
    tcp.write_all(b"0\r\n\r\n").unwrap();
    read_page(tcp, "413", "payload_too_large");

    // A page that keeps its connection (404, no such site) for a client
    // that asked to close it: the body is drained all the same (kept
    // alive, Pingora would read it).
    let mut tcp = connect();
    tcp.write_all(
        format!(
            "POST /projects HTTP/1.1\r\nHost: nobody.myapp.localhost\r\nConnection: close\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n\r\n",
            32 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    for i in 0..32 {
        if let Err(e) = tcp.write_all(&mib) {
            panic!("the upload to no site was cut after {i} MiB: {e}\n{}", gw.proc_.log());
        }
    }
    read_page(tcp, "404", "not_found");
    let lingered = |end: &str| s.metric("tenant_gateway_lingering_closes_total", &[("end", end)]);
    assert_eq!((lingered("client_closed"), lingered("bound")), (3.0, 0.0));

    // A client that sends part of its body and then neither sends nor
    // closes: answered at once, and closed at the bound.
    let mut tcp = connect();
    tcp.write_all(post_head(1 << 20).as_bytes()).unwrap();
    tcp.write_all(&mib[..100]).unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).unwrap();
    let answered = Instant::now();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413 "));
    // The other tenant meanwhile, on a connection of its own.
    let mut other = connect();
    other
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: mclaren.myapp.localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    other.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 "), "{page}");
    assert!(page.contains("\"tenant\":\"mclaren\""), "{page}");
    // (`other` ends just after its response.)
    wait_until("only the lingering connection open", LINGER / 2, || open() == 1.0).unwrap();
    wait_until("the lingering connection closed", LINGER * 4, || open() == 0.0).unwrap();
    // Measured from the client's side, after the gateway began to linger.
    assert!(
        answered.elapsed() >= LINGER / 2,
        "closed after {:?}, lingering bound {LINGER:?}",
        answered.elapsed()
    );
    assert_eq!((lingered("client_closed"), lingered("bound")), (3.0, 1.0));
    bodies_refused(&s, 3.0);
}

/// Waits until `n` requests were refused for their body's size (counted
/// when a request ends, just after its page went out).
fn bodies_refused(s: &Stack, n: f64) {
    wait_until("the refusals counted", Duration::from_secs(10), || {
        s.metric(
            "tenant_gateway_tenant_rejected_total",
            &[("reason", "payload_too_large")],
        ) == n
    })
    .unwrap();
}
