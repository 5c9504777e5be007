//! [`Guarded`]: the stream every public connection is served through. It
//! enforces the connection's deadlines ([`super::deadline`]: reading, and
//! the send timeout on every write and flush), holds its
//! place under the connection caps ([`super::limits`]) for as long as it
//! lives, and carries the facts of the connection (TLS, SNI) to the request
//! path inside the connection's own digest, so nothing per connection lives
//! in global state.
//!
//! A connection that ends with one of the gateway's pages on a request
//! whose body it has not read (a 413, a 502 in the middle of an upload, any
//! page for a client that asked to close) ends with a lingering close, as
//! nginx's `lingering_close`: after the answer and the end of writes, what
//! the client still sends is read and dropped until it closes, for at most
//! `limits.lingering_close_ms`. The request path asks for it
//! ([`ConnFacts::linger_on_close`]) and shuts the connection down itself
//! once the request is logged, since Pingora's error paths drop a
//! connection without shutting it down. Closing a
//! socket with unread data makes the kernel send a reset, and a client
//! still sending its body would then see the reset, often before (or
//! instead of) the answer.
//!
//! At shutdown a WebSocket connection gets a close frame (1001, going away)
//! between two of the backend's frames, and then reads end of stream, so
//! Pingora ends the tunnel and closes the backend side too.
//!
//! Pingora reads the facts back through `Session::digest()`: the digest's
//! `proxy_digest.user_data` slot (meant for data a connection wants to carry,
//! unused on downstream connections) holds a [`ConnFacts`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest, UniqueID,
    UniqueIDType, ALPN,
};
use pingora_http::ResponseHeader;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::deadline::{ConnDeadlines, Overdue, Phase, Stall, Verdict};
use super::drain::{Drain, DrainWait};
use super::limits::ConnPermit;
use super::ws::{FrameTracker, CLOSE_GOING_AWAY};
use crate::headers::{Forwarding, StampMemo};
use crate::metrics::Metrics;
use crate::tenant::cache::TenantMemo;
use crate::tenant::host::HostMemo;

/// The SNI of a TLS connection, normalised once at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// The client sent no SNI (e.g. it connected to an IP literal).
    Absent,
    /// The name, normalised like a Host header.
    Name(Arc<str>),
    /// An SNI that is not a valid host name: agrees with no Host.
    Invalid,
}

impl Sni {
    pub fn from_hello(name: Option<&str>) -> Sni {
        match name {
            None => Sni::Absent,
            Some(n) => tenancy::normalize_host(n).map_or(Sni::Invalid, |h| Sni::Name(h.into())),
        }
    }
}

/// What the request path may ask about the connection a request came on.
#[derive(Debug)]
pub struct ConnFacts {
    /// `Some` for TLS connections: the SNI of the handshake.
    pub tls: Option<Sni>,
    /// The forwarding values, built by the connection's first proxied
    /// request (`None` inside: they could not be built, each request
    /// builds its own).
    pub forwarding: OnceLock<Option<Forwarding>>,
    /// The first host the connection sent, normalised.
    pub host: HostMemo,
    /// The tenant that host resolved to, while fresh.
    pub tenant: TenantMemo,
    /// The `X-Tenant` value of the first tenant stamped.
    pub stamp: StampMemo,
    /// The connection closes on a body not read: linger ([`Guarded`]).
    linger: AtomicBool,
}

impl ConnFacts {
    pub fn new(tls: Option<Sni>) -> ConnFacts {
        ConnFacts {
            tls,
            forwarding: OnceLock::new(),
            host: HostMemo::default(),
            tenant: TenantMemo::default(),
            stamp: StampMemo::default(),
            linger: AtomicBool::new(false),
        }
    }

    /// The request path is closing this connection on a request body it
    /// has not read: drain what the client still sends before closing.
    pub fn linger_on_close(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    /// The facts as a digest Pingora hands back with every request.
    /// (`None` only if a bare status line cannot be built: the request
    /// path then finds no facts and fails closed.)
    fn into_digest(self) -> Option<Arc<ProxyDigest>> {
        // A status-only header: never sent anywhere, it only fills the slot.
        let header = ResponseHeader::build_no_case(200, Some(0)).ok()?;
        Some(Arc::new(ProxyDigest::new(Box::new(header), Some(Box::new(self)))))
    }

    /// The facts of the connection a request arrived on (`None` when the
    /// connection was not accepted by our listeners).
    pub fn of(digest: Option<&pingora_core::protocols::Digest>) -> Option<&ConnFacts> {
        Self::in_digest(digest?.proxy_digest.as_ref()?)
    }

    fn in_digest(digest: &ProxyDigest) -> Option<&ConnFacts> {
        digest.user_data.as_ref()?.downcast_ref::<ConnFacts>()
    }
}

/// A public connection: its stream, deadlines, cap permit and facts.
pub struct Guarded<S> {
    inner: S,
    deadlines: ConnDeadlines,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The waker `sleep` was last polled with: a kept timer polled again
    /// with the same one would register nothing new.
    armed: Option<Waker>,
    facts: Option<Arc<ProxyDigest>>,
    metrics: Arc<Metrics>,
    _permit: ConnPermit,
    drain: Arc<Drain>,
    drain_wait: DrainWait,
    /// WebSocket: frames written to the client so far.
    frames: FrameTracker,
    /// Bytes of the close frame written, once closing began.
    closing: Option<usize>,
    /// The reader waiting for a frame boundary to close at.
    close_waker: Option<Waker>,
    /// `limits.send_timeout_ms`.
    send_timeout: std::time::Duration,
    /// Since when the client has taken nothing written to it.
    stall: Stall,
    /// Wakes the writer at the stall's deadline (made at the first stall).
    stall_timer: Option<Pin<Box<Sleep>>>,
    /// `limits.lingering_close_ms`.
    linger: std::time::Duration,
    /// Where a lingering close stands.
    lingering: Lingering,
}

/// A lingering close: not begun, draining (its deadline and scrap buffer,
/// allocated only by a close that lingers), or over.
enum Lingering {
    No,
    Draining(Box<Drainer>),
    Done,
}

struct Drainer {
    until: Pin<Box<Sleep>>,
    scrap: Box<[u8]>,
}

/// Reads a lingering close makes in one poll before it lets other tasks
/// run (a client sending fast would otherwise hold the worker).
const LINGER_READS_PER_POLL: usize = 16;

/// What a public connection is guarded by.
pub struct Guards {
    pub permit: ConnPermit,
    pub drain: Arc<Drain>,
    pub metrics: Arc<Metrics>,
    /// A client that takes nothing written to it for this long is cut.
    pub send_timeout: std::time::Duration,
    /// The longest a lingering close drains (0: none).
    pub linger: std::time::Duration,
}

impl<S: Ssl> Guarded<S> {
    pub fn new(
        inner: S,
        deadlines: impl FnOnce(bool) -> ConnDeadlines,
        facts: ConnFacts,
        guards: Guards,
    ) -> Guarded<S> {
        let h2 = inner.selected_alpn_proto() == Some(ALPN::H2);
        Guarded {
            inner,
            deadlines: deadlines(h2),
            sleep: None,
            armed: None,
            facts: facts.into_digest(),
            metrics: guards.metrics,
            _permit: guards.permit,
            drain: guards.drain,
            drain_wait: None,
            frames: FrameTracker::default(),
            closing: None,
            close_waker: None,
            send_timeout: guards.send_timeout,
            stall: Stall::default(),
            stall_timer: None,
            linger: guards.linger,
            lingering: Lingering::No,
        }
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// WebSocket at shutdown: `None` while reading goes on as usual; else
    /// the close frame is (being) written and the read then ends the stream.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Option<Poll<std::io::Result<()>>> {
        if self.closing.is_none() {
            if !self.drain.poll_started(cx, &mut self.drain_wait) {
                return None;
            }
            if !self.frames.at_boundary() {
                // Mid-frame: the writer wakes us when the frame is complete.
                self.close_waker = Some(cx.waker().clone());
                return None;
            }
            self.closing = Some(0);
            self.metrics.websocket_closes.inc();
        }
        let mut written = self.closing.unwrap_or(0);
        while written < CLOSE_GOING_AWAY.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &CLOSE_GOING_AWAY[written..]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    self.stall.progressed();
                    written += n;
                }
                // The client is gone: nothing left to be polite to.
                Poll::Ready(_) => return Some(Poll::Ready(Ok(()))),
                Poll::Pending => {
                    self.closing = Some(written);
                    return Some(self.close_stalled(cx));
                }
            }
        }
        self.closing = Some(written);
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => Some(self.close_stalled(cx)),
            // End of stream: Pingora ends the tunnel.
            Poll::Ready(_) => Some(Poll::Ready(Ok(()))),
        }
    }

    /// The close frame cannot be written: wait under the send timeout like
    /// any write; past it, end the stream without it.
    fn close_stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stalled(cx).map(|_| Ok(()))
    }
}

impl<S> Guarded<S> {
    /// Wake the task at `at` (the phase's deadline) if nothing comes sooner.
    ///
    /// A timer still pending at or before `at` is kept: it wakes the task
    /// early, the read finds the deadline not reached and arms again. Each
    /// keep-alive request moves the idle deadline later, so resetting the
    /// timer on every request (a deregistration and an insertion on the
    /// timer wheel) would cost more than one early wake per idle period.
    /// Only a later-than-needed or spent timer is reset: the deadline is
    /// never late.
    fn arm(&mut self, at: Instant, cx: &mut Context<'_>) {
        let at = tokio::time::Instant::from_std(at);
        let sleep = match &mut self.sleep {
            Some(s) => {
                if rearm(s.deadline(), s.is_elapsed(), at) {
                    s.as_mut().reset(at);
                } else if armed_for(&self.armed, cx) {
                    return;
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        if !armed_for(&self.armed, cx) {
            self.armed = Some(cx.waker().clone());
        }
        if sleep.as_mut().poll(cx).is_ready() {
            // Already due: poll again so the read sees the deadline.
            cx.waker().wake_by_ref();
        }
    }

    /// The pending timer will wake this task by the phase's deadline: until
    /// it fires there is nothing to check, and no clock to read (~40 ns per
    /// read on a VM, several reads per request). It may fire a timer-wheel
    /// tick after the deadline; the check then runs on that wake.
    fn timer_covers(&self, cx: &Context<'_>) -> bool {
        let (Some(at), Some(sleep)) = (self.deadlines.wake_at(), &self.sleep) else {
            return false;
        };
        !sleep.is_elapsed() && sleep.deadline() <= tokio::time::Instant::from_std(at) && armed_for(&self.armed, cx)
    }
}

impl<S> Guarded<S> {
    /// What a write, flush or shutdown of the inner stream comes to under
    /// the send timeout: one that proceeds ends a stall; one that cannot
    /// counts towards it and wakes the task at its deadline; past that it
    /// fails, and the connection with it. Only a write that cannot proceed
    /// reads the clock or touches the timer.
    #[inline]
    fn bounded_write<T>(&mut self, polled: Poll<std::io::Result<T>>, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stall.progressed();
            return polled;
        }
        self.stalled(cx).map(Err)
    }

    /// [`Self::bounded_write`] for a write that cannot proceed: the error
    /// once the client has taken nothing for the send timeout.
    #[cold]
    #[inline(never)]
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.stall.pending(Instant::now(), self.send_timeout) {
            Ok(at) => {
                let at = tokio::time::Instant::from_std(at);
                let timer = match &mut self.stall_timer {
                    Some(t) => {
                        if t.deadline() != at {
                            t.as_mut().reset(at);
                        }
                        t
                    }
                    None => self.stall_timer.insert(Box::pin(tokio::time::sleep_until(at))),
                };
                if timer.as_mut().poll(cx).is_ready() {
                    // Due already: poll again so the write sees it.
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            Err(Overdue) => {
                self.metrics.deadline_hits.with_label_values(&["send"]).inc();
                Poll::Ready(timed_out(
                    "the client took nothing written to it within limits.send_timeout_ms",
                ))
            }
        }
    }
}

/// The timer was last polled with this task's waker (`armed`).
fn armed_for(armed: &Option<Waker>, cx: &Context<'_>) -> bool {
    armed.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
}

/// Whether a timer set for `current` (`spent`: it has fired) must be reset
/// to wake at `wanted`: when it would wake too late or not at all.
fn rearm<T: PartialOrd>(current: T, spent: bool, wanted: T) -> bool {
    spent || current > wanted
}

fn timed_out(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.deadlines.phase() == Phase::WebSocket {
            if let Some(closed) = this.poll_close(cx) {
                return closed;
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                match this.deadlines.on_data(new, Instant::now) {
                    Verdict::BodyTooSlow => {
                        this.metrics.deadline_hits.with_label_values(&["body_rate"]).inc();
                        Poll::Ready(Err(timed_out("request body slower than limits.min_body_rate")))
                    }
                    _ => Poll::Ready(Ok(())),
                }
            }
            Poll::Pending if this.deadlines.phase() == Phase::Tunnel => Poll::Pending,
            Poll::Pending if this.timer_covers(cx) => Poll::Pending,
            Poll::Pending => match this.deadlines.on_pending(Instant::now) {
                Verdict::HeadTimeout => {
                    this.metrics.deadline_hits.with_label_values(&["request_head"]).inc();
                    Poll::Ready(Err(timed_out(
                        "request head not complete within limits.request_head_timeout_ms",
                    )))
                }
                Verdict::IdleTimeout => {
                    this.metrics.deadline_hits.with_label_values(&["idle"]).inc();
                    // End of stream: the connection closes quietly.
                    Poll::Ready(Ok(()))
                }
                Verdict::BodyTooSlow | Verdict::Ok => {
                    if let Some(at) = this.deadlines.wake_at() {
                        this.arm(at, cx);
                    }
                    Poll::Pending
                }
            },
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match this.deadlines.phase() {
            Phase::Head | Phase::Body if !buf.is_empty() => this.deadlines.on_write(buf),
            Phase::WebSocket => {
                let written = this.poll_write_frames(cx, buf);
                return this.bounded_write(written, cx);
            }
            _ => {}
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bounded_write(written, cx)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        this.bounded_write(flushed, cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Lingering::No = this.lingering {
            let closed = Pin::new(&mut this.inner).poll_shutdown(cx);
            match this.bounded_write(closed, cx) {
                Poll::Ready(Ok(())) if this.lingers() => {
                    this.lingering = Lingering::Draining(Box::new(Drainer {
                        until: Box::pin(tokio::time::sleep(this.linger)),
                        scrap: vec![0; 16 * 1024].into_boxed_slice(),
                    }));
                }
                // Closed: a second shutdown (the request path's, then
                // Pingora's) finds it done.
                Poll::Ready(Ok(())) => {
                    this.lingering = Lingering::Done;
                    return Poll::Ready(Ok(()));
                }
                other => return other,
            }
        }
        this.poll_linger(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match this.deadlines.phase() {
            Phase::Head | Phase::Body => {
                if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                    this.deadlines.on_write(first);
                }
            }
            Phase::WebSocket => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
                let written = this.poll_write_frames(cx, first);
                return this.bounded_write(written, cx);
            }
            _ => {}
        }
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bounded_write(written, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S> Guarded<S> {
    /// Whether this close lingers: the request path asked for it
    /// ([`ConnFacts::linger_on_close`]) and it is configured.
    fn lingers(&self) -> bool {
        !self.linger.is_zero()
            && self
                .facts
                .as_deref()
                .and_then(ConnFacts::in_digest)
                .is_some_and(|f| f.linger.load(Ordering::Relaxed))
    }

    /// A lingering close is over (`end`: how, the metric's label).
    fn lingered(&mut self, end: &str) -> Poll<std::io::Result<()>> {
        self.lingering = Lingering::Done;
        self.metrics.lingering_closes.with_label_values(&[end]).inc();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> Guarded<S> {
    /// A lingering close, writes shut already: read and drop what the
    /// client still sends until it closes (or fails), or the bound passes.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Lingering::Draining(d) = &mut self.lingering else {
            return Poll::Ready(Ok(()));
        };
        let mut waiting = false;
        for _ in 0..LINGER_READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut d.scrap);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                // The client closed, or the connection failed.
                Poll::Ready(_) => return self.lingered("client_closed"),
                Poll::Pending => {
                    waiting = true;
                    break;
                }
            }
        }
        if d.until.as_mut().poll(cx).is_ready() {
            return self.lingered("bound");
        }
        if !waiting {
            // Read all it may in one go: let other tasks run first.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// WebSocket writes: frames are followed, and nothing more is sent once
    /// the close frame went out (the data is dropped: the connection ends).
    fn poll_write_frames(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.closing.is_some() {
            return Poll::Ready(Ok(buf.len()));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.frames.feed(&buf[..n]);
            if self.frames.at_boundary() {
                if let Some(w) = self.close_waker.take() {
                    w.wake();
                }
            }
        }
        written
    }
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("phase", &self.deadlines.phase())
            .finish()
    }
}

#[async_trait]
impl<S: Shutdown + Send> Shutdown for Guarded<S> {
    async fn shutdown(&mut self) {
        // Closing writes too (TLS: close_notify): bounded like any write.
        let _ = tokio::time::timeout(self.send_timeout, self.inner.shutdown()).await;
    }
}

impl<S: UniqueID> UniqueID for Guarded<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl> Ssl for Guarded<S> {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: GetTimingDigest> GetTimingDigest for Guarded<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl<S> GetProxyDigest for Guarded<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.facts.clone()
    }
}

impl<S: GetSocketDigest> GetSocketDigest for Guarded<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl<S: Peek + Send> Peek for Guarded<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_normalised_at_the_handshake() {
        assert_eq!(Sni::from_hello(None), Sni::Absent);
        assert_eq!(
            Sni::from_hello(Some("Acme.MyApp.Test.")),
            Sni::Name(Arc::from("acme.myapp.test"))
        );
        assert_eq!(Sni::from_hello(Some("bad name!")), Sni::Invalid);
    }

    #[test]
    fn a_timer_is_reset_only_when_it_would_wake_too_late_or_not_at_all() {
        // The next idle deadline is later: the pending timer wakes early, kept.
        assert!(!rearm(10, false, 20));
        assert!(!rearm(10, false, 10));
        // A head deadline sooner than the idle one armed: reset.
        assert!(rearm(20, false, 10));
        // Fired already: reset whatever it was set for.
        assert!(rearm(10, true, 20));
    }
}
