//! Scaling out: lookups read a real streaming replica (pg_basebackup) while
//! LISTEN stays on the primary; a change on the primary reaches every
//! gateway through NOTIFY (bounded by `PROPAGATION`), and while the replica
//! lags (replay paused) no answer older than the NOTIFY is served or cached:
//! the lookup goes to the primary. The same holds for a change no NOTIFY
//! told of (made while LISTEN was down): once LISTEN is back, answers are
//! as fresh as the primary's position at the reconnect.

use std::time::Duration;

use e2e::http;
use e2e::*;

#[test]
fn lookups_read_the_replica_and_its_lag_never_overtakes_a_notify() {
    let primary = Postgres::start().unwrap();
    two_tenants(&primary);
    let replica = Postgres::replica_of(&primary).unwrap();
    let s = Stack::builder()
        .database(primary)
        .apps(1)
        .config("[database]\nlookup_url_env = \"TG_LOOKUP_URL\"\nlookup_prepared_statements = false")
        .env("TG_LOOKUP_URL", &replica.url())
        .start();
    let second = s.gateway().start().unwrap();
    let primary = &s.pg;
    let gws = [&s.gw, &second];
    let client = http::client();
    let tenant_of = |gw: &Gateway, host: &str| {
        let r = client.get(&gw.url("/whoami")).header("host", host).send().unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        r.json()["tenant"].as_str().unwrap_or_default().to_owned()
    };
    for gw in &gws {
        assert_eq!(tenant_of(gw, "ferrari.myapp.localhost"), "ferrari");
        assert_eq!(tenant_of(gw, "mclaren-racing.test"), "mclaren");
    }
    // The lookups ran on the replica; the primary saw none.
    let lookups_on = |pg: &Postgres| {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenant-gateway'")
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    assert!(lookups_on(&replica) >= 2, "no lookup connection on the replica");
    assert_eq!(lookups_on(primary), 0, "lookups reached the primary");

    let move_to = |schema: &str| {
        primary
            .psql(&format!(
                "UPDATE public.domains SET tenant_id = (SELECT id FROM public.tenants WHERE schema_name = '{schema}') \
                 WHERE domain = 'mclaren-racing.test'"
            ))
            .unwrap();
    };
    // A domain moved on the primary: every gateway routes it (NOTIFY, not the TTL).
    move_to("ferrari");
    for gw in &gws {
        wait_until("moved via the replica", PROPAGATION, || {
            tenant_of(gw, "mclaren-racing.test") == "ferrari"
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc_.log()));
    }
    // The replica stops replaying: its row is now older than the next change.
    let on_replica = || {
        replica
            .psql(
                "SELECT t.schema_name FROM public.domains d JOIN public.tenants t ON t.id = d.tenant_id \
                 WHERE d.domain = 'mclaren-racing.test'",
            )
            .unwrap()
    };
    wait_until("the replica has the first move", Duration::from_secs(10), || {
        on_replica() == "ferrari"
    })
    .unwrap();
    // (A pause is a request: recovery stops at the next record, so write
    // records until it has.)
    primary.psql("CREATE TABLE lag_probe (x int)").unwrap();
    let pause_replay = || {
        replica.psql("SELECT pg_wal_replay_pause()").unwrap();
        wait_until("replay paused", Duration::from_secs(10), || {
            primary.psql("INSERT INTO lag_probe VALUES (1)").is_ok()
                && replica
                    .psql("SELECT pg_get_wal_replay_pause_state()")
                    .is_ok_and(|s| s == "paused")
        })
        .unwrap();
    };
    pause_replay();
    move_to("mclaren");
    assert_eq!(on_replica(), "ferrari", "the replica was meant to lag");
    for gw in &gws {
        wait_until("moved while the replica lags", PROPAGATION, || {
            tenant_of(gw, "mclaren-racing.test") == "mclaren"
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc_.log()));
        // And it stays so: the replica's older row was never cached.
        for _ in 0..20 {
            assert_eq!(tenant_of(gw, "mclaren-racing.test"), "mclaren");
        }
        assert!(gw.metric("tenant_gateway_db_primary_fallbacks_total") >= 1.0);
    }
    assert_eq!(on_replica(), "ferrari", "the replica was meant to lag");
    replica.psql("SELECT pg_wal_replay_resume()").unwrap();

    // A change no NOTIFY tells of, as one made while the gateways' LISTEN
    // connections were down: with triggers off for the session, the domain
    // moves back while the replica (caught up, then paused again) keeps the
    // older row.
    wait_until("the replica has the second move", Duration::from_secs(10), || {
        on_replica() == "mclaren"
    })
    .unwrap();
    pause_replay();
    primary
        .psql(
            "SET session_replication_role = replica; \
             UPDATE public.domains SET tenant_id = (SELECT id FROM public.tenants WHERE schema_name = 'ferrari') \
             WHERE domain = 'mclaren-racing.test'",
        )
        .unwrap();
    assert_eq!(on_replica(), "mclaren", "the replica was meant to lag");
    let mut before = Vec::new();
    for gw in &gws {
        // No NOTIFY came: the cached answer stands (so what follows is the
        // reconnect's doing).
        assert_eq!(tenant_of(gw, "mclaren-racing.test"), "mclaren");
        before.push((
            gw.metric("tenant_gateway_cache_clears_total"),
            gw.metric("tenant_gateway_db_primary_fallbacks_total"),
        ));
    }
    // Both gateways lose LISTEN; each marks its cache stale twice (lost,
    // then re-established).
    let killed = primary
        .psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'tenant-gateway-listen'")
        .unwrap();
    assert_eq!(killed, "2", "one tenant LISTEN connection per gateway");
    for (gw, (clears, fallbacks)) in gws.iter().zip(before) {
        wait_until("LISTEN re-established", Duration::from_secs(10), || {
            gw.metric("tenant_gateway_cache_clears_total") >= clears + 2.0
                && gw.metric("tenant_gateway_invalidation_listener_up") == 1.0
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc_.log()));
        // The stale entry is revalidated before use, and not on the
        // replica's older row: the primary answers until the replica has
        // replayed the primary's position at the reconnect.
        for _ in 0..20 {
            assert_eq!(tenant_of(gw, "mclaren-racing.test"), "ferrari", "{}", gw.proc_.log());
        }
        assert!(gw.metric("tenant_gateway_db_primary_fallbacks_total") > fallbacks);
    }
    assert_eq!(on_replica(), "mclaren", "the replica was meant to lag");
    replica.psql("SELECT pg_wal_replay_resume()").unwrap();
    // Other hosts kept being served (from the cache or the replica) throughout.
    for gw in &gws {
        assert_eq!(tenant_of(gw, "ferrari.myapp.localhost"), "ferrari");
    }
}
