//! Header policy of the request path, as pure functions over `http` types:
//! which client headers never reach a backend (every spelling of
//! `X-Tenant*`; from a client that is not a trusted proxy, the headers only
//! a proxy sets, such as `X-Real-IP`), the forwarding headers and their values (overwritten for
//! clients, appended to for trusted proxies), the request id (the client's
//! if acceptable, else a new one), the normalised `Host`, the origin-form
//! request target, and the stamp (`X-Tenant` + signature over exactly what
//! is forwarded).
//!
//! The policy reads the client's headers and returns [`Edit`]s; `proxy.rs`
//! writes them into a copy of the request's parts and rebuilds the upstream
//! request from it (without Pingora's header-case map, see there). Edits
//! that would change nothing (the client's own acceptable request id, an
//! already-normalised `Host`) are left out.
//!
//! For a client that is not a trusted proxy the forwarding values depend on
//! the connection and the host alone: a connection keeps them as a
//! [`Forwarding`] built for its first host. Later requests clone them: all
//! four for that host, and `X-Forwarded-For` and `-Proto` (which do not
//! name the host) for any other.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::OnceLock;

use http::header::{CONTENT_LENGTH, FORWARDED, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_TENANT: HeaderName = HeaderName::from_static(stamp::TENANT_HEADER);
const X_TENANT_SIGNATURE: HeaderName = HeaderName::from_static(stamp::SIGNATURE_HEADER);

/// The edits of one request, on the stack (a request needs at most eight
/// sets plus the removals of what the client sent under our names).
pub type Edits<'a> = smallvec::SmallVec<[Edit<'a>; 12]>;

/// One change to the request header sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'a> {
    /// Remove every value of this header.
    Remove(HeaderName),
    /// Replace every value of this header with this one.
    Set(HeaderName, Cow<'a, str>),
    /// The same with a value that needs no conversion (a constant).
    Put(HeaderName, HeaderValue),
}

/// The forwarding headers set on each request (`headers.forward`); the
/// others are only removed from what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub forwarded: bool,
    pub x_for: bool,
    pub x_proto: bool,
    pub x_host: bool,
}

impl Forward {
    pub fn from_config(kinds: &[crate::config::ForwardHeader]) -> Forward {
        use crate::config::ForwardHeader as H;
        Forward {
            forwarded: kinds.contains(&H::Forwarded),
            x_for: kinds.contains(&H::XForwardedFor),
            x_proto: kinds.contains(&H::XForwardedProto),
            x_host: kinds.contains(&H::XForwardedHost),
        }
    }

    /// All four (the default).
    pub const ALL: Forward = Forward {
        forwarded: true,
        x_for: true,
        x_proto: true,
        x_host: true,
    };
}

/// The facts the upstream header policy works from.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// The client's address (the TCP peer).
    pub peer: Option<IpAddr>,
    /// The peer is one of `headers.trusted_proxies`.
    pub trusted: bool,
    /// The normalised host the request was routed on.
    pub host: &'a str,
    /// The `Host` going upstream already is `host` itself (from
    /// [`crate::tenant::host::goes_as_is`]): nothing to rewrite.
    pub host_as_sent: bool,
    /// The client's `Host` value, when it is `host` itself and the request
    /// path kept it: `X-Forwarded-Host` shares it (a reference count)
    /// instead of copying `host` into a value of its own.
    pub host_value: Option<&'a HeaderValue>,
    pub tls: bool,
    pub forward: Forward,
    /// The request id to write; `None`: the client's own is there, alone
    /// (from [`request_id`]).
    pub request_id: Option<&'a str>,
    /// The stamp's headers ([`stamp()`]) are set after these edits.
    pub stamped: bool,
    /// The forwarding values this connection built for its first host
    /// (used when built for these facts but the host, see [`Forwarding`]).
    pub built: Option<&'a Forwarding>,
}

/// `Forwarded`, `X-Forwarded-For`, `-Proto` and `-Host` as sent for a client
/// that is not a trusted proxy: a function of the peer, the scheme, the
/// host and the configured set, so it is built once per connection (for
/// its first host) and each request clones the values: a reference count
/// each, where building them costs formatting, validation and an
/// allocation per value (~600 instructions of `upstream_request_filter`
/// per request, bench/RESULTS.md). A request for another host (a
/// connection from a CDN or a load balancer carries many) clones the two
/// that do not name the host and builds `Forwarded` from the kept peer
/// text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    peer: Option<IpAddr>,
    tls: bool,
    forward: Forward,
    /// The host `Forwarded` and `X-Forwarded-Host` were built for.
    host: Box<str>,
    /// The peer as the forwarding headers write it.
    peer_text: Box<str>,
    /// `host` as the `Host` value sent upstream, shared: a request for that
    /// host clones it where a value of its own costs a check, an
    /// allocation, a copy and a free (~200 instructions per request).
    host_value: HeaderValue,
    /// In the order [`upstream`] writes them; `None`: not set (a client's
    /// own value is removed).
    values: [(HeaderName, Option<HeaderValue>); 4],
}

impl Forwarding {
    /// The values [`upstream`] would set for these facts from a client
    /// that is not a trusted proxy (`None` if a value is not a valid header
    /// value: the request path then builds and refuses it as before).
    pub fn new(u: &Upstream<'_>) -> Option<Forwarding> {
        let mut edits = Edits::new();
        let facts = Upstream {
            trusted: false,
            request_id: None,
            host_as_sent: true,
            // A value of its own: a slice of the client's request would
            // keep that request's whole read buffer for the connection's life.
            host_value: None,
            built: None,
            ..*u
        };
        upstream(&HeaderMap::new(), &facts, &mut edits);
        let mut values = [FORWARDED, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST].map(|n| (n, None));
        for edit in edits {
            let (name, value) = match edit {
                Edit::Set(name, value) => (
                    name,
                    shared(HeaderValue::from_maybe_shared(bytes::Bytes::from(value.into_owned())).ok()?),
                ),
                Edit::Put(name, value) => (name, shared(value)),
                Edit::Remove(_) => continue,
            };
            let slot = values.iter_mut().find(|(n, _)| *n == name)?;
            slot.1 = Some(value);
        }
        let host_value = shared(HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(u.host.as_bytes())).ok()?);
        Some(Forwarding {
            peer: u.peer,
            tls: u.tls,
            forward: u.forward,
            host: u.host.into(),
            peer_text: ip_text(u.peer).into(),
            host_value,
            values,
        })
    }

    /// The kept `Host` value, if it is `host`'s.
    fn host_value(&self, host: &str) -> Option<&HeaderValue> {
        (*self.host == *host).then_some(&self.host_value)
    }

    /// Built for these facts but perhaps another host (and the client is
    /// not trusted: a trusted proxy's earlier values are kept, so they vary
    /// per request).
    fn serves(&self, u: &Upstream<'_>) -> bool {
        !u.trusted && self.peer == u.peer && self.tls == u.tls && self.forward == u.forward
    }

    /// [`upstream`]'s forwarding edits for facts it [`serves`](Self::serves).
    fn write<'a>(&self, headers: &HeaderMap, u: &Upstream<'a>, out: &mut Edits<'a>) {
        let other_host = *self.host != *u.host;
        for (name, value) in &self.values {
            let edit = match value {
                None if headers.contains_key(name) => Edit::Remove(name.clone()),
                None => continue,
                // The two that name the host, for another host.
                Some(_) if other_host && *name == FORWARDED => Edit::Set(
                    FORWARDED,
                    forwarded(u.peer, &self.peer_text, u.host, scheme(u.tls)).into(),
                ),
                Some(_) if other_host && *name == X_FORWARDED_HOST => x_forwarded_host(u),
                Some(v) => Edit::Put(name.clone(), v.clone()),
            };
            out.push(edit);
        }
    }
}

/// A header name's byte as a CGI-style backend reads it (WSGI and ASGI
/// servers, Django's `META`): any case, `_` and `-` alike.
fn as_cgi_reads(c: u8) -> u8 {
    match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    }
}

/// Whether `name` reads as `want` (lower case, `-`) to a CGI-style backend.
fn reads_as(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len() && name.iter().zip(want).all(|(c, w)| as_cgi_reads(*c) == *w)
}

/// Whether a header name is one clients must never send upstream:
/// `x-tenant` or `x-tenant-*`, case-insensitive, `_` counting as `-`.
pub fn is_tenant_header(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-tenant";
    let b = name.as_bytes();
    b.len() >= PREFIX.len()
        && reads_as(&b[..PREFIX.len()], PREFIX)
        && (b.len() == PREFIX.len() || as_cgi_reads(b[PREFIX.len()]) == b'-')
}

/// Whether a header name is `X-Forwarded-For`, `-Proto` or `-Host` spelled
/// with `_` in place of some `-` (`X_Forwarded_Proto`), any case. CGI-style
/// backends (WSGI and ASGI servers, Django's `META`) fold `_` and `-` into
/// one variable, so such a header would reach the backend joined with the
/// gateway's own value, client's first: `X_Forwarded_Proto: https` over
/// plain HTTP would make Django's `SECURE_PROXY_SSL_HEADER` read `https`.
/// Removed whoever sent it (a proxy spelling these with `_` is not one the
/// gateway can trust).
pub fn is_underscored_forwarding(name: &str) -> bool {
    const NAMES: [&[u8]; 3] = [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"];
    let b = name.as_bytes();
    matches!(b.len(), 15..=17) && b.contains(&b'_') && NAMES.iter().any(|n| reads_as(b, n))
}

/// Headers only a proxy sets, which backends read as the client's address,
/// scheme, port or path prefix, and which the gateway does not set (it
/// sets `headers.forward`, whose left-out names [`upstream`] removes
/// itself). Who reads each: `x-real-ip` nginx's realip convention and many
/// apps; `client-ip` Rails; `x-forwarded-port` Django
/// (`USE_X_FORWARDED_PORT`), Werkzeug's `ProxyFix`, Rack and Spring;
/// `x-forwarded-prefix` `ProxyFix` and Spring; `x-forwarded-ssl` and
/// `-scheme` Rack, Spring, and Django set to read them
/// (`SECURE_PROXY_SSL_HEADER`); `x-forwarded-protocol` gunicorn (its
/// default `secure_scheme_headers`, trusted from 127.0.0.1: a gateway on
/// the same host); `x-scheme` Tornado; `x-forwarded-server` Traefik and
/// Apache set it; the client-address ones are from django-ipware's list
/// (CDNs set `true-client-ip`, `cf-connecting-ip`, `fastly-client-ip`).
const PROXY_ONLY: [&[u8]; 16] = [
    b"x-scheme",
    b"x-real-ip",
    b"client-ip",
    b"x-client-ip",
    b"x-forwarded",
    b"forwarded-for",
    b"true-client-ip",
    b"x-forwarded-ssl",
    b"cf-connecting-ip",
    b"fastly-client-ip",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
    b"x-forwarded-scheme",
    b"x-forwarded-server",
    b"x-cluster-client-ip",
    b"x-forwarded-protocol",
];

/// Whether a header name is one only a proxy sets ([`PROXY_ONLY`]), any
/// case, `_` counting as `-` (a CGI-style backend reads `X_Real_IP` as
/// `X-Real-IP`). From a client that is not a trusted proxy such a header is
/// a claim about itself the backend would believe (its address, that it
/// came over TLS, the port or path prefix of the URLs it builds): removed.
/// A trusted proxy's pass on, except spelled with `_` (as for
/// [`is_underscored_forwarding`]: the backend would read it joined with
/// the proxy's own).
fn is_proxy_only(name: &str) -> bool {
    let b = name.as_bytes();
    // Most names are rejected here: by length, or by a first letter no
    // listed name starts with.
    matches!(b.len(), 8..=20)
        && matches!(b[0] | 0x20, b'x' | b'c' | b'f' | b't')
        && PROXY_ONLY.iter().any(|n| reads_as(b, n))
}

/// A client-supplied request id we are willing to pass on.
fn acceptable_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// A request's id, held without an allocation of its own: the client's
/// header value (shared with the request) or the new id's digits inline.
#[derive(Debug, Clone)]
pub enum RequestId {
    /// The client's acceptable `X-Request-Id`.
    Client(HeaderValue),
    /// 32 hex digits of 128 random bits.
    New(const_hex::Buffer<16>),
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        match self {
            // Checked visible ASCII when taken (`acceptable_request_id`).
            RequestId::Client(v) => v.to_str().unwrap_or_default(),
            RequestId::New(digits) => digits.as_str(),
        }
    }
}

/// Before the request's own is known (empty, as no id at all).
impl Default for RequestId {
    fn default() -> RequestId {
        RequestId::Client(HeaderValue::from_static(""))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 128 random bits as hex. A request id correlates logs; it is no secret,
/// so a fast thread-local generator (fastrand's wyrand) serves, at a
/// fraction of the cost of the CSPRNG; const-hex writes the digits (SIMD,
/// a `str` without a UTF-8 check: ~230 instructions fewer than a digit
/// loop and `from_utf8`) into an inline buffer (no allocation).
fn new_request_id() -> RequestId {
    let mut digits = const_hex::Buffer::<16>::new();
    digits.format(&fastrand::u128(..).to_be_bytes());
    RequestId::New(digits)
}

/// The request's id: the client's `X-Request-Id` if acceptable (1-128
/// visible ASCII characters), else 32 random hex digits. `true`: it is the
/// client's, sent exactly once, so it goes upstream as it came (one header
/// lookup per request instead of a second one to check before writing).
pub fn request_id(headers: &HeaderMap) -> (RequestId, bool) {
    let mut all = headers.get_all(&REQUEST_ID).iter();
    let (first, more) = (all.next(), all.next().is_some());
    match first.filter(|v| v.to_str().is_ok_and(acceptable_request_id)) {
        Some(id) => (RequestId::Client(id.clone()), !more),
        None => (new_request_id(), false),
    }
}

/// The client's address as forwarded (`unknown` without one). IPv4 is
/// written by hand: `Display` costs ~1,300 instructions per request here.
///
/// Values built here have exactly the capacity of their text: a header
/// value made from a `String` whose capacity exceeds its length costs a
/// second allocation (`Bytes::from(Vec)`).
fn ip_text(peer: Option<IpAddr>) -> String {
    match peer {
        Some(IpAddr::V4(v4)) => {
            let digits = |o: u8| 1 + usize::from(o >= 10) + usize::from(o >= 100);
            let mut s = String::with_capacity(3 + v4.octets().into_iter().map(digits).sum::<usize>());
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        Some(ip) => ip.to_string(),
        None => "unknown".into(),
    }
}

/// The client behind trusted proxies: the last `X-Forwarded-For` address
/// that `trusted` does not vouch for, walking the chain from the gateway's
/// side (each trusted proxy appended the address it saw), as a rate per
/// client must key on it (the peer itself is then a proxy shared by many).
/// `None` when the chain holds no such address or an entry that is not an
/// address (`unknown`, a name): the caller keeps the peer.
pub fn forwarded_client(headers: &HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let values: Vec<&HeaderValue> = headers.get_all(X_FORWARDED_FOR).iter().collect();
    for value in values.into_iter().rev() {
        // Entry by entry from the right, as bytes: what the client wrote
        // before the proxies' entries is read only if they all vouch for
        // each other (a byte that is not text there must not hide them).
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let entry = std::str::from_utf8(entry).ok()?.trim();
            let ip = entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<std::net::SocketAddr>().map(|s| s.ip()))
                .ok()?;
            if !trusted(ip) {
                return Some(ip);
            }
        }
    }
    None
}

/// Every value of `name` joined with `, ` (a trusted peer's chain), if any.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let vals: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!vals.is_empty()).then(|| vals.join(", "))
}

/// The edits that turn the client's headers into the ones forwarded
/// upstream, before the stamp: tenant headers removed, forwarding headers,
/// request id, `Host`. Appended to `out` in the order to apply them.
pub fn upstream<'a>(headers: &HeaderMap, u: &Upstream<'a>, out: &mut Edits<'a>) {
    // 1. No client-supplied tenant header survives, whatever its spelling.
    // The stamp's own two names, when a stamp follows, are replaced by it
    // (setting a header drops all its earlier values), not removed first.
    let stamp_replaces = |n: &HeaderName| u.stamped && (*n == X_TENANT || *n == X_TENANT_SIGNATURE);
    // A forwarding header spelled with `_` goes too (see
    // [`is_underscored_forwarding`]), and from a client that is not a
    // trusted proxy, any header only a proxy sets ([`is_proxy_only`]).
    let mut length = false;
    for n in headers.keys() {
        let n_str = n.as_str();
        length |= *n == CONTENT_LENGTH;
        if (is_tenant_header(n_str) && !stamp_replaces(n))
            || is_underscored_forwarding(n_str)
            || ((!u.trusted || n_str.contains('_')) && is_proxy_only(n_str))
        {
            out.push(Edit::Remove(n.clone()));
        }
    }
    // 1b. One `Content-Length`, as RFC 9110 section 8.6 has a proxy send
    // it, where the client repeated or listed the value.
    if let Some(single) = length.then(|| single_length(headers)).flatten() {
        out.push(single);
    }
    // 2. Forwarding headers. What an untrusted client sent is overwritten
    // (or, for a header not set, removed), so only a trusted peer's values
    // are read at all.
    if let Some(built) = u.built.filter(|b| b.serves(u)) {
        built.write(headers, u, out);
        return tail(u, built.host_value(u.host), out);
    }
    let scheme = scheme(u.tls);
    let scheme_value = HeaderValue::from_static(scheme);
    let existing = |name: &HeaderName| if u.trusted { joined(headers, name) } else { None };
    let unset = |out: &mut Edits<'a>, name: HeaderName| {
        if !u.trusted && headers.contains_key(&name) {
            out.push(Edit::Remove(name));
        }
    };
    let set = u.forward;
    let ip_text = match set.forwarded || set.x_for {
        true => ip_text(u.peer),
        false => String::new(),
    };
    if set.forwarded {
        let mine = forwarded(u.peer, &ip_text, u.host, scheme);
        let value = match existing(&FORWARDED) {
            Some(prev) => format!("{prev}, {mine}"),
            None => mine,
        };
        out.push(Edit::Set(FORWARDED, value.into()));
    } else {
        unset(out, FORWARDED);
    }
    if set.x_for {
        let value = match existing(&X_FORWARDED_FOR) {
            Some(prev) => format!("{prev}, {ip_text}"),
            None => ip_text,
        };
        out.push(Edit::Set(X_FORWARDED_FOR, value.into()));
    } else {
        unset(out, X_FORWARDED_FOR);
    }
    if set.x_proto {
        out.push(match existing(&X_FORWARDED_PROTO) {
            Some(prev) => Edit::Set(X_FORWARDED_PROTO, prev.into()),
            None => Edit::Put(X_FORWARDED_PROTO, scheme_value),
        });
    } else {
        unset(out, X_FORWARDED_PROTO);
    }
    if set.x_host {
        out.push(x_forwarded_host(u));
    } else if headers.contains_key(&X_FORWARDED_HOST) {
        // Never the client's own: a trusted peer's is replaced by the Host we route on.
        out.push(Edit::Remove(X_FORWARDED_HOST));
    }
    tail(u, None, out);
}

/// `Content-Length` as one value, when the client sent it repeated or as a
/// list whose values agree as numbers (`5`, `05`: Pingora frames the body
/// by such values and refuses ones that disagree): `None` when it came as
/// one value, or in any form this does not read (left as it came). A
/// backend may refuse repeated values, or read only the first of a list.
fn single_length(headers: &HeaderMap) -> Option<Edit<'static>> {
    let number = |v: &[u8]| {
        let v = v.trim_ascii();
        let digits = !v.is_empty() && v.iter().all(u8::is_ascii_digit);
        digits
            .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .flatten()
    };
    let mut values = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','));
    let first = number(values.next()?)?;
    let mut more = false;
    for v in values {
        if number(v)? != first {
            return None;
        }
        more = true;
    }
    more.then(|| Edit::Set(CONTENT_LENGTH, first.to_string().into()))
}

fn scheme(tls: bool) -> &'static str {
    match tls {
        true => "https",
        false => "http",
    }
}

/// `X-Forwarded-Host`: the host the request was routed on.
fn x_forwarded_host<'a>(u: &Upstream<'a>) -> Edit<'a> {
    match u.host_value {
        Some(v) if v.as_bytes() == u.host.as_bytes() => Edit::Put(X_FORWARDED_HOST, v.clone()),
        _ => Edit::Set(X_FORWARDED_HOST, u.host.into()),
    }
}

/// This hop's `Forwarded` element (`peer_text`: [`ip_text`] of `peer`).
fn forwarded(peer: Option<IpAddr>, peer_text: &str, host: &str, scheme: &str) -> String {
    let (open, close) = match peer {
        Some(IpAddr::V6(_)) => ("for=\"[", "]\""),
        _ => ("for=", ""),
    };
    let parts = [open, peer_text, close, ";host=", host, ";proto=", scheme];
    let mut value = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| value.push_str(p));
    value
}

/// `value`, kept to be cloned per request: its first clone turns an owned
/// buffer into a shared one, so every later clone is a reference count.
fn shared(value: HeaderValue) -> HeaderValue {
    drop(value.clone());
    value
}

/// The request id and `Host`: per request, after the forwarding headers.
/// `kept`: `u.host` as a shared value, when the connection keeps one.
fn tail<'a>(u: &Upstream<'a>, kept: Option<&HeaderValue>, out: &mut Edits<'a>) {
    // 3. The request id (a client's acceptable one is already there, alone).
    if let Some(id) = u.request_id {
        out.push(Edit::Set(REQUEST_ID, id.into()));
    }
    // 4. The normalised Host, exactly what is signed.
    if !u.host_as_sent {
        out.push(match kept {
            Some(v) => Edit::Put(HOST, v.clone()),
            None => Edit::Set(HOST, u.host.into()),
        });
    }
}

/// Writes `edits` into `headers` in order, leaving `edits` empty (drained
/// in place: iterating by value would first move the whole inline array).
/// A set drops every earlier value of its name.
pub fn apply(edits: &mut Edits<'_>, headers: &mut HeaderMap) -> Result<(), http::header::InvalidHeaderValue> {
    headers.reserve(edits.len());
    for edit in edits.drain(..) {
        match edit {
            Edit::Remove(name) => {
                headers.remove(&name);
            }
            Edit::Set(name, Cow::Borrowed(value)) => {
                headers.insert(name, HeaderValue::from_str(value)?);
            }
            Edit::Set(name, Cow::Owned(value)) => {
                headers.insert(name, HeaderValue::try_from(value)?);
            }
            Edit::Put(name, value) => {
                headers.insert(name, value);
            }
        }
    }
    Ok(())
}

/// The request target as forwarded: origin form (`/path?query`). An
/// origin form comes back as it is; an absolute form (every HTTP/2 request
/// carries one) keeps its path and query, moved rather than parsed again
/// when they start with `/`, and an empty path becomes `/` (RFC 9112
/// section 3.2.1). [`BadTarget`]: an absolute form whose path cannot be a
/// target (`uri` is then left as `/`).
pub fn to_origin_form(uri: &mut Uri) -> Result<(), BadTarget> {
    if uri.authority().is_none() {
        return Ok(());
    }
    *uri = match std::mem::take(uri).into_parts().path_and_query {
        Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq),
        // Its text form puts `/` before a query with an empty path.
        Some(pq) => pq.to_string().parse().map_err(|_| BadTarget)?,
        None => Uri::from_static("/"),
    };
    Ok(())
}

/// An absolute-form request target whose path cannot be sent in origin form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request target's path cannot be an origin-form target")]
pub struct BadTarget;

/// The `X-Tenant` value of the first tenant a connection's requests were
/// stamped for, kept with the connection (almost every connection serves
/// one tenant): its later requests for that tenant clone the value (a
/// reference count) where encoding the name and building a header value
/// cost a scan, a check, an allocation and a copy (~170 instructions per
/// request, bench/RESULTS.md, ninth round). Only the value is kept, never a decision:
/// which tenant a request is stamped for is decided per request, and the
/// kept value answers only for that same schema name.
#[derive(Debug, Default)]
pub struct StampMemo(OnceLock<Option<KeptTenant>>);

#[derive(Debug)]
struct KeptTenant {
    schema: Box<str>,
    /// `stamp::encode_tenant(schema)`: what is signed.
    wire: Box<str>,
    /// `wire` as the header value, shared.
    value: HeaderValue,
}

impl KeptTenant {
    fn new(schema: &str, wire: &str) -> Option<KeptTenant> {
        let value = shared(HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(wire.as_bytes())).ok()?);
        Some(KeptTenant {
            schema: schema.into(),
            wire: wire.into(),
            value,
        })
    }
}

/// What a stamp binds besides the tenant (docs/stamp.md): the request as
/// forwarded, and the time it is signed at (Unix seconds).
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub now: u64,
}

/// The stamp's two headers for a request routed to the tenant with this
/// schema: `X-Tenant` (the wire form of the name, docs/stamp.md "Tenant
/// names") and its signature over method, host and path at time `now`.
/// Appended to `out`. `memo`: the connection's [`StampMemo`], if the
/// request path has one.
pub fn stamp<'a>(
    signer: &stamp::Signer,
    schema: &'a str,
    signed: &Signed<'_>,
    memo: Option<&StampMemo>,
    out: &mut Edits<'a>,
) {
    let sign = |wire: &str| {
        signer.sign(
            &stamp::Request {
                tenant: wire,
                method: signed.method,
                host: signed.host,
                path: signed.path,
            },
            signed.now,
        )
    };
    let kept = memo.and_then(|m| {
        m.0.get_or_init(|| KeptTenant::new(schema, &stamp::encode_tenant(schema)))
            .as_ref()
            .filter(|k| *k.schema == *schema)
    });
    let sig = match kept {
        Some(k) => {
            out.push(Edit::Put(X_TENANT, k.value.clone()));
            sign(&k.wire)
        }
        None => {
            let wire = stamp::encode_tenant(schema);
            let sig = sign(&wire);
            out.push(Edit::Set(X_TENANT, wire));
            sig
        }
    };
    out.push(Edit::Set(X_TENANT_SIGNATURE, sig.into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn facts(trusted: bool) -> Upstream<'static> {
        Upstream {
            peer: Some("203.0.113.7".parse().unwrap()),
            trusted,
            host: "ferrari.myapp.localhost",
            host_as_sent: false,
            host_value: None,
            tls: true,
            forward: Forward::ALL,
            request_id: Some("rid-1"),
            stamped: false,
            built: None,
        }
    }

    fn edits<'a>(h: &HeaderMap, u: &Upstream<'a>) -> Vec<Edit<'a>> {
        let mut out = Edits::new();
        upstream(h, u, &mut out);
        out.into_vec()
    }

    fn set<'a>(e: &'a [Edit<'_>], name: &str) -> Option<&'a str> {
        e.iter().find_map(|e| match e {
            Edit::Set(n, v) if *n == name => Some(&**v),
            Edit::Put(n, v) if *n == name => v.to_str().ok(),
            _ => None,
        })
    }

    fn removed(e: &[Edit<'_>]) -> Vec<String> {
        e.iter()
            .filter_map(|e| match e {
                Edit::Remove(n) => Some(n.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_repeated_or_listed_content_length_goes_upstream_once() {
        for trusted in [false, true] {
            let u = facts(trusted);
            let length = |pairs: &[(&str, &str)]| {
                let h = map(pairs);
                let e = edits(&h, &u);
                // Whatever else changes, the length is set at most once.
                assert!(
                    e.iter()
                        .filter(|e| matches!(e, Edit::Set(n, _) | Edit::Put(n, _) if *n == CONTENT_LENGTH))
                        .count()
                        <= 1
                );
                set(&e, "content-length").map(str::to_owned)
            };
            assert_eq!(
                length(&[("content-length", "5"), ("content-length", "5")]).as_deref(),
                Some("5")
            );
            assert_eq!(length(&[("content-length", "5, 5")]).as_deref(), Some("5"));
            assert_eq!(
                length(&[("content-length", "5 ,5"), ("content-length", "5")]).as_deref(),
                Some("5")
            );
            assert_eq!(
                length(&[("content-length", "05"), ("content-length", "5")]).as_deref(),
                Some("5")
            );
            assert_eq!(length(&[("content-length", "0, 00")]).as_deref(), Some("0"));
            // One plain value is left as it came; so is what Pingora refuses
            // (values that disagree, not numbers), and no length at all.
            for left in [
                &[("content-length", "5")][..],
                &[("content-length", "5"), ("content-length", "6")],
                &[("content-length", "5, 6")],
                &[("content-length", "+5"), ("content-length", "+5")],
                &[("content-length", ","), ("content-length", ",")],
                &[("host", "a.example")],
            ] {
                assert_eq!(length(left), None, "{left:?}");
            }
        }
    }

    #[test]
    fn tenant_header_spellings() {
        for yes in [
            "x-tenant",
            "X-Tenant",
            "x_tenant",
            "X_TENANT",
            "x-tenant-signature",
            "x_tenant_id",
            "x-tenant_",
            "x-tenant-",
        ] {
            assert!(is_tenant_header(yes), "{yes}");
        }
        for no in [
            "x-tenants",
            "x-tenantx",
            "tenant",
            "x-forwarded-for",
            "x-ten",
            "xx-tenant",
        ] {
            assert!(!is_tenant_header(no), "{no}");
        }
    }

    #[test]
    fn forwarding_headers_spelled_with_underscores_never_pass() {
        for yes in [
            "x_forwarded_for",
            "x_forwarded_proto",
            "x_forwarded_host",
            "X_Forwarded_Proto",
            "x-forwarded_for",
            "x_forwarded-host",
        ] {
            assert!(is_underscored_forwarding(yes), "{yes}");
        }
        for no in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x_forwarded_fo",
            "x_forwarded_forx",
            "x_forwarded_port",
            "forwarded",
        ] {
            assert!(!is_underscored_forwarding(no), "{no}");
        }
        // Removed for untrusted and trusted peers alike, and on a
        // connection's kept values as on a fresh build.
        let h = map(&[
            ("x_forwarded_proto", "https"),
            ("x_forwarded_for", "6.6.6.6"),
            ("X_Forwarded_Host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ]);
        let kept = Forwarding::new(&facts(false)).unwrap();
        let with_kept = Upstream {
            built: Some(&kept),
            ..facts(false)
        };
        for u in [facts(false), facts(true), with_kept] {
            let e = edits(&h, &u);
            let gone = removed(&e);
            for name in ["x_forwarded_proto", "x_forwarded_for", "x_forwarded_host"] {
                assert!(gone.iter().any(|g| g == name), "{name} kept: {e:?}");
            }
        }
    }

    #[test]
    fn headers_only_a_proxy_sets_pass_only_from_trusted_proxies() {
        for yes in [
            "x-real-ip",
            "X-Real-IP",
            "x_real_ip",
            "X_REAL_IP",
            "client-ip",
            "Client_IP",
            "x-client-ip",
            "x-forwarded",
            "forwarded-for",
            "true-client-ip",
            "x-forwarded-ssl",
            "CF-Connecting-IP",
            "fastly-client-ip",
            "x-forwarded-port",
            "X_Forwarded_Port",
            "x-forwarded-prefix",
            "x-forwarded-scheme",
            "x-forwarded-server",
            "x-cluster-client-ip",
            "x-forwarded-protocol",
            "X_Forwarded_Protocol",
            "x-scheme",
        ] {
            assert!(is_proxy_only(yes), "{yes}");
        }
        for no in [
            "x-real-ipx",
            "x-real-i",
            "real-ip",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-request-id",
            "accept-encoding",
            "user-agent",
            "x-tenant",
            "x-schemes",
            "x-forwarded-protocols",
            "x",
            "",
        ] {
            assert!(!is_proxy_only(no), "{no}");
        }
        let h = map(&[
            ("x-real-ip", "6.6.6.6"),
            ("X_Forwarded_Port", "8443"),
            ("x-forwarded-prefix", "/evil"),
            ("true-client-ip", "6.6.6.6"),
            ("accept", "*/*"),
        ]);
        let proxy_only = ["x-real-ip", "x_forwarded_port", "x-forwarded-prefix", "true-client-ip"];
        // From a client, on a fresh build and on a connection's kept values.
        let kept = Forwarding::new(&facts(false)).unwrap();
        let with_kept = Upstream {
            built: Some(&kept),
            ..facts(false)
        };
        for u in [facts(false), with_kept] {
            let gone = removed(&edits(&h, &u));
            for name in proxy_only {
                assert!(gone.iter().any(|g| g == name), "{name} kept: {gone:?}");
            }
            assert!(!gone.iter().any(|g| g == "accept"), "{gone:?}");
        }
        // A trusted proxy's pass on, except spelled with `_`.
        let gone = removed(&edits(&h, &facts(true)));
        assert_eq!(gone, ["x_forwarded_port"], "{gone:?}");
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_last_address_they_do_not_vouch_for() {
        let proxies = |ip: IpAddr| ip.to_string().starts_with("10.");
        let client = |pairs: &[(&str, &str)]| forwarded_client(&map(pairs), proxies);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // A client's own spoofed entries come first; the last untrusted wins.
        assert_eq!(
            client(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]),
            ip("203.0.113.7")
        );
        assert_eq!(
            client(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]),
            ip("203.0.113.7")
        );
        // Several headers are one chain, in order.
        assert_eq!(
            client(&[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "2001:db8::1,10.0.0.3")
            ]),
            ip("2001:db8::1")
        );
        assert_eq!(client(&[("x-forwarded-for", "198.51.100.4:4711")]), ip("198.51.100.4"));
        // Nothing usable: the caller keeps the peer.
        assert_eq!(client(&[]), None);
        assert_eq!(client(&[("x-forwarded-for", "10.0.0.2")]), None);
        assert_eq!(client(&[("x-forwarded-for", "6.6.6.6, unknown")]), None);
        // Bytes that are not text, written by the client before the
        // proxy's entry, do not hide that entry.
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"6.6.\x80.6, 203.0.113.7").unwrap(),
        );
        assert_eq!(forwarded_client(&h, proxies), ip("203.0.113.7"));
    }

    #[test]
    fn request_ids() {
        assert!(acceptable_request_id("abc-123"));
        assert!(!acceptable_request_id(""));
        assert!(!acceptable_request_id("has space"));
        assert!(!acceptable_request_id(&"a".repeat(129)));
        let id = |h: &HeaderMap| {
            let (id, as_sent) = request_id(h);
            (id.to_string(), as_sent)
        };
        assert_eq!(id(&map(&[("x-request-id", "abc-123")])), ("abc-123".into(), true));
        // Sent twice: the first is the id, written again as the only one.
        let twice = map(&[("x-request-id", "abc-123"), ("x-request-id", "abc-123")]);
        assert_eq!(id(&twice), ("abc-123".into(), false));
        for refused in [
            map(&[("x-request-id", &"a".repeat(129))]),
            map(&[("x-request-id", "")]),
            HeaderMap::new(),
        ] {
            let (fresh, kept) = id(&refused);
            assert!(!kept);
            assert_eq!(fresh.len(), 32);
            assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        // Not valid text: refused too.
        let mut opaque = HeaderMap::new();
        opaque.insert(REQUEST_ID, HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert_eq!(id(&opaque).0.len(), 32);
        assert_ne!(id(&HeaderMap::new()).0, id(&HeaderMap::new()).0);
        assert_eq!(RequestId::default().as_str(), "");
    }

    #[test]
    fn client_tenant_headers_are_removed_in_every_spelling() {
        let h = map(&[
            ("x-tenant", "mclaren"),
            ("x_tenant_signature", "forged"),
            ("X-Tenant-Id", "7"),
            ("x-tenants", "kept"),
        ]);
        let e = edits(&h, &facts(true));
        let gone = removed(&e);
        for name in ["x-tenant", "x_tenant_signature", "x-tenant-id"] {
            assert!(gone.contains(&name.to_owned()), "{name} in {gone:?}");
        }
        assert!(!gone.contains(&"x-tenants".to_owned()));
    }

    #[test]
    fn a_stamp_replaces_the_client_tenant_headers_it_does_not_remove() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let signer = stamp::Signer::new(stamp::Key::new("k1", secret).unwrap());
        for stamped in [false, true] {
            let mut h = map(&[
                ("x-tenant", "mclaren"),
                ("X-Tenant", "mclaren2"),
                ("x-tenant-signature", "forged"),
                ("x_tenant", "mclaren"),
                ("X-Tenant-Id", "7"),
                ("x-tenants", "kept"),
            ]);
            let u = Upstream {
                stamped,
                ..facts(false)
            };
            let mut out = Edits::new();
            upstream(&h, &u, &mut out);
            let gone = removed(&out);
            // Removed first only when nothing replaces them.
            assert_eq!(gone.contains(&"x-tenant".to_owned()), !stamped, "{gone:?}");
            assert_eq!(gone.contains(&"x-tenant-signature".to_owned()), !stamped, "{gone:?}");
            if stamped {
                let signed = Signed {
                    method: "GET",
                    host: u.host,
                    path: "/",
                    now: 1_000,
                };
                stamp(&signer, "ferrari", &signed, None, &mut out);
            }
            apply(&mut out, &mut h).unwrap();
            assert!(out.is_empty());
            // Either way no value the client sent under a tenant name is left.
            let left: Vec<_> = h
                .iter()
                .filter(|(n, _)| is_tenant_header(n.as_str()))
                .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
                .collect();
            match stamped {
                false => assert_eq!(left, []),
                true => {
                    assert_eq!(left.len(), 2, "{left:?}");
                    assert_eq!(left[0], ("x-tenant", "ferrari"));
                    assert_eq!(left[1].0, "x-tenant-signature");
                    assert_ne!(left[1].1, "forged");
                }
            }
            assert_eq!(h.get("x-tenants").unwrap(), "kept");
        }
    }

    #[test]
    fn an_untrusted_clients_forwarding_headers_are_overwritten() {
        let h = map(&[
            ("x-forwarded-for", "10.9.9.9"),
            ("forwarded", "for=10.9.9.9"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "mclaren.myapp.localhost"),
        ]);
        let e = edits(&h, &facts(false));
        assert_eq!(set(&e, "x-forwarded-for"), Some("203.0.113.7"));
        assert_eq!(
            set(&e, "forwarded"),
            Some("for=203.0.113.7;host=ferrari.myapp.localhost;proto=https")
        );
        assert_eq!(set(&e, "x-forwarded-proto"), Some("https"));
        assert_eq!(set(&e, "x-forwarded-host"), Some("ferrari.myapp.localhost"));
    }

    #[test]
    fn a_trusted_proxys_chain_is_appended_to() {
        let h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "elsewhere.test"),
        ]);
        let mut u = facts(true);
        u.tls = false;
        let e = edits(&h, &u);
        assert_eq!(
            set(&e, "x-forwarded-for"),
            Some("198.51.100.1, 198.51.100.2, 203.0.113.7")
        );
        assert_eq!(
            set(&e, "forwarded"),
            Some("for=198.51.100.1, for=203.0.113.7;host=ferrari.myapp.localhost;proto=http")
        );
        // The proxy in front terminated TLS: its scheme is kept.
        assert_eq!(set(&e, "x-forwarded-proto"), Some("https"));
        // Never anyone's host but the one routed on.
        assert_eq!(set(&e, "x-forwarded-host"), Some("ferrari.myapp.localhost"));
    }

    #[test]
    fn ipv4_text_matches_display() {
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "127.0.0.1", "203.0.113.7"] {
            let ip: IpAddr = ip.parse().unwrap();
            let text = ip_text(Some(ip));
            assert_eq!(text, ip.to_string());
            assert_eq!(text.capacity(), text.len(), "{ip}: no spare capacity");
        }
        assert_eq!(ip_text(None), "unknown");
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let mut u = facts(false);
        u.peer = Some("2001:db8::1".parse().unwrap());
        let e = edits(&HeaderMap::new(), &u);
        assert_eq!(
            set(&e, "forwarded"),
            Some("for=\"[2001:db8::1]\";host=ferrari.myapp.localhost;proto=https")
        );
        assert_eq!(set(&e, "x-forwarded-for"), Some("2001:db8::1"));
    }

    #[test]
    fn forwarding_headers_left_out_are_still_stripped() {
        let h = map(&[
            ("x-forwarded-for", "10.9.9.9"),
            ("forwarded", "for=10.9.9.9"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "mclaren.myapp.localhost"),
        ]);
        let none = Forward {
            forwarded: false,
            x_for: false,
            x_proto: false,
            x_host: false,
        };
        let mut u = facts(false);
        u.forward = none;
        let e = edits(&h, &u);
        let mut gone = removed(&e);
        gone.sort();
        assert_eq!(
            gone,
            ["forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
        );
        assert!(e
            .iter()
            .all(|e| !matches!(e, Edit::Set(n, _) if n.as_str().starts_with("x-forwarded") || *n == "forwarded")));
        // A trusted peer's are passed on, except the host.
        u.trusted = true;
        let gone = removed(&edits(&h, &u));
        assert_eq!(gone, ["x-forwarded-host"]);
    }

    #[test]
    fn request_id_and_host_are_written_only_when_they_change() {
        let same = map(&[("x-request-id", "rid-1"), ("host", "ferrari.myapp.localhost")]);
        let as_sent = Upstream {
            request_id: None,
            host_as_sent: true,
            ..facts(false)
        };
        let e = edits(&same, &as_sent);
        assert_eq!(set(&e, "x-request-id"), None);
        assert_eq!(set(&e, "host"), None);
        let e = edits(&same, &facts(false));
        assert_eq!(set(&e, "x-request-id"), Some("rid-1"));
        assert_eq!(set(&e, "host"), Some("ferrari.myapp.localhost"));
    }

    #[test]
    fn removals_come_before_the_values_that_replace_them() {
        let h = map(&[("x-tenant", "mclaren")]);
        let e = edits(&h, &facts(false));
        assert!(matches!(e[0], Edit::Remove(_)));
        assert!(e[1..].iter().all(|e| matches!(e, Edit::Set(..) | Edit::Put(..))));
    }

    #[test]
    fn request_targets_become_origin_form() {
        let of = |target: &str| {
            let mut uri: Uri = target.parse().unwrap();
            to_origin_form(&mut uri).map(|()| uri.to_string()).map_err(|_| ())
        };
        assert_eq!(of("/a?b=1"), Ok("/a?b=1".into()));
        assert_eq!(of("*"), Ok("*".into()));
        for (absolute, origin) in [
            ("http://ferrari.myapp.localhost/a?b=1", "/a?b=1"),
            ("https://ferrari.myapp.localhost:8443/a/b", "/a/b"),
            ("http://ferrari.myapp.localhost", "/"),
            ("http://ferrari.myapp.localhost/", "/"),
            ("http://ferrari.myapp.localhost?b=1", "/?b=1"),
        ] {
            let mut target: Uri = absolute.parse().unwrap();
            to_origin_form(&mut target).unwrap();
            assert_eq!(target.to_string(), origin, "{absolute}");
            assert_eq!((target.scheme(), target.authority()), (None, None), "{absolute}");
            // The same target as parsing its text: what reaches the backend.
            assert_eq!(target, origin.parse::<Uri>().unwrap(), "{absolute}");
        }
    }

    #[test]
    fn the_stamp_signs_what_is_forwarded() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let signer = stamp::Signer::new(stamp::Key::new("k1", secret.clone()).unwrap());
        let verifier = stamp::Verifier::new(vec![stamp::Key::new("k1", secret).unwrap()], 30).unwrap();
        let [tenant, sig] = stamped(&signer, "ferrari", "GET", "ferrari.myapp.localhost", "/x", None);
        assert_eq!(tenant, Edit::Set(X_TENANT, "ferrari".into()));
        let Edit::Set(name, sig) = sig else { panic!("set") };
        let sig: &str = &sig;
        assert_eq!(name, stamp::SIGNATURE_HEADER);
        let host = "ferrari.myapp.localhost";
        let ok = verifier.verify(&["ferrari"], &[&sig], "GET", host, "/x", 1_000);
        assert_eq!(ok.unwrap(), "ferrari");
        assert!(verifier
            .verify(&["ferrari"], &[&sig], "GET", host, "/y", 1_000)
            .is_err());
        assert!(verifier
            .verify(&["mclaren"], &[&sig], "GET", host, "/x", 1_000)
            .is_err());
    }

    /// [`stamp`]'s two edits at time 1,000.
    fn stamped<'a>(
        signer: &stamp::Signer,
        schema: &'a str,
        method: &str,
        host: &str,
        path: &str,
        memo: Option<&StampMemo>,
    ) -> [Edit<'a>; 2] {
        let mut out = Edits::new();
        let signed = Signed {
            method,
            host,
            path,
            now: 1_000,
        };
        stamp(signer, schema, &signed, memo, &mut out);
        let sig = out.pop().unwrap();
        [out.pop().unwrap(), sig]
    }

    #[test]
    fn a_connections_kept_tenant_value_stamps_only_that_tenant() {
        // One connection whose requests go to two tenants in turn (a CDN's,
        // or a client whose host moved): each request's stamp names its own
        // tenant, whether or not the connection kept a value, and equals the
        // stamp built without a memo.
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let signer = stamp::Signer::new(stamp::Key::new("k1", secret.clone()).unwrap());
        let verifier = stamp::Verifier::new(vec![stamp::Key::new("k1", secret).unwrap()], 30).unwrap();
        let memo = StampMemo::default();
        let host = "shared.example";
        for schema in ["Acme.EU", "ferrari", "Acme.EU", "ferrari", "Acme.EU"] {
            let with = written(&stamped(&signer, schema, "GET", host, "/x", Some(&memo)));
            let without = written(&stamped(&signer, schema, "GET", host, "/x", None));
            assert_eq!(with, without, "{schema}");
            let wire = with[0].1.clone().unwrap();
            let sig = with[1].1.clone().unwrap();
            assert_eq!(wire, stamp::encode_tenant(schema));
            let verified = verifier.verify(&[&wire], &[&sig], "GET", host, "/x", 1_000);
            assert_eq!(verified.unwrap(), schema);
        }
        // The first tenant is the one kept; the other is built each time.
        let kept = memo.0.get().unwrap().as_ref().unwrap();
        assert_eq!((&*kept.schema, &*kept.wire), ("Acme.EU", "Acme%2EEU"));
        let [tenant, _] = stamped(&signer, "Acme.EU", "GET", host, "/x", Some(&memo));
        assert!(matches!(tenant, Edit::Put(..)), "{tenant:?}");
        let [tenant, _] = stamped(&signer, "ferrari", "GET", host, "/x", Some(&memo));
        assert_eq!(tenant, Edit::Set(X_TENANT, "ferrari".into()));
    }

    /// Each edit as (name, value written or `None` for removed).
    fn written(e: &[Edit<'_>]) -> Vec<(String, Option<String>)> {
        e.iter()
            .map(|e| match e {
                Edit::Remove(n) => (n.to_string(), None),
                Edit::Set(n, v) => (n.to_string(), Some(v.to_string())),
                Edit::Put(n, v) => (n.to_string(), Some(v.to_str().unwrap().to_owned())),
            })
            .collect()
    }

    #[test]
    fn values_built_once_per_connection_are_the_values_built_per_request() {
        // For the host they were built for and for any other.
        let clients = [
            map(&[]),
            map(&[("x-tenant", "mclaren")]),
            map(&[
                ("forwarded", "for=1.2.3.4"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "evil.example"),
            ]),
        ];
        let peers: [Option<IpAddr>; 3] = [
            Some("203.0.113.7".parse().unwrap()),
            Some("2001:db8::1".parse().unwrap()),
            None,
        ];
        for bits in 0..16u8 {
            let forward = Forward {
                forwarded: bits & 1 != 0,
                x_for: bits & 2 != 0,
                x_proto: bits & 4 != 0,
                x_host: bits & 8 != 0,
            };
            for (peer, tls, h) in peers
                .iter()
                .flat_map(|p| [(*p, true), (*p, false)])
                .flat_map(|(p, t)| clients.iter().map(move |h| (p, t, h)))
            {
                let u = Upstream {
                    peer,
                    tls,
                    forward,
                    ..facts(false)
                };
                let built = Forwarding::new(&u).unwrap();
                for host in [u.host, "mclaren.myapp.localhost", "www.shop.example"] {
                    let u = Upstream { host, ..u };
                    let with = Upstream {
                        built: Some(&built),
                        ..u
                    };
                    assert_eq!(
                        written(&edits(h, &with)),
                        written(&edits(h, &u)),
                        "{forward:?} {peer:?} tls={tls} {host}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_kept_host_goes_as_the_connections_shared_value() {
        let kept = Forwarding::new(&facts(false)).unwrap();
        let h = map(&[]);
        let with = Upstream {
            built: Some(&kept),
            ..facts(false)
        };
        let e = edits(&h, &with);
        let host = e.iter().find_map(|e| match e {
            Edit::Put(n, v) if *n == HOST => Some(v),
            _ => None,
        });
        assert_eq!(host, Some(&kept.host_value), "{e:?}");
        assert_eq!(kept.host_value, "ferrari.myapp.localhost");
        // Another host gets a value of its own, and none when the `Host`
        // going upstream already is the host.
        let other = Upstream {
            host: "mclaren.myapp.localhost",
            ..with
        };
        assert_eq!(set(&edits(&h, &other), "host"), Some("mclaren.myapp.localhost"));
        let as_is = Upstream {
            host_as_sent: true,
            ..with
        };
        assert!(!edits(&h, &as_is)
            .iter()
            .any(|e| matches!(e, Edit::Set(n, _) | Edit::Put(n, _) if *n == HOST)));
    }

    #[test]
    fn x_forwarded_host_shares_the_clients_host_value() {
        let sent = HeaderValue::from_static("www.shop.example");
        let other = HeaderValue::from_static("evil.example");
        let kept = Forwarding::new(&facts(false)).unwrap();
        // Per request, and with the connection's values built for another host.
        for built in [None, Some(&kept)] {
            let base = Upstream {
                host: "www.shop.example",
                built,
                ..facts(false)
            };
            let shared = Upstream {
                host_value: Some(&sent),
                ..base
            };
            let h = map(&[("x-forwarded-host", "evil.example")]);
            assert_eq!(written(&edits(&h, &shared)), written(&edits(&h, &base)));
            let e = edits(&h, &shared);
            assert!(
                e.iter()
                    .any(|e| matches!(e, Edit::Put(n, v) if *n == X_FORWARDED_HOST && *v == sent)),
                "{e:?}"
            );
            // A value that is not the host is never what is sent.
            let wrong = Upstream {
                host_value: Some(&other),
                ..base
            };
            assert_eq!(written(&edits(&h, &wrong)), written(&edits(&h, &base)));
        }
    }

    #[test]
    fn values_built_for_other_facts_are_not_used() {
        let built = Forwarding::new(&facts(false)).unwrap();
        let h = map(&[("x-forwarded-for", "198.51.100.1")]);
        let others = [
            Upstream {
                peer: Some("203.0.113.8".parse().unwrap()),
                ..facts(false)
            },
            Upstream {
                tls: false,
                ..facts(false)
            },
            Upstream {
                forward: Forward {
                    forwarded: false,
                    ..Forward::ALL
                },
                ..facts(false)
            },
            // A trusted proxy's own values are appended to, per request.
            facts(true),
        ];
        for u in others {
            let with = Upstream {
                built: Some(&built),
                ..u
            };
            assert_eq!(written(&edits(&h, &with)), written(&edits(&h, &u)), "{u:?}");
        }
        let trusted = edits(
            &h,
            &Upstream {
                built: Some(&built),
                ..facts(true)
            },
        );
        assert_eq!(set(&trusted, "x-forwarded-for"), Some("198.51.100.1, 203.0.113.7"));
    }
}
