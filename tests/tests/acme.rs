//! ACME against Debian's Pebble on loopback: custom domains get certificates
//! without restarts (HTTP-01 and TLS-ALPN-01), even a name refused on a
//! stale cache entry while its NOTIFY arrives (and one removed mid-order has
//! the certificate its order stored retired), two gateways place exactly one
//! order, the guard never orders for unknown or suspended names, tenants
//! under one public suffix do not share an order limit, one tenant's many
//! domains get only its share of the order budget, a scan stalled on the
//! database does not hold back the order a handshake asks for, renewal
//! survives the CA being down, stored certificates survive restarts with
//! their keys encrypted, many names at once queue for order slots while
//! every challenge is still answered, and a gateway stopping mid-order (a
//! stalled CA) frees its lease for the fleet.

use std::time::Duration;

use e2e::tls::{dev_certs, https_client, probe, probe_from};
use e2e::*;

const CUSTOM: &str = "www.ferrari-cars.test";

fn tenants(pg: &Postgres) {
    app_cli_ok(&pg.url(), &["migrate"]);
    create_tenant(&pg.url(), "ferrari", &["ferrari.myapp.localhost"]);
    create_tenant(&pg.url(), "mclaren", &["mclaren.myapp.localhost"]);
}

/// `[acme]` pointing at `pebble` (and the operator API on).
/// `acme_extra`: more `[acme]` keys, one per line.
fn acme_config(pebble: &Pebble, challenges: &str, acme_extra: &str) -> String {
    format!(
        "[acme]\nenabled = true\ndirectory_url = \"{}\"\nca_root = \"{}\"\ncontact = [\"mailto:ops@myapp.localhost\"]\n\
         challenges = [{challenges}]\ncheck_interval_secs = 1\nretry_base_secs = 1\nretry_max_secs = 3\non_demand_timeout_ms = 8000\n\
         {acme_extra}[admin]\ntoken_env = \"TG_ADMIN_TOKEN\"\n",
        pebble.directory(),
        pebble.directory_ca().display(),
    )
}

/// The stack on `pg` (set up by the test) with one upstream-app, TLS with
/// the development certificates in `certs` (which `pebble` uses too) and
/// ACME against `pebble`, on `ports` (which `pebble` validates against).
fn acme_stack_on(
    pg: Postgres,
    certs: tempfile::TempDir,
    ports: GatewayPorts,
    pebble: &Pebble,
    challenges: &str,
    acme_extra: &str,
) -> Stack {
    Stack::for_pebble(pg, certs, ports, &acme_config(pebble, challenges, acme_extra))
}

/// The stack and Pebble validating against its gateway's own ports.
/// Fields drop in order: the gateway stops before Pebble.
struct AcmeStack {
    s: Stack,
    pebble: Pebble,
}

fn acme_stack(pg: Postgres, challenges: &str) -> AcmeStack {
    acme_stack_with(pg, challenges, "")
}

fn acme_stack_with(pg: Postgres, challenges: &str, acme_extra: &str) -> AcmeStack {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let ports = GatewayPorts::free();
    let pebble = Pebble::start(certs.path(), ports.http, ports.tls, 3600).unwrap();
    let s = acme_stack_on(pg, certs, ports, &pebble, challenges, acme_extra);
    AcmeStack { s, pebble }
}

/// Wait until `name` is served by `gw` with a certificate that chains to
/// Pebble's current root, then fetch through it and land on `tenant`.
fn wait_issued_for(pebble: &Pebble, gw: &Gateway, name: &str, tenant: &str, timeout: Duration) {
    let tls_port = gw.tls_port;
    wait_until(&format!("certificate for {name}"), timeout, || {
        probe(tls_port, Some(name), &["http/1.1"]).is_ok_and(|p| p.names == [name])
    })
    .unwrap_or_else(|e| panic!("{e}\nPebble log:\n{}\nGateway log:\n{}", pebble.log(), gw.proc_.log()));
    let root = pebble.issuing_root().unwrap();
    let client = https_client(&root, tls_port, &[name], &["http/1.1"]);
    let r = client
        .get(&format!("https://{name}:{tls_port}/whoami"))
        .send()
        .expect("verified HTTPS to the issued certificate");
    assert_eq!(r.json()["tenant"], tenant);
}

/// Wait until the one stored certificate is no longer the one whose chain
/// has MD5 `old_chain`, and the new one is served for [`CUSTOM`].
fn wait_renewed(st: &AcmeStack, old_chain: &str) {
    wait_until("renewed certificate stored", Duration::from_secs(60), || {
        st.s.pg
            .psql("SELECT md5(chain_pem) FROM tenant_gateway.certificates")
            .is_ok_and(|m| m != old_chain)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", st.s.gw.proc_.log()));
    wait_issued(&st.pebble, &st.s.gw, CUSTOM, Duration::from_secs(20));
}

/// Wait (a minute) until `name`'s stored certificate row matches
/// `condition` (SQL), whatever handshakes `gw` saw.
fn wait_stored(pg: &Postgres, gw: &Gateway, name: &str, condition: &str) {
    wait_until(
        &format!("{name}'s certificate stored, {condition}"),
        Duration::from_secs(60),
        || {
            pg.psql(&format!(
                "SELECT count(*) FROM tenant_gateway.certificates WHERE name = '{name}' AND {condition}"
            ))
            .is_ok_and(|n| n == "1")
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc_.log()));
}

/// [`wait_issued_for`] the tenant of [`CUSTOM`].
fn wait_issued(pebble: &Pebble, gw: &Gateway, name: &str, timeout: Duration) {
    wait_issued_for(pebble, gw, name, "ferrari", timeout);
}

fn issue_on_domain_add(challenges: &str) {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let st = acme_stack(pg, challenges);
    assert!(
        probe(st.s.ports.tls, Some(CUSTOM), &[]).is_err(),
        "no certificate before the domain exists"
    );
    // The tenant adds a custom domain: no restart, the gateway gets a certificate.
    app_cli_ok(&st.s.pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    wait_issued(&st.pebble, &st.s.gw, CUSTOM, Duration::from_secs(60));
    assert_eq!(orders(&st.s.pg), 1);
    st.s.gw
        .wait_logged("certificate issued and stored", 0, Duration::from_secs(10));
    let metrics = st.s.gw.scrape().unwrap();
    assert_eq!(
        metric_sum(
            &metrics,
            "tenant_gateway_acme_orders_total",
            &[("name", CUSTOM), ("result", "issued")]
        ),
        1.0
    );
    // The operator API explains the custom domain: its tenant, its ACME
    // certificate and order state.
    let (status, v) = st.s.gw.api(
        e2e::http::Method::GET,
        &format!("explain?host={CUSTOM}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tenant"]["schema"], "ferrari", "{v}");
    assert_eq!(v["certificate"]["names"], serde_json::json!([CUSTOM]), "{v}");
    assert!(v["certificate"]["days_left"].as_i64().is_some(), "{v}");
    assert_eq!(v["acme"]["eligible"], true, "{v}");
    assert_eq!(v["acme"]["order"]["failures"], 0, "{v}");
}

/// The stack on `pg` with lookups stripping `www.`, ACME against a Pebble
/// of its own, and `[custom_domains]` without claims asking Pebble's DNS
/// (which answers every name with 127.0.0.1 unless told otherwise) whether
/// a `www.` name points here; `extra`: more of its keys, one per line.
fn www_stack(pg: Postgres, extra: &str) -> AcmeStack {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let ports = GatewayPorts::free();
    let pebble = Pebble::start(certs.path(), ports.http, ports.tls, 3600).unwrap();
    let config = format!(
        "strip_www = true\n{}[custom_domains]\nverification = \"none\"\nresolver = \"127.0.0.1:{}\"\n{extra}",
        acme_config(&pebble, "\"http-01\"", ""),
        pebble.dns().port
    );
    let s = Stack::for_pebble(pg, certs, ports, &config);
    AcmeStack { s, pebble }
}

/// With lookups stripping `www.` (`tenant.strip_www`, the django-tenants
/// preset's default), `www.` of a custom domain is served as the domain is:
/// its first handshake orders a certificate of its own, retired with the
/// domain (in memory or not) and serving again when it returns.
#[test]
fn www_of_a_custom_domain_gets_its_own_certificate_when_lookups_strip_it() {
    const BARE: &str = "ferrari-cars.test";
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    app_cli_ok(&pg.url(), &["domain", "add", BARE, "--tenant", "ferrari"]);
    // `www.` of it is ordered only once the DNS says it exists (the test
    // DNS answers every name).
    // Bound Pebble first, so the gateway is dropped (stopped) before it.
    let AcmeStack { pebble, mut s } = www_stack(pg, "");
    wait_issued(&pebble, &s.gw, CUSTOM, Duration::from_secs(60));
    wait_issued(&pebble, &s.gw, BARE, Duration::from_secs(60));
    assert_eq!(orders(&s.pg), 2);
    // Presented here: retired, and no longer presented.
    app_cli_ok(&s.pg.url(), &["domain", "remove", BARE]);
    wait_stored(&s.pg, &s.gw, CUSTOM, "removed_at IS NOT NULL");
    wait_until("www. not presented", Duration::from_secs(10), || {
        probe(s.gw.tls_port, Some(CUSTOM), &[]).is_err()
    })
    .unwrap();
    // Back: both serve again, without new orders.
    app_cli_ok(&s.pg.url(), &["domain", "add", BARE, "--tenant", "ferrari"]);
    wait_stored(&s.pg, &s.gw, CUSTOM, "removed_at IS NULL");
    wait_issued(&pebble, &s.gw, CUSTOM, Duration::from_secs(30));
    // Not in memory (a gateway started since): retired all the same.
    s.restart_gateway();
    app_cli_ok(&s.pg.url(), &["domain", "remove", BARE]);
    wait_stored(&s.pg, &s.gw, CUSTOM, "removed_at IS NOT NULL");
    assert!(probe(s.gw.tls_port, Some(CUSTOM), &[]).is_err(), "www. not served");
    assert_eq!(orders(&s.pg), 2);
}

/// A client cannot make the gateway order for `www.` names that do not
/// point here: with lookups stripping `www.`, `www.` of every served name
/// is served, and each handshake for one asked for an order that failed at
/// the CA and was then retried for ever, each try spending the tenant's,
/// the domain's and the fleet's order budgets (a client going through a
/// CT log's names could hold every tenant's first certificates back). Now
/// the DNS must say it points here (`cname_addresses` here) before it is
/// ordered; the name itself, and a `www.` that does point here, are.
#[test]
fn a_handshake_for_a_www_name_pointing_elsewhere_orders_nothing() {
    const BARE: &str = "ferrari-cars.test";
    const ELSEWHERE: &str = "www.mclaren-cars.test";
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    app_cli_ok(&pg.url(), &["domain", "add", BARE, "--tenant", "ferrari"]);
    app_cli_ok(
        &pg.url(),
        &["domain", "add", "mclaren-cars.test", "--tenant", "mclaren"],
    );
    let AcmeStack { pebble, s } = www_stack(pg, "cname_addresses = [\"127.0.0.1\"]\n");
    // The customer's www. is hosted elsewhere.
    pebble.dns().set_a(ELSEWHERE, &["127.0.0.2"]);
    wait_issued_for(&pebble, &s.gw, "mclaren-cars.test", "mclaren", Duration::from_secs(60));
    wait_issued(&pebble, &s.gw, BARE, Duration::from_secs(60));
    // Handshakes for it: refused at once (no order to wait for).
    for _ in 0..2 {
        let started = std::time::Instant::now();
        assert!(probe(s.gw.tls_port, Some(ELSEWHERE), &[]).is_err(), "no certificate");
        assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    }
    // One whose order failed before (the retries scan takes it up at its
    // next attempt time): looked at, held back, not ordered.
    const FAILED: &str = CUSTOM;
    pebble.dns().set_a(FAILED, &["127.0.0.2"]);
    s.pg.psql(&format!(
        "INSERT INTO tenant_gateway.acme_names (name, failures, last_error, next_attempt_at)
         VALUES ('{FAILED}', 1, 'an earlier order failed', now())"
    ))
    .unwrap();
    wait_until("the failed www. name held back", Duration::from_secs(30), || {
        s.pg.psql(&format!(
            "SELECT last_error FROM tenant_gateway.acme_names WHERE name = '{FAILED}'"
        ))
        .is_ok_and(|e| e == "not eligible")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    s.gw.wait_logged("does not point here", 0, Duration::from_secs(5));
    wait_scans(&[&s.gw], 3);
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM tenant_gateway.acme_orders WHERE name LIKE 'www.%'")
            .unwrap(),
        "0"
    );
    // Pointed here, it is ordered at its first handshake once a change to
    // its domain clears the hold.
    pebble.dns().clear_a(FAILED);
    s.pg.psql(&format!("SELECT pg_notify('tenant_gateway', '[\"{BARE}\"]')"))
        .unwrap();
    wait_issued(&pebble, &s.gw, FAILED, Duration::from_secs(30));
    assert_eq!(orders(&s.pg), 3);
}

#[test]
fn custom_domain_gets_a_certificate_via_http_01() {
    issue_on_domain_add("\"http-01\"");
}

#[test]
fn custom_domain_gets_a_certificate_via_tls_alpn_01() {
    issue_on_domain_add("\"tls-alpn-01\"");
}

/// A name refused while its domain row arrives is still ordered. The
/// scan finds the new row before the gateway has heard of it (its NOTIFY
/// not yet applied), so the attempt asks a cache that still remembers the
/// name as unknown and holds the name back; the NOTIFY then arrives while
/// that attempt is writing the hold. The change's own attempt must not be
/// swallowed by the one running, nor be held back by its stale refusal:
/// the certificate is ordered with no handshake asking for it.
#[test]
fn a_name_refused_while_its_domain_row_arrives_is_still_ordered() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    // The unknown name stays negatively cached until its NOTIFY (the
    // lines after `[acme]`'s own keys start a table of their own).
    let st = acme_stack_with(pg, "\"http-01\"", "[tenant.cache]\nnegative_ttl_secs = 600\n");
    let (pg, gw) = (&st.s.pg, &st.s.gw);
    wait_scans(&[gw], 1);
    // Cached as unknown (the gateway started with its invalidation
    // listener up, so no first LISTEN clears it): a second handshake's
    // negative hit shows it.
    assert!(probe(gw.tls_port, Some(CUSTOM), &[]).is_err(), "unknown");
    let hits = gw.metric("tenant_gateway_cache_negative_hits_total");
    assert!(probe(gw.tls_port, Some(CUSTOM), &[]).is_err(), "unknown");
    assert!(gw.metric("tenant_gateway_cache_negative_hits_total") > hits);
    // The name's ACME row, held by an open transaction: the refusal's
    // write waits on it.
    pg.psql(&format!(
        "INSERT INTO tenant_gateway.acme_names (name) VALUES ('{CUSTOM}')"
    ))
    .unwrap();
    let mut holder = OpenTransaction::begin(
        &pg.url(),
        &format!("SELECT 1 FROM tenant_gateway.acme_names WHERE name = '{CUSTOM}' FOR UPDATE"),
    );
    // The domain row, its NOTIFY not sent (as if delayed).
    pg.psql(&format!(
        "SET session_replication_role = replica;
         INSERT INTO public.domains (domain, tenant_id)
         SELECT '{CUSTOM}', id FROM public.tenants WHERE schema_name = 'ferrari'"
    ))
    .unwrap();
    pg.wait_until_blocked_by(&holder, "the scan's attempt writing its refusal");
    // The NOTIFY arrives while that attempt runs.
    let since = gw.log_len();
    pg.psql(&format!("SELECT pg_notify('tenant_gateway', '[\"{CUSTOM}\"]')"))
        .unwrap();
    gw.wait_logged("the name changed during its attempt", since, Duration::from_secs(20));
    holder.execute("COMMIT");
    // Stored without any handshake asking for it, then served.
    wait_stored(pg, gw, CUSTOM, "true");
    wait_issued(&st.pebble, gw, CUSTOM, Duration::from_secs(20));
    assert_eq!(orders(pg), 1);
}

/// A scan stalled on the database does not hold back the order a
/// handshake asks for: with the scan's first write blocked (its sealing-key
/// row behind an operator's lock, which lets reads through), a handshake
/// for a new name whose NOTIFY never came still gets its certificate
/// within its own wait (8 s). The scan ran inside the loop that starts the
/// attempts handshakes ask for, so that order started only once the
/// scan's step gave up (10 s), after the handshake had ended without it.
#[test]
fn a_scan_stalled_on_the_database_does_not_hold_back_an_order_a_handshake_asks_for() {
    const NAME: &str = "late.ferrari-cars.test";
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let st = acme_stack_with(pg, "\"http-01\"", "");
    let (pg, gw) = (&st.s.pg, &st.s.gw);
    wait_scans(&[gw], 1);
    // The domain row, its NOTIFY not sent: only a handshake (or the next
    // full scan) finds it.
    pg.psql(&format!(
        "SET session_replication_role = replica;
         INSERT INTO public.domains (domain, tenant_id)
         SELECT '{NAME}', id FROM public.tenants WHERE schema_name = 'ferrari'"
    ))
    .unwrap();
    let mut lock = OpenTransaction::begin(&pg.url(), "LOCK TABLE tenant_gateway.sealing_keys IN SHARE MODE");
    pg.wait_until_blocked_by(&lock, "a scan waiting to record its sealing key");
    let started = std::time::Instant::now();
    let first = probe(gw.tls_port, Some(NAME), &["http/1.1"]);
    assert!(
        first.as_ref().is_ok_and(|p| p.names == [NAME]),
        "the first handshake after {:?}: {:?}\n{}",
        started.elapsed(),
        first.map(|p| p.names),
        gw.proc_.log()
    );
    lock.execute("ROLLBACK");
    wait_issued(&st.pebble, gw, NAME, Duration::from_secs(20));
    assert_eq!(orders(pg), 1);
}

/// A name removed while its order is under way: the removal's NOTIFY
/// finds nothing stored to retire, then the order completes and stores a
/// certificate for a name no longer served (storing makes it live). The
/// change is looked at again when the attempt ends: that certificate is
/// retired on every gateway, not presented until it expires.
#[test]
fn a_name_removed_during_its_order_is_retired_when_the_order_ends() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let st = acme_stack(pg, "\"http-01\"");
    let (pg, gw) = (&st.s.pg, &st.s.gw);
    wait_scans(&[gw], 1);
    // The order's log row waits on this lock: the attempt is under way.
    let mut held = OpenTransaction::begin(&pg.url(), "LOCK TABLE tenant_gateway.acme_orders IN EXCLUSIVE MODE");
    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    pg.wait_until_blocked_by(&held, "the attempt logging its order");
    let since = gw.log_len();
    app_cli_ok(&pg.url(), &["domain", "remove", CUSTOM]);
    gw.wait_logged("the name changed during its attempt", since, Duration::from_secs(5));
    assert!(
        !gw.proc_.log().contains("attempt failed"),
        "the attempt's blocked step outlived its deadline (QUERY_DEADLINE, 10 s): the test was too slow\n{}",
        gw.proc_.log()
    );
    held.execute("COMMIT");
    // Stored, then retired.
    wait_stored(pg, gw, CUSTOM, "removed_at IS NOT NULL");
    assert_eq!(orders(pg), 1);
    wait_until("not presented", Duration::from_secs(10), || {
        probe(gw.tls_port, Some(CUSTOM), &[]).is_err()
    })
    .unwrap();
}

#[test]
fn a_failing_challenge_type_falls_back_to_the_next() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let ports = GatewayPorts::free();
    // Pebble's TLS-ALPN-01 validation goes to a port nobody listens on.
    let pebble = Pebble::start(certs.path(), ports.http, free_port(), 3600).unwrap();
    let s = acme_stack_on(pg, certs, ports, &pebble, "\"tls-alpn-01\", \"http-01\"", "");
    let (pg, gw) = (&s.pg, &s.gw);
    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    wait_issued(&pebble, gw, CUSTOM, Duration::from_secs(60));
    gw.proc_
        .log_when("line of the failed challenge", Duration::from_secs(10), |log| {
            log.contains("order failed with this challenge") && log.contains("TlsAlpn01")
        });
    assert_eq!(orders(pg), 1, "the fallback is part of the same order attempt");
}

/// Tenants under one public suffix never share the per-domain order limit
/// (one tenant's burst of domains cannot hold back another's), while one
/// tenant's names under its own registrable domain do share it.
#[test]
fn order_limit_is_per_registrable_domain_not_per_public_suffix() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let st = acme_stack_with(pg, "\"http-01\"", "orders_per_domain_per_week = 1\n");
    app_cli_ok(
        &st.s.pg.url(),
        &["domain", "add", "shop.ferrari.co.uk", "--tenant", "ferrari"],
    );
    wait_issued_for(
        &st.pebble,
        &st.s.gw,
        "shop.ferrari.co.uk",
        "ferrari",
        Duration::from_secs(60),
    );
    // Another tenant under the same public suffix has a limit of its own.
    app_cli_ok(
        &st.s.pg.url(),
        &["domain", "add", "www.mclaren.co.uk", "--tenant", "mclaren"],
    );
    wait_issued_for(
        &st.pebble,
        &st.s.gw,
        "www.mclaren.co.uk",
        "mclaren",
        Duration::from_secs(60),
    );
    // The first tenant's second name under ferrari.co.uk is over its limit.
    app_cli_ok(
        &st.s.pg.url(),
        &["domain", "add", "eu.ferrari.co.uk", "--tenant", "ferrari"],
    );
    st.s.gw
        .wait_logged("1 orders for ferrari.co.uk this week", 0, Duration::from_secs(30));
    assert_eq!(orders(&st.s.pg), 2, "no order for the held-back name");
}

/// One tenant cannot spend the fleet's order budget: mclaren's four new
/// domains (each under its own registrable domain, as throwaway domains
/// would be) get two orders, its share (`orders_per_tenant_per_hour = 2`),
/// though they ask at once on four order slots; ferrari's domain, added
/// after, still gets its certificate within the fleet's budget of three.
/// Without the share, mclaren's names took all three orders and ferrari's
/// waited for the next hour.
#[test]
fn one_tenants_many_domains_do_not_spend_another_tenants_orders() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let st = acme_stack_with(
        pg,
        "\"http-01\"",
        "orders_per_hour = 3\norders_per_tenant_per_hour = 2\n",
    );
    let (pg, gw) = (&st.s.pg, &st.s.gw);
    let theirs: Vec<String> = (0..4).map(|i| format!("shop.mclaren{i}.test")).collect();
    for name in &theirs {
        app_cli_ok(&pg.url(), &["domain", "add", name, "--tenant", "mclaren"]);
    }
    let held_back = || {
        pg.psql(
            "SELECT count(*) FROM tenant_gateway.acme_names
              WHERE name LIKE 'shop.mclaren%' AND last_error LIKE '%acme.orders_per_tenant_per_hour%'",
        )
        .unwrap_or_default()
    };
    wait_until(
        "mclaren's share used and the rest held back",
        Duration::from_secs(60),
        || {
            held_back() == "2"
                && pg
                    .psql("SELECT count(*) FROM tenant_gateway.certificates WHERE name LIKE 'shop.mclaren%'")
                    .is_ok_and(|n| n == "2")
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc_.log()));
    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    wait_issued(&st.pebble, gw, CUSTOM, Duration::from_secs(60));
    assert_eq!(
        pg.psql("SELECT tenant, count(*) FROM tenant_gateway.acme_orders GROUP BY tenant ORDER BY tenant")
            .unwrap(),
        "ferrari|1\nmclaren|2"
    );
    gw.wait_logged("orders for tenant mclaren in the last hour", 0, Duration::from_secs(5));
}

/// One tenant's orders that take their whole deadline do not hold every
/// order slot: with two slots, mclaren's two new names' attempts stall
/// (their lease rows held by an open transaction, as a slow database or a
/// CA that never answers would hold them, each for its 10 s step
/// deadline, again at every retry); ferrari's name, added while they
/// stall, takes the slot mclaren's share leaves and is issued at once.
/// Without the share both slots were mclaren's and ferrari's order waited
/// for one of them to give up.
#[test]
fn one_tenants_stalled_orders_leave_order_slots_to_another_tenant() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let st = acme_stack_with(pg, "\"http-01\"", "max_concurrent_orders = 2\n");
    let (pg, gw) = (&st.s.pg, &st.s.gw);
    wait_scans(&[gw], 1);
    let theirs = ["shop.mclaren-one.test", "shop.mclaren-two.test"];
    pg.psql(&format!(
        "INSERT INTO tenant_gateway.acme_names (name) VALUES ('{}'), ('{}')",
        theirs[0], theirs[1]
    ))
    .unwrap();
    let mut holder = OpenTransaction::begin(
        &pg.url(),
        &format!(
            "SELECT 1 FROM tenant_gateway.acme_names WHERE name IN ('{}', '{}') FOR UPDATE",
            theirs[0], theirs[1]
        ),
    );
    for name in theirs {
        app_cli_ok(&pg.url(), &["domain", "add", name, "--tenant", "mclaren"]);
    }
    // Both of mclaren's attempts have come for a slot (running or waiting
    // for their share), and one is stalled in its lease.
    wait_until("mclaren's two attempts at the slots", Duration::from_secs(30), || {
        gw.metric("tenant_gateway_acme_orders_in_progress") + gw.metric("tenant_gateway_acme_orders_waiting") >= 2.0
    })
    .unwrap();
    pg.wait_until_blocked_by(&holder, "mclaren's attempt stalled in its lease");
    let added = std::time::Instant::now();
    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    wait_issued(&st.pebble, gw, CUSTOM, Duration::from_secs(8));
    let took = added.elapsed();
    holder.execute("ROLLBACK");
    for name in theirs {
        wait_issued_for(&st.pebble, gw, name, "mclaren", Duration::from_secs(60));
    }
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn two_gateways_place_one_order_and_both_serve_it() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let (a_ports, b_ports) = (GatewayPorts::free(), GatewayPorts::free());
    // Pebble validates against gateway B only: when A holds the order, B answers from the database.
    let pebble = Pebble::start(certs.path(), b_ports.http, b_ports.tls, 3600).unwrap();
    let s = acme_stack_on(pg, certs, a_ports, &pebble, "\"http-01\"", "");
    let b = s.gateway().ports(b_ports).start().unwrap();
    let (pg, a, app) = (&s.pg, &s.gw, &s.apps[0]);
    // Either gateway answers a pending HTTP-01 challenge from the database.
    pg.psql("INSERT INTO tenant_gateway.acme_challenges (kind, key, name, key_authorization) VALUES ('http-01', 'tok_en-1', 'x.test', 'tok_en-1.thumb')").unwrap();
    for gw in [a, &b] {
        let (status, resp) = raw_http(
            gw.port,
            "GET /.well-known/acme-challenge/tok_en-1 HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(status, 200, "{resp}");
        assert!(resp.ends_with("tok_en-1.thumb"), "{resp}");
        let (status, _) = raw_http(
            gw.port,
            "GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(status, 404);
        // Not a token: answered 404 by the gateway, never passed to a backend.
        let (status, _) = raw_http(
            gw.port,
            "GET /.well-known/acme-challenge/../../whoami HTTP/1.1\r\nHost: ferrari.myapp.localhost\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(status, 404);
    }
    assert!(
        !app.proc_.log().contains("whoami"),
        "a challenge path reached the backend"
    );
    pg.psql("DELETE FROM tenant_gateway.acme_challenges").unwrap();

    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    wait_issued(&pebble, &b, CUSTOM, Duration::from_secs(60));
    wait_issued(&pebble, a, CUSTOM, Duration::from_secs(10));
    // Both gateways scan a few more times: still exactly one order.
    wait_scans(&[a, &b], 3);
    let logs = || format!("{}{}", a.proc_.log(), b.proc_.log());
    assert_eq!(orders(pg), 1, "exactly one order for a new domain across the fleet");
    let ordered_by: String = pg.psql("SELECT gateway FROM tenant_gateway.acme_orders").unwrap();
    assert_eq!(
        logs().matches("ACME: ordering a certificate").count(),
        1,
        "ordered by {ordered_by}"
    );
}

#[test]
fn unknown_and_suspended_names_never_cause_an_order() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    create_tenant(&pg.url(), "paused", &["paused.myapp.localhost"]);
    app_cli_ok(&pg.url(), &["domain", "add", "shop.paused.test", "--tenant", "paused"]);
    app_cli_ok(&pg.url(), &["tenant", "suspend", "paused"]);
    let st = acme_stack(pg, "\"http-01\"");
    let seed: u32 = rand::random();
    for i in 0..1000u32 {
        let name = format!("r{:x}.evil-{i}.example", seed.wrapping_add(i));
        assert!(
            probe(st.s.ports.tls, Some(&name), &[]).is_err(),
            "{name} got a certificate"
        );
    }
    for _ in 0..5 {
        assert!(probe(st.s.ports.tls, Some("shop.paused.test"), &[]).is_err());
        // Names under the base domain use the wildcard, never an order.
        assert!(probe(st.s.ports.tls, Some("ferrari.myapp.localhost"), &[]).is_ok());
    }
    // A few scan cycles pass, still nothing ordered.
    wait_scans(&[&st.s.gw], 3);
    assert_eq!(orders(&st.s.pg), 0, "{}", st.s.gw.proc_.log());
    assert_eq!(
        st.s.pg.psql("SELECT count(*) FROM tenant_gateway.acme_names").unwrap(),
        "0"
    );
    // A forced renewal of such a name: the API refuses it; one made by the
    // CLI (which cannot ask the guard) is held back like any refused name,
    // not attempted again at every scan.
    let (status, v) = st.s.gw.api(
        e2e::http::Method::POST,
        "certs/renew?name=shop.paused.test",
        Some(ADMIN_TOKEN),
    );
    assert_eq!((status, v["error"].as_str()), (409, Some("not_eligible")), "{v}");
    st.s.gw.cli(&st.s.pg.url(), &["acme", "renew", "shop.paused.test"]);
    let held = "SELECT count(*) FROM tenant_gateway.acme_names WHERE name = 'shop.paused.test' \
                AND force_renew AND last_error = 'not eligible' AND next_attempt_at > now() + interval '30 minutes'";
    wait_until("the forced name held back", Duration::from_secs(30), || {
        st.s.pg.psql(held).is_ok_and(|n| n == "1")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", st.s.gw.proc_.log()));
    let stamp = || {
        st.s.pg
            .psql("SELECT updated_at FROM tenant_gateway.acme_names WHERE name = 'shop.paused.test'")
            .unwrap()
    };
    let first = stamp();
    wait_scans(&[&st.s.gw], 2);
    assert_eq!(stamp(), first, "the held-back name was attempted again");
    assert_eq!(orders(&st.s.pg), 0);
}

#[test]
fn renewal_survives_the_ca_being_down_and_restarts_order_nothing() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    let mut st = acme_stack(pg, "\"http-01\"");
    // Start-up finds the domain without a certificate and orders one.
    wait_issued(&st.pebble, &st.s.gw, CUSTOM, Duration::from_secs(60));
    let first =
        st.s.pg
            .psql("SELECT md5(chain_pem) FROM tenant_gateway.certificates")
            .unwrap();

    // Keys at rest are not plaintext.
    assert_eq!(
        st.s.pg
            .psql(
                "SELECT count(*) FROM tenant_gateway.certificates WHERE encode(key_enc, 'escape') LIKE '%PRIVATE KEY%'"
            )
            .unwrap(),
        "0"
    );
    assert_eq!(
        st.s.pg.psql(
            "SELECT count(*) FROM tenant_gateway.acme_accounts WHERE encode(credentials_enc, 'escape') LIKE '%key%'"
        )
        .unwrap(),
        "0"
    );

    // Restart: the stored certificate is served at once, no new order.
    let before = orders(&st.s.pg);
    st.s.restart_gateway();
    assert_eq!(probe(st.s.ports.tls, Some(CUSTOM), &[]).unwrap().names, [CUSTOM]);
    wait_scans(&[&st.s.gw], 3);
    assert_eq!(orders(&st.s.pg), before, "a restart must not order again");

    // The CA goes away; an operator forces a renewal; it fails and backs off
    // while the old certificate keeps being served.
    st.pebble.stop_pebble();
    let renew = &st.s.gw.cli(&st.s.pg.url(), &["acme", "renew", CUSTOM]);
    assert!(renew.contains("renewal of www.ferrari-cars.test requested"), "{renew}");
    wait_until("two failed attempts", Duration::from_secs(30), || {
        st.s.pg
            .psql(&format!(
                "SELECT failures FROM tenant_gateway.acme_names WHERE name = '{CUSTOM}'"
            ))
            .is_ok_and(|f| f.parse::<i32>().unwrap_or(0) >= 2)
    })
    .unwrap();
    let status = &st.s.gw.cli(&st.s.pg.url(), &["acme", "status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with(CUSTOM))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains("failing") && line.contains("next retry") && line.contains("serving the certificate"),
        "{line}"
    );
    // Every attempt that ended is recorded: an order row without a result
    // belongs to a live lease (an attempt still running), nothing else.
    assert_eq!(
        st.s.pg
            .psql(
                "SELECT count(*) FROM tenant_gateway.acme_orders o WHERE o.result IS NULL AND NOT EXISTS
               (SELECT 1 FROM tenant_gateway.acme_names n WHERE n.name = o.name AND n.lease_until > now())"
            )
            .unwrap(),
        "0"
    );
    assert_eq!(
        probe(st.s.ports.tls, Some(CUSTOM), &[]).unwrap().names,
        [CUSTOM],
        "old certificate must keep serving"
    );
    assert_eq!(
        st.s.pg
            .psql("SELECT md5(chain_pem) FROM tenant_gateway.certificates")
            .unwrap(),
        first
    );
    // Each failure was a real attempt, spaced by the back-off (base 1 s, ±50 % jitter).
    let failed: i32 =
        st.s.pg
            .psql("SELECT count(*) FROM tenant_gateway.acme_orders WHERE result = 'failed'")
            .unwrap()
            .parse()
            .unwrap();
    assert!(failed >= 2);
    let spread: f64 = st.s.pg
        .psql("SELECT extract(epoch FROM max(started_at) - min(started_at)) FROM tenant_gateway.acme_orders WHERE result = 'failed'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        spread >= 0.5 * f64::from(failed - 1),
        "{failed} failures within {spread} s: no back-off"
    );

    // The CA returns: the renewal goes through and the new certificate is served.
    st.pebble.start_pebble().unwrap();
    wait_renewed(&st, &first);
    let status = &st.s.gw.cli(&st.s.pg.url(), &["acme", "status"]);
    let line = status.lines().find(|l| l.starts_with(CUSTOM)).unwrap();
    assert!(line.contains("valid"), "{line}");
}

/// Rotating `TG_CERT_KEY` in place (docs/operations.md): with the new key
/// sealing and the old one only opening, the stored certificate is served
/// and the account used without a new order; `gateway acme rekey` re-seals
/// both (a dry run only counts; a second pass finds nothing; the old key
/// alone opens neither afterwards); with the old key gone the certificate is
/// still served and a forced renewal uses the stored account.
#[test]
fn the_certificate_key_rotates_in_place_without_new_certificates() {
    const NEW: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const UNRELATED: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    // Sealed with the test environment's TG_CERT_KEY (CERT_KEY_HEX).
    let mut st = acme_stack(pg, "\"http-01\"");
    wait_issued(&st.pebble, &st.s.gw, CUSTOM, Duration::from_secs(60));
    let sealed = |pg: &Postgres| {
        pg.psql(
            "SELECT (SELECT md5(key_enc) || ' ' || md5(chain_pem) FROM tenant_gateway.certificates)
                 || ' ' || (SELECT md5(credentials_enc) FROM tenant_gateway.acme_accounts)",
        )
        .unwrap()
    };
    let before = sealed(&st.s.pg);
    assert_eq!(orders(&st.s.pg), 1);

    // The new key seals, the old one only opens.
    let rotated = |b: GatewayBuilder, old: &str| {
        b.edit_config(
            "[acme]\nenabled = true\n",
            "[acme]\nenabled = true\ndecrypt_key_envs = [\"TG_CERT_KEY_OLD\"]\n",
        )
        .env("TG_CERT_KEY", NEW)
        .env("TG_CERT_KEY_OLD", old)
    };
    st.s.restart_gateway_as(|b| rotated(b, CERT_KEY_HEX));
    wait_issued(&st.pebble, &st.s.gw, CUSTOM, Duration::from_secs(20));
    wait_scans(&[&st.s.gw], 3);
    assert_eq!(orders(&st.s.pg), 1, "the stored certificate opened with the old key");
    let rekey = |args: &[&str], key: &str, old: &str| {
        let out =
            st.s.gw
                .cli_output_env(&st.s.pg.url(), args, &[("TG_CERT_KEY", key), ("TG_CERT_KEY_OLD", old)]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // A dry run counts the certificate key and the account, changes nothing
    // and fails: there is work to do.
    let (ok, out) = rekey(&["acme", "rekey", "--dry-run"], NEW, CERT_KEY_HEX);
    assert!(!ok && out.contains("to re-seal with acme.key_env's key: 2"), "{out}");
    assert_eq!(sealed(&st.s.pg), before);
    // A pass is refused while a gateway sealed with the old key lately
    // (the one before the restart, live for minutes), and with a key no
    // gateway seals with (a mistyped one); nothing changes.
    let (ok, out) = rekey(&["acme", "rekey"], NEW, CERT_KEY_HEX);
    assert!(!ok && out.contains("a gateway sealed with another key lately"), "{out}");
    let (ok, out) = rekey(&["acme", "rekey"], UNRELATED, NEW);
    assert!(
        !ok && out.contains("no gateway has sealed with acme.key_env's key"),
        "{out}"
    );
    assert_eq!(sealed(&st.s.pg), before);
    // The old key's gateway long gone: the running one records its own
    // again at its next scan (the second to start has the first done), and
    // the pass goes.
    st.s.pg
        .psql("UPDATE tenant_gateway.sealing_keys SET live_until = now() - interval '1 second'")
        .unwrap();
    wait_scans(&[&st.s.gw], 2);
    let (ok, out) = rekey(&["acme", "rekey"], NEW, CERT_KEY_HEX);
    assert!(
        ok && out.contains("re-sealed with acme.key_env's key: 2") && out.contains("complete"),
        "{out}"
    );
    let after = sealed(&st.s.pg);
    let (key_before, rest_before) = before.split_once(' ').unwrap();
    let (key_after, rest_after) = after.split_once(' ').unwrap();
    assert_ne!(key_before, key_after, "the certificate key was re-sealed");
    let (chain_before, account_before) = rest_before.split_once(' ').unwrap();
    let (chain_after, account_after) = rest_after.split_once(' ').unwrap();
    assert_eq!(chain_before, chain_after, "the same certificate");
    assert_ne!(account_before, account_after, "the account was re-sealed");
    // Re-sealing notifies no gateway (nothing to reload); a change a gateway
    // reads does.
    let notifies = |set: &str| {
        st.s.pg
            .psql(&format!(
                "LISTEN tenant_gateway_certs; UPDATE tenant_gateway.certificates SET {set}"
            ))
            .unwrap()
            .contains("Asynchronous notification")
    };
    assert!(!notifies("key_enc = key_enc"));
    assert!(notifies("renew_after = renew_after"));
    let (ok, out) = rekey(&["acme", "rekey"], NEW, CERT_KEY_HEX);
    assert!(
        ok && out.contains("re-sealed with acme.key_env's key: 0") && out.contains("already sealed with it: 2"),
        "{out}"
    );
    // The old key alone opens neither any more; the pass says which.
    let (ok, out) = rekey(&["acme", "rekey", "--dry-run"], CERT_KEY_HEX, UNRELATED);
    assert!(!ok && out.contains("opened by no configured key: 2"), "{out}");
    assert!(out.contains(&format!("cert:{CUSTOM}")), "{out}");
    assert_eq!(sealed(&st.s.pg), after);

    // The old key gone: the certificate is served, nothing is ordered, and
    // a forced renewal orders with the stored account.
    st.s.restart_gateway_as(|b| b.env("TG_CERT_KEY_OLD", UNRELATED));
    wait_issued(&st.pebble, &st.s.gw, CUSTOM, Duration::from_secs(20));
    wait_scans(&[&st.s.gw], 3);
    assert_eq!(orders(&st.s.pg), 1);
    let renew = st.s.gw.cli_output_env(
        &st.s.pg.url(),
        &["acme", "renew", CUSTOM],
        &[("TG_CERT_KEY", NEW), ("TG_CERT_KEY_OLD", UNRELATED)],
    );
    assert!(renew.status.success(), "{}", String::from_utf8_lossy(&renew.stderr));
    wait_renewed(&st, chain_after);
    let log = st.s.gw.proc_.log();
    assert!(
        !log.contains("account created") && !log.contains("decryption failed"),
        "{log}"
    );
    assert_eq!(
        st.s.pg
            .psql("SELECT md5(credentials_enc) FROM tenant_gateway.acme_accounts")
            .unwrap(),
        account_after,
        "the re-sealed account was used, not replaced"
    );

    // A sealing key changed without the rotation (the stored certificate
    // and account open under no configured key). While the key they were
    // sealed with was seen lately (another gateway may still run with it),
    // nothing is replaced: the fleet's keys differ, and replacing each
    // other's secrets would go on order after order.
    const LOST: &str = "4444444444444444444444444444444444444444444444444444444444444444";
    let renewed =
        st.s.pg
            .psql("SELECT md5(chain_pem) FROM tenant_gateway.certificates")
            .unwrap();
    let orders_before = orders(&st.s.pg);
    st.s.restart_gateway_as(|b| b.env("TG_CERT_KEY", LOST).env("TG_CERT_KEY_OLD", UNRELATED));
    let since = st.s.gw.log_len();
    assert!(
        probe(st.s.gw.tls_port, Some(CUSTOM), &[]).is_err(),
        "nothing to present"
    );
    st.s.gw
        .wait_logged("acme.key_env differs across the fleet", since, Duration::from_secs(20));
    // A new name needs no stored certificate, only the account: held back
    // before any order is logged, too.
    const NEW_NAME: &str = "new-cars.test";
    app_cli_ok(&st.s.pg.url(), &["domain", "add", NEW_NAME, "--tenant", "ferrari"]);
    let since = st.s.gw.log_len();
    assert!(
        probe(st.s.gw.tls_port, Some(NEW_NAME), &[]).is_err(),
        "nothing to present"
    );
    st.s.gw.wait_logged(
        "the stored ACME account opens under no key",
        since,
        Duration::from_secs(20),
    );
    assert_eq!(orders(&st.s.pg), orders_before);
    // Once no other key is live (every gateway runs with the new one): the
    // next handshake orders a new certificate, with a new account in place
    // of the stored one.
    st.s.pg
        .psql("UPDATE tenant_gateway.sealing_keys SET live_until = now() - interval '1 second'")
        .unwrap();
    wait_issued(&st.pebble, &st.s.gw, CUSTOM, Duration::from_secs(60));
    let stored =
        st.s.pg
            .psql(&format!(
                "SELECT md5(chain_pem) FROM tenant_gateway.certificates WHERE name = '{CUSTOM}'"
            ))
            .unwrap();
    assert_ne!(stored, renewed, "a new certificate was stored");
    wait_issued(&st.pebble, &st.s.gw, NEW_NAME, Duration::from_secs(60));
    assert_eq!(orders(&st.s.pg), orders_before + 2);
    st.s.gw.wait_logged("account created", 0, Duration::from_secs(10));
    assert_ne!(
        st.s.pg
            .psql("SELECT md5(credentials_enc) FROM tenant_gateway.acme_accounts")
            .unwrap(),
        account_after,
        "the unreadable account was replaced"
    );
    assert!(
        st.s.gw
            .scrape()
            .unwrap_or_default()
            .contains("tenant_gateway_certificate_loads_total{result=\"unreadable\"}"),
        "the unreadable certificate was counted"
    );
}

/// Stored certificates are not loaded at start-up: each comes from the
/// database at its first handshake, at most `certificate_cache_size` stay in
/// memory, an evicted one loads again, and nothing is ordered again.
#[test]
fn stored_certificates_load_at_their_first_handshake_into_a_bounded_cache() {
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let names = [
        "one.ferrari-cars.test",
        "two.ferrari-cars.test",
        "three.ferrari-cars.test",
    ];
    for n in names {
        app_cli_ok(&pg.url(), &["domain", "add", n, "--tenant", "ferrari"]);
    }
    let mut st = acme_stack_with(pg, "\"http-01\"", "certificate_cache_size = 2\n");
    for n in names {
        wait_issued(&st.pebble, &st.s.gw, n, Duration::from_secs(60));
    }
    let ordered = orders(&st.s.pg);
    assert_eq!(ordered, 3);

    st.s.restart_gateway();
    assert_eq!(st.s.gw.metric("tenant_gateway_certificates_in_memory"), 0.0);
    // Logged once the worker's schema is ready, in the background of a
    // gateway already serving: waited for, not read at once.
    st.s.gw.wait_logged(
        "stored certificates load at their first handshake",
        0,
        Duration::from_secs(30),
    );
    for _round in 0..2 {
        for n in names {
            assert_eq!(probe(st.s.ports.tls, Some(n), &[]).unwrap().names, [n]);
        }
    }
    let m = st.s.gw.scrape().unwrap();
    let loaded = metric_sum(&m, "tenant_gateway_certificate_loads_total", &[("result", "loaded")]);
    assert!(
        loaded >= 4.0,
        "3 names through 2 places load at least 4 times: {loaded}"
    );
    assert!(metric_sum(&m, "tenant_gateway_certificates_in_memory", &[]) <= 2.0);
    // A name nobody serves never reaches the database for a certificate.
    assert!(probe(st.s.ports.tls, Some("unknown.ferrari-cars.test"), &[]).is_err());
    let m = st.s.gw.scrape().unwrap();
    assert_eq!(
        metric_sum(
            &m,
            "tenant_gateway_certificate_loads_total",
            &[("result", "not_stored")]
        ),
        0.0
    );
    wait_scans(&[&st.s.gw], 3);
    assert_eq!(orders(&st.s.pg), ordered, "nothing is ordered again");

    // A retirement the gateway did not hear of (made here without its
    // NOTIFY, as if during a LISTEN gap) is found once its listener
    // reconnects: the certificates in memory are checked against the
    // database, and the retired one leaves.
    let (kept, retired) = (names[1], names[2]);
    for n in [kept, retired] {
        assert_eq!(probe(st.s.ports.tls, Some(n), &[]).unwrap().names, [n]);
    }
    assert_eq!(st.s.gw.metric("tenant_gateway_certificates_in_memory"), 2.0);
    st.s.pg
        .psql(&format!(
            "SET session_replication_role = replica; \
             UPDATE tenant_gateway.certificates SET removed_at = now() WHERE name = '{retired}'"
        ))
        .unwrap();
    assert_eq!(st.s.gw.metric("tenant_gateway_certificates_in_memory"), 2.0);
    st.s.pg
        .psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE application_name = 'tenant-gateway-acme-listen'",
        )
        .unwrap();
    wait_until("the retired certificate leaves memory", Duration::from_secs(20), || {
        st.s.gw.metric("tenant_gateway_certificates_in_memory") == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", st.s.gw.proc_.log()));
    assert_eq!(probe(st.s.ports.tls, Some(kept), &[]).unwrap().names, [kept]);

    // A domain row deleted without its NOTIFY (as if during a gap of the
    // tenant listener): once that listener reconnects, the names in memory
    // are asked again whether they are served, and the certificate of the
    // deleted one is retired (in memory and in the database), not kept
    // until its renewal.
    st.s.pg
        .psql(&format!(
            "SET session_replication_role = replica; DELETE FROM public.domains WHERE domain = '{kept}'"
        ))
        .unwrap();
    assert_eq!(probe(st.s.ports.tls, Some(kept), &[]).unwrap().names, [kept]);
    st.s.pg
        .psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE application_name = 'tenant-gateway-listen'",
        )
        .unwrap();
    let retired_in_db = |name: &str| {
        st.s.pg
            .psql(&format!(
                "SELECT count(*) FROM tenant_gateway.certificates WHERE name = '{name}' AND removed_at IS NOT NULL"
            ))
            .is_ok_and(|c| c == "1")
    };
    wait_until(
        "the deleted name's certificate is retired",
        Duration::from_secs(20),
        || st.s.gw.metric("tenant_gateway_certificates_in_memory") == 0.0 && retired_in_db(kept),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", st.s.gw.proc_.log()));
    assert!(probe(st.s.ports.tls, Some(kept), &[]).map_or(true, |p| p.names != [kept]));
}

/// The fleet-wide gauges of stored certificates read the database, not
/// memory: with nothing loaded they show the first certificate to expire
/// and the renewals overdue by more than a day; a name held back as not
/// eligible (its tenant suspended) counts in neither; the operator API lists
/// both, flagged; a renewal that goes through clears the overdue count.
#[test]
fn stored_certificate_health_is_reported_without_loading_certificates() {
    const EARLIEST: &str = "tenant_gateway_stored_certificates_earliest_expiry_timestamp_seconds";
    const OVERDUE: &str = "tenant_gateway_stored_certificates_renewal_overdue";
    const MC: &str = "www.mclaren-cars.test";
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    app_cli_ok(&pg.url(), &["domain", "add", MC, "--tenant", "mclaren"]);
    let mut st = acme_stack(pg, "\"http-01\"");
    wait_issued(&st.pebble, &st.s.gw, CUSTOM, Duration::from_secs(60));
    wait_issued_for(&st.pebble, &st.s.gw, MC, "mclaren", Duration::from_secs(60));
    let epoch = |pg: &Postgres, name: &str, column: &str| -> f64 {
        pg.psql(&format!(
            "SELECT extract(epoch FROM {column})::bigint FROM tenant_gateway.certificates WHERE name = '{name}'"
        ))
        .unwrap()
        .parse()
        .unwrap()
    };
    // `name`'s row of ACME state matches `condition` (SQL).
    let acme_row = |pg: &Postgres, name: &str, condition: &str| -> bool {
        pg.psql(&format!(
            "SELECT count(*) FROM tenant_gateway.acme_names WHERE name = '{name}' AND {condition}"
        ))
        .is_ok_and(|c| c == "1")
    };

    // Nothing in memory after a restart; the gauges still see both (a
    // scan sets them when it ends).
    st.s.restart_gateway();
    let first = epoch(&st.s.pg, CUSTOM, "not_after").min(epoch(&st.s.pg, MC, "not_after"));
    wait_until("the first expiry reported", Duration::from_secs(30), || {
        st.s.gw.metric(EARLIEST) == first
    })
    .unwrap_or_else(|e| panic!("{e}: {}", st.s.gw.metric(EARLIEST)));
    assert_eq!(st.s.gw.metric(OVERDUE), 0.0);
    assert_eq!(st.s.gw.metric("tenant_gateway_certificates_in_memory"), 0.0);

    // The CA is down and both renewals are two days late; McLaren's tenant
    // is suspended, so its name is held back, not failing.
    st.pebble.stop_pebble();
    app_cli_ok(&st.s.pg.url(), &["tenant", "suspend", "mclaren"]);
    st.s.pg
        .psql(&format!(
            "UPDATE tenant_gateway.certificates SET renew_after = now() - interval '2 days',
                    not_after = now() + CASE name WHEN '{CUSTOM}' THEN interval '30 minutes' ELSE interval '10 minutes' END
              WHERE name IN ('{CUSTOM}', '{MC}')"
        ))
        .unwrap();
    let custom_expiry = epoch(&st.s.pg, CUSTOM, "not_after");
    wait_until("McLaren's name held back", Duration::from_secs(30), || {
        acme_row(&st.s.pg, MC, "last_error = 'not eligible'")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", st.s.gw.proc_.log()));
    // Only the failing renewal is overdue; the held-back name expires first
    // but is left out of both.
    wait_until("the failing renewal alone reported", Duration::from_secs(30), || {
        st.s.gw.metric(OVERDUE) == 1.0 && st.s.gw.metric(EARLIEST) == custom_expiry
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} overdue, first expiry {}",
            st.s.gw.metric(OVERDUE),
            st.s.gw.metric(EARLIEST)
        )
    });

    // The operator API names them, the first to expire first, with the
    // failing renewal's state once an attempt has failed.
    wait_until("a failed renewal recorded", Duration::from_secs(30), || {
        acme_row(&st.s.pg, CUSTOM, "failures > 0")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", st.s.gw.proc_.log()));
    let get = e2e::http::Method::GET;
    // (name, held back, renewal overdue), in order. Polled: the suspension's
    // NOTIFY clears a hold and the next attempt sets it again, so a hold can
    // be briefly absent right after it.
    let listed = |v: &serde_json::Value| -> Vec<(String, Option<bool>, Option<bool>)> {
        let list = v["certificates"].as_array().map(Vec::as_slice).unwrap_or_default();
        list.iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default().to_owned();
                (name, c["held_back"].as_bool(), c["renewal_overdue"].as_bool())
            })
            .collect()
    };
    let expected = vec![
        (MC.to_owned(), Some(true), Some(false)),
        (CUSTOM.to_owned(), Some(false), Some(true)),
    ];
    let mut v = serde_json::Value::Null;
    wait_until("the listing", Duration::from_secs(30), || {
        let (status, body) = st.s.gw.api(get.clone(), "certs/stored?limit=5", Some(ADMIN_TOKEN));
        v = body;
        status == 200 && listed(&v) == expected
    })
    .unwrap_or_else(|e| panic!("{e}: {v}"));
    let custom = &v["certificates"][1];
    assert_eq!(custom["not_after"].as_f64(), Some(custom_expiry), "{v}");
    assert!(custom["failures"].as_i64().is_some_and(|f| f >= 1), "{v}");
    assert!(custom["last_error"].is_string(), "{v}");
    let (_, v) = st.s.gw.api(get.clone(), "certs/stored?limit=1", Some(ADMIN_TOKEN));
    assert_eq!(v["certificates"].as_array().map(Vec::len), Some(1), "{v}");
    for bad in ["0", "1001", "x"] {
        let (status, v) =
            st.s.gw
                .api(get.clone(), &format!("certs/stored?limit={bad}"), Some(ADMIN_TOKEN));
        assert_eq!(
            (status, &v["error"]),
            (400, &serde_json::json!("bad_limit")),
            "{bad}: {v}"
        );
    }
    assert_eq!(st.s.gw.api(get, "certs/stored", None).0, 401);

    // The CA returns: the renewal goes through (Pebble's certificates here
    // last an hour) and nothing is overdue.
    st.pebble.start_pebble().unwrap();
    wait_until("the renewal clears the overdue count", Duration::from_secs(60), || {
        st.s.gw.metric(OVERDUE) == 0.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", st.s.gw.proc_.log()));
    let renewed = epoch(&st.s.pg, CUSTOM, "not_after");
    assert!(renewed > custom_expiry, "the renewed certificate expires later");
    wait_until("the renewed expiry reported", Duration::from_secs(30), || {
        st.s.gw.metric(EARLIEST) == renewed
    })
    .unwrap();
}

/// Twenty custom domains of two tenants arrive at once with two order
/// slots (each tenant's share: one): all get certificates, at most two
/// orders run at a time (the rest wait for a slot), and every HTTP-01
/// validation request is answered (challenge answers have their own
/// connections, which orders cannot take).
#[test]
fn twenty_domains_at_once_queue_for_order_slots_and_every_challenge_is_answered() {
    const SLOTS: f64 = 2.0;
    const NAMES: usize = 20;
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    // Ten each: each tenant's share of the order budget covers them.
    let st = acme_stack_with(
        pg,
        "\"http-01\"",
        "max_concurrent_orders = 2\norders_per_tenant_per_hour = 20\n",
    );
    // One transaction: the domain trigger NOTIFYs all twenty at commit.
    st.s.pg
        .psql(&format!(
            "INSERT INTO public.domains (domain, tenant_id)
         SELECT 'www.team' || lpad(i::text, 2, '0') || '.test', t.id
           FROM generate_series(1, {NAMES}) i JOIN public.tenants t
             ON t.schema_name = CASE WHEN i % 2 = 0 THEN 'ferrari' ELSE 'mclaren' END"
        ))
        .unwrap();
    let (mut most_running, mut most_waiting) = (0.0f64, 0.0f64);
    wait_until("twenty certificates stored", Duration::from_secs(120), || {
        if let Ok(m) = st.s.gw.scrape() {
            most_running = most_running.max(metric_sum(&m, "tenant_gateway_acme_orders_in_progress", &[]));
            most_waiting = most_waiting.max(metric_sum(&m, "tenant_gateway_acme_orders_waiting", &[]));
        }
        st.s.pg
            .psql("SELECT count(*) FROM tenant_gateway.certificates")
            .is_ok_and(|n| n == NAMES.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\nPebble log:\n{}", st.s.gw.proc_.log(), st.pebble.log()));
    assert!(
        most_running <= SLOTS,
        "{most_running} orders ran at once with {SLOTS} slots"
    );
    assert!(
        most_running >= 1.0 && most_waiting >= 1.0,
        "orders should have queued: running {most_running}, waiting {most_waiting}"
    );
    for i in 1..=NAMES {
        wait_issued_for(
            &st.pebble,
            &st.s.gw,
            &format!("www.team{i:02}.test"),
            if i % 2 == 0 { "ferrari" } else { "mclaren" },
            Duration::from_secs(30),
        );
    }

    // Bookkeeping: one issued order per name, nothing failed or left pending.
    assert_eq!(
        st.s.pg.psql(
            "SELECT count(*) FILTER (WHERE result = 'issued'), count(*) FILTER (WHERE result IS DISTINCT FROM 'issued')
               FROM tenant_gateway.acme_orders"
        )
        .unwrap(),
        format!("{NAMES}|0")
    );
    assert_eq!(
        st.s.pg
            .psql(
                "SELECT count(*) FROM tenant_gateway.acme_names
              WHERE failures > 0 OR lease_owner IS NOT NULL OR ordering_since IS NOT NULL"
            )
            .unwrap(),
        "0"
    );
    let status = &st.s.gw.cli(&st.s.pg.url(), &["acme", "status"]);
    assert_eq!(status.matches(" valid ").count(), NAMES, "{status}");

    // Every validation request Pebble made got its answer: as many 200s in
    // the access log as Pebble's HTTP validations, and no other status.
    let validations = st.pebble.log().matches("Attempting to validate w/ HTTP").count();
    assert!(validations >= NAMES, "{}", st.pebble.log());
    let answered = || {
        let log = st.s.gw.proc_.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("access") && l.contains("path=/.well-known/acme-challenge/"))
            .map(str::to_owned)
            .collect();
        lines
    };
    wait_until("an access-log line per validation", Duration::from_secs(10), || {
        answered().len() >= validations
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", st.s.gw.proc_.log()));
    let lines = answered();
    assert_eq!(lines.len(), validations, "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("status=200")), "{lines:#?}");
    let pebble_log = st.pebble.log();
    assert!(!pebble_log.contains("Non-200 status code"), "{pebble_log}");
    assert_eq!(
        pebble_log.matches("set VALID by completed challenge").count(),
        NAMES,
        "{pebble_log}"
    );
    let log = st.s.gw.proc_.log();
    assert!(!log.contains("cannot read the challenge answer"), "{log}");
}

/// Wait until each gateway has completed `n` more ACME scans (bounded).
fn wait_scans(gws: &[&Gateway], n: u32) {
    let start: Vec<f64> = gws
        .iter()
        .map(|g| g.metric("tenant_gateway_acme_scans_total"))
        .collect();
    wait_until("ACME scans", Duration::from_secs(30), || {
        gws.iter()
            .zip(&start)
            .all(|(g, s)| g.metric("tenant_gateway_acme_scans_total") >= s + f64::from(n))
    })
    .unwrap();
}

#[test]
fn a_gateway_stopping_mid_order_frees_its_lease_and_a_stalled_ca_harms_no_tenant() {
    // A CA that accepts connections and never answers: an order for the
    // custom domain stalls under its lease.
    let stalled_ca = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ca_port = stalled_ca.local_addr().unwrap().port();
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    app_cli_ok(&pg.url(), &["domain", "add", CUSTOM, "--tenant", "ferrari"]);
    let certs = tempfile::tempdir().unwrap();
    let ca = dev_certs(certs.path());
    let ports = GatewayPorts::free();
    // A grace period of 5 s, of which the stop may take half.
    let mut s = Stack::builder()
        .database(pg)
        .apps(1)
        .certs(certs)
        .ports(ports)
        .tls("")
        .grace(5)
        .config(&format!(
            "[acme]\nenabled = true\ndirectory_url = \"https://127.0.0.1:{ca_port}/dir\"\nca_root = \"{}\"\n\
             check_interval_secs = 1\non_demand_timeout_ms = 1000\n",
            ca.display()
        ))
        .start();
    // A handshake for the name starts an order (it gets no certificate).
    assert!(probe(ports.tls, Some(CUSTOM), &[]).is_err());
    let lease = |s: &Stack| {
        s.pg.psql(&format!(
            "SELECT coalesce(lease_owner, '') FROM tenant_gateway.acme_names WHERE name = '{CUSTOM}'"
        ))
        .unwrap_or_default()
    };
    wait_until("the order holds its lease", Duration::from_secs(30), || {
        !lease(&s).is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    // The stalled CA costs the tenants nothing.
    for host in ["ferrari.myapp.localhost", "mclaren.myapp.localhost"] {
        let r = s.https().get(&s.https_url(host, "/whoami")).send().unwrap();
        assert_eq!(r.json()["tenant"], host.split('.').next().unwrap());
    }
    // Stopping (as the old process of an upgrade does) frees the lease at
    // once instead of leaving it to expire in minutes.
    assert!(s.gw.proc_.terminate(Duration::from_secs(30)), "the gateway exits");
    assert_eq!(lease(&s), "", "lease freed at shutdown");
    // Its order is recorded as stopped, not left open.
    assert_eq!(
        s.pg.psql(&format!(
            "SELECT string_agg(coalesce(result, 'open'), ',') FROM tenant_gateway.acme_orders WHERE name = '{CUSTOM}'"
        ))
        .unwrap(),
        "stopped"
    );
    assert!(s.gw.proc_.log().contains("order leases freed"), "{}", s.gw.proc_.log());
}

/// One connection to `port` from the loopback alias `from`, with a read timeout.
fn connect_from(from: &str, port: u16) -> std::net::TcpStream {
    let tcp = connections_from(from, port, 1).remove(0);
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

/// The stack on `pg` (tenants set up) with TLS and ACME on against a CA
/// that accepts connections and never answers (kept open by the listener
/// returned), `acme` added to `[acme]`.
fn never_answering_ca_stack(pg: Postgres, acme: &str) -> (Stack, GatewayPorts, std::net::TcpListener) {
    let never = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = dev_certs(certs.path());
    let ports = GatewayPorts::free();
    let s = Stack::for_pebble(
        pg,
        certs,
        ports,
        &format!(
            "[acme]\nenabled = true\ndirectory_url = \"https://127.0.0.1:{}/dir\"\nca_root = \"{}\"\n{acme}",
            never.local_addr().unwrap().port(),
            ca.display()
        ),
    );
    (s, ports, never)
}

#[test]
fn one_client_flooding_challenge_lookups_is_refused_and_the_cas_answers_still_come() {
    // ACME on (a CA that is never reached: no name needs an order), two
    // challenge lookups a second per client, a burst of four.
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let (s, ports, _never) = never_answering_ca_stack(pg, "challenge_rate = 2\n");
    // A pending HTTP-01 challenge, as any gateway of the fleet stores it.
    wait_until("challenge stored", Duration::from_secs(30), || {
        s.pg.psql(
            "INSERT INTO tenant_gateway.acme_challenges (kind, key, name, key_authorization)
             VALUES ('http-01', 'good-token', 'shop.example', 'good-token.thumbprint')",
        )
        .is_ok()
    })
    .unwrap();
    let request = |token: &str| {
        format!("GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    };
    // One client (127.0.0.2) asks for thirty made-up tokens: its burst is
    // looked up (404), the rest refused (429) without a query.
    let mut statuses = Vec::new();
    for i in 0..30 {
        let mut tcp = connect_from("127.0.0.2", ports.http);
        let (head, _) = exchange(&mut tcp, &request(&format!("made-up-{i}"))).unwrap();
        statuses.push(head.get(9..12).unwrap_or_default().to_owned());
    }
    assert!(statuses.iter().any(|s| s == "404"), "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "429"), "{statuses:?}");
    assert!(statuses.iter().all(|s| s == "404" || s == "429"), "{statuses:?}");
    // The CA's validation (another address) gets its answer meanwhile.
    let mut tcp = connect_from("127.0.0.1", ports.http);
    let (head, body) = exchange(&mut tcp, &request("good-token")).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.trim(), "good-token.thumbprint");
    // acme-tls/1 handshakes are limited too (from 127.0.0.1 here, which
    // has spent one lookup on the answer above).
    for _ in 0..30 {
        let _ = probe(ports.tls, Some("shop.example"), &["acme-tls/1"]);
    }
    for kind in ["http-01", "tls-alpn-01"] {
        let refused = s.metric("tenant_gateway_acme_challenges_refused_total", &[("kind", kind)]);
        assert!(refused >= 1.0, "{kind}: {refused}");
    }
    // Tenants are served as ever.
    for host in ["ferrari.myapp.localhost", "mclaren.myapp.localhost"] {
        let r = s.https().get(&s.https_url(host, "/whoami")).send().unwrap();
        assert_eq!(r.json()["tenant"], host.split('.').next().unwrap());
    }
}

/// A client cycling through served names whose certificates are not in
/// memory causes at most `acme.load_rate` loads a second (each a query on
/// the ACME connections every tenant's first handshakes need): its other
/// handshakes go on without a load (the default certificate), counted as
/// refused, while another client's handshake for such a name still loads.
#[test]
fn one_client_cycling_through_names_not_in_memory_is_refused_loads_and_another_client_is_not() {
    // ACME on (a CA that never answers: no certificate is stored or
    // ordered in time), one load a second per client, a burst of two.
    let pg = Postgres::start().unwrap();
    tenants(&pg);
    let names: Vec<String> = (0..21).map(|i| format!("n{i}.ferrari-cars.test")).collect();
    for n in &names {
        app_cli_ok(&pg.url(), &["domain", "add", n, "--tenant", "ferrari"]);
    }
    let (s, ports, _never) = never_answering_ca_stack(pg, "load_rate = 1\non_demand_timeout_ms = 100\n");
    let loads = |result: &str| s.metric("tenant_gateway_certificate_loads_total", &[("result", result)]);
    // Its tables exist (a load before them is an error, which orders nothing).
    s.gw.wait_logged("ACME: ready", 0, Duration::from_secs(30));
    // One client (127.0.0.2), twenty names: its burst is looked up (none
    // stored), and one a second after; the rest refused without a query.
    for n in &names[..20] {
        let _ = probe_from("127.0.0.2", ports.tls, Some(n), &[]);
    }
    let (refused, looked) = (loads("refused"), loads("not_stored"));
    let all = || {
        s.gw.scrape()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("tenant_gateway_certificate_loads_total"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(refused >= 1.0, "refused {refused}: {}", all());
    assert!(looked >= 1.0, "looked up {looked}: {}\n{}", all(), s.gw.proc_.log());
    assert_eq!(refused + looked, 20.0, "one load or refusal per handshake");
    // Another client's handshake for a name not in memory is looked up.
    let _ = probe_from("127.0.0.3", ports.tls, Some(&names[20]), &[]);
    assert_eq!(loads("not_stored"), looked + 1.0);
    assert_eq!(loads("refused"), refused);
    // Tenants are served as ever.
    for host in ["ferrari.myapp.localhost", "mclaren.myapp.localhost"] {
        let r = s.https().get(&s.https_url(host, "/whoami")).send().unwrap();
        assert_eq!(r.json()["tenant"], host.split('.').next().unwrap());
    }
}
