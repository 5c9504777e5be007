//! `[custom_domains]`: whether custom hostnames need proof of ownership, by
//! which methods, and how the checks run. Validation names every key.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::Method;
use crate::config::ConfigError;

/// Whether a custom hostname (outside `tenant.base_domains`) must be proven
/// before it routes and gets a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    /// Only names with an active claim (`gateway hostnames add`) route.
    Required,
    /// Any row in the domain table routes (operators who add domains
    /// themselves; the behaviour before claims existed).
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CustomDomainsConfig {
    pub verification: Verification,
    /// Methods a claim may use; the first is the default. `cname` proves
    /// only that the name points here, not which tenant may have it: add it
    /// only if tenants cannot claim names they do not control otherwise.
    pub methods: Vec<Method>,
    /// The `cname` method's target (e.g. `edge.myapp.com`).
    pub cname_target: Option<String>,
    /// Addresses that also count as pointing here for `cname` (an apex
    /// cannot hold a CNAME): every A/AAAA record of the name must be one.
    pub cname_addresses: Vec<IpAddr>,
    /// DNS server for the checks (`ip:port`); the system's resolvers when unset.
    pub resolver: Option<SocketAddr>,
    /// Port the `http` method connects to (80 in production).
    pub http_port: u16,
    /// Whether the `http` method may connect to addresses that are not
    /// public (loopback, private, link-local, ...: `policy::is_public`).
    /// Off by default: a claimant chooses where its name points.
    pub http_private_addresses: bool,
    /// Longest wait between two checks of a pending claim (they start at
    /// 5 s and double); also how often verified claims are re-examined.
    #[serde(rename = "check_interval_secs", with = "crate::config::units::secs")]
    pub check_interval: Duration,
    /// Bound on one check (DNS queries, or connecting and reading the file).
    #[serde(rename = "check_timeout_ms", with = "crate::config::units::ms")]
    pub check_timeout: Duration,
    /// How long a claim stays pending before it expires (or fails), and how
    /// long a proof waits for its domain row (then it expires too).
    #[serde(rename = "verification_window_secs", with = "crate::config::units::secs")]
    pub verification_window: Duration,
    /// Checks this gateway runs at once.
    pub max_concurrent_checks: u32,
    /// How often an active claim looks at whether its name still points
    /// here (by the `cname` method's rule: `cname_target` or
    /// `cname_addresses`, one of which must be set); 0: never. Off by
    /// default: a platform whose customers may put their own CDN or proxy
    /// in front of it cannot tell where a name points.
    #[serde(rename = "recheck_interval_secs", with = "crate::config::units::secs")]
    pub recheck_interval: Duration,
    /// How long every answer must have said elsewhere before an active
    /// claim is moved (unrouted, its certificate retired).
    #[serde(rename = "moved_after_secs", with = "crate::config::units::secs")]
    pub moved_after: Duration,
    /// How long a moved claim may take to point here again (it is active
    /// again at once) before it is removed and its name is free.
    #[serde(rename = "moved_window_secs", with = "crate::config::units::secs")]
    pub moved_window: Duration,
}

impl Default for CustomDomainsConfig {
    fn default() -> Self {
        CustomDomainsConfig {
            verification: Verification::Required,
            methods: vec![Method::Txt, Method::Http],
            cname_target: None,
            cname_addresses: Vec::new(),
            resolver: None,
            http_port: 80,
            http_private_addresses: false,
            check_interval: Duration::from_secs(60),
            check_timeout: Duration::from_millis(5_000),
            verification_window: Duration::from_secs(7 * 86_400),
            max_concurrent_checks: 16,
            recheck_interval: Duration::ZERO,
            moved_after: Duration::from_secs(86_400),
            moved_window: Duration::from_secs(7 * 86_400),
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    crate::config::invalid(format!("custom_domains.{key}"), reason)
}

impl CustomDomainsConfig {
    pub fn required(&self) -> bool {
        self.verification == Verification::Required
    }

    /// Every problem with the section, each naming its key.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if self.methods.is_empty() {
            out.push(invalid("methods", "at least one of txt, http, cname"));
        }
        if self.methods.contains(&Method::Operator) {
            out.push(invalid(
                "methods",
                "`operator` is not a check (use `gateway hostnames add --preverified`)",
            ));
        }
        if self.methods.contains(&Method::Cname) {
            match &self.cname_target {
                None => out.push(invalid("cname_target", "required when methods include cname")),
                Some(t) if tenancy::normalize_domain(t).ok().as_deref() != Some(t.as_str()) => {
                    out.push(invalid("cname_target", format!("`{t}` is not a lower-case host name")))
                }
                Some(_) => {}
            }
        }
        if self.http_port == 0 {
            out.push(invalid("http_port", "must be a port number"));
        }
        if self.check_interval.is_zero() {
            out.push(invalid("check_interval_secs", "must be positive"));
        }
        if self.check_timeout.is_zero() {
            out.push(invalid("check_timeout_ms", "must be positive"));
        }
        if self.verification_window < self.check_interval {
            out.push(invalid(
                "verification_window_secs",
                "must be at least check_interval_secs",
            ));
        }
        if self.max_concurrent_checks == 0 {
            out.push(invalid("max_concurrent_checks", "must be at least 1"));
        }
        if self.rechecks() && self.cname_target.is_none() && self.cname_addresses.is_empty() {
            out.push(invalid(
                "recheck_interval_secs",
                "needs cname_target or cname_addresses: what pointing here means",
            ));
        }
        if self.rechecks() && self.moved_window < self.check_interval {
            out.push(invalid("moved_window_secs", "must be at least check_interval_secs"));
        }
        out
    }

    /// Whether active claims look at where their names point.
    pub fn rechecks(&self) -> bool {
        !self.recheck_interval.is_zero()
    }

    /// `moved_after_secs` and `moved_window_secs` as the policy takes them.
    pub fn move_rules(&self) -> super::policy::MoveRules {
        super::policy::MoveRules {
            moved_after: secs(self.moved_after),
            moved_window: secs(self.moved_window),
        }
    }

    /// `verification_window_secs` as the policy takes it.
    pub fn verification_window_secs(&self) -> i64 {
        secs(self.verification_window)
    }

    /// The method a claim gets when none is asked for.
    pub fn default_method(&self) -> Method {
        self.methods.first().copied().unwrap_or(Method::Txt)
    }
}

/// Whole seconds as the policy's unix-time arithmetic takes them.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let c = CustomDomainsConfig {
            methods: vec![Method::Cname, Method::Operator],
            check_interval: Duration::from_secs(0),
            max_concurrent_checks: 0,
            ..CustomDomainsConfig::default()
        };
        let problems = c.problems();
        let keys: Vec<&str> = problems
            .iter()
            .map(|e| e.key().unwrap_or_else(|| panic!("{e}")))
            .collect();
        assert_eq!(
            keys,
            [
                "custom_domains.methods",
                "custom_domains.cname_target",
                "custom_domains.check_interval_secs",
                "custom_domains.max_concurrent_checks"
            ]
        );
        // Rechecks need to know what pointing here means, and a moved
        // claim at least one check before it is removed.
        let c = CustomDomainsConfig {
            recheck_interval: Duration::from_secs(3600),
            moved_window: Duration::from_secs(10),
            ..CustomDomainsConfig::default()
        };
        let keys: Vec<String> = c.problems().iter().filter_map(|e| e.key().map(str::to_owned)).collect();
        assert_eq!(
            keys,
            [
                "custom_domains.recheck_interval_secs",
                "custom_domains.moved_window_secs"
            ]
        );
        let c = CustomDomainsConfig {
            cname_addresses: vec!["192.0.2.1".parse().unwrap()],
            ..c
        };
        let keys: Vec<String> = c.problems().iter().filter_map(|e| e.key().map(str::to_owned)).collect();
        assert_eq!(keys, ["custom_domains.moved_window_secs"]);
        assert!(CustomDomainsConfig::default().problems().is_empty());
    }
}
