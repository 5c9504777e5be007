//! One client connection's requests through the request path's header
//! policy, as `proxy.rs` runs it (`headers::request_id`,
//! `host::request_host` with the connection's `HostMemo`,
//! `headers::upstream` with its `Forwarding`, `headers::to_origin_form`,
//! `headers::stamp` with its `StampMemo`, `headers::apply`), each request
//! then checked as the backend receives it:
//!
//! - exactly one `Host`, which normalises (by the stamp's rules) to the
//!   host the request was routed on;
//! - when routed to a tenant, exactly one `X-Tenant` and one signature,
//!   which a backend's verifier accepts for this request's tenant (not an
//!   earlier request's: the memos are per connection); no other header a
//!   CGI-style backend reads as `X-Tenant*`, whatever the client sent;
//! - the forwarding headers name this request's host, and for a client
//!   that is not a trusted proxy, its own address and scheme only; none of
//!   the headers only a proxy sets (a sample of `headers.rs`'s list) from
//!   a client; the client behind trusted proxies is never a trusted
//!   address;
//! - exactly one request id, the client's if acceptable;
//! - the edits always apply (a request the policy accepted is never
//!   refused for a header value the gateway built).
//!
//! Pingora's part is modelled where it shapes the request: over HTTP/2 the
//! `Host` going upstream is the `:authority` as sent.

use std::net::IpAddr;

use arbitrary::Arbitrary;
use gateway::conn::stream::ConnFacts;
use gateway::headers::{self, Edits, Forward, Signed, Upstream};
use gateway::tenant::host::{goes_as_is, request_host, Host};
use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use stamp::{Key, Signer, Verifier};

use crate::host::KNOWN as HOSTS;
use crate::Choice;

#[derive(Debug, Arbitrary)]
pub struct Input {
    pub peer: Option<IpAddr>,
    pub trusted: bool,
    pub tls: bool,
    /// `Forwarded`, `X-Forwarded-For`, `-Proto`, `-Host` (`headers.forward`).
    pub forward: [bool; 4],
    /// The request path keeps per-connection memos (it always does on the
    /// gateway's own listeners; without them each request stands alone).
    pub memos: bool,
    pub requests: Vec<Request>,
}

#[derive(Debug, Arbitrary)]
pub struct Request {
    pub h2: bool,
    pub method: Choice,
    pub target: Target,
    pub headers: Vec<(Choice, Value)>,
    /// The tenant the lookup routed the request to (`None`: not stamped,
    /// as for the landing pool).
    pub tenant: Option<Choice>,
}

#[derive(Debug, Arbitrary)]
pub enum Target {
    Origin(String),
    Absolute {
        https: bool,
        authority: Choice,
        path: String,
    },
    Raw(String),
}

#[derive(Debug, Arbitrary)]
pub enum Value {
    Host(Choice),
    Text(String),
    Bytes(Vec<u8>),
}

const METHODS: [&str; 6] = ["GET", "POST", "DELETE", "OPTIONS", "PROPFIND", "get"];

const NAMES: [&str; 20] = [
    "host",
    "x-tenant",
    "X-Tenant",
    "x_tenant",
    "X-Tenant-Signature",
    "x-tenant_signature",
    "X-TENANT-ID",
    "x-tenantx",
    "x-forwarded-for",
    "X_Forwarded_Proto",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "X_Real_IP",
    "x-request-id",
    "x-forwarded-port",
    "true-client-ip",
    "content-type",
    "via",
];

const TENANTS: [&str; 6] = ["ferrari", "mclaren", "acme-eu", "Acme.EU", "bücher", "t0001"];

/// Headers only a proxy sets that the gateway never sets itself: a few of
/// `headers.rs`'s list, as a CGI-style backend reads their names.
const PROXY_ONLY: [&str; 6] = [
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-forwarded-ssl",
    "x-forwarded-port",
    "x-forwarded-prefix",
];

/// A header name as a CGI-style backend reads it (`_` as `-`, any case).
fn as_cgi(name: &str) -> String {
    name.bytes()
        .map(|b| char::from(if b == b'_' { b'-' } else { b.to_ascii_lowercase() }))
        .collect()
}

struct Built {
    method: Method,
    uri: Uri,
    h2: bool,
    headers: HeaderMap,
    tenant: Option<String>,
}

impl Request {
    /// The request as Pingora hands it on, if Pingora would (`None`: a
    /// method, target or header it refuses with 400 itself).
    fn build(&self) -> Option<Built> {
        let method = Method::from_bytes(self.method.pick(&METHODS).as_bytes()).ok()?;
        let target = match &self.target {
            Target::Origin(path) => format!("/{path}"),
            Target::Absolute { https, authority, path } => {
                format!(
                    "{}://{}/{path}",
                    if *https { "https" } else { "http" },
                    authority.pick(&HOSTS)
                )
            }
            Target::Raw(raw) => raw.clone(),
        };
        let uri = Uri::try_from(target).ok()?;
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers.iter().take(12) {
            let name = HeaderName::from_bytes(name.pick(&NAMES).as_bytes()).ok()?;
            let value = match value {
                Value::Host(pick) => HeaderValue::from_str(pick.pick(&HOSTS)).ok()?,
                Value::Text(s) => HeaderValue::from_str(s).ok()?,
                Value::Bytes(b) => HeaderValue::from_bytes(b).ok()?,
            };
            headers.append(name, value);
        }
        let tenant = match &self.tenant {
            Some(t) => {
                let name = t.pick(&TENANTS);
                // Schema names come from the tenant table, which refuses
                // names the stamp cannot carry.
                if !stamp::is_valid_tenant_name(name) {
                    return None;
                }
                Some(name.to_owned())
            }
            None => None,
        };
        Some(Built {
            method,
            uri,
            h2: self.h2,
            headers,
            tenant,
        })
    }
}

pub fn run(data: &[u8]) {
    crate::run::<Input>(data, check);
}

pub fn check(input: &Input) {
    let key = || Key::new("k1", b"fuzz-secret-0123456789abcdef".to_vec()).expect("a valid key");
    let signer = Signer::new(key());
    let verifier = Verifier::new(vec![key()], 30).expect("one key");
    let [forwarded, x_for, x_proto, x_host] = input.forward;
    let forward = Forward {
        forwarded,
        x_for,
        x_proto,
        x_host,
    };
    let conn = ConnFacts::new(None);
    let conn = input.memos.then_some(&conn);
    for r in input.requests.iter().take(6) {
        let Some(req) = r.build() else { continue };
        one(input, forward, &signer, &verifier, conn, req);
    }
}

fn one(input: &Input, forward: Forward, signer: &Signer, verifier: &Verifier, conn: Option<&ConnFacts>, req: Built) {
    let (request_id, id_as_sent) = headers::request_id(&req.headers);
    // A host the gateway refuses is answered 400 before any of this.
    let Ok((host, sent)) = request_host(&req.headers, &req.uri, conn.map(|c| &c.host)) else {
        return;
    };
    let version = if req.h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let host_as_sent = goes_as_is(version, &req.uri, &host, sent.is_some());
    let host_value = match host {
        Host::Own(_) => sent.cloned(),
        Host::Kept(_) => None,
    };
    // What Pingora sends upstream before the gateway's edits.
    let mut upstream = req.headers.clone();
    if req.h2 {
        if let Some(a) = req.uri.authority() {
            upstream.insert(
                HOST,
                HeaderValue::from_str(a.as_str()).expect("an authority is a header value"),
            );
        }
    }
    let mut facts = Upstream {
        peer: input.peer,
        trusted: input.trusted,
        host: &host,
        host_as_sent,
        host_value: host_value.as_ref(),
        tls: input.tls,
        forward,
        request_id: (!id_as_sent).then_some(request_id.as_str()),
        stamped: req.tenant.is_some(),
        built: None,
    };
    if !input.trusted {
        facts.built = conn.and_then(|c| c.forwarding.get_or_init(|| headers::Forwarding::new(&facts)).as_ref());
    }
    let mut edits = Edits::new();
    headers::upstream(&upstream, &facts, &mut edits);
    let mut uri = req.uri.clone();
    if headers::to_origin_form(&mut uri).is_err() {
        return; // refused: the target has no origin form
    }
    let now = 1_800_000_000;
    if let Some(schema) = &req.tenant {
        let signed = Signed {
            method: req.method.as_str(),
            host: &host,
            path: uri.path(),
            now,
        };
        headers::stamp(signer, schema, &signed, conn.map(|c| &c.stamp), &mut edits);
    }
    headers::apply(&mut edits, &mut upstream).expect("the gateway's own edits are valid header values");
    let sent = Sent(&upstream);

    // Host: one, and what was routed on.
    let host_sent = sent.one("host").expect("a Host goes upstream");
    assert_eq!(
        stamp::normalize_host_bytes(host_sent),
        host.as_bytes(),
        "Host {:?} sent for a request routed on {:?}",
        String::from_utf8_lossy(host_sent),
        &*host
    );

    // The stamp: this request's tenant, and no client spelling of it.
    for name in upstream.keys() {
        let n = name.as_str();
        let ours = req.tenant.is_some() && (n == "x-tenant" || n == "x-tenant-signature");
        assert!(
            !headers::is_tenant_header(n) || ours,
            "client header {n} reaches the backend"
        );
        assert!(!headers::is_underscored_forwarding(n), "{n} reaches the backend");
    }
    if let Some(schema) = &req.tenant {
        let tenant = sent.one("x-tenant").expect("X-Tenant");
        let signature = sent.one("x-tenant-signature").expect("X-Tenant-Signature");
        let got = verifier.verify(&[tenant], &[signature], req.method.as_str(), host_sent, uri.path(), now);
        assert_eq!(got.as_deref(), Ok(schema.as_str()), "the stamp a backend verifies");
    }

    // Forwarding headers: this request's host; the client's own address
    // and scheme unless it is a trusted proxy.
    let xfh = sent.one("x-forwarded-host");
    assert_eq!(xfh, forward.x_host.then_some(host.as_bytes()), "X-Forwarded-Host");
    let peer = match input.peer {
        Some(ip) => ip.to_string(),
        None => "unknown".into(),
    };
    let scheme = if input.tls { "https" } else { "http" };
    let this_hop = match input.peer {
        Some(IpAddr::V6(_)) => format!("for=\"[{peer}]\";host={};proto={scheme}", &*host),
        _ => format!("for={peer};host={};proto={scheme}", &*host),
    };
    if input.trusted {
        // Appended to the proxy's chain (which passes as it came, in as
        // many fields as it came, when the gateway does not set the header).
        if forward.x_for {
            let xff = sent.one("x-forwarded-for");
            assert!(xff.is_some_and(|v| v.ends_with(peer.as_bytes())), "X-Forwarded-For");
        }
        if forward.forwarded {
            let fwd = sent.one("forwarded");
            assert!(fwd.is_some_and(|v| v.ends_with(this_hop.as_bytes())), "Forwarded");
        }
    } else {
        let xff = sent.one("x-forwarded-for");
        assert_eq!(xff, forward.x_for.then_some(peer.as_bytes()), "X-Forwarded-For");
        let fwd = sent.one("forwarded");
        assert_eq!(fwd, forward.forwarded.then_some(this_hop.as_bytes()), "Forwarded");
        assert_eq!(
            sent.one("x-forwarded-proto"),
            forward.x_proto.then_some(scheme.as_bytes()),
            "X-Forwarded-Proto"
        );
    }
    for name in upstream.keys() {
        let cgi = as_cgi(name.as_str());
        let proxy_only = PROXY_ONLY.contains(&cgi.as_str());
        assert!(
            !proxy_only || (input.trusted && !name.as_str().contains('_')),
            "{name} reaches the backend from a client"
        );
    }

    // The client behind trusted proxies (what per-client limits key on):
    // never an address the gateway trusts.
    let trusted_ip = |ip: IpAddr| ip.is_loopback() || Some(ip) == input.peer;
    if let Some(ip) = headers::forwarded_client(&req.headers, trusted_ip) {
        assert!(
            !trusted_ip(ip),
            "the client behind the proxies is {ip}, a trusted address"
        );
    }

    // The request id.
    let id = sent.one("x-request-id").expect("a request id");
    assert_eq!(
        id,
        request_id.as_str().as_bytes(),
        "the request id sent is the one logged"
    );
}

/// The request as sent upstream.
struct Sent<'a>(&'a HeaderMap);

impl<'a> Sent<'a> {
    /// The value of a header sent at most once (a second is a failure).
    fn one(&self, name: &str) -> Option<&'a [u8]> {
        let mut all = self.0.get_all(name).iter();
        let first = all.next().map(HeaderValue::as_bytes);
        assert!(all.next().is_none(), "{name} sent more than once");
        first
    }
}
