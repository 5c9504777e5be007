//! Tenancy naming rules shared by the gateway and upstream-app: how to
//! quote an identifier, the gateway's own schema, and how a Host header or a
//! configured domain is normalised (lower-case, no port, no trailing dot,
//! IDN to punycode) or refused. Which schema names are acceptable
//! ([`validate_schema_name`]) is upstream-app's rule for the schemas it
//! creates; the gateway accepts a row's schema by the stamp's rule
//! (`stamp::is_valid_tenant_name`).

use std::net::Ipv6Addr;

/// Longest PostgreSQL identifier (NAMEDATALEN - 1).
pub const MAX_SCHEMA_NAME_LEN: usize = 63;
/// Longest DNS name in presentation form without the trailing dot.
pub const MAX_HOST_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaNameError {
    #[error("schema name must not be empty")]
    Empty,
    #[error("schema name is longer than {MAX_SCHEMA_NAME_LEN} characters")]
    TooLong,
    #[error("schema name must start with a-z or _ and contain only a-z, 0-9 and _")]
    BadCharacters,
    #[error("schema name `{0}` is reserved")]
    Reserved(String),
}

/// The gateway's own schema (certificates, ACME state): never a tenant's.
pub const GATEWAY_SCHEMA: &str = "tenant_gateway";

/// A tenant schema name: `^[a-z_][a-z0-9_]{0,62}$`, not `public`,
/// `information_schema`, `pg_*` or the gateway's own schema.
pub fn validate_schema_name(name: &str) -> Result<(), SchemaNameError> {
    if name.is_empty() {
        return Err(SchemaNameError::Empty);
    }
    if name.len() > MAX_SCHEMA_NAME_LEN {
        return Err(SchemaNameError::TooLong);
    }
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(SchemaNameError::BadCharacters);
    }
    if name == "public" || name == "information_schema" || name == GATEWAY_SCHEMA || name.starts_with("pg_") {
        return Err(SchemaNameError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// Quote an identifier for SQL (`"name"`, inner quotes doubled). Used even
/// for validated names, as defence in depth.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host is longer than {MAX_HOST_LEN} bytes")]
    TooLong,
    #[error("host has an empty label")]
    EmptyLabel,
    #[error("host label is longer than 63 bytes")]
    LabelTooLong,
    #[error("host contains characters outside a-z, 0-9, '-' and '_'")]
    BadCharacters,
    #[error("host has an invalid port")]
    BadPort,
    #[error("a port is not allowed here")]
    PortNotAllowed,
    #[error("host is not a valid internationalised domain name")]
    BadIdn,
    #[error("host is not a valid IPv6 literal")]
    BadIpv6,
}

/// Normalise a Host header value (`name[:port]` or `[v6][:port]`).
/// Returns the lower-case, punycode, port-less, trailing-dot-less name.
pub fn normalize_host(raw: &str) -> Result<String, HostError> {
    normalize(raw, true)
}

/// Normalise a domain as stored in the domain table: like [`normalize_host`]
/// but a port is an error.
pub fn normalize_domain(raw: &str) -> Result<String, HostError> {
    normalize(raw, false)
}

fn normalize(raw: &str, allow_port: bool) -> Result<String, HostError> {
    match plain_ascii_host(raw, allow_port) {
        Some(host) => Ok(host),
        None => normalize_full(raw, allow_port),
    }
}

/// Every rule, each failure with its own error: what [`plain_ascii_host`]
/// leaves to it, and its reference in the tests.
fn normalize_full(raw: &str, allow_port: bool) -> Result<String, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostError::BadIpv6)?;
        let addr: Ipv6Addr = rest[..end].parse().map_err(|_| HostError::BadIpv6)?;
        check_port(&rest[end + 1..], allow_port)?;
        return Ok(format!("[{addr}]"));
    }
    // A byte scan: hosts are short, and `rfind` pays memrchr's set-up.
    let name = match raw.bytes().rposition(|b| b == b':') {
        Some(i) => {
            check_port(&raw[i..], allow_port)?;
            &raw[..i]
        }
        None => raw,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    normalize_name(name)
}

/// The full rules for a port-less, trailing-dot-less name: IDNA for
/// anything not plain ASCII, then the ASCII host rules.
fn normalize_name(name: &str) -> Result<String, HostError> {
    let ascii = if name.is_ascii()
        && !name
            .split('.')
            .any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--"))
    {
        name.to_ascii_lowercase()
    } else {
        let converted = idna::domain_to_ascii_strict(name).map_err(|_| HostError::BadIdn)?;
        if converted.is_empty() {
            return Err(HostError::BadIdn);
        }
        converted
    };
    validate_ascii_host(&ascii)?;
    Ok(ascii)
}

/// What a byte may be in a plain host name, by byte value: 0 for a label
/// byte as it stays (`a-z`, `0-9`, `_`), [`UPPER`] for `A-Z`, the byte
/// itself for `-` and `.`, 1 for any other (`:` included), so the common
/// byte costs one load and one test.
const HOST_BYTE: [u8; 256] = {
    let mut t = [1u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = match b {
            b'a'..=b'z' | b'0'..=b'9' | b'_' => 0,
            b'A'..=b'Z' => UPPER,
            b'-' | b'.' => b,
            _ => 1,
        };
        c += 1;
    }
    t
};

/// [`HOST_BYTE`] of an upper-case letter.
const UPPER: u8 = 2;

/// The common case in one pass over the `Host` value (it runs on every
/// request that names a new host): an ASCII name, already valid once
/// lower-cased, with no `xn--` label, an optional trailing dot and an
/// optional valid port. `None` for anything else, which the full path then
/// normalises or refuses with its precise error, so both paths agree
/// (tested). One scan finds the port and checks the name, where the full
/// path scans for the port, then checks the name (bench/RESULTS.md).
fn plain_ascii_host(raw: &str, allow_port: bool) -> Option<String> {
    let b = raw.as_bytes();
    let label_ok = |label: &[u8]| !label.is_empty() && label.len() <= 63 && label.last() != Some(&b'-');
    let mut label_start = 0;
    let mut end = b.len();
    let mut upper = false;
    for (i, &c) in b.iter().enumerate() {
        match HOST_BYTE[usize::from(c)] {
            0 => {}
            UPPER => upper = true,
            b'.' => {
                if !label_ok(&b[label_start..i]) {
                    return None;
                }
                label_start = i + 1;
            }
            b'-' => {
                // Not first in its label, and no `xn--` label (IDNA's).
                let xn = i == label_start + 2
                    && b[label_start..i].eq_ignore_ascii_case(b"xn")
                    && b.get(i + 1) == Some(&b'-');
                if i == label_start || xn {
                    return None;
                }
            }
            _ if c == b':' => {
                check_port(&raw[i..], allow_port).ok()?;
                end = i;
                break;
            }
            _ => return None,
        }
    }
    // One trailing dot goes (its label was checked at the dot); otherwise
    // the last label is checked here.
    let name = match raw[..end].strip_suffix('.') {
        Some(name) => name,
        None if label_ok(&b[label_start..end]) => &raw[..end],
        None => return None,
    };
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    // Most clients send their host in lower case: then it is copied as is.
    Some(match upper {
        true => name.to_ascii_lowercase(),
        false => name.to_owned(),
    })
}

fn check_port(suffix: &str, allow_port: bool) -> Result<(), HostError> {
    if suffix.is_empty() {
        return Ok(());
    }
    let port = suffix.strip_prefix(':').ok_or(HostError::BadPort)?;
    if !allow_port {
        return Err(HostError::PortNotAllowed);
    }
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    port.parse::<u16>().map(|_| ()).map_err(|_| HostError::BadPort)
}

fn validate_ascii_host(host: &str) -> Result<(), HostError> {
    if host.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(HostError::LabelTooLong);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(HostError::BadCharacters);
        }
    }
    Ok(())
}

/// Whether `host` is `base` itself or one of its subdomains (any depth).
pub fn is_under(host: &str, base: &str) -> bool {
    host == base
        || (host.len() > base.len() && host.ends_with(base) && host.as_bytes()[host.len() - base.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_pass_path_agrees_with_the_full_rules() {
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_host = ["a"; 127].join(".");
        let too_long_host = ["a"; 128].join(".");
        for name in [
            "ferrari.myapp.localhost",
            "Ferrari.MyApp.LOCALHOST",
            "a",
            "a-b.c_d.e1",
            "-a.b",
            "a-.b",
            "a..b",
            ".a",
            "a.",
            "xn--bcher-kva.example",
            "XN--bcher-kva.example",
            "x-n--a.b",
            "xn-a.b",
            "bücher.example",
            "a b.c",
            "a/b",
            "a@b",
            &long_label,
            &too_long_label,
            &long_host,
            &too_long_host,
        ] {
            for suffix in [
                "", ".", "..", ":80", ".:443", ":", ":08080", ":65536", ":8a", "::80", ":80:80", "[::1]",
            ] {
                let raw = format!("{name}{suffix}");
                for allow_port in [true, false] {
                    if let Some(fast) = plain_ascii_host(&raw, allow_port) {
                        assert_eq!(normalize_full(&raw, allow_port), Ok(fast), "{raw} {allow_port}");
                    }
                }
            }
        }
        for (raw, fast) in [
            ("Ferrari.MyApp.localhost", Some("ferrari.myapp.localhost")),
            ("Ferrari.MyApp.localhost.:8443", Some("ferrari.myapp.localhost")),
            ("xn--bcher-kva.example", None),
            ("a.xN--b.c", None),
            ("a.xn-b.c", Some("a.xn-b.c")),
            ("a:80", Some("a")),
            ("a..", None),
            (".", None),
            (":80", None),
            ("a:", None),
            ("a b", None),
            (&too_long_host, None),
            (&format!("{long_host}.:65535"), Some(&long_host)),
        ] {
            assert_eq!(plain_ascii_host(raw, true).as_deref(), fast, "{raw}");
        }
        assert_eq!(plain_ascii_host("a:80", false), None);
    }

    #[test]
    fn the_one_pass_path_agrees_on_generated_hosts() {
        // 200,000 short strings over the bytes that matter to either path
        // (a fixed sequence: the same strings on every run).
        const ALPHABET: &[u8] = b"aAxXnN09_-.:[]@ \xc3";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        for _ in 0..200_000 {
            let len = next() % 10;
            let raw: Vec<u8> = (0..len).map(|_| ALPHABET[next() % ALPHABET.len()]).collect();
            let Ok(raw) = String::from_utf8(raw) else { continue };
            for allow_port in [true, false] {
                if let Some(fast) = plain_ascii_host(&raw, allow_port) {
                    assert_eq!(normalize_full(&raw, allow_port), Ok(fast), "{raw:?} {allow_port}");
                }
            }
        }
    }

    #[test]
    fn schema_names() {
        for ok in ["ferrari", "_x", "a1_b2", &"a".repeat(63)] {
            assert_eq!(validate_schema_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "public",
            "pg_catalog",
            "information_schema",
            "Ferrari",
            "1abc",
            "a-b",
            "a\"b",
            "a;drop",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(validate_schema_name(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn hosts() {
        assert_eq!(
            normalize_host("Ferrari.MyApp.localhost:8080").as_deref(),
            Ok("ferrari.myapp.localhost")
        );
        assert_eq!(normalize_host("example.com.").as_deref(), Ok("example.com"));
        assert_eq!(normalize_host("bücher.example").as_deref(), Ok("xn--bcher-kva.example"));
        assert_eq!(
            normalize_host("XN--BCHER-KVA.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(normalize_host("[::1]:443").as_deref(), Ok("[::1]"));
        assert_eq!(normalize_host("127.0.0.1:80").as_deref(), Ok("127.0.0.1"));
        for bad in [
            "",
            ":80",
            "a..b",
            ".a",
            "a b",
            "a/b",
            "a:99999",
            "a:x",
            "a:",
            "-a.com",
            "a_.com:1:2",
            "[::1",
            "[zz]",
            "a@b",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            normalize_host(&format!("{}.com", "a".repeat(64))),
            Err(HostError::LabelTooLong)
        );
        let long = vec!["a".repeat(50); 6].join(".");
        assert_eq!(normalize_host(&long), Err(HostError::TooLong));
        assert_eq!(normalize_domain("a.com:80"), Err(HostError::PortNotAllowed));
    }

    #[test]
    fn under() {
        assert!(is_under("a.myapp.com", "myapp.com"));
        assert!(is_under("myapp.com", "myapp.com"));
        assert!(!is_under("evilmyapp.com", "myapp.com"));
    }
}
