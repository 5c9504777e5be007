//! The per-connection deadlines of HTTP/1 as a pure state machine over the
//! bytes a connection reads and writes (no I/O, no clock: callers pass
//! `Instant`s). [`super::stream::Guarded`] drives it from the socket.
//!
//! Pingora's read timeout is per read, so a client trickling one byte at a
//! time keeps a request head open forever. Here a connection is always in
//! one phase:
//!
//! - `Head`: reading a request head; it must be complete (blank line seen)
//!   by `head_deadline`. The first request's clock starts at accept (so a
//!   client that never sends a byte is cut too), later ones at their first
//!   byte.
//! - `Body`: head complete, the response not started; the body must arrive
//!   at `min_body_rate` on average, counting only time spent waiting for the
//!   client (a backend that reads slowly does not count against the client),
//!   once that waiting exceeds `body_grace`.
//! - `Responded`: the response has started; the next bytes read begin the
//!   next request (keep-alive).
//! - `Idle`: a keep-alive connection waiting for its next request; it is
//!   closed quietly at `idle` after the last response.
//! - `WebSocket`: upgraded to WebSocket (closed politely at shutdown, see
//!   [`super::ws`]); `Tunnel`: another upgrade, or HTTP/2 once its preface
//!   is in. None of the deadlines above applies to either.
//! - `Preface`: an HTTP/2 connection (ALPN `h2`) whose client preface (24
//!   bytes) is not in yet: it must be by `head_deadline` from accept, as an
//!   HTTP/1 connection's first head. Pingora waits for the preface with no
//!   timeout of its own, and its HTTP/2 idle timeout starts only after it,
//!   so without this phase a client that completes TLS and sends nothing
//!   would hold its connection (and its place under the caps) for ever.
//!
//! Writing has one deadline in every phase and protocol ([`Stall`]): a
//! client that takes none of what is written to it (its socket stays full)
//! for `send` is cut, so it cannot hold the response, and the backend
//! connection behind it, forever. Pingora bounds writes only when asked,
//! per write and not its final flush; this is the socket's own view.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use memchr::memmem::Finder;

/// Deadlines of one connection (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub head: Duration,
    pub idle: Duration,
    /// A write the client takes nothing of ([`Stall`]).
    pub send: Duration,
    /// Bytes per second; 0 disables the body rate check.
    pub min_body_rate: u64,
    pub body_grace: Duration,
    /// The longest a lingering close drains what a client still sends
    /// (`limits.lingering_close_ms`, see [`super::stream`]); 0: none.
    pub linger: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Head,
    Body,
    Responded,
    Idle,
    WebSocket,
    Tunnel,
    Preface,
}

/// The HTTP/2 client connection preface (RFC 9113 section 3.4) is this long.
const H2_PREFACE_LEN: u64 = 24;

/// What a read must turn into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Carry on.
    Ok,
    /// The request head took too long: fail the read (the request is cut).
    HeadTimeout,
    /// The body arrives slower than the minimum rate: fail the read.
    BodyTooSlow,
    /// Keep-alive idle time is over: end the connection quietly (EOF).
    IdleTimeout,
}

/// Recognises the end of a request head across reads: a line feed, an
/// optional carriage return, a line feed (`\r\n\r\n` or a bare `\n\n`, as
/// the HTTP/1 parser accepts both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadScanner {
    after_lf: bool,
}

/// Where a blank line can start: a line feed followed by a carriage
/// return or another line feed. Inside a head that happens only at the
/// blank line (header lines start with a name), so two SIMD passes over the
/// read find it, where stopping at every line feed cost a search per line:
/// natively 33 ns against 82 for a 636-byte browser head of 16 lines, the
/// same (~15 ns) for a two-line head (bench/RESULTS.md).
static LF_CR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\r"));
static LF_LF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));

impl HeadScanner {
    /// Feed bytes; `Some(i)`: the head ends just before `bytes[i]`. A line
    /// is blank when nothing but carriage returns stand between two line
    /// feeds.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let crs_from = |i: usize| {
            bytes
                .get(i..)
                .map_or(0, |b| b.iter().take_while(|&&c| c == b'\r').count())
        };
        let mut from = 0;
        if self.after_lf {
            // The previous read ended a line feed and carriage returns ago.
            let crs = crs_from(0);
            match bytes.get(crs) {
                Some(b'\n') => {
                    self.after_lf = false;
                    return Some(crs + 1);
                }
                Some(_) => from = crs,
                // Carriage returns only: the line may still be blank.
                None => return None,
            }
        }
        while let Some(lf) = first_blank_candidate(&bytes[from..]).map(|i| from + i) {
            let end = lf + 1 + crs_from(lf + 1);
            match bytes.get(end) {
                Some(b'\n') => {
                    self.after_lf = false;
                    return Some(end + 1);
                }
                Some(_) => from = end,
                None => {
                    self.after_lf = true;
                    return None;
                }
            }
        }
        // No blank line: the read may end just after a line feed.
        self.after_lf = bytes.last() == Some(&b'\n');
        None
    }
}

/// The first line feed followed by a carriage return or a line feed.
fn first_blank_candidate(bytes: &[u8]) -> Option<usize> {
    let cr = LF_CR.find(bytes);
    // A `\n\n` before it lies within the bytes up to and including it.
    let before = cr.map_or(bytes, |i| &bytes[..=i]);
    LF_LF.find(before).or(cr)
}

/// The state of one connection.
#[derive(Debug, Clone)]
pub struct ConnDeadlines {
    t: Timeouts,
    phase: Phase,
    scanner: HeadScanner,
    /// `Head`: when the head must be complete; `Idle`: when to close;
    /// `Preface`: when the preface must be in.
    deadline: Instant,
    /// `Body`: the body's bytes so far; `Preface`: the preface's.
    body_bytes: u64,
    /// Time spent waiting for the client's body so far.
    body_waited: Duration,
    /// A read is pending since (for the body's waiting time).
    waiting_since: Option<Instant>,
}

/// `HTTP/1.x 1xx`: an informational response (100 Continue, 101 Switching).
fn informational(head: &[u8]) -> Option<u16> {
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") || head[8] != b' ' {
        return None;
    }
    let code = &head[9..12];
    if code[0] != b'1' || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

impl ConnDeadlines {
    /// A new HTTP/1 connection accepted at `now`.
    pub fn http1(t: Timeouts, now: Instant) -> ConnDeadlines {
        ConnDeadlines {
            t,
            phase: Phase::Head,
            scanner: HeadScanner::default(),
            deadline: now + t.head,
            body_bytes: 0,
            body_waited: Duration::ZERO,
            waiting_since: None,
        }
    }

    /// A new HTTP/2 connection accepted at `now`: its preface is due by the
    /// head deadline; then no HTTP/1 deadline applies.
    pub fn http2(t: Timeouts, now: Instant) -> ConnDeadlines {
        ConnDeadlines {
            phase: Phase::Preface,
            ..ConnDeadlines::http1(t, now)
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The instant a pending read must be woken at, if any.
    pub fn wake_at(&self) -> Option<Instant> {
        matches!(self.phase, Phase::Head | Phase::Idle | Phase::Preface).then_some(self.deadline)
    }

    /// `bytes` were read; `now` is asked only when the phase needs a clock.
    pub fn on_data(&mut self, bytes: &[u8], now: impl FnOnce() -> Instant) -> Verdict {
        match self.phase {
            Phase::Tunnel | Phase::WebSocket => Verdict::Ok,
            Phase::Preface => {
                self.body_bytes += bytes.len() as u64;
                if self.body_bytes >= H2_PREFACE_LEN {
                    self.phase = Phase::Tunnel;
                }
                Verdict::Ok
            }
            Phase::Idle | Phase::Responded => {
                // The first byte of the next request starts its head clock
                // (read only if this read leaves the head incomplete: a
                // head that arrives whole needs no deadline).
                self.phase = Phase::Head;
                self.scanner = HeadScanner::default();
                self.scan(bytes);
                if self.phase == Phase::Head {
                    self.deadline = now() + self.t.head;
                }
                Verdict::Ok
            }
            Phase::Head => {
                self.scan(bytes);
                Verdict::Ok
            }
            Phase::Body => {
                self.body_bytes += bytes.len() as u64;
                if let Some(since) = self.waiting_since.take() {
                    self.body_waited += now().saturating_duration_since(since);
                }
                self.body_verdict()
            }
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        if let Some(end) = self.scanner.feed(bytes) {
            self.phase = Phase::Body;
            self.body_bytes = (bytes.len() - end) as u64;
            self.body_waited = Duration::ZERO;
            self.waiting_since = None;
        }
    }

    fn body_verdict(&self) -> Verdict {
        if self.t.min_body_rate == 0 || self.body_waited <= self.t.body_grace {
            return Verdict::Ok;
        }
        let needed = self.t.min_body_rate as f64 * self.body_waited.as_secs_f64();
        if (self.body_bytes as f64) < needed {
            Verdict::BodyTooSlow
        } else {
            Verdict::Ok
        }
    }

    /// A read found nothing to read; `now` is asked only when the phase
    /// needs a clock.
    pub fn on_pending(&mut self, now: impl FnOnce() -> Instant) -> Verdict {
        match self.phase {
            Phase::Head | Phase::Preface => self.unless_past(now(), Verdict::HeadTimeout),
            Phase::Idle => self.unless_past(now(), Verdict::IdleTimeout),
            Phase::Responded => {
                self.phase = Phase::Idle;
                self.deadline = now() + self.t.idle;
                Verdict::Ok
            }
            Phase::Body => {
                if self.waiting_since.is_none() {
                    self.waiting_since = Some(now());
                }
                Verdict::Ok
            }
            Phase::WebSocket | Phase::Tunnel => Verdict::Ok,
        }
    }

    /// `Ok` before the phase's deadline, `timeout` from it on.
    fn unless_past(&self, now: Instant, timeout: Verdict) -> Verdict {
        if now < self.deadline {
            Verdict::Ok
        } else {
            timeout
        }
    }

    /// The connection writes `bytes` (the start of a write).
    pub fn on_write(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Head | Phase::Body => match informational(bytes) {
                Some(101) if super::ws::upgrades_to_websocket(bytes) => self.phase = Phase::WebSocket,
                Some(101) => self.phase = Phase::Tunnel,
                // 100 Continue and friends: the request goes on.
                Some(_) => {}
                None => self.phase = Phase::Responded,
            },
            Phase::Responded | Phase::Idle | Phase::WebSocket | Phase::Tunnel | Phase::Preface => {}
        }
    }
}

/// How long the client has taken none of what is written to it: since the
/// first write or flush that could not proceed, until one proceeds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    since: Option<Instant>,
}

impl Stall {
    /// A write or flush proceeded.
    #[inline]
    pub fn progressed(&mut self) {
        if self.since.is_some() {
            self.since = None;
        }
    }

    /// A write or flush cannot proceed at `now`: `Ok(deadline)` to wake at
    /// and look again, [`Overdue`] once the client has taken nothing for
    /// `limit` (the connection is to be cut).
    pub fn pending(&mut self, now: Instant, limit: Duration) -> Result<Instant, Overdue> {
        let deadline = *self.since.get_or_insert(now) + limit;
        if now >= deadline {
            Err(Overdue)
        } else {
            Ok(deadline)
        }
    }
}

/// The client took nothing written to it for the send timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overdue;

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        head: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        send: Duration::from_secs(60),
        min_body_rate: 100,
        body_grace: Duration::from_secs(5),
        linger: Duration::from_secs(5),
    };

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn head_end_is_found_across_reads_and_line_endings() {
        let mut s = HeadScanner::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(s.feed(b"\r"), None);
        assert_eq!(s.feed(b"\nbody"), Some(1));
        let mut s = HeadScanner::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\nHost: a\n\nx"), Some(24));
        let mut s = HeadScanner::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: \n"), None);
        // Split anywhere, one byte at a time: the same end.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nbody";
        let mut s = HeadScanner::default();
        let end = head
            .iter()
            .enumerate()
            .find_map(|(i, b)| s.feed(std::slice::from_ref(b)).map(|_| i + 1));
        assert_eq!(end, Some(head.len() - 4));
        let mut s = HeadScanner::default();
        assert_eq!(s.feed(b"A\n\r\r"), None);
        assert_eq!(s.feed(b"\n"), Some(1));
        let mut s = HeadScanner::default();
        assert_eq!(s.feed(b"A\n\rB\n"), None);
    }

    /// The definition, a line at a time: what `HeadScanner::feed` must
    /// agree with.
    fn reference_feed(after_lf: &mut bool, bytes: &[u8]) -> Option<usize> {
        let blank = |seg: &[u8]| seg.iter().all(|&c| c == b'\r');
        let mut start = 0;
        for (lf, _) in bytes.iter().enumerate().filter(|(_, &c)| c == b'\n') {
            let after = if start == 0 { *after_lf } else { true };
            if after && blank(&bytes[start..lf]) {
                *after_lf = false;
                return Some(lf + 1);
            }
            start = lf + 1;
        }
        let tail_blank = blank(&bytes[start..]);
        *after_lf = if start == 0 {
            *after_lf && tail_blank
        } else {
            tail_blank
        };
        None
    }

    #[test]
    fn head_end_agrees_with_the_definition_on_random_bytes_and_splits() {
        // Few distinct bytes, so that line feeds, carriage returns and
        // their runs are common; lengths around the SIMD search's minimum
        // (~34 bytes) and far beyond it; reads split at random.
        let mut rng = fastrand::Rng::with_seed(18);
        for _ in 0..50_000 {
            let max = if rng.bool() { 40 } else { 300 };
            let len = rng.usize(1..=max);
            let bytes: Vec<u8> = (0..len).map(|_| *rng.choice(b"\r\n\r\na: ").unwrap()).collect();
            // Guarded feeds only non-empty reads.
            let (mut scanner, mut after_lf, mut at) = (HeadScanner::default(), false, 0);
            while at < bytes.len() {
                let left = bytes.len() - at;
                let n = if rng.u8(..4) == 0 {
                    left
                } else {
                    rng.usize(1..=left.min(50))
                };
                let read = &bytes[at..at + n];
                let (got, want) = (scanner.feed(read), reference_feed(&mut after_lf, read));
                assert_eq!(got, want, "{bytes:?} read {at}..{}", at + n);
                assert_eq!(scanner.after_lf, after_lf, "{bytes:?} read {at}..{}", at + n);
                if got.is_some() {
                    break;
                }
                at += n;
            }
        }
    }

    #[test]
    fn the_clock_is_read_only_when_the_phase_needs_it() {
        let t0 = Instant::now();
        let no_clock = || -> Instant { panic!("clock read") };
        let mut c = ConnDeadlines::http1(T, t0);
        assert_eq!(c.on_data(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", no_clock), Verdict::Ok);
        assert_eq!(c.phase(), Phase::Body);
        // The first wait for the body starts its clock, later ones do not.
        assert_eq!(c.on_pending(|| t0), Verdict::Ok);
        assert_eq!(c.on_pending(no_clock), Verdict::Ok);
        let mut t = ConnDeadlines::http2(T, t0);
        assert_eq!(t.on_data(&[b'P'; 24], no_clock), Verdict::Ok);
        assert_eq!(t.phase(), Phase::Tunnel);
        assert_eq!(t.on_pending(no_clock), Verdict::Ok);
        assert_eq!(t.on_data(b"x", no_clock), Verdict::Ok);
    }

    #[test]
    fn an_http2_preface_must_be_in_by_the_head_deadline() {
        let t0 = Instant::now();
        let no_clock = || -> Instant { panic!("clock read") };
        // Nothing at all: cut at the deadline, counted from accept.
        let mut c = ConnDeadlines::http2(T, t0);
        assert_eq!(c.wake_at(), Some(secs(t0, 10)));
        assert_eq!(c.on_pending(|| secs(t0, 9)), Verdict::Ok);
        assert_eq!(c.on_pending(|| secs(t0, 10)), Verdict::HeadTimeout);
        // A preface trickled in parts: still due at the same instant.
        let mut c = ConnDeadlines::http2(T, t0);
        for i in 0..23 {
            assert_eq!(c.on_data(b"P", no_clock), Verdict::Ok, "byte {i}");
            assert_eq!(c.phase(), Phase::Preface);
        }
        assert_eq!(c.on_pending(|| secs(t0, 10)), Verdict::HeadTimeout);
        // Once it is in (with whatever follows it in the same read), no
        // deadline of this module applies: Pingora's HTTP/2 idle timeout does.
        let mut c = ConnDeadlines::http2(T, t0);
        assert_eq!(c.on_data(&[b'P'; 20], no_clock), Verdict::Ok);
        assert_eq!(c.on_data(&[b'P'; 30], no_clock), Verdict::Ok);
        assert_eq!((c.phase(), c.wake_at()), (Phase::Tunnel, None));
        assert_eq!(c.on_pending(|| secs(t0, 1_000)), Verdict::Ok);
    }

    #[test]
    fn a_trickled_head_times_out_at_the_deadline() {
        let t0 = Instant::now();
        let mut c = ConnDeadlines::http1(T, t0);
        for i in 0..9 {
            assert_eq!(c.on_data(b"G", || secs(t0, i)), Verdict::Ok);
            assert_eq!(c.on_pending(|| secs(t0, i)), Verdict::Ok);
        }
        assert_eq!(c.wake_at(), Some(secs(t0, 10)));
        assert_eq!(c.on_pending(|| secs(t0, 10)), Verdict::HeadTimeout);
    }

    #[test]
    fn a_client_that_sends_nothing_is_cut_at_the_head_deadline() {
        let t0 = Instant::now();
        let mut c = ConnDeadlines::http1(T, t0);
        assert_eq!(c.on_pending(|| secs(t0, 9)), Verdict::Ok);
        assert_eq!(c.on_pending(|| secs(t0, 10)), Verdict::HeadTimeout);
    }

    #[test]
    fn keep_alive_idle_then_next_head_gets_a_fresh_deadline() {
        let t0 = Instant::now();
        let mut c = ConnDeadlines::http1(T, t0);
        c.on_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", || t0);
        assert_eq!(c.phase(), Phase::Body);
        c.on_write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(c.phase(), Phase::Responded);
        assert_eq!(c.on_pending(|| secs(t0, 20)), Verdict::Ok);
        assert_eq!(c.phase(), Phase::Idle);
        assert_eq!(c.on_pending(|| secs(t0, 79)), Verdict::Ok);
        // The next request's first byte arrives before the idle deadline.
        c.on_data(b"GET", || secs(t0, 79));
        assert_eq!(c.phase(), Phase::Head);
        assert_eq!(c.on_pending(|| secs(t0, 88)), Verdict::Ok);
        assert_eq!(c.on_pending(|| secs(t0, 89)), Verdict::HeadTimeout);
    }

    /// The response is written and the connection waits for the next
    /// request from `at` on.
    fn answered(c: &mut ConnDeadlines, at: Instant) {
        c.on_write(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(c.on_pending(|| at), Verdict::Ok);
        assert_eq!(c.phase(), Phase::Idle);
    }

    #[test]
    fn a_head_that_arrives_whole_reads_no_clock() {
        let t0 = Instant::now();
        let mut c = ConnDeadlines::http1(T, t0);
        c.on_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", || t0);
        answered(&mut c, secs(t0, 1));
        let no_clock = || -> Instant { panic!("the clock was read") };
        assert_eq!(c.on_data(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n", no_clock), Verdict::Ok);
        assert_eq!(c.phase(), Phase::Body);
        // Split over two reads, the head's clock starts at the first.
        answered(&mut c, secs(t0, 2));
        assert_eq!(c.on_data(b"GET /3 HTTP/1.1\r\n", || secs(t0, 3)), Verdict::Ok);
        assert_eq!(c.wake_at(), Some(secs(t0, 13)));
        assert_eq!(c.on_data(b"Host: a\r\n\r\n", no_clock), Verdict::Ok);
        assert_eq!(c.phase(), Phase::Body);
    }

    #[test]
    fn idle_keep_alive_is_closed_quietly() {
        let t0 = Instant::now();
        let mut c = ConnDeadlines::http1(T, t0);
        c.on_data(b"GET / HTTP/1.1\r\n\r\n", || t0);
        answered(&mut c, t0);
        assert_eq!(c.on_pending(|| secs(t0, 60)), Verdict::IdleTimeout);
    }

    #[test]
    fn slow_body_is_cut_but_a_slow_backend_does_not_count() {
        let t0 = Instant::now();
        let mut c = ConnDeadlines::http1(T, t0);
        c.on_data(b"POST / HTTP/1.1\r\ncontent-length: 9999\r\n\r\n", || t0);
        // 1 byte every 3 s of waiting for the client.
        let mut now = t0;
        let mut verdict = Verdict::Ok;
        for _ in 0..4 {
            c.on_pending(|| now);
            now += Duration::from_secs(3);
            verdict = c.on_data(b"x", || now);
        }
        assert_eq!(verdict, Verdict::BodyTooSlow);

        // Fast body, then a long time not reading (backend busy): no waiting counted.
        let mut c = ConnDeadlines::http1(T, t0);
        c.on_data(b"POST / HTTP/1.1\r\n\r\n", || t0);
        assert_eq!(c.on_data(&[0u8; 4096], || t0), Verdict::Ok);
        c.on_pending(|| secs(t0, 100));
        assert_eq!(c.on_data(&[0u8; 4096], || secs(t0, 100)), Verdict::Ok);
    }

    #[test]
    fn upgrades_and_continues() {
        let t0 = Instant::now();
        let mut c = ConnDeadlines::http1(T, t0);
        c.on_data(b"POST / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n", || t0);
        c.on_write(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(c.phase(), Phase::Body);
        let mut c = ConnDeadlines::http1(T, t0);
        c.on_data(b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\n\r\n", || t0);
        c.on_write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(c.phase(), Phase::WebSocket);
        assert_eq!(c.on_pending(|| secs(t0, 1000)), Verdict::Ok);
        assert_eq!(c.wake_at(), None);
        let mut c = ConnDeadlines::http1(T, t0);
        c.on_data(b"GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n", || t0);
        c.on_write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n");
        assert_eq!(c.phase(), Phase::Tunnel);
    }

    #[test]
    fn a_stall_counts_from_its_first_pending_write_until_one_proceeds() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(60);
        let mut s = Stall::default();
        assert_eq!(s.pending(t0, limit), Ok(secs(t0, 60)));
        // Still the first one's deadline, however often it is asked.
        assert_eq!(s.pending(secs(t0, 30), limit), Ok(secs(t0, 60)));
        assert_eq!(s.pending(secs(t0, 60), limit), Err(Overdue));
        // Progress starts the count again.
        s.progressed();
        assert_eq!(s.pending(secs(t0, 61), limit), Ok(secs(t0, 121)));
        s.progressed();
        s.progressed();
        assert_eq!(s, Stall::default());
    }
}
