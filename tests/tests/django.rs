//! A real django-tenants app (Django, django-tenants and gunicorn from
//! PyPI; the project in tests/django/) behind the real gateway, set up the
//! way the README's "Fronting a django-tenants app" tells a Django
//! developer: the `tenant-gateway-django` middleware instead of
//! TenantMainMiddleware, triggers from its management command, the
//! gateway's django-tenants preset and a health check the app answers.
//! Tenants and domains are made through the ORM (`Client(...).save()`,
//! `Domain.objects.create(...)`).

use std::time::{Duration, Instant};

use e2e::django::{manage, Django};
use e2e::http;
use e2e::*;
use serde_json::Value;

/// The usual stack fronting the Django test project (gunicorn) instead of
/// upstream-apps.
struct DjangoStack {
    s: Stack,
    app: Django,
}

impl std::ops::Deref for DjangoStack {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.s
    }
}

fn fixture(pg: &Postgres, args: &[&str]) -> String {
    let mut all = vec!["tg_fixture"];
    all.extend_from_slice(args);
    manage(&pg.url(), &all)
}

/// The public tenant, ferrari (a custom domain stored with capitals) and
/// acme-eu (a hyphenated schema), a note in each tenant's own schema.
fn stack() -> DjangoStack {
    stack_on(|db| Django::start(db, 2))
}

/// [`stack`] with the app served by `serve` (gunicorn or uvicorn).
fn stack_on(serve: impl FnOnce(&str) -> anyhow::Result<Django>) -> DjangoStack {
    let pg = Postgres::start().unwrap();
    let app = serve(&pg.url()).unwrap();
    fixture(&pg, &["create-public", "--domain", "public.test"]);
    // The bare base domain is the public tenant's too (django-tenants' usual setup).
    fixture(
        &pg,
        &["add-domain", "--schema", "public", "--domain", "myapp.localhost"],
    );
    fixture(
        &pg,
        &[
            "create-tenant",
            "--schema",
            "ferrari",
            "--name",
            "Ferrari",
            "--domain",
            "ferrari.myapp.localhost",
            "--domain",
            "Ferrari-Cars.test",
        ],
    );
    fixture(
        &pg,
        &[
            "create-tenant",
            "--schema",
            "acme-eu",
            "--name",
            "Acme EU",
            "--domain",
            "acme-eu.myapp.localhost",
        ],
    );
    fixture(&pg, &["add-note", "--schema", "ferrari", "--text", "ferrari's note"]);
    fixture(&pg, &["add-note", "--schema", "acme-eu", "--text", "acme's note"]);
    manage(&pg.url(), &["tenant_gateway_triggers", "install"]);
    manage(&pg.url(), &["tenant_gateway_triggers", "install"]); // idempotent
    let s = Stack::builder()
        .database(pg)
        .apps(0)
        .config("preset = \"django-tenants\"\n[tenant.django]\nactive_column = \"is_active\"")
        .pools(format!(
            "[pools.default]\nbackends = [\"127.0.0.1:{}\"]\nhealth_check_path = \"/healthz\"\n\
             health_check_host = \"localhost\"\nhealth_check_interval_ms = 200\nhealth_check_threshold = 2\n",
            app.port
        ))
        .start();
    s.gw.wait_backend("default", app.port, true, Duration::from_secs(10))
        .unwrap();
    DjangoStack { s, app }
}

impl DjangoStack {
    fn get(&self, host: &str, headers: &[(&str, &str)]) -> http::Resp {
        let mut r = self
            .client
            .get(&self.gw.url("/whoami"))
            .header("host", host)
            .header("accept", "application/json");
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send().expect("request through the gateway")
    }

    /// (status, schema the app ran the request in).
    fn schema_of(&self, host: &str) -> (u16, String) {
        let r = self.get(host, &[]);
        let schema = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v["schema"].as_str().map(str::to_owned))
            .unwrap_or_default();
        (r.status, schema)
    }
}

#[test]
fn tenants_public_tenant_and_orm_changes_through_the_gateway() {
    let s = stack();
    // /readyz: the pool's health check reaches the app's health path.
    let ready = http::client()
        .get(&format!("http://127.0.0.1:{}/readyz", s.gw.admin_port))
        .send()
        .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    // Subdomain, custom domain (stored with capitals), www., per tenant schema.
    for (host, schema) in [
        ("ferrari.myapp.localhost", "ferrari"),
        ("ferrari-cars.test", "ferrari"),
        ("www.ferrari-cars.test", "ferrari"),
        ("Ferrari-Cars.TEST", "ferrari"),
        ("acme-eu.myapp.localhost", "acme-eu"),
        ("www.acme-eu.myapp.localhost", "acme-eu"),
        ("public.test", "public"),
        ("www.public.test", "public"),
        ("myapp.localhost", "public"),
        ("www.myapp.localhost", "public"),
    ] {
        let r = s.get(host, &[]);
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        let v = r.json();
        assert_eq!(v["schema"], schema, "{host}: {v}");
        assert_eq!(v["tenant"], schema, "{host}: {v}");
        let urlconf = if schema == "public" { "public" } else { "tenant" };
        assert_eq!(v["urlconf"], urlconf, "{host}: {v}");
    }
    // Each tenant sees only its own rows (the query ran in its schema).
    assert_eq!(
        s.get("ferrari.myapp.localhost", &[]).json()["notes"],
        serde_json::json!(["ferrari's note"])
    );
    assert_eq!(
        s.get("acme-eu.myapp.localhost", &[]).json()["notes"],
        serde_json::json!(["acme's note"])
    );
    assert_eq!(s.get("nobody.myapp.localhost", &[]).status, 404);
    // The ACME domains query follows the preset: custom domains, lower-cased,
    // not those under a base domain (the wildcard covers them).
    let status = s.gw.cli(&s.pg.url(), &["acme", "status"]);
    assert!(
        status.contains("ferrari-cars.test") && status.contains("public.test"),
        "{status}"
    );
    assert!(
        !status.contains("myapp.localhost") && !status.contains("Ferrari"),
        "{status}"
    );

    // A domain added through the ORM is served without restarting anything
    // (asked for first, so its absence was cached: NOTIFY evicts it).
    assert_eq!(s.schema_of("acme.example").0, 404);
    fixture(
        &s.pg,
        &["add-domain", "--schema", "acme-eu", "--domain", "acme.example"],
    );
    wait_until("ORM-added domain served", PROPAGATION, || {
        s.schema_of("acme.example") == (200, "acme-eu".into())
    })
    .unwrap();
    // A tenant created with Client(...).save() (its schema migrated by django-tenants).
    fixture(
        &s.pg,
        &[
            "create-tenant",
            "--schema",
            "mclaren",
            "--name",
            "McLaren",
            "--domain",
            "mclaren.myapp.localhost",
        ],
    );
    wait_until("ORM-created tenant served", PROPAGATION, || {
        s.schema_of("mclaren.myapp.localhost") == (200, "mclaren".into())
    })
    .unwrap();
    // A deleted domain stops being served.
    fixture(&s.pg, &["delete-domain", "--domain", "acme.example"]);
    wait_until("deleted domain gone", PROPAGATION, || {
        s.schema_of("acme.example").0 == 404
    })
    .unwrap();
    // The active column: an inactive tenant gets the suspended page; the others don't notice.
    fixture(&s.pg, &["set-active", "--schema", "acme-eu", "--active", "false"]);
    wait_until("tenant deactivated", PROPAGATION, || {
        s.schema_of("acme-eu.myapp.localhost").0 == 403
    })
    .unwrap();
    assert_eq!(s.schema_of("ferrari.myapp.localhost"), (200, "ferrari".into()));
    drop(s.app);
}

#[test]
fn spoofed_or_replayed_stamps_never_switch_tenant_and_the_app_refuses_unstamped_requests() {
    let s = stack();
    let now = unix_now();
    // A real stamp for acme-eu, as captured from a request to acme-eu.
    let captured = sign("acme-eu", "GET", "acme-eu.myapp.localhost", "/whoami", now, false);
    for headers in [
        vec![("x-tenant", "acme-eu")],
        vec![("x-tenant", "acme-eu"), ("x-tenant-signature", captured.as_str())],
        vec![("X_Tenant", "acme-eu"), ("x-tenant-signature", captured.as_str())],
        vec![("x-tenant", "public")],
    ] {
        let r = s.get("ferrari.myapp.localhost", &headers);
        assert_eq!(r.status, 200, "{headers:?}: {}", r.body);
        assert_eq!(r.json()["schema"], "ferrari", "{headers:?}");
    }
    // Straight to gunicorn: refused without a valid stamp for exactly this request.
    let plain = http::client();
    let direct = |headers: &[(&str, &str)], host: &str| {
        let mut r = plain
            .get(&s.app.url("/whoami"))
            .header("host", host)
            .header("accept", "application/json");
        for (k, v) in headers {
            r = r.header(k, v);
        }
        let r = r.send().unwrap();
        let code = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        (r.status, code)
    };
    assert_eq!(direct(&[], "ferrari.myapp.localhost"), (401, "stamp_missing".into()));
    assert_eq!(
        direct(&[("x-tenant", "acme-eu")], "ferrari.myapp.localhost"),
        (401, "stamp_malformed".into())
    );
    // The captured acme-eu stamp, presented for ferrari's host: bad signature.
    assert_eq!(
        direct(
            &[("x-tenant", "acme-eu"), ("x-tenant-signature", captured.as_str())],
            "ferrari.myapp.localhost"
        ),
        (401, "stamp_bad_signature".into())
    );
    // ...and relabelled as ferrari on acme's host: bad signature too.
    assert_eq!(
        direct(
            &[("x-tenant", "ferrari"), ("x-tenant-signature", captured.as_str())],
            "acme-eu.myapp.localhost"
        ),
        (401, "stamp_bad_signature".into())
    );
    let old = sign(
        "ferrari",
        "GET",
        "ferrari.myapp.localhost",
        "/whoami",
        now - 3600,
        false,
    );
    assert_eq!(
        direct(
            &[("x-tenant", "ferrari"), ("x-tenant-signature", old.as_str())],
            "ferrari.myapp.localhost"
        ),
        (401, "stamp_expired".into())
    );
    // A valid stamp (what the gateway sends) is accepted: the refusals above are the stamp's.
    let good = sign("ferrari", "GET", "ferrari.myapp.localhost", "/whoami", now, false);
    assert_eq!(
        direct(
            &[("x-tenant", "ferrari"), ("x-tenant-signature", good.as_str())],
            "ferrari.myapp.localhost"
        )
        .0,
        200
    );
    // The health path needs no stamp and serves no tenant data.
    let health = http::client().get(&s.app.url("/healthz")).send().unwrap();
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
}

#[test]
fn four_hundred_interleaved_requests_to_two_tenants_never_cross() {
    let s = stack();
    let port = s.gw.port;
    let start = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let client = http::client();
                let mut wrong = Vec::new();
                for i in 0..50 {
                    let (host, schema) = if (t + i) % 2 == 0 {
                        ("ferrari.myapp.localhost", "ferrari")
                    } else {
                        ("acme-eu.myapp.localhost", "acme-eu")
                    };
                    let r = client
                        .get(&format!("http://127.0.0.1:{port}/whoami"))
                        .header("host", host)
                        .send()
                        .expect("request");
                    let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
                    if r.status != 200 || v["schema"] != schema || v["tenant"] != schema {
                        wrong.push(format!("{host}: {} {}", r.status, r.body));
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        wrong.is_empty(),
        "{} of 400 answered wrongly: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(start.elapsed() < Duration::from_secs(120));
}

/// The same app under uvicorn (ASGI), where the middleware reads the
/// method and the raw path from the scope, not from WSGI's `RAW_URI`:
/// requests to two tenants through the gateway each run in their own
/// schema, a path whose percent-encoding matters is verified over the path
/// as sent (the gateway signs it so), and straight to uvicorn a stamp binds
/// exactly its request.
#[test]
fn under_asgi_the_stamp_binds_the_raw_path_and_tenants_never_cross() {
    let s = stack_on(Django::start_asgi);
    for i in 0..40 {
        let (host, schema) = if i % 2 == 0 {
            ("ferrari.myapp.localhost", "ferrari")
        } else {
            ("acme-eu.myapp.localhost", "acme-eu")
        };
        assert_eq!(s.schema_of(host), (200, schema.to_owned()), "request {i}");
    }
    // `/whoami%2F` decodes to `/whoami/`, which no URL matches: a 404 from
    // Django means the stamp over the raw path was accepted (a 401 would
    // mean the middleware checked the decoded one).
    let r = s
        .client
        .get(&s.gw.url("/whoami%2F"))
        .header("host", "ferrari.myapp.localhost")
        .header("accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);

    let now = unix_now();
    let direct = |path: &str, signed_path: &str, method: &str| {
        let stamp = sign("ferrari", method, "ferrari.myapp.localhost", signed_path, now, false);
        let r = http::client()
            .get(&s.app.url(path))
            .header("host", "ferrari.myapp.localhost")
            .header("x-tenant", "ferrari")
            .header("x-tenant-signature", stamp.as_str())
            .send()
            .unwrap();
        let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
        (
            r.status,
            v["schema"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or_default()
                .to_owned(),
        )
    };
    assert_eq!(direct("/whoami", "/whoami", "GET"), (200, "ferrari".into()));
    // Signed for the decoded form of the path sent: refused.
    assert_eq!(
        direct("/who%61mi", "/whoami", "GET"),
        (401, "stamp_bad_signature".into())
    );
    // Signed for another method (the scope's method, as sent): refused.
    assert_eq!(direct("/whoami", "/whoami", "get"), (401, "stamp_bad_signature".into()));
}
