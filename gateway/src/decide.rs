//! The routing decision, as pure functions over plain types: from what is
//! known of a request (host, path, TLS, SNI, the lookup's answer) to what
//! happens to it: a page, a redirect, an ACME challenge answer, the landing
//! pool, or a tenant's pool. No Pingora, no I/O: `proxy.rs` gathers the
//! facts (and does the lookups), asks here, then acts; the unit tests
//! below cover every outcome without a database or a socket.

use crate::pages::PageKind;
use crate::route;
use crate::tenant::cache::Resolution;
use crate::tenant::{Status, Tenant};

/// The plain-HTTP → HTTPS policy (with a TLS listener and `redirect_http`).
#[derive(Debug, Clone, Copy)]
pub struct RedirectPolicy<'a> {
    /// Port in the Location header.
    pub port: u16,
    /// Paths served over plain HTTP (`tls.redirect_exempt`).
    pub exempt: &'a [String],
}

/// What is known of a request before any lookup.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The normalised host, or `None` if missing or malformed.
    pub host: Option<&'a str>,
    /// The request target's path (still percent-encoded).
    pub path: &'a str,
    /// Arrived over TLS.
    pub tls: bool,
    /// ACME is on (HTTP-01 challenges are answered on plain HTTP).
    pub acme: bool,
    pub redirect: Option<RedirectPolicy<'a>>,
    /// A landing pool is configured for the bare base domains.
    pub landing: bool,
    pub base_domains: &'a [String],
}

/// What happens before (or instead of) the tenant lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum First<'a> {
    Page(PageKind),
    /// An ACME HTTP-01 challenge: answer with this token's key
    /// authorization (`None`: not a valid token, 404).
    AcmeChallenge(Option<&'a str>),
    /// To the same host over HTTPS.
    Redirect {
        port: u16,
    },
    /// The bare base domain to the landing pool, unstamped.
    Landing,
    /// Look the host up; `redirect`: a served host is redirected to this port.
    Lookup {
        redirect: Option<u16>,
    },
}

/// Before the lookup: bad hosts, challenges, the landing pool, and whether
/// a served host will be redirected.
pub fn first<'a>(f: &Facts<'a>) -> First<'a> {
    let Some(host) = f.host else {
        return First::Page(PageKind::BadRequest);
    };
    if !f.tls && f.acme {
        if let Some(token) = route::acme_token(f.path) {
            return First::AcmeChallenge(token.ok());
        }
    }
    let redirect = match f.redirect {
        Some(r) if !f.tls && !route::exempt(f.path, r.exempt) => Some(r.port),
        _ => None,
    };
    if f.landing && f.base_domains.iter().any(|b| b == host) {
        return match redirect {
            Some(port) => First::Redirect { port },
            None => First::Landing,
        };
    }
    First::Lookup { redirect }
}

/// How the connection's SNI relates to the request's host (TLS only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniFact<'a> {
    /// Plain HTTP, no SNI sent, or the SNI is the host itself.
    Agrees,
    /// The SNI was malformed, or the connection's facts are missing.
    Invalid,
    /// Another name: the tenant it resolves to (`None`: no tenant).
    OtherName { tenant: Option<&'a str> },
}

/// Which pool a tenant's request goes to.
#[derive(Debug, PartialEq, Eq)]
pub enum PoolChoice<'a> {
    Default,
    /// The tenant's own pool (it goes there and nowhere else).
    Pinned(&'a str),
}

/// What happens after the lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// A page; `attributed`: counted as the tenant's request.
    Page {
        kind: PageKind,
        attributed: bool,
    },
    Redirect {
        port: u16,
    },
    /// Proxy (after the tenant's limits admit it).
    Proxy(PoolChoice<'a>),
}

/// After the lookup. `redirect`: from [`First::Lookup`]; `pool_exists`:
/// whether a pinned pool is configured.
pub fn decide<'a>(
    found: &'a Resolution,
    redirect: Option<u16>,
    sni: SniFact<'_>,
    pool_exists: impl Fn(&str) -> bool,
) -> Decision<'a> {
    let page = |kind, attributed| Decision::Page { kind, attributed };
    let tenant: &Tenant = match found {
        Resolution::Found(t) => t,
        Resolution::NotFound => return page(PageKind::NotFound, false),
        Resolution::Unavailable => return page(PageKind::Unavailable, false),
        Resolution::Misconfigured => return page(PageKind::Misconfigured, false),
    };
    // A custom hostname without an active claim of this tenant is not the
    // tenant's (yet): no redirect, no attribution.
    if tenant.status == Status::Unverified {
        return page(PageKind::Unverified, false);
    }
    // Plain HTTP is redirected only for hosts we serve: no open redirect.
    if let Some(port) = redirect {
        return Decision::Redirect { port };
    }
    let sni_ok = match sni {
        SniFact::Agrees => true,
        SniFact::Invalid => false,
        SniFact::OtherName { tenant: other } => other == Some(tenant.schema()),
    };
    if !sni_ok {
        return page(PageKind::Misdirected, true);
    }
    match tenant.status {
        Status::Active => {}
        Status::Suspended => return page(PageKind::Suspended, true),
        Status::Deleted => return page(PageKind::Deleted, true),
        Status::Unverified => return page(PageKind::Unverified, false),
    }
    match tenant.pool() {
        None => Decision::Proxy(PoolChoice::Default),
        Some(name) if pool_exists(name) => Decision::Proxy(PoolChoice::Pinned(name)),
        Some(_) => page(PageKind::Unavailable, true),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const BASES: &[String] = &[];

    fn facts<'a>(host: Option<&'a str>, path: &'a str, tls: bool) -> Facts<'a> {
        Facts {
            host,
            path,
            tls,
            acme: false,
            redirect: None,
            landing: false,
            base_domains: BASES,
        }
    }

    fn found(status: Status, pool: Option<&str>) -> Resolution {
        Resolution::Found(Arc::new(Tenant::new("acme", status, pool).expect("tenant")))
    }

    fn any_pool(_: &str) -> bool {
        true
    }

    #[test]
    fn a_missing_or_bad_host_is_a_bad_request() {
        assert_eq!(first(&facts(None, "/", false)), First::Page(PageKind::BadRequest));
        assert_eq!(first(&facts(None, "/", true)), First::Page(PageKind::BadRequest));
    }

    #[test]
    fn acme_challenges_are_answered_on_plain_http_only_with_acme_on() {
        let mut f = facts(Some("shop.example"), "/.well-known/acme-challenge/abc_DEF-1", false);
        assert_eq!(
            first(&f),
            First::Lookup { redirect: None },
            "ACME off: an ordinary path"
        );
        f.acme = true;
        assert_eq!(first(&f), First::AcmeChallenge(Some("abc_DEF-1")));
        f.path = "/.well-known/acme-challenge/a/b";
        assert_eq!(
            first(&f),
            First::AcmeChallenge(None),
            "not a token: 404, never a backend"
        );
        f.tls = true;
        f.path = "/.well-known/acme-challenge/abc";
        assert_eq!(
            first(&f),
            First::Lookup { redirect: None },
            "over TLS: an ordinary path"
        );
    }

    #[test]
    fn plain_http_is_redirected_except_exempt_paths() {
        let exempt = vec!["/healthz".to_owned()];
        let mut f = facts(Some("acme.myapp.com"), "/projects", false);
        f.redirect = Some(RedirectPolicy {
            port: 8443,
            exempt: &exempt,
        });
        assert_eq!(first(&f), First::Lookup { redirect: Some(8443) });
        f.path = "/healthz/deep";
        assert_eq!(first(&f), First::Lookup { redirect: None });
        f.path = "/healthz/../projects";
        assert_eq!(
            first(&f),
            First::Lookup { redirect: Some(8443) },
            "not canonical: never exempt"
        );
        f.tls = true;
        f.path = "/projects";
        assert_eq!(first(&f), First::Lookup { redirect: None });
        // The lookup decides: only served hosts are redirected.
        let served = found(Status::Active, None);
        assert_eq!(
            decide(&served, Some(8443), SniFact::Agrees, any_pool),
            Decision::Redirect { port: 8443 }
        );
        assert_eq!(
            decide(&Resolution::NotFound, Some(8443), SniFact::Agrees, any_pool),
            Decision::Page {
                kind: PageKind::NotFound,
                attributed: false
            }
        );
    }

    #[test]
    fn the_bare_base_domain_goes_to_the_landing_pool() {
        let bases = vec!["myapp.com".to_owned()];
        let exempt = Vec::new();
        let mut f = facts(Some("myapp.com"), "/", true);
        f.base_domains = &bases;
        assert_eq!(first(&f), First::Lookup { redirect: None }, "no landing pool: a lookup");
        f.landing = true;
        assert_eq!(first(&f), First::Landing);
        f.tls = false;
        f.redirect = Some(RedirectPolicy {
            port: 443,
            exempt: &exempt,
        });
        assert_eq!(first(&f), First::Redirect { port: 443 });
        f.host = Some("acme.myapp.com");
        assert_eq!(
            first(&f),
            First::Lookup { redirect: Some(443) },
            "subdomains are tenants"
        );
    }

    #[test]
    fn lookup_failures_get_their_own_pages_unattributed() {
        for (r, kind) in [
            (Resolution::NotFound, PageKind::NotFound),
            (Resolution::Unavailable, PageKind::Unavailable),
            (Resolution::Misconfigured, PageKind::Misconfigured),
            (found(Status::Unverified, None), PageKind::Unverified),
        ] {
            assert_eq!(
                decide(&r, None, SniFact::Agrees, any_pool),
                Decision::Page {
                    kind,
                    attributed: false
                }
            );
        }
        // An unverified name is not redirected either.
        assert_eq!(
            decide(&found(Status::Unverified, None), Some(443), SniFact::Agrees, any_pool),
            Decision::Page {
                kind: PageKind::Unverified,
                attributed: false
            }
        );
    }

    #[test]
    fn suspended_and_deleted_tenants_get_their_pages() {
        for (status, kind) in [
            (Status::Suspended, PageKind::Suspended),
            (Status::Deleted, PageKind::Deleted),
        ] {
            assert_eq!(
                decide(&found(status, None), None, SniFact::Agrees, any_pool),
                Decision::Page { kind, attributed: true }
            );
        }
    }

    #[test]
    fn the_sni_must_belong_to_the_same_tenant() {
        let r = found(Status::Active, None);
        let misdirected = Decision::Page {
            kind: PageKind::Misdirected,
            attributed: true,
        };
        assert_eq!(decide(&r, None, SniFact::Invalid, any_pool), misdirected);
        assert_eq!(
            decide(&r, None, SniFact::OtherName { tenant: Some("globex") }, any_pool),
            misdirected
        );
        assert_eq!(
            decide(&r, None, SniFact::OtherName { tenant: None }, any_pool),
            misdirected
        );
        assert_eq!(
            decide(&r, None, SniFact::OtherName { tenant: Some("acme") }, any_pool),
            Decision::Proxy(PoolChoice::Default),
            "another name of the same tenant"
        );
        // A suspended tenant behind a foreign SNI is still misdirected first.
        assert_eq!(
            decide(&found(Status::Suspended, None), None, SniFact::Invalid, any_pool),
            misdirected
        );
    }

    #[test]
    fn a_pinned_tenant_goes_to_its_pool_and_nowhere_else() {
        let r = found(Status::Active, Some("big"));
        assert_eq!(
            decide(&r, None, SniFact::Agrees, |p| p == "big"),
            Decision::Proxy(PoolChoice::Pinned("big"))
        );
        assert_eq!(
            decide(&r, None, SniFact::Agrees, |_| false),
            Decision::Page {
                kind: PageKind::Unavailable,
                attributed: true
            },
            "never the default pool"
        );
        assert_eq!(
            decide(&found(Status::Active, None), None, SniFact::Agrees, |_| false),
            Decision::Proxy(PoolChoice::Default)
        );
    }
}
