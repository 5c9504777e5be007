//! Answering the CA's validation, from any gateway of the fleet: HTTP-01
//! key authorizations and TLS-ALPN-01 challenge certificates come from
//! `tenant_gateway.acme_challenges` over the answers' own connections, at
//! most `acme.challenge_rate` lookups a second per client address.

use super::*;

/// Whether `limit` lets `client` (by address, IPv6 /64) cause one more
/// lookup (no limit, or no address: yes).
fn admit(
    limit: Option<&governor::DefaultKeyedRateLimiter<std::net::IpAddr>>,
    client: Option<std::net::IpAddr>,
) -> bool {
    match (limit, client) {
        (Some(limit), Some(ip)) => limit.check_key(&crate::conn::limits::client_key(ip)).is_ok(),
        _ => true,
    }
}

impl Acme {
    /// Whether a client may cause one more challenge lookup of `kind`
    /// (`acme.challenge_rate`, per address or IPv6 /64): a flood from one
    /// client is refused before it reaches the answers' two connections,
    /// where it would queue the CA's own validations behind it. Refusals
    /// are counted by kind.
    pub fn admit_challenge(&self, client: Option<std::net::IpAddr>, kind: &'static str) -> bool {
        if admit(self.challenge_limit.as_ref(), client) {
            return true;
        }
        self.metrics.acme_challenges_refused.with_label_values(&[kind]).inc();
        false
    }

    /// Whether a client's handshake may load a stored certificate
    /// (`acme.load_rate`, per address or IPv6 /64): a client cycling
    /// through names not in memory would otherwise keep the ACME
    /// connections busy with its loads, and other tenants' first
    /// handshakes (and the orders) would wait behind them. Refusals are
    /// counted as loads refused.
    pub(super) fn admit_load(&self, client: Option<std::net::IpAddr>) -> bool {
        if admit(self.load_limit.as_ref(), client) {
            return true;
        }
        self.metrics.certificate_loads.with_label_values(&["refused"]).inc();
        false
    }

    /// Forget the limits' idle clients (called every minute).
    pub fn sweep(&self) {
        for limit in [&self.challenge_limit, &self.load_limit].into_iter().flatten() {
            limit.retain_recent();
            limit.shrink_to_fit();
        }
    }

    /// The key authorization for an HTTP-01 token, if a challenge is pending.
    pub async fn http01(&self, token: &str) -> Option<String> {
        if token.is_empty()
            || token.len() > 128
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        self.challenge_answer("http-01", token).await
    }

    /// A pending challenge's key authorization, from the answers' own pool.
    pub(super) async fn challenge_answer(&self, kind: &'static str, key: &str) -> Option<String> {
        let query = sqlx::query_scalar(
            "SELECT key_authorization FROM tenant_gateway.acme_challenges WHERE kind = $1 AND key = $2",
        )
        .bind(kind)
        .bind(key)
        .fetch_optional(&self.answers);
        match bounded_by(ANSWER_DEADLINE, "reading a challenge answer", query).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(kind, key, error = %e, "ACME: cannot read the challenge answer");
                None
            }
        }
    }

    /// The TLS-ALPN-01 challenge certificate for a name, if a challenge is pending.
    pub async fn alpn_key(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let ka = self.challenge_answer("tls-alpn-01", name).await?;
        if let Some(key) = self.alpn_keys.lock().get(name, &ka) {
            return Some(key);
        }
        let key = match alpn_challenge_key(name, &ka) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::warn!(name, error = %e, "cannot build the TLS-ALPN-01 certificate");
                return None;
            }
        };
        self.alpn_keys
            .lock()
            .insert(name, ka, key.clone(), std::time::Instant::now());
        Some(key)
    }
}

/// TLS-ALPN-01 challenge certificates built for the CA's validation
/// handshakes (it makes several, from several places, for one challenge),
/// by name with the key authorization each was built for. Each is kept for
/// one order's length (`ORDER_DEADLINE`), after which its challenge is
/// over: an insert drops the older ones, so the map holds the names
/// validated lately, not every name this process ever answered for.
#[derive(Default)]
pub(super) struct AlpnKeys(HashMap<String, AlpnKey>);

struct AlpnKey {
    key_authorization: String,
    key: Arc<CertifiedKey>,
    built: std::time::Instant,
}

impl AlpnKeys {
    /// The certificate built for `name` and this key authorization.
    pub(super) fn get(&self, name: &str, key_authorization: &str) -> Option<Arc<CertifiedKey>> {
        self.0
            .get(name)
            .filter(|k| k.key_authorization == key_authorization)
            .map(|k| k.key.clone())
    }

    /// Keep `key` for `name`, dropping those built an order's length
    /// before `now`.
    pub(super) fn insert(
        &mut self,
        name: &str,
        key_authorization: String,
        key: Arc<CertifiedKey>,
        now: std::time::Instant,
    ) {
        self.0
            .retain(|_, k| now.saturating_duration_since(k.built) < ORDER_DEADLINE);
        self.0.insert(
            name.to_owned(),
            AlpnKey {
                key_authorization,
                key,
                built: now,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The self-signed certificate carrying the acmeIdentifier extension
/// (RFC 8737), served only to `acme-tls/1` ClientHellos. Its critical
/// extension makes webpki refuse it, so it is built as a `CertifiedKey`.
pub(super) fn alpn_challenge_key(name: &str, key_authorization: &str) -> Result<CertifiedKey, AcmeError> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(other)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate().map_err(other)?;
    let cert = params.self_signed(&key).map_err(other)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(other)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_certificate_is_built() {
        let k = alpn_challenge_key("shop.test", "token.thumbprint").unwrap();
        assert_eq!(k.cert.len(), 1);
    }

    #[test]
    fn alpn_certificates_are_kept_for_their_challenge_only() {
        let key = Arc::new(alpn_challenge_key("a.test", "ka-a").unwrap());
        let mut keys = AlpnKeys::default();
        let t0 = std::time::Instant::now();
        keys.insert("a.test", "ka-a".into(), key.clone(), t0);
        assert!(keys.get("a.test", "ka-a").is_some());
        assert!(keys.get("a.test", "ka-new").is_none(), "another challenge's answer");
        assert!(keys.get("b.test", "ka-a").is_none());
        keys.insert("b.test", "ka-b".into(), key.clone(), t0 + ORDER_DEADLINE / 2);
        assert_eq!(keys.len(), 2, "both challenges may still be validated");
        // An order's length later, a.test's challenge is over.
        keys.insert("c.test", "ka-c".into(), key, t0 + ORDER_DEADLINE);
        assert!(keys.get("a.test", "ka-a").is_none());
        assert!(keys.get("b.test", "ka-b").is_some() && keys.get("c.test", "ka-c").is_some());
        assert_eq!(keys.len(), 2);
    }
}
