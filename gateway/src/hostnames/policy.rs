//! The custom-hostname lifecycle as pure functions over plain types: the
//! states and methods, whether a claim lets a host route, what a check's
//! result does to a claim (a pending claim's proof, an active or moved
//! claim's look at where its name points), the check back-off, and the instructions a
//! product shows its customer, and which addresses the `http` method may
//! connect to. No I/O here; `store` and `worker` act on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Where a claim is in its lifecycle (`custom_hostnames.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostnameStatus {
    /// Created; not routed, no certificate ordered; checks run.
    Pending,
    /// Ownership proven; waiting for the domain table to map the name to
    /// the claim's tenant (a proof by a check counts for
    /// `verification_window_secs`, then the claim expires).
    Verified,
    /// Routed; certificate ordered.
    Active,
    /// The window ended while the name showed someone else's proof.
    Failed,
    /// The window ended with no proof seen.
    Expired,
    /// Removed by an operator, or moved for longer than its window; its
    /// certificate is no longer presented.
    Removed,
    /// Was active, and its name has pointed elsewhere for `moved_after_secs`
    /// (`recheck_interval_secs`): not routed, its certificate retired. It
    /// returns to `active` if the name points here again within
    /// `moved_window_secs`, and is removed after.
    Moved,
}

impl HostnameStatus {
    /// A claim whose window ended without a proof of its own: another
    /// tenant's claim on the name replaces it.
    pub fn ended_unproven(self) -> bool {
        matches!(self, HostnameStatus::Expired | HostnameStatus::Failed)
    }

    pub const ALL: [HostnameStatus; 7] = [
        HostnameStatus::Pending,
        HostnameStatus::Verified,
        HostnameStatus::Active,
        HostnameStatus::Failed,
        HostnameStatus::Expired,
        HostnameStatus::Removed,
        HostnameStatus::Moved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostnameStatus::Pending => "pending",
            HostnameStatus::Verified => "verified",
            HostnameStatus::Active => "active",
            HostnameStatus::Failed => "failed",
            HostnameStatus::Expired => "expired",
            HostnameStatus::Removed => "removed",
            HostnameStatus::Moved => "moved",
        }
    }

    pub fn parse(s: &str) -> Option<HostnameStatus> {
        HostnameStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// States `retry` moves back to `pending` (a new window, the same token).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            HostnameStatus::Pending | HostnameStatus::Failed | HostnameStatus::Expired | HostnameStatus::Moved
        )
    }
}

/// How a claim proves ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A TXT record `_tenant-gateway.<name>` holding the token.
    Txt,
    /// The token served at `http://<name>/.well-known/tenant-gateway/verification.txt`.
    Http,
    /// The name points at the platform (CNAME to the target, or only the
    /// target's addresses). Binds no tenant: opt-in (`custom_domains.methods`).
    Cname,
    /// An operator vouched for the name (`--preverified`); no check.
    Operator,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Txt => "txt",
            Method::Http => "http",
            Method::Cname => "cname",
            Method::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        [Method::Txt, Method::Http, Method::Cname, Method::Operator]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// The TXT record's name for a hostname.
pub fn txt_record_name(name: &str) -> String {
    format!("_tenant-gateway.{name}")
}

/// The path the HTTP method fetches (plain HTTP, the name as Host).
pub const HTTP_PATH: &str = "/.well-known/tenant-gateway/verification.txt";

/// A new claim's token: 128 random bits as 32 lower-case hex digits, so the
/// proof for one (hostname, tenant) claim never proves another.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// What the domain table's row for a host and that host's claim say about
/// routing it. `claim`: the claim's status and tenant, if there is a claim.
/// A host routes only through an active claim of the very tenant the row
/// names; anything else (no claim, not yet active, removed, or a row that
/// moved to another tenant) keeps it unrouted.
pub fn routes(row_tenant: &str, claim: Option<(HostnameStatus, &str)>) -> bool {
    matches!(claim, Some((HostnameStatus::Active, tenant)) if tenant == row_tenant)
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The proof is there.
    Proven,
    /// No proof; `other_proof`: the record or file exists but holds another
    /// value (someone else's token, a typo). `detail` says what was seen.
    NotYet { other_proof: bool, detail: String },
}

/// A pending claim's next state after a check at `now` (seconds).
/// `verify_by`: end of its window; `saw_other`: an earlier check found
/// another value; `routable`: the domain table maps the name to the claim's
/// tenant.
pub fn after_check(finding: &Finding, routable: bool, now: i64, verify_by: i64, saw_other: bool) -> HostnameStatus {
    match finding {
        Finding::Proven if routable => HostnameStatus::Active,
        Finding::Proven => HostnameStatus::Verified,
        Finding::NotYet { other_proof, .. } if now >= verify_by => {
            if saw_other || *other_proof {
                HostnameStatus::Failed
            } else {
                HostnameStatus::Expired
            }
        }
        Finding::NotYet { .. } => HostnameStatus::Pending,
    }
}

/// A verified claim's next state after a look at the domain table at `now`:
/// active once the table maps the name to the claim's tenant (`routable`);
/// otherwise it waits, but a proof by a check counts only for `window`
/// seconds after `verified_at` (a domain can change hands while its row
/// never comes, and the row must not activate a stale proof): then the
/// claim expires, and a retry proves it again. An operator's word
/// (`--preverified`) does not expire.
pub fn after_look(routable: bool, method: Method, verified_at: Option<i64>, now: i64, window: i64) -> HostnameStatus {
    let stale = method != Method::Operator && verified_at.is_some_and(|at| now - at >= window);
    match (routable, stale) {
        (true, _) => HostnameStatus::Active,
        (false, true) => HostnameStatus::Expired,
        (false, false) => HostnameStatus::Verified,
    }
}

/// Where an active or moved claim's name points, by the `cname` method's
/// rule (a CNAME to `cname_target`, or only `cname_addresses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointing {
    Here,
    /// The DNS answered, and not with the platform: another CNAME target or
    /// other addresses (`other`), or no such record at all.
    Elsewhere {
        other: bool,
        detail: String,
    },
    /// No answer to go by (a timeout, SERVFAIL, a refused query): never
    /// counts against a claim, so a failing resolver moves nothing.
    Unknown(String),
}

/// Where a claim's name points when its `www.` name is served as it is
/// (`tenant.strip_www`: the claim covers both): here if either points here
/// (a customer may point only `www.` at the platform and keep the apex
/// elsewhere), elsewhere only if both answers say so, otherwise unknown.
pub fn either(name: Pointing, www: Pointing) -> Pointing {
    match (name, www) {
        (Pointing::Here, _) | (_, Pointing::Here) => Pointing::Here,
        (Pointing::Elsewhere { other: a, detail: da }, Pointing::Elsewhere { other: b, detail: db }) => {
            Pointing::Elsewhere {
                other: a || b,
                detail: format!("{da}; {db}"),
            }
        }
        (Pointing::Unknown(detail), _) | (_, Pointing::Unknown(detail)) => Pointing::Unknown(detail),
    }
}

/// How long names may point elsewhere (`[custom_domains]`, seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveRules {
    /// An active claim pointing elsewhere this long (by every answer since
    /// the first that did) becomes `moved`.
    pub moved_after: i64,
    /// A moved claim not pointing here again this long after it moved is
    /// removed.
    pub moved_window: i64,
}

/// An active or moved claim after a look at where its name points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterRecheck {
    pub status: HostnameStatus,
    /// Since when its answers have said elsewhere (unix seconds), if they do.
    pub failing_since: Option<i64>,
}

/// How a moved claim whose name points here again comes back. While its
/// name pointed elsewhere for `moved_after_secs` it may have changed hands
/// (sold, lapsed and registered again), and a name pointing here says
/// nothing about who pointed it: the new owner, about to sign up with
/// another tenant, would reach the old one. So it comes back only by a
/// proof that names the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comeback {
    /// `cname`: pointing here was all its proof ever was (it binds no
    /// tenant: first to claim wins, as for any name pointing here).
    Pointing,
    /// `txt`: its TXT record with the claim's token is there again (the
    /// one check that binds the claim without the name routing here).
    Txt,
    /// `http`, an operator's word: no look can prove it again while the
    /// name points here (the gateway answers the token's path for an
    /// unrouted name with 404), so only the operator brings it back (added
    /// again `--preverified`) or it is removed when its window ends.
    Operator,
}

/// How a moved claim proven by `method` comes back ([`Comeback`]).
pub fn comeback(method: Method) -> Comeback {
    match method {
        Method::Cname => Comeback::Pointing,
        Method::Txt => Comeback::Txt,
        Method::Http | Method::Operator => Comeback::Operator,
    }
}

/// An active or moved claim's next state after a look at `now`.
/// `failing_since`: since when answers have said elsewhere; `moved_at`:
/// when a moved claim moved; `reproven`: for a moved claim, whether the
/// proof it comes back by ([`comeback`]) holds again. An unknown answer
/// changes nothing; an answer of here ends any failing and brings a moved
/// claim back if it is reproven. Any other status is returned as it is.
pub fn after_recheck(
    status: HostnameStatus,
    pointing: &Pointing,
    failing_since: Option<i64>,
    moved_at: Option<i64>,
    now: i64,
    rules: MoveRules,
    reproven: bool,
) -> AfterRecheck {
    let keep = |status| AfterRecheck { status, failing_since };
    let back = AfterRecheck {
        status: HostnameStatus::Active,
        failing_since: None,
    };
    match (status, pointing) {
        (HostnameStatus::Active, Pointing::Here) => back,
        (HostnameStatus::Moved, Pointing::Here) if reproven => back,
        (HostnameStatus::Active, Pointing::Elsewhere { .. }) => {
            let since = failing_since.unwrap_or(now).min(now);
            AfterRecheck {
                status: match now - since >= rules.moved_after {
                    true => HostnameStatus::Moved,
                    false => HostnameStatus::Active,
                },
                failing_since: Some(since),
            }
        }
        (HostnameStatus::Moved, _) if now - moved_at.unwrap_or(now) >= rules.moved_window => {
            keep(HostnameStatus::Removed)
        }
        (other, _) => keep(other),
    }
}

/// Delay before a pending claim's next check: 5 s doubling per check,
/// capped at `interval`, with ±25 % jitter (`jitter` in 0..1) so a bulk
/// import does not check in lock step. A customer who just published the
/// proof waits at most `interval` (or asks for a retry).
pub fn next_check_delay(checks: u32, interval: Duration, jitter: f64) -> Duration {
    let base = Duration::from_secs(5).saturating_mul(1u32 << checks.min(20));
    spread(base.min(interval), jitter).min(interval)
}

/// Delay before an active or moved claim's next look: a recheck interval
/// (±25 %, so claims activated together do not stay together) while its
/// name points here; otherwise `check_interval`, to see it come back or go.
pub fn next_recheck_delay(
    after: &AfterRecheck,
    recheck_interval: Duration,
    check_interval: Duration,
    jitter: f64,
) -> Duration {
    match (after.status, after.failing_since) {
        (HostnameStatus::Active, None) => spread(recheck_interval, jitter),
        _ => check_interval,
    }
}

/// `d` ±25 % (`jitter` in 0..1).
fn spread(d: Duration, jitter: f64) -> Duration {
    d.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// What a product shows its customer to prove a claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instructions {
    pub method: Method,
    /// One human-readable sentence.
    pub summary: String,
    /// TXT: the record's name and value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txt_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txt_value: Option<String>,
    /// HTTP: the URL and the exact body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_body: Option<String>,
    /// CNAME: the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cname_target: Option<String>,
}

/// The instructions for a claim on `name` with `token`.
pub fn instructions(name: &str, method: Method, token: &str, cname_target: Option<&str>) -> Instructions {
    let mut i = Instructions {
        method,
        summary: String::new(),
        txt_name: None,
        txt_value: None,
        http_url: None,
        http_body: None,
        cname_target: None,
    };
    match method {
        Method::Txt => {
            let record = txt_record_name(name);
            i.summary = format!("Add a DNS TXT record named {record} with the value {token}.");
            i.txt_name = Some(record);
            i.txt_value = Some(token.to_owned());
        }
        Method::Http => {
            let url = format!("http://{name}{HTTP_PATH}");
            i.summary = format!("Serve the text {token} at {url} (plain HTTP, status 200, nothing else in the body).");
            i.http_url = Some(url);
            i.http_body = Some(token.to_owned());
        }
        Method::Cname => {
            let target = cname_target.unwrap_or_default();
            i.summary = format!("Point {name} at {target} with a DNS CNAME record.");
            i.cname_target = Some(target.to_owned());
        }
        Method::Operator => i.summary = "Vouched for by an operator; nothing to publish.".into(),
    }
    i
}

/// Whether `ip` is reachable on the public internet: not loopback,
/// private, shared (CGNAT), link-local (cloud metadata services live
/// there), documentation, benchmarking, multicast, reserved or
/// unspecified, per IANA's special-purpose registries; an IPv6 address
/// carrying an IPv4 one (mapped, NAT64, 6to4) is judged by that one. The
/// `http` method connects only to such addresses unless the operator
/// allows others: a claimed name is the claimant's to point anywhere,
/// inside the platform's network too. IPv6 is an allow-list: global
/// unicast (2000::/3) less its special ranges. (std's `is_global` is not
/// stable; these are the registries' ranges as of 2025.)
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const NOT_PUBLIC: [([u8; 4], u32); 15] = [
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 2, 0], 24),
        ([192, 88, 99, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    let bits = u32::from(ip);
    !NOT_PUBLIC
        .iter()
        .any(|&(net, len)| bits >> (32 - len) == u32::from(Ipv4Addr::from(net)) >> (32 - len))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let within = |net: u128, len: u32| bits >> (128 - len) == net >> (128 - len);
    // Carrying an IPv4 address: IPv4-mapped (::ffff:0:0/96), NAT64's
    // well-known prefix (64:ff9b::/96), 6to4 (2002::/16, bits 16-47).
    if within(0xffff << 32, 96) || within(0x64_ff9b << 96, 96) {
        return is_public_v4(Ipv4Addr::from(bits as u32));
    }
    if within(0x2002 << 112, 16) {
        return is_public_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    // Only global unicast (2000::/3) is public, less its special ranges:
    // everything else (loopback, unique local, link-local, multicast,
    // discard-only, local-use NAT64, IPv4-translated, unassigned) is not.
    const NOT_PUBLIC: [(u128, u32); 4] = [
        (0x2001 << 112, 23),     // IETF protocol assignments (Teredo, ORCHID, ...)
        (0x2001_0db8 << 96, 32), // documentation
        (0x3fff << 112, 20),     // documentation
        (0x5f00 << 112, 16),     // segment routing (SRv6) SIDs
    ];
    within(0x2000 << 112, 3) && !NOT_PUBLIC.iter().any(|&(net, len)| within(net, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_globally_reachable_addresses_are_public() {
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        let not_public = [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "100::1",
            "100:0:0:1::1",
            "::ffff:0:808:808",
            "5f00::1",
            "4000::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        for ip in not_public {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
    }

    #[test]
    fn only_an_active_claim_of_the_rows_own_tenant_routes() {
        assert!(routes("acme", Some((HostnameStatus::Active, "acme"))));
        assert!(!routes("acme", None));
        assert!(
            !routes("acme", Some((HostnameStatus::Active, "globex"))),
            "a row that moved"
        );
        for st in HostnameStatus::ALL {
            if st != HostnameStatus::Active {
                assert!(!routes("acme", Some((st, "acme"))), "{st:?}");
            }
        }
    }

    #[test]
    fn a_check_moves_a_claim_along_its_lifecycle() {
        let none = Finding::NotYet {
            other_proof: false,
            detail: "no TXT record".into(),
        };
        let other = Finding::NotYet {
            other_proof: true,
            detail: "TXT holds another value".into(),
        };
        assert_eq!(
            after_check(&Finding::Proven, true, 10, 100, false),
            HostnameStatus::Active
        );
        assert_eq!(
            after_check(&Finding::Proven, false, 10, 100, false),
            HostnameStatus::Verified
        );
        // Proof counts even at the last moment.
        assert_eq!(
            after_check(&Finding::Proven, true, 100, 100, true),
            HostnameStatus::Active
        );
        assert_eq!(after_check(&none, true, 10, 100, false), HostnameStatus::Pending);
        assert_eq!(after_check(&other, true, 10, 100, false), HostnameStatus::Pending);
        assert_eq!(after_check(&none, true, 100, 100, false), HostnameStatus::Expired);
        assert_eq!(after_check(&other, true, 100, 100, false), HostnameStatus::Failed);
        assert_eq!(after_check(&none, true, 100, 100, true), HostnameStatus::Failed);
    }

    #[test]
    fn a_proof_waits_for_its_domain_row_only_for_the_window() {
        use HostnameStatus::{Active, Expired, Verified};
        // The row maps the name: active, whenever it comes (a row read at
        // the same look as the window's end still counts).
        assert_eq!(after_look(true, Method::Txt, Some(0), 100, 100), Active);
        assert_eq!(after_look(false, Method::Txt, Some(0), 99, 100), Verified);
        assert_eq!(after_look(false, Method::Http, Some(0), 100, 100), Expired);
        // An operator's word does not expire; nor a claim with no proof time.
        assert_eq!(after_look(false, Method::Operator, Some(0), 10_000, 100), Verified);
        assert_eq!(after_look(false, Method::Cname, None, 10_000, 100), Verified);
    }

    #[test]
    fn a_moved_claim_comes_back_only_by_a_proof_that_names_it() {
        assert_eq!(comeback(Method::Cname), Comeback::Pointing);
        assert_eq!(comeback(Method::Txt), Comeback::Txt);
        assert_eq!(comeback(Method::Http), Comeback::Operator);
        assert_eq!(comeback(Method::Operator), Comeback::Operator);
    }

    #[test]
    fn a_claim_whose_name_points_elsewhere_moves_only_after_a_while_of_answers_saying_so() {
        use HostnameStatus::{Active, Moved, Pending, Removed};
        let rules = MoveRules {
            moved_after: 100,
            moved_window: 1000,
        };
        let here = Pointing::Here;
        let away = Pointing::Elsewhere {
            other: true,
            detail: "CNAME to elsewhere.example".into(),
        };
        let unknown = Pointing::Unknown("SERVFAIL".into());
        let at = |status, failing_since| AfterRecheck { status, failing_since };
        // The first answer of elsewhere starts the clock; the claim stays.
        assert_eq!(
            after_recheck(Active, &away, None, None, 50, rules, true),
            at(Active, Some(50))
        );
        assert_eq!(
            after_recheck(Active, &away, Some(50), None, 149, rules, true),
            at(Active, Some(50))
        );
        // Elsewhere for `moved_after`: moved.
        assert_eq!(
            after_recheck(Active, &away, Some(50), None, 150, rules, true),
            at(Moved, Some(50))
        );
        // An answer of here ends the failing; no answer changes nothing,
        // however long it lasts (a resolver down moves no claim).
        assert_eq!(
            after_recheck(Active, &here, Some(50), None, 149, rules, true),
            at(Active, None)
        );
        assert_eq!(
            after_recheck(Active, &unknown, Some(50), None, 10_000, rules, true),
            at(Active, Some(50))
        );
        assert_eq!(
            after_recheck(Active, &unknown, None, None, 10_000, rules, true),
            at(Active, None)
        );
        // A clock that went back does not make the failing older.
        assert_eq!(
            after_recheck(Active, &away, Some(500), None, 400, rules, true),
            at(Active, Some(400))
        );
        // Moved: back to active when it points here within its window and
        // its proof holds again; removed once the window ends without
        // that, whatever the answer.
        assert_eq!(
            after_recheck(Moved, &here, Some(50), Some(150), 900, rules, true),
            at(Active, None)
        );
        assert_eq!(
            after_recheck(Moved, &here, Some(50), Some(150), 900, rules, false),
            at(Moved, Some(50))
        );
        assert_eq!(
            after_recheck(Moved, &here, Some(50), Some(150), 1150, rules, false),
            at(Removed, Some(50))
        );
        // Reproven means nothing to an active claim.
        assert_eq!(
            after_recheck(Active, &here, Some(50), None, 149, rules, false),
            at(Active, None)
        );
        assert_eq!(
            after_recheck(Moved, &away, Some(50), Some(150), 1149, rules, true),
            at(Moved, Some(50))
        );
        assert_eq!(
            after_recheck(Moved, &unknown, Some(50), Some(150), 1150, rules, true),
            at(Removed, Some(50))
        );
        assert_eq!(
            after_recheck(Moved, &away, Some(50), Some(150), 1150, rules, true),
            at(Removed, Some(50))
        );
        // Another status is not this look's to change.
        assert_eq!(
            after_recheck(Pending, &here, None, None, 0, rules, true),
            at(Pending, None)
        );
    }

    #[test]
    fn a_name_and_its_www_point_here_if_either_does() {
        let here = || Pointing::Here;
        let away = |d: &str| Pointing::Elsewhere {
            other: d == "other",
            detail: d.into(),
        };
        let unknown = || Pointing::Unknown("SERVFAIL".into());
        assert_eq!(either(away("none"), here()), Pointing::Here);
        assert_eq!(either(here(), unknown()), Pointing::Here);
        assert_eq!(
            either(away("none"), away("other")),
            Pointing::Elsewhere {
                other: true,
                detail: "none; other".into()
            }
        );
        // One answer missing: nothing to go by.
        assert_eq!(either(away("none"), unknown()), unknown());
        assert_eq!(either(unknown(), away("none")), unknown());
    }

    #[test]
    fn a_claim_pointing_here_is_looked_at_again_a_recheck_interval_later() {
        let (day, minute) = (Duration::from_secs(86_400), Duration::from_secs(60));
        let at = |status, failing_since| AfterRecheck { status, failing_since };
        assert_eq!(
            next_recheck_delay(&at(HostnameStatus::Active, None), day, minute, 0.0),
            day.mul_f64(0.75)
        );
        assert_eq!(
            next_recheck_delay(&at(HostnameStatus::Active, None), day, minute, 1.0),
            day.mul_f64(1.25)
        );
        // Failing, or moved: soon.
        assert_eq!(
            next_recheck_delay(&at(HostnameStatus::Active, Some(5)), day, minute, 0.5),
            minute
        );
        assert_eq!(
            next_recheck_delay(&at(HostnameStatus::Moved, Some(5)), day, minute, 0.5),
            minute
        );
    }

    #[test]
    fn checks_back_off_up_to_the_interval() {
        let i = Duration::from_secs(60);
        assert!(next_check_delay(0, i, 0.5) == Duration::from_secs(5));
        assert!(next_check_delay(1, i, 0.5) == Duration::from_secs(10));
        assert!(next_check_delay(30, i, 1.0) <= i);
        assert!(next_check_delay(30, i, 0.0) >= i.mul_f64(0.75));
        assert_eq!(next_check_delay(3, Duration::from_secs(1), 1.0), Duration::from_secs(1));
    }

    #[test]
    fn tokens_are_fresh_per_claim() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn instructions_name_the_record_url_and_target() {
        let t = instructions("shop.example.com", Method::Txt, "abc", None);
        assert_eq!(t.txt_name.as_deref(), Some("_tenant-gateway.shop.example.com"));
        assert_eq!(t.txt_value.as_deref(), Some("abc"));
        let h = instructions("shop.example.com", Method::Http, "abc", None);
        assert_eq!(
            h.http_url.as_deref(),
            Some("http://shop.example.com/.well-known/tenant-gateway/verification.txt")
        );
        assert_eq!(h.http_body.as_deref(), Some("abc"));
        let c = instructions("shop.example.com", Method::Cname, "abc", Some("edge.myapp.com"));
        assert_eq!(c.cname_target.as_deref(), Some("edge.myapp.com"));
        assert!(c.summary.contains("edge.myapp.com"));
    }

    #[test]
    fn names_round_trip() {
        for st in HostnameStatus::ALL {
            assert_eq!(HostnameStatus::parse(st.as_str()), Some(st));
        }
        for m in [Method::Txt, Method::Http, Method::Cname, Method::Operator] {
            assert_eq!(Method::parse(m.as_str()), Some(m));
        }
        assert!(HostnameStatus::Expired.retryable() && !HostnameStatus::Active.retryable());
        assert!(HostnameStatus::Moved.retryable() && !HostnameStatus::Removed.retryable());
    }
}
