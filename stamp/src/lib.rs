//! The tenant stamp: the one implementation of signing (gateway) and verifying
//! (backends) the `X-Tenant` / `X-Tenant-Signature` header pair.
//!
//! The wire format and the verification algorithm are specified in
//! `docs/stamp.md`; the shared vectors (`stamp/vectors.json`, also run by
//! the Python package's tests) are checked by the unit tests at the bottom
//! of this file.

mod tenant;

use std::borrow::Cow;
use std::collections::HashMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Header carrying the tenant's schema name.
pub const TENANT_HEADER: &str = "x-tenant";
/// Header carrying version, key id, timestamp and signature.
pub const SIGNATURE_HEADER: &str = "x-tenant-signature";
/// The only stamp version this crate produces and accepts.
pub const VERSION: &str = "v1";
/// Default accepted clock skew between signer and verifier, in seconds.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 30;
/// Shortest secret we accept (bytes).
pub const MIN_SECRET_LEN: usize = 16;

pub use tenant::{decode_tenant, encode_tenant, is_valid_tenant_name, MAX_TENANT_NAME_BYTES};

type HmacSha256 = Hmac<Sha256>;

/// Why a stamp was refused. Each variant has a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("request carries no tenant stamp")]
    Missing,
    #[error("malformed stamp: {0}")]
    Malformed(&'static str),
    #[error("unsupported stamp version")]
    UnsupportedVersion,
    #[error("unknown stamp key id")]
    UnknownKey,
    #[error("stamp signature does not match")]
    BadSignature,
    #[error("stamp timestamp is outside the accepted window of {max_skew_secs}s")]
    Expired { max_skew_secs: u64 },
}

impl StampError {
    /// Stable code for JSON error bodies and logs.
    pub fn code(&self) -> &'static str {
        match self {
            StampError::Missing => "stamp_missing",
            StampError::Malformed(_) => "stamp_malformed",
            StampError::UnsupportedVersion => "stamp_unsupported_version",
            StampError::UnknownKey => "stamp_unknown_key",
            StampError::BadSignature => "stamp_bad_signature",
            StampError::Expired { .. } => "stamp_expired",
        }
    }
}

/// Errors building keys from configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("stamp key `{id}`: environment variable `{var}` is not set")]
    MissingEnv { id: String, var: String },
    #[error("stamp key `{id}`: secret must be at least {MIN_SECRET_LEN} bytes")]
    TooShort { id: String },
    #[error("stamp key id `{0}` is invalid: use 1-64 characters from [A-Za-z0-9._-]")]
    BadId(String),
    #[error("stamp key id `{0}` is configured twice")]
    Duplicate(String),
    #[error("no stamp keys configured")]
    Empty,
    #[error("signing key `{0}` is not among the configured keys")]
    UnknownSigningKey(String),
}

/// One key as written in a config file: the secret itself comes from the environment.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id sent in the stamp (`kid=`).
    pub id: String,
    /// Name of the environment variable holding the secret.
    pub secret_env: String,
}

/// A shared secret with its id. Only the keyed HMAC state is kept (the
/// secret's inner and outer pads already hashed), so each stamp costs the
/// message's blocks and not the key's.
#[derive(Clone)]
pub struct Key {
    id: String,
    keyed: HmacSha256,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Key {
    pub fn new(id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Result<Key, KeyError> {
        let id = id.into();
        let secret = secret.into();
        if !valid_key_id(&id) {
            return Err(KeyError::BadId(id));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::TooShort { id });
        }
        // HMAC accepts keys of any length; this cannot fail.
        let keyed = HmacSha256::new_from_slice(&secret).expect("HMAC accepts any key length");
        Ok(Key { id, keyed })
    }

    /// Resolve a configured key, reading its secret from the environment.
    pub fn from_config(cfg: &KeyConfig) -> Result<Key, KeyError> {
        let secret = std::env::var(&cfg.secret_env).map_err(|_| KeyError::MissingEnv {
            id: cfg.id.clone(),
            var: cfg.secret_env.clone(),
        })?;
        Key::new(cfg.id.clone(), secret.into_bytes())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The MAC of the canonical string of this key, `ts` and `req`
    /// ([`canonical_parts`]), fed straight into the hash (no intermediate
    /// string). The parts are laid out here, so the constant ones are
    /// copied as constants (given as an array from outside, each was a
    /// `memcpy` call: ~110 instructions per request, bench/RESULTS.md).
    fn mac(&self, ts: &[u8], req: &RawRequest<'_>) -> HmacSha256 {
        let parts = canonical_parts(&self.id, ts, req);
        let mut mac = self.keyed.clone();
        // Thirteen short parts: one copy onto the stack and one update cost
        // less than thirteen updates; a long path goes part by part.
        let mut buf = [0u8; 384];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        match buf.get_mut(..len) {
            Some(out) => {
                let mut at = 0;
                for part in parts {
                    out[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
                mac.update(out);
            }
            None => parts.iter().for_each(|part| mac.update(part)),
        }
        mac
    }
}

/// The request facts a stamp binds.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The tenant's wire form ([`encode_tenant`]): exactly the `X-Tenant` value.
    pub tenant: &'a str,
    pub method: &'a str,
    /// Host as normalised by [`normalize_host`].
    pub host: &'a str,
    /// Path of the request target, without the query, as sent on the wire.
    pub path: &'a str,
}

/// Build the canonical string (see docs/stamp.md, "Canonical string").
pub fn canonical_string(kid: &str, ts: u64, req: &Request<'_>) -> String {
    let mut digits = itoa::Buffer::new();
    let parts = canonical_parts(kid, digits.format(ts).as_bytes(), &req.raw());
    let mut s = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        s.extend_from_slice(part);
    }
    // Every part is UTF-8 (strings and ASCII digits).
    String::from_utf8(s).unwrap_or_default()
}

/// The request facts of a canonical string as bytes: a verifier reads a
/// `Host` and a path as the bytes received (docs/stamp.md signs bytes; a
/// backend may be sent ones that are not UTF-8, by something other than
/// the gateway).
#[derive(Debug, Clone, Copy)]
struct RawRequest<'a> {
    tenant: &'a [u8],
    method: &'a [u8],
    host: &'a [u8],
    path: &'a [u8],
}

impl<'a> Request<'a> {
    fn raw(&self) -> RawRequest<'a> {
        RawRequest {
            tenant: self.tenant.as_bytes(),
            method: self.method.as_bytes(),
            host: self.host.as_bytes(),
            path: self.path.as_bytes(),
        }
    }
}

/// The one definition of the canonical string's bytes, in order: used
/// whole for [`canonical_string`] and fed piece by piece straight into a MAC
/// for signing and verifying (no formatting machinery: it runs on every
/// request).
fn canonical_parts<'a>(kid: &'a str, ts: &'a [u8], req: &RawRequest<'a>) -> [&'a [u8]; 13] {
    [
        VERSION.as_bytes(),
        b"\n",
        kid.as_bytes(),
        b"\n",
        ts,
        b"\n",
        req.tenant,
        b"\n",
        req.method,
        b"\n",
        req.host,
        b"\n",
        req.path,
    ]
}

/// Optional whitespace of the contract: space and horizontal tab only.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// Host normalisation both sides apply: surrounding spaces and tabs removed,
/// port removed, one trailing dot removed, ASCII lower-case (only ASCII).
pub fn normalize_host(host: &str) -> String {
    // Only ASCII bytes are removed or changed, so UTF-8 stays UTF-8.
    String::from_utf8(normalize_host_bytes(host.as_bytes()))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`normalize_host`] of a `Host` value's bytes as received (which need not
/// be UTF-8).
pub fn normalize_host_bytes(host: &[u8]) -> Vec<u8> {
    let host = trim_ows(host);
    let without_port = if host.first() == Some(&b'[') {
        // IPv6 literal: keep the brackets, drop anything after `]`.
        match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
            _ => host,
        }
    };
    let trimmed = without_port.strip_suffix(b".").unwrap_or(without_port);
    trimmed.to_ascii_lowercase()
}

/// Every value of a stamp header as the algorithm counts them (docs/stamp.md
/// check 1): each received value, split at `,`. Servers that fold repeated
/// headers into one value join them with commas, and neither a valid
/// `X-Tenant` nor a valid signature contains one, so a comma means the
/// header came more than once.
pub fn header_values<'a>(received: impl IntoIterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    received.into_iter().flat_map(|v| v.split(|&b| b == b',')).collect()
}

/// Check 2: the part of the signature before its first `;`, without the OWS
/// around it, is `v1`; `v` and other ASCII digits are another version.
fn check_version(signature: &[u8]) -> Result<(), StampError> {
    let head = trim_ows(signature.split(|&b| b == b';').next().unwrap_or_default());
    if head == VERSION.as_bytes() {
        return Ok(());
    }
    match head.split_first() {
        Some((b'v', digits)) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            Err(StampError::UnsupportedVersion)
        }
        _ => Err(StampError::Malformed("signature header must start with the version")),
    }
}

/// Signs requests with one key (the gateway side).
#[derive(Debug, Clone)]
pub struct Signer {
    key: Key,
}

impl Signer {
    pub fn new(key: Key) -> Signer {
        Signer { key }
    }

    pub fn key_id(&self) -> &str {
        &self.key.id
    }

    /// The value of the `X-Tenant-Signature` header for `req` at unix time `ts`.
    pub fn sign(&self, req: &Request<'_>, ts: u64) -> String {
        // itoa: decimal digits as a `str` without a UTF-8 check (a hand loop
        // plus `from_utf8` cost ~270 instructions per request, itoa ~60).
        let mut digits = itoa::Buffer::new();
        let ts = digits.format(ts);
        let digest: [u8; 32] = self.key.mac(ts.as_bytes(), &req.raw()).finalize().into_bytes().into();
        // const-hex: SIMD digits, as a `str` without a UTF-8 check (hex's
        // encoder plus `from_utf8` cost ~330 instructions per request).
        let mut hex = const_hex::Buffer::<32>::new();
        let sig = hex.format(&digest);
        let parts = [VERSION, ";kid=", &self.key.id, ";ts=", ts, ";sig=", sig];
        // Exactly its length: the caller turns it into a header value,
        // which would allocate again for spare capacity.
        let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|p| out.push_str(p));
        out
    }
}

/// The parsed `X-Tenant-Signature` header.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedSignature<'a> {
    pub kid: &'a str,
    pub ts: u64,
    pub sig: [u8; 32],
}

/// Parse `v1;kid=<id>;ts=<unix>;sig=<64 hex>` (spaces and tabs around each
/// `;` allowed, nowhere else). Steps 2 and 3 of the algorithm in
/// docs/stamp.md: another version (`v` and digits) is unsupported, anything
/// else off the grammar malformed.
pub fn parse_signature(value: &str) -> Result<ParsedSignature<'_>, StampError> {
    check_version(value.as_bytes())?;
    // The OWS the version check allows is the grammar's only around `;`.
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err(StampError::Malformed("signature header has whitespace at either end"));
    }
    let mut parts = value.split(';').map(|p| p.trim_matches([' ', '\t']));
    parts.next();
    let mut field = |name: &str| -> Result<&str, StampError> {
        let part = parts
            .next()
            .ok_or(StampError::Malformed("signature header is incomplete"))?;
        part.strip_prefix(name)
            .and_then(|p| p.strip_prefix('='))
            .ok_or(StampError::Malformed(
                "signature header fields must be kid, ts, sig in order",
            ))
    };
    let kid = field("kid")?;
    let ts = field("ts")?;
    let sig = field("sig")?;
    if parts.next().is_some() {
        return Err(StampError::Malformed("signature header has extra fields"));
    }
    if !valid_key_id(kid) {
        return Err(StampError::Malformed("bad key id"));
    }
    // ASCII digits, no leading zero: the text signed is the number's own.
    if ts.is_empty()
        || ts.len() > 12
        || !ts.bytes().all(|b| b.is_ascii_digit())
        || (ts.len() > 1 && ts.starts_with('0'))
    {
        return Err(StampError::Malformed("ts must be unix seconds without leading zeros"));
    }
    let ts: u64 = ts
        .parse()
        .map_err(|_| StampError::Malformed("ts must be unix seconds"))?;
    let mut raw = [0u8; 32];
    if sig.len() != 64 || hex::decode_to_slice(sig, &mut raw).is_err() {
        return Err(StampError::Malformed("sig must be 64 hex digits"));
    }
    Ok(ParsedSignature { kid, ts, sig: raw })
}

/// Verifies stamps against any of several keys (the backend side).
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: HashMap<String, Key>,
    max_skew_secs: u64,
}

impl Verifier {
    pub fn new(keys: Vec<Key>, max_skew_secs: u64) -> Result<Verifier, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut map = HashMap::new();
        for k in keys {
            if map.contains_key(&k.id) {
                return Err(KeyError::Duplicate(k.id));
            }
            map.insert(k.id.clone(), k);
        }
        Ok(Verifier {
            keys: map,
            max_skew_secs,
        })
    }

    /// Verify a request (steps 1-7 of docs/stamp.md, in that order).
    /// `tenant_headers` are all values of `X-Tenant`, `signature_headers` all
    /// values of `X-Tenant-Signature` (more than one of either is malformed;
    /// [`header_values`] counts them from an HTTP request), as received:
    /// bytes, which need not be ASCII. `host` is the raw Host header's value
    /// and `path` the raw path, both as bytes received. Returns the verified
    /// tenant's name (decoded from its wire form).
    pub fn verify<'a, T, S>(
        &self,
        tenant_headers: &[&'a T],
        signature_headers: &[&S],
        method: &str,
        host: impl AsRef<[u8]>,
        path: impl AsRef<[u8]>,
        now: u64,
    ) -> Result<Cow<'a, str>, StampError>
    where
        T: AsRef<[u8]> + ?Sized,
        S: AsRef<[u8]> + ?Sized,
    {
        let (tenant, signature) = match (tenant_headers, signature_headers) {
            ([], []) => return Err(StampError::Missing),
            ([t], [s]) => (T::as_ref(*t), S::as_ref(*s)),
            ([], _) | (_, []) => {
                return Err(StampError::Malformed(
                    "tenant and signature headers must both be present",
                ))
            }
            _ => return Err(StampError::Malformed("stamp headers must appear exactly once")),
        };
        // The version is read from the bytes: `v2;` and anything after it
        // is another version even where the rest is not ASCII.
        check_version(signature)?;
        let signature =
            std::str::from_utf8(signature).map_err(|_| StampError::Malformed("signature header must be ASCII"))?;
        let parsed = parse_signature(signature)?;
        let name = std::str::from_utf8(tenant)
            .ok()
            .and_then(decode_tenant)
            .ok_or(StampError::Malformed("bad tenant value"))?;
        let key = self.keys.get(parsed.kid).ok_or(StampError::UnknownKey)?;
        let host = normalize_host_bytes(host.as_ref());
        let req = RawRequest {
            tenant,
            method: method.as_bytes(),
            host: &host,
            path: path.as_ref(),
        };
        // `key` was found by `parsed.kid`, so its id is the signed one.
        let mut digits = itoa::Buffer::new();
        let mac = key.mac(digits.format(parsed.ts).as_bytes(), &req);
        mac.verify_slice(&parsed.sig).map_err(|_| StampError::BadSignature)?;
        // Checked after the signature so a forged timestamp cannot probe the window.
        if now.abs_diff(parsed.ts) > self.max_skew_secs {
            return Err(StampError::Expired {
                max_skew_secs: self.max_skew_secs,
            });
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published in docs/stamp.md.
    const SECRET: &str = "test-secret-0123456789abcdef";
    const EXPECTED: &str =
        "v1;kid=k1;ts=1700000000;sig=a4060d32a52e25785b958fde9ec5ca1d7156524f0e617f9473087ecedfaefe1d";

    fn vector_req() -> Request<'static> {
        Request {
            tenant: "ferrari",
            method: "GET",
            host: "ferrari.myapp.localhost",
            path: "/projects/1/tasks",
        }
    }

    #[test]
    fn mac_agrees_with_the_canonical_string_at_every_length() {
        // Short requests are hashed from one stack copy, long ones part by
        // part: both must be the HMAC of the canonical string.
        for n in [0, 1, 300, 320, 383, 384, 385, 1000] {
            let path = format!("/{}", "p".repeat(n));
            let req = Request {
                path: &path,
                ..vector_req()
            };
            let mut reference = HmacSha256::new_from_slice(SECRET.as_bytes()).unwrap();
            reference.update(canonical_string("k1", 1_700_000_000, &req).as_bytes());
            let sig = const_hex::encode(reference.finalize().into_bytes());
            assert_eq!(
                signer("k1", SECRET).sign(&req, 1_700_000_000),
                format!("v1;kid=k1;ts=1700000000;sig={sig}"),
                "path of {n} bytes"
            );
        }
    }

    fn signer(id: &str, secret: &str) -> Signer {
        Signer::new(Key::new(id, secret.as_bytes().to_vec()).unwrap())
    }

    fn verifier() -> Verifier {
        Verifier::new(
            vec![
                Key::new("k1", SECRET.as_bytes().to_vec()).unwrap(),
                Key::new("k2", b"second-secret-fedcba9876543210".to_vec()).unwrap(),
            ],
            30,
        )
        .unwrap()
    }

    #[test]
    fn test_vector_matches_doc() {
        assert_eq!(
            canonical_string("k1", 1_700_000_000, &vector_req()),
            "v1\nk1\n1700000000\nferrari\nGET\nferrari.myapp.localhost\n/projects/1/tasks"
        );
        assert_eq!(signer("k1", SECRET).sign(&vector_req(), 1_700_000_000), EXPECTED);
    }

    #[test]
    fn round_trip_with_either_key() {
        let v = verifier();
        for s in [signer("k1", SECRET), signer("k2", "second-secret-fedcba9876543210")] {
            let h = s.sign(&vector_req(), 1000);
            let got = v.verify(
                &["ferrari"],
                &[&h],
                "GET",
                "Ferrari.MyApp.localhost:8080",
                "/projects/1/tasks",
                1010,
            );
            assert_eq!(got.as_deref(), Ok("ferrari"));
        }
    }

    #[test]
    fn every_tampering_is_refused() {
        let v = verifier();
        let h = signer("k1", SECRET).sign(&vector_req(), 1000);
        let host = "ferrari.myapp.localhost";
        let p = "/projects/1/tasks";
        let none: [&str; 0] = [];
        assert_eq!(v.verify(&none, &none, "GET", host, p, 1000), Err(StampError::Missing));
        assert_eq!(
            v.verify(&["mclaren"], &[&h], "GET", host, p, 1000),
            Err(StampError::BadSignature)
        );
        assert_eq!(
            v.verify(&["ferrari"], &[&h], "POST", host, p, 1000),
            Err(StampError::BadSignature)
        );
        assert_eq!(
            v.verify(&["ferrari"], &[&h], "GET", "mclaren.myapp.localhost", p, 1000),
            Err(StampError::BadSignature)
        );
        assert_eq!(
            v.verify(&["ferrari"], &[&h], "GET", host, "/projects", 1000),
            Err(StampError::BadSignature)
        );
        assert_eq!(
            v.verify(&["ferrari"], &[&h], "GET", host, p, 1031),
            Err(StampError::Expired { max_skew_secs: 30 })
        );
        assert_eq!(
            v.verify(&["ferrari"], &[&h], "GET", host, p, 969),
            Err(StampError::Expired { max_skew_secs: 30 })
        );
        assert!(matches!(
            v.verify(&["ferrari", "ferrari"], &[&h], "GET", host, p, 1000),
            Err(StampError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&["ferrari"], &none, "GET", host, p, 1000),
            Err(StampError::Malformed(_))
        ));
        let unknown = signer("k9", SECRET).sign(&vector_req(), 1000);
        assert_eq!(
            v.verify(&["ferrari"], &[&unknown], "GET", host, p, 1000),
            Err(StampError::UnknownKey)
        );
        let wrong_secret = signer("k1", "another-secret-entirely!!").sign(&vector_req(), 1000);
        assert_eq!(
            v.verify(&["ferrari"], &[&wrong_secret], "GET", host, p, 1000),
            Err(StampError::BadSignature)
        );
        let v2 = h.replacen("v1;", "v2;", 1);
        assert_eq!(
            v.verify(&["ferrari"], &[&v2], "GET", host, p, 1000),
            Err(StampError::UnsupportedVersion)
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "v1",
            "v1;kid=k1",
            "v1;ts=1;kid=k1;sig=00",
            "v1;kid=k1;ts=abc;sig=00",
            "v1;kid=k1;ts=1;sig=zz",
            "x;kid=k1;ts=1;sig=00",
        ] {
            assert!(parse_signature(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn whitespace_only_around_semicolons() {
        let h = signer("k1", SECRET).sign(&vector_req(), 1000);
        let spaced = h.replace(';', " \t; ");
        assert!(parse_signature(&spaced).is_ok(), "{spaced:?}");
        for bad in [format!(" {h}"), format!("\t{h}"), format!("{h} "), format!("{h}\t")] {
            assert_eq!(
                parse_signature(&bad).map_err(|e| e.code()),
                Err("stamp_malformed"),
                "{bad:?}"
            );
        }
        // The version check itself reads past the OWS (check 2 before 3).
        assert_eq!(parse_signature(" v2;x "), Err(StampError::UnsupportedVersion));
    }

    #[test]
    fn the_inputs_are_bytes_as_received() {
        let v = verifier();
        let host = "ferrari.myapp.localhost";
        // Another version, whatever follows it: decided before the rest
        // must be ASCII (check 2 before 3).
        assert_eq!(
            v.verify(&["ferrari"], &["v2;\u{e9}".as_bytes()], "GET", host, "/", 1000),
            Err(StampError::UnsupportedVersion)
        );
        let not_utf8: &[u8] = b"v1;kid=k1;ts=1000;sig=\xff";
        assert!(matches!(
            v.verify(&["ferrari"], &[not_utf8], "GET", host, "/", 1000),
            Err(StampError::Malformed(_))
        ));
        let bad_tenant: &[u8] = b"ferr\xffari";
        let h = signer("k1", SECRET).sign(&vector_req(), 1000);
        assert!(matches!(
            v.verify(&[bad_tenant], &[&h], "GET", host, "/projects/1/tasks", 1000),
            Err(StampError::Malformed(_))
        ));
        // A Host and a path that are not UTF-8 are signed and checked as
        // their bytes, never replaced (by an empty host, say).
        let (raw_host, raw_path): (&[u8], &[u8]) = (b"Ferr\xe9ri.example:8080", b"/caf\xe9");
        let mut mac = HmacSha256::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(b"v1\nk1\n1000\nferrari\nGET\nferr\xe9ri.example\n/caf\xe9");
        let sig = format!(
            "v1;kid=k1;ts=1000;sig={}",
            const_hex::encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            v.verify(&["ferrari"], &[&sig], "GET", raw_host, raw_path, 1000)
                .as_deref(),
            Ok("ferrari")
        );
        assert_eq!(
            v.verify(&["ferrari"], &[&sig], "GET", "", raw_path, 1000),
            Err(StampError::BadSignature)
        );
    }

    #[test]
    fn a_comma_separates_two_values() {
        assert_eq!(header_values([&b"ferrari"[..]]), [&b"ferrari"[..]]);
        assert_eq!(header_values([&b"a,b"[..], b"c"]), [&b"a"[..], b"b", b"c"]);
        assert_eq!(header_values([&b""[..]]), [&b""[..]]);
        assert!(header_values(std::iter::empty()).is_empty());
        // Two values: malformed, whatever the first says (check 1 before 2).
        let v = verifier();
        let sigs = header_values([&b"v2;kid=k1,x"[..]]);
        assert!(matches!(
            v.verify(&["ferrari"], &sigs, "GET", "h", "/", 1000),
            Err(StampError::Malformed(_))
        ));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            normalize_host("Ferrari.MyApp.localhost:8080"),
            "ferrari.myapp.localhost"
        );
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "[::1]");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host_bytes(b" \tEx\xffMPLE.com.:80 "), b"ex\xffmple.com");
        assert_eq!(normalize_host_bytes(b"[::1]:443"), b"[::1]");
        assert_eq!(normalize_host_bytes(b"[::1"), b"[::1");
        assert_eq!(normalize_host_bytes(b" \t "), b"");
    }

    /// The shared vectors (stamp/vectors.json), also run by the Python package.
    #[test]
    fn shared_vectors() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../vectors.json")).expect("vectors.json is JSON");
        let keys: Vec<Key> = doc["keys"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, s)| Key::new(id.as_str(), s.as_str().unwrap().as_bytes().to_vec()).unwrap())
            .collect();
        let max_skew = doc["max_skew"].as_u64().unwrap();
        let v = Verifier::new(keys.clone(), max_skew).unwrap();
        let strs = |x: &serde_json::Value| -> Vec<String> {
            x.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        let vectors = doc["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 60);
        for t in vectors {
            let name = t["name"].as_str().unwrap();
            let (tenants, sigs) = (strs(&t["x_tenant"]), strs(&t["x_tenant_signature"]));
            let tenants: Vec<&str> = tenants.iter().map(String::as_str).collect();
            let sigs: Vec<&str> = sigs.iter().map(String::as_str).collect();
            let now = t.get("now").unwrap_or(&doc["now"]).as_u64().unwrap();
            let (method, host, path) = (
                t["method"].as_str().unwrap(),
                t["host"].as_str().unwrap(),
                t["path"].as_str().unwrap(),
            );
            let got = v.verify(&tenants, &sigs, method, host, path, now);
            match t["result"].get("tenant").and_then(|x| x.as_str()) {
                Some(want) => {
                    assert_eq!(got.as_deref(), Ok(want), "{name}");
                    // The signer produces the same stamp when it is in canonical form.
                    let parsed = parse_signature(sigs[0]).unwrap();
                    let key = keys.iter().find(|k| k.id() == parsed.kid).unwrap().clone();
                    let host = normalize_host(host);
                    let req = Request {
                        tenant: tenants[0],
                        method,
                        host: &host,
                        path,
                    };
                    let signed = Signer::new(key).sign(&req, parsed.ts);
                    if !sigs[0].contains([' ', '\t']) && sigs[0] == sigs[0].to_ascii_lowercase() {
                        assert_eq!(signed, sigs[0], "{name}");
                    }
                    assert_eq!(encode_tenant(want), tenants[0], "{name}");
                }
                None => {
                    let want = t["result"]["error"].as_str().unwrap();
                    assert_eq!(got.map_err(|e| e.code()), Err(want), "{name}");
                }
            }
        }
        for h in doc["host_normalization"].as_array().unwrap() {
            assert_eq!(
                normalize_host(h["in"].as_str().unwrap()),
                h["out"].as_str().unwrap(),
                "{h}"
            );
        }
        for e in doc["tenant_encoding"].as_array().unwrap() {
            let (n, w) = (e["name"].as_str().unwrap(), e["wire"].as_str().unwrap());
            assert_eq!(encode_tenant(n), w);
            assert_eq!(decode_tenant(w).as_deref(), Some(n));
        }
    }

    #[test]
    fn key_rules() {
        assert!(matches!(
            Key::new("k1", b"short".to_vec()),
            Err(KeyError::TooShort { .. })
        ));
        assert!(matches!(
            Key::new("bad id", SECRET.as_bytes().to_vec()),
            Err(KeyError::BadId(_))
        ));
        assert!(matches!(Verifier::new(vec![], 30), Err(KeyError::Empty)));
        let k = || Key::new("k1", SECRET.as_bytes().to_vec()).unwrap();
        assert!(matches!(Verifier::new(vec![k(), k()], 30), Err(KeyError::Duplicate(_))));
    }
}
