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
//! most `limits.request_body_buffer_bytes` is read into Pingora's own
//! request body buffer (what it keeps to resend a body on a retry, 64 KiB)
//! before the request goes anywhere, and sent on from there; a larger body,
//! or one without a length (chunked), is streamed as before. Pingora
//! already copies up to that much of every proxied body into that buffer;
//! what reading first adds is time: a body being read holds its buffer
//! until it is whole or its deadline passes, where a streamed one moves on
//! (the connection caps bound how many a client can hold).
//!
//! Reading a body has a deadline: the grace a body has before its minimum
//! rate applies, plus its length at that rate. HTTP/1 bodies are also held
//! to the rate as they arrive (`conn::deadline`); HTTP/2 streams are not,
//! and a body that stops sending would otherwise be waited for forever.
//!
//! And a budget: the bodies being read at once may hold at most
//! `limits.request_body_buffer_total_mib` ([`Budget`]: tokio's semaphore,
//! a permit per byte); past it a body is streamed as if it were large.
//! Without it, a client's many HTTP/2 streams (100 per connection, each up
//! to 64 KiB, on each of its connections) could hold memory for as long as
//! their deadlines let them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, Version};

/// The most a body can be read first: Pingora's buffer for a request body
/// it may have to resend (it drops what does not fit).
pub const MAX_BUFFERED: u64 = 64 * 1024;

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
}

impl Buffering {
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
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The bytes the bodies being held whole may hold at once (per process,
/// one for request bodies and one for responses): a permit per byte.
/// Clones share it.
#[derive(Debug, Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    max: usize,
}

/// A body's share of the [`Budget`], given back when dropped.
pub type Share = OwnedSemaphorePermit;

impl Budget {
    /// At most `max` bytes (capped at what a semaphore can count).
    pub fn new(max: u64) -> Budget {
        let max = usize::try_from(max).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Budget {
            bytes: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// `len` bytes of the budget for a body about to be held, if they are
    /// free (`None`: the body is to be streamed).
    pub fn take(&self, len: u64) -> Option<Share> {
        let len = u32::try_from(len).ok()?;
        self.bytes.clone().try_acquire_many_owned(len).ok()
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        (self.max - self.bytes.available_permits()) as u64
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
    fn a_small_body_with_one_length_is_read_first() {
        let p = policy(MAX_BUFFERED);
        assert_eq!(p.length(&headers(&[("content-length", "4096")])), Some(4096));
        assert_eq!(p.length(&headers(&[("content-length", "65536")])), Some(65536));
        assert_eq!(p.length(&headers(&[("content-length", "1")])), Some(1));
    }

    #[test]
    fn anything_else_is_streamed() {
        let p = policy(MAX_BUFFERED);
        for pairs in [
            &[][..],
            &[("content-length", "0")],
            &[("content-length", "65537")],
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
    fn the_budget_holds_what_is_taken_until_it_is_given_back() {
        let budget = Budget::new(10_000);
        let a = budget.take(6_000).expect("free");
        assert!(budget.take(4_001).is_none(), "over the budget");
        let b = budget.take(4_000).expect("exactly what is left");
        assert_eq!(budget.held(), 10_000);
        assert!(budget.take(1).is_none());
        drop(a);
        assert_eq!(budget.held(), 4_000);
        assert!(budget.take(6_000).is_some(), "taken and given back at once");
        drop(b);
        assert_eq!(budget.held(), 0);
        assert!(Budget::new(0).take(1).is_none());
        assert!(Budget::new(u64::MAX).take(MAX_BUFFERED).is_some());
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
