//! Validation of a parsed config: every problem, each naming its key
//! (`Config::problems`); `Config::validate` refuses the config if there is
//! any.

use super::*;

impl Config {
    /// Refuse a bad config, naming every offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = self.problems();
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Several(problems)),
        }
    }

    /// Every problem with the config, each naming its key.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if !(1..=MAX_THREADS).contains(&self.listen.threads) {
            errs.push(invalid(
                "listen.threads",
                format!("must be between 1 and {MAX_THREADS}"),
            ));
        }
        if self.listen.http == self.listen.admin {
            errs.push(invalid("listen.admin", "must differ from listen.http"));
        }
        if !(1..=MAX_ADMIN_CONNECTIONS).contains(&self.admin.max_connections) {
            errs.push(invalid(
                "admin.max_connections",
                format!("must be between 1 and {MAX_ADMIN_CONNECTIONS}"),
            ));
        }
        if self
            .admin
            .per_ip
            .is_some_and(|n| n == 0 || n > self.admin.max_connections)
        {
            errs.push(invalid(
                "admin.max_connections_per_ip",
                format!(
                    "must be between 1 and admin.max_connections ({})",
                    self.admin.max_connections
                ),
            ));
        }
        if self.admin.metrics_token && self.admin.token_env.is_none() {
            errs.push(invalid(
                "admin.metrics_token",
                "needs admin.token_env (the token it asks for)",
            ));
        }
        if self.database.max_connections == 0 {
            errs.push(invalid("database.max_connections", "must be at least 1"));
        }
        if !(0..=19).contains(&self.database.lookup_nice) {
            errs.push(invalid("database.lookup_nice", "must be between 0 and 19"));
        }
        if let Some(q) = &self.tenant.query {
            if !q.contains("$1") {
                errs.push(invalid("tenant.query", "must use $1 for the host name"));
            }
        }
        if self.tenant.notify_channel.is_empty()
            || !self
                .tenant
                .notify_channel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            errs.push(invalid(
                "tenant.notify_channel",
                "must be a plain identifier [A-Za-z0-9_]",
            ));
        }
        for (key, name) in [
            ("tenant.django.tenant_table", Some(&self.tenant.django.tenant_table)),
            ("tenant.django.domain_table", Some(&self.tenant.django.domain_table)),
            ("tenant.django.active_column", self.tenant.django.active_column.as_ref()),
        ] {
            if name.is_some_and(|n| quoted_ident(n).is_none()) {
                errs.push(invalid(
                    key,
                    "must be an SQL identifier ([A-Za-z_][A-Za-z0-9_$]*, optionally schema.table)",
                ));
            }
        }
        if let Some(p) = &self.tenant.public_schema {
            if !stamp::is_valid_tenant_name(p) {
                errs.push(invalid(
                    "tenant.public_schema",
                    "must be a schema name (1-63 bytes, no quotes, `\\`, `;` or control characters, not pg_*)",
                ));
            }
        }
        for (i, d) in self.tenant.base_domains.iter().enumerate() {
            match tenancy::normalize_domain(d) {
                Ok(n) if n == *d => {}
                Ok(n) => errs.push(invalid(
                    format!("tenant.base_domains[{i}]"),
                    format!("write it normalised: `{n}`"),
                )),
                Err(e) => errs.push(invalid(format!("tenant.base_domains[{i}]"), format!("`{d}`: {e}"))),
            }
        }
        let c = &self.tenant.cache;
        for (key, v) in [
            ("tenant.cache.max_entries", c.max_entries),
            ("tenant.cache.negative_max_entries", c.negative_max_entries),
        ] {
            if v == 0 {
                errs.push(invalid(key, "must be positive"));
            }
        }
        for (key, v) in [
            ("tenant.cache.positive_ttl_secs", c.positive_ttl),
            ("tenant.cache.negative_ttl_secs", c.negative_ttl),
        ] {
            if v.is_zero() {
                errs.push(invalid(key, "must be positive"));
            }
        }
        at_most_a_year(
            &mut errs,
            [
                ("tenant.cache.positive_ttl_secs", c.positive_ttl),
                ("tenant.cache.negative_ttl_secs", c.negative_ttl),
                ("tenant.cache.max_stale_secs", c.max_stale),
            ],
        );
        if c.max_stale < c.positive_ttl {
            errs.push(invalid(
                "tenant.cache.max_stale_secs",
                "must be at least tenant.cache.positive_ttl_secs",
            ));
        }
        if !matches!(self.pages.deleted_status, 404 | 410) {
            errs.push(invalid("pages.deleted_status", "must be 404 or 410"));
        }
        for (kind, files) in &self.pages.custom {
            for (field, f) in [("html_file", &files.html_file), ("json_file", &files.json_file)] {
                if let Some(f) = f {
                    if !f.is_file() {
                        errs.push(invalid(
                            format!("pages.custom.{}.{field}", kind.name()),
                            format!("{} is not a readable file", f.display()),
                        ));
                    }
                }
            }
        }
        errs.extend(self.tls_problems());
        errs.extend(self.acme_problems());
        errs.extend(self.custom_domains.problems());
        errs.extend(self.limits_problems());
        if self.metrics.max_tenant_labels == 0 {
            errs.push(invalid("metrics.max_tenant_labels", "must be at least 1"));
        }
        if !self.pools.contains_key("default") {
            errs.push(invalid("pools.default", "a `default` pool is required"));
        }
        for (name, pool) in &self.pools {
            let key = |k: &str| format!("pools.{name}.{k}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                errs.push(invalid(format!("pools.{name}"), "pool names use a-z, 0-9, '_' and '-'"));
            }
            if pool.backends.is_empty() {
                errs.push(invalid(key("backends"), "at least one backend is required"));
            }
            if !pool.health_check_path.starts_with('/') || pool.health_check_path.parse::<http::Uri>().is_err() {
                errs.push(invalid(key("health_check_path"), "must be a path starting with /"));
            }
            if tenancy::normalize_host(&pool.health_check_host).is_err()
                || http::HeaderValue::from_str(&pool.health_check_host).is_err()
            {
                errs.push(invalid(
                    key("health_check_host"),
                    "must be a host name (with an optional :port)",
                ));
            }
            if pool.health_check_statuses.is_empty()
                || pool.health_check_statuses.iter().any(|s| !(100..=599).contains(s))
            {
                errs.push(invalid(
                    key("health_check_statuses"),
                    "must list HTTP statuses (100-599)",
                ));
            }
            for (k, v) in [
                ("health_check_interval_ms", pool.health_check_interval),
                ("connect_timeout_ms", pool.connect_timeout),
                ("read_timeout_ms", pool.read_timeout),
                ("write_timeout_ms", pool.write_timeout),
            ] {
                if v.is_zero() {
                    errs.push(invalid(key(k), "must be positive"));
                }
            }
            if pool.health_check_threshold == 0 {
                errs.push(invalid(key("health_check_threshold"), "must be at least 1"));
            }
        }
        if let Some(lp) = &self.tenant.landing_pool {
            if !self.pools.contains_key(lp) {
                errs.push(invalid(
                    "tenant.landing_pool",
                    format!("no pool named `{lp}` in [pools]"),
                ));
            }
            if self.tenant.base_domains.is_empty() {
                errs.push(invalid("tenant.landing_pool", "needs tenant.base_domains"));
            }
        }
        errs
    }

    pub(super) fn tls_problems(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let t = &self.tls;
        let Some(addr) = t.listen else {
            if !t.certificates.is_empty() || t.cert_dir.is_some() {
                errs.push(invalid("tls.listen", "certificates are configured but no TLS listener"));
            }
            return errs;
        };
        if addr == self.listen.http || addr == self.listen.admin {
            errs.push(invalid("tls.listen", "must differ from listen.http and listen.admin"));
        }
        if t.redirect_port == Some(0) {
            errs.push(invalid("tls.redirect_port", "must be a port (1-65535)"));
        }
        if t.certificates.is_empty() && t.cert_dir.is_none() {
            errs.push(invalid(
                "tls.certificates",
                "TLS is on but no certificates or cert_dir are configured",
            ));
        }
        for (i, c) in t.certificates.iter().enumerate() {
            for (field, p) in [("cert_file", &c.cert_file), ("key_file", &c.key_file)] {
                if !p.is_file() {
                    errs.push(invalid(
                        format!("tls.certificates[{i}].{field}"),
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        }
        if let Some(d) = &t.cert_dir {
            if !d.is_dir() {
                errs.push(invalid("tls.cert_dir", format!("{} is not a directory", d.display())));
            }
        }
        match (t.unknown_sni, &t.default_certificate) {
            (UnknownSni::Default, None) => errs.push(invalid(
                "tls.default_certificate",
                "required when tls.unknown_sni = \"default\"",
            )),
            (_, Some(c)) => {
                for (field, p) in [("cert_file", &c.cert_file), ("key_file", &c.key_file)] {
                    if !p.is_file() {
                        errs.push(invalid(
                            format!("tls.default_certificate.{field}"),
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, p) in t.redirect_exempt.iter().enumerate() {
            if let Err(reason) = crate::route::exempt_path_ok(p) {
                errs.push(invalid(format!("tls.redirect_exempt[{i}]"), reason));
            }
        }
        if t.handshake_timeout.is_zero() {
            errs.push(invalid("tls.handshake_timeout_ms", "must be positive"));
        }
        errs
    }

    pub(super) fn limits_problems(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let l = &self.limits;
        if l.max_connections == Some(0) {
            errs.push(invalid("limits.max_connections", "must be at least 1"));
        }
        for (key, burst) in [
            ("limits.tenant.burst", l.tenant.burst),
            ("limits.client.burst", l.client.burst),
        ] {
            if burst == Some(0) {
                errs.push(invalid(key, "must be at least 1"));
            }
        }
        if l.tenant.max_concurrent > 0 && l.tenant.queue_timeout.is_zero() && l.tenant.max_queued > 0 {
            errs.push(invalid(
                "limits.tenant.queue_timeout_ms",
                "must be positive while requests may queue (or set max_queued = 0)",
            ));
        }
        if l.request_body_buffer_bytes > crate::body::MAX_BUFFERED {
            errs.push(invalid(
                "limits.request_body_buffer_bytes",
                format!("at most {} (1 GiB)", crate::body::MAX_BUFFERED),
            ));
        }
        if l.request_body_buffer_total_mib == 0 || l.request_body_buffer_total_mib > 1 << 20 {
            errs.push(invalid(
                "limits.request_body_buffer_total_mib",
                "from 1 to 1048576 (to read no body first: request_body_buffer_bytes = 0)",
            ));
        } else if l.request_body_buffer_bytes > crate::body::copies_may_hold(l.request_body_buffer_total_mib << 20) {
            // A budget of at least 1 MiB holds two bodies of Pingora's
            // buffer, so only copies can fail this.
            errs.push(invalid(
                "limits.request_body_buffer_total_mib",
                "must hold two bodies of limits.request_body_buffer_bytes (bodies over 64 KiB may take half of it)",
            ));
        }
        if l.response_body_buffer_bytes > crate::response_body::MAX_BUFFERED {
            errs.push(invalid(
                "limits.response_body_buffer_bytes",
                format!("at most {} (1 GiB)", crate::response_body::MAX_BUFFERED),
            ));
        }
        if l.response_body_buffer_total_mib == 0 || l.response_body_buffer_total_mib > 1 << 20 {
            errs.push(invalid(
                "limits.response_body_buffer_total_mib",
                "from 1 to 1048576 (to hold no response: response_body_buffer_bytes = 0)",
            ));
        } else if l.response_body_buffer_bytes > l.response_body_buffer_total_mib << 20 {
            errs.push(invalid(
                "limits.response_body_buffer_total_mib",
                "must hold one response of limits.response_body_buffer_bytes",
            ));
        }
        // A lingering connection keeps its place under the caps.
        if l.lingering_close > MAX_LINGER {
            errs.push(invalid(
                "limits.lingering_close_ms",
                format!("must be at most {} (0: close at once)", MAX_LINGER.as_millis()),
            ));
        }
        if l.max_connections_per_ip == Some(0) {
            errs.push(invalid("limits.max_connections_per_ip", "must be at least 1"));
        }
        for (key, v) in [
            ("limits.request_head_timeout_ms", l.request_head_timeout),
            ("limits.idle_timeout_ms", l.idle_timeout),
            ("limits.send_timeout_ms", l.send_timeout),
            ("database.lookup_deadline_ms", self.database.lookup_deadline),
            ("database.health_check_interval_ms", self.database.health_check_interval),
            ("database.health_check_timeout_ms", self.database.health_check_timeout),
            // 0 would leave no time to connect at all; a statement timeout
            // of 0 is PostgreSQL's "none".
            ("database.connect_timeout_ms", self.database.connect_timeout),
            ("database.query_timeout_ms", self.database.query_timeout),
        ] {
            if v.is_zero() {
                errs.push(invalid(key, "must be positive"));
            }
        }
        // PostgreSQL's statement_timeout is a 32-bit count of milliseconds:
        // more is refused at every connection.
        if self.database.query_timeout.as_millis() > i32::MAX as u128 {
            errs.push(invalid(
                "database.query_timeout_ms",
                format!("must be at most {} (PostgreSQL's statement_timeout)", i32::MAX),
            ));
        }
        errs
    }

    pub(super) fn acme_problems(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let a = &self.acme;
        if !a.enabled {
            return errs;
        }
        if self.tls.listen.is_none() {
            errs.push(invalid("acme.enabled", "needs a TLS listener (tls.listen)"));
        }
        if !(a.directory_url.starts_with("https://") || a.directory_url.starts_with("http://")) {
            errs.push(invalid("acme.directory_url", "must be an http(s) URL"));
        }
        if a.challenges.is_empty() {
            errs.push(invalid("acme.challenges", "at least one of http-01, tls-alpn-01"));
        }
        if let Some(root) = &a.ca_root {
            if !root.is_file() {
                errs.push(invalid(
                    "acme.ca_root",
                    format!("{} is not a readable file", root.display()),
                ));
            }
        }
        for c in &a.contact {
            if !c.starts_with("mailto:") {
                errs.push(invalid("acme.contact", format!("`{c}` must be a mailto: URI")));
            }
        }
        if a.check_interval.is_zero() {
            errs.push(invalid("acme.check_interval_secs", "must be positive"));
        }
        if a.retry_base.is_zero() {
            errs.push(invalid("acme.retry_base_secs", "must be positive"));
        }
        if a.retry_max < a.retry_base {
            errs.push(invalid("acme.retry_max_secs", "must be at least acme.retry_base_secs"));
        }
        // Timer and back-off arithmetic (an interval's next tick, a
        // jittered retry) overflows far past any useful value.
        at_most_a_year(
            &mut errs,
            [
                ("acme.check_interval_secs", a.check_interval),
                ("acme.retry_base_secs", a.retry_base),
                ("acme.retry_max_secs", a.retry_max),
                ("acme.removed_certificate_grace_secs", a.removed_certificate_grace),
            ],
        );
        // The on-demand wait falls back to the default certificate; a wait
        // as long as the whole handshake's would be cut off first.
        if a.on_demand_timeout >= self.tls.handshake_timeout {
            errs.push(invalid(
                "acme.on_demand_timeout_ms",
                format!(
                    "must be less than tls.handshake_timeout_ms ({} ms): the handshake would time out before falling back to the default certificate",
                    self.tls.handshake_timeout.as_millis()
                ),
            ));
        } else if a.on_demand_timeout >= self.limits.request_head_timeout {
            // The request-head deadline counts from accept, the handshake
            // (and its on-demand wait) included: a wait as long would leave
            // the client no time for its request (HTTP/2: its preface).
            errs.push(invalid(
                "acme.on_demand_timeout_ms",
                format!(
                    "must be less than limits.request_head_timeout_ms ({} ms), which counts from accept, the handshake included",
                    self.limits.request_head_timeout.as_millis()
                ),
            ));
        }
        if let Some(eab) = &a.eab {
            if eab.kid.is_empty() {
                errs.push(invalid("acme.eab.kid", "must not be empty"));
            }
        }
        if a.orders_per_hour == 0 {
            errs.push(invalid("acme.orders_per_hour", "must be positive"));
        }
        if a.orders_per_tenant_per_hour == 0 || a.orders_per_tenant_per_hour > a.orders_per_hour.max(1) {
            errs.push(invalid(
                "acme.orders_per_tenant_per_hour",
                format!("must be between 1 and acme.orders_per_hour ({})", a.orders_per_hour),
            ));
        }
        if a.orders_per_domain_per_week == 0 {
            errs.push(invalid("acme.orders_per_domain_per_week", "must be positive"));
        }
        if a.max_concurrent_orders == 0 {
            errs.push(invalid("acme.max_concurrent_orders", "must be at least 1"));
        }
        for (key, rate) in [
            ("acme.challenge_rate", a.challenge_rate),
            ("acme.load_rate", a.load_rate),
        ] {
            if rate > MAX_CHALLENGE_RATE {
                errs.push(invalid(
                    key,
                    format!("must be at most {MAX_CHALLENGE_RATE} (0: no limit)"),
                ));
            }
        }
        if a.certificate_cache_size == 0 {
            errs.push(invalid("acme.certificate_cache_size", "must be at least 1"));
        }
        errs
    }
}

/// A problem for each of these durations longer than [`MAX_TTL`].
fn at_most_a_year<const N: usize>(errs: &mut Vec<ConfigError>, fields: [(&'static str, Duration); N]) {
    for (key, v) in fields {
        if v > MAX_TTL {
            errs.push(invalid(
                key,
                format!("must be at most {} (one year)", MAX_TTL.as_secs()),
            ));
        }
    }
}
