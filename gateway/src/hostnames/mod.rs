//! Custom hostnames: a tenant's claim on a name outside the base domains,
//! proven before the gateway routes the name or orders its certificate (as
//! Cloudflare for SaaS does), so tenant A cannot take tenant B's traffic by
//! registering B's domain first.
//!
//! Lifecycle (`policy`): `pending` (created: not routed, no certificate) →
//! `verified` (ownership proven) → `active` (the domain table maps the name
//! to the claim's tenant: routed, certificate ordered) → `removed`; a claim
//! not proven within `verification_window_secs` ends `expired` (no proof
//! seen) or `failed` (someone else's proof seen), and so does a proof
//! whose domain row does not come within it; with rechecks, an active
//! claim whose name points elsewhere is `moved`, then active again or
//! removed. Names under
//! `tenant.base_domains` need no claim; `custom_domains.verification =
//! "none"` routes every domain row as before claims existed.
//!
//! - `policy`: states, the routing rule, check outcomes, back-off, the
//!   instructions shown to a customer (pure).
//! - `settings`: the `[custom_domains]` section.
//! - `check`: one DNS (TXT, CNAME/A) or HTTP check.
//! - `store`: the claims in PostgreSQL, events, NOTIFY.
//! - `share`: which due claims take the free check slots (the tenant with
//!   fewest checks running first; pure).
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
pub mod share;
pub mod store;
pub mod worker;

/// The name a claim is stored under: normalised like a Host header, with a
/// leading `www.` stripped when lookups strip it (the claim covers both).
pub fn claim_name(raw: &str, strip_www: bool) -> Result<String, tenancy::HostError> {
    let name = tenancy::normalize_domain(raw)?;
    Ok(crate::tenant::host::lookup_name(&name, strip_www).to_owned())
}

/// Why `name` (normalised) cannot be a customer's domain, if it cannot: an
/// IP address, one label (`localhost`, an intranet name) or an all-digit
/// top-level label. The ownership checks resolve a claimed name and connect
/// to what it points at; such names are never a public domain, and would
/// aim them at the gateway's own network.
pub fn not_a_domain(name: &str) -> Option<&'static str> {
    if name.starts_with('[') || name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some("an IP address is not a domain");
    }
    match name.rsplit_once('.') {
        None => Some("a single label is not a public domain"),
        Some((_, tld)) if tld.bytes().all(|b| b.is_ascii_digit()) => Some("a top-level label is never all digits"),
        Some(_) => None,
    }
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
        for bad in ["localhost", "intranet", "10.0.0.5", "[::1]", "shop.123"] {
            let name = claim_name(bad, false).unwrap_or_default();
            assert!(not_a_domain(&name).is_some(), "{bad}");
        }
        for ok in [
            "shop.example",
            "www.ferrari-cars.localhost",
            "xn--caf-dma.example",
            "123.example",
        ] {
            assert_eq!(not_a_domain(ok), None, "{ok}");
        }
        let base = vec!["myapp.com".to_owned()];
        assert!(!needs_claim("acme.myapp.com", &base));
        assert!(!needs_claim("myapp.com", &base));
        assert!(needs_claim("shop.example", &base));
        assert!(needs_claim("notmyapp.com", &base));
    }
}
