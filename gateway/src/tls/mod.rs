//! TLS at the edge: the certificate store (name → certified key, chosen by
//! SNI) and our own accept path (tokio-rustls `LazyConfigAcceptor`) feeding
//! decrypted streams to Pingora's HTTP proxy app.

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
