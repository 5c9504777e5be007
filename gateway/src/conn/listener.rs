//! One listener as a Pingora service: accept, admit under the connection
//! caps (refusing cheaply: the socket is closed at once and the refusal
//! counted), run the listener's handshake (none for plain HTTP, TLS for
//! HTTPS), wrap the stream in [`Guarded`] and hand it to Pingora's HTTP
//! app. Every listener goes through here, so all get the same deadlines:
//! the two public ones share the public caps, the admin listener has its
//! own (`admin.max_connections`).
//!
//! The socket is bound by the caller before the server starts (a port in
//! use is a start-up error naming the config key, not a failure inside a
//! running service), and entered in Pingora's table of listening sockets,
//! which a graceful upgrade (SIGQUIT) hands to the new process. In that new
//! process (`gateway --upgrade`) the socket comes from the table instead: the
//! same listening socket, so no connection is refused during the hand-off.
//! Connections are spread over the proxy's runtime threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use std::os::unix::io::AsRawFd;

use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest, UniqueID,
    UniqueIDType, IO,
};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use tokio::net::{TcpListener, TcpStream};

use super::deadline::{ConnDeadlines, Timeouts};
use super::drain::Drain;
use super::limits::ConnLimits;
use super::stream::{ConnFacts, Guarded, Guards};
use crate::metrics::Metrics;

/// What a listener does between accepting a connection and serving HTTP on it.
#[async_trait]
pub trait Handshake: Send + Sync + 'static {
    type Stream: IO + Ssl;
    /// `None`: the connection ends here (failed handshake, ACME validation answered).
    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Option<(Self::Stream, ConnFacts)>;
}

/// Plain HTTP: the TCP stream with a write buffer.
pub struct Plain;

#[async_trait]
impl Handshake for Plain {
    type Stream = PlainConn;
    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Option<(Self::Stream, ConnFacts)> {
        let _ = tcp.set_nodelay(true);
        // As Pingora's own listener does: the digest answers the client address.
        let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        Some((PlainConn::new(tcp, digest), ConnFacts::new(None)))
    }
}

/// Bytes buffered until Pingora flushes: Pingora's own listener gives its
/// streams a buffer of one segment; `Stream::from(TcpStream)` gets none
/// (the setting is crate-private), and without one a response's head and
/// body leave in two `sendto`s instead of one (bench/RESULTS.md: one system
/// call more per request, ~3 µs of kernel time on this machine).
const PLAIN_WRITE_BUFFER: usize = 1460;

/// A plain TCP connection, as Pingora's HTTP stack sees it.
pub struct PlainConn {
    tcp: tokio::io::BufWriter<TcpStream>,
    fd: std::os::unix::io::RawFd,
    socket_digest: Arc<SocketDigest>,
    established: std::time::SystemTime,
}

impl PlainConn {
    fn new(tcp: TcpStream, digest: SocketDigest) -> PlainConn {
        PlainConn {
            fd: tcp.as_raw_fd(),
            tcp: tokio::io::BufWriter::with_capacity(PLAIN_WRITE_BUFFER, tcp),
            socket_digest: Arc::new(digest),
            established: std::time::SystemTime::now(),
        }
    }
}

impl std::fmt::Debug for PlainConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainConn").field("fd", &self.fd).finish()
    }
}

impl tokio::io::AsyncRead for PlainConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PlainConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for PlainConn {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.tcp).await;
    }
}

impl UniqueID for PlainConn {
    fn id(&self) -> UniqueIDType {
        self.fd as UniqueIDType
    }
}

impl Ssl for PlainConn {}

impl GetTimingDigest for PlainConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.established,
            ..TimingDigest::default()
        })]
    }
}

impl GetProxyDigest for PlainConn {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for PlainConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.socket_digest.clone())
    }
}

#[async_trait]
impl Peek for PlainConn {}

pub struct Listener<A, H> {
    /// The service name and the `listener` label of its metrics.
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Bound at start-up; `None` when upgrading (taken from the table).
    pub socket: Option<std::net::TcpListener>,
    pub app: Arc<A>,
    pub handshake: Arc<H>,
    pub limits: Arc<ConnLimits>,
    pub timeouts: Timeouts,
    pub metrics: Arc<Metrics>,
    /// Started when this listener stops accepting (shared by all listeners).
    pub drain: Arc<Drain>,
}

/// How long after the listener closes idle connections are closed (within
/// the shutdown grace period): a client that just connected gets its
/// request served instead of a closed connection.
const IDLE_CLOSE_DELAY: Duration = Duration::from_secs(1);

/// Accept queue length asked of the kernel (capped by `net.core.somaxconn`):
/// a burst of connections waits there instead of being dropped and retried.
const BACKLOG: i32 = 65_535;

/// Bind `addr` now (blocking; at start-up).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static, H: Handshake> Service for Listener<A, H> {
    async fn start_service(&mut self, fds: Option<ListenFds>, mut shutdown: ShutdownWatch, _per_fd: usize) {
        let socket = match socket_for(self.addr, self.socket.take(), fds.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(listener = self.name, addr = %self.addr, error = %e, "no listening socket");
                return;
            }
        };
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = self.name, error = %e, "cannot register the listening socket");
                return;
            }
        };
        let addr = listener.local_addr().ok();
        tracing::info!(listener = self.name, addr = ?addr, "listener ready");
        let open = self.metrics.connections_open.with_label_values(&[self.name]);
        let refused = |reason: &str| self.metrics.connections_refused.with_label_values(&[self.name, reason]);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors (or similar): back off briefly.
                        refused("accept_error").inc();
                        tracing::warn!(listener = self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            };
            let permit = match self.limits.admit(peer.ip()) {
                Ok(p) => p,
                Err(why) => {
                    refused(why.label()).inc();
                    tracing::debug!(listener = self.name, %peer, reason = why.label(), "connection refused");
                    // Dropping the socket closes it.
                    continue;
                }
            };
            let (app, handshake, timeouts) = (self.app.clone(), self.handshake.clone(), self.timeouts);
            let guards = Guards {
                permit,
                drain: self.drain.clone(),
                metrics: self.metrics.clone(),
                send_timeout: timeouts.send,
                linger: timeouts.linger,
            };
            let (open, shutdown) = (open.clone(), shutdown.clone());
            let accepted_at = Instant::now();
            pingora_runtime::current_handle().spawn(async move {
                open.inc();
                let _open = OnDrop(|| open.dec());
                let Some((stream, facts)) = handshake.handshake(tcp, peer).await else {
                    return;
                };
                let deadlines = |h2: bool| {
                    if h2 {
                        ConnDeadlines::http2(timeouts, accepted_at)
                    } else {
                        ConnDeadlines::http1(timeouts, accepted_at)
                    }
                };
                let mut stream: pingora_core::protocols::Stream =
                    Box::new(Guarded::new(stream, deadlines, facts, guards));
                while let Some(next) = app.process_new(stream, &shutdown).await {
                    stream = next;
                }
            });
        }
        tracing::info!(listener = self.name, "listener closed");
        // Upgraded WebSocket connections say goodbye (close frame 1001).
        self.drain.start();
        // Connections accepted just before the close may not have sent their
        // first request yet: give them a moment (their responses say
        // `Connection: close`), then wake the idle keep-alive connections so
        // they close.
        tokio::time::sleep(IDLE_CLOSE_DELAY).await;
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        self.name
    }
}

/// This listener's socket: the one bound at start-up (entered in the table
/// so an upgrade hands it on), or the one an upgrade handed over, or (an
/// address the old process did not listen on) a new one.
fn socket_for(
    addr: SocketAddr,
    bound: Option<std::net::TcpListener>,
    fds: Option<&ListenFds>,
) -> std::io::Result<std::net::TcpListener> {
    let key = addr.to_string();
    match (bound, fds) {
        (Some(socket), Some(fds)) => {
            fds.lock().add(key, socket.as_raw_fd());
            Ok(socket)
        }
        (Some(socket), None) => Ok(socket),
        (None, fds) => match fds.and_then(|f| f.lock().get(&key).copied()) {
            Some(fd) => {
                let socket = crate::sys::listener_from_fd(fd);
                socket.set_nonblocking(true)?;
                tracing::info!(%addr, "listening socket taken over from the previous process");
                Ok(socket)
            }
            None => {
                let socket = bind(addr)?;
                if let Some(fds) = fds {
                    fds.lock().add(key, socket.as_raw_fd());
                }
                Ok(socket)
            }
        },
    }
}

/// Runs `f` when dropped (however the connection task ends).
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
