//! Which response bodies are taken whole from the backend before the client
//! has them, and the buffer that holds one (policy and buffer only: `proxy`
//! feeds it the chunks Pingora reads).
//!
//! A pre-forked app server (gunicorn's sync workers, the usual Django
//! deployment) holds a worker until the last byte of its response is
//! written. Pingora reads a response from the backend only as fast as the
//! client takes it (a few chunks in flight between the two), so a client
//! reading a large response slowly, or not at all until the send timeout,
//! holds that worker: past what the sockets between them absorb, for as
//! long as it takes. A few such clients hold every worker and every tenant
//! on that backend waits. nginx buffers responses for this reason
//! (`proxy_buffering`, on by default). Here a response body whose
//! `Content-Length` is at most `limits.response_body_buffer_bytes` is
//! taken from the backend as fast as it comes and handed to the client
//! whole once it has all arrived: the backend's worker is free as soon as
//! it has sent it.
//!
//! What is held is what comes after the first batch: Pingora filters the
//! head together with the chunks read with it before writing any of them,
//! so the head is looked at once it is written, at the body's first
//! partial chunk after that, and the chunks before go on as they came
//! (the reads that were waiting when the head was: one, or up to about
//! five of 64 KiB). A client that takes none even of
//! those (its socket full, or an HTTP/2 window it never opens) holds the
//! worker until the send timeout, as a streamed body does; one that reads
//! at all, however slowly, gets them and then holds nothing. A body that
//! arrives in one read is never looked at: a small response costs a
//! branch.
//!
//! What is not held, and why:
//! - a body without a length (chunked, or up to the connection's end):
//!   that is how a backend streams (Server-Sent Events, Django's
//!   `StreamingHttpResponse`), and holding it would delay each part;
//! - a response saying `X-Accel-Buffering: no` (the header nginx honours
//!   for the same reason, which Django apps already send for streams);
//! - a body larger than the bound, or arriving while the bodies held at
//!   once are at `limits.response_body_buffer_total_mib` (the
//!   [`crate::body::Budget`]); those are streamed as before;
//! - a body under [`MIN_HELD`]: the sockets between backend and client
//!   take it whatever the client does;
//! - an upgraded connection (WebSocket) carries no `Content-Length`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

use crate::body::{content_length, Share};

/// The most `limits.response_body_buffer_bytes` may be: a policy (bodies
/// larger than this are downloads to stream), below the 4 GiB a body's
/// share of the budget can count.
pub const MAX_BUFFERED: u64 = 1 << 30;

/// The smallest body held: below it a client cannot hold a backend worker
/// by reading slowly (the sockets' buffers take it).
pub const MIN_HELD: u64 = 16 * 1024;

/// `[limits]`' say on response bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffering {
    /// `response_body_buffer_bytes`; 0: off.
    pub max_bytes: u64,
}

impl Buffering {
    /// The body's length, if it is to be held whole: exactly one
    /// `Content-Length`, a number from [`MIN_HELD`] to `max_bytes`, no
    /// `Transfer-Encoding`, and no `X-Accel-Buffering: no`.
    pub fn length(&self, headers: &HeaderMap) -> Option<u64> {
        let n = content_length(headers)?;
        if !(MIN_HELD..=self.max_bytes.min(MAX_BUFFERED)).contains(&n) {
            return None;
        }
        let streamed = headers
            .get_all("x-accel-buffering")
            .iter()
            .any(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"no"));
        (!streamed).then_some(n)
    }
}

/// A response body to be held: its length, its bytes so far and its share
/// of the budget (given back when this is dropped, at the request's end,
/// after the body was handed on).
pub(crate) struct Held {
    len: usize,
    bytes: BytesMut,
    /// More came than `len` (never, while Pingora frames the body by the
    /// head the length was read from): what was held went on with it, and
    /// the rest passes as it comes.
    overflowed: bool,
    _share: Share,
}

impl Held {
    /// A body of at most `len` bytes (its `Content-Length`, so at most
    /// `response_body_buffer_bytes`), paid for by `share`; nothing is
    /// allocated until a chunk has to be held.
    pub(crate) fn new(len: u64, share: Share) -> Held {
        Held {
            len: usize::try_from(len).unwrap_or(0),
            bytes: BytesMut::new(),
            overflowed: false,
            _share: share,
        }
    }

    /// Takes the chunk Pingora read (`body`) into the buffer; at the body's
    /// end, puts what was held and that chunk in its place. A chunk that
    /// ends the body with nothing held before it passes as it is. Pingora
    /// frames a `Content-Length` body, so no more than that arrives; if
    /// more did, what was held goes on at once with it and nothing more is
    /// held.
    pub(crate) fn take_in(&mut self, body: &mut Option<Bytes>, end: bool) -> Step {
        // Nothing is allocated before the first chunk held.
        let first = self.bytes.capacity() == 0;
        if self.overflowed || (first && (end || body.is_none())) {
            return Step::Passed;
        }
        if let Some(chunk) = body.take() {
            if first {
                self.bytes.reserve(self.len.max(chunk.len()));
            }
            self.overflowed = self.bytes.len() + chunk.len() > self.len;
            self.bytes.extend_from_slice(&chunk);
        }
        if end || self.overflowed {
            *body = Some(self.bytes.split().freeze());
            Step::Whole
        } else if first {
            Step::Started
        } else {
            Step::Holding
        }
    }
}

/// What [`Held::take_in`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing is held (yet): the chunk, if any, goes on as it is.
    Passed,
    /// The chunk is the first held.
    Started,
    /// The chunk is held after others.
    Holding,
    /// The body ended: all of it goes on now.
    Whole,
}

/// How long a held body of `len` bytes may take to reach an HTTP/2 client.
/// Pingora bounds one response write as a whole, and the held body is one
/// write: the send timeout per 64 KiB of it (h2's default window) is what
/// the body streamed was allowed in all, so a client opening its window
/// once per send timeout is not cut. Pingora bounds each wait for the
/// client's window by the same duration, so a client that never opens it
/// is cut only then: it holds the body's memory (within the budget), not
/// a backend worker, that long. (HTTP/1 bounds each socket write instead,
/// `conn::stream`, whatever their size.)
pub(crate) fn h2_send_time(send_timeout: Duration, len: usize) -> Duration {
    let windows = u32::try_from(len.div_ceil(64 * 1024).max(1)).unwrap_or(u32::MAX);
    send_timeout.saturating_mul(windows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::tests::headers;
    use crate::body::Budget;

    const EIGHT_MIB: Buffering = Buffering { max_bytes: 8 << 20 };

    #[test]
    fn a_body_with_one_length_within_the_bounds_is_held() {
        let p = EIGHT_MIB;
        assert_eq!(p.length(&headers(&[("content-length", "16384")])), Some(MIN_HELD));
        assert_eq!(p.length(&headers(&[("content-length", "8388608")])), Some(8 << 20));
        assert_eq!(
            p.length(&headers(&[("content-length", "20000"), ("x-accel-buffering", "yes")])),
            Some(20_000)
        );
    }

    #[test]
    fn streams_and_anything_else_pass_as_they_come() {
        let p = EIGHT_MIB;
        for pairs in [
            &[][..],
            &[("content-length", "0")],
            &[("content-length", "16383")],
            &[("content-length", "8388609")],
            &[("content-length", "99999999999999999999")],
            &[("content-length", "-20000")],
            &[("content-length", "20000"), ("content-length", "20000")],
            &[("content-length", "20000"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked")],
            &[("content-length", "20000"), ("x-accel-buffering", "no")],
            &[("content-length", "20000"), ("x-accel-buffering", " NO ")],
        ] {
            assert_eq!(p.length(&headers(pairs)), None, "{pairs:?}");
        }
        let off = Buffering { max_bytes: 0 };
        assert_eq!(off.length(&headers(&[("content-length", "20000")])), None);
        // The bound never passes what a share can count.
        let huge = Buffering { max_bytes: u64::MAX };
        assert_eq!(huge.length(&headers(&[("content-length", "1073741825")])), None);
    }

    fn chunk(s: &'static str) -> Option<Bytes> {
        Some(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn the_chunks_are_handed_on_at_the_end_and_the_share_held_until_dropped() {
        let budget = Budget::new(100);
        let mut held = Held::new(11, budget.take(11, None).expect("free"));
        let mut body = chunk("hello");
        assert_eq!(held.take_in(&mut body, false), Step::Started);
        assert_eq!(body, None, "nothing reaches the client yet");
        let mut body = None;
        assert_eq!(held.take_in(&mut body, false), Step::Holding);
        assert_eq!(body, None);
        let mut body = chunk(" world");
        assert_eq!(held.take_in(&mut body, true), Step::Whole);
        assert_eq!(body.as_deref(), Some(&b"hello world"[..]));
        assert_eq!(budget.held(), 11, "held until the request ends");
        drop(held);
        assert_eq!(budget.held(), 0);
        // A body whose end comes without data.
        let mut held = Held::new(2, budget.take(2, None).expect("free"));
        assert_eq!(held.take_in(&mut chunk("ok"), false), Step::Started);
        let mut end = None;
        assert_eq!(held.take_in(&mut end, true), Step::Whole);
        assert_eq!(end.as_deref(), Some(&b"ok"[..]));
    }

    #[test]
    fn a_body_that_comes_in_one_read_passes_as_it_is() {
        let budget = Budget::new(100);
        let mut held = Held::new(5, budget.take(5, None).expect("free"));
        let one = Bytes::from_static(b"whole");
        let mut body = Some(one.clone());
        assert_eq!(held.take_in(&mut body, true), Step::Passed);
        let body = body.expect("passed on");
        assert_eq!(body.as_ptr(), one.as_ptr(), "not copied");
        // An empty read before it holds nothing either.
        let mut held = Held::new(5, budget.take(5, None).expect("free"));
        assert_eq!(held.take_in(&mut None, false), Step::Passed);
        let mut body = Some(one.clone());
        assert_eq!(held.take_in(&mut body, true), Step::Passed);
        assert_eq!(body.map(|b| b.as_ptr()), Some(one.as_ptr()));
    }

    #[test]
    fn an_http2_client_has_the_send_timeout_per_window_of_a_held_body() {
        let t = Duration::from_secs(60);
        assert_eq!(h2_send_time(t, 0), t);
        assert_eq!(h2_send_time(t, 65_536), t);
        assert_eq!(h2_send_time(t, 65_537), 2 * t);
        assert_eq!(h2_send_time(t, 8 << 20), 128 * t);
        assert_eq!(h2_send_time(Duration::MAX, 1 << 30), Duration::MAX);
    }

    #[test]
    fn more_than_the_length_is_handed_on_at_once_and_not_held() {
        let budget = Budget::new(100);
        let mut held = Held::new(6, budget.take(6, None).expect("free"));
        assert_eq!(held.take_in(&mut chunk("abcd"), false), Step::Started);
        let mut body = chunk("efg");
        assert_eq!(held.take_in(&mut body, false), Step::Whole);
        assert_eq!(body.as_deref(), Some(&b"abcdefg"[..]));
        let mut body = chunk("h");
        assert_eq!(held.take_in(&mut body, true), Step::Passed);
        assert_eq!(body.as_deref(), Some(&b"h"[..]));
    }
}
