//! TLS at the edge: the certificate store (`store`: name → certified key,
//! chosen by SNI) and our own accept path (`accept`: tokio-rustls
//! `LazyConfigAcceptor`) feeding decrypted streams to Pingora's HTTP proxy
//! app. `acme`: certificates ordered for custom domains; `files`: the
//! certificates named by `[tls]`; `devcerts`: a local CA and its
//! certificates for development; [`provider`]: the one crypto provider.

pub mod accept;
pub mod acme;
pub mod devcerts;
pub mod files;
pub mod store;

use std::sync::Arc;

/// The one crypto provider everything TLS in the gateway uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
