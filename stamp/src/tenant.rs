//! Tenant names in the stamp: which names the contract carries (every schema
//! name django-tenants accepts, bounded to PostgreSQL's 63 bytes) and how a
//! name travels in the `X-Tenant` header (docs/stamp.md, "Tenant names").
//!
//! Wire form: each UTF-8 byte of the name that is an ASCII letter, digit,
//! `_` or `-` as is, every other byte as `%` and two upper-case hex digits.
//! Names made only of those characters (every name of the first stamp
//! version) are their own wire form, so their stamps are unchanged.

use std::borrow::Cow;

/// Longest name in bytes (PostgreSQL's NAMEDATALEN - 1: a longer name
/// would be truncated, so two names could meet in one schema).
pub const MAX_TENANT_NAME_BYTES: usize = 63;

/// Bytes that are their own wire form, by value: one load per byte (the
/// request path encodes every stamped name it has not kept).
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        c += 1;
    }
    t
};

fn plain(b: u8) -> bool {
    PLAIN[usize::from(b)]
}

/// A name the contract carries: 1-63 bytes, none of `"` `'` `\` `;` NUL CR
/// LF, not starting with `pg_` in any case (django-tenants' rule).
pub fn is_valid_tenant_name(name: &str) -> bool {
    let b = name.as_bytes();
    let forbidden = |c: &u8| matches!(c, b'"' | b'\'' | b'\\' | b';' | 0 | b'\r' | b'\n');
    let reserved = b.get(..3).is_some_and(|p| p.eq_ignore_ascii_case(b"pg_"));
    (1..=MAX_TENANT_NAME_BYTES).contains(&b.len()) && !b.iter().any(forbidden) && !reserved
}

/// The wire form of a name (borrowed when the name is its own wire form).
pub fn encode_tenant(name: &str) -> Cow<'_, str> {
    if name.bytes().all(plain) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    Cow::Owned(out)
}

/// The name a wire form carries, if the wire form is the canonical
/// encoding of a valid name (anything else is refused).
pub fn decode_tenant(wire: &str) -> Option<Cow<'_, str>> {
    let b = wire.as_bytes();
    if b.iter().all(|&c| plain(c)) {
        return is_valid_tenant_name(wire).then_some(Cow::Borrowed(wire));
    }
    let upper_hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if plain(c) => {
                bytes.push(c);
                i += 1;
            }
            b'%' => {
                let (hi, lo) = (upper_hex(*b.get(i + 1)?)?, upper_hex(*b.get(i + 2)?)?);
                let byte = hi << 4 | lo;
                // Canonical: a plain byte is never escaped.
                if plain(byte) {
                    return None;
                }
                bytes.push(byte);
                i += 3;
            }
            _ => return None,
        }
    }
    let name = String::from_utf8(bytes).ok()?;
    is_valid_tenant_name(&name).then_some(Cow::Owned(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_their_own_wire_form() {
        for n in ["ferrari", "acme-eu", "Tenant_1"] {
            assert!(matches!(encode_tenant(n), Cow::Borrowed(_)));
            assert_eq!(decode_tenant(n).as_deref(), Some(n));
        }
    }

    #[test]
    fn other_names_round_trip_through_upper_case_escapes() {
        for (n, w) in [
            ("Acme.EU", "Acme%2EEU"),
            ("café", "caf%C3%A9"),
            ("a%b", "a%25b"),
            ("big tenant", "big%20tenant"),
        ] {
            assert_eq!(encode_tenant(n), w);
            assert_eq!(decode_tenant(w).as_deref(), Some(n));
        }
    }

    #[test]
    fn non_canonical_or_invalid_wire_forms_are_refused() {
        for w in [
            "",
            "acme.eu",
            "Acme%2eEU",
            "%41cme",
            "acme%zz",
            "acme%2",
            "acme%",
            "caf%E9",
            "pg_catalog",
            "Pg_x",
            "a%22b",
            "a%3Bb",
            "a%00b",
            "a%0Ab",
            "a%0Db",
            "a%5Cb",
            "a%27b",
            "big tenant",
            "café",
        ] {
            assert_eq!(decode_tenant(w), None, "{w:?}");
        }
        assert!(decode_tenant(&"t".repeat(63)).is_some());
        assert!(decode_tenant(&"t".repeat(64)).is_none());
        // 21 three-byte characters are 63 bytes; 22 are too many.
        assert!(decode_tenant(&encode_tenant(&"€".repeat(21))).is_some());
        assert!(decode_tenant(&encode_tenant(&"€".repeat(22))).is_none());
    }
}
