//! Path policy of the plain-HTTP listener, as pure functions: which paths
//! are exempt from the HTTPS redirect and which requests are ACME HTTP-01
//! challenges. No Pingora here: the request path asks, then acts.
//!
//! Exemptions match whole segments of a canonical path. A path that is not
//! canonical (dot segments, empty segments, encoded dots, slashes or
//! backslashes) is never exempt: a backend might resolve it differently
//! than we compare it (`/healthz/../whoami`), so it gets the redirect, the
//! safe answer for plain HTTP.

/// Always served over plain HTTP while ACME is on (HTTP-01 validation).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Whether `path` (the request target's path, still percent-encoded) is
/// canonical: starts with `/`, no empty, `.` or `..` segments (also when
/// percent-encoded) and no encoded `/` or `\`, no raw `\`.
pub fn canonical(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return false;
    }
    // Segments between slashes; a trailing slash leaves one empty last segment.
    let segments: Vec<&str> = lower[1..].split('/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, seg)| {
        let dots = seg.replace("%2e", ".");
        !(dots == "." || dots == ".." || (seg.is_empty() && i != last))
    })
}

/// Whether `path` is exempt from the HTTPS redirect by one of `exempt`
/// (each exempts itself and everything below it, on segment boundaries).
pub fn exempt(path: &str, exempt: &[String]) -> bool {
    canonical(path)
        && exempt.iter().any(|e| {
            let e = e.trim_end_matches('/');
            path == e || path.strip_prefix(e).is_some_and(|rest| rest.starts_with('/'))
        })
}

/// An exemption a config may list: canonical and not the root.
pub fn exempt_path_ok(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with /");
    }
    if path.trim_end_matches('/').is_empty() {
        return Err("`/` would exempt every path; turn tls.redirect_http off instead");
    }
    if !canonical(path) {
        return Err("must be a plain path (no `.`/`..` or empty segments, no encoded slashes)");
    }
    Ok(())
}

/// The HTTP-01 token a path asks for: exactly one segment of base64url
/// characters after the challenge prefix (anything else is not a challenge
/// and must not reach a backend either: the caller answers 404).
pub fn acme_token(path: &str) -> Option<Result<&str, ()>> {
    let rest = path.strip_prefix(ACME_CHALLENGE_PREFIX)?;
    let ok = !rest.is_empty()
        && rest.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    Some(if ok { Ok(rest) } else { Err(()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exemptions_match_whole_segments_of_canonical_paths() {
        let e = list(&["/healthz", "/public/"]);
        for yes in ["/healthz", "/healthz/", "/healthz/deep", "/public", "/public/a.css"] {
            assert!(exempt(yes, &e), "{yes}");
        }
        for no in [
            "/healthzzz",
            "/healthz/../whoami",
            "/healthz/%2e%2e/whoami",
            "/healthz/%2E%2e/whoami",
            "/healthz/./x",
            "/healthz//x",
            "/healthz%2fx",
            "/healthz\\..\\x",
            "/whoami",
            "//healthz",
            "/",
        ] {
            assert!(!exempt(no, &e), "{no}");
        }
    }

    #[test]
    fn config_exemptions_must_be_plain_paths() {
        assert!(exempt_path_ok("/healthz").is_ok());
        assert!(exempt_path_ok("/static/").is_ok());
        assert!(exempt_path_ok("healthz").is_err());
        assert!(exempt_path_ok("/").is_err());
        assert!(exempt_path_ok("/a/../b").is_err());
    }

    #[test]
    fn challenge_tokens_are_one_base64url_segment() {
        assert_eq!(acme_token("/x"), None);
        assert_eq!(
            acme_token("/.well-known/acme-challenge/abc-DEF_12"),
            Some(Ok("abc-DEF_12"))
        );
        assert_eq!(acme_token("/.well-known/acme-challenge/../../x"), Some(Err(())));
        assert_eq!(acme_token("/.well-known/acme-challenge/"), Some(Err(())));
        assert_eq!(acme_token("/.well-known/acme-challenge/a/b"), Some(Err(())));
    }
}
