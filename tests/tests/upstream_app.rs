//! upstream-app end to end: real PostgreSQL, the real binary, stamped requests
//! made by hand. Covers tenant isolation, pooled-connection hygiene, every
//! stamp check, hostile schema names, migrations across many tenants,
//! tenant-scoped background jobs, and a purge that spares a tenant restored
//! while it runs.

use std::time::Duration;

use e2e::http::{self, Method, Resp};
use e2e::*;
use serde_json::{json, Value};

struct Env {
    pg: Postgres,
    app: UpstreamApp,
    client: http::Client,
}

fn setup(extra_cfg: &str, tenants: &[&str]) -> Env {
    let pg = Postgres::start().expect("postgres");
    app_cli_ok(&pg.url(), &["migrate"]);
    for t in tenants {
        create_tenant(&pg.url(), t, &[&format!("{t}.myapp.localhost")]);
    }
    let app = UpstreamApp::start(&pg.url(), extra_cfg).expect("upstream-app");
    Env {
        pg,
        app,
        client: http::client(),
    }
}

impl Env {
    /// A correctly stamped request for `tenant`.
    fn call(&self, tenant: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
        let host = format!("{tenant}.myapp.localhost");
        let sig = sign(
            tenant,
            method,
            &host,
            path.split('?').next().unwrap_or(path),
            unix_now(),
            false,
        );
        self.raw(
            method,
            path,
            &[("host", &host), ("x-tenant", tenant), ("x-tenant-signature", &sig)],
            body,
        )
    }

    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Resp {
        let mut req = self
            .client
            .request(Method::from_bytes(method.as_bytes()).unwrap(), &self.app.url(path));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().expect("request")
    }
}

#[test]
fn tenants_never_see_each_others_rows() {
    let env = setup("", &["ferrari", "mclaren"]);
    for name in ["f-one", "f-two", "f-three"] {
        assert_eq!(
            env.call("ferrari", "POST", "/projects", Some(json!({ "name": name })))
                .status,
            201
        );
    }
    let m = env.call("mclaren", "POST", "/projects", Some(json!({ "name": "m-one" })));
    assert_eq!(m.status, 201);
    let m_id = m.json()["id"].as_i64().unwrap();
    assert_eq!(
        env.call(
            "mclaren",
            "POST",
            &format!("/projects/{m_id}/tasks"),
            Some(json!({ "title": "m-task" }))
        )
        .status,
        201
    );
    assert_eq!(
        env.call(
            "ferrari",
            "POST",
            "/projects/1/tasks",
            Some(json!({ "title": "f-task" }))
        )
        .status,
        201
    );

    assert_eq!(
        names(&env.call("ferrari", "GET", "/projects", None).json()),
        ["f-one", "f-two", "f-three"]
    );
    assert_eq!(names(&env.call("mclaren", "GET", "/projects", None).json()), ["m-one"]);
    // Ferrari's project 3 does not exist for McLaren, by id or through tasks.
    assert_eq!(env.call("mclaren", "GET", "/projects/3", None).status, 404);
    assert_eq!(env.call("mclaren", "GET", "/projects/3/tasks", None).status, 404);
    assert_eq!(
        env.call("mclaren", "PATCH", "/projects/3", Some(json!({ "name": "stolen" })))
            .status,
        404
    );
    assert_eq!(env.call("mclaren", "DELETE", "/projects/2", None).status, 404);
    // Same id 1 in both schemas: each sees its own row and its own task.
    assert_eq!(env.call("ferrari", "GET", "/projects/1", None).json()["name"], "f-one");
    assert_eq!(env.call("mclaren", "GET", "/projects/1", None).json()["name"], "m-one");
    let f_tasks = env.call("ferrari", "GET", "/projects/1/tasks", None).json();
    let m_tasks = env.call("mclaren", "GET", "/projects/1/tasks", None).json();
    assert_eq!(f_tasks.as_array().unwrap().len(), 1);
    assert_eq!(f_tasks[0]["title"], "f-task");
    assert_eq!(m_tasks[0]["title"], "m-task");
    // And the database agrees: rows landed in the right schemas.
    assert_eq!(env.pg.psql("SELECT count(*) FROM ferrari.projects").unwrap(), "3");
    assert_eq!(env.pg.psql("SELECT count(*) FROM mclaren.projects").unwrap(), "1");
}

#[test]
fn crud_validation_errors_are_4xx_json() {
    let env = setup("", &["ferrari"]);
    let cases: &[(&str, &str, Option<Value>, u16)] = &[
        ("POST", "/projects", Some(json!({ "name": "" })), 422),
        ("POST", "/projects", Some(json!({ "name": "x".repeat(201) })), 422),
        ("POST", "/projects", Some(json!({ "nom": "x" })), 422),
        ("POST", "/projects", Some(json!([1, 2])), 422),
        ("GET", "/projects/abc", None, 400),
        ("GET", "/projects/-1", None, 400),
        ("GET", "/projects/99", None, 404),
        ("POST", "/projects/99/tasks", Some(json!({ "title": "t" })), 404),
        ("GET", "/nope", None, 404),
    ];
    for (method, path, body, want) in cases {
        let r = env.call("ferrari", method, path, body.clone());
        assert_eq!(r.status, *want, "{method} {path}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    // Malformed JSON body.
    let path = "/projects";
    let sig = sign("ferrari", "POST", "ferrari.myapp.localhost", path, unix_now(), false);
    let r = env
        .client
        .request(Method::POST, &env.app.url(path))
        .header("host", "ferrari.myapp.localhost")
        .header("x-tenant", "ferrari")
        .header("x-tenant-signature", &sig)
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "bad_json");
    // Full lifecycle still works.
    let p = env
        .call("ferrari", "POST", "/projects", Some(json!({ "name": "p" })))
        .json();
    let t = env
        .call("ferrari", "POST", "/projects/1/tasks", Some(json!({ "title": "t" })))
        .json();
    assert_eq!(p["id"], 1);
    let done = env.call(
        "ferrari",
        "PATCH",
        &format!("/projects/1/tasks/{}", t["id"]),
        Some(json!({ "done": true })),
    );
    assert_eq!(done.json()["done"], true);
    // The failed insert above consumed a sequence value: use the id we got.
    assert_eq!(
        env.call("ferrari", "DELETE", &format!("/projects/1/tasks/{}", t["id"]), None)
            .status,
        204
    );
    assert_eq!(env.call("ferrari", "DELETE", "/projects/1", None).status, 204);
    assert_eq!(env.call("ferrari", "GET", "/projects/1", None).status, 404);
}

#[test]
fn pooled_connection_never_carries_a_tenant_over() {
    // One connection for everybody: every request reuses it.
    let env = setup("[database]\nmax_connections = 1\n", &["ferrari", "mclaren"]);
    for round in 0..15 {
        for tenant in ["ferrari", "mclaren"] {
            let who = env.call(tenant, "GET", "/whoami", None);
            assert_eq!(who.status, 200, "{}", who.body);
            let who = who.json();
            assert_eq!(who["tenant"], tenant);
            assert_eq!(who["schema"], tenant, "round {round}: {who}");
            // Fails mid-transaction (foreign-key violation after search_path was set).
            let bad = env.call(tenant, "POST", "/projects/424242/tasks", Some(json!({ "title": "x" })));
            assert_eq!(bad.status, 404, "{}", bad.body);
            // An unauthenticated request in between must not see any tenant.
            let anon = env.raw("GET", "/whoami", &[("host", "ferrari.myapp.localhost")], None);
            assert_eq!(anon.status, 401);
        }
    }
    // Rows written right after a failure land in the right schema.
    assert_eq!(
        env.call("mclaren", "POST", "/projects", Some(json!({ "name": "after-fail" })))
            .status,
        201
    );
    assert_eq!(env.pg.psql("SELECT count(*) FROM mclaren.projects").unwrap(), "1");
    assert_eq!(env.pg.psql("SELECT count(*) FROM ferrari.projects").unwrap(), "0");
}

#[test]
fn every_stamp_check_has_its_own_error() {
    let env = setup("", &["ferrari", "mclaren", "paused", "gone"]);
    app_cli_ok(&env.pg.url(), &["tenant", "suspend", "paused"]);
    app_cli_ok(&env.pg.url(), &["tenant", "delete", "gone"]);
    let host = "ferrari.myapp.localhost";
    let now = unix_now();
    let good = sign("ferrari", "GET", host, "/whoami", now, false);
    let check = |headers: &[(&str, &str)], path: &str, method: &str, want_status: u16, want_code: &str| {
        let r = env.raw(method, path, headers, None);
        assert_eq!(r.status, want_status, "{want_code}: {}", r.body);
        if !want_code.is_empty() {
            assert_eq!(r.json()["error"], want_code, "{}", r.body);
        }
    };
    check(&[("host", host)], "/whoami", "GET", 401, "stamp_missing");
    check(
        &[("host", host), ("x-tenant", "ferrari")],
        "/whoami",
        "GET",
        401,
        "stamp_malformed",
    );
    check(
        &[
            ("host", host),
            ("x-tenant", "ferrari"),
            ("x-tenant-signature", "garbage"),
        ],
        "/whoami",
        "GET",
        401,
        "stamp_malformed",
    );
    let wrong_sig = format!("{}0", &good[..good.len() - 1]);
    let wrong_sig = if wrong_sig == good {
        format!("{}1", &good[..good.len() - 1])
    } else {
        wrong_sig
    };
    check(
        &[
            ("host", host),
            ("x-tenant", "ferrari"),
            ("x-tenant-signature", &wrong_sig),
        ],
        "/whoami",
        "GET",
        401,
        "stamp_bad_signature",
    );
    // The stamp signed for ferrari cannot be moved to mclaren.
    check(
        &[("host", host), ("x-tenant", "mclaren"), ("x-tenant-signature", &good)],
        "/whoami",
        "GET",
        401,
        "stamp_bad_signature",
    );
    let unknown_kid = good.replacen("kid=k1", "kid=k9", 1);
    check(
        &[
            ("host", host),
            ("x-tenant", "ferrari"),
            ("x-tenant-signature", &unknown_kid),
        ],
        "/whoami",
        "GET",
        401,
        "stamp_unknown_key",
    );
    let old = sign("ferrari", "GET", host, "/whoami", now - 120, false);
    check(
        &[("host", host), ("x-tenant", "ferrari"), ("x-tenant-signature", &old)],
        "/whoami",
        "GET",
        401,
        "stamp_expired",
    );
    let future = sign("ferrari", "GET", host, "/whoami", now + 120, false);
    check(
        &[("host", host), ("x-tenant", "ferrari"), ("x-tenant-signature", &future)],
        "/whoami",
        "GET",
        401,
        "stamp_expired",
    );
    // Replay on another path, another method, another host.
    check(
        &[("host", host), ("x-tenant", "ferrari"), ("x-tenant-signature", &good)],
        "/projects",
        "GET",
        401,
        "stamp_bad_signature",
    );
    let list = sign("ferrari", "GET", host, "/projects", now, false);
    check(
        &[("host", host), ("x-tenant", "ferrari"), ("x-tenant-signature", &list)],
        "/projects",
        "GET",
        200,
        "",
    );
    check(
        &[("host", host), ("x-tenant", "ferrari"), ("x-tenant-signature", &list)],
        "/projects",
        "POST",
        401,
        "stamp_bad_signature",
    );
    check(
        &[
            ("host", "mclaren.myapp.localhost"),
            ("x-tenant", "ferrari"),
            ("x-tenant-signature", &good),
        ],
        "/whoami",
        "GET",
        401,
        "stamp_bad_signature",
    );
    // Duplicated tenant header.
    let r = env
        .client
        .get(&env.app.url("/whoami"))
        .header("host", host)
        .header("x-tenant", "ferrari")
        .header("x-tenant", "mclaren")
        .header("x-tenant-signature", &good)
        .send()
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str().unwrap()),
        (401, "stamp_malformed")
    );
    // Tenant status, with perfectly valid signatures.
    for (tenant, code) in [
        ("paused", "tenant_suspended"),
        ("gone", "tenant_deleted"),
        ("nobody", "tenant_unknown"),
    ] {
        let h = format!("{tenant}.myapp.localhost");
        let s = sign(tenant, "GET", &h, "/whoami", now, false);
        check(
            &[("host", &h), ("x-tenant", tenant), ("x-tenant-signature", &s)],
            "/whoami",
            "GET",
            403,
            code,
        );
    }
    // The rotated key is accepted; the Host header's case and port do not matter.
    let rotated = sign("ferrari", "GET", host, "/whoami", now, true);
    let r = env.raw(
        "GET",
        "/whoami",
        &[
            ("host", "Ferrari.MyApp.localhost:8080"),
            ("x-tenant", "ferrari"),
            ("x-tenant-signature", &rotated),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["schema"], "ferrari");
    // Health needs no stamp.
    assert_eq!(env.raw("GET", "/healthz", &[], None).status, 200);
    // Every log line about the verified request carries the tenant.
    let log = env.app.proc_.log();
    assert!(
        log.lines()
            .any(|l| l.contains("tenant=ferrari") && l.contains("status=200")),
        "{log}"
    );
}

#[test]
fn hostile_schema_names_are_refused_and_nothing_is_left() {
    let pg = Postgres::start().unwrap();
    app_cli_ok(&pg.url(), &["migrate"]);
    let long = "a".repeat(64);
    for bad in [
        "bad\"name",
        "x;drop schema public",
        "public",
        "pg_toast2",
        "information_schema",
        "Upper",
        "1abc",
        "a-b",
        "",
        long.as_str(),
    ] {
        let out = app_cli(&pg.url(), &["tenant", "create", bad, "--name", "x"]);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid schema name"), "{bad:?}: {err}");
    }
    assert_eq!(pg.psql("SELECT count(*) FROM public.tenants").unwrap(), "0");
    // A failure half-way (domain already taken) leaves no tenant row and no schema.
    create_tenant(&pg.url(), "ferrari", &["ferrari.myapp.localhost"]);
    let out = app_cli(
        &pg.url(),
        &[
            "tenant",
            "create",
            "thief",
            "--name",
            "T",
            "--domain",
            "FERRARI.myapp.localhost.",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already mapped"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM public.tenants WHERE schema_name = 'thief'")
            .unwrap(),
        "0"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'thief'")
            .unwrap(),
        "0"
    );
    // Domains are stored normalised; bad ones are refused.
    app_cli_ok(
        &pg.url(),
        &["domain", "add", "WWW.Ferrari-Cars.COM.", "--tenant", "ferrari"],
    );
    assert_eq!(
        pg.psql("SELECT domain FROM public.domains WHERE NOT is_primary")
            .unwrap(),
        "www.ferrari-cars.com"
    );
    for bad in ["a..b", "host:80", "sp ace.com"] {
        assert!(
            !app_cli(&pg.url(), &["domain", "add", bad, "--tenant", "ferrari"])
                .status
                .success(),
            "{bad}"
        );
    }
    // Lifecycle: delete tombstones, purge drops the schema.
    app_cli_ok(&pg.url(), &["tenant", "delete", "ferrari"]);
    assert!(!app_cli(&pg.url(), &["tenant", "resume", "ferrari"]).status.success());
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'ferrari'")
            .unwrap(),
        "1"
    );
    let out = app_cli_ok(&pg.url(), &["tenant", "purge", "--older-than", "0s"]);
    assert!(out.contains("purged ferrari"), "{out}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'ferrari'")
            .unwrap(),
        "0"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM public.domains").unwrap(), "0");
}

#[test]
fn migrate_reaches_every_tenant_once() {
    let pg = Postgres::start().unwrap();
    let first = app_cli_ok(&pg.url(), &["migrate"]);
    assert!(first.contains("public: applied"), "{first}");
    let tenants: Vec<String> = (0..50).map(|i| format!("t{i:02}")).collect();
    for t in &tenants {
        create_tenant(&pg.url(), t, &[]);
    }
    // A new tenant migration, alongside the shipped ones.
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../upstream-app/migrations/tenant");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    write_file(
        dir.path(),
        "9001_add_priority.sql",
        "ALTER TABLE tasks ADD COLUMN priority integer NOT NULL DEFAULT 0;\n",
    );
    let tdir = dir.path().to_str().unwrap();
    let out = app_cli_ok(&pg.url(), &["migrate", "--tenant-migrations", tdir]);
    assert!(out.contains("public: up to date"), "{out}");
    for t in &tenants {
        assert!(
            out.contains(&format!("{t}: applied 9001_add_priority.sql")),
            "{t} missing in:\n{out}"
        );
    }
    let with_column = pg
        .psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'tasks' AND column_name = 'priority'")
        .unwrap();
    assert_eq!(with_column, "50");
    let again = app_cli_ok(&pg.url(), &["migrate", "--tenant-migrations", tdir]);
    assert_eq!(
        again.lines().filter(|l| l.ends_with(": up to date")).count(),
        51,
        "{again}"
    );
    assert!(!again.contains("applied"), "{again}");
    // A broken migration names the schema that failed and exits non-zero.
    pg.psql("CREATE TABLE t07.boom (id int)").unwrap();
    write_file(dir.path(), "9002_boom.sql", "CREATE TABLE boom (id int);\n");
    let out = app_cli(&pg.url(), &["migrate", "--tenant-migrations", tdir]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("t07: FAILED"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("t07"));
    assert!(stdout.contains("t08: applied 9002_boom.sql"), "{stdout}");
}

#[test]
fn background_job_touches_only_its_tenant() {
    let env = setup("", &["ferrari", "mclaren"]);
    for t in ["ferrari", "mclaren"] {
        assert_eq!(
            env.call(t, "POST", "/projects", Some(json!({ "name": "p" }))).status,
            201
        );
        for i in 0..3 {
            let r = env.call(
                t,
                "POST",
                "/projects/1/tasks",
                Some(json!({ "title": format!("task {i}") })),
            );
            assert_eq!(r.status, 201);
        }
    }
    let job = env.call("ferrari", "POST", "/jobs", Some(json!({ "kind": "recount_tasks" })));
    assert_eq!(job.status, 202, "{}", job.body);
    let id = job.json()["id"].as_i64().unwrap();
    wait_until("job done", Duration::from_secs(20), || {
        env.call("ferrari", "GET", &format!("/jobs/{id}"), None).json()["status"] == "done"
    })
    .unwrap();
    assert_eq!(env.call("ferrari", "GET", "/projects/1", None).json()["task_count"], 3);
    assert_eq!(env.call("mclaren", "GET", "/projects/1", None).json()["task_count"], 0);
    // McLaren cannot even see Ferrari's job.
    assert_eq!(env.call("mclaren", "GET", &format!("/jobs/{id}"), None).status, 404);
    assert_eq!(
        env.call("ferrari", "POST", "/jobs", Some(json!({ "kind": "rm -rf" })))
            .status,
        422
    );
    let log = env.app.proc_.log();
    assert!(
        log.lines()
            .any(|l| l.contains("job done") && l.contains("tenant=ferrari")),
        "{log}"
    );
}

#[test]
fn purge_spares_a_tenant_restored_while_it_runs() {
    let pg = Postgres::start().unwrap();
    app_cli_ok(&pg.url(), &["migrate"]);
    for t in ["ferrari", "mclaren"] {
        create_tenant(&pg.url(), t, &[&format!("{t}.myapp.localhost")]);
        app_cli_ok(&pg.url(), &["tenant", "delete", t]);
    }
    // An operator restores ferrari by hand; the transaction is still open
    // when the purge lists its victims (both tombstones, as committed).
    let mut restore = OpenTransaction::begin(
        &pg.url(),
        "UPDATE public.tenants SET status = 'active', deleted_at = NULL WHERE schema_name = 'ferrari'",
    );
    let url = pg.url();
    let purge = std::thread::spawn(move || app_cli(&url, &["tenant", "purge", "--older-than", "0s"]));
    pg.wait_until_blocked_by(&restore, "the purge waits for the restore");
    restore.execute("COMMIT");
    let out = purge.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("purged mclaren") && !stdout.contains("purged ferrari"),
        "{stdout}"
    );
    // The restored tenant keeps its schema; the other is gone.
    assert_eq!(
        pg.psql("SELECT string_agg(nspname, ',') FROM pg_namespace WHERE nspname IN ('ferrari', 'mclaren')")
            .unwrap(),
        "ferrari"
    );
}
