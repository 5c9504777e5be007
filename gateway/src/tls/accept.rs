//! Our TLS handshake. Pingora 0.9's rustls listener takes one static
//! certificate, so the HTTPS listener ([`crate::conn::listener`]) runs this
//! handshake instead: read the ClientHello with tokio-rustls'
//! `LazyConfigAcceptor` (SNI, ALPN), answer TLS-ALPN-01 validation, wait
//! (bounded) for an on-demand certificate, finish the handshake under a total
//! deadline, and hand the decrypted stream to Pingora's HTTP app.
//!
//! Pingora learns the negotiated ALPN (HTTP/2 vs 1.1) from
//! `Ssl::selected_alpn_proto`, the client address from the socket digest,
//! and that the connection is TLS from the SSL digest. The SNI travels with
//! the connection itself ([`ConnFacts`]) for the Host/SNI (421) check.

use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest, UniqueID,
    UniqueIDType, ALPN,
};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::acme::Acme;
use super::store::CertStore;
use crate::conn::listener::Handshake;
use crate::conn::stream::{ConnFacts, Sni};
use crate::metrics::Metrics;

/// Picks the certificate for each handshake from the store.
#[derive(Debug)]
struct StoreResolver(Arc<CertStore>);

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.resolve(hello.server_name()).map(|c| c.key.clone())
    }
}

/// The server config shared by every handshake: TLS 1.2 and 1.3, rustls'
/// default ciphers, ALPN h2 + http/1.1, certificates from the store,
/// resumption (tickets and a session cache) unless disabled.
pub fn server_config(store: Arc<CertStore>, resumption: bool) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if resumption {
        cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        cfg.session_storage = ServerSessionMemoryCache::new(20_000);
    } else {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}

/// ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug)]
struct FixedKey(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A one-off config presenting the TLS-ALPN-01 challenge certificate.
fn challenge_config(key: Arc<CertifiedKey>) -> std::io::Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedKey(key)));
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Plaintext buffered until Pingora flushes (as its own plain-TCP stream
/// does): a response's head and body leave as one TLS record and one write
/// instead of one each.
const TLS_WRITE_BUFFER: usize = 16 * 1024;

/// A decrypted TLS connection, as Pingora's HTTP stack sees it.
pub struct TlsConn {
    tls: tokio::io::BufWriter<tokio_rustls::server::TlsStream<TcpStream>>,
    fd: RawFd,
    socket_digest: Arc<SocketDigest>,
    ssl_digest: Arc<SslDigest>,
    alpn: Option<ALPN>,
    established: SystemTime,
    handshake: Duration,
    /// Counts this connection in `tls_connections` while it lives.
    metrics: Arc<Metrics>,
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.metrics.tls_connections.dec();
    }
}

impl TlsConn {
    fn new(tls: tokio_rustls::server::TlsStream<TcpStream>, handshake: Duration, metrics: Arc<Metrics>) -> TlsConn {
        metrics.tls_connections.inc();
        let (tcp, conn) = tls.get_ref();
        let fd = tcp.as_raw_fd();
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown");
        let version = conn.protocol_version().and_then(|v| v.as_str()).unwrap_or("unknown");
        let ssl_digest = Arc::new(SslDigest::new(cipher, version, None, None, Vec::new()));
        TlsConn {
            socket_digest: Arc::new(SocketDigest::from_raw_fd(fd)),
            tls: tokio::io::BufWriter::with_capacity(TLS_WRITE_BUFFER, tls),
            fd,
            ssl_digest,
            alpn,
            established: SystemTime::now(),
            handshake,
            metrics,
        }
    }
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("fd", &self.fd)
            .field("alpn", &self.alpn)
            .finish()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.tls).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.fd as UniqueIDType
    }
}

impl Ssl for TlsConn {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.ssl_digest.clone())
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.established,
            establishment_duration: Some(self.handshake),
            ..TimingDigest::default()
        })]
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.socket_digest.clone())
    }
}

#[async_trait]
impl Peek for TlsConn {}

/// The HTTPS listener's handshake step.
pub struct TlsHandshake {
    pub config: Arc<ServerConfig>,
    pub store: Arc<CertStore>,
    pub acme: Option<Arc<Acme>>,
    /// Total deadline from accept to a finished handshake.
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl TlsHandshake {
    async fn run(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<Arc<str>>)> {
        let peer = tcp.peer_addr().ok().map(|a| a.ip());
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
        let hello = start.client_hello();
        let sni: Option<Arc<str>> = hello.server_name().map(Arc::from);
        let acme_tls = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if let (Some(acme), Some(name)) = (&self.acme, &sni) {
            if acme_tls {
                // TLS-ALPN-01 validation: answer with the challenge certificate, then close.
                if !acme.admit_challenge(peer, "tls-alpn-01") {
                    return Err(std::io::Error::other("acme-tls/1: over acme.challenge_rate"));
                }
                let key = acme
                    .alpn_key(name)
                    .await
                    .ok_or_else(|| std::io::Error::other("no TLS-ALPN-01 challenge"))?;
                let mut tls = start.into_stream(challenge_config(key)?).await?;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                return Err(std::io::Error::other("acme-tls/1 validation answered"));
            }
            if self.store.lookup(name).is_none() {
                // On demand: an eligible name waits (bounded) for its certificate.
                acme.on_demand(name, peer).await;
            }
        }
        let tls = start.into_stream(self.config.clone()).await?;
        Ok((tls, sni))
    }
}

#[async_trait]
impl Handshake for TlsHandshake {
    type Stream = TlsConn;

    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Option<(TlsConn, ConnFacts)> {
        let _ = tcp.set_nodelay(true);
        let started = std::time::Instant::now();
        let (tls, sni) = match tokio::time::timeout(self.timeout, self.run(tcp)).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                self.metrics.tls_handshakes.with_label_values(&["failed"]).inc();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                self.metrics.tls_handshakes.with_label_values(&["timeout"]).inc();
                self.metrics.deadline_hits.with_label_values(&["tls_handshake"]).inc();
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        };
        self.metrics.tls_handshakes.with_label_values(&["ok"]).inc();
        let facts = ConnFacts::new(Some(Sni::from_hello(sni.as_deref())));
        Some((TlsConn::new(tls, started.elapsed(), self.metrics.clone()), facts))
    }
}
