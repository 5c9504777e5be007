//! The plain-HTTP listener's path policy (`route`): a path exempt from the
//! HTTPS redirect is, as a backend resolves it (percent-decoded, dot
//! segments removed), still the exempt path or below it; an ACME challenge
//! token is exactly one segment of base64url after the prefix.

use arbitrary::Arbitrary;
use gateway::route;

use crate::Choice;

#[derive(Debug, Arbitrary)]
pub struct Input {
    pub exempt: Vec<Segments>,
    pub path: Path,
}

/// A path built from segments a fuzzer picks among the tricky ones.
#[derive(Debug, Arbitrary)]
pub struct Segments(pub Vec<Choice>);

const KNOWN: [&str; 14] = [
    "healthz",
    "whoami",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "",
    "%2f",
    "a%2Fb",
    "\\",
    ".well-known",
    "acme-challenge",
    "%25",
    "ok",
];

#[derive(Debug, Arbitrary)]
pub enum Path {
    Built(Segments, bool),
    Raw(String),
}

impl Segments {
    fn text(&self) -> String {
        let mut s = String::new();
        for seg in self.0.iter().take(8) {
            s.push('/');
            s.push_str(seg.pick(&KNOWN));
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }
}

pub fn run(data: &[u8]) {
    crate::run::<Input>(data, check);
}

/// The path as a backend resolves it: percent-decoded once, then dot
/// segments removed (RFC 3986, section 5.2.4), `\` read as `/`.
fn resolved(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                decoded.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let mut out: Vec<&[u8]> = Vec::new();
    let text: Vec<u8> = decoded.iter().map(|&b| if b == b'\\' { b'/' } else { b }).collect();
    for seg in text.split(|&b| b == b'/').skip(1) {
        match seg {
            b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut r = Vec::new();
    for seg in out {
        r.push(b'/');
        r.extend_from_slice(seg);
    }
    r
}

pub fn check(input: &Input) {
    let exempt: Vec<String> = input
        .exempt
        .iter()
        .take(4)
        .map(Segments::text)
        .filter(|e| route::exempt_path_ok(e).is_ok())
        .collect();
    let path = match &input.path {
        Path::Built(segs, trailing) => segs.text() + if *trailing { "/" } else { "" },
        Path::Raw(raw) => raw.clone(),
    };
    if route::exempt(&path, &exempt) {
        let seen = resolved(&path);
        let seen = seen.strip_suffix(b"/").unwrap_or(&seen);
        let under = exempt.iter().any(|e| {
            let e = resolved(e.trim_end_matches('/'));
            seen == e || seen.strip_prefix(&e[..]).is_some_and(|rest| rest.starts_with(b"/"))
        });
        assert!(
            under,
            "{path:?} is exempt by {exempt:?}, and a backend reads it as {:?}",
            String::from_utf8_lossy(seen)
        );
    }
    if let Some(Ok(token)) = route::acme_token(&path) {
        assert_eq!(format!("{}{token}", route::ACME_CHALLENGE_PREFIX), path);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ways past an exemption a backend would resolve: each must be
    /// left to the redirect (a fuzzer finds them too; these keep them).
    #[test]
    fn dot_segments_in_any_spelling_do_not_leave_an_exemption() {
        let healthz = || Segments(vec![Choice::Known(0)]);
        for path in [
            "/healthz/../whoami",
            "/healthz/%2e%2e/whoami",
            "/healthz/%2E%2e/whoami",
            "/healthz/.%2e/whoami",
            "/healthz/%2e./whoami",
            "/healthz/..%2fwhoami",
            "/healthz/..%5cwhoami",
            "/healthz\\..\\whoami",
            "/healthz//../whoami",
        ] {
            check(&Input {
                exempt: vec![healthz()],
                path: Path::Raw(path.to_owned()),
            });
            assert!(!route::exempt(path, &["/healthz".to_owned()]), "{path} is exempt");
        }
        assert!(route::exempt("/healthz/live", &["/healthz".to_owned()]));
    }
}
