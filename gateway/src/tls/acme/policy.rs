//! Order policy as pure functions: the unit of the per-domain rate limit
//! (Public Suffix List), which order budget holds an order back, the
//! failure back-off, and when a certificate is renewed.

use super::*;

/// The unit of the per-domain order limit: the registrable domain (public
/// suffix plus one label) by the Public Suffix List compiled into the `psl`
/// crate, so `shop.ferrari.co.uk` counts against `ferrari.co.uk` and tenants
/// under the same public suffix (`co.uk`, `github.io`) never share a limit.
/// A name that is itself a public suffix, or a single label, is its own unit.
pub fn registered_domain(name: &str) -> String {
    psl::domain_str(name).unwrap_or(name).to_owned()
}

/// The tenant (its schema) an order for the name is made for and counted
/// against, `Some` only when the name may have a certificate ordered: its
/// tenant is active (and, with claims, its claim is; an unverified name's
/// tenant status is `Unverified`). Base domains are excluded by the caller.
pub(super) fn ordered_for(found: &Resolution) -> Option<&str> {
    match found {
        Resolution::Found(t) if t.status == Status::Active => Some(t.schema()),
        _ => None,
    }
}

/// Orders placed lately, as the budgets count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecentOrders {
    /// In the last hour, across the fleet.
    pub hour: i64,
    /// In the last hour, for the tenant of the name about to be ordered.
    pub tenant_hour: i64,
    /// In the last 7 days, for the name's registrable domain.
    pub domain_week: i64,
}

/// The order budgets (`acme.orders_per_hour`,
/// `acme.orders_per_tenant_per_hour`, `acme.orders_per_domain_per_week`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Budgets {
    pub per_hour: u32,
    pub per_tenant_per_hour: u32,
    pub per_domain_per_week: u32,
}

/// Why an order for a name of `tenant` under `domain` is held back, naming
/// the budget's key, or `None` when every budget has room. The tenant's
/// share is looked at first: a tenant that used it up is told so, even when
/// the whole fleet's is spent too.
pub(super) fn over_budget(recent: RecentOrders, budgets: Budgets, tenant: &str, domain: &str) -> Option<String> {
    let RecentOrders {
        hour,
        tenant_hour,
        domain_week,
    } = recent;
    if tenant_hour >= i64::from(budgets.per_tenant_per_hour) {
        return Some(format!(
            "{tenant_hour} orders for tenant {tenant} in the last hour (acme.orders_per_tenant_per_hour)"
        ));
    }
    if hour >= i64::from(budgets.per_hour) {
        return Some(format!("{hour} orders in the last hour (acme.orders_per_hour)"));
    }
    if domain_week >= i64::from(budgets.per_domain_per_week) {
        return Some(format!(
            "{domain_week} orders for {domain} this week (acme.orders_per_domain_per_week)"
        ));
    }
    None
}

/// Whether a name is served (its certificate is presented): routed to a
/// tenant in any state but unverified. `None` when the database cannot
/// tell: nothing is retired on a guess.
pub(super) fn served(found: &Resolution) -> Option<bool> {
    match found {
        Resolution::Found(t) => Some(t.status != Status::Unverified),
        Resolution::NotFound => Some(false),
        Resolution::Unavailable | Resolution::Misconfigured => None,
    }
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// between 60 % and 66.7 % of its lifetime (`jitter` in 0..1).
pub fn renewal_point(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0) as f64;
    not_before + (lifetime * (0.6 + jitter.clamp(0.0, 1.0) / 15.0)) as i64
}

/// Backoff before retry number `failures`: base·2^(failures-1), capped, ±50 % jitter.
pub fn backoff(base: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(30)));
    let capped = exp.min(max);
    capped.mul_f64(jitter.clamp(0.5, 1.5)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_tenants_get_orders_and_unverified_names_are_not_served() {
        let t = |s| Resolution::Found(Arc::new(crate::tenant::Tenant::new("acme", s, None).expect("tenant")));
        assert!(ordered_for(&t(Status::Active)).is_some());
        for s in [Status::Suspended, Status::Deleted, Status::Unverified] {
            assert!(ordered_for(&t(s)).is_none(), "{s:?}");
        }
        assert!(ordered_for(&Resolution::NotFound).is_none() && ordered_for(&Resolution::Unavailable).is_none());
        assert_eq!(
            served(&t(Status::Suspended)),
            Some(true),
            "its 403 page is served over TLS"
        );
        assert_eq!(served(&t(Status::Unverified)), Some(false));
        assert_eq!(served(&Resolution::NotFound), Some(false));
        assert_eq!(served(&Resolution::Unavailable), None, "never retire on a guess");
        assert_eq!(served(&Resolution::Misconfigured), None);
    }

    #[test]
    fn an_order_is_counted_against_the_active_tenant_it_is_for() {
        let t = |s| {
            Resolution::Found(Arc::new(
                crate::tenant::Tenant::new("acme", s, Some("eu")).expect("tenant"),
            ))
        };
        assert_eq!(
            ordered_for(&t(Status::Active)),
            Some("acme"),
            "the schema, not the pool"
        );
        assert_eq!(ordered_for(&t(Status::Suspended)), None);
        assert_eq!(ordered_for(&Resolution::NotFound), None);
    }

    #[test]
    fn a_tenant_over_its_share_is_held_back_while_others_have_room() {
        let budgets = Budgets {
            per_hour: 50,
            per_tenant_per_hour: 10,
            per_domain_per_week: 20,
        };
        let recent = |hour, tenant_hour, domain_week| RecentOrders {
            hour,
            tenant_hour,
            domain_week,
        };
        assert_eq!(over_budget(recent(49, 9, 19), budgets, "acme", "acme.com"), None);
        let tenant = over_budget(recent(10, 10, 0), budgets, "acme", "acme.com").expect("held back");
        assert!(
            tenant.contains("tenant acme") && tenant.contains("acme.orders_per_tenant_per_hour"),
            "{tenant}"
        );
        let fleet = over_budget(recent(50, 0, 0), budgets, "acme", "acme.com").expect("held back");
        assert!(fleet.ends_with("(acme.orders_per_hour)"), "{fleet}");
        let domain = over_budget(recent(0, 0, 20), budgets, "acme", "acme.com").expect("held back");
        assert!(
            domain.contains("acme.com this week (acme.orders_per_domain_per_week)"),
            "{domain}"
        );
        // Both spent: the tenant hears about its own share.
        let both = over_budget(recent(50, 10, 20), budgets, "acme", "acme.com").expect("held back");
        assert!(both.contains("acme.orders_per_tenant_per_hour"), "{both}");
    }

    #[test]
    fn renewals_spread_between_60_and_67_percent_of_the_lifetime() {
        let (from, to) = (1_000, 1_000 + 90 * 86_400);
        assert_eq!(renewal_point(from, to, 0.0), from + 54 * 86_400);
        let late = renewal_point(from, to, 1.0);
        assert!(late > from + 59 * 86_400 && late <= to - 30 * 86_400, "{late}");
        assert_eq!(renewal_point(from, to, 7.0), late, "jitter is clamped");
        assert_eq!(renewal_point(to, from, 0.5), to, "a nonsense validity renews at once");
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(100));
        assert_eq!(backoff(b, m, 1, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(b, m, 2, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(b, m, 3, 1.0), Duration::from_secs(40));
        assert_eq!(backoff(b, m, 30, 1.0), m);
        assert_eq!(backoff(b, m, 1, 0.5), Duration::from_secs(5));
        assert!(backoff(b, m, 30, 1.5) <= m);
    }

    #[test]
    fn registered_domains() {
        assert_eq!(registered_domain("www.ferrari-cars.com"), "ferrari-cars.com");
        assert_eq!(registered_domain("ferrari-cars.com"), "ferrari-cars.com");
        assert_eq!(registered_domain("localhost"), "localhost");
        // Two tenants under one public suffix are two units, not one.
        assert_eq!(registered_domain("shop.ferrari.co.uk"), "ferrari.co.uk");
        assert_eq!(registered_domain("www.mclaren.co.uk"), "mclaren.co.uk");
        assert_eq!(registered_domain("a.b.ferrari.github.io"), "ferrari.github.io");
        assert_eq!(registered_domain("co.uk"), "co.uk");
        // Not on the list: the last two labels.
        assert_eq!(registered_domain("www.ferrari-cars.test"), "ferrari-cars.test");
    }
}
