//! Hostile bytes on the wire, HTTP/1.1: a seeded generator of requests, many
//! of them mutated the way request smuggling and desync attacks are built
//! (conflicting or oddly spelled `Content-Length` and `Transfer-Encoding`,
//! odd chunk sizes, obs-folds, bare LFs, control bytes, repeated or
//! conflicting `Host`s, absolute-form targets naming another tenant,
//! spoofed tenant headers in every spelling, a request for the other tenant
//! hidden in a body, pipelining), sent on keep-alive connections to the
//! gateway in front of a backend that reads what it receives strictly.
//!
//! What must hold, whatever the gateway accepts or refuses:
//! - the backend receives only unambiguous requests: one framing (one
//!   `Content-Length` of digits, or `Transfer-Encoding: chunked` alone,
//!   well formed), CRLF line ends, no obs-fold, no control byte, one
//!   `Host`, no client tenant header in any spelling, and a stamp that
//!   verifies for the tenant of the `Host` it arrived with;
//! - no request hidden in a body ever reaches the backend as a request;
//! - every answer a client reads is the answer to its own request: a
//!   backend answer names the request's own path and its host's tenant (on
//!   a pipelined connection too), and a request naming two tenants or an
//!   unknown host is never answered by the backend;
//! - the gateway's own answers are well-formed 4xx (or 501/505), never
//!   another status;
//! - plain requests are served (the run is not vacuous: both tenants are
//!   served, many requests are refused), and the gateway never panics.
//!
//! The same run goes over plain HTTP and over TLS (each connection's SNI the
//! host of its first request). It is deterministic in what it sends (a
//! fixed seed; `WIRE_SEED` and `WIRE_CONNECTIONS` choose another run, e.g. a
//! longer one by hand).
//!
//! HTTP/2 (over TLS) has a fixed list of cases instead, written frame by
//! frame with a header block of raw literals (so any bytes can be sent):
//! the ways a request HTTP/2 frames unambiguously can turn ambiguous once
//! written as HTTP/1.1 for the backend (H2.CL, H2.TE, CR, LF or NUL in a
//! name, value or pseudo-header, `:authority` and `host` naming different
//! tenants, trailers carrying tenant or framing fields), and malformed
//! header blocks. The same backend and the same rules; `WIRE_CASE` runs one
//! case, `WIRE_DEBUG` prints the frames read, `WIRE_TIMEOUT` bounds each
//! read (15 s: only a gateway that neither answers nor closes waits it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FERRARI: &str = "ferrari.myapp.localhost";
const MCLAREN: &str = "mclaren.myapp.localhost";
const UNKNOWN: &str = "nobody.myapp.localhost";

/// The tenant a normalised host routes to in this stack.
fn tenant_of(host: &str) -> Option<&'static str> {
    match host {
        FERRARI => Some("ferrari"),
        MCLAREN => Some("mclaren"),
        _ => None,
    }
}

/// `Host` normalised as the stamp does: port, one trailing dot, case.
fn normal_host(raw: &[u8]) -> String {
    String::from_utf8_lossy(&stamp::normalize_host_bytes(raw)).into_owned()
}

// ---------------------------------------------------------------- backend

/// What the backend saw.
#[derive(Default)]
struct Seen {
    /// Each request it could not read unambiguously, or should never have
    /// been sent, with the bytes that showed it.
    violations: Vec<String>,
    /// Stamped requests served, per tenant.
    served: std::collections::BTreeMap<String, usize>,
}

impl Seen {
    /// Each tenant was served at least `n` requests (a run that is not vacuous).
    fn both_served(&self, n: usize) {
        for t in ["ferrari", "mclaren"] {
            assert!(self.served.get(t).copied().unwrap_or(0) >= n, "{t}: {:?}", self.served);
        }
    }
}

/// A backend that parses each connection's bytes strictly and answers
/// `<tenant> <target> <body length>` with `X-Wire-Backend: 1`.
struct StrictBackend {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl StrictBackend {
    fn start() -> StrictBackend {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let keys = vec![stamp_key(false), stamp_key(true)];
        let verifier = stamp::Verifier::new(keys, 3_600).expect("verifier");
        let shared = seen.clone();
        let port = serve_each(move |conn| serve(conn, &shared, &verifier));
        StrictBackend { port, seen }
    }
}

fn serve(mut conn: TcpStream, seen: &Mutex<Seen>, verifier: &stamp::Verifier) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = Vec::new();
    let mut continued = false;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match parse_request(&buf) {
            Parsed::Incomplete { expects_continue } => {
                if expects_continue && !continued {
                    continued = true;
                    let _ = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                match conn.read(&mut chunk) {
                    // A request cut short and its connection closed is safe
                    // (a streamed body whose client broke its framing): no
                    // bytes after it are ever read as a request.
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            Parsed::Bad(why) => {
                violation(seen, &why, &buf);
                return;
            }
            Parsed::Done(req, used) => {
                buf.drain(..used);
                continued = false;
                let body = match answer(&req, verifier) {
                    Ok(Some(tenant)) => {
                        *seen.lock().expect("seen").served.entry(tenant.clone()).or_default() += 1;
                        format!("backend {tenant} {} {}", req.target, req.body.len())
                    }
                    Ok(None) => "ok".to_owned(),
                    Err(why) => {
                        violation(seen, &why, &req.raw);
                        return;
                    }
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Wire-Backend: 1\r\n\r\n",
                    body.len()
                );
                if conn.write_all(format!("{head}{body}").as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

fn violation(seen: &Mutex<Seen>, why: &str, bytes: &[u8]) {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
        .escape_debug()
        .to_string();
    seen.lock()
        .expect("seen")
        .violations
        .push(format!("{why}: \"{shown}\""));
}

/// One request as the backend read it.
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    /// The names of a chunked body's trailer fields.
    trailers: Vec<String>,
    body: Vec<u8>,
    raw: Vec<u8>,
}

impl Req {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// The tenant a request is served for (`None`: the health check), or why
/// it should never have reached a backend.
fn answer(req: &Req, verifier: &stamp::Verifier) -> Result<Option<String>, String> {
    let path = req.target.split('?').next().unwrap_or_default();
    let hosts = req.values("host");
    let [host] = hosts[..] else {
        return Err(format!("{} Host headers", hosts.len()));
    };
    for (name, _) in &req.headers {
        // Any spelling but the stamp's own two names.
        let n = name.to_ascii_lowercase().replace('_', "-");
        let stamps = !name.contains('_') && (n == "x-tenant" || n == "x-tenant-signature");
        if n.starts_with("x-tenant") && !stamps {
            return Err(format!("a client's tenant header `{name}` reached the backend"));
        }
    }
    if path.contains("smuggled") {
        return Err("a request hidden in a body reached the backend".into());
    }
    if let Some(t) = req.trailers.iter().find(|t| {
        let t = t.replace('_', "-");
        t.starts_with("x-tenant") || ["host", "content-length", "transfer-encoding"].contains(&t.as_str())
    }) {
        return Err(format!("a client's trailer `{t}` reached the backend"));
    }
    if path == "/healthz" && req.values("x-tenant").is_empty() {
        return Ok(None);
    }
    let now = unix_now();
    let tenant = verifier
        .verify(
            &req.values("x-tenant"),
            &req.values("x-tenant-signature"),
            &req.method,
            host,
            path.as_bytes(),
            now,
        )
        .map_err(|e| format!("stamp does not verify: {e}"))?
        .into_owned();
    let normal = normal_host(host);
    match tenant_of(&normal) {
        Some(t) if t == tenant => Ok(Some(tenant)),
        other => Err(format!("stamped for {tenant}, host {normal} is {other:?}'s")),
    }
}

enum Parsed {
    Incomplete { expects_continue: bool },
    Bad(String),
    Done(Req, usize),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A bare CR or LF (one not in a CRLF pair) in `b`.
fn bare_cr_or_lf(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| match c {
        b'\r' => b.get(i + 1).is_some_and(|&n| n != b'\n'),
        b'\n' => i == 0 || b[i - 1] != b'\r',
        _ => false,
    })
}

/// Parse one request from the start of `buf`, allowing nothing a lenient
/// parser would read differently.
fn parse_request(buf: &[u8]) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return match bare_cr_or_lf(buf) {
            true => Parsed::Bad("a bare CR or LF in a request head".into()),
            false => Parsed::Incomplete {
                expects_continue: false,
            },
        };
    };
    let head = &buf[..end];
    if bare_cr_or_lf(head) {
        return Parsed::Bad("a bare CR or LF in a request head".into());
    }
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Parsed::Bad("request line is not three parts".into());
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Parsed::Bad("bad method".into());
    }
    if target.first() != Some(&b'/') || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Parsed::Bad("target is not in origin form".into());
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Parsed::Bad("not HTTP/1.1 or HTTP/1.0".into());
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Parsed::Bad("obs-fold".into());
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            return Parsed::Bad("header line without a colon".into());
        };
        let name = &l[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Parsed::Bad("bad header name".into());
        }
        let value = l[colon + 1..].trim_ascii();
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Parsed::Bad("a control byte in a header value".into());
        }
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    let mut req = Req {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        headers,
        trailers: Vec::new(),
        body: Vec::new(),
        raw: Vec::new(),
    };
    let expects_continue = req
        .values("expect")
        .iter()
        .any(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let lengths = req.values("content-length");
    let codings = req.values("transfer-encoding");
    let rest = &buf[end + 4..];
    let used = match (&lengths[..], &codings[..]) {
        ([], []) => 0,
        ([len], []) => {
            let Some(n) = std::str::from_utf8(len)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                return Parsed::Bad("Content-Length is not one number".into());
            };
            if rest.len() < n {
                return Parsed::Incomplete { expects_continue };
            }
            req.body = rest[..n].to_vec();
            n
        }
        ([], [te]) if te.eq_ignore_ascii_case(b"chunked") && version == b"HTTP/1.1" => match chunked(rest) {
            Ok(Some((body, used, trailers))) => {
                req.body = body;
                req.trailers = trailers;
                used
            }
            Ok(None) => return Parsed::Incomplete { expects_continue },
            Err(why) => return Parsed::Bad(why),
        },
        _ => {
            return Parsed::Bad(format!(
                "framing: {} Content-Length, {} Transfer-Encoding",
                lengths.len(),
                codings.len()
            ))
        }
    };
    let total = end + 4 + used;
    req.raw = buf[..total].to_vec();
    Parsed::Done(req, total)
}

/// A chunked body, strictly: hex sizes (an extension allowed), CRLFs,
/// the last chunk and a trailer section: the body, the bytes it took and
/// the trailer fields' names (lower case). `Ok(None)`: incomplete.
type Dechunked = (Vec<u8>, usize, Vec<String>);

fn chunked(mut b: &[u8]) -> Result<Option<Dechunked>, String> {
    let start = b.len();
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    loop {
        let Some(eol) = find(b, b"\r\n") else {
            return match bare_cr_or_lf(b) {
                true => Err("a bare CR or LF in a chunk size".into()),
                false => Ok(None),
            };
        };
        let line = &b[..eol];
        // Spaces or tabs may come before an extension's `;` (BWS).
        let size = line.split(|&c| c == b';').next().unwrap_or_default().trim_ascii_end();
        if size.is_empty() || size.len() > 8 || !size.iter().all(u8::is_ascii_hexdigit) || bare_cr_or_lf(line) {
            return Err("bad chunk size".into());
        }
        let n = usize::from_str_radix(std::str::from_utf8(size).unwrap_or("x"), 16).map_err(|e| e.to_string())?;
        b = &b[eol + 2..];
        if n == 0 {
            // Trailer section: lines up to an empty one.
            loop {
                let Some(eol) = find(b, b"\r\n") else {
                    return Ok(None);
                };
                let line = &b[..eol];
                b = &b[eol + 2..];
                if line.is_empty() {
                    return Ok(Some((body, start - b.len(), trailers)));
                }
                if bare_cr_or_lf(line) || line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
                    return Err("bad trailer".into());
                }
                let name = line.split(|&c| c == b':').next().unwrap_or_default();
                trailers.push(String::from_utf8_lossy(name).to_ascii_lowercase());
            }
        }
        if b.len() < n + 2 {
            return Ok(None);
        }
        if &b[n..n + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

// ---------------------------------------------------------------- client

/// What a request's answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A plain request first on its connection: the backend must answer it
    /// for this tenant.
    Served(&'static str),
    /// Mutated: the backend may answer it (for this tenant only), or the
    /// gateway may refuse it.
    Either(&'static str),
    /// Two tenants or an unknown host: never the backend's answer.
    Refused,
}

struct Sent {
    /// The host the request was built for (the SNI, over TLS, when it is
    /// the connection's first).
    host: &'static str,
    /// The path every answer from the backend must name.
    path: String,
    expect: Expect,
    /// The mutations applied, for the failure message.
    what: Vec<&'static str>,
    bytes: Vec<u8>,
}

/// A request to build: its parts, mutated before they are written out.
struct Draft {
    method: &'static str,
    target: String,
    version: &'static str,
    /// Header lines without their line end.
    lines: Vec<Vec<u8>>,
    body: Vec<u8>,
    /// Line end per line (head and blank line).
    eol: &'static [u8],
    /// One line's end replaced by a bare LF, if set.
    odd_eol: Option<usize>,
}

impl Draft {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}", self.method, self.target, self.version).into_bytes();
        let mut lines: Vec<&[u8]> = self.lines.iter().map(Vec::as_slice).collect();
        lines.push(b"");
        out.extend_from_slice(self.eol);
        for (i, l) in lines.iter().enumerate() {
            out.extend_from_slice(l);
            out.extend_from_slice(if self.odd_eol == Some(i) { b"\n" } else { self.eol });
        }
        out.extend_from_slice(&self.body);
        out
    }
}

/// The other tenant's host.
fn other(host: &'static str) -> &'static str {
    if host == FERRARI {
        MCLAREN
    } else {
        FERRARI
    }
}

/// A request for the other tenant, to hide in a body.
fn hidden(host: &'static str, id: &str) -> Vec<u8> {
    format!("GET /w/smuggled-{id} HTTP/1.1\r\nHost: {}\r\n\r\n", other(host)).into_bytes()
}

fn chunk_body(rng: &mut StdRng, payload: &[u8], size_spelling: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let cut = rng.gen_range(0..=payload.len());
    for part in [&payload[..cut], &payload[cut..]] {
        if part.is_empty() {
            continue;
        }
        let size = match size_spelling {
            "upper" => format!("{:X}", part.len()),
            "padded" => format!("{:08x}", part.len()),
            "ext" => format!("{:x};name=value", part.len()),
            "plus" => format!("+{:x}", part.len()),
            "0x" => format!("0x{:x}", part.len()),
            "space" => format!("{:x} ", part.len()),
            _ => format!("{:x}", part.len()),
        };
        out.extend_from_slice(size.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A request, plain or with up to four mutations.
fn request(rng: &mut StdRng, id: &str, first: bool, pipelined: bool) -> Sent {
    let host = match rng.gen_range(0..10) {
        0 => UNKNOWN,
        1..=4 => FERRARI,
        _ => MCLAREN,
    };
    let path = format!("/w/{id}");
    let mut d = Draft {
        method: "GET",
        target: path.clone(),
        version: "HTTP/1.1",
        lines: vec![format!("Host: {host}").into_bytes(), b"User-Agent: wire".to_vec()],
        body: Vec::new(),
        eol: b"\r\n",
        odd_eol: None,
    };
    let mut what = Vec::new();
    let n = if rng.gen_bool(0.3) { 0 } else { rng.gen_range(1..=4) };
    for _ in 0..n {
        let m = rng.gen_range(0..27);
        what.push(mutate(rng, &mut d, m, host, id));
    }
    let bytes = d.bytes();
    // Every name the head gives for its host, read loosely: all must be
    // one tenant's for the backend ever to see the request.
    let named: Vec<Option<&str>> = named_hosts(&bytes).iter().map(|h| tenant_of(h)).collect();
    let expect = match named.first().copied().flatten() {
        Some(t) if named.iter().any(|n| *n != Some(t)) => Expect::Refused,
        None => Expect::Refused,
        // Pipelined, an answer may be lost to a reset when a later
        // request is refused and the connection closed (Pingora's own 400s
        // close without lingering): only a lone first request must be served.
        Some(t) if what.is_empty() && first && !pipelined => Expect::Served(t),
        Some(t) => Expect::Either(t),
    };
    Sent {
        host,
        path,
        expect,
        what,
        bytes,
    }
}

/// The names a request head gives for its host, loosely read: every `Host`
/// field (however spelled around its colon), split at anything that may
/// separate two names, and an absolute-form target's authority; each
/// normalised as the stamp normalises a host.
fn named_hosts(request: &[u8]) -> Vec<String> {
    // The head ends at its first empty line, whatever its line ends.
    let mut lines = request
        .split(|&b| b == b'\n')
        .take_while(|l| !l.is_empty() && *l != b"\r");
    let mut names = Vec::new();
    let line = lines.next().unwrap_or_default();
    if let Some(target) = line.split(|&b| b == b' ').nth(1) {
        if let Some(at) = find(target, b"://") {
            let rest = &target[at + 3..];
            let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
            names.push(rest[..end].to_vec());
        }
    }
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].trim_ascii().eq_ignore_ascii_case(b"host") {
            continue;
        }
        let value = &line[colon + 1..];
        names.extend(
            value
                .split(|&b| matches!(b, b'@' | b' ' | b',' | b'\t' | b'\0' | b'\r'))
                .filter(|p| !p.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    names.iter().map(|n| normal_host(n)).collect()
}

/// Apply mutation `m` to `d`; its name.
fn mutate(rng: &mut StdRng, d: &mut Draft, m: u32, host: &'static str, id: &str) -> &'static str {
    let spoof = |rng: &mut StdRng| -> Vec<u8> {
        let names = [
            "X-Tenant",
            "x-tenant",
            "X-TENANT",
            "X_Tenant",
            "X-Tenant-Signature",
            "x_tenant_signature",
            "X-Tenant-Id",
            "X-Tenant ",
        ];
        let name = names[rng.gen_range(0..names.len())];
        format!("{name}: mclaren").into_bytes()
    };
    match m {
        0 => {
            let line = spoof(rng);
            d.lines.push(line);
            "spoofed tenant header"
        }
        1 => {
            let line = spoof(rng);
            d.lines.insert(0, line);
            "spoofed tenant header first"
        }
        2 => {
            d.method = "POST";
            let body = hidden(host, id);
            d.lines.push(format!("Content-Length: {}", body.len()).into_bytes());
            d.body = body;
            "a request hidden in a Content-Length body"
        }
        3 => {
            d.method = "POST";
            let body = hidden(host, id);
            d.lines.push(b"Transfer-Encoding: chunked".to_vec());
            d.body = chunk_body(rng, &body, "plain");
            "a request hidden in a chunked body"
        }
        4 => {
            // CL.TE: a front end reading Content-Length and a back end reading chunks disagree.
            d.method = "POST";
            let mut body = b"0\r\n\r\n".to_vec();
            body.extend_from_slice(&hidden(host, id));
            d.lines.push(format!("Content-Length: {}", body.len()).into_bytes());
            d.lines.push(b"Transfer-Encoding: chunked".to_vec());
            d.body = body;
            "Content-Length and Transfer-Encoding (CL.TE)"
        }
        5 => {
            // TE.CL.
            d.method = "POST";
            let inner = hidden(host, id);
            d.lines.push(b"Content-Length: 4".to_vec());
            d.lines.push(b"Transfer-Encoding: chunked".to_vec());
            d.body = chunk_body(rng, &inner, "plain");
            "Transfer-Encoding and a short Content-Length (TE.CL)"
        }
        6 => {
            d.method = "POST";
            let te = [
                "Transfer-Encoding: xchunked",
                "Transfer-Encoding : chunked",
                "Transfer-Encoding: chunked, identity",
                "Transfer-Encoding: identity, chunked",
                "Transfer-Encoding:\tchunked",
                "Transfer-Encoding: Chunked",
                "Transfer-Encoding: chunked\x0b",
                "Transfer_Encoding: chunked",
                "Transfer-Encoding: \"chunked\"",
            ];
            let line = te[rng.gen_range(0..te.len())];
            d.lines.push(line.as_bytes().to_vec());
            let inner = hidden(host, id);
            d.body = chunk_body(rng, &inner, "plain");
            "an odd Transfer-Encoding"
        }
        7 => {
            d.method = "POST";
            d.lines.push(b"Transfer-Encoding: chunked".to_vec());
            d.lines.push(b"Transfer-Encoding: chunked".to_vec());
            d.body = chunk_body(rng, b"hello", "plain");
            "Transfer-Encoding twice"
        }
        8 => {
            d.method = "POST";
            let te_fold: &[u8] = b"Transfer-Encoding:\r\n chunked";
            d.lines.push(te_fold.to_vec());
            let inner = hidden(host, id);
            d.body = chunk_body(rng, &inner, "plain");
            "Transfer-Encoding in an obs-fold"
        }
        9 => {
            d.method = "POST";
            let inner = hidden(host, id);
            let spelling = ["upper", "padded", "ext", "plus", "0x", "space"][rng.gen_range(0..6)];
            d.lines.push(b"Transfer-Encoding: chunked".to_vec());
            d.body = chunk_body(rng, &inner, spelling);
            "odd chunk sizes"
        }
        10 => {
            d.method = "POST";
            let n = 5;
            let cl = [
                format!("Content-Length: {n}\r\nContent-Length: {n}"),
                format!("Content-Length: {n}\r\nContent-Length: 0"),
                format!("Content-Length: 0\r\nContent-Length: {n}"),
                format!("Content-Length: +{n}"),
                format!("Content-Length: {n}, {n}"),
                format!("Content-Length: 0x{n}"),
                format!("Content-Length: -{n}"),
                format!("Content-Length: {n} "),
                format!("Content-Length: 0{n}"),
                "Content-Length: 99999999999999999999999".to_owned(),
                format!("Content-Length : {n}"),
            ];
            // Whatever length is read, what follows "hello" is the next
            // request as sent, so nothing is hidden here.
            let line = cl[rng.gen_range(0..cl.len())].clone();
            d.lines.push(line.into_bytes());
            d.body = b"hello".to_vec();
            "odd Content-Length"
        }
        11 => {
            d.lines.push(format!("Host: {}", other(host)).into_bytes());
            "a second Host, another tenant's"
        }
        12 => {
            d.lines.push(format!("Host: {host}").into_bytes());
            "the same Host twice"
        }
        13 => {
            d.target = format!("http://{}{}", other(host), d.target);
            "absolute-form target naming the other tenant"
        }
        14 => {
            d.target = format!("http://{host}{}", d.target);
            "absolute-form target naming the host"
        }
        15 => {
            d.lines.retain(|l| !l.to_ascii_lowercase().starts_with(b"host"));
            let spelling = [
                format!("Host: {}", host.to_ascii_uppercase()),
                format!("Host: {host}."),
                format!("Host: {host}:80"),
                format!("host:{host}"),
                format!("Host:\t{host}\t"),
                format!("Host: {host}@{}", other(host)),
                format!("Host: {}@{host}", other(host)),
                format!("Host: {host} {}", other(host)),
                format!("Host: {host},{}", other(host)),
                format!("Host: {host}\x00.evil"),
                format!("Host : {host}"),
                String::new(),
            ];
            let i = rng.gen_range(0..spelling.len());
            if !spelling[i].is_empty() {
                d.lines.insert(0, spelling[i].clone().into_bytes());
            }
            "an odd Host"
        }
        16 => {
            d.eol = b"\n";
            "LF line ends"
        }
        17 => {
            d.odd_eol = Some(rng.gen_range(0..=d.lines.len()));
            "one bare LF line end"
        }
        18 => {
            let at = rng.gen_range(0..d.lines.len());
            d.lines.insert(at + 1, b" folded-on".to_vec());
            "an obs-fold"
        }
        19 => {
            let ctl = [b'\0', b'\r', 0x7f, 0x1b][rng.gen_range(0..4)];
            let mut line = b"X-Note: a".to_vec();
            line.push(ctl);
            line.extend_from_slice(b"b");
            d.lines.push(line);
            "a control byte in a value"
        }
        20 => {
            d.method = ["get", "G ET", "POST", "OPTIONS", "PURGE"][rng.gen_range(0..5)];
            "an odd method"
        }
        21 => {
            d.version = ["HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 "][rng.gen_range(0..5)];
            "an odd version"
        }
        22 => {
            d.method = "POST";
            d.lines.push(b"Expect: 100-continue".to_vec());
            d.lines.push(b"Content-Length: 5".to_vec());
            d.body = b"hello".to_vec();
            "Expect: 100-continue"
        }
        25 => {
            // An upgrade the backend does not take (it answers 200): the
            // bytes after it are HTTP again, never a tunnel to the backend.
            let lines: &[&[u8]] = &[
                b"Connection: Upgrade",
                b"Upgrade: websocket",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                b"Sec-WebSocket-Version: 13",
            ];
            d.lines.extend(lines.iter().map(|l| l.to_vec()));
            "a WebSocket upgrade the backend refuses"
        }
        26 => {
            let lines: &[&[u8]] = &[
                b"Connection: Upgrade, HTTP2-Settings",
                b"Upgrade: h2c",
                b"HTTP2-Settings: AAMAAABkAAQAAP__",
            ];
            d.lines.extend(lines.iter().map(|l| l.to_vec()));
            "an upgrade to h2c"
        }
        23 => {
            let (name, n) = [("X-Long", 1), ("X-Many", 150)][rng.gen_range(0..2)];
            for i in 0..n {
                let len = if n == 1 { 20_000 } else { 20 };
                d.lines.push(format!("{name}-{i}: {}", "a".repeat(len)).into_bytes());
            }
            "a very long head"
        }
        _ => {
            let names = [
                "Connection: X-Tenant",
                "Connection: Host",
                "Connection: close, X-Forwarded-For",
                "Connection: keep-alive, Transfer-Encoding",
            ];
            d.lines.push(names[rng.gen_range(0..names.len())].as_bytes().to_vec());
            "Connection nominating a header"
        }
    }
}

/// One response as the client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    backend: bool,
    close: bool,
    body: String,
}

/// How a read for more of a response ended.
enum Fill {
    More,
    /// The gateway closed the connection.
    End,
    /// The connection was reset: what the gateway wrote last may be lost
    /// (it closed with our pipelined bytes unread).
    Reset,
}

/// Read one response (skipping 1xx) from `conn`, with `buf` holding bytes
/// read ahead. `None`: the connection ended first (or was reset, which may
/// cut a response short).
fn read_response(conn: &mut dyn Read, buf: &mut Vec<u8>) -> Result<Option<Resp>, String> {
    loop {
        let end = loop {
            if let Some(end) = find(buf, b"\r\n\r\n") {
                break end;
            }
            match fill(conn, buf)? {
                Fill::More => {}
                Fill::End if !buf.is_empty() => {
                    return Err(format!("a partial response head: \"{}\"", shown(buf)));
                }
                Fill::End | Fill::Reset => return Ok(None),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut len = None;
        let mut chunked_body = false;
        let mut backend = false;
        let mut close = false;
        for l in lines {
            let (n, v) = l.split_once(':').ok_or_else(|| format!("bad response header {l:?}"))?;
            let v = v.trim();
            match n.to_ascii_lowercase().as_str() {
                "content-length" => len = Some(v.parse::<usize>().map_err(|e| format!("{l}: {e}"))?),
                "transfer-encoding" => chunked_body = v.eq_ignore_ascii_case("chunked"),
                "x-wire-backend" => backend = true,
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        buf.drain(..end + 4);
        if (100..200).contains(&status) {
            continue;
        }
        let body = loop {
            let whole = match (chunked_body, len) {
                (true, _) => chunked(buf).map_err(|e| format!("response body: {e}"))?,
                (false, Some(n)) => (buf.len() >= n).then(|| (buf[..n].to_vec(), n, Vec::new())),
                (false, None) => return Err(format!("a response without a length: {head:?}")),
            };
            if let Some((body, used, _)) = whole {
                buf.drain(..used);
                break body;
            }
            match fill(conn, buf)? {
                Fill::More => {}
                Fill::End => return Err(format!("a response body cut short: {head:?}")),
                Fill::Reset => return Ok(None),
            }
        };
        return Ok(Some(Resp {
            status,
            backend,
            close,
            body: String::from_utf8_lossy(&body).into_owned(),
        }));
    }
}

/// Read more into `buf`. A silent gateway is an error past the bound
/// (every deadline it has in this test is shorter).
fn fill(conn: &mut dyn Read, buf: &mut Vec<u8>) -> Result<Fill, String> {
    let mut chunk = [0u8; 16 * 1024];
    match conn.read(&mut chunk) {
        Ok(0) => Ok(Fill::End),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(Fill::More)
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            Err("the gateway neither answered nor closed within 20 s".into())
        }
        Err(_) => Ok(Fill::Reset),
    }
}

/// What one connection's exchanges broke, if anything; counts of answers
/// by the backend and refusals.
#[derive(Default)]
struct Tally {
    failures: Vec<String>,
    backend: usize,
    refused: usize,
    statuses: std::collections::BTreeMap<u16, usize>,
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

/// The tenant and path a backend's answer names (`backend <tenant>
/// <target> <body length>`), the target without its query; `None` for
/// anything else (one of the gateway's pages).
fn backend_answer(body: &str) -> Option<(&str, &str)> {
    let mut words = body.strip_prefix("backend ")?.split(' ');
    let tenant = words.next()?;
    let path = words.next()?.split('?').next()?;
    Some((tenant, path))
}

/// Requests that once went wrong (or would, by a reading of the gateway
/// a change could bring back), each sent alone on its connection before the
/// generated ones, so the default run always has them. `{H}` is a
/// tenant's host, `{P}` the request's own path.
const KNOWN: &[&str] = &[
    // Pingora escaped the space into the target `ET%20/w/..`, and with no
    // path of its own it reached the backend as `G /`.
    "G ET {P} HTTP/1.1\r\nHost: {H}\r\n\r\n",
    // An authority form outside CONNECT: the same.
    "GET {H}:80 HTTP/1.1\r\nHost: {H}\r\n\r\n",
    // Repeated and listed lengths that agree reached the backend as they came.
    "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5, 5\r\n\r\nhello",
    "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0, 0\r\n\r\n",
    // Values that agree as numbers only (seed 14 of the generator).
    "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 05\r\nContent-Length: 5\r\n\r\nhello",
    // The one length written for those must never sit beside chunks.
    "POST {P} HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5, 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST {P} HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
];

/// [`KNOWN`]'s request `c` (sent on connection `c`), for one tenant or the
/// other in turn.
fn known(c: usize) -> Sent {
    let host = [FERRARI, MCLAREN][c % 2];
    let path = format!("/w/{c}-0");
    let bytes = KNOWN[c].replace("{H}", host).replace("{P}", &path).into_bytes();
    Sent {
        host,
        expect: Expect::Either(tenant_of(host).unwrap_or_default()),
        what: vec!["a known case"],
        path,
        bytes,
    }
}

/// A connection to the gateway, plain or TLS.
trait Wire: Read + Write {}
impl<T: Read + Write> Wire for T {}

/// Opens a connection to the gateway for a host (over TLS, its SNI).
type Dial<'a> = &'a (dyn Fn(&str) -> Box<dyn Wire> + Sync);

/// One connection: `k` requests, pipelined (all written at once) or one at
/// a time; the first connections send [`KNOWN`]'s requests instead.
fn connection(dial: Dial<'_>, rng: &mut StdRng, c: usize, tally: &mut Tally) {
    let k = rng.gen_range(1..=5);
    let pipelined = rng.gen_bool(0.4);
    let sent: Vec<Sent> = match c < KNOWN.len() {
        true => vec![known(c)],
        false => (0..k)
            .map(|i| request(rng, &format!("{c}-{i}"), i == 0, pipelined))
            .collect(),
    };
    let mut conn = dial(sent[0].host);
    let mut buf = Vec::new();
    if pipelined {
        let all: Vec<u8> = sent.iter().flat_map(|s| s.bytes.clone()).collect();
        if conn.write_all(&all).is_err() {
            return;
        }
    }
    for (i, s) in sent.iter().enumerate() {
        if !pipelined && conn.write_all(&s.bytes).is_err() {
            // Closed after an earlier refusal.
            return;
        }
        let context = || {
            format!(
                "connection {c} request {i} {:?} {:?}: \"{}\"",
                s.what,
                s.expect,
                shown(&s.bytes)
            )
        };
        let r = match read_response(&mut conn, &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => {
                if let Expect::Served(_) = s.expect {
                    tally.failures.push(format!("{}: no answer", context()));
                }
                return;
            }
            Err(e) => {
                tally.failures.push(format!("{}: {e}", context()));
                return;
            }
        };
        *tally.statuses.entry(r.status).or_default() += 1;
        if r.backend {
            tally.backend += 1;
            let want = match s.expect {
                Expect::Served(t) | Expect::Either(t) => t,
                Expect::Refused => {
                    tally
                        .failures
                        .push(format!("{}: answered by the backend: {r:?}", context()));
                    return;
                }
            };
            if r.status != 200 || backend_answer(&r.body) != Some((want, &s.path)) {
                tally
                    .failures
                    .push(format!("{}: another request's answer: {r:?}", context()));
                return;
            }
        } else {
            tally.refused += 1;
            let fine = (400..500).contains(&r.status) || r.status == 501 || r.status == 505;
            if !fine || matches!(s.expect, Expect::Served(_)) {
                tally
                    .failures
                    .push(format!("{}: the gateway answered {r:?}", context()));
                return;
            }
        }
        if r.close {
            return;
        }
    }
}

/// A stack whose one pool is `backend` (`tls`: with the TLS listener),
/// `config` added to the gateway's; returns once the backend is healthy.
fn stack_on(backend: &StrictBackend, tls: bool, config: &str) -> Stack {
    let mut b = Stack::builder()
        .apps(0)
        .pools(pools_toml(&[("default", &[backend.port])]))
        .config(config);
    if tls {
        b = b.tls("");
    }
    let s = b.start();
    s.gw.wait_backend("default", backend.port, true, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc_.log()));
    s
}

/// Fail with every failure of a run (`run` names it): the clients', the
/// backend's, and a panic in the gateway's log.
fn assert_none(mut failures: Vec<String>, seen: &Seen, s: &Stack, run: &str) {
    failures.extend(seen.violations.iter().map(|v| format!("backend: {v}")));
    let log = s.gw.proc_.log();
    if log.contains("panicked") {
        failures.push("the gateway panicked".into());
    }
    assert!(
        failures.is_empty(),
        "{run}: {} failures:\n{}\n\ngateway log tail:\n{}",
        failures.len(),
        failures.join("\n"),
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}

/// The generator's run against `s` through `dial`: `connections` (by
/// default; `WIRE_CONNECTIONS` otherwise) over four client threads, then
/// every rule checked.
fn http1_run(backend: &StrictBackend, s: &Stack, dial: Dial<'_>, connections: usize) {
    let seed: u64 = std::env::var("WIRE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7e57_3a11);
    let connections: usize = std::env::var("WIRE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(connections);
    let threads = 4;
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let mut tally = Tally::default();
                    for c in (t..connections).step_by(threads) {
                        connection(dial, &mut rng, c, &mut tally);
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("client thread")).collect()
    });

    let failures: Vec<String> = tallies.iter().flat_map(|t| t.failures.clone()).collect();
    let seen = backend.seen.lock().expect("seen");
    assert_none(failures, &seen, s, &format!("seed {seed}"));
    let backend_answers: usize = tallies.iter().map(|t| t.backend).sum();
    let refused: usize = tallies.iter().map(|t| t.refused).sum();
    let mut statuses = std::collections::BTreeMap::new();
    for t in &tallies {
        for (k, v) in &t.statuses {
            *statuses.entry(*k).or_insert(0) += v;
        }
    }
    eprintln!(
        "seed {seed}: {backend_answers} answered by the backend, {refused} refused; statuses {statuses:?}; served {:?}",
        seen.served
    );
    // Not vacuous: both tenants served, and the mutations met refusals.
    seen.both_served(connections / 20);
    assert!(refused >= connections / 8, "only {refused} refusals");
}

/// Incomplete heads and bodies are cut soon, so a request the gateway
/// reads as longer than sent costs a run seconds, not ten.
const SHORT_DEADLINES: &str = "[limits]\nrequest_head_timeout_ms = 2000\nbody_rate_grace_ms = 1000\n";

#[test]
fn hostile_http1_requests_never_desync_cross_tenants_or_reach_the_backend_ambiguous() {
    let backend = StrictBackend::start();
    let s = stack_on(&backend, false, SHORT_DEADLINES);
    let port = s.gw.port;
    let dial = move |_: &str| -> Box<dyn Wire> {
        let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
        conn.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        Box::new(conn)
    };
    http1_run(&backend, &s, &dial, 400);
}

/// The same over TLS (its own listener, connection wrapper and lingering
/// close), each connection's SNI the host of its first request.
#[test]
fn hostile_http1_requests_over_tls_never_desync_or_cross_tenants() {
    let backend = StrictBackend::start();
    let s = stack_on(&backend, true, SHORT_DEADLINES);
    let port = s.gw.tls_port;
    let cfg = Arc::new(e2e::tls::client_config(s.ca(), &["http/1.1"]));
    let dial = move |host: &str| -> Box<dyn Wire> {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).expect("server name");
        let tls = rustls::ClientConnection::new(cfg.clone(), name).expect("TLS client");
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        Box::new(rustls::StreamOwned::new(tls, tcp))
    };
    http1_run(&backend, &s, &dial, 200);
}

/// Send the request in `WIRE_RAW` (Rust string escapes: `\r\n`) and print
/// the answer, what the backend saw and the gateway's log (a tool for a
/// failure above: `WIRE_RAW='GET / HTTP/1.1\r\n...' cargo test -p e2e
/// --test wire -- --ignored --nocapture show`).
#[test]
#[ignore = "a tool, run by hand"]
fn show() {
    let raw = std::env::var("WIRE_RAW").expect("WIRE_RAW");
    let raw = raw
        .replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\t", "\t")
        .replace("\\0", "\0");
    let backend = StrictBackend::start();
    let s = stack_on(&backend, false, "");
    let mut conn = TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    conn.write_all(raw.as_bytes()).expect("write");
    let mut buf = Vec::new();
    while let Ok(Some(r)) = read_response(&mut conn, &mut buf) {
        eprintln!("answer: {r:?}");
    }
    let seen = backend.seen.lock().expect("seen");
    eprintln!("backend: served {:?}, violations {:?}", seen.served, seen.violations);
    eprintln!("{}", s.gw.proc_.log());
}

// ---------------------------------------------------------------- HTTP/2

/// HTTP/2 frame types and flags used here (RFC 9113 section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const ACK: u8 = 0x1;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 section 5.1), the
/// prefix's other bit clear (no Huffman).
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of literals without indexing, new names, no Huffman
/// (RFC 7541 section 6.2.2): the bytes exactly as given, so anything a
/// client could put on the wire can be sent, however malformed.
fn hpack(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_len(&mut out, name.len());
        out.extend_from_slice(name);
        hpack_len(&mut out, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A header block's fields, names and values as raw bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One stream of a hostile HTTP/2 case.
struct H2Stream {
    fields: Fields,
    data: Vec<Vec<u8>>,
    /// A trailing HEADERS frame (trailers) after the data.
    trailers: Fields,
    expect: Expect,
    path: String,
}

fn field(name: &str, value: impl AsRef<[u8]>) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.as_ref().to_vec())
}

/// The usual request's fields for `host` and `path`, `method` first.
fn base(method: &str, host: &str, path: &str) -> Fields {
    vec![
        field(":method", method),
        field(":scheme", "https"),
        field(":path", path),
        field(":authority", host),
        field("user-agent", "wire"),
    ]
}

/// The hostile HTTP/2 cases: the ways a request that HTTP/2 frames
/// unambiguously can turn ambiguous once written as HTTP/1.1 for the
/// backend (a length that disagrees with the data, `transfer-encoding`,
/// CR, LF or NUL inside a name, value or pseudo-header, an `:authority`
/// and a `host` naming different tenants, trailers carrying framing or
/// tenant fields), and malformed header blocks. Each is a connection (SNI:
/// `host`) with a plain request for the other tenant's host's path beside
/// it where that tells whether the connection survived. `c` goes into
/// every path (the caller takes case `c` of them, so each path is its own).
fn h2_cases(host: &'static str, c: usize) -> Vec<(&'static str, Vec<H2Stream>)> {
    let o = other(host);
    let t = tenant_of(host).unwrap_or_default();
    let p = |i: usize| format!("/w/h2-{c}-{i}");
    let hidden = |to: &str| format!("GET /w/smuggled-h2-{c} HTTP/1.1\r\nHost: {to}\r\n\r\n").into_bytes();
    let stream = |fields: Fields, data: Vec<Vec<u8>>, expect: Expect, path: String| H2Stream {
        fields,
        data,
        trailers: Vec::new(),
        expect,
        path,
    };
    let either = Expect::Either(t);
    let post = |extra: Fields, data: Vec<Vec<u8>>| {
        let mut f = base("POST", host, &p(0));
        f.extend(extra);
        stream(f, data, either, p(0))
    };
    let get = |extra: Fields| {
        let mut f = base("GET", host, &p(0));
        f.extend(extra);
        stream(f, Vec::new(), either, p(0))
    };
    let with_base = |edit: &dyn Fn(&mut Fields), expect: Expect| {
        let mut f = base("GET", host, &p(0));
        edit(&mut f);
        stream(f, Vec::new(), expect, p(0))
    };
    let mut body_cl = b"hello".to_vec();
    body_cl.extend(hidden(o));
    let mut body_te = b"0\r\n\r\n".to_vec();
    body_te.extend(hidden(o));
    let trailing = |fields: Fields| {
        let mut s = post(Vec::new(), vec![b"hello".to_vec()]);
        s.trailers = fields;
        vec![s]
    };
    let cases: Vec<(&'static str, Vec<H2Stream>)> = vec![
        (
            "plain",
            vec![stream(base("GET", host, &p(0)), Vec::new(), Expect::Served(t), p(0))],
        ),
        (
            "spoofed tenant headers",
            vec![get(vec![
                field("x-tenant", "mclaren"),
                field("x_tenant", "x"),
                field("x-tenant-signature", "v1"),
            ])],
        ),
        (
            "H2.CL: content-length 0, a request in the data",
            vec![post(vec![field("content-length", "0")], vec![hidden(o)])],
        ),
        (
            "H2.CL: a short content-length",
            vec![post(vec![field("content-length", "5")], vec![body_cl])],
        ),
        (
            "H2.TE: transfer-encoding: chunked",
            vec![post(vec![field("transfer-encoding", "chunked")], vec![body_te])],
        ),
        (
            "CRLF in a header value",
            vec![get(vec![field(
                "x-note",
                format!("a\r\nHost: {o}\r\n\r\nGET /w/smuggled-h2-{c} HTTP/1.1"),
            )])],
        ),
        (
            "LF in a header value",
            vec![get(vec![field("x-note", format!("a\nHost: {o}"))])],
        ),
        ("NUL in a header value", vec![get(vec![field("x-note", "a\0b")])]),
        (
            "CRLF in a header name",
            vec![get(vec![field(&format!("x-a\r\nhost: {o}\r\nx-b"), "1")])],
        ),
        (
            "CRLF in :path",
            vec![with_base(
                &|f| f[2].1 = format!("{} HTTP/1.1\r\nHost: {o}\r\n\r\nGET /w/smuggled-h2-{c}", p(0)).into_bytes(),
                either,
            )],
        ),
        (
            "CRLF in :method",
            vec![with_base(
                &|f| f[0].1 = format!("GET /w/smuggled-h2-{c} HTTP/1.1\r\nHost: {o}\r\n\r\nGET").into_bytes(),
                either,
            )],
        ),
        (
            "CRLF in :authority",
            vec![with_base(
                &|f| f[3].1 = format!("{host}\r\nHost: {o}").into_bytes(),
                Expect::Refused,
            )],
        ),
        (":authority and host naming two tenants", {
            let mut s = get(vec![field("host", o)]);
            s.expect = Expect::Refused;
            vec![s]
        }),
        (
            "host only, no :authority",
            vec![with_base(&|f| f[3] = field("host", host), either)],
        ),
        (
            "userinfo in :authority",
            vec![with_base(
                &|f| f[3].1 = format!("{o}@{host}").into_bytes(),
                Expect::Refused,
            )],
        ),
        (
            "an empty :authority",
            vec![with_base(&|f| f[3].1 = Vec::new(), Expect::Refused)],
        ),
        (
            "upper case in a name",
            vec![get(vec![field("Transfer-Encoding", "chunked")])],
        ),
        ("a space in a name", vec![get(vec![field("x foo", "1")])]),
        (
            "connection-specific headers",
            vec![get(vec![
                field("connection", "keep-alive, x-tenant"),
                field("keep-alive", "1"),
            ])],
        ),
        ("te other than trailers", vec![get(vec![field("te", "gzip")])]),
        (
            "two :path",
            vec![with_base(
                &|f| f.push(field(":path", format!("/w/smuggled-h2-{c}"))),
                either,
            )],
        ),
        (
            "a pseudo-header after a field",
            vec![with_base(&|f| f.push(field(":path", p(0))), either)],
        ),
        (
            ":path without a slash",
            vec![with_base(&|f| f[2].1 = b"w/x".to_vec(), Expect::Refused)],
        ),
        (
            ":path * for GET",
            vec![with_base(&|f| f[2].1 = b"*".to_vec(), Expect::Refused)],
        ),
        (
            "trailers carrying tenant fields",
            trailing(vec![
                field("x-tenant", "mclaren"),
                field("x-tenant-signature", "v1;kid=k1"),
                field("x_tenant", "x"),
            ]),
        ),
        ("trailers carrying a host", trailing(vec![field("host", o)])),
        (
            "trailers carrying a length",
            trailing(vec![field("content-length", "0")]),
        ),
        (
            "trailers carrying a transfer-encoding",
            trailing(vec![field("transfer-encoding", "chunked")]),
        ),
        ("a pseudo-header in trailers", trailing(vec![field(":authority", o)])),
        (
            "a content-length under the data, in two frames",
            vec![post(
                vec![field("content-length", "6")],
                vec![b"hel".to_vec(), b"lo world".to_vec()],
            )],
        ),
        (
            "another tenant's request beside one for the SNI's",
            vec![
                stream(base("GET", host, &p(0)), Vec::new(), Expect::Served(t), p(0)),
                stream(base("GET", o, &p(1)), Vec::new(), Expect::Refused, p(1)),
            ],
        ),
    ];
    cases
}

/// What the client read on one stream.
#[derive(Debug, Default)]
struct H2Read {
    data: Vec<u8>,
    ended: bool,
    reset: bool,
}

/// One case on a connection of its own: its streams sent, then frames read
/// until every stream ended or the connection did (bounded); failures.
fn h2_case(s: &Stack, host: &'static str, name: &str, streams: &[H2Stream]) -> Vec<String> {
    let cfg = Arc::new(e2e::tls::client_config(s.ca(), &["h2"]));
    let server = rustls::pki_types::ServerName::try_from(host.to_owned()).expect("server name");
    let tls = rustls::ClientConnection::new(cfg, server).expect("TLS client");
    let tcp = TcpStream::connect(("127.0.0.1", s.gw.tls_port)).expect("connect");
    let secs = std::env::var("WIRE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    tcp.set_read_timeout(Some(Duration::from_secs(secs))).expect("timeout");
    let began = std::time::Instant::now();
    let mut conn = rustls::StreamOwned::new(tls, tcp);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    for (i, st) in streams.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let last = st.data.is_empty() && st.trailers.is_empty();
        frame(
            &mut out,
            HEADERS,
            END_HEADERS | if last { END_STREAM } else { 0 },
            id,
            &hpack(&st.fields),
        );
        for (j, d) in st.data.iter().enumerate() {
            let last = j + 1 == st.data.len() && st.trailers.is_empty();
            frame(&mut out, DATA, if last { END_STREAM } else { 0 }, id, d);
        }
        if !st.trailers.is_empty() {
            frame(&mut out, HEADERS, END_HEADERS | END_STREAM, id, &hpack(&st.trailers));
        }
    }
    let context = |what: String| format!("HTTP/2 {name} ({host}): {what}");
    if conn.write_all(&out).is_err() {
        return vec![context("the connection closed before the request was written".into())];
    }
    let mut read: Vec<H2Read> = streams.iter().map(|_| H2Read::default()).collect();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    'reading: loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            if std::env::var("WIRE_DEBUG").is_ok() {
                eprintln!(
                    "  frame {kind} flags {flags:#x} stream {id} {:?}",
                    String::from_utf8_lossy(&payload[..payload.len().min(40)])
                );
            }
            let st = (id % 2 == 1).then(|| read.get_mut((id as usize - 1) / 2)).flatten();
            match (kind, st) {
                (SETTINGS, _) if flags & ACK == 0 => {
                    let mut ack = Vec::new();
                    frame(&mut ack, SETTINGS, ACK, 0, &[]);
                    if conn.write_all(&ack).is_err() {
                        break 'reading;
                    }
                }
                (GOAWAY, _) => {}
                (DATA, Some(st)) => {
                    let data = match flags & PADDED {
                        0 => &payload[..],
                        _ => {
                            let pad = payload.first().copied().unwrap_or(0) as usize;
                            &payload[1.min(payload.len())..payload.len().saturating_sub(pad)]
                        }
                    };
                    st.data.extend_from_slice(data);
                    st.ended |= flags & END_STREAM != 0;
                }
                (HEADERS, Some(st)) => st.ended |= flags & END_STREAM != 0,
                (RST_STREAM, Some(st)) => {
                    st.ended = true;
                    st.reset = true;
                }
                _ => {}
            }
        }
        if read.iter().all(|r| r.ended) {
            break;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    if std::env::var("WIRE_DEBUG").is_ok() {
        eprintln!("{name} ({host}) after {:?}: {read:?}", began.elapsed());
    }
    let mut failures = Vec::new();
    for (st, r) in streams.iter().zip(&read) {
        let body = String::from_utf8_lossy(&r.data);
        match (backend_answer(&body), st.expect) {
            (Some(_), Expect::Refused) => {
                failures.push(context(format!("{}: answered by the backend: {body}", st.path)))
            }
            (Some(answer), Expect::Served(t) | Expect::Either(t)) if answer != (t, st.path.as_str()) => {
                failures.push(context(format!("{}: another request's answer: {body}", st.path)))
            }
            (None, Expect::Served(_)) => failures.push(context(format!("{}: not served: {r:?}", st.path))),
            _ => {}
        }
    }
    failures
}

#[test]
fn hostile_http2_requests_never_reach_the_backend_ambiguous_or_cross_tenants() {
    let backend = StrictBackend::start();
    let s = stack_on(&backend, true, "");
    let mut failures = Vec::new();
    for (h, host) in [FERRARI, MCLAREN].into_iter().enumerate() {
        for i in 0..h2_cases(host, 0).len() {
            let c = 100 * h + i;
            let only = std::env::var("WIRE_CASE").ok();
            if let Some((name, streams)) = h2_cases(host, c)
                .into_iter()
                .nth(i)
                .filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n))
            {
                failures.extend(h2_case(&s, host, name, &streams));
            }
        }
    }
    let seen = backend.seen.lock().expect("seen");
    assert_none(failures, &seen, &s, "HTTP/2");
    eprintln!("served {:?}", seen.served);
    // Not vacuous: the plain requests of both tenants were served.
    seen.both_served(2);
}
