//! Custom hostnames: a tenant's claim on a name outside the base domains,
//! proven before the gateway routes the name or orders its certificate (as
//! Cloudflare for SaaS does), so tenant A cannot take tenant B's traffic by
//! registering B's domain first.
//!
//! Lifecycle (`policy`): `pending` (created: not routed, no certificate) →
//! `verified` (ownership proven) → `active` (the domain table maps the name
//! to the claim's tenant: routed, certificate ordered) → `removed`; a claim
//! not proven within `verification_window_secs` ends `expired` (no proof
//! seen) or `failed` (someone else's proof seen). Names under
//! `tenant.base_domains` need no claim; `custom_domains.verification =
//! "none"` routes every domain row as before claims existed.
//!
//! - `policy`: states, the routing rule, check outcomes, back-off, the
//!   instructions shown to a customer (pure).
//! - `settings`: the `[custom_domains]` section.
//! - `check`: one DNS (TXT, CNAME/A) or HTTP check.
//! - `store`: the claims in PostgreSQL, events, NOTIFY.
//! - `worker`: the fleet's checkers (leases, back-off, wake-ups, gauges).
//! - `ops`: the operator's actions on claims, shared by the CLI and the
//!   operator API.
//!
//! Routing reads the claim in the same query as the domain row
//! (`tenant::lookup`), so no request costs an extra query.

pub mod check;
pub mod ops;
pub mod policy;
pub mod settings;
pub mod store;
pub mod worker;

/// The name a claim is stored under: normalised like a Host header, with a
/// leading `www.` stripped when lookups strip it (the claim covers both).
pub fn claim_name(raw: &str, strip_www: bool) -> Result<String, tenancy::HostError> {
    let name = tenancy::normalize_domain(raw)?;
    Ok(crate::tenant::host::lookup_name(&name, strip_www).to_owned())
}

/// Whether a host needs an active claim to route.
pub fn needs_claim(name: &str, base_domains: &[String]) -> bool {
    !base_domains.iter().any(|b| tenancy::is_under(name, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_stored_under_the_lookup_name() {
        assert_eq!(
            claim_name("WWW.Shop.Example.", true).ok().as_deref(),
            Some("shop.example")
        );
        assert_eq!(
            claim_name("www.shop.example", false).ok().as_deref(),
            Some("www.shop.example")
        );
        assert!(claim_name("shop.example:443", false).is_err());
        let base = vec!["myapp.com".to_owned()];
        assert!(!needs_claim("acme.myapp.com", &base));
        assert!(!needs_claim("myapp.com", &base));
        assert!(needs_claim("shop.example", &base));
        assert!(needs_claim("notmyapp.com", &base));
    }
}
