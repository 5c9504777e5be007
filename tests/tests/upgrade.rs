//! Zero-downtime upgrade: under continuous HTTP and HTTPS load for two
//! tenants, a new gateway process takes the listening sockets over
//! (`gateway --upgrade`, then SIGQUIT to the old one) while the old one
//! drains. No request may fail and no connection may be refused; a
//! WebSocket on the old process ends with a close frame.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::tls::https_client;
use e2e::*;

#[test]
fn an_upgrade_under_load_fails_no_request_and_refuses_no_connection() {
    let mut s = Stack::builder().apps(1).tls("redirect_http = false\n").grace(3).start();
    let (pg, ca) = (&s.pg, s.ca().to_path_buf());
    let old = &mut s.gw;
    let (port, tls_port) = (old.port, old.tls_port);

    // A WebSocket on the old process.
    let mut ws = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    ws::upgrade(&mut ws, "ferrari.myapp.localhost").unwrap();
    assert_eq!(ws::round_trip(&mut ws, "hi").unwrap(), "ferrari: hi");

    // Continuous load: a new connection per request, HTTP and HTTPS, both tenants.
    let stop = Arc::new(AtomicBool::new(false));
    let load = |tls: bool| {
        let (stop, ca) = (stop.clone(), ca.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let tenant = if i.is_multiple_of(2) { "ferrari" } else { "mclaren" };
                let host = format!("{tenant}.myapp.localhost");
                i += 1;
                let result = if tls {
                    https_client(&ca, tls_port, &[&host], &["http/1.1"])
                        .get(&format!("https://{host}:{tls_port}/whoami"))
                        .header("connection", "close")
                        .send()
                        .map(|r| (r.status, r.body))
                        .map_err(|e| e.to_string())
                } else {
                    raw_http(
                        port,
                        format!("GET /whoami HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
                    )
                    .map_err(|e| e.to_string())
                };
                match result {
                    Ok((200, body)) if body.contains(&format!("\"tenant\":\"{tenant}\"")) => ok += 1,
                    other => failed.push(format!("{host}: {other:?}")),
                }
            }
            (ok, failed)
        })
    };
    let (plain, secure) = (load(false), load(true));
    wait_until("load is flowing", Duration::from_secs(10), || {
        old.metric("tenant_gateway_tenant_requests_total") >= 20.0
    })
    .unwrap();

    // The upgrade: the new process waits for the sockets, the old one hands them over.
    let mut new = old.upgrade(&pg.url()).unwrap();
    // A SIGHUP (a reload sent to the whole service) reaching the new
    // process while it waits for the sockets does not end it.
    new.signal("HUP");
    old.proc_.signal("QUIT");
    // The WebSocket on the old process ends with a close frame (1001).
    let mut frame = [0u8; 4];
    ws.read_exact(&mut frame).unwrap();
    assert_eq!(frame, [0x88, 0x02, 0x03, 0xE9]);
    wait_until("the old process exits", Duration::from_secs(60), || {
        old.proc_.exited().is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", old.proc_.log()));
    // The new process serves on the same ports.
    let served_before = new_requests(&new);
    wait_until("the new process serves", Duration::from_secs(10), || {
        new_requests(&new) >= served_before + 20
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", new.log()));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (name, t) in [("http", plain), ("https", secure)] {
        let (ok, failed) = t.join().unwrap();
        assert!(
            failed.is_empty(),
            "{name}: {} of {} failed: {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(5)]
        );
        total += ok;
    }
    eprintln!("{total} requests across the upgrade, none failed");
    assert!(total >= 40, "too little load to say anything: {total}");
    new.log_when("socket taken over", Duration::from_secs(10), |log| {
        log.contains("listening socket taken over")
    });
    new.terminate(Duration::from_secs(15));
}

/// Access-log lines of the new process.
fn new_requests(p: &Proc) -> usize {
    p.log().matches(" access: ").count()
}

/// A new process that cannot start (here: its certificate file holds no
/// certificate, which only loading it finds) exits before it waits for the
/// sockets: the running gateway is never told to hand them over
/// (`scripts/upgrade.sh` sends SIGQUIT only once the new one waits) and
/// goes on serving. Before, it took the sockets first and then failed,
/// leaving nothing listening.
#[test]
fn an_upgrade_that_cannot_start_takes_no_socket() {
    let mut s = Stack::builder().apps(1).tls("redirect_http = false\n").start();
    let dir = s.gw.dir.path().to_path_buf();
    let bad = write_file(&dir, "bad.pem", "not a certificate\n");
    let config = dir.join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let wildcard = text
        .split('"')
        .find(|part| part.ends_with("wildcard.pem"))
        .expect("the config names wildcard.pem")
        .to_owned();
    std::fs::write(&config, text.replace(&wildcard, &bad.display().to_string())).unwrap();
    let mut new = Proc::spawn(
        "gateway-upgraded",
        s.gw.cli_command(&s.pg.url(), &["--upgrade"]),
        dir.join("gateway-upgraded.log"),
    )
    .unwrap();
    wait_until("the new process exits", Duration::from_secs(30), || {
        new.exited().is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", new.log()));
    assert!(!new.exited().unwrap().success(), "{}", new.log());
    assert!(new.log().contains("tls.certificates"), "{}", new.log());
    assert!(!dir.join("upgrade.sock").exists(), "it waited for the sockets");
    let r = s
        .https()
        .get(&s.https_url("ferrari.myapp.localhost", "/whoami"))
        .send()
        .unwrap();
    assert_eq!(r.json()["tenant"], "ferrari");
    s.gw.proc_.terminate(Duration::from_secs(15));
}
