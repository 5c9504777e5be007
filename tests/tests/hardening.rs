//! Availability under a hostile client or a stalled dependency: one client
//! over its connection cap, a trickled request head, a script holding the
//! admin listener, a client that reads none of its responses (HTTP/1.1 and
//! HTTP/2) in front of a backend with few workers, an HTTP/2 client
//! resetting its streams (at once and after the gateway took them), slow
//! and stopped request bodies (read whole before a backend is chosen, over
//! HTTP/1.1 and HTTP/2), a large HTTP/2 request body that stops, clients
//! reading none of large responses the gateway holds (and the responses
//! it streams), a response its backend stops sending, a frozen (SIGSTOP) or
//! stopped PostgreSQL, a log nobody reads, a bad row, path and SNI tricks. Two tenants in every
//! test; the other tenant must keep being served correctly and promptly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::http;
use e2e::tls::{client_config, h2_connect, https_client};
use e2e::*;

/// Backends on their own cluster (`app_pg`), the gateway's domain table on
/// another (`pg`), so the gateway's database can be frozen or stopped while
/// the backends keep working. `extra` is appended to the `[tls]` section
/// (and may open further sections).
fn stack(extra: &str) -> Stack {
    stack_with_grace(extra, 1)
}

fn stack_with_grace(extra: &str, grace_secs: u64) -> Stack {
    Stack::builder()
        .separate_app_database()
        .tls(&format!("redirect_exempt = [\"/healthz\"]\n{extra}"))
        .grace(grace_secs)
        .start()
}

#[test]
fn one_client_over_its_connection_cap_cannot_starve_another_clients_tls() {
    // Held connections must outlive a slow machine's test: the handshake and
    // head deadlines (tested elsewhere) would otherwise free their places.
    let s = stack(
        "handshake_timeout_ms = 120000\n[limits]\nmax_connections = 40\nmax_connections_per_ip = 25\n\
         request_head_timeout_ms = 120000\n",
    );
    // A hostile client (127.0.0.2) opens three times its cap on each listener.
    let hostile_tls = connections_from("127.0.0.2", s.gw.tls_port, 75);
    let hostile_http = connections_from("127.0.0.2", s.gw.port, 75);
    wait_until("hostile connections refused", Duration::from_secs(10), || {
        s.metric(
            "tenant_gateway_connections_refused_total",
            &[("listener", "https"), ("reason", "per_ip_cap")],
        ) >= 50.0
            && s.metric(
                "tenant_gateway_connections_refused_total",
                &[("listener", "http"), ("reason", "per_ip_cap")],
            ) >= 50.0
    })
    .unwrap();
    // Its cap is shared by both listeners: 25 in all, not 25 each.
    let open = public_open(&s);
    assert!(open <= 25.0, "open connections {open}");
    // Another client's TLS request succeeds, promptly, for both tenants.
    for host in ["ferrari.myapp.localhost", "mclaren.myapp.localhost"] {
        let start = Instant::now();
        let r = s.https().get(&s.https_url(host, "/whoami")).send().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["tenant"], host.split('.').next().unwrap());
        // Generous for a noisy machine; a starved listener would hang until the client's timeout.
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    }
    // Two more hostile addresses fill the listener's total cap (each holds
    // at most its own 25, so together they pass 40 whatever share of the
    // first address's 25 landed on this listener): refused as such.
    let hostile3 = connections_from("127.0.0.3", s.gw.tls_port, 30);
    let hostile4 = connections_from("127.0.0.4", s.gw.tls_port, 30);
    wait_until("listener cap reached", Duration::from_secs(30), || {
        s.metric(
            "tenant_gateway_connections_refused_total",
            &[("listener", "https"), ("reason", "listener_cap")],
        ) >= 1.0
    })
    .unwrap();
    // Once the hostile clients leave, their places are free again.
    drop((hostile_tls, hostile_http, hostile3, hostile4));
    wait_until("places released", Duration::from_secs(10), || public_open(&s) <= 2.0).unwrap();
    let r = s
        .https()
        .get(&s.https_url("ferrari.myapp.localhost", "/whoami"))
        .send()
        .unwrap();
    assert_eq!(r.status, 200);
}

/// Connections open on the public listeners (the admin listener's, the
/// scrape's own among them, are counted apart).
fn public_open(s: &Stack) -> f64 {
    ["http", "https"]
        .iter()
        .map(|l| s.metric("tenant_gateway_connections_open", &[("listener", l)]))
        .sum()
}

/// A request head's start, trickled on by [`trickle`].
const HEAD_START: &[u8] = b"GET /whoami HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\n";

/// Send `start_of_request`, then trickle one byte at a time until the
/// server answers or closes the connection: how long the connection lived
/// (from `start`) and what the server sent (empty: nothing).
fn trickle<S: Read + Write>(
    stream: &mut S,
    start_of_request: &[u8],
    start: Instant,
    limit: Duration,
) -> (Duration, Vec<u8>) {
    stream.write_all(start_of_request).unwrap();
    let mut buf = [0u8; 512];
    while start.elapsed() < limit {
        if stream.write_all(b"X").and_then(|_| stream.flush()).is_err() {
            return (start.elapsed(), Vec::new());
        }
        // The socket's read timeout paces the trickle (one byte per 250 ms).
        match stream.read(&mut buf) {
            Ok(n) => return (start.elapsed(), buf[..n].to_vec()),
            Err(e) if timed_out(&e) => {}
            Err(_) => return (start.elapsed(), Vec::new()),
        }
    }
    panic!("the trickled request was still open after {limit:?}");
}

#[test]
fn a_trickled_request_head_or_body_is_cut_at_the_deadline_on_both_listeners() {
    let s = stack("redirect_http = false\n[limits]\nrequest_head_timeout_ms = 1500\nmin_body_rate = 100\nbody_rate_grace_ms = 1000\n");
    let deadline = Duration::from_millis(1500);
    let limit = Duration::from_secs(8);
    // Plain HTTP.
    let start = Instant::now();
    let mut tcp = paced_connection(s.gw.port);
    let (lived, _) = trickle(&mut tcp, HEAD_START, start, limit);
    assert!(lived >= deadline - Duration::from_millis(100), "cut early: {lived:?}");
    // HTTPS: the deadline counts from accept, the handshake included.
    let start = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", s.gw.tls_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("ferrari.myapp.localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(client_config(s.ca(), &["http/1.1"])), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let (lived, _) = trickle(&mut tls, HEAD_START, start, limit);
    assert!(lived >= deadline - Duration::from_millis(100), "cut early: {lived:?}");
    // HTTP/2 over TLS: a client that sends none of its preface, or only
    // part of it, is cut at the same deadline (Pingora itself would wait
    // for the preface for ever).
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let lived = h2_preface_held(&s, sent, limit);
        assert!(lived >= deadline - Duration::from_millis(100), "cut early: {lived:?}");
    }
    assert!(
        s.metric("tenant_gateway_deadline_hits_total", &[("kind", "request_head")]) >= 4.0,
        "{}",
        s.gw.scrape().unwrap_or_default()
    );
    // A request body trickled below the minimum rate is cut too (once the
    // client has been waited for longer than the grace).
    let start = Instant::now();
    let mut tcp = paced_connection(s.gw.port);
    let head = b"POST /projects HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Length: 100000\r\n\r\n";
    let (cut, _) = trickle(&mut tcp, head, start, limit);
    assert!(cut >= Duration::from_millis(900), "cut before the grace: {cut:?}");
    wait_until("body rate cut counted", Duration::from_secs(5), || {
        s.metric("tenant_gateway_deadline_hits_total", &[("kind", "body_rate")]) >= 1.0
    })
    .unwrap();
    // The other tenant was never affected; a normal request takes no deadline.
    let r = s
        .https()
        .get(&s.https_url("mclaren.myapp.localhost", "/whoami"))
        .send()
        .unwrap();
    assert_eq!(r.json()["tenant"], "mclaren");
}

/// An HTTPS connection that chooses HTTP/2 and sends `sent` of its
/// preface, then nothing: how long it lived (from before its TLS
/// handshake) until the gateway closed it.
fn h2_preface_held(s: &Stack, sent: &[u8], limit: Duration) -> Duration {
    let start = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", s.gw.tls_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("ferrari.myapp.localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(client_config(s.ca(), &["h2"])), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        match tls.conn.complete_io(&mut tls.sock) {
            Err(e) if !timed_out(&e) || start.elapsed() > limit => panic!("TLS handshake: {e}"),
            _ => {}
        }
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(sent).unwrap();
    tls.flush().unwrap();
    let mut buf = [0u8; 512];
    while start.elapsed() < limit {
        match tls.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            // The gateway's SETTINGS frame.
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(_) => return start.elapsed(),
        }
    }
    panic!(
        "an HTTP/2 connection that sent {} bytes of its preface was still open after {limit:?}",
        sent.len()
    );
}

/// A plain connection whose reads give up after 250 ms (the pace of
/// `trickle` and of waiting for a close).
fn paced_connection(port: u16) -> TcpStream {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
    tcp
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// One whole request and its response (by `Content-Length`) on `tcp`,
/// which stays open.
fn one_request(tcp: &mut TcpStream) {
    let (head, _) = exchange(tcp, "GET /whoami HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\n\r\n")
        .unwrap_or_else(|e| panic!("no whole response: {e:#}"));
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

/// How long after `start` the server closed `tcp` (reading nothing else).
fn closed_after(tcp: &mut TcpStream, start: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 512];
    while start.elapsed() < limit {
        match tcp.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(n) => panic!("unexpected bytes: {}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if timed_out(&e) => {}
            Err(_) => return start.elapsed(),
        }
    }
    panic!("the idle connection was still open after {limit:?}");
}

#[test]
fn a_kept_alive_connection_closes_when_idle_and_its_next_head_has_its_own_deadline() {
    // Idle shorter than the head deadline: the timer armed for one phase
    // must not end the next one early, nor let it run late.
    // Half a second of slack below each deadline: the server's timers start
    // before this thread's clock reading can (a busy machine delays it).
    let s = stack("redirect_http = false\n[limits]\nidle_timeout_ms = 2000\nrequest_head_timeout_ms = 3000\n");
    let limit = Duration::from_secs(10);
    let mut tcp = paced_connection(s.gw.port);
    one_request(&mut tcp);
    one_request(&mut tcp);
    let idle_from = Instant::now();
    let closed = closed_after(&mut tcp, idle_from, limit);
    assert!(closed >= Duration::from_millis(1500), "closed early: {closed:?}");
    // The next request's head, trickled: cut by its own deadline (from its
    // first byte), not by the idle deadline armed before it.
    let mut tcp = paced_connection(s.gw.port);
    one_request(&mut tcp);
    let start = Instant::now();
    let (lived, _) = trickle(&mut tcp, HEAD_START, start, limit);
    assert!(
        lived >= Duration::from_millis(2500),
        "cut before the head deadline: {lived:?}"
    );
    for kind in ["idle", "request_head"] {
        wait_until(&format!("{kind} deadline counted"), Duration::from_secs(5), || {
            s.metric("tenant_gateway_deadline_hits_total", &[("kind", kind)]) >= 1.0
        })
        .unwrap();
    }
    // The other tenant was never affected.
    let r = s
        .https()
        .get(&s.https_url("mclaren.myapp.localhost", "/whoami"))
        .send()
        .unwrap();
    assert_eq!(r.json()["tenant"], "mclaren");
}

#[test]
fn a_frozen_database_never_hangs_a_request_and_invalidation_resumes() {
    let mut s = stack(
        "redirect_http = false\n[database]\nlookup_deadline_ms = 5000\nhealth_check_interval_ms = 300\nhealth_check_timeout_ms = 700\n\
         [tenant.cache]\npositive_ttl_secs = 1\n",
    );
    let client = http::client();
    let get = |host: &str| {
        let start = Instant::now();
        let r = client
            .get(&s.gw.url("/whoami"))
            .header("host", host)
            .header("accept", "application/json")
            .send()
            .unwrap();
        (r, start.elapsed())
    };
    assert_eq!(get("ferrari.myapp.localhost").0.json()["tenant"], "ferrari");
    s.pg.freeze().unwrap();
    // Never cached: the 503 page once the lookup deadline (5 s) passes,
    // well before a hung request would end (with generous room for a slow
    // machine).
    let (r, took) = get("mclaren.myapp.localhost");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "unavailable");
    assert!(took < Duration::from_secs(15), "{took:?}");
    // Cached, and past positive_ttl by the time the refresh counter moves:
    // served at once every time while one background refresh waits. Half
    // the lookup deadline: a request that waited on the database would take
    // all of it.
    const CACHED_BOUND: Duration = Duration::from_millis(2500);
    let mut served = 0;
    wait_until("an entry past its TTL served", Duration::from_secs(10), || {
        let (r, took) = get("ferrari.myapp.localhost");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(took < CACHED_BOUND, "cached tenant waited {took:?}");
        served += 1;
        s.metric("tenant_gateway_cache_background_refreshes_total", &[]) >= 1.0
    })
    .unwrap();
    for _ in 0..10 {
        let (r, took) = get("ferrari.myapp.localhost");
        assert_eq!(r.json()["tenant"], "ferrari");
        assert!(took < CACHED_BOUND, "cached tenant waited {took:?}");
    }
    assert!(served >= 1);
    // The partition is noticed by the listener's health query.
    wait_until("database marked down", Duration::from_secs(5), || {
        s.metric("tenant_gateway_database_up", &[]) == 0.0
    })
    .unwrap();
    s.pg.thaw().unwrap();
    // Invalidation works again after SIGCONT (docs: within about a second;
    // generous here for a loaded machine).
    wait_until("listener back", Duration::from_secs(15), || {
        s.metric("tenant_gateway_invalidation_listener_up", &[]) == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    assert_eq!(get("ferrari.myapp.localhost").0.json()["tenant"], "ferrari");
    s.pg.psql(
        "UPDATE public.domains SET is_primary = false, \
               tenant_id = (SELECT id FROM public.tenants WHERE schema_name = 'mclaren') \
             WHERE domain = 'ferrari.myapp.localhost'",
    )
    .unwrap();
    wait_until("NOTIFY moves the domain", PROPAGATION, || {
        get("ferrari.myapp.localhost").0.json()["tenant"] == "mclaren"
    })
    .unwrap();
}

/// `GET path` on the admin listener `port` with the operator token, on a
/// connection of its own read for up to `limit`: the status and the body.
fn admin_get_within(port: u16, path: &str, limit: Duration) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("admin listener accepts");
    tcp.set_read_timeout(Some(limit)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    if let Err(e) = tcp.read_to_end(&mut answer) {
        panic!(
            "{path}: no answer within {limit:?} ({e}); got {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// The operator API waits for the database with a deadline of its own:
/// its statements' timeouts are the server's, which a frozen server never
/// applies, so a call whose statement is under way when the database
/// freezes would otherwise hold its admin connection for as long as the
/// database is gone, and a script retrying calls would fill its address's
/// share of the listener and keep that address's `/readyz` (a load
/// balancer's probe, which never waits for the database) out.
#[test]
fn operator_api_calls_against_a_frozen_database_end_at_their_deadline_and_readyz_is_answered() {
    const NAME: &str = "locked.example";
    let mut s = stack(
        "redirect_http = false\n[admin]\nmax_connections_per_ip = 4\ntoken_env = \"TG_ADMIN_TOKEN\"\n\
         [custom_domains]\nverification = \"required\"\n",
    );
    let admin = s.gw.admin_port;
    let (code, added) = s.gw.api(
        ::http::Method::POST,
        &format!("hostnames?name={NAME}&tenant=ferrari&method=txt"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 200, "{added}");
    // The checkers leave the claim alone meanwhile: its first check ended,
    // its next an hour away. (A check whose outcome waited for the lock
    // below would hold one of the pool's four connections, and one of the
    // calls would wait for a connection instead of its statement.)
    wait_until("the claim's first check", Duration::from_secs(30), || {
        s.pg.psql(&format!(
            "SELECT checks >= 1 AND lease_owner IS NULL FROM tenant_gateway.custom_hostnames WHERE name = '{NAME}'"
        ))
        .is_ok_and(|t| t == "t")
    })
    .unwrap();
    s.pg.psql(&format!(
        "UPDATE tenant_gateway.custom_hostnames SET next_check_at = now() + interval '1 hour' WHERE name = '{NAME}'"
    ))
    .unwrap();
    // The claim's row locked by another session: each call's statement
    // waits for it, under way on its connection.
    let rt = driving_runtime();
    let mut lock = rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&s.pg.url()).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("SELECT 1 FROM tenant_gateway.custom_hostnames WHERE name = $1 FOR UPDATE")
            .bind(NAME)
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    });
    // As many calls as this address may hold, each over a connection of
    // its own.
    let start = Instant::now();
    let path = format!("/api/v1/hostnames/retry?name={NAME}");
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut tcp = TcpStream::connect(("127.0.0.1", admin)).expect("admin listener accepts");
                tcp.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
                write!(
                    tcp,
                    "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut answer = Vec::new();
                let read = tcp.read_to_end(&mut answer);
                (
                    read.map_err(|e| e.to_string()),
                    String::from_utf8_lossy(&answer).into_owned(),
                )
            })
        })
        .collect();
    wait_until("the calls wait for the lock", Duration::from_secs(30), || {
        s.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            .is_ok_and(|n| n == "4")
    })
    .unwrap();
    // Then the database freezes: their statements never end, nor does
    // the server's statement timeout fire. Each is answered 503 at the
    // API's deadline (10 s), with a generous margin for a slow machine.
    s.pg.freeze().unwrap();
    for call in calls {
        let (read, answer) = call.join().unwrap();
        assert!(read.is_ok(), "no answer: {read:?} {answer:?}");
        let status = answer.get(9..12).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        assert_eq!(status, 503, "{answer}");
        assert!(answer.contains("\"error\":\"deadline\""), "{answer}");
    }
    assert!(start.elapsed() < Duration::from_secs(60), "{:?}", start.elapsed());
    // From the same address, with the database still frozen.
    let (status, answer) = admin_get_within(admin, "/readyz", Duration::from_secs(10));
    assert_eq!(status, 200, "{answer}");
    s.gw.wait_logged("operator API: no answer within", 0, Duration::from_secs(10));
    s.pg.thaw().unwrap();
    rt.block_on(async { sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap() });
    let (code, listed) = s.gw.api(::http::Method::GET, "hostnames", Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{listed}");
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100) - 1]
}

#[test]
fn a_stopped_database_does_not_slow_cached_tenants() {
    let mut s = stack("redirect_http = false\n");
    let client = http::client();
    let timed = |host: &str| {
        let start = Instant::now();
        let r = client.get(&s.gw.url("/whoami")).header("host", host).send().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        start.elapsed()
    };
    let hosts = ["ferrari.myapp.localhost", "mclaren.myapp.localhost"];
    let before: Vec<Duration> = (0..200).map(|i| timed(hosts[i % 2])).collect();
    s.pg.stop_server().unwrap();
    let after: Vec<Duration> = (0..200).map(|i| timed(hosts[i % 2])).collect();
    let (b, a) = (p99(before), p99(after));
    // 3x, and never below half a second, so a busy machine's stalls cannot
    // fail it; a request that waited on the database would still (its
    // pool's acquire timeout is a second, the lookup deadline 2.5 s).
    let bound = (3 * b.max(Duration::from_millis(10))).max(Duration::from_millis(500));
    assert!(a <= bound, "p99 before {b:?}, after {a:?} (bound {bound:?})");
}

#[test]
fn a_bad_row_is_that_hosts_problem_only() {
    let s = stack("redirect_http = false\n");
    // A django-tenants style public tenant: a schema the gateway refuses.
    s.pg.psql(
        "ALTER TABLE public.tenants DROP CONSTRAINT tenants_schema_name_check; \
             INSERT INTO public.tenants (schema_name, name) VALUES ('public', 'Public'); \
             INSERT INTO public.domains (domain, tenant_id) \
               SELECT 'public-site.test', id FROM public.tenants WHERE schema_name = 'public'",
    )
    .unwrap();
    let hosts: Vec<String> = (0..8).map(|i| format!("new{i}.test")).collect();
    for (i, h) in hosts.iter().enumerate() {
        let tenant = if i % 2 == 0 { "ferrari" } else { "mclaren" };
        app_cli_ok(&s.pg.url(), &["domain", "add", h, "--tenant", tenant]);
    }
    // Every row above has been announced (NOTIFY), so no query below overlaps one.
    wait_until("domain NOTIFYs seen", Duration::from_secs(5), || {
        s.metric("tenant_gateway_notify_invalidations_total", &[]) >= 9.0
    })
    .unwrap();
    let client = http::client();
    let get = |host: &str| {
        client
            .get(&s.gw.url("/whoami"))
            .header("host", host)
            .header("accept", "application/json")
            .send()
            .unwrap()
    };
    for (i, h) in hosts.iter().enumerate() {
        // The bad host gets its own clear page...
        let r = get("public-site.test");
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"], "misconfigured");
        // ...and a new, never-cached host right after it is unaffected.
        let r = get(h);
        assert_eq!(r.status, 200, "{h}: {}", r.body);
        let want = if i % 2 == 0 { "ferrari" } else { "mclaren" };
        assert_eq!(r.json()["tenant"], want);
    }
    // Negatively cached: one query for the bad host, however often asked.
    assert_eq!(s.metric("tenant_gateway_db_bad_rows_total", &[]), 1.0);
    assert_eq!(s.metric("tenant_gateway_db_errors_total", &[]), 0.0);
    s.gw.wait_logged("public-site.test", 0, Duration::from_secs(10));
}

#[test]
fn plain_http_exemptions_are_path_safe_and_sni_travels_with_the_connection() {
    let s = stack("");
    let plain = |path: &str, host: &str| {
        raw_http(
            s.gw.port,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
        .0
    };
    let ferrari = "ferrari.myapp.localhost";
    // Exempt: the path itself and below, on segment boundaries.
    assert_eq!(plain("/healthz", ferrari), 200);
    for sneaky in [
        "/healthzzz",
        "/healthz/../whoami",
        "/healthz/%2e%2e/whoami",
        "/.well-known/acme-challenge/../../whoami",
        "/.well-known/acme-challenge/token",
    ] {
        assert_eq!(plain(sneaky, ferrari), 308, "{sneaky}");
    }
    for app in &s.apps {
        let log = app.proc_.log();
        assert!(
            !log.contains("whoami"),
            "a sneaky path reached a backend over plain HTTP"
        );
        assert!(
            !log.contains("acme-challenge"),
            "the ACME prefix reached a backend with ACME off"
        );
    }
    // No open redirect: an unknown host gets the 404 page, not a 308.
    assert_eq!(plain("/", "attacker.example"), 404);
    // SNI ferrari, Host mclaren: 421 on every connection, however many open
    // and close around it (the SNI is the connection's own, never looked up).
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (ca, port) = (s.ca().to_path_buf(), s.gw.tls_port);
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        https_client(&ca, port, &["ferrari.myapp.localhost"], &["http/1.1"])
                            .get(&format!("https://ferrari.myapp.localhost:{port}/whoami"))
                            .header("host", "mclaren.myapp.localhost")
                            .send()
                            .unwrap()
                            .status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().iter().all(|&st| st == 421));
    }
}

#[test]
fn sigterm_closes_websockets_with_1001_and_ends_keep_alive_politely() {
    let mut s = stack_with_grace("redirect_http = false\n", 5);
    // An upgraded WebSocket, echoing.
    let mut socket = TcpStream::connect(("127.0.0.1", s.gw.port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ws::upgrade(&mut socket, "ferrari.myapp.localhost").unwrap();
    assert_eq!(ws::round_trip(&mut socket, "hi").unwrap(), "ferrari: hi");
    // A request in flight on a keep-alive connection, for the other tenant.
    let port = s.gw.port;
    let inflight = std::thread::spawn(move || {
        http::client()
            .get(&format!("http://127.0.0.1:{port}/slow/1500"))
            .header("host", "mclaren.myapp.localhost")
            .send()
    });
    wait_until("slow request reached a backend", Duration::from_secs(10), || {
        slow_requests_started(&s.apps) >= 1
    })
    .unwrap();
    s.gw.proc_.signal("TERM");
    // The WebSocket gets a close frame, status 1001 (going away), then the end.
    let mut frame = [0u8; 4];
    socket.read_exact(&mut frame).unwrap();
    assert_eq!(frame, [0x88, 0x02, 0x03, 0xE9]);
    let mut rest = Vec::new();
    let _ = socket.read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
    // The in-flight response completes and tells the client to reconnect.
    let r = inflight.join().unwrap().expect("in-flight request completes");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tenant"], "mclaren");
    assert_eq!(
        r.headers.get("connection").and_then(|v| v.to_str().ok()),
        Some("close"),
        "{:?}",
        r.headers
    );
    assert!(s.gw.proc_.terminate(Duration::from_secs(15)), "gateway did not exit");
}

/// A backend that answers every request with a head at once and then a body
/// of one byte each 100 ms, never finishing: each read arrives well within
/// a read timeout. Stops trickling when dropped.
struct Trickler {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Trickler {
    fn start() -> Trickler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let port = serve_each(move |mut conn| {
            if read_request_head(&mut conn).is_none() {
                return;
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) && conn.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Trickler { port, stop }
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_backend_trickling_its_health_answer_is_ejected_and_checks_go_on() {
    let pg = Postgres::start().unwrap();
    two_tenants(&pg);
    let mut a = UpstreamApp::start(&pg.url(), "").unwrap();
    let trickler = Trickler::start();
    let gw = Gateway::start(&pg.url(), &pools_toml(&[("default", &[a.port, trickler.port])])).unwrap();
    // Each of its reads is in time, its check never ends: the check's own
    // deadline fails it (probe timeout 200 ms here, deadline 400 ms).
    gw.wait_backend("default", trickler.port, false, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc_.log()));
    let client = http::client();
    for host in ["ferrari.myapp.localhost", "mclaren.myapp.localhost"].repeat(10) {
        let r = client.get(&gw.url("/whoami")).header("host", host).send().unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(r.json()["host"][0], host);
    }
    // Its stuck checks do not hold the round: the other backend's failure
    // is still seen.
    a.proc_.kill();
    gw.wait_backend("default", a.port, false, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc_.log()));
}

#[test]
fn a_client_holding_the_admin_listener_is_capped_and_cut_and_tenants_never_notice() {
    let s = stack(
        "[admin]\nmax_connections = 16\nmax_connections_per_ip = 4\ntoken_env = \"TG_ADMIN_TOKEN\"\n\
         metrics_token = true\n[limits]\nrequest_head_timeout_ms = 15000\n",
    );
    let admin = s.gw.admin_port;
    // `/metrics` asks for the token (the harness's scrape sends it).
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let refused = http::client().get(&url).send().unwrap();
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(s.gw.scrape().unwrap().contains("tenant_gateway_connections_open"));
    // A script on one address opens as many admin connections as the
    // listener allows and sends nothing: it holds its share, four; the
    // other twelve are closed at accept (the test's own earlier
    // connections, if the server still counts them, leave room: the
    // listener's 16 and this address's 4 alike).
    let mut held = connections_from("127.0.0.2", admin, 16);
    // So the listener still serves another address (a scraper, a load
    // balancer's `/readyz`): accepted after the script's (the kernel
    // queues them in order), while it holds its share.
    let per_ip = &[("listener", "admin"), ("reason", "per_ip_cap")];
    let m =
        s.gw.scrape()
            .expect("another address is served while one holds its share");
    assert_eq!(metric_sum(&m, "tenant_gateway_connections_refused_total", per_ip), 12.0);
    // Three more addresses take their shares: the listener is full, and
    // one more connection is closed at accept (or, if a share was refused
    // at the listener's cap because the scrape's connection was still
    // counted, it is accepted and cut at the head deadline).
    for from in ["127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        held.extend(connections_from(from, admin, 4));
    }
    let mut extra = paced_connection(admin);
    // The head deadline (15 s) leaves a slow machine time for all of the
    // above before the held connections are cut.
    let limit = Duration::from_secs(40);
    closed_after(&mut extra, Instant::now(), limit);
    // Both tenants are served meanwhile, promptly.
    for host in ["ferrari.myapp.localhost", "mclaren.myapp.localhost"] {
        let start = Instant::now();
        let r = s.https().get(&s.https_url(host, "/whoami")).send().unwrap();
        assert_eq!(r.json()["tenant"], host.split('.').next().unwrap());
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    }
    // Every held connection is closed: refused at accept, or cut at the
    // head deadline (none ever sent a head).
    for tcp in &mut held {
        tcp.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
        closed_after(tcp, Instant::now(), limit);
    }
    // The listener answers again, and says what happened.
    let full = &[("listener", "admin"), ("reason", "listener_cap")];
    wait_until("admin listener free", Duration::from_secs(10), || {
        s.gw.scrape()
            .is_ok_and(|m| metric_sum(&m, "tenant_gateway_connections_refused_total", full) >= 1.0)
    })
    .unwrap();
    assert_eq!(s.metric("tenant_gateway_connections_refused_total", per_ip), 12.0);
    let cut = s.metric("tenant_gateway_deadline_hits_total", &[("kind", "request_head")]);
    assert!(cut >= 4.0, "cut {cut}");
}

/// The other tenant (mclaren) gets the test backend's `ok` through the
/// gateway.
fn other_tenant_answers(s: &Stack) -> bool {
    answers(s, "mclaren.myapp.localhost")
}

/// Whether `GET /` for `host` gets the backend's `ok`.
fn answers(s: &Stack, host: &str) -> bool {
    s.https()
        .get(&s.https_url(host, "/"))
        .send()
        .is_ok_and(|r| r.status == 200 && r.body == "ok")
}

/// A runtime whose one worker keeps driving the HTTP/2 connections a test
/// opened on it while the test goes on.
fn driving_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A backend of `workers` threads, each serving one connection at a time
/// and closing it after one response, like a pre-forked app server without
/// keep-alive: `GET /big` answers 256 MiB, `GET /large` [`LARGE`] bytes of
/// [`large_body`], `GET /stream/<how>` its first part and, once the test
/// releases it, the rest; a `POST` reads its body (its `Content-Length`,
/// however long that takes) and answers `got <bytes>` (`POST /large`: as
/// `GET /large`), anything else a few
/// bytes. Counts the big responses whose connection the gateway closed
/// mid-way, the large ones written whole, the streams whose first part was
/// sent, and the posts received.
struct FewWorkers {
    port: u16,
    hung_up: Arc<std::sync::atomic::AtomicUsize>,
    posts: Arc<std::sync::atomic::AtomicUsize>,
    large_sent: Arc<std::sync::atomic::AtomicUsize>,
    streams: Arc<std::sync::atomic::AtomicUsize>,
    release: Arc<std::sync::atomic::AtomicBool>,
}

/// The size of `GET /large`: far above what the sockets between a backend
/// and a client that reads nothing take (over 6 MiB on loopback, where
/// they grow the most), so its worker waits for the client unless the
/// gateway holds the body ([`HOLD_LARGE`]).
const LARGE: usize = 32 << 20;

/// Responses of [`LARGE`] are held (the default bound is 8 MiB).
const HOLD_LARGE: &str = "[limits]\nresponse_body_buffer_bytes = 33554432\n";

/// `GET /large`'s body: letters in a cycle that no chunk size lines up
/// with, so a chunk lost, repeated or moved shows.
fn large_body() -> Vec<u8> {
    (0..LARGE).map(|i| b'a' + (i % 23) as u8).collect()
}

/// `GET /stream/<how>`'s body: a first part, then (once the test releases
/// it) the rest, 200 KB: more than one read (64 KiB) of the gateway's, so
/// what comes after its first read can be held.
fn stream_body() -> (&'static str, String) {
    ("first part;", format!(" the rest{}", ".".repeat(200_000)))
}

/// `GET /stream/stalls`'s body: [`STALL_SENT`] bytes of dots, then (once
/// the test releases it) as many more.
const STALL_SENT: usize = 1 << 20;

/// `GET /stream/<how>`: the first part of [`stream_body`], then (once the
/// test releases it, within 30 s) the rest. `sized`: a `Content-Length`;
/// `unbuffered`: that and `X-Accel-Buffering: no`; `chunked`: no length;
/// `stalls`: [`STALL_SENT`] bytes of a body twice that long, then the rest
/// (a gateway whose read timeout is shorter gives up on it, having held
/// what followed its first reads).
fn serve_stream(
    conn: &mut TcpStream,
    head: &[u8],
    started: &std::sync::atomic::AtomicUsize,
    release: &std::sync::atomic::AtomicBool,
) {
    let how = String::from_utf8_lossy(head);
    let how = how.split_ascii_whitespace().nth(1).unwrap_or_default();
    let (first, rest) = match how {
        "/stream/stalls" => (".".repeat(STALL_SENT), ".".repeat(STALL_SENT)),
        _ => {
            let (first, rest) = stream_body();
            (first.to_string(), rest)
        }
    };
    let len = first.len() + rest.len();
    let chunked = how == "/stream/chunked";
    let head = match how {
        "/stream/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_string(),
        "/stream/unbuffered" => {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n")
        }
        // `sized`, `stalls`.
        _ => format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"),
    };
    let part = |s: &str| {
        if chunked {
            format!("{:x}\r\n{s}\r\n", s.len())
        } else {
            s.to_string()
        }
    };
    let _ = conn.write_all(format!("{head}{}", part(&first)).as_bytes());
    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _ = wait_until("the test releases the stream", Duration::from_secs(30), || {
        release.load(std::sync::atomic::Ordering::SeqCst)
    });
    let end = if chunked { "0\r\n\r\n" } else { "" };
    let _ = conn.write_all(format!("{}{end}", part(&rest)).as_bytes());
}

/// `POST /upgrade`, its body read (`got`): 101, then [`got`]'s line, then
/// every byte read back as it comes.
fn upgrade_and_echo(conn: &mut TcpStream, got: &str) {
    let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    if conn.write_all(format!("{head}{got}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// The `Content-Length` of a message head (0 without one).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Read the rest of a body of `len` bytes, `head` (as read) holding its
/// start; what came, as [`got`] says it.
fn read_body(conn: &mut TcpStream, head: &[u8], len: usize) -> String {
    let start = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |i| i + 4);
    let mut body = head[start..].to_vec();
    let mut buf = [0u8; 4096];
    while body.len() < len {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    got(&body)
}

/// A request body of `len` bytes: a cycle no chunk size lines up with,
/// so a part lost, repeated or moved shows in [`got`].
fn upload_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// How the backend reports a body it received: its length and FNV-1a hash.
fn got(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("got {} fnv {hash:016x}", body.len())
}

impl FewWorkers {
    fn start(workers: usize) -> FewWorkers {
        let listener = Arc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let port = listener.local_addr().unwrap().port();
        let hung_up = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let large_sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let large = Arc::new(large_body());
        for _ in 0..workers {
            let (listener, hung_up, posts) = (listener.clone(), hung_up.clone(), posts.clone());
            let (large_sent, release, large) = (large_sent.clone(), release.clone(), large.clone());
            let streams = streams.clone();
            std::thread::spawn(move || {
                while let Ok((mut conn, _)) = listener.accept() {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    // Longer than the test: a worker the gateway never lets
                    // go of stays held while the test looks.
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(120)));
                    let head = read_request_head(&mut conn).unwrap_or_default();
                    if head.starts_with(b"POST ") {
                        posts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        // Like a sync worker, for as long as the body takes.
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
                        let got = read_body(&mut conn, &head, content_length(&head));
                        if head.starts_with(b"POST /upgrade ") {
                            upgrade_and_echo(&mut conn, &got);
                            continue;
                        }
                        if !head.starts_with(b"POST /large ") {
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{got}",
                                got.len()
                            );
                            let _ = conn.write_all(answer.as_bytes());
                            continue;
                        }
                    }
                    if head.starts_with(b"GET /large ") || head.starts_with(b"POST /large ") {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LARGE}\r\nConnection: close\r\n\r\n");
                        if conn
                            .write_all(head.as_bytes())
                            .and_then(|()| conn.write_all(&large))
                            .is_ok()
                        {
                            large_sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        continue;
                    }
                    if head.starts_with(b"GET /stream/") {
                        serve_stream(&mut conn, &head, &streams, &release);
                        continue;
                    }
                    if !head.starts_with(b"GET /big ") {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                        continue;
                    }
                    let chunk = [b'x'; 64 * 1024];
                    let mut out =
                        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 268435456\r\nConnection: close\r\n\r\n");
                    for _ in 0..4096 {
                        if out.is_err() {
                            break;
                        }
                        out = conn.write_all(&chunk);
                    }
                    if let Err(e) = out {
                        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
                        if matches!(e.kind(), BrokenPipe | ConnectionReset) {
                            hung_up.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
            });
        }
        FewWorkers {
            port,
            hung_up,
            posts,
            large_sent,
            streams,
            release,
        }
    }

    /// `GET /stream/…` responses whose first part was sent.
    fn streams(&self) -> usize {
        self.streams.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `GET /large` responses written whole.
    fn large_sent(&self) -> usize {
        self.large_sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The `GET /stream/…` responses send the rest of their body, and
    /// later ones all of it at once.
    fn release(&self) {
        self.release.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn hung_up(&self) -> usize {
        self.hung_up.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn posts(&self) -> usize {
        self.posts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A backend that answers the first request on each connection, keeping it
/// alive, and on a later one reads the request whole and hangs up without
/// a word (as one whose keep-alive ran out while the request was on its
/// way). Its answer: what it got ([`got`]) and the stamped tenant.
struct HangsUpOnReuse {
    port: u16,
    /// The `Content-Length` of each `PUT` hung up on (the health checks,
    /// which reuse their connection, are hung up on too).
    hung_up: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl HangsUpOnReuse {
    fn start() -> HangsUpOnReuse {
        let hung_up = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = hung_up.clone();
        let port = serve_each(move |mut conn| {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            let mut answered = false;
            while let Some(head) = read_request_head(&mut conn) {
                let len = content_length(&head);
                let got = read_body(&mut conn, &head, len);
                if answered {
                    if head.starts_with(b"PUT ") {
                        record.lock().unwrap().push(len);
                    }
                    return;
                }
                answered = true;
                let tenant = String::from_utf8_lossy(&head)
                    .lines()
                    .find_map(|l| l.strip_prefix("x-tenant: ").map(str::to_owned))
                    .unwrap_or_default();
                let body = format!("{got} tenant {tenant}");
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                if conn.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        });
        HangsUpOnReuse { port, hung_up }
    }

    fn hung_up(&self) -> Vec<usize> {
        self.hung_up.lock().unwrap().clone()
    }
}

#[test]
fn a_request_retried_after_its_reused_connection_hung_up_arrives_whole_with_its_own_stamp() {
    // Pingora retries an idempotent request whose reused connection closed
    // before any answer, on a new one. The body must go again whole: from
    // Pingora's buffer (up to 64 KiB), or from the gateway's own copy (a
    // body read first, larger), and the retry carries its own tenant's
    // stamp, whoever used the pooled connection before. Requests go until
    // a body of each size was hung up on (the connection a request gets
    // is the pool's choice, so how many that takes is not fixed).
    let backend = HangsUpOnReuse::start();
    let pools = pools_toml(&[("default", &[backend.port])]);
    let s = on_backend(backend.port, "", pools, "");
    let client = s.https();
    let both_sizes =
        |lens: &[usize]| lens.iter().any(|l| (1_000..65_536).contains(l)) && lens.iter().any(|l| *l > 65_536);
    let mut sent = 0;
    while !both_sizes(&backend.hung_up()) {
        assert!(
            sent < 60,
            "no retry of both sizes in {sent} requests: {:?}",
            backend.hung_up()
        );
        let tenant = ["ferrari", "mclaren"][sent / 2 % 2];
        let body = upload_body([1_000, 200_000][sent % 2] + sent);
        let host = format!("{tenant}.myapp.localhost");
        let r = client
            .request(::reqwest::Method::PUT, &s.https_url(&host, "/upload"))
            .header("host", &host)
            .body(body.clone())
            .send()
            .unwrap_or_else(|e| panic!("request {sent}: {e}\n{}", s.gw.proc_.log()));
        assert_eq!(r.status, 200, "request {sent}: {}\n{}", r.body, s.gw.proc_.log());
        assert_eq!(r.body, format!("{} tenant {tenant}", got(&body)), "request {sent}");
        sent += 1;
    }
}

/// Both tenants' pool: one backend of two workers; `config` is added to
/// the gateway's (empty: the defaults). Returns once the backend is healthy.
fn on_two_workers(config: &str) -> (FewWorkers, Stack) {
    on_workers(2, config)
}

/// [`on_two_workers`] with `workers` workers.
fn on_workers(workers: usize, config: &str) -> (FewWorkers, Stack) {
    let backend = FewWorkers::start(workers);
    let s = on_backend(backend.port, "", pools_toml(&[("default", &[backend.port])]), config);
    (backend, s)
}

/// A stack whose one pool (`pools`) is the backend on `port`, with `tls`
/// added to its `[tls]` section and `config` to the rest. Returns once the
/// backend is healthy.
fn on_backend(port: u16, tls: &str, pools: String, config: &str) -> Stack {
    let s = Stack::builder().apps(0).tls(tls).pools(pools).config(config).start();
    s.gw.wait_backend("default", port, true, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    s
}

/// HTTP/2 streams opened and not read (yet): their responses, and what
/// keeps them and their connection open until dropped.
struct H2Unread {
    responses: Vec<h2::client::ResponseFuture>,
    _held: Vec<Box<dyn std::any::Any + Send>>,
}

/// Open HTTP/2 streams for `GET <path>` on `host` and read none of them:
/// the client's windows (`window` bytes per stream, `n` times that for the
/// connection; `None`: h2's defaults, 65,535 bytes each) stay shut once
/// the gateway has filled them, while its connection is driven on `rt`
/// (so the socket itself keeps being read), until a response is read with
/// [`h2_read`].
fn h2_unread_streams(
    rt: &tokio::runtime::Runtime,
    ca: &std::path::Path,
    port: u16,
    (host, path): (&str, &str),
    n: usize,
    window: Option<u32>,
) -> H2Unread {
    let open = async move {
        let mut builder = h2::client::Builder::new();
        if let Some(window) = window {
            builder
                .initial_window_size(window)
                .initial_connection_window_size(window.saturating_mul(n as u32));
        }
        let mut client = e2e::tls::h2_connect_with(ca, port, host, &builder).await;
        let mut unread = H2Unread {
            responses: Vec::new(),
            _held: Vec::new(),
        };
        for _ in 0..n {
            client = client.ready().await.unwrap();
            let req = ::http::Request::get(format!("https://{host}{path}")).body(()).unwrap();
            let (response, stream) = client.send_request(req, true).unwrap();
            unread.responses.push(response);
            unread._held.push(Box::new(stream));
        }
        unread._held.push(Box::new(client));
        unread
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), open).await })
        .expect("the HTTP/2 streams open in time")
}

#[test]
fn a_client_that_reads_none_of_its_responses_is_cut_and_the_shared_backend_freed() {
    // Both tenants share one backend of two workers; each big response
    // holds one until the gateway lets go of it.
    let (backend, s) = on_two_workers("[limits]\nsend_timeout_ms = 1500\n");
    let other_served = |what: &str| {
        wait_until(what, Duration::from_secs(30), || other_tenant_answers(&s))
            .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    };
    other_served("the other tenant served before");
    let hung_up_after = |what: &str, n: usize| {
        wait_until(what, Duration::from_secs(30), || backend.hung_up() >= n)
            .unwrap_or_else(|e| panic!("{e} ({} hung up)\n{}", backend.hung_up(), s.gw.proc_.log()));
    };

    // HTTP/1.1: two connections ask for the big response and read nothing
    // (their sockets fill up): both workers are held until each
    // connection is cut at its send timeout.
    let mut unread = Vec::new();
    for _ in 0..2 {
        let mut tls = h1_tls(&s, "ferrari.myapp.localhost");
        tls.write_all(b"GET /big HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\n\r\n")
            .unwrap();
        tls.flush().unwrap();
        unread.push(tls);
    }
    hung_up_after("both big HTTP/1.1 responses let go of", 2);
    other_served("the other tenant served after the HTTP/1.1 clients were cut");
    let cut = |what: &str, n: f64| {
        wait_until(what, Duration::from_secs(10), || {
            s.metric("tenant_gateway_deadline_hits_total", &[("kind", "send")]) >= n
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    };
    cut("both HTTP/1.1 connections counted as cut", 2.0);

    // HTTP/2: the socket keeps being read, but the client never opens the
    // streams' windows; each stream is cut at its send timeout.
    let rt = driving_runtime();
    let streams = h2_unread_streams(&rt, s.ca(), s.gw.tls_port, ("ferrari.myapp.localhost", "/big"), 2, None);
    hung_up_after("both big HTTP/2 responses let go of", 4);
    other_served("the other tenant served after the HTTP/2 streams were cut");
    cut("both HTTP/2 streams counted as cut", 4.0);
    drop((streams, unread));
    // What the clients caused is their requests' access lines, not ERROR
    // lines (a client could otherwise fill the error log).
    // (A request's access line comes after any ERROR line of its own.)
    let cut_lines = || {
        s.gw.proc_
            .log()
            .lines()
            .filter(|l| l.contains("path=/big") && l.contains("error=Downstream"))
            .count()
    };
    wait_until("the four cut requests logged", Duration::from_secs(10), || {
        cut_lines() == 4
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    let log = s.gw.proc_.log();
    assert!(
        !log.lines().any(|l| l.contains("ERROR") && l.contains("Downstream")),
        "{log}"
    );
}

/// Over TLS too, a refused upload is drained before the close (its
/// close_notify goes out, then what the client still sends is read and
/// dropped): a client that sends its whole body before it reads gets the
/// 413 page, not a reset (tests/tests/gateway.rs has the plain-HTTP case
/// and the drain's bound).
#[test]
fn a_refused_upload_over_tls_is_drained_so_its_client_reads_the_page() {
    // The bound is not waited for: the drain ends as the client closes.
    let s = stack("[limits]\nmax_request_body_bytes = 1000\nlingering_close_ms = 60000\n");
    let mut tls = h1_tls(&s, "ferrari.myapp.localhost");
    tls.sock.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    tls.write_all(
        format!(
            "POST /projects HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Length: {}\r\n\r\n",
            32 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    let mib = vec![b' '; 1 << 20];
    for i in 0..32 {
        if let Err(e) = tls.write_all(&mib) {
            panic!("the upload was cut after {i} MiB: {e}\n{}", s.gw.proc_.log());
        }
    }
    let answer = read_until(&mut tls, "</html>");
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("Payload too large"), "{answer}");
    assert!(closes(&mut tls), "the connection ends after the page");
    let r = s
        .https()
        .get(&s.https_url("mclaren.myapp.localhost", "/whoami"))
        .send()
        .unwrap();
    assert_eq!(r.json()["tenant"], "mclaren", "{}", r.body);
}

/// Over HTTP/2, a body without `content-length` is held to
/// `limits.max_request_body_bytes` as it comes: once more than the bound
/// came, its stream gets the 413 page, and the connection goes on to serve
/// its next stream; the other tenant is served.
#[test]
fn an_http2_body_without_a_length_over_the_bound_gets_413() {
    let s = stack("[limits]\nmax_request_body_bytes = 1000\n");
    let rt = driving_runtime();
    let run = async {
        let mut client = e2e::tls::h2_connect(s.ca(), s.gw.tls_port, "ferrari.myapp.localhost").await;
        client = client.ready().await.unwrap();
        let req = ::http::Request::post("https://ferrari.myapp.localhost/projects")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (response, mut stream) = client.send_request(req, false).unwrap();
        // 3,000 bytes in three frames, no length announced (the backend
        // answers only once the JSON is whole). The stream may be reset
        // before the last frames go.
        for _ in 0..3 {
            let _ = stream.send_data(bytes::Bytes::from(vec![b' '; 1000]), false);
        }
        let _ = stream.send_data(bytes::Bytes::new(), true);
        // (Its stream may be reset after the page.)
        let (status, page, _) = h2_page(response).await;
        client = client.ready().await.unwrap();
        let req = ::http::Request::get("https://ferrari.myapp.localhost/whoami")
            .body(())
            .unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        ((status, page), h2_read(response).await)
    };
    let ((status, page), (next, who)) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), run).await })
        .expect("the HTTP/2 requests answered in time");
    assert_eq!(status, 413, "{page}\n{}", s.gw.proc_.log());
    assert!(page.contains("Payload too large"), "{page}");
    assert_eq!(next, 200, "{who}");
    assert!(who.contains("\"tenant\":\"ferrari\""), "{who}");
    let port = s.gw.tls_port;
    let r = https_client(s.ca(), port, &["mclaren.myapp.localhost"], &["h2"])
        .get(&format!("https://mclaren.myapp.localhost:{port}/whoami"))
        .send()
        .unwrap();
    assert_eq!(r.json()["tenant"], "mclaren", "{}", r.body);
    wait_until("the refusal counted", Duration::from_secs(10), || {
        s.metric(
            "tenant_gateway_tenant_rejected_total",
            &[("reason", "payload_too_large")],
        ) == 1.0
    })
    .unwrap();
}

/// An HTTP/2 response's status, what of its body came, and how the body
/// ended (an error: the stream was reset before its end), its window
/// opened as it is read.
async fn h2_page(response: h2::client::ResponseFuture) -> (u16, String, Result<(), h2::Error>) {
    let response = response.await.expect("a response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    let ended = loop {
        match body.data().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(e),
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
        }
    };
    (status, String::from_utf8_lossy(&out).into_owned(), ended)
}

/// An HTTP/1.1 connection over TLS to the gateway for `host`.
fn h1_tls(s: &Stack, host: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let cfg = Arc::new(client_config(s.ca(), &["http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", s.gw.tls_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Read from `conn` until `want` has arrived or the connection ends (its
/// read timeout bounds each read); what arrived.
fn read_until(conn: &mut impl Read, want: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(want) {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Whether the peer closes `conn` (after what it still had to send) within
/// its read timeout.
fn closes(conn: &mut impl Read) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return !timed_out(&e),
        }
    }
}

/// Send each HTTP/2 request's first `sent` bytes of a `len`-byte body
/// ([`upload_body`]): the streams stay open (driven on `rt`) until
/// finished or dropped.
type H2Upload = (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>);

fn h2_start_uploads(
    rt: &tokio::runtime::Runtime,
    s: &Stack,
    n: usize,
    len: usize,
    sent: usize,
) -> (h2::client::SendRequest<bytes::Bytes>, Vec<H2Upload>) {
    h2_start_uploads_from(rt, s, "127.0.0.1", n, len, sent)
}

/// [`h2_start_uploads`] from another client: the loopback address `from`.
fn h2_start_uploads_from(
    rt: &tokio::runtime::Runtime,
    s: &Stack,
    from: &str,
    n: usize,
    len: usize,
    sent: usize,
) -> (h2::client::SendRequest<bytes::Bytes>, Vec<H2Upload>) {
    let open = async {
        let builder = h2::client::Builder::new();
        let mut client =
            e2e::tls::h2_connect_from(s.ca(), s.gw.tls_port, "ferrari.myapp.localhost", &builder, from).await;
        let mut uploads = Vec::new();
        for _ in 0..n {
            client = client.ready().await.unwrap();
            let req = ::http::Request::post("https://ferrari.myapp.localhost/upload")
                .header("content-length", len.to_string())
                .body(())
                .unwrap();
            let (response, mut stream) = client.send_request(req, false).unwrap();
            stream
                .send_data(bytes::Bytes::copy_from_slice(&upload_body(len)[..sent]), false)
                .unwrap();
            uploads.push((response, stream));
        }
        (client, uploads)
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), open).await })
        .expect("the HTTP/2 uploads start in time")
}

/// An HTTP/2 response's status and body, within 30 s.
fn h2_answer(rt: &tokio::runtime::Runtime, response: h2::client::ResponseFuture) -> (u16, String) {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), h2_read(response)).await })
        .expect("an HTTP/2 answer in time")
}

/// An HTTP/2 response's status and body, its window opened as it is read.
async fn h2_read(response: h2::client::ResponseFuture) -> (u16, String) {
    let (status, body, ended) = h2_page(response).await;
    ended.expect("body");
    (status, body)
}

#[test]
fn slow_request_bodies_are_read_whole_before_they_hold_a_backend_worker() {
    // Both tenants share one backend of two workers; a post holds its worker
    // until its whole body has come. Each tenant may have two requests in
    // flight to the backends. The slow clients' grace outlasts the test.
    let (backend, s) = on_two_workers("[limits]\nbody_rate_grace_ms = 120000\n[limits.tenant]\nmax_concurrent = 2\n");
    // A body that fits Pingora's own buffer (64 KiB), and one that does not.
    for (round, len) in [4096, (1 << 20) + 7].into_iter().enumerate() {
        slow_bodies_hold_no_worker(&backend, &s, len, 5 * round);
    }
}

/// Four clients send half of a `len`-byte body and stop, then finish; one
/// sends another on the same connection (`posts_before` posts reached the
/// backend already).
fn slow_bodies_hold_no_worker(backend: &FewWorkers, s: &Stack, len: usize, posts_before: usize) {
    let half = len / 2;
    let body = upload_body(len);
    // Two HTTP/1.1 clients (one waiting for `100 Continue` first, which the
    // gateway answers itself) and two HTTP/2 streams send half their body
    // and stop: with those streamed, the four would hold both workers.
    let mut slow = Vec::new();
    for expect in [false, true] {
        let mut tls = h1_tls(s, "ferrari.myapp.localhost");
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Length: {len}\r\n{}\r\n",
            if expect { "Expect: 100-continue\r\n" } else { "" }
        );
        tls.write_all(head.as_bytes()).unwrap();
        tls.flush().unwrap();
        if expect {
            let seen = read_until(&mut tls, "\r\n\r\n");
            assert!(seen.starts_with("HTTP/1.1 100 Continue\r\n"), "{seen:?}");
        }
        tls.write_all(&body[..half]).unwrap();
        tls.flush().unwrap();
        slow.push(tls);
    }
    let rt = driving_runtime();
    let (client, uploads) = h2_start_uploads(&rt, s, 2, len, half);
    wait_until("the gateway has the four requests", Duration::from_secs(15), || {
        s.metric("tenant_gateway_requests_in_flight", &[]) >= 4.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    // The other tenant is served by the same two workers meanwhile, and
    // none of the four posts has reached them; nor do they hold their own
    // tenant's in-flight cap: its other clients are served too.
    wait_until(
        "the other tenant served while four bodies wait",
        Duration::from_secs(15),
        || other_tenant_answers(s),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    let own = s
        .https()
        .get(&s.https_url("ferrari.myapp.localhost", "/"))
        .send()
        .unwrap();
    assert_eq!(
        (own.status, own.body.as_str()),
        (200, "ok"),
        "the slow clients' own tenant"
    );
    assert_eq!(
        backend.posts(),
        posts_before,
        "a post of {len} bytes reached the backend before its body was whole"
    );
    // Each client finishes: its whole body reaches the backend, exactly.
    let want = got(&body);
    let mut kept = None;
    for mut tls in slow {
        tls.write_all(&body[half..]).unwrap();
        tls.flush().unwrap();
        let answer = read_until(&mut tls, &want);
        assert!(answer.starts_with("HTTP/1.1 200 "), "{len}: {answer}");
        assert!(answer.ends_with(&format!("\r\n\r\n{want}")), "{len}: {answer}");
        kept.get_or_insert(tls);
    }
    // The next request on a kept-alive connection is read first afresh.
    let mut tls = kept.expect("a connection");
    let head = format!("POST /upload HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Length: {len}\r\n\r\n");
    tls.write_all(&[head.as_bytes(), &body].concat()).unwrap();
    tls.flush().unwrap();
    let answer = read_until(&mut tls, &want);
    assert!(
        answer.ends_with(&format!("\r\n\r\n{want}")),
        "{len}, kept alive: {answer}"
    );
    for (response, mut stream) in uploads {
        stream
            .send_data(bytes::Bytes::copy_from_slice(&body[half..]), true)
            .unwrap();
        assert_eq!(h2_answer(&rt, response), (200, want.clone()), "{len} over HTTP/2");
    }
    assert_eq!(backend.posts(), posts_before + 5);
    drop(client);
}

#[test]
fn a_large_body_that_comes_with_a_huge_head_gets_a_clean_answer() {
    // A body larger than Pingora's buffer that arrives whole in the read of
    // its head (only a head far larger grows that read so far) cannot be
    // handed on: 431, and nothing reaches the backend. Whether the reads
    // split it that way is up to the sockets (with this head, mostly;
    // `body::Reading`'s unit tests cover both): split otherwise, it is
    // read first and must arrive exactly. Plain HTTP (over TLS a read
    // brings a record at most).
    let backend = FewWorkers::start(2);
    let pools = pools_toml(&[("default", &[backend.port])]);
    let s = on_backend(backend.port, "redirect_http = false\n", pools, "");
    let len = 100_000;
    let body = upload_body(len);
    let pad = "p".repeat(700 << 10);
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nX-Pad: {pad}\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut tcp = TcpStream::connect(("127.0.0.1", s.gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(&request).unwrap();
    let want = got(&body);
    let mut answer = read_until(&mut tcp, "\r\n\r\n");
    if answer.starts_with("HTTP/1.1 431 ") {
        assert!(closes(&mut tcp), "the connection stays open after the 431");
        assert_eq!(
            backend.posts(),
            0,
            "a body that could not be handed on reached the backend"
        );
    } else {
        if !answer.contains(&want) {
            answer.push_str(&read_until(&mut tcp, &want));
        }
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}\n{}", s.gw.proc_.log());
        assert!(answer.ends_with(&want), "{answer}");
    }
    assert!(other_tenant_answers(&s), "the other tenant is served");
}

#[test]
fn an_upgrade_after_a_body_read_first_carries_the_upgraded_bytes_as_they_are() {
    // The body (larger than Pingora's buffer) reaches the backend whole,
    // once; after the 101, what the client sends goes on as sent.
    let (backend, s) = on_two_workers("");
    let body = upload_body(100_000);
    let mut tls = h1_tls(&s, "ferrari.myapp.localhost");
    let head = format!(
        "POST /upgrade HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(&[head.as_bytes(), &body].concat()).unwrap();
    tls.flush().unwrap();
    let answer = read_until(&mut tls, &format!("{}\n", got(&body)));
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}\n{}", s.gw.proc_.log());
    assert!(answer.ends_with(&format!("\r\n\r\n{}\n", got(&body))), "{answer}");
    for word in ["ping", "pong", "and more"] {
        tls.write_all(word.as_bytes()).unwrap();
        tls.flush().unwrap();
        let mut echo = vec![0u8; word.len()];
        tls.read_exact(&mut echo).unwrap();
        assert_eq!(String::from_utf8_lossy(&echo), word, "the upgraded bytes");
    }
    assert_eq!(backend.posts(), 1);
    assert!(other_tenant_answers(&s), "the other tenant is served");
}

#[test]
fn the_bodies_being_read_first_hold_at_most_their_budget() {
    // 1 MiB: sixteen bodies of 64 KiB, of which one client may hold four.
    let (backend, s) = on_two_workers(
        "[limits]\nbody_rate_grace_ms = 120000\nrequest_body_buffer_bytes = 65536\nrequest_body_buffer_total_mib = 1\n",
    );
    let rt = driving_runtime();
    // A client announcing five: four are read first; the fifth is streamed
    // as if it were large: it reaches the backend before its body is whole.
    let hostile = h2_start_uploads_from(&rt, &s, "127.0.0.2", 5, 65536, 100);
    wait_until(
        "its fifth body streamed past its share",
        Duration::from_secs(15),
        || backend.posts() == 1 && s.metric("tenant_gateway_request_bodies_over_budget_total", &[]) == 1.0,
    )
    .unwrap_or_else(|e| panic!("{e} ({} posts)\n{}", backend.posts(), s.gw.proc_.log()));
    // Three other clients' four each still fit: the budget holds the
    // sixteen, all of its bytes, and no more is streamed.
    let others: Vec<_> = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
        .iter()
        .map(|from| h2_start_uploads_from(&rt, &s, from, 4, 65536, 100))
        .collect();
    wait_until("sixteen bodies being read first", Duration::from_secs(15), || {
        s.metric("tenant_gateway_body_buffer_bytes", &[("kind", "request")]) == (1 << 20) as f64
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    assert_eq!(backend.posts(), 1, "a body within the budget was streamed");
    assert!(other_tenant_answers(&s), "the other tenant is served");
    // A fifth client's body finds the budget full: streamed.
    let fifth = h2_start_uploads_from(&rt, &s, "127.0.0.6", 1, 65536, 100);
    wait_until("a body streamed past the full budget", Duration::from_secs(15), || {
        backend.posts() == 2 && s.metric("tenant_gateway_request_bodies_over_budget_total", &[]) == 2.0
    })
    .unwrap_or_else(|e| panic!("{e} ({} posts)\n{}", backend.posts(), s.gw.proc_.log()));
    drop((hostile, others, fifth));
}

#[test]
fn bodies_announced_large_hold_half_the_budget_and_small_ones_keep_the_rest() {
    // 2 MiB: bodies over 64 KiB may hold 1 MiB of it.
    let (backend, s) = on_two_workers(
        "[limits]\nbody_rate_grace_ms = 120000\nrequest_body_buffer_bytes = 1048576\nrequest_body_buffer_total_mib = 2\n",
    );
    let rt = driving_runtime();
    // Two clients announce a body of 1 MiB each and send 100 bytes of it:
    // the first holds that half, the second is streamed (a client may hold
    // 1 MiB here, so only the half refuses it).
    let large = h2_start_uploads(&rt, &s, 1, 1 << 20, 100);
    wait_until("the first large body being read", Duration::from_secs(15), || {
        s.metric("tenant_gateway_body_buffer_bytes", &[("kind", "request")]) == (1 << 20) as f64
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    let second = h2_start_uploads_from(&rt, &s, "127.0.0.3", 1, 1 << 20, 100);
    wait_until("the second large body streamed", Duration::from_secs(15), || {
        backend.posts() == 1 && s.metric("tenant_gateway_request_bodies_over_budget_total", &[]) == 1.0
    })
    .unwrap_or_else(|e| panic!("{e} ({} posts)\n{}", backend.posts(), s.gw.proc_.log()));
    // Sixteen bodies of 64 KiB (another client's: one client may hold half
    // of this budget) still fit the other half: all read first.
    let (small_client, small) = h2_start_uploads_from(&rt, &s, "127.0.0.2", 16, 65536, 100);
    wait_until("the small bodies being read", Duration::from_secs(15), || {
        s.metric("tenant_gateway_body_buffer_bytes", &[("kind", "request")]) == (2 << 20) as f64
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    assert_eq!(backend.posts(), 1, "a small body was streamed");
    assert_eq!(s.metric("tenant_gateway_request_bodies_over_budget_total", &[]), 1.0);
    drop((large, second, small, small_client));
}

#[test]
fn a_request_body_that_stops_is_answered_408_and_never_reaches_the_backend() {
    // A body read first must keep 1,000 B/s after 1 s of grace: ten bytes
    // buy 10 ms more.
    let (backend, s) = on_two_workers("[limits]\nmin_body_rate = 1000\nbody_rate_grace_ms = 1000\n");
    let head = b"POST /upload HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Length: 2000\r\n\r\n";
    // HTTP/1.1: ten bytes of the body, then nothing.
    let sent = Instant::now();
    let mut tls = h1_tls(&s, "ferrari.myapp.localhost");
    tls.write_all(&[&head[..], b"0123456789"].concat()).unwrap();
    tls.flush().unwrap();
    // HTTP/2 likewise (no connection deadline watches a stream's bytes: the
    // gateway holds it to the rate while it reads the body first).
    let rt = driving_runtime();
    let (client, mut uploads) = h2_start_uploads(&rt, &s, 1, 2000, 10);
    // The gateway's own page, with the request id to trace it by.
    let answer = read_until(&mut tls, "</html>");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}\n{}", s.gw.proc_.log());
    assert!(
        answer.to_ascii_lowercase().contains("\r\nx-request-id: ") && answer.contains("Request timeout"),
        "{answer}"
    );
    // Not before the grace and what the ten bytes buy (counted from the
    // head's arrival).
    assert!(sent.elapsed() >= Duration::from_millis(1010), "{:?}", sent.elapsed());
    assert!(closes(&mut tls), "the connection stays open after the 408");
    let (response, held) = uploads.remove(0);
    assert_eq!(h2_answer(&rt, response).0, 408);
    // HTTP/1.1 trickled below the rate: cut by the connection's rate (as a
    // streamed body is, with no answer) or the read's (408), whichever
    // sees it first.
    let mut slow = h1_tls(&s, "ferrari.myapp.localhost");
    slow.sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let (_, seen) = trickle(&mut slow, head, Instant::now(), Duration::from_secs(15));
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.is_empty() || seen.starts_with("HTTP/1.1 408 "), "{seen}");
    assert_eq!(backend.posts(), 0, "a stopped body reached the backend");
    wait_until("both counted, as the tenant's too", Duration::from_secs(10), || {
        s.metric("tenant_gateway_deadline_hits_total", &[("kind", "body_rate")]) >= 2.0
            && s.metric(
                "tenant_gateway_tenant_rejected_total",
                &[("tenant", "ferrari"), ("reason", "request_timeout")],
            ) >= 2.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    assert!(other_tenant_answers(&s), "the other tenant is served");
    drop((held, client, tls));
}

/// A backend that holds each request for `/hold` for `hold` before
/// answering (or until the gateway closes its connection), counting the
/// requests it holds at once and the most it ever held; anything else is
/// answered at once.
struct Holder {
    port: u16,
    open: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests received (health checks aside).
    received: Arc<std::sync::atomic::AtomicUsize>,
}

impl Holder {
    fn start(hold: Duration) -> Holder {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let received = Arc::new(AtomicUsize::new(0));
        let (o, p, r) = (open.clone(), peak.clone(), received.clone());
        let port = serve_each(move |mut conn| {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let Some(head) = read_request_head(&mut conn) else {
                return;
            };
            // Short reads from here: each one looks whether the
            // gateway has hung up.
            let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
            let mut buf = [0u8; 1024];
            if head.starts_with(b"GET /hold") || head.starts_with(b"POST /hold") {
                let now = o.fetch_add(1, SeqCst) + 1;
                p.fetch_max(now, SeqCst);
                r.fetch_add(1, SeqCst);
                let start = Instant::now();
                let mut gone = false;
                while start.elapsed() < hold && !gone {
                    gone = matches!(conn.read(&mut buf), Ok(0));
                }
                o.fetch_sub(1, SeqCst);
                if gone {
                    return;
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        });
        Holder {
            port,
            open,
            peak,
            received,
        }
    }
}

/// Send `n` requests for `/hold` on one HTTP/2 connection, resetting each
/// stream at once, or (`reached`: the backend's count of requests) once its
/// request has reached the backend. How many were sent before the
/// connection ended, and why it ended (empty: it did not).
fn h2_reset_streams(s: &Stack, n: usize, reached: Option<&std::sync::atomic::AtomicUsize>) -> (usize, String) {
    use std::sync::atomic::Ordering::SeqCst;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send = async move {
        let mut client = h2_connect(s.ca(), s.gw.tls_port, "ferrari.myapp.localhost").await;
        for sent in 0..n {
            client = match client.ready().await {
                Ok(c) => c,
                Err(e) => return (sent, e.to_string()),
            };
            let req = ::http::Request::get("https://ferrari.myapp.localhost/hold")
                .body(())
                .unwrap();
            let before = reached.map(|r| r.load(SeqCst));
            let (response, mut stream) = match client.send_request(req, false) {
                Ok(x) => x,
                Err(e) => return (sent, e.to_string()),
            };
            if let (Some(reached), Some(before)) = (reached, before) {
                while reached.load(SeqCst) == before {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
        }
        (n, String::new())
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), send).await })
        .expect("the HTTP/2 streams are sent in time")
}

#[test]
fn an_http2_client_resetting_its_streams_leaves_no_work_at_the_backend() {
    use std::sync::atomic::Ordering::SeqCst;
    // Each request reaching the backend is held there for 3 s, unless the
    // gateway hangs up.
    let backend = Holder::start(Duration::from_secs(3));
    let s = Stack::builder()
        .apps(0)
        .tls("")
        .pools(pools_toml(&[("default", &[backend.port])]))
        .start();
    s.gw.wait_backend("default", backend.port, true, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    // "Rapid reset": streams opened and reset at once, as fast as the
    // client can. The h2 layer ends the connection once too many resets of
    // streams not yet accepted pile up (on a fast enough client); what was
    // accepted is given up.
    let (sent, ended) = h2_reset_streams(&s, 3_000, None);
    assert!(
        sent == 3_000 || ended.contains("too_many_resets"),
        "the connection ended otherwise after {sent} streams: {ended}"
    );
    // Streams reset once their request reached the backend: each backend
    // request is closed as its stream goes, so the backend never holds
    // more than a few, however many the client opens (without that, all
    // 300 would be held for 3 s, past the 100 streams the connection may
    // have open at once).
    let (later, ended) = h2_reset_streams(&s, 300, Some(&backend.received));
    assert_eq!(later, 300, "{ended}");
    let peak = backend.peak.load(SeqCst);
    assert!(
        peak <= 50,
        "the backend held {peak} requests at once (rapid reset: {sent} sent)"
    );
    wait_until("every backend request closed", Duration::from_secs(10), || {
        backend.open.load(SeqCst) == 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    // The other tenant is served as usual.
    assert!(other_tenant_answers(&s), "the other tenant is served");
}

/// Both tenants' pool: the backend on `port`, whose answers the gateway
/// waits for `read_timeout_ms`. Returns once the backend is healthy.
fn on_backend_with_read_timeout(port: u16, read_timeout_ms: u64) -> Stack {
    let pools = pools_toml(&[("default", &[port])]).replace(
        "connect_timeout_ms = 500\n",
        &format!("connect_timeout_ms = 500\nread_timeout_ms = {read_timeout_ms}\n"),
    );
    on_backend(port, "", pools, "")
}

/// HTTP/1 request bodies have a minimum rate (tested above); an HTTP/2
/// stream's body too large to be read first (over
/// `request_body_buffer_bytes`, 8 MiB), or without a length, is not read through the
/// connection's deadlines, and
/// Pingora sets no timeout on it. What bounds a stream whose body stops is
/// the pool's read timeout: the backend answers nothing while it waits for
/// the body, so the gateway gives up on it (504) and closes its connection.
#[test]
fn an_http2_request_body_that_stops_holds_its_backend_only_until_the_read_timeout() {
    use std::sync::atomic::Ordering::SeqCst;
    let backend = Holder::start(Duration::from_secs(60));
    let s = on_backend_with_read_timeout(backend.port, 2000);
    let rt = driving_runtime();
    // 10 bytes of a 9,000,000-byte body, then of a body without a length
    // (streamed too), then nothing (the stream stays open).
    for (n, length) in [Some("9000000"), None].into_iter().enumerate() {
        let (response, held) = rt.block_on(async {
            let mut client = h2_connect(s.ca(), s.gw.tls_port, "ferrari.myapp.localhost").await;
            client = client.ready().await.unwrap();
            let mut req = ::http::Request::post("https://ferrari.myapp.localhost/hold");
            if let Some(length) = length {
                req = req.header("content-length", length);
            }
            let (response, mut stream) = client.send_request(req.body(()).unwrap(), false).unwrap();
            stream
                .send_data(bytes::Bytes::from_static(b"0123456789"), false)
                .unwrap();
            (response, (client, stream))
        });
        wait_until("the request at the backend", Duration::from_secs(10), || {
            backend.received.load(SeqCst) == n + 1
        })
        .unwrap();
        // Meanwhile the other tenant is served by the same backend.
        assert!(other_tenant_answers(&s), "the other tenant is served");
        let status = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), response).await })
            .expect("an answer within the read timeout and a margin")
            .expect("a response")
            .status();
        assert_eq!(status, 504, "length {length:?}");
        wait_until("the backend connection closed", Duration::from_secs(10), || {
            backend.open.load(SeqCst) == 0
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
        drop(held);
    }
}

/// An HTTP/2 body streamed to its backend (no length: never read first) is
/// held to `limits.min_body_rate` as its parts come. Pingora's read timeout
/// on the backend restarts with every part the client sends, so before, a
/// byte every half second held the backend's connection (a worker of a
/// sync app server) for as long as the client went on. Now, once the grace
/// is over and the body is short of the rate, it is answered 408 and the
/// backend's connection closed, long before the read timeout (60 s here).
#[test]
fn an_http2_body_streamed_below_the_minimum_rate_is_cut_and_frees_its_backend() {
    use std::sync::atomic::Ordering::SeqCst;
    let backend = Holder::start(Duration::from_secs(120));
    let pools = pools_toml(&[("default", &[backend.port])]).replace(
        "connect_timeout_ms = 500\n",
        "connect_timeout_ms = 500\nread_timeout_ms = 60000\n",
    );
    let s = on_backend(
        backend.port,
        "",
        pools,
        "[limits]\nmin_body_rate = 1000\nbody_rate_grace_ms = 2000\n",
    );
    let rt = driving_runtime();
    let start = Instant::now();
    let (status, held) = rt.block_on(async {
        let mut client = h2_connect(s.ca(), s.gw.tls_port, "ferrari.myapp.localhost").await;
        client = client.ready().await.unwrap();
        let req = ::http::Request::post("https://ferrari.myapp.localhost/hold")
            .body(())
            .unwrap();
        let (response, mut stream) = client.send_request(req, false).unwrap();
        stream
            .send_data(bytes::Bytes::from_static(b"0123456789"), false)
            .unwrap();
        tokio::pin!(response);
        // A byte every half second until the answer (at most 40 s).
        let status = loop {
            tokio::select! {
                r = &mut response => break r.map(|r| r.status().as_u16()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    assert!(start.elapsed() < Duration::from_secs(40), "no answer while the body trickled");
                    let _ = stream.send_data(bytes::Bytes::from_static(b"x"), false);
                }
            }
        };
        (status, (client, stream))
    });
    assert_eq!(status.expect("a response"), 408);
    assert_eq!(backend.received.load(SeqCst), 1, "the request reached the backend");
    wait_until("the backend connection closed", Duration::from_secs(10), || {
        backend.open.load(SeqCst) == 0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    assert!(
        s.metric("tenant_gateway_deadline_hits_total", &[("kind", "body_rate")]) >= 1.0,
        "counted"
    );
    assert!(other_tenant_answers(&s), "the other tenant is served");
    drop(held);
}

/// One HTTP/1.1 response framed by its `Content-Length`: its head and body
/// (what arrived, if the connection ended or a read timed out first).
fn read_sized_response(conn: &mut impl Read) -> (String, Vec<u8>) {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = None;
    loop {
        if end.is_none() {
            end = seen.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        }
        if let Some(at) = end {
            if seen.len() >= at + content_length(&seen[..at]) {
                break;
            }
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    split_head(seen)
}

/// A message as read: its head (up to the blank line) and what follows.
fn split_head(mut seen: Vec<u8>) -> (String, Vec<u8>) {
    let at = seen
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(seen.len(), |i| i + 4);
    let body = seen.split_off(at);
    (String::from_utf8_lossy(&seen).into_owned(), body)
}

/// Ask for `GET <path>` on a new HTTP/1.1 connection and read nothing yet.
fn h1_ask(s: &Stack, path: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut tls = h1_tls(s, "ferrari.myapp.localhost");
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\n\r\n").as_bytes())
        .unwrap();
    tls.flush().unwrap();
    tls
}

/// Wait (30 s) until the backend has written `n` large responses whole;
/// past that, fail with what was written and held, and the gateway's log.
fn wait_large_sent(backend: &FewWorkers, s: &Stack, n: usize, what: &str) {
    wait_until(what, Duration::from_secs(30), || backend.large_sent() == n).unwrap_or_else(|e| {
        panic!(
            "{e} ({} written, {} held)\n{}",
            backend.large_sent(),
            s.metric("tenant_gateway_response_bodies_held_total", &[]),
            s.gw.proc_.log()
        )
    });
}

#[test]
fn large_responses_are_taken_whole_so_slow_readers_hold_no_backend_worker() {
    // Both tenants share one backend of two workers; a response holds its
    // worker until its last byte is written. Each tenant may have four
    // requests in flight to the backends. The one client here may hold a
    // quarter of the response budget: four bodies of 32 MiB.
    let (backend, s) = on_two_workers(&format!(
        "{HOLD_LARGE}response_body_buffer_total_mib = 512\n[limits.tenant]\nmax_concurrent = 4\n"
    ));
    // Two HTTP/1.1 connections and two HTTP/2 streams (with a 1 MiB window;
    // browsers open larger ones; a client whose window takes not even the
    // first reads holds the worker until the send timeout, as a streamed
    // body does)
    // ask for a large response and read none of it: streamed, the first
    // two would hold both workers until the send timeout (60 s) and the
    // rest wait.
    let unread: Vec<_> = (0..2).map(|_| h1_ask(&s, "/large")).collect();
    let rt = driving_runtime();
    let streams = h2_unread_streams(
        &rt,
        s.ca(),
        s.gw.tls_port,
        ("ferrari.myapp.localhost", "/large"),
        2,
        Some(1 << 20),
    );
    wait_large_sent(
        &backend,
        &s,
        4,
        "the backend wrote all four large responses while no client read",
    );
    assert!(other_tenant_answers(&s), "the other tenant is served");
    // So is the readers' own tenant: a response taken whole holds no slot
    // of its cap (the four unread ones would fill it).
    wait_until("the readers' own tenant served", Duration::from_secs(10), || {
        answers(&s, "ferrari.myapp.localhost")
    })
    .unwrap();
    assert_eq!(s.metric("tenant_gateway_response_bodies_held_total", &[]), 4.0);
    // Each reader then gets its whole body, byte for byte.
    let want = large_body();
    for mut tls in unread {
        let (head, body) = read_sized_response(&mut tls);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(body == want, "an HTTP/1.1 body of {} bytes differs", body.len());
    }
    // The streams share their connection's window: read together.
    let want = String::from_utf8(want).unwrap();
    let reads: Vec<_> = streams.responses.into_iter().map(|r| rt.spawn(h2_read(r))).collect();
    for read in reads {
        let (status, body) = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), read).await })
            .unwrap_or_else(|_| panic!("an HTTP/2 answer in time\n{}", s.gw.proc_.log()))
            .unwrap();
        assert_eq!(status, 200);
        assert!(body == want, "an HTTP/2 body of {} bytes differs", body.len());
    }
}

#[test]
fn a_large_response_after_100_continue_is_held_too() {
    let (backend, s) = on_two_workers(HOLD_LARGE);
    // The gateway reads the small body first and says `100 Continue`
    // itself: the response's head comes after that one.
    let mut tls = h1_tls(&s, "ferrari.myapp.localhost");
    tls.write_all(
        b"POST /large HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    tls.flush().unwrap();
    let seen = read_until(&mut tls, "\r\n\r\n");
    assert!(seen.starts_with("HTTP/1.1 100 Continue\r\n"), "{seen:?}");
    tls.write_all(b"hello").unwrap();
    tls.flush().unwrap();
    // Read none of the response: the backend still writes it whole.
    wait_large_sent(
        &backend,
        &s,
        1,
        "the large response written while the client reads nothing",
    );
    let (head, body) = read_sized_response(&mut tls);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body == large_body(), "a body of {} bytes differs", body.len());
}

#[test]
fn streamed_responses_are_not_held() {
    let (backend, s) = on_workers(3, "");
    // A body without a length reaches the client part by part.
    let mut chunked = h1_ask(&s, "/stream/chunked");
    let seen = read_until(&mut chunked, "first part;");
    assert!(
        seen.starts_with("HTTP/1.1 200 ") && seen.trim_end().ends_with("first part;"),
        "{seen}\n{}",
        s.gw.proc_.log()
    );
    // Neither it nor a body whose backend says `X-Accel-Buffering: no` is
    // held; a body with a length alone is. (Pingora itself writes a
    // response with a length to an HTTP/1.1 client when its write buffer
    // fills or the body ends, so held or not the client sees none of these
    // early.)
    let mut unbuffered = h1_ask(&s, "/stream/unbuffered");
    let mut sized = h1_ask(&s, "/stream/sized");
    wait_until("the backend sent each first part", Duration::from_secs(15), || {
        backend.streams() == 3
    })
    .unwrap();
    backend.release();
    let rest = read_until(&mut chunked, "\r\n0\r\n\r\n");
    assert!(rest.contains(" the rest"), "{rest:?}\n{}", s.gw.proc_.log());
    let (first, rest) = stream_body();
    for tls in [&mut unbuffered, &mut sized] {
        let (head, body) = read_sized_response(tls);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(String::from_utf8_lossy(&body), format!("{first}{rest}"));
    }
    assert_eq!(s.metric("tenant_gateway_response_bodies_held_total", &[]), 1.0);
}

#[test]
fn the_response_bodies_held_hold_at_most_their_budget() {
    // A budget of one large response.
    let (backend, s) = on_two_workers(&format!("{HOLD_LARGE}response_body_buffer_total_mib = 32\n"));
    let unread: Vec<_> = (0..2).map(|_| h1_ask(&s, "/large")).collect();
    // One is held; the other is streamed, its worker held by its reader.
    wait_until("one response held, one streamed", Duration::from_secs(30), || {
        backend.large_sent() == 1
            && s.metric("tenant_gateway_response_bodies_held_total", &[]) == 1.0
            && s.metric("tenant_gateway_response_bodies_over_budget_total", &[]) == 1.0
    })
    .unwrap_or_else(|e| panic!("{e} ({} written)\n{}", backend.large_sent(), s.gw.proc_.log()));
    assert!(
        other_tenant_answers(&s),
        "the other tenant is served by the free worker"
    );
    let in_use = || s.metric("tenant_gateway_body_buffer_bytes", &[("kind", "response")]);
    assert_eq!(in_use(), LARGE as f64, "the held body's share, as scraped");
    let want = large_body();
    for mut tls in unread {
        let (head, body) = read_sized_response(&mut tls);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(body == want, "a body of {} bytes differs", body.len());
    }
    wait_until(
        "the streamed one written whole too, the share given back",
        Duration::from_secs(15),
        || backend.large_sent() == 2 && in_use() == 0.0,
    )
    .unwrap();
}

/// Read a response until the gateway ends the connection (its read
/// timeout, 30 s, bounds each read): the head, the body and whether the
/// connection ended cleanly (EOF after TLS's close) rather than by an
/// error or a timeout.
fn read_until_closed(conn: &mut impl Read) -> (String, Vec<u8>, bool) {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let (head, body) = split_head(seen);
    (head, body, closed)
}

#[test]
fn a_response_its_backend_stops_sending_ends_short_and_nothing_else_is_read_as_its_body() {
    // The backend sends a response's head and part of its body, then
    // nothing for longer than the pool's read timeout (1 s).
    let backend = FewWorkers::start(3);
    let s = on_backend_with_read_timeout(backend.port, 1000);
    let (first, rest) = stream_body();
    let streamed = format!("{first}{rest}");
    let stalled = ".".repeat(2 * STALL_SENT);
    // HTTP/1.1, a streamed body and one the gateway was holding: the head
    // comes, the body stops short of its length, and the connection ends
    // within the read timeout; no error page follows the head.
    for (path, whole) in [("/stream/unbuffered", &streamed), ("/stream/stalls", &stalled)] {
        let asked = Instant::now();
        let mut tls = h1_ask(&s, path);
        let (head, body, closed) = read_until_closed(&mut tls);
        assert!(
            head.starts_with("HTTP/1.1 200 "),
            "{path}: {head}\n{}",
            s.gw.proc_.log()
        );
        assert!(closed && asked.elapsed() < Duration::from_secs(20), "{path}: not ended");
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.len() < whole.len() && whole.starts_with(&*body),
            "{path}: a body of {} bytes, not a prefix of the backend's: {:?}",
            body.len(),
            &body[..body.len().min(200)]
        );
        // What the gateway had written of a streamed body went out.
        if path == "/stream/unbuffered" {
            assert_eq!(body, first, "{path}");
        }
    }
    assert_eq!(s.metric("tenant_gateway_response_bodies_held_total", &[]), 1.0);
    // HTTP/2 (a window large enough for the first reads): the held
    // stream is reset, not ended as if its body were whole.
    let rt = driving_runtime();
    let mut streams = h2_unread_streams(
        &rt,
        s.ca(),
        s.gw.tls_port,
        ("ferrari.myapp.localhost", "/stream/stalls"),
        1,
        Some(4 << 20),
    );
    let response = streams.responses.remove(0);
    let (got, ended) = rt.block_on(async {
        let read = async {
            let mut body = response.await.expect("a response head").into_body();
            let mut got = 0;
            loop {
                match body.data().await {
                    Some(Ok(chunk)) => {
                        got += chunk.len();
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    Some(Err(e)) if e.is_reset() => return (got, "reset".to_string()),
                    Some(Err(e)) => return (got, format!("{e}")),
                    None => return (got, "ended cleanly".to_string()),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("the stream ends in time")
    });
    assert!(got < 2 * STALL_SENT && ended == "reset", "{got} bytes, {ended}");
    assert_eq!(s.metric("tenant_gateway_response_bodies_held_total", &[]), 2.0);
    // The workers, let go of, serve the other tenant.
    backend.release();
    wait_until("the other tenant served", Duration::from_secs(15), || {
        other_tenant_answers(&s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
}

#[test]
fn a_log_nobody_reads_stops_no_tenant_and_logging_resumes_once_read() {
    // The gateway's output goes to a FIFO this test reads only when told:
    // a log collector that stopped (a blocked Docker log driver, a stuck
    // journald pipe). Once the pipe's 64 KiB are full, a write blocks.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("gateway.log");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    let read = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let reader = {
        let (read, fifo) = (read.clone(), fifo.clone());
        std::thread::spawn(move || {
            let mut log = std::fs::File::open(&fifo).expect("open the FIFO");
            // Told to read, or the test is over (then the gateway must be
            // able to write its last lines and stop).
            let _ = wait.recv();
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n @ 1..) = log.read(&mut buf) {
                read.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let s = Stack::builder().log_file(&fifo).env("LOG_BUFFER_LINES", "256").start();
    // An access line is ~300 bytes: 2,000 requests write ten times what
    // the pipe, the writer's buffer and 256 waiting lines hold. Every one
    // is answered, for its own tenant, though none of their lines can be
    // written (each bounded by the client's 10 s timeout).
    let started = Instant::now();
    for _ in 0..1000 {
        for (host, tenant) in [
            ("ferrari.myapp.localhost", "ferrari"),
            ("mclaren.myapp.localhost", "mclaren"),
        ] {
            let who = s.whoami(host, &[("X-Tenant", "mclaren")]);
            assert_eq!(who["tenant"], tenant, "{who}");
        }
    }
    let spent = started.elapsed();
    let dropped = s.metric("tenant_gateway_log_lines_dropped_total", &[]);
    assert!(dropped >= 1000.0, "dropped {dropped} lines");
    assert!(
        read.lock().unwrap().is_empty(),
        "the test read the log before it was told to"
    );
    // Read again: the lines written from then on arrive.
    go.send(()).unwrap();
    let marker = format!("/after-the-stall-{}", std::process::id());
    wait_until("the access line after the stall", Duration::from_secs(20), || {
        let _ = s.get("mclaren.myapp.localhost", &marker, &[]);
        String::from_utf8_lossy(&read.lock().unwrap()).contains(&marker)
    })
    .unwrap();
    let log = String::from_utf8_lossy(&read.lock().unwrap()).into_owned();
    assert!(log.contains("gateway starting"), "lines from before the stall are kept");
    // The log says lines went missing (it looks every 10 s).
    wait_until("the line about the dropped ones", Duration::from_secs(30), || {
        String::from_utf8_lossy(&read.lock().unwrap()).contains("log lines dropped")
    })
    .unwrap();
    drop(s);
    reader.join().unwrap();
    eprintln!("2,000 requests in {spent:?} with the log stalled, {dropped} lines dropped");
}
