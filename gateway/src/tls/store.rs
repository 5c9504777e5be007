//! The certificate store: an in-memory map from host name to certified key,
//! swapped atomically on reload. Exact names win over wildcards; a wildcard
//! `*.myapp.com` covers exactly one label (`a.myapp.com`, not `a.b.myapp.com`,
//! not `myapp.com`). An unknown name gets the configured default certificate
//! or no certificate (the handshake fails with an alert): never another
//! tenant's certificate.
//!
//! File certificates are all in memory. Issued (ACME) certificates are a
//! bounded cache in front of PostgreSQL (`acme.certificate_cache_size`,
//! quick_cache's S3-FIFO: a scan of once-seen names does not flush the hot
//! ones): with 100,000 custom domains only the names being served are in
//! memory; `tls::acme` loads the others at their first handshake.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::CertFiles;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate has no usable DNS names")]
    NoNames,
    #[error("invalid certificate or key: {0}")]
    Invalid(String),
}

/// One certificate with what the store needs to know about it.
#[derive(Debug)]
pub struct Cert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the leaf's subjectAltName (lower-case; `*.x` for wildcards).
    pub names: Vec<String>,
    /// notBefore and notAfter, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// When renewal is due (unix seconds), as stored with an issued
    /// certificate (jittered); None: two thirds into the lifetime.
    pub renew_at: Option<i64>,
    /// Where it came from (file path or `runtime`), for logs.
    pub source: String,
}

impl Cert {
    /// Renewal is due at `renew_at`, or once a third of the lifetime remains.
    pub fn renewal_due(&self, now: i64) -> bool {
        let lifetime = (self.not_after - self.not_before).max(0);
        now >= self.renew_at.unwrap_or(self.not_after - lifetime / 3)
    }

    /// With the renewal time stored beside it.
    pub fn with_renew_at(mut self, renew_at: Option<i64>) -> Cert {
        self.renew_at = renew_at;
        self
    }

    /// Build from PEM text (chain, then key).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], source: &str) -> Result<Cert, CertError> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &chain_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Invalid(format!("certificate PEM: {e}")))?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| CertError::Invalid(format!("key PEM: {e}")))?
            .ok_or_else(|| CertError::Invalid("no private key in key PEM".into()))?;
        Cert::from_der(chain, key, source)
    }

    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        source: &str,
    ) -> Result<Cert, CertError> {
        let leaf = chain
            .first()
            .ok_or_else(|| CertError::Invalid("empty certificate chain".into()))?;
        let (names, not_before, not_after) = leaf_info(leaf)?;
        let signing_key = super::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertError::Invalid(format!("private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified
            .keys_match()
            .map_err(|e| CertError::Invalid(format!("key does not match certificate: {e}")))?;
        Ok(Cert {
            key: Arc::new(certified),
            names,
            not_before,
            not_after,
            renew_at: None,
            source: source.to_owned(),
        })
    }

    pub fn load(files: &CertFiles) -> Result<Cert, CertError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| CertError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        let chain = read(&files.cert_file)?;
        let key = read(&files.key_file)?;
        Cert::from_pem(&chain, &key, &files.cert_file.display().to_string()).map_err(|e| match e {
            CertError::File { .. } => e,
            other => CertError::File {
                path: files.cert_file.display().to_string(),
                reason: other.to_string(),
            },
        })
    }
}

/// DNS SANs, notBefore and notAfter of a leaf certificate.
pub fn leaf_info(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), CertError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| CertError::Invalid(format!("X.509: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let GeneralName::DNSName(n) = gn {
                names.push(n.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        return Err(CertError::NoNames);
    }
    Ok((
        names,
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

#[derive(Default)]
struct Snapshot {
    exact: HashMap<String, Arc<Cert>>,
    /// `*.myapp.com` is stored under `myapp.com`.
    wildcard: HashMap<String, Arc<Cert>>,
}

/// Issued certificates in memory, at most `acme.certificate_cache_size`.
type Issued =
    quick_cache::sync::Cache<String, Arc<Cert>, quick_cache::UnitWeighter, quick_cache::DefaultHashBuilder, Evicted>;

/// An evicted certificate's expiry series goes with it (the gauge covers
/// the certificates in memory).
#[derive(Clone, Default)]
struct Evicted(Option<prometheus::IntGaugeVec>);

impl quick_cache::Lifecycle<String, Arc<Cert>> for Evicted {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), name: String, _cert: Arc<Cert>) {
        if let Some(gauge) = &self.0 {
            let _ = gauge.remove_label_values(&[&name]);
        }
    }
}

/// Default bound on issued certificates in memory.
pub const ISSUED_CAPACITY: usize = 10_000;

/// Certificates by name. Cheap to read on every handshake.
pub struct CertStore {
    /// Certificates from config files and the cert directory (replaced on reload).
    files: RwLock<Arc<Snapshot>>,
    /// Certificates issued by ACME (from the database), by exact name; they
    /// win over file certificates and survive file reloads.
    issued: Issued,
    default: RwLock<Option<Arc<Cert>>>,
}

fn insert(snap: &mut Snapshot, cert: &Arc<Cert>) {
    for name in &cert.names {
        match name.strip_prefix("*.") {
            Some(parent) => snap.wildcard.insert(parent.to_owned(), cert.clone()),
            None => snap.exact.insert(name.clone(), cert.clone()),
        };
    }
}

impl CertStore {
    pub fn new() -> CertStore {
        CertStore::with_issued_capacity(ISSUED_CAPACITY, None)
    }

    /// At most `capacity` issued certificates in memory; `expiry`: the
    /// per-name expiry gauge, whose series leave with evicted certificates.
    pub fn with_issued_capacity(capacity: usize, expiry: Option<prometheus::IntGaugeVec>) -> CertStore {
        let capacity = capacity.max(1);
        CertStore {
            files: RwLock::new(Arc::default()),
            issued: Issued::with(
                capacity,
                capacity as u64,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                Evicted(expiry),
            ),
            default: RwLock::new(None),
        }
    }

    /// Replace the file-backed certificates (start-up and SIGHUP).
    pub fn replace_files(&self, certs: Vec<Cert>, default: Option<Cert>) {
        let mut snap = Snapshot::default();
        for c in certs {
            insert(&mut snap, &Arc::new(c));
        }
        *self.files.write() = Arc::new(snap);
        *self.default.write() = default.map(Arc::new);
    }

    /// Add or replace an issued certificate for its names; served from the next handshake.
    pub fn add_issued(&self, cert: Cert) {
        let cert = Arc::new(cert);
        for name in &cert.names {
            self.issued.insert(name.clone(), cert.clone());
        }
    }

    /// Issued certificates in memory.
    pub fn issued_len(&self) -> usize {
        self.issued.len()
    }

    /// Stop presenting the issued certificate of a name (retired: the name
    /// is no longer served). Whether there was one.
    pub fn remove_issued(&self, name: &str) -> bool {
        self.issued.remove(name).is_some()
    }

    /// Names with an issued certificate.
    pub fn issued_names(&self) -> Vec<String> {
        self.issued.iter().map(|(name, _)| name).collect()
    }

    /// The issued (ACME) certificate for exactly this name, if any.
    pub fn issued(&self, name: &str) -> Option<Arc<Cert>> {
        self.issued.get(name)
    }

    /// The certificate for an SNI name: issued, then exact file, then wildcard.
    pub fn lookup(&self, sni: &str) -> Option<Arc<Cert>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.issued(&sni) {
            return Some(c);
        }
        let files = self.files.read().clone();
        if let Some(c) = files.exact.get(&sni) {
            return Some(c.clone());
        }
        // One label only: the parent must itself have a dot (no `*.com`).
        let parent = sni.split_once('.').map(|(_, p)| p).filter(|p| p.contains('.'))?;
        files.wildcard.get(parent).cloned()
    }

    /// The certificate to present: the name's own, else the default (if configured).
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<Cert>> {
        sni.and_then(|s| self.lookup(s)).or_else(|| self.default.read().clone())
    }

    /// Every certificate with its names and expiry (for metrics).
    pub fn all(&self) -> Vec<Arc<Cert>> {
        let mut out: Vec<Arc<Cert>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let files = self.files.read().clone();
        let issued: Vec<Arc<Cert>> = self.issued.iter().map(|(_, c)| c).collect();
        for c in files.exact.values().chain(files.wildcard.values()).chain(issued.iter()) {
            if seen.insert(Arc::as_ptr(c)) {
                out.push(c.clone());
            }
        }
        out
    }
}

impl Default for CertStore {
    fn default() -> Self {
        CertStore::new()
    }
}

/// Certificate pairs found in a directory: `<name>.pem` with `<name>.key`.
pub fn dir_pairs(dir: &Path) -> Result<Vec<CertFiles>, CertError> {
    let rd = std::fs::read_dir(dir).map_err(|e| CertError::File {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut pairs = Vec::new();
    for entry in rd.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "pem") {
            let key: PathBuf = p.with_extension("key");
            if key.exists() {
                pairs.push(CertFiles {
                    cert_file: p,
                    key_file: key,
                });
            }
        }
    }
    pairs.sort_by(|a, b| a.cert_file.cmp(&b.cert_file));
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Cert {
        let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        Cert::from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn exact_beats_wildcard_and_wildcards_cover_one_label() {
        let store = CertStore::new();
        store.replace_files(vec![cert(&["*.myapp.com"]), cert(&["special.myapp.com"])], None);
        assert_eq!(store.lookup("a.myapp.com").unwrap().names, ["*.myapp.com"]);
        assert_eq!(store.lookup("A.MyApp.com.").unwrap().names, ["*.myapp.com"]);
        assert_eq!(store.lookup("special.myapp.com").unwrap().names, ["special.myapp.com"]);
        assert!(store.lookup("a.b.myapp.com").is_none());
        assert!(store.lookup("myapp.com").is_none());
        assert!(store.lookup("evil.com").is_none());
        assert!(store.resolve(Some("evil.com")).is_none());
        assert!(store.resolve(None).is_none());
    }

    #[test]
    fn default_and_reload() {
        let store = CertStore::new();
        store.replace_files(vec![cert(&["*.myapp.com"])], Some(cert(&["fallback.invalid"])));
        assert!(store.lookup("shop.example").is_none());
        assert_eq!(store.resolve(Some("shop.example")).unwrap().names, ["fallback.invalid"]);
        store.replace_files(
            vec![cert(&["*.myapp.com"]), cert(&["shop.example", "www.shop.example"])],
            None,
        );
        assert_eq!(
            store.lookup("www.shop.example").unwrap().names,
            ["shop.example", "www.shop.example"]
        );
        assert!(store.resolve(Some("other.example")).is_none());
        assert_eq!(store.all().len(), 2);
        // Issued certificates win and survive file reloads.
        store.add_issued(cert(&["shop.example"]));
        assert_eq!(store.lookup("shop.example").unwrap().names, ["shop.example"]);
        store.replace_files(vec![], None);
        assert!(store.lookup("shop.example").is_some());
        assert!(store.lookup("www.shop.example").is_none());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
        assert!(Cert::from_pem(a.cert.pem().as_bytes(), b.signing_key.serialize_pem().as_bytes(), "t").is_err());
    }
}
