//! Which host a request is for: the Host header (or HTTP/2 `:authority`),
//! checked against an absolute-form request URI, then normalised by the
//! shared `tenancy` rules (lower-case, no port, no trailing dot, punycode).

use http::header::HOST;
use http::{HeaderMap, Uri};

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

/// The normalised host of a request, and whether the client's `Host`
/// header is already exactly that (then it goes upstream as it came).
pub fn request_host(headers: &HeaderMap, uri: &Uri) -> Result<(String, bool), BadHost> {
    let mut values = headers.get_all(HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(BadHost::Duplicate);
    }
    let header = header.map(|v| v.to_str().map_err(|_| BadHost::NotText)).transpose()?;
    let authority = uri.authority().map(|a| a.as_str());
    if authority.is_some_and(|a| a.contains('@')) {
        return Err(BadHost::Malformed(tenancy::HostError::BadCharacters));
    }
    match (header, authority) {
        (Some(raw), authority) => {
            let h = tenancy::normalize_host(raw)?;
            if let Some(a) = authority {
                if tenancy::normalize_host(a)? != h {
                    return Err(BadHost::Mismatch);
                }
            }
            let as_sent = h == raw;
            Ok((h, as_sent))
        }
        (None, Some(a)) => Ok((tenancy::normalize_host(a)?, false)),
        (None, None) => Err(BadHost::Missing),
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

    fn host_of(uri: &str, hosts: &[&str]) -> Result<String, BadHost> {
        host_and_as_sent(uri, hosts).map(|(h, _)| h)
    }

    fn host_and_as_sent(uri: &str, hosts: &[&str]) -> Result<(String, bool), BadHost> {
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(HOST, h.parse().unwrap());
        }
        request_host(&headers, &uri.parse().unwrap())
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
