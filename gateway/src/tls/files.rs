//! The certificates named by `[tls]`, loaded from files (at start, on
//! SIGHUP and on the operator API's reload), and their expiry metrics.

use anyhow::Context;

use super::store::{Cert, CertStore};
use crate::config::{TlsConfig, UnknownSni};
use crate::metrics::Metrics;

/// Certificates named by `[tls]`: the configured pairs, the cert directory, the default.
pub fn load_certs(cfg: &TlsConfig) -> anyhow::Result<(Vec<Cert>, Option<Cert>)> {
    let mut certs = Vec::new();
    for (i, files) in cfg.certificates.iter().enumerate() {
        certs.push(Cert::load(files).with_context(|| format!("config key `tls.certificates[{i}]`"))?);
    }
    if let Some(dir) = &cfg.cert_dir {
        for files in super::store::dir_pairs(dir).context("config key `tls.cert_dir`")? {
            certs.push(Cert::load(&files).context("config key `tls.cert_dir`")?);
        }
    }
    let default = match (&cfg.unknown_sni, &cfg.default_certificate) {
        (UnknownSni::Default, Some(files)) => Some(Cert::load(files).context("config key `tls.default_certificate`")?),
        _ => None,
    };
    Ok((certs, default))
}

/// Log what is loaded and export each name's expiry.
pub fn publish_cert_metrics(store: &CertStore, metrics: &Metrics) {
    metrics.cert_expiry.reset();
    for cert in store.all() {
        tracing::info!(names = ?cert.names, not_after = cert.not_after, source = %cert.source, "certificate loaded");
        for name in &cert.names {
            metrics
                .cert_expiry
                .with_label_values(&[name.as_str()])
                .set(cert.not_after);
        }
    }
}
