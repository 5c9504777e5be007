//! The config's unit tests: parsing, defaults, every error named by its key.

use super::*;

fn parse(s: &str) -> Result<Config, String> {
    let c = Config::parse(s)?;
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

const MIN: &str = "[pools.default]\nbackends = [\"127.0.0.1:8081\"]\n";

#[test]
fn every_problem_is_reported_with_its_own_key() {
    let bad = "[listen]\nthreads = 0\n[tenant]\nbase_domains = [\"MyApp.com\"]\n\
               [tenant.cache]\nmax_entries = 0\n[pages]\ndeleted_status = 500\n\
               [custom_domains]\nmax_concurrent_checks = 0\n[pools.default]\nbackends = []\n";
    let c: Config = toml::from_str(bad).unwrap();
    let problems = c.problems();
    let keys: Vec<&str> = problems
        .iter()
        .map(|e| e.key().unwrap_or_else(|| panic!("{e}")))
        .collect();
    assert_eq!(
        keys,
        [
            "listen.threads",
            "tenant.base_domains[0]",
            "tenant.cache.max_entries",
            "pages.deleted_status",
            "custom_domains.max_concurrent_checks",
            "pools.default.backends"
        ]
    );
    let message = c.validate().unwrap_err().to_string();
    assert!(message.starts_with("6 config keys are wrong:"), "{message}");
    assert!(message.contains("config key `pages.deleted_status`"), "{message}");
}

#[test]
fn values_of_the_wrong_form_name_their_key_path() {
    for (text, path) in [
        (
            "[pools.default]\nbackends = [\"127.0.0.1:1\", \"nope\"]\n",
            "pools.default.backends[1]",
        ),
        (
            &format!("{MIN}[headers]\ntrusted_proxies = [\"10.0.0.1\", \"10.0.0.0/99\"]\n"),
            "headers.trusted_proxies[1]",
        ),
        (
            &format!("{MIN}[pages.custom.nonsense]\nhtml_file = \"/x\"\n"),
            "pages.custom",
        ),
        (
            &format!("{MIN}[database]\nconnect_timeout_ms = \"1s\"\n"),
            "database.connect_timeout_ms",
        ),
        (
            &format!("{MIN}[custom_domains]\ncheck_timeout_ms = -1\n"),
            "custom_domains.check_timeout_ms",
        ),
    ] {
        let err = Config::parse(text).unwrap_err();
        assert!(
            err.starts_with(&format!("config key `{path}")),
            "expected `{path}` in: {err}"
        );
    }
    let c = Config::parse(&format!(
        "{MIN}[headers]\ntrusted_proxies = [\"10.0.0.1\", \"fd00::/8\"]\n[database]\nconnect_timeout_ms = 1500\n"
    ))
    .unwrap();
    assert_eq!(c.database.connect_timeout, std::time::Duration::from_millis(1500));
    let nets: Vec<String> = c.headers.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.0.0.1/32", "fd00::/8"]);
}

#[test]
fn worker_threads_are_bounded() {
    for (threads, ok) in [
        (1, true),
        (MAX_THREADS, true),
        (MAX_THREADS + 1, false),
        (i64::MAX as usize, false),
    ] {
        let c: Config = toml::from_str(&format!("[listen]\nthreads = {threads}\n{MIN}")).unwrap();
        let keys: Vec<_> = c.problems().iter().filter_map(|e| e.key().map(str::to_owned)).collect();
        assert_eq!(keys.is_empty(), ok, "{threads}: {keys:?}");
    }
}

#[test]
fn acme_errors_name_their_own_keys() {
    let base = "[tls]\nlisten = \"127.0.0.1:8443\"\n[acme]\nenabled = true\n";
    for (extra, key) in [
        ("check_interval_secs = 0\n", "acme.check_interval_secs"),
        ("orders_per_domain_per_week = 0\n", "acme.orders_per_domain_per_week"),
        ("orders_per_tenant_per_hour = 0\n", "acme.orders_per_tenant_per_hour"),
        (
            "orders_per_hour = 5\norders_per_tenant_per_hour = 6\n",
            "acme.orders_per_tenant_per_hour",
        ),
        ("retry_base_secs = 10\nretry_max_secs = 5\n", "acme.retry_max_secs"),
        (
            "check_interval_secs = 9223372036854775807\n",
            "acme.check_interval_secs",
        ),
        ("retry_max_secs = 31536001\n", "acme.retry_max_secs"),
        (
            "removed_certificate_grace_secs = 31536001\n",
            "acme.removed_certificate_grace_secs",
        ),
        ("on_demand_timeout_ms = 10000\n", "acme.on_demand_timeout_ms"),
        ("eab = { kid = \"\", hmac_key_env = \"E\" }\n", "acme.eab.kid"),
        ("challenge_rate = 1000001\n", "acme.challenge_rate"),
        ("load_rate = 1000001\n", "acme.load_rate"),
    ] {
        let c: Config = toml::from_str(&format!("{base}{extra}{MIN}")).unwrap();
        let problems = c.acme_problems();
        let keys: Vec<&str> = problems.iter().filter_map(ConfigError::key).collect();
        assert_eq!(keys, [key], "{extra}");
    }
}

#[test]
fn values_that_break_the_database_or_a_redirect_are_refused_by_key() {
    for (extra, key) in [
        ("[database]\nconnect_timeout_ms = 0\n", "database.connect_timeout_ms"),
        ("[database]\nquery_timeout_ms = 0\n", "database.query_timeout_ms"),
        (
            "[database]\nquery_timeout_ms = 2147483648\n",
            "database.query_timeout_ms",
        ),
        (
            "[tls]\nlisten = \"127.0.0.1:8443\"\ncert_dir = \"/\"\nredirect_port = 0\n",
            "tls.redirect_port",
        ),
    ] {
        let c: Config = toml::from_str(&format!("{extra}{MIN}")).unwrap();
        let keys: Vec<String> = c.problems().iter().filter_map(|e| e.key().map(str::to_owned)).collect();
        assert_eq!(keys, [key], "{extra}");
    }
    // The on-demand wait must leave time for the request head, which
    // counts from accept (its handshake included).
    let c: Config = toml::from_str(&format!(
        "[limits]\nrequest_head_timeout_ms = 5000\n[acme]\nenabled = true\n[tls]\nlisten = \"127.0.0.1:8443\"\ncert_dir = \"/\"\n{MIN}"
    ))
    .unwrap();
    let problems = c.acme_problems();
    let keys: Vec<&str> = problems.iter().filter_map(ConfigError::key).collect();
    assert_eq!(keys, ["acme.on_demand_timeout_ms"]);
}

#[test]
fn every_missing_environment_variable_is_named() {
    let c: Config = toml::from_str(&format!(
        "[database]\nurl_env = \"TG_TEST_UNSET_DATABASE_URL\"\n\
         [stamp]\nsigning_key = {{ id = \"k1\", secret_env = \"TG_TEST_UNSET_STAMP_KEY\" }}\n\
         [admin]\ntoken_env = \"TG_TEST_UNSET_ADMIN_TOKEN\"\n\
         [acme]\nenabled = true\nkey_env = \"TG_TEST_UNSET_CERT_KEY\"\n{MIN}"
    ))
    .unwrap();
    let message = c.environment().err().expect("nothing is set").to_string();
    for key in [
        "database.url_env",
        "stamp.signing_key",
        "admin.token_env",
        "acme.key_env",
    ] {
        assert!(message.contains(&format!("`{key}`")), "{key}: {message}");
    }
    assert!(message.starts_with("4 config keys are wrong"), "{message}");
}

#[test]
fn an_eab_key_is_read_at_start() {
    let cfg = |eab: &str| -> Config { toml::from_str(&format!("[acme]\nenabled = true\n{eab}{MIN}")).unwrap() };
    let key = "0".repeat(64);
    let env = |var: &str| match var {
        "TG_CERT_KEY" => Some(key.clone()),
        "EAB_OK" => Some("c2VjcmV0".to_owned()),
        "EAB_BAD" => Some("not base64!".to_owned()),
        _ => None,
    };
    assert!(cfg("eab = { kid = \"k\", hmac_key_env = \"EAB_OK\" }\n")
        .acme_keys_from(env)
        .is_ok());
    for var in ["EAB_BAD", "EAB_UNSET"] {
        let e = cfg(&format!("eab = {{ kid = \"k\", hmac_key_env = \"{var}\" }}\n"))
            .acme_keys_from(env)
            .unwrap_err();
        assert_eq!(e.key(), Some("acme.eab.hmac_key_env"), "{var}: {e}");
    }
}

#[test]
fn minimal_config_is_valid() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.tenant.cache.positive_ttl, std::time::Duration::from_secs(60));
    assert_eq!(c.pools["default"].health_check_path, "/healthz");
    assert!(c.lookup_query().contains("public.domains"));
    assert!(!c.strip_www());
    assert_eq!(c.public_schema(), None);
    assert!(c.acme_domains_query().contains("public.domains"));
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (format!("{MIN}bogus = 1\n"), "bogus"),
        (format!("{MIN}[tenant]\nbogus_key = 1\n"), "bogus_key"),
        (
            "[pools.big]\nbackends = [\"127.0.0.1:1\"]\n".to_string(),
            "pools.default",
        ),
        (
            "[pools.default]\nbackends = [\"http://nope\"]\n".to_string(),
            "pools.default.backends[0]",
        ),
        ("[pools.default]\nbackends = []\n".to_string(), "pools.default.backends"),
        (
            format!("{MIN}[tenant]\nlanding_pool = \"landing\"\n"),
            "tenant.landing_pool",
        ),
        (
            format!("{MIN}[headers]\ntrusted_proxies = [\"10.0.0.0/99\"]\n"),
            "headers.trusted_proxies[0]",
        ),
        (
            format!("{MIN}[tenant.cache]\nnegative_ttl_secs = 0\n"),
            "tenant.cache.negative_ttl_secs",
        ),
        (
            format!("{MIN}[tenant]\nbase_domains = [\"MyApp.com\"]\n"),
            "tenant.base_domains[0]",
        ),
        (format!("{MIN}[tenant]\nquery = \"SELECT 1\"\n"), "tenant.query"),
        (format!("{MIN}[database]\nlookup_nice = 20\n"), "database.lookup_nice"),
        (
            format!("{MIN}[tenant.cache]\nmax_stale_secs = 99999999999\n"),
            "tenant.cache.max_stale_secs",
        ),
        (
            format!("{MIN}[limits]\nmax_connections = 0\n"),
            "limits.max_connections",
        ),
        (
            "[pools.default]\nbackends = [\"127.0.0.1:1\"]\nhealth_check_statuses = [99]\n".to_string(),
            "pools.default.health_check_statuses",
        ),
        (
            "[pools.default]\nbackends = [\"127.0.0.1:1\"]\nhealth_check_host = \"a b\"\n".to_string(),
            "pools.default.health_check_host",
        ),
        (
            format!("{MIN}[limits]\nrequest_head_timeout_ms = 0\n"),
            "limits.request_head_timeout_ms",
        ),
        (
            format!("{MIN}[limits]\nsend_timeout_ms = 0\n"),
            "limits.send_timeout_ms",
        ),
        (
            format!("{MIN}[limits]\nlingering_close_ms = 300001\n"),
            "limits.lingering_close_ms",
        ),
        (
            format!("{MIN}[limits]\nrequest_body_buffer_bytes = 1073741825\nrequest_body_buffer_total_mib = 2048\n"),
            "limits.request_body_buffer_bytes",
        ),
        (
            format!("{MIN}[limits]\nrequest_body_buffer_total_mib = 0\n"),
            "limits.request_body_buffer_total_mib",
        ),
        (
            format!("{MIN}[limits]\nrequest_body_buffer_bytes = 16777216\nrequest_body_buffer_total_mib = 8\n"),
            "limits.request_body_buffer_total_mib",
        ),
        (
            format!("{MIN}[limits]\nrequest_body_buffer_bytes = 8388608\nrequest_body_buffer_total_mib = 8\n"),
            "limits.request_body_buffer_total_mib",
        ),
        (
            format!("{MIN}[limits]\nresponse_body_buffer_bytes = 1073741825\nresponse_body_buffer_total_mib = 2048\n"),
            "limits.response_body_buffer_bytes",
        ),
        (
            format!("{MIN}[limits]\nresponse_body_buffer_total_mib = 1048577\n"),
            "limits.response_body_buffer_total_mib",
        ),
        (
            format!("{MIN}[limits]\nresponse_body_buffer_bytes = 16777216\nresponse_body_buffer_total_mib = 8\n"),
            "limits.response_body_buffer_total_mib",
        ),
        (
            format!("{MIN}[database]\nlookup_deadline_ms = 0\n"),
            "database.lookup_deadline_ms",
        ),
    ];
    for (text, key) in cases {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(key), "expected `{key}` in: {err}");
    }
}

#[test]
fn django_tenants_preset_follows_the_app_tables() {
    let c = parse(&format!(
        "{MIN}[tenant]\npreset = \"django-tenants\"\n[tenant.django]\ntenant_table = \"tenants_client\"\n\
         domain_table = \"tenants_domain\"\nactive_column = \"is_active\"\n"
    ))
    .unwrap();
    let q = c.lookup_query();
    assert!(q.contains("FROM \"tenants_domain\" d JOIN \"tenants_client\" c"), "{q}");
    assert!(q.contains("lower(d.domain) = $1"), "{q}");
    assert!(
        q.contains("CASE WHEN c.\"is_active\" THEN 'active' ELSE 'suspended' END"),
        "{q}"
    );
    let a = c.acme_domains_query();
    assert!(
        a.contains("\"tenants_domain\"") && a.contains("WHERE c.\"is_active\""),
        "{a}"
    );
    assert!(c.strip_www());
    assert_eq!(c.public_schema(), Some("public"));
    let off = parse(&format!(
        "{MIN}[tenant]\npreset = \"django-tenants\"\nstrip_www = false\npublic_schema = \"www_site\"\n"
    ))
    .unwrap();
    assert!(!off.strip_www());
    assert_eq!(off.public_schema(), Some("www_site"));
    for (text, key) in [
        (
            "[tenant.django]\ntenant_table = \"a; DROP TABLE x\"\n",
            "tenant.django.tenant_table",
        ),
        (
            "[tenant.django]\nactive_column = \"is active\"\n",
            "tenant.django.active_column",
        ),
        ("[tenant]\npublic_schema = \"pg_catalog\"\n", "tenant.public_schema"),
    ] {
        let err = parse(&format!("{MIN}{text}")).unwrap_err();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn connection_caps_follow_the_file_limit_unless_set() {
    let d = LimitsConfig::default();
    assert_eq!(connection_caps(&d, 20_000), (4936, 308));
    assert_eq!(connection_caps(&d, 1024), (192, 64));
    assert_eq!(connection_caps(&d, 100), (1, 1));
    let set = LimitsConfig {
        max_connections: Some(1000),
        max_connections_per_ip: Some(10),
        ..d
    };
    assert_eq!(connection_caps(&set, 20_000), (1000, 10));
}

#[test]
fn acme_needs_at_least_one_order_slot() {
    let acme = |slots: &str| {
        format!(
            "{MIN}[tls]\nlisten = \"127.0.0.1:8443\"\ncert_dir = {:?}\n[acme]\nenabled = true\n{slots}",
            std::env::temp_dir()
        )
    };
    assert_eq!(parse(&acme("")).unwrap().acme.max_concurrent_orders, 4);
    assert_eq!(
        parse(&acme("max_concurrent_orders = 1\n"))
            .unwrap()
            .acme
            .max_concurrent_orders,
        1
    );
    let err = parse(&acme("max_concurrent_orders = 0\n")).unwrap_err();
    assert!(err.contains("acme.max_concurrent_orders"), "{err}");
}

#[test]
fn effective_config_round_trips_without_secrets() {
    // The config names variables; rendering it never reads them. `PATH`
    // is set in every test environment and stands in for a secret.
    let secret = std::env::var("PATH").unwrap();
    let mut c = parse(MIN).unwrap();
    c.stamp.signing_key.secret_env = "PATH".into();
    let text = c.to_toml();
    assert!(text.contains("secret_env = \"PATH\""));
    assert!(!text.contains(&secret));
    let back: Config = toml::from_str(&text).unwrap();
    back.validate().unwrap();
}

#[test]
fn every_value_of_the_wrong_form_is_named_at_once() {
    let text = format!(
        "{MIN}[listen]\nthreadz = 2\n[database]\nconnect_timeout_ms = \"1s\"\n\
         [custom_domains]\ncheck_timeout_ms = -1\n[headers]\ntrusted_proxies = [\"10.0.0.0/99\", \"x\"]\n"
    );
    let err = Config::parse(&text).unwrap_err();
    for key in [
        "config key `listen.threadz`: ",
        "config key `database.connect_timeout_ms`",
        "config key `custom_domains.check_timeout_ms`",
        "config key `headers.trusted_proxies[0]`",
    ] {
        assert_eq!(err.matches(key).count(), 1, "expected `{key}` once in: {err}");
    }
    // Two unknown keys of one section are two problems.
    let err = Config::parse(&format!("{MIN}[listen]\na = 1\nb = 2\n")).unwrap_err();
    assert!(
        err.contains("unknown field `a`") && err.contains("unknown field `b`"),
        "{err}"
    );
    // Keys taken out fall back to defaults: nothing is reported that only
    // the search caused, and a file without a wrong form still reads.
    let err = Config::parse("[pools.default]\nbackends = [\"nope\"]\n").unwrap_err();
    assert_eq!(err.matches("config key").count(), 1, "{err}");
    assert!(Config::parse(MIN).is_ok());
    // A syntax error is the one answer.
    let err = Config::parse("[listen\nthreads = \"x\"\n").unwrap_err();
    assert!(!err.contains("config key"), "{err}");
}

#[test]
fn acme_keys_name_every_variable_that_is_unset_malformed_or_repeated() {
    let cfg = |list: &str| -> Config {
        toml::from_str(&format!(
            "{MIN}[acme]\nkey_env = \"NEW\"\ndecrypt_key_envs = [{list}]\n"
        ))
        .unwrap()
    };
    let env = |var: &str| match var {
        "NEW" => Some("22".repeat(32)),
        "OLD" => Some(format!(" {} \n", "11".repeat(32))),
        "SAME_AS_NEW" => Some("22".repeat(32)),
        "SHORT" => Some("11".repeat(31)),
        _ => None,
    };
    let keys = cfg("\"OLD\"").acme_keys_from(env).unwrap();
    assert_eq!((keys.seal, keys.open_also), ([0x22; 32], vec![[0x11; 32]]));
    assert!(cfg("").acme_keys_from(env).unwrap().open_also.is_empty());
    let err = cfg("\"OLD\", \"UNSET\", \"SHORT\", \"SAME_AS_NEW\", \"OLD\"")
        .acme_keys_from(env)
        .unwrap_err();
    let ConfigError::Several(errs) = &err else {
        panic!("{err}")
    };
    let keys: Vec<Option<&str>> = errs.iter().map(ConfigError::key).collect();
    assert_eq!(
        keys,
        [
            Some("acme.decrypt_key_envs[1]"),
            Some("acme.decrypt_key_envs[2]"),
            Some("acme.decrypt_key_envs[3]"),
            Some("acme.decrypt_key_envs[4]"),
        ],
        "{err}"
    );
    assert!(err.to_string().contains("`UNSET` is not set"), "{err}");
    assert!(err.to_string().contains("`SHORT` must hold 64 hex digits"), "{err}");
    let err = cfg("\"OLD\"")
        .acme_keys_from(|v| env(v).filter(|_| v != "NEW"))
        .unwrap_err();
    assert_eq!(err.key(), Some("acme.key_env"), "{err}");
}

#[test]
fn the_admin_listener_is_bounded_and_its_metrics_token_needs_a_token() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.admin.max_connections, 64);
    assert_eq!(c.admin.max_connections_per_ip(), 16);
    assert!(!c.admin.metrics_token);
    let small = parse(&format!("{MIN}[admin]\nmax_connections = 3\n")).unwrap();
    assert_eq!(small.admin.max_connections_per_ip(), 1);
    let set = parse(&format!(
        "{MIN}[admin]\nmax_connections = 8\nmax_connections_per_ip = 8\n"
    ))
    .unwrap();
    assert_eq!(set.admin.max_connections_per_ip(), 8);
    for (text, key) in [
        ("[admin]\nmax_connections = 0\n", "admin.max_connections"),
        ("[admin]\nmax_connections = 4097\n", "admin.max_connections"),
        ("[admin]\nmax_connections_per_ip = 0\n", "admin.max_connections_per_ip"),
        (
            "[admin]\nmax_connections = 8\nmax_connections_per_ip = 9\n",
            "admin.max_connections_per_ip",
        ),
        ("[admin]\nmetrics_token = true\n", "admin.metrics_token"),
    ] {
        let c: Config = toml::from_str(&format!("{MIN}{text}")).unwrap();
        let keys: Vec<_> = c.problems().iter().filter_map(|e| e.key()).map(str::to_owned).collect();
        assert_eq!(keys, [key], "{text}");
    }
    let c = parse(&format!(
        "{MIN}[admin]\ntoken_env = \"T\"\nmetrics_token = true\nmax_connections = 4096\n"
    ))
    .unwrap();
    assert!(c.admin.metrics_token);
}
