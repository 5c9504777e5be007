//! Which host a request is for: the Host header (or HTTP/2 `:authority`),
//! checked against the request URI's authority if it has one, then
//! normalised by the shared `tenancy` rules (lower-case, no port, no
//! trailing dot, punycode). Pingora 0.9 hands an HTTP/1 request on with
//! its URI's path only, having refused an absolute-form target whose
//! authority differs from `Host` byte for byte; so over HTTP/1 the `Host`
//! header decides alone, and an absolute-form request without one (HTTP/1.0)
//! gets 400 like any request without a host.
//! A connection keeps the normalised form of the first host it sent
//! ([`HostMemo`]), so its later requests for that host skip normalising.

use std::sync::{Arc, OnceLock};

use http::header::HOST;
use http::{HeaderMap, HeaderValue, Uri, Version};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    #[error("request has no Host")]
    Missing,
    #[error("request has more than one Host header")]
    Duplicate,
    #[error("Host is not valid text")]
    NotText,
    #[error("absolute request URI names a different host than the Host header")]
    Mismatch,
    #[error("malformed host: {0}")]
    Malformed(#[from] tenancy::HostError),
}

/// A normalised host: the one a connection kept (shared: handing it out is
/// a reference count) or one normalised for this request alone (a host the
/// connection sent once is not copied into shared memory).
#[derive(Debug, Clone)]
pub enum Host {
    Kept(Arc<str>),
    Own(String),
}

impl std::ops::Deref for Host {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Host::Kept(h) => h,
            Host::Own(h) => h,
        }
    }
}

/// Equal when the names are, however held.
impl PartialEq for Host {
    fn eq(&self, other: &Host) -> bool {
        **self == **other
    }
}

impl Eq for Host {}

impl Default for Host {
    fn default() -> Host {
        Host::Own(String::new())
    }
}

impl From<&str> for Host {
    fn from(name: &str) -> Host {
        Host::Own(name.to_owned())
    }
}

/// The normalised form of the first valid host (a `Host` value or an
/// authority) a connection sent, kept with the connection: a later request
/// sending the same bytes reuses it. Normalising is a pure function of those
/// bytes, so the memo cannot answer differently; it costs a comparison and
/// a reference count where normalising costs ~330 instructions, and the
/// header's text check is skipped for bytes it has seen (bench/RESULTS.md).
#[derive(Debug, Default)]
pub struct HostMemo(OnceLock<(Box<[u8]>, Arc<str>)>);

impl HostMemo {
    /// The kept host, if `raw` is exactly the bytes it was normalised from
    /// (visible ASCII, so also text a `Host` header may carry).
    fn get(&self, raw: &[u8]) -> Option<Arc<str>> {
        let (sent, host) = self.0.get()?;
        (**sent == *raw).then(|| host.clone())
    }

    /// [`tenancy::normalize_host`] of `raw`.
    pub fn normalize(&self, raw: &str) -> Result<Host, tenancy::HostError> {
        if let Some(host) = self.get(raw.as_bytes()) {
            return Ok(Host::Kept(host));
        }
        let host = tenancy::normalize_host(raw)?;
        // Only bytes a `Host` header's text check passes are kept, so the
        // memo may answer a header's bytes before that check. Another
        // request of the connection (HTTP/2) may have set it meanwhile: the
        // first one kept stays, and only the request that kept it answers
        // with the kept host (which brings the connection's tenant memo).
        if self.0.get().is_none() && raw.bytes().all(|b| b.is_ascii_graphic()) {
            let kept: Arc<str> = host.into();
            return Ok(match self.0.set((raw.as_bytes().into(), kept.clone())) {
                Ok(()) => Host::Kept(kept),
                Err(_) => Host::Own(String::from(&*kept)),
            });
        }
        Ok(Host::Own(host))
    }
}

/// The normalised host of a request, and the client's `Host` header value
/// if it already is exactly that (then it goes upstream as it came, and
/// may be shared by other headers that name the host). `memo`: the
/// connection's, when the request path has one.
pub fn request_host<'h>(
    headers: &'h HeaderMap,
    uri: &Uri,
    memo: Option<&HostMemo>,
) -> Result<(Host, Option<&'h HeaderValue>), BadHost> {
    let normalize = |raw: &str| match memo {
        Some(m) => m.normalize(raw),
        None => tenancy::normalize_host(raw).map(Host::Own),
    };
    let mut values = headers.get_all(HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(BadHost::Duplicate);
    }
    let authority = uri.authority().map(|a| a.as_str());
    if authority.is_some_and(|a| a.contains('@')) {
        return Err(BadHost::Malformed(tenancy::HostError::BadCharacters));
    }
    match (header, authority) {
        (Some(raw), authority) => {
            // The memo answers bytes it has seen before their text check.
            let h = match memo.and_then(|m| m.get(raw.as_bytes())) {
                Some(h) => Host::Kept(h),
                None => normalize(raw.to_str().map_err(|_| BadHost::NotText)?)?,
            };
            if let Some(a) = authority {
                if normalize(a)? != h {
                    return Err(BadHost::Mismatch);
                }
            }
            let as_sent = (h.as_bytes() == raw.as_bytes()).then_some(raw);
            Ok((h, as_sent))
        }
        (None, Some(a)) => Ok((normalize(a)?, None)),
        (None, None) => Err(BadHost::Missing),
    }
}

/// Whether the `Host` a request goes upstream with, before the gateway's
/// edits, is exactly `host` (then it is not rewritten). Over HTTP/2 Pingora
/// writes the authority there as it came, in place of any `Host` the client
/// sent; otherwise it is the client's own, which is `host` when
/// [`request_host`] found it so (`header_is_host`).
pub fn goes_as_is(version: Version, uri: &Uri, host: &str, header_is_host: bool) -> bool {
    match uri.authority() {
        Some(a) if version == Version::HTTP_2 => a.as_str().as_bytes() == host.as_bytes(),
        _ => header_is_host,
    }
}

/// The name to look up in the domain table for a normalised host.
pub fn lookup_name(host: &str, strip_www: bool) -> &str {
    // As django-tenants' `remove_www`: any leading `www.` (also before a
    // single label, e.g. `www.localhost`).
    match host.strip_prefix("www.") {
        Some(rest) if strip_www && !rest.is_empty() => rest,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_http2_the_authority_is_what_goes_upstream_as_host() {
        let host = "ferrari.myapp.localhost";
        let uri = |u: &str| u.parse::<Uri>().unwrap();
        // Pingora writes the authority as it came, whatever `Host` was sent.
        for header_is_host in [true, false] {
            let h2 = |u: &str| goes_as_is(Version::HTTP_2, &uri(u), host, header_is_host);
            assert!(h2("https://ferrari.myapp.localhost/x"));
            assert!(!h2("https://ferrari.myapp.localhost:8443/x"));
            assert!(!h2("https://Ferrari.myapp.localhost/x"));
            assert!(!h2("https://ferrari.myapp.localhost./x"));
            // Without an authority, the client's `Host` goes on.
            assert_eq!(h2("/x"), header_is_host);
            // Over HTTP/1 the client's `Host` goes on (an absolute-form
            // target's authority is rewritten from it).
            for target in ["/x", "https://ferrari.myapp.localhost/x", "https://other.example/x"] {
                assert_eq!(
                    goes_as_is(Version::HTTP_11, &uri(target), host, header_is_host),
                    header_is_host
                );
            }
        }
    }

    fn host_of(uri: &str, hosts: &[&str]) -> Result<String, BadHost> {
        host_and_as_sent(uri, hosts).map(|(h, _)| h)
    }

    fn host_and_as_sent(uri: &str, hosts: &[&str]) -> Result<(String, bool), BadHost> {
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(HOST, h.parse().unwrap());
        }
        request_host(&headers, &uri.parse().unwrap(), None).map(|(h, sent)| {
            if let Some(v) = sent {
                assert_eq!(v.as_bytes(), h.as_bytes());
            }
            (h.to_string(), sent.is_some())
        })
    }

    #[test]
    fn a_connections_memo_answers_as_normalising_does() {
        let memo = HostMemo::default();
        // The first valid host is kept; every answer, for it and for any
        // other bytes (valid or not), is what normalising gives.
        for raw in [
            "a..example",
            "Ferrari.MyApp.localhost:8080",
            "ferrari.myapp.localhost",
            "Ferrari.MyApp.localhost:8080",
            "mclaren.myapp.localhost",
            "Ferrari.MyApp.localhost:8080",
            "ferrari.myapp.localhost.",
            "",
            "[::1]:443",
            "Ferrari.MyApp.localhost:8080",
        ] {
            assert_eq!(
                memo.normalize(raw).map(|h| h.to_string()),
                tenancy::normalize_host(raw),
                "{raw:?}"
            );
        }
        let (sent, host) = memo.0.get().unwrap();
        assert_eq!(
            (&**sent, &**host),
            (&b"Ferrari.MyApp.localhost:8080"[..], "ferrari.myapp.localhost")
        );
        // Through request_host: the same answers with and without it.
        let mut headers = HeaderMap::new();
        headers.append(HOST, "mclaren.myapp.localhost".parse().unwrap());
        let uri = "/".parse().unwrap();
        assert_eq!(
            request_host(&headers, &uri, Some(&memo)),
            request_host(&headers, &uri, None)
        );
        assert_eq!(
            request_host(
                &HeaderMap::new(),
                &"http://Ferrari.MyApp.localhost:8080/".parse().unwrap(),
                Some(&memo)
            ),
            Ok(("ferrari.myapp.localhost".into(), None))
        );
        // The kept host is shared; another is the request's own.
        assert!(matches!(
            memo.normalize("Ferrari.MyApp.localhost:8080"),
            Ok(Host::Kept(_))
        ));
        assert!(matches!(memo.normalize("mclaren.myapp.localhost"), Ok(Host::Own(_))));
        // A header whose bytes are the kept ones, and one that is not text:
        // the answers normalising gives.
        let mut headers = HeaderMap::new();
        headers.append(HOST, "Ferrari.MyApp.localhost:8080".parse().unwrap());
        assert_eq!(
            request_host(&headers, &uri, Some(&memo)),
            Ok(("ferrari.myapp.localhost".into(), None))
        );
        let mut opaque = HeaderMap::new();
        opaque.append(HOST, HeaderValue::from_bytes(b"caf\xe9.example").unwrap());
        assert_eq!(request_host(&opaque, &uri, Some(&memo)), Err(BadHost::NotText));
    }

    #[test]
    fn the_memo_keeps_only_bytes_a_host_header_could_carry() {
        // Valid as an authority's text and normalised, but not visible
        // ASCII: not kept, so it never answers a header's bytes.
        let memo = HostMemo::default();
        let raw = "caf\u{e9}.example";
        assert_eq!(tenancy::normalize_host(raw).as_deref(), Ok("xn--caf-dma.example"));
        assert_eq!(memo.normalize(raw).map(|h| h.to_string()), tenancy::normalize_host(raw));
        assert!(memo.0.get().is_none());
        assert!(memo.get(raw.as_bytes()).is_none());
    }

    #[test]
    fn a_host_header_already_normal_is_sent_as_it_came() {
        let ok = |h: &str| Ok((h.to_owned(), true));
        assert_eq!(host_and_as_sent("/", &["a.example"]), ok("a.example"));
        assert_eq!(host_and_as_sent("http://A.example/x", &["a.example"]), ok("a.example"));
        for rewritten in ["A.example", "a.example:8080", "a.example."] {
            assert_eq!(
                host_and_as_sent("/", &[rewritten]),
                Ok(("a.example".into(), false)),
                "{rewritten}"
            );
        }
        // Only an authority (HTTP/2 `:authority`): no header to keep.
        assert_eq!(
            host_and_as_sent("http://a.example/x", &[]),
            Ok(("a.example".into(), false))
        );
    }

    #[test]
    fn host_sources() {
        assert_eq!(
            host_of("/", &["Ferrari.MyApp.localhost:8080"]).unwrap(),
            "ferrari.myapp.localhost"
        );
        assert_eq!(host_of("http://a.example/x", &["A.example"]).unwrap(), "a.example");
        assert_eq!(host_of("http://a.example/x", &[]).unwrap(), "a.example");
        assert_eq!(host_of("http://b.example/x", &["a.example"]), Err(BadHost::Mismatch));
        assert_eq!(host_of("/", &["a.example", "b.example"]), Err(BadHost::Duplicate));
        assert_eq!(host_of("/", &[]), Err(BadHost::Missing));
        assert!(matches!(host_of("/", &["a..example"]), Err(BadHost::Malformed(_))));
        assert!(matches!(
            host_of("http://u@a.example/", &["a.example"]),
            Err(BadHost::Malformed(_))
        ));
    }

    #[test]
    fn www() {
        assert_eq!(lookup_name("www.shop.com", true), "shop.com");
        assert_eq!(lookup_name("www.shop.com", false), "www.shop.com");
        // As django-tenants' remove_www: any leading `www.`.
        assert_eq!(lookup_name("www.com", true), "com");
        assert_eq!(lookup_name("www.localhost", true), "localhost");
        assert_eq!(lookup_name("www.", true), "www.");
        assert_eq!(lookup_name("wwwx.shop.com", true), "wwwx.shop.com");
    }
}
