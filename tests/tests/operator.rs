//! The operator API on the admin listener: explain a host (tenant
//! subdomain, custom domain with its own certificate, unknown host,
//! suspended tenant), purge, reload, token authentication, and that none of
//! it is reachable on the public listeners. The CLI speaks to it too.

use std::time::Duration;

use e2e::http;
use e2e::http::Method;
use e2e::*;
use serde_json::Value;

/// ferrari (with a custom domain and its own certificate) and mclaren;
/// `admin` is appended to the `[tls]` section (and may open further
/// sections, e.g. `[admin]`).
fn stack(admin: &str) -> Stack {
    Stack::builder()
        .apps(1)
        .tls(admin)
        .custom_certificate()
        .wait_backends()
        .start()
}

const API_ON: &str = "[admin]\ntoken_env = \"TG_ADMIN_TOKEN\"\n";

fn explain(s: &Stack, host: &str) -> Value {
    let (status, v) =
        s.gw.api(Method::GET, &format!("explain?host={host}"), Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn explain_says_what_happens_to_a_host_and_why() {
    let s = stack(API_ON);
    // A tenant subdomain: not cached yet, then cached.
    let v = explain(&s, "Ferrari.MyApp.localhost:8443");
    assert_eq!(v["normalized"], "ferrari.myapp.localhost");
    assert_eq!(v["base_domain"], "myapp.localhost");
    assert_eq!(v["cache"]["state"], "absent", "{v}");
    assert_eq!(v["tenant"]["schema"], "ferrari");
    assert_eq!(v["tenant"]["status"], "active");
    assert_eq!(v["answer"], "proxied to pool default");
    assert_eq!(v["pool"]["name"], "default");
    assert!(
        v["pool"]["backends"].as_object().unwrap().values().all(|up| up == true),
        "{v}"
    );
    assert_eq!(
        v["certificate"]["names"],
        serde_json::json!(["*.myapp.localhost", "myapp.localhost"])
    );
    assert!(v["certificate"]["days_left"].as_i64().unwrap() > 300, "{v}");
    let v = explain(&s, "ferrari.myapp.localhost");
    assert_eq!(v["cache"]["state"], "fresh", "{v}");
    // A custom domain with its own certificate (www. is not stripped here).
    let v = explain(&s, "www.ferrari-cars.test");
    assert_eq!(v["tenant"]["schema"], "ferrari");
    assert_eq!(v["base_domain"], Value::Null);
    assert_eq!(v["certificate"]["names"], serde_json::json!(["www.ferrari-cars.test"]));
    // An unknown host: 404, then cached as unknown; no certificate (alert).
    let v = explain(&s, "nobody.example");
    assert_eq!(v["answer"], "not_found (404)");
    assert_eq!(v["certificate"], Value::Null);
    assert_eq!(explain(&s, "nobody.example")["cache"]["state"], "unknown");
    // A suspended tenant.
    app_cli_ok(&s.pg.url(), &["tenant", "suspend", "mclaren"]);
    wait_until("suspension seen", Duration::from_secs(2), || {
        explain(&s, "mclaren.myapp.localhost")["tenant"]["status"] == "suspended"
    })
    .unwrap();
    assert_eq!(explain(&s, "mclaren.myapp.localhost")["answer"], "suspended (403)");
    // A malformed host.
    let v = explain(&s, "a..b");
    assert_eq!(v["valid"], false, "{v}");
    // Purge one host, then everything.
    assert_eq!(explain(&s, "ferrari.myapp.localhost")["cache"]["state"], "fresh");
    let (st, v) =
        s.gw.api(Method::POST, "purge?host=Ferrari.MyApp.localhost", Some(ADMIN_TOKEN));
    assert_eq!((st, v["purged"].as_str()), (200, Some("ferrari.myapp.localhost")));
    assert_eq!(explain(&s, "ferrari.myapp.localhost")["cache"]["state"], "absent");
    let (st, _) = s.gw.api(Method::POST, "purge?all=1", Some(ADMIN_TOKEN));
    assert_eq!(st, 200);
    assert_eq!(explain(&s, "www.ferrari-cars.test")["cache"]["state"], "absent");
    // Certificates and reload.
    let (st, v) = s.gw.api(Method::GET, "certs", Some(ADMIN_TOKEN));
    assert_eq!(st, 200);
    assert_eq!(v["certificates"].as_array().unwrap().len(), 2, "{v}");
    let (st, v) = s.gw.api(Method::POST, "reload", Some(ADMIN_TOKEN));
    assert_eq!((st, v["reloaded"].as_str()), (200, Some("config")), "{v}");
    assert_eq!(
        (v["changed"].as_array().map(Vec::len), v["certificate_files"].as_u64()),
        (Some(0), Some(2)),
        "{v}"
    );
    // /readyz can include the database.
    let ready = http::client()
        .get(&format!("http://127.0.0.1:{}/readyz?database=1", s.gw.admin_port))
        .send()
        .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["database"], true);
    // The CLI speaks to the same API.
    let v: Value = serde_json::from_str(&s.gw.cli(&s.pg.url(), &["explain", "mclaren.myapp.localhost"])).unwrap();
    assert_eq!(v["tenant"]["schema"], "mclaren");
}

#[test]
fn the_api_needs_its_token_and_is_never_on_the_public_listeners() {
    let s = stack(API_ON);
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let (status, v) = s.gw.api(Method::GET, "explain?host=ferrari.myapp.localhost", token);
        assert_eq!((status, v["error"].as_str()), (401, Some("unauthorized")), "{token:?}");
    }
    let (status, _) = s.gw.api(Method::POST, "purge?all=1", None);
    assert_eq!(status, 401);
    // A parameter given twice, or one that does not decode, is named, not
    // read as absent; purging a host and everything at once is refused.
    for (method, call, code) in [
        (
            Method::GET,
            "explain?host=ferrari.myapp.localhost&host=x.example",
            "bad_parameter",
        ),
        (Method::GET, "certs/stored?limit=%G1", "bad_parameter"),
        (Method::POST, "purge?host=ferrari.myapp.localhost&all=1", "host_and_all"),
    ] {
        let (status, v) = s.gw.api(method, call, Some(ADMIN_TOKEN));
        assert_eq!((status, v["error"].as_str()), (400, Some(code)), "{call}: {v}");
    }
    // The public listeners know nothing of it: a request for the path is an
    // ordinary request (here: for an unknown host), never the API.
    for host in ["127.0.0.1", "ferrari.myapp.localhost"] {
        let (status, text) = raw_http(
            s.gw.port,
            format!(
                "GET /api/v1/explain?host=ferrari.myapp.localhost HTTP/1.1\r\nHost: {host}\r\n\
                 Authorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
            ),
        )
        .unwrap();
        assert!(!text.contains("lookup_name"), "{host}: {status} {text}");
        assert!(matches!(status, 308 | 404), "{host}: {status}");
    }
    // Without a token configured the API is off.
    let off = stack("");
    let (status, v) = off.gw.api(Method::GET, "explain?host=x.test", Some(ADMIN_TOKEN));
    assert_eq!((status, v["error"].as_str()), (404, Some("api_off")));
}

#[test]
fn config_reload_swaps_pools_and_limits_and_refuses_a_bad_file() {
    let s = stack(&format!("redirect_http = false\n{API_ON}"));
    let mut other = UpstreamApp::start(&s.pg.url(), "").unwrap();
    let path = s.gw.dir.path().join("gateway.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let first = s.apps[0].port.to_string();
    // The default pool moves to another backend; ferrari's plan gets a limit.
    let moved = original.replace(&format!("127.0.0.1:{first}"), &format!("127.0.0.1:{}", other.port))
        + "\n[limits.tenant]\nrps = 1\nburst = 1\n";
    std::fs::write(&path, &moved).unwrap();
    let (status, v) = s.gw.api(Method::POST, "reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed"], serde_json::json!(["pools", "limits"]), "{v}");
    s.gw.wait_backend("default", other.port, true, Duration::from_secs(10))
        .unwrap();
    let get = || {
        http::client()
            .get(&s.gw.url("/whoami"))
            .header("host", "mclaren.myapp.localhost")
            .send()
            .unwrap()
            .status
    };
    wait_until("limit and new pool in effect", Duration::from_secs(5), || {
        let (a, b) = (get(), get());
        a == 200 && b == 429
    })
    .unwrap();
    assert!(
        other.proc_.log().contains("path=/whoami"),
        "the new backend was not used"
    );
    // A file that fails validation is refused as a whole, naming the key.
    std::fs::write(&path, format!("{moved}\n[pools.broken]\nbackends = []\n")).unwrap();
    let (status, v) = s.gw.api(Method::POST, "reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("pools.broken.backends"), "{v}");
    // So is a change that needs a new process; the running config stays.
    std::fs::write(&path, moved.replace("threads = 2", "threads = 3")).unwrap();
    let (status, v) = s.gw.api(Method::POST, "reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("listen"), "{v}");
    let explained = explain(&s, "mclaren.myapp.localhost");
    assert_eq!(
        explained["pool"]["backends"][format!("127.0.0.1:{}", other.port)],
        true,
        "{explained}"
    );
    // SIGHUP reloads the config too: back to the original, unlimited.
    std::fs::write(&path, &original).unwrap();
    s.gw.proc_.signal("HUP");
    wait_until("SIGHUP reload in effect", Duration::from_secs(5), || {
        (0..3).all(|_| get() == 200)
    })
    .unwrap();
    // A reload that leaves the pools as they are keeps each backend's
    // health: an ejected backend stays out (rebuilt, it would take traffic
    // again until its checks failed anew).
    std::fs::write(&path, &moved).unwrap();
    let (status, v) = s.gw.api(Method::POST, "reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{v}");
    s.gw.wait_backend("default", other.port, true, Duration::from_secs(10))
        .unwrap();
    other.proc_.terminate(Duration::from_secs(15));
    s.gw.wait_backend("default", other.port, false, Duration::from_secs(30))
        .unwrap();
    std::fs::write(&path, format!("{moved}\n[pages]\ndeleted_status = 410\n")).unwrap();
    let (status, v) = s.gw.api(Method::POST, "reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed"], serde_json::json!(["pages"]), "{v}");
    let explained = explain(&s, "mclaren.myapp.localhost");
    assert_eq!(
        explained["pool"]["backends"][format!("127.0.0.1:{}", other.port)],
        false,
        "{explained}"
    );
}
