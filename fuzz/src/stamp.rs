//! The stamp contract (docs/stamp.md) as the `stamp` crate implements it
//! for both sides: a request the gateway signs verifies at a backend with
//! the `Host` as sent, any change to what is bound fails, and headers a
//! client makes up are refused without a panic.

use arbitrary::Arbitrary;
use stamp::{Key, Signer, StampError, Verifier};

pub const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef";
pub const OTHER_SECRET: &[u8] = b"fuzz-other-secret-0123456789";

#[derive(Debug, Arbitrary)]
pub struct Input {
    pub signed: Signed,
    /// Headers as a client may send them to a backend directly (each
    /// value split at `,` before it is verified).
    pub forged: Case,
}

/// A request the gateway signs, and one change to it.
#[derive(Debug, Arbitrary)]
pub struct Signed {
    pub tenant: String,
    pub method: String,
    /// The `Host` as the backend receives it.
    pub host: String,
    pub path: String,
    pub ts: u32,
    /// Seconds between signing and verifying (within or past the window).
    pub age: i8,
    pub change: Change,
}

#[derive(Debug, Arbitrary)]
pub enum Change {
    None,
    Tenant(String),
    Method(String),
    Host(String),
    Path(String),
    /// The other key's signature under this key's id.
    Key,
    /// One byte of the signature header flipped (position, new byte).
    SignatureByte(u16, u8),
}

fn key(secret: &[u8]) -> Key {
    Key::new("k1", secret.to_vec()).expect("a valid key")
}

fn verifier() -> Verifier {
    Verifier::new(vec![key(SECRET)], 30).expect("one key")
}

pub fn run(data: &[u8]) {
    crate::run::<Input>(data, check);
}

pub fn check(input: &Input) {
    signed(&input.signed);
    forged(&input.forged);
}

/// A verification as a backend is asked it: every value of the two
/// headers (already split at `,`), the method, and the `Host` and path
/// as received (bytes).
#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub struct Case {
    pub tenants: Vec<Vec<u8>>,
    pub signatures: Vec<Vec<u8>>,
    pub method: String,
    pub host: Vec<u8>,
    pub path: Vec<u8>,
    pub now: u64,
}

impl Case {
    /// What the Rust verifier answers, as `stamp/differential.json` records
    /// it: `tenant:<name>` or the error's code.
    pub fn outcome(&self) -> String {
        let tenants: Vec<&[u8]> = self.tenants.iter().map(Vec::as_slice).collect();
        let signatures: Vec<&[u8]> = self.signatures.iter().map(Vec::as_slice).collect();
        match verifier().verify(&tenants, &signatures, &self.method, &self.host, &self.path, self.now) {
            Ok(name) => format!("tenant:{name}"),
            Err(e) => e.code().to_owned(),
        }
    }
}

/// The two verifications `check` makes of `input` (the signed request as
/// changed, and the made-up headers), for the comparison with the Python
/// verifier (`stamp/differential.json`).
pub fn cases(input: &Input) -> Vec<Case> {
    let mut out = Vec::new();
    if let Some(case) = signed_case(&input.signed) {
        out.push(case);
    }
    out.push(forged_case(&input.forged));
    out
}

/// The made-up headers as a backend reads them (split at `,`).
fn forged_case(f: &Case) -> Case {
    let split = |values: &[Vec<u8>]| -> Vec<Vec<u8>> {
        stamp::header_values(values.iter().take(4).map(Vec::as_slice))
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    };
    Case {
        tenants: split(&f.tenants),
        signatures: split(&f.signatures),
        method: f.method.clone(),
        host: f.host.clone(),
        path: f.path.clone(),
        now: f.now,
    }
}

/// The request of `s` signed, with its change applied, and whether the
/// change alters what the stamp binds.
fn signed_request(s: &Signed) -> Option<(Case, bool)> {
    if !stamp::is_valid_tenant_name(&s.tenant) {
        return None;
    }
    let wire = stamp::encode_tenant(&s.tenant);
    // The gateway signs the host it normalised; the backend normalises the
    // `Host` it receives with the stamp's rules.
    let signed_host = stamp::normalize_host(&s.host);
    let ts = u64::from(s.ts);
    let request = stamp::Request {
        tenant: &wire,
        method: &s.method,
        host: &signed_host,
        path: &s.path,
    };
    let mut header = Signer::new(key(SECRET)).sign(&request, ts).into_bytes();
    let now = ts.saturating_add_signed(i64::from(s.age));
    let (mut tenant, mut method, mut host, mut path) =
        (wire.to_string(), s.method.clone(), s.host.clone(), s.path.clone());
    // Whether the change alters what is bound (else it must still verify).
    let changed = match &s.change {
        Change::None => false,
        Change::Tenant(t) => {
            tenant = t.clone();
            tenant.as_bytes() != wire.as_bytes()
        }
        Change::Method(m) => {
            method = m.clone();
            method != s.method
        }
        Change::Host(h) => {
            host = h.clone();
            stamp::normalize_host_bytes(host.as_bytes()) != signed_host.as_bytes()
        }
        Change::Path(p) => {
            path = p.clone();
            path != s.path
        }
        Change::Key => {
            header = Signer::new(key(OTHER_SECRET)).sign(&request, ts).into_bytes();
            true
        }
        Change::SignatureByte(at, byte) => {
            let mut flipped = header.clone();
            let i = usize::from(*at) % flipped.len();
            flipped[i] = *byte;
            // Either hex case of `sig` is the same signature (docs/stamp.md,
            // check 6): changed only if it reads as something else.
            let same = matches!((parsed(&header), parsed(&flipped)), (Some(a), Some(b)) if a == b);
            header = flipped;
            !same
        }
    };
    let case = Case {
        tenants: vec![tenant.into_bytes()],
        signatures: vec![header],
        method,
        host: host.into_bytes(),
        path: path.into_bytes(),
        now,
    };
    Some((case, changed))
}

fn parsed(header: &[u8]) -> Option<stamp::ParsedSignature<'_>> {
    stamp::parse_signature(std::str::from_utf8(header).ok()?).ok()
}

fn signed_case(s: &Signed) -> Option<Case> {
    signed_request(s).map(|(case, _)| case)
}

fn signed(s: &Signed) {
    let Some((case, changed)) = signed_request(s) else {
        return;
    };
    let tenants: Vec<&[u8]> = case.tenants.iter().map(Vec::as_slice).collect();
    let signatures: Vec<&[u8]> = case.signatures.iter().map(Vec::as_slice).collect();
    let got = verifier().verify(&tenants, &signatures, &case.method, &case.host, &case.path, case.now);
    let (ts, now) = (u64::from(s.ts), case.now);
    let in_window = now.abs_diff(ts) <= 30;
    match (changed, got) {
        (false, Ok(name)) => {
            assert!(in_window, "verified {ts} at {now}, outside the window");
            assert_eq!(name, s.tenant.as_str(), "verified another tenant");
        }
        (false, Err(StampError::Expired { .. })) => assert!(!in_window, "refused {ts} at {now} as expired"),
        (false, Err(e)) => panic!("a request as signed was refused: {e:?} ({s:?})"),
        (true, Ok(name)) => panic!("a changed request verified as {name:?} ({s:?})"),
        (true, Err(StampError::Expired { .. })) => {
            panic!("a changed request got past the signature check ({s:?})")
        }
        (true, Err(_)) => {}
    }
}

fn forged(f: &Case) {
    let case = forged_case(f);
    // Without the secret nothing made up verifies (a fuzzer finding a MAC
    // would be a finding of its own).
    let code = case.outcome();
    assert!(code.starts_with("stamp_"), "made-up headers answered {code}: {f:?}");
    if let Some(Ok(sig)) = f.signatures.first().map(|s| std::str::from_utf8(s)) {
        let _ = stamp::parse_signature(sig);
    }
    for t in &f.tenants {
        if let Ok(wire) = std::str::from_utf8(t) {
            if let Some(name) = stamp::decode_tenant(wire) {
                // A wire form is canonical: the name encodes back to it.
                assert!(stamp::is_valid_tenant_name(&name), "decoded {name:?}");
                assert_eq!(stamp::encode_tenant(&name), wire, "wire form of {name:?}");
            }
        }
    }
}
