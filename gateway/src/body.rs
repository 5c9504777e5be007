//! Which request bodies are read whole before a backend is chosen, within
//! what time, and how much they may hold at once (policy only: `proxy`
//! reads them). Also what both kinds of held bodies share with
//! [`crate::response_body`]: a body's length as its head frames it
//! (`content_length`) and the memory budget ([`Budget`]).
//!
//! A pre-forked app server (gunicorn's sync workers, the usual Django
//! deployment) gives a request a worker from its first byte to its last:
//! streamed, a body sent slowly holds that worker for as long as the client
//! takes, and a few such clients hold every worker, so every tenant on that
//! backend waits. nginx reads bodies first for this reason
//! (`proxy_request_buffering`). Here a body whose `Content-Length` is at
//! most `limits.request_body_buffer_bytes` is read whole before the
//! request goes anywhere; a larger body, or one without a length
//! (chunked), is streamed as before. What reading first adds is time: a
//! body being read holds its memory until it is whole or its deadline
//! passes, where a streamed one moves on (the connection caps bound how
//! many a client can hold).
//!
//! How a body read first reaches the backend ([`Reading`]). Pingora sends
//! a body read in a request filter on from its own request body buffer
//! (what it keeps to resend a body on a retry), which holds 64 KiB
//! ([`RETRY_BUFFER`]) and drops what does not fit: it has no way to be
//! handed a body otherwise (bench/RESULTS.md, proposal 8). So a body that
//! fits is read into that buffer and goes from there. A larger one is read
//! into a copy of its own, and that buffer is turned on only for its last
//! 64 KiB: Pingora then hands that last part to the request body filter,
//! which sends the whole copy in its place (again on a retry), and only
//! there: not after a response has begun (the copy is dropped then), nor
//! in place of an upgraded connection's bytes. Reads end at the body's
//! end, and after the first (which brings what came with the head) bring
//! at most 64 KiB each (HTTP/2: a frame, 16 KiB), so the last part is
//! always read after the buffer is on, except for a body that came whole
//! in the read of its head: that needs a head at least about as large as
//! the body (so over 64 KiB), and such a request is answered 431.
//!
//! Reading a body has a deadline ([`Buffering::next_wait`]): each part
//! must come before the bytes in fall below the minimum rate (after the
//! grace), within the idle bound, and the whole within the grace plus its
//! length at that rate. HTTP/1 bodies are also held to the rate by the
//! connection (`conn::deadline`); an HTTP/2 stream only by this, and a fast
//! start buys no long stall.
//!
//! And a budget: the bodies being read at once may hold at most
//! `limits.request_body_buffer_total_mib` ([`Budget`]: tokio's semaphore,
//! a permit per byte); past it a body is streamed as if it were large. A
//! body takes its `Content-Length` while it arrives; one held in a copy of
//! its own keeps it until its response begins (a retry comes only before),
//! and copies may hold at most half of the budget, so that bodies of up to
//! 64 KiB (forms, JSON) always have the other half, however many large
//! bodies a client announces. Without it, a client's many HTTP/2 streams
//! (100 per connection, each up to the bound, on each of its connections)
//! could hold memory for as long as their deadlines let them. Each client
//! (its address, an IPv6 /64; behind a trusted proxy the address forwarded
//! for) may hold at most a quarter of each budget, or one largest body if
//! that is more ([`client_may_hold`]): a client keeping the minimum rate on
//! many large bodies, or reading held responses as slowly as it may, has
//! its own further bodies streamed, not every other client's.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, Version};

use crate::conn::limits::{ClientHold, PerIp};

/// Pingora's buffer for a request body it may have to resend (it drops
/// what does not fit): a body read first of at most this size is held
/// there, a larger one's last part.
pub const RETRY_BUFFER: u64 = 64 * 1024;

/// The most `request_body_buffer_bytes` may be (1 GiB).
pub const MAX_BUFFERED: u64 = 1 << 30;

/// `[limits]`' say on request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffering {
    /// `request_body_buffer_bytes` (at most [`MAX_BUFFERED`]); 0: off.
    pub max_bytes: u64,
    /// `min_body_rate`, bytes per second; 0: no rate.
    pub min_rate: u64,
    /// `body_rate_grace_ms`.
    pub grace: Duration,
    /// `idle_timeout_ms`: the time a body may take on top of the grace
    /// when there is no rate to derive it from.
    pub idle: Duration,
    /// `max_request_body_bytes`: larger bodies are refused; 0: no bound.
    pub max_body: u64,
}

impl Buffering {
    /// Whether a body of `len` bytes (its framed length, or what of it came
    /// so far) is over `max_request_body_bytes`.
    pub fn too_large(&self, len: u64) -> bool {
        self.max_body > 0 && len > self.max_body
    }

    /// Whether the request declares a body over `max_request_body_bytes`:
    /// any `Content-Length` value (of duplicate fields or a list, which
    /// Pingora frames the body by when they agree) over it, one too long
    /// for a `u64` too. Only refusals are decided by this; a message
    /// framed by `Transfer-Encoding` is not.
    pub fn declares_too_large(&self, headers: &HeaderMap) -> bool {
        self.max_body > 0
            && !headers.contains_key(TRANSFER_ENCODING)
            && headers
                .get_all(CONTENT_LENGTH)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .any(|value| decimal(value.trim_ascii()).is_some_and(|n| n.is_none_or(|n| n > self.max_body)))
    }

    /// The body's length, if it is to be read whole first: exactly one
    /// `Content-Length`, a number from 1 to `max_bytes`, and no
    /// `Transfer-Encoding` (a request carrying both is streamed as Pingora
    /// frames it; Pingora refuses the ambiguous ones).
    pub fn length(&self, headers: &HeaderMap) -> Option<u64> {
        if self.max_bytes == 0 {
            return None;
        }
        let n = content_length(headers)?;
        (1..=self.max_bytes.min(MAX_BUFFERED)).contains(&n).then_some(n)
    }

    /// How long the next part of a body of `len` bytes may take to come,
    /// `read` bytes of it in after `elapsed`: no later than its whole
    /// deadline, than the time by which `read` bytes fall below the
    /// minimum rate (once the grace is over), and than `idle` (no byte for
    /// that long ends it, as Pingora's bound on one HTTP/1 read does). So
    /// an HTTP/2 stream, whose bytes no connection deadline watches, is
    /// held to the rate as an HTTP/1 body is, and a body cannot buy a long
    /// stall with a fast start. Zero: too late already.
    pub fn next_wait(&self, len: u64, read: u64, elapsed: Duration) -> Duration {
        self.deadline(len)
            .min(self.by_rate(read))
            .saturating_sub(elapsed)
            .min(self.idle)
    }

    /// Whether a body streamed to its backend, `read` bytes of it in
    /// `elapsed` after it started going there, has fallen below the minimum
    /// rate (once the grace is over). For an HTTP/2 stream, looked at as
    /// each part comes: no connection deadline watches a stream's bytes, and
    /// Pingora's read timeout on the backend restarts with every part the
    /// client sends, so a byte every few seconds would hold the backend
    /// for ever. The time counted includes waits for a slow backend to
    /// read: a body is held to the average, so a fast start covers them.
    pub fn below_rate(&self, read: u64, elapsed: Duration) -> bool {
        self.min_rate > 0 && elapsed > self.by_rate(read)
    }

    /// The time by which `read` bytes fall below the minimum rate (after the
    /// grace); `Duration::MAX` without a rate.
    fn by_rate(&self, read: u64) -> Duration {
        match self.min_rate {
            0 => Duration::MAX,
            rate => self
                .grace
                .saturating_add(Duration::from_millis(read.saturating_mul(1000) / rate)),
        }
    }

    /// How long a body of `len` bytes may take to arrive whole.
    pub fn deadline(&self, len: u64) -> Duration {
        let sending = match self.min_rate {
            0 => self.idle,
            rate => Duration::from_millis(len.saturating_mul(1000).div_ceil(rate)),
        };
        self.grace.saturating_add(sending)
    }
}

/// The length of a body framed by exactly one `Content-Length` (a plain
/// number of at most 15 digits) and no `Transfer-Encoding`; `None` for any
/// other framing (a message carrying both is passed on as Pingora frames
/// it; Pingora refuses the ambiguous ones).
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(TRANSFER_ENCODING) {
        return None;
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let value = lengths.next()?;
    if lengths.next().is_some() {
        return None;
    }
    let digits = value.as_bytes();
    if digits.len() > 15 {
        return None;
    }
    decimal(digits).flatten()
}

/// A plain decimal number (ASCII digits only, at least one), `Some(None)`
/// when it is too large for a `u64`; `None` for anything else.
fn decimal(digits: &[u8]) -> Option<Option<u64>> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))),
    )
}

/// The bytes the bodies being held whole may hold at once (per process,
/// one for request bodies and one for responses): a permit per byte, and
/// optionally a bound per client ([`Budget::per_client`]). Clones share it.
#[derive(Debug, Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    max: usize,
    per_client: Option<Arc<PerIp>>,
}

/// A body's share of the [`Budget`] (and of its client's bound), given
/// back when dropped.
#[derive(Debug)]
pub struct Share {
    _bytes: OwnedSemaphorePermit,
    _client: Option<ClientHold>,
}

/// The request bodies' budget: all of it, and the half that bodies read
/// into a copy of their own (over [`RETRY_BUFFER`]) may hold, so bodies
/// that fit Pingora's buffer always have the rest.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    all: Budget,
    copied: Budget,
}

/// A request body's shares of the [`RequestBudget`], given back when
/// dropped.
#[derive(Debug)]
pub struct Shares {
    _all: Share,
    _copied: Option<Share>,
}

impl RequestBudget {
    /// At most `max` bytes, half of them for copies; each bounded per client
    /// for bodies of at most `largest` bytes ([`Budget::per_client`]).
    pub fn new(max: u64, largest: u64) -> RequestBudget {
        RequestBudget {
            all: Budget::new(max).per_client(largest),
            copied: Budget::new(copies_may_hold(max)).per_client(largest),
        }
    }

    /// `len` bytes for a body about to be read first from `client`, if they
    /// are free (`None`: it is to be streamed).
    pub fn take(&self, len: u64, client: Option<IpAddr>) -> Option<Shares> {
        let all = self.all.take(len, client)?;
        let copied = match len > RETRY_BUFFER {
            true => Some(self.copied.take(len, client)?),
            false => None,
        };
        Some(Shares {
            _all: all,
            _copied: copied,
        })
    }

    /// The whole budget (what it holds is what the bodies hold).
    pub fn all(&self) -> &Budget {
        &self.all
    }
}

/// What bodies read into a copy may hold of a budget of `max` bytes.
pub fn copies_may_hold(max: u64) -> u64 {
    max / 2
}

/// What one client's bodies may hold of a budget of `max` bytes for bodies
/// of at most `largest`: a quarter of it, or one largest body if that is
/// more (a client can always hold one). Past it the client's bodies are
/// streamed, as past the budget.
pub fn client_may_hold(max: u64, largest: u64) -> u64 {
    (max / 4).max(largest)
}

impl Budget {
    /// At most `max` bytes (capped at what a semaphore can count).
    pub fn new(max: u64) -> Budget {
        let max = usize::try_from(max).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Budget {
            bytes: Arc::new(Semaphore::new(max)),
            max,
            per_client: None,
        }
    }

    /// Each client (its address, an IPv6 /64) may hold at most
    /// [`client_may_hold`] of it, for bodies of at most `largest` bytes: so
    /// one client holding bodies open (sent or read at the minimum rate)
    /// cannot take the whole budget from every other.
    pub fn per_client(self, largest: u64) -> Budget {
        let cap = client_may_hold(self.max as u64, largest);
        Budget {
            per_client: Some(PerIp::new(cap)),
            ..self
        }
    }

    /// `len` bytes of the budget for a body about to be held for `client`,
    /// if they are free (`None`: the body is to be streamed).
    pub fn take(&self, len: u64, client: Option<IpAddr>) -> Option<Share> {
        let n = u32::try_from(len).ok()?;
        let client = match (&self.per_client, client) {
            (Some(per), Some(ip)) => Some(per.hold(ip, len)?),
            _ => None,
        };
        let bytes = self.bytes.clone().try_acquire_many_owned(n).ok()?;
        Some(Share {
            _bytes: bytes,
            _client: client,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        (self.max - self.bytes.available_permits()) as u64
    }
}

/// A body of a known length being read first: when Pingora's buffer is to
/// be turned on, and what came (see the module's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    len: u64,
    read: u64,
    buffering: bool,
}

/// How a body read first ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Whole, and in Pingora's buffer: it goes from there.
    InBuffer,
    /// Whole, its last part in Pingora's buffer: the copy goes in its place.
    Copied,
    /// Whole before Pingora's buffer was on (it came with its head): it
    /// cannot be handed on.
    WithHead,
    /// Not the length its head said.
    Short,
}

impl Reading {
    pub fn new(len: u64) -> Reading {
        Reading {
            len,
            read: 0,
            buffering: false,
        }
    }

    /// Before each read: `true` once, when what is left fits Pingora's
    /// buffer (before the first read for a body that fits whole): turn it
    /// on now. Never once the body is whole (the read that finds its end
    /// brings nothing): the buffer would stay empty.
    pub fn buffer_now(&mut self) -> bool {
        let left = self.len.saturating_sub(self.read);
        let start = !self.buffering && left > 0 && left <= RETRY_BUFFER;
        self.buffering |= start;
        start
    }

    /// The body needs a copy of its own (it does not fit Pingora's buffer).
    pub fn copied(&self) -> bool {
        self.len > RETRY_BUFFER
    }

    /// Bytes come so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// `n` more bytes came.
    pub fn took(&mut self, n: usize) {
        self.read = self.read.saturating_add(n as u64);
    }

    /// At the body's end.
    pub fn end(&self) -> Read {
        match (self.read == self.len, self.buffering, self.copied()) {
            (false, _, _) => Read::Short,
            (true, false, _) => Read::WithHead,
            (true, true, false) => Read::InBuffer,
            (true, true, true) => Read::Copied,
        }
    }
}

/// An HTTP/1.1 client waiting for `100 Continue` before it sends its body
/// (RFC 9110 §10.1.1): the gateway answers it itself when it reads the body
/// first, and the backend is not asked again.
pub fn expects_continue(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn policy(max_bytes: u64) -> Buffering {
        Buffering {
            max_body: 0,
            max_bytes,
            min_rate: 500,
            grace: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }

    /// A header map of `pairs`, in order (a name may repeat).
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_body_over_its_bound_is_too_large() {
        assert!(!policy(1 << 20).too_large(u64::MAX), "0: no bound");
        let p = Buffering {
            max_body: 1000,
            ..policy(1 << 20)
        };
        assert!(!p.too_large(0) && !p.too_large(1000));
        assert!(p.too_large(1001) && p.too_large(u64::MAX));
    }

    #[test]
    fn a_body_declared_over_the_bound_in_any_spelling_is_too_large() {
        let p = Buffering {
            max_body: 1000,
            ..policy(1 << 20)
        };
        for over in [
            &[("content-length", "1001")][..],
            &[("content-length", "1001"), ("content-length", "1001")],
            &[("content-length", "1001, 1001")],
            &[("content-length", "5,1001")],
            &[("content-length", " 1001 ")],
            &[("content-length", "1000000000000000")],
            &[("content-length", "99999999999999999999999")],
        ] {
            assert!(p.declares_too_large(&headers(over)), "{over:?}");
        }
        for not in [
            &[("content-length", "1000")][..],
            &[("content-length", "1000"), ("content-length", "1000")],
            &[("content-length", "+2000")],
            &[("content-length", "")],
            &[("content-length", "2000"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked")],
            &[],
        ] {
            assert!(!p.declares_too_large(&headers(not)), "{not:?}");
        }
        assert!(
            !policy(1 << 20).declares_too_large(&headers(&[("content-length", "1001")])),
            "0: no bound"
        );
    }

    #[test]
    fn a_body_with_one_length_within_the_bound_is_read_first() {
        let p = policy(1 << 20);
        assert_eq!(p.length(&headers(&[("content-length", "4096")])), Some(4096));
        assert_eq!(p.length(&headers(&[("content-length", "65536")])), Some(65536));
        assert_eq!(p.length(&headers(&[("content-length", "65537")])), Some(65537));
        assert_eq!(p.length(&headers(&[("content-length", "1048576")])), Some(1 << 20));
        assert_eq!(p.length(&headers(&[("content-length", "1")])), Some(1));
        assert_eq!(
            policy(MAX_BUFFERED).length(&headers(&[("content-length", "1073741824")])),
            Some(MAX_BUFFERED)
        );
    }

    /// Reads `len` bytes in `chunks` (the rest in reads of 64 KiB) as the
    /// proxy does (asking before every read, the last one finding the end):
    /// when the buffer went on (bytes read before it), and the end.
    fn read_in(len: u64, chunks: &[u64]) -> (Option<u64>, Read) {
        let mut r = Reading::new(len);
        let (mut at, mut on) = (0, None);
        let mut sizes = chunks.iter().copied().chain(std::iter::repeat(RETRY_BUFFER));
        loop {
            if r.buffer_now() {
                assert_eq!(on, None, "turned on twice");
                on = Some(at);
            }
            if at == len {
                break;
            }
            let n = sizes.next().unwrap_or(RETRY_BUFFER).min(len - at);
            r.took(n as usize);
            at += n;
        }
        (on, r.end())
    }

    #[test]
    fn pingoras_buffer_gets_a_body_that_fits_whole_and_a_larger_ones_last_part() {
        // Fits: on before the first read, the whole body in it.
        assert_eq!(read_in(1, &[]), (Some(0), Read::InBuffer));
        assert_eq!(read_in(RETRY_BUFFER, &[]), (Some(0), Read::InBuffer));
        // Larger: on once what is left fits, whatever the reads' sizes.
        for (len, chunks) in [
            (RETRY_BUFFER + 1, &[][..]),
            (RETRY_BUFFER + 1, &[1][..]),
            (1 << 20, &[][..]),
            (1 << 20, &[4096, 16384, 16384][..]),
            (1 << 20, &[1000; 40][..]),
            (10 * RETRY_BUFFER + 17, &[RETRY_BUFFER - 1][..]),
        ] {
            let (on, end) = read_in(len, chunks);
            let on = on.unwrap_or_else(|| panic!("{len} {chunks:?}: never on"));
            assert!(len - on <= RETRY_BUFFER, "{len} {chunks:?}: on with {} left", len - on);
            assert!(on > 0 && end == Read::Copied, "{len} {chunks:?}: {on} {end:?}");
            assert!(Reading::new(len).copied());
        }
        assert!(!Reading::new(RETRY_BUFFER).copied());
    }

    #[test]
    fn a_body_that_came_with_its_head_or_short_is_told_apart() {
        // Larger than the buffer and whole in one read (with its head): the
        // read that finds the end does not turn the buffer on.
        assert_eq!(
            read_in(RETRY_BUFFER + 100, &[RETRY_BUFFER + 100]),
            (None, Read::WithHead)
        );
        assert_eq!(read_in(1 << 20, &[1 << 20]), (None, Read::WithHead));
        // Short of its length (the client left), or over it.
        let mut r = Reading::new(1 << 20);
        r.buffer_now();
        r.took(1000);
        assert_eq!(r.end(), Read::Short);
        let mut r = Reading::new(10);
        r.buffer_now();
        r.took(11);
        assert_eq!(r.end(), Read::Short);
    }

    #[test]
    fn anything_else_is_streamed() {
        let p = policy(MAX_BUFFERED);
        for pairs in [
            &[][..],
            &[("content-length", "0")],
            &[("content-length", "1073741825")],
            &[("content-length", "99999999999999999999")],
            &[("content-length", "+12")],
            &[("content-length", "1,1")],
            &[("content-length", "")],
            &[("content-length", " 12")],
            &[("content-length", "12"), ("content-length", "12")],
            &[("content-length", "12"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked")],
        ] {
            assert_eq!(p.length(&headers(pairs)), None, "{pairs:?}");
        }
        // Off, or a smaller bound.
        assert_eq!(policy(0).length(&headers(&[("content-length", "12")])), None);
        assert_eq!(policy(1000).length(&headers(&[("content-length", "1001")])), None);
        assert_eq!(policy(1000).length(&headers(&[("content-length", "1000")])), Some(1000));
    }

    #[test]
    fn the_deadline_is_the_grace_and_the_length_at_the_minimum_rate() {
        let p = policy(MAX_BUFFERED);
        assert_eq!(p.deadline(1000), Duration::from_secs(12));
        assert_eq!(p.deadline(1), Duration::from_millis(10_002));
        // No rate: the idle timeout on top of the grace.
        let none = Buffering { min_rate: 0, ..p };
        assert_eq!(none.deadline(65536), Duration::from_secs(70));
    }

    #[test]
    fn the_next_part_must_come_by_the_rate_the_deadline_and_the_idle_bound() {
        let p = policy(1 << 20); // 500 B/s, 10 s grace, 60 s idle
        let s = Duration::from_secs;
        // The first byte within the grace.
        assert_eq!(p.next_wait(1 << 20, 0, s(0)), s(10));
        assert_eq!(p.next_wait(1 << 20, 0, s(4)), s(6));
        assert_eq!(p.next_wait(1 << 20, 0, s(10)), s(0));
        // 5,000 bytes buy 10 s more; never more than the idle bound.
        assert_eq!(p.next_wait(1 << 20, 5000, s(12)), s(8));
        assert_eq!(p.next_wait(1 << 20, 500_000, s(12)), s(60));
        // A fast start does not buy more than the idle bound.
        assert_eq!(p.next_wait(1 << 20, 1 << 20, s(1)), s(60));
        // 4,000 bytes of 4,096 in: until 18 s (the whole deadline, 18.192 s, is later).
        assert_eq!(p.next_wait(4096, 4000, s(17)), s(1));
        // Without a rate: the whole deadline (grace + idle) and the idle bound.
        let none = Buffering { min_rate: 0, ..p };
        assert_eq!(none.next_wait(1 << 20, 0, s(0)), s(60));
        assert_eq!(none.next_wait(1 << 20, 0, s(65)), s(5));
        assert_eq!(none.next_wait(1 << 20, 0, s(70)), s(0));
    }

    #[test]
    fn a_streamed_body_falls_below_the_rate_once_the_grace_is_over() {
        let p = policy(1 << 20); // 500 B/s, 10 s grace
        let s = Duration::from_secs;
        // Within the grace, whatever came.
        assert!(!p.below_rate(0, s(10)));
        assert!(p.below_rate(0, Duration::from_millis(10_001)));
        // 5,000 bytes cover 10 s past the grace, on average.
        assert!(!p.below_rate(5000, s(20)));
        assert!(p.below_rate(5000, s(21)));
        // A fast start covers a later wait (a backend slow to read).
        assert!(!p.below_rate(1 << 20, s(1000)));
        // A byte every few seconds does not.
        assert!(p.below_rate(10, s(15)));
        // Without a rate, never.
        let none = Buffering { min_rate: 0, ..p };
        assert!(!none.below_rate(0, s(1 << 30)));
    }

    #[test]
    fn copies_hold_at_most_half_and_smaller_bodies_keep_the_rest() {
        let b = RequestBudget::new(4 << 20, 2 << 20);
        let copy = b.take(2 << 20, None).expect("half");
        assert!(b.take(RETRY_BUFFER + 1, None).is_none(), "a copy past the half");
        // The other half is for bodies that fit Pingora's buffer.
        let small: Vec<_> = (0..32)
            .map(|_| b.take(RETRY_BUFFER, None).expect("a small body"))
            .collect();
        assert!(b.take(1, None).is_none(), "the whole budget");
        assert_eq!(b.all().held(), 4 << 20);
        drop((copy, small));
        assert_eq!(b.all().held(), 0);
        assert!(b.take(2 << 20, None).is_some());
    }

    #[test]
    fn the_budget_holds_what_is_taken_until_it_is_given_back() {
        let budget = Budget::new(10_000);
        let a = budget.take(6_000, None).expect("free");
        assert!(budget.take(4_001, None).is_none(), "over the budget");
        let b = budget.take(4_000, None).expect("exactly what is left");
        assert_eq!(budget.held(), 10_000);
        assert!(budget.take(1, None).is_none());
        drop(a);
        assert_eq!(budget.held(), 4_000);
        assert!(budget.take(6_000, None).is_some(), "taken and given back at once");
        drop(b);
        assert_eq!(budget.held(), 0);
        assert!(Budget::new(0).take(1, None).is_none());
        assert!(Budget::new(u64::MAX).take(MAX_BUFFERED, None).is_some());
    }

    #[test]
    fn one_client_holds_at_most_a_quarter_or_one_largest_body() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // 16 MiB for bodies of up to 1 MiB: a client may hold 4 MiB.
        let budget = Budget::new(16 << 20).per_client(1 << 20);
        let held: Vec<_> = (0..4)
            .map(|_| budget.take(1 << 20, ip("10.0.0.1")).expect("its quarter"))
            .collect();
        assert!(budget.take(1, ip("10.0.0.1")).is_none(), "past its quarter");
        assert!(budget.take(1, ip("::ffff:10.0.0.1")).is_none(), "the same client");
        assert!(budget.take(4 << 20, ip("10.0.0.2")).is_some(), "another client");
        assert!(budget.take(1, None).is_some(), "no client known: the budget alone");
        drop(held);
        assert!(budget.take(4 << 20, ip("10.0.0.1")).is_some(), "given back");
        // A quarter smaller than the largest body: one such body still fits.
        let small = Budget::new(4 << 20).per_client(2 << 20);
        let one = small.take(2 << 20, ip("10.0.0.1")).expect("one largest body");
        assert!(small.take(1, ip("10.0.0.1")).is_none());
        drop(one);
        // The request budget bounds the client in the whole and in the half
        // for copies alike.
        let b = RequestBudget::new(16 << 20, 1 << 20);
        let copies: Vec<_> = (0..2)
            .map(|_| b.take(1 << 20, ip("10.0.0.1")).expect("copies"))
            .collect();
        assert!(
            b.take(1 << 20, ip("10.0.0.1")).is_none(),
            "a quarter of the half for copies"
        );
        assert!(
            b.take(RETRY_BUFFER, ip("10.0.0.1")).is_some(),
            "a small body: the whole's quarter"
        );
        drop(copies);
    }

    #[test]
    fn only_an_http11_request_expects_continue() {
        let h = headers(&[("expect", "100-Continue")]);
        assert!(expects_continue(Version::HTTP_11, &h));
        assert!(!expects_continue(Version::HTTP_10, &h));
        assert!(!expects_continue(Version::HTTP_2, &h));
        assert!(!expects_continue(Version::HTTP_11, &headers(&[("expect", "nothing")])));
        assert!(!expects_continue(Version::HTTP_11, &HeaderMap::new()));
    }
}
