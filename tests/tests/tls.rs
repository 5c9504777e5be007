//! TLS at the edge, end to end with real TLS clients: certificates chosen by
//! SNI (wildcard, custom domain, added at runtime), HTTP/2 and HTTP/1.1,
//! Host/SNI agreement (421), unknown SNI, HTTP→HTTPS redirects, the client
//! address over TLS, and draining open TLS connections on SIGTERM.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::http::Method;
use e2e::tls::{https_client, issue, probe};
use e2e::*;
use serde_json::json;

/// ferrari and mclaren, two upstream-apps, the wildcard certificate and a
/// `cert_dir` with one for `www.ferrari-cars.test`; `extra_tls` is appended
/// to the `[tls]` section.
fn tls_stack(extra_tls: &str, grace: u64) -> Stack {
    Stack::builder()
        .tls(&format!("redirect_exempt = [\"/public/\"]\n{extra_tls}"))
        .custom_certificate()
        .grace(grace)
        .start()
}

#[test]
fn sni_picks_wildcard_custom_and_runtime_added_certificates() {
    let s = tls_stack("", 1);
    let port = s.gw.tls_port;
    let wildcard = probe(port, Some("ferrari.myapp.localhost"), &["http/1.1"]).unwrap();
    assert!(
        wildcard.names.contains(&"*.myapp.localhost".to_string()),
        "{wildcard:?}"
    );
    let custom = probe(port, Some("www.ferrari-cars.test"), &["http/1.1"]).unwrap();
    assert_eq!(custom.names, ["www.ferrari-cars.test"]);
    // Wildcards cover one label; names without a certificate get an alert.
    assert!(probe(port, Some("a.b.myapp.localhost"), &[]).is_err());
    assert!(probe(port, Some("mclaren-racing.test"), &[]).is_err());
    assert!(
        probe(port, None, &[]).is_err(),
        "no SNI and no default certificate: alert"
    );
    // TLS 1.3 by default; 1.2 is accepted too.
    assert!(wildcard.version.contains("TLSv1_3"), "{}", wildcard.version);

    // A certificate added while running is served on the next handshake.
    issue(
        s.certs.path(),
        &["mclaren-racing.test"],
        &s.custom_dir().join("mclaren-racing"),
    );
    s.gw.proc_.signal("HUP");
    wait_until("new certificate served", Duration::from_secs(10), || {
        probe(port, Some("mclaren-racing.test"), &[]).is_ok_and(|p| p.names == ["mclaren-racing.test"])
    })
    .unwrap();
    // And a real client verifying against the dev CA is happy with it.
    let client = https_client(s.ca(), port, &["mclaren-racing.test"], &["http/1.1"]);
    let who = client
        .get(&format!("https://mclaren-racing.test:{port}/whoami"))
        .send()
        .unwrap();
    assert_eq!(who.json()["tenant"], "mclaren");
    // Expiry and handshake failures are counted.
    let metrics = s.gw.scrape().unwrap();
    assert!(
        metric_sum(
            &metrics,
            "tenant_gateway_certificate_expiry_timestamp_seconds",
            &[("name", "mclaren-racing.test")]
        ) > 1.7e9
    );
    assert!(metric_sum(&metrics, "tenant_gateway_tls_handshakes_total", &[("result", "failed")]) >= 3.0);
    assert!(metric_sum(&metrics, "tenant_gateway_tls_handshakes_total", &[("result", "ok")]) >= 3.0);
}

#[test]
fn tls_12_is_accepted_and_the_connection_resumes() {
    let s = tls_stack("", 1);
    let port = s.gw.tls_port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Bounded: a gateway that stops answering fails the test, not hangs it.
    rt.block_on(async {
        tokio::time::timeout(BOUND, async {
            for versions in [&[&rustls::version::TLS12][..], &[&rustls::version::TLS13][..]] {
                let mut cfg = rustls::ClientConfig::builder_with_provider(e2e::tls::provider())
                    .with_protocol_versions(versions)
                    .unwrap()
                    .with_root_certificates({
                        let mut r = rustls::RootCertStore::empty();
                        let pem = std::fs::read(s.ca()).unwrap();
                        for c in rustls_pemfile::certs(&mut &pem[..]) {
                            r.add(c.unwrap()).unwrap();
                        }
                        r
                    })
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
                let mut resumed = Vec::new();
                for _ in 0..2 {
                    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                    let name = rustls::pki_types::ServerName::try_from("ferrari.myapp.localhost").unwrap();
                    let mut tls = connector.connect(name, tcp).await.unwrap();
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    tls.write_all(
                        b"GET /whoami HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nConnection: close\r\n\r\n",
                    )
                    .await
                    .unwrap();
                    let mut out = Vec::new();
                    let _ = tls.read_to_end(&mut out).await;
                    assert!(String::from_utf8_lossy(&out).contains("\"tenant\":\"ferrari\""));
                    resumed.push(tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
                }
                assert_eq!(resumed, [false, true], "second connection should resume ({versions:?})");
            }
        })
        .await
    })
    .expect("the handshakes and requests end in time");
}

/// Bound on a test's own client exchanges over TLS.
const BOUND: Duration = Duration::from_secs(60);

#[test]
fn http2_and_http1_both_reach_the_stamped_tenant() {
    let s = tls_stack("", 1);
    let port = s.gw.tls_port;
    let hosts = [
        "ferrari.myapp.localhost",
        "mclaren.myapp.localhost",
        "www.ferrari-cars.test",
    ];
    for (alpn, version) in [
        (&["h2", "http/1.1"][..], http::Version::HTTP_2),
        (&["http/1.1"][..], http::Version::HTTP_11),
    ] {
        let client = https_client(s.ca(), port, &hosts, alpn);
        for (host, tenant) in [
            ("ferrari.myapp.localhost", "ferrari"),
            ("mclaren.myapp.localhost", "mclaren"),
            ("www.ferrari-cars.test", "ferrari"),
        ] {
            for _ in 0..3 {
                let r = client
                    .get(&format!("https://{host}:{port}/whoami"))
                    .header("x-tenant", "mclaren")
                    .send()
                    .unwrap();
                assert_eq!(r.status, 200, "{host} over {version:?}: {}", r.body);
                assert_eq!(r.version, version, "{host}");
                let who = r.json();
                assert_eq!(who["tenant"], tenant, "{host} over {version:?}");
                assert_eq!(who["schema"], tenant);
                // One `Host`, the normalised host the stamp signs (over
                // HTTP/2 the authority carried a port, so it is rewritten).
                assert_eq!(who["host"], json!([host]), "{host} over {version:?}");
                // The backend sees the real client address and the scheme.
                assert_eq!(who["x_forwarded_for"], json!(["127.0.0.1"]));
                assert_eq!(who["x_forwarded_proto"], json!(["https"]));
                assert_eq!(
                    who["forwarded"],
                    json!([format!("for=127.0.0.1;host={host};proto=https")])
                );
            }
        }
        // Writes work over both protocols.
        let r = client
            .request(
                Method::POST,
                &format!("https://ferrari.myapp.localhost:{port}/projects"),
            )
            .json(&json!({ "name": format!("via {version:?}") }))
            .send()
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    assert_eq!(s.pg.psql("SELECT count(*) FROM ferrari.projects").unwrap(), "2");
    assert_eq!(s.pg.psql("SELECT count(*) FROM mclaren.projects").unwrap(), "0");
    s.gw.proc_
        .log_when("access line for mclaren", Duration::from_secs(10), |log| {
            log.lines()
                .any(|l| l.contains("access") && l.contains("tenant=mclaren"))
        });
}

#[test]
fn host_sni_mismatch_is_421_and_unknown_sni_never_gets_a_tenant_certificate() {
    let s = tls_stack("", 1);
    let port = s.gw.tls_port;
    // HTTP/1.1 over a connection made for ferrari, asking for mclaren: 421, no backend touched.
    let client = https_client(
        s.ca(),
        port,
        &["ferrari.myapp.localhost", "www.ferrari-cars.test"],
        &["http/1.1"],
    );
    let probe_path = "/misdirected-probe";
    for other in ["mclaren.myapp.localhost", "mclaren-racing.test", "nobody-known.test"] {
        let r = client
            .get(&format!("https://ferrari.myapp.localhost:{port}{probe_path}"))
            .header("host", other)
            .send()
            .unwrap();
        let want = if other == "nobody-known.test" { 404 } else { 421 };
        assert_eq!(r.status, want, "SNI ferrari, Host {other}: {}", r.body);
    }
    for app in &s.apps {
        assert!(
            !app.proc_.log().contains(probe_path),
            "a misdirected request reached a backend"
        );
    }
    // Same tenant under another of its names: allowed.
    let r = client
        .get(&format!("https://www.ferrari-cars.test:{port}/whoami"))
        .header("host", "ferrari.myapp.localhost")
        .send()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tenant"], "ferrari");
    // HTTP/2 connection coalescing: a browser reuses ferrari's connection
    // (the wildcard covers both names) for mclaren. Each stream is checked.
    let authority = format!("ferrari.myapp.localhost:{port}");
    let statuses = h2_requests(
        s.ca(),
        port,
        "ferrari.myapp.localhost",
        &[
            ("mclaren.myapp.localhost", None),
            ("ferrari.myapp.localhost", None),
            ("www.ferrari-cars.test", None),
            // A `host` field as well (Pingora refuses one that differs from
            // the authority), with a port: rewritten to the host.
            (&authority, Some(&authority)),
        ],
    );
    assert_eq!(statuses, [421, 200, 200, 200], "per-stream Host/SNI check over HTTP/2");

    // With a default certificate configured, unknown names get it: never a tenant's.
    let def = s.certs.path().join("default");
    issue(s.certs.path(), &["default.invalid"], &def);
    let body = format!(
        "[tls]\nlisten = \"127.0.0.1:{{TLS_PORT}}\"\nunknown_sni = \"default\"\n\
         default_certificate = {{ cert_file = \"{0}.pem\", key_file = \"{0}.key\" }}\ncert_dir = \"{1}\"\n\
         certificates = [{{ cert_file = \"{2}\", key_file = \"{3}\" }}]\n{4}",
        def.display(),
        s.custom_dir().display(),
        s.certs.path().join("wildcard.pem").display(),
        s.certs.path().join("wildcard.key").display(),
        pools_toml(&[("default", &[s.apps[0].port])]),
    );
    let gw2 = Gateway::start(&s.pg.url(), &body).unwrap();
    for sni in [
        Some("mclaren-racing.test"),
        Some("evil.example"),
        Some("a.b.myapp.localhost"),
        None,
    ] {
        let p = probe(gw2.tls_port, sni, &[]).unwrap();
        assert_eq!(p.names, ["default.invalid"], "{sni:?}");
    }
    assert_eq!(
        probe(gw2.tls_port, Some("www.ferrari-cars.test"), &[]).unwrap().names,
        ["www.ferrari-cars.test"]
    );
}

#[test]
fn plain_http_redirects_with_308_except_the_allow_list() {
    let s = tls_stack("", 1);
    let (status, head) = raw_http(
        s.gw.port,
        "GET /projects?page=2 HTTP/1.1\r\nHost: Ferrari.MyApp.localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 308, "{head}");
    let location = format!(
        "location: https://ferrari.myapp.localhost:{}/projects?page=2",
        s.gw.tls_port
    );
    assert!(head.to_ascii_lowercase().contains(&location), "{head}");
    // Malformed hosts are still refused, not redirected.
    let (status, _) = raw_http(s.gw.port, "GET / HTTP/1.1\r\nHost: a..b\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(status, 400);
    // With ACME off, the challenge path is nothing special: redirected like
    // any other path (it never reaches a backend over plain HTTP).
    let (status, _) = raw_http(
        s.gw.port,
        "GET /.well-known/acme-challenge/token123 HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 308);
    // The configured allow-list goes through over HTTP.
    for path in ["/public/anything", "/public"] {
        let (status, head) = raw_http(
            s.gw.port,
            format!("GET {path} HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nConnection: close\r\n\r\n"),
        )
        .unwrap();
        assert_ne!(status, 308, "{path}: {head}");
        assert!(
            s.apps.iter().any(|a| a.proc_.log().contains(path)),
            "{path} did not reach the backend"
        );
    }
}

#[test]
fn sigterm_completes_in_flight_requests_on_open_tls_connections() {
    let mut s = tls_stack("", 10);
    let port = s.gw.tls_port;
    let ca = s.ca().to_path_buf();
    let spawn = |alpn: &'static [&'static str], path: &'static str| {
        let ca = ca.clone();
        std::thread::spawn(move || {
            let c = https_client(Path::new(&ca), port, &["ferrari.myapp.localhost"], alpn);
            c.get(&format!("https://ferrari.myapp.localhost:{port}{path}")).send()
        })
    };
    let h1 = spawn(&["http/1.1"], "/slow/1500");
    let h2 = spawn(&["h2"], "/slow/1600");
    wait_until("both slow requests reached backends", Duration::from_secs(10), || {
        slow_requests_started(&s.apps) >= 2
    })
    .unwrap();
    let t = Instant::now();
    s.gw.proc_.signal("TERM");
    for (name, handle) in [("http/1.1", h1), ("h2", h2)] {
        let r = handle
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{name} in-flight request failed: {e}"));
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.json()["tenant"], "ferrari");
    }
    // Well before the grace period (10 s) ends, with room for a slow machine.
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "requests should finish, not wait for the grace period"
    );
    assert!(s.gw.proc_.terminate(Duration::from_secs(30)), "gateway did not exit");
    assert!(!port_open(port));
}

/// Open one HTTP/2 connection with SNI `sni` and send one GET /whoami per
/// authority (with a `host` field, if given) on it; returns the statuses.
fn h2_requests(ca: &Path, port: u16, sni: &str, authorities: &[(&str, Option<&str>)]) -> Vec<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(BOUND, async {
            let mut client = e2e::tls::h2_connect(ca, port, sni).await;
            let mut out = Vec::new();
            for (a, host) in authorities {
                let mut req = ::http::Request::get(format!("https://{a}/whoami"));
                if let Some(h) = host {
                    req = req.header("host", *h);
                }
                let req = req.body(()).unwrap();
                let (resp, _) = client.send_request(req, true).unwrap();
                let resp = resp.await.unwrap();
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                let mut text = Vec::new();
                while let Some(chunk) = body.data().await {
                    text.extend_from_slice(&chunk.unwrap());
                }
                if status == 200 {
                    let who: serde_json::Value = serde_json::from_slice(&text).unwrap();
                    assert_eq!(who["tenant"], "ferrari", "{a} on {sni}'s connection");
                    // One `Host`, the normalised host: the one Pingora wrote
                    // from an authority that already is the host goes as it is.
                    let host = a.split(':').next().unwrap_or_default();
                    assert_eq!(who["host"], serde_json::json!([host]), "{a} on {sni}'s connection");
                }
                client = client.ready().await.unwrap();
                out.push(status);
            }
            out
        })
        .await
    })
    .expect("the HTTP/2 requests end in time")
}

/// Over TLS the gateway buffers plaintext until Pingora flushes. An upgraded
/// connection must still see every frame promptly, in both directions, for
/// both tenants, with frames smaller and larger than that buffer.
#[test]
fn websocket_over_tls_round_trips_every_frame() {
    let s = tls_stack("", 1);
    for (host, tenant) in [
        ("ferrari.myapp.localhost", "ferrari"),
        ("mclaren.myapp.localhost", "mclaren"),
    ] {
        let mut ws = wss_connect(s.ca(), s.gw.tls_port, host).unwrap();
        for msg in [
            "one".to_string(),
            "two".to_string(),
            "x".repeat(40_000),
            "three".to_string(),
        ] {
            let reply = ws::round_trip(&mut ws, &msg).unwrap();
            assert_eq!(reply.len(), tenant.len() + 2 + msg.len());
            assert_eq!(reply, format!("{tenant}: {msg}"), "{host}");
        }
    }
}

type Wss = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn wss_connect(ca: &Path, port: u16, host: &str) -> anyhow::Result<Wss> {
    let cfg = std::sync::Arc::new(e2e::tls::client_config(ca, &["http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut s = rustls::StreamOwned::new(rustls::ClientConnection::new(cfg, name)?, tcp);
    ws::upgrade(&mut s, host)?;
    Ok(s)
}
