//! The ACME protocol through instant-acme: the account (stored sealed, shared
//! by the fleet), and an order for one name with the configured challenge
//! types in preference order.

use super::*;

/// What the database holds as the directory's account.
pub(super) enum Stored {
    None,
    Account(Account),
    /// Stored, but no configured key opens it (or it does not parse).
    Unreadable {
        enc: Vec<u8>,
        why: AcmeError,
    },
}

impl Acme {
    pub(super) async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let account = self.load_or_create_account().await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    pub(super) fn account_builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        Ok(match &self.cfg.ca_root {
            Some(root) => Account::builder_with_root(root)?,
            None => Account::builder()?,
        })
    }

    /// The directory's stored account credentials, sealed, if any.
    async fn stored_credentials(&self, dir: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        bounded(
            "loading the ACME account",
            sqlx::query_scalar("SELECT credentials_enc FROM tenant_gateway.acme_accounts WHERE directory = $1")
                .bind(dir)
                .fetch_optional(&self.db),
        )
        .await
    }

    /// Before an order is logged: why it cannot go ahead, if the account it
    /// needs is one this process has not loaded yet, stored under a key of
    /// no other gateway's that this one has not either, while another key is
    /// live (the order would find it unusable and must not replace it). An
    /// account in use (its lock held) is taken to be loaded.
    pub(super) async fn account_conflict(&self) -> Result<Option<String>, AcmeError> {
        if self.account.try_lock().map_or(true, |a| a.is_some()) {
            return Ok(None);
        }
        let dir = &self.cfg.directory_url;
        let Some(enc) = self.stored_credentials(dir).await? else {
            return Ok(None);
        };
        if self.seal.open(&format!("account:{dir}"), &enc).is_ok() || !self.other_key_live().await? {
            return Ok(None);
        }
        Ok(Some(left_for_other_key("ACME account")))
    }

    /// The stored account for the directory, if any (decrypted).
    pub(super) async fn stored_account(&self, dir: &str, aad: &str) -> Result<Stored, AcmeError> {
        let Some(enc) = self.stored_credentials(dir).await? else {
            return Ok(Stored::None);
        };
        let creds = self
            .seal
            .open(aad, &enc)
            .and_then(|plain| serde_json::from_slice::<AccountCredentials>(&plain).map_err(other));
        match creds {
            Ok(creds) => Ok(Stored::Account(self.account_builder()?.from_credentials(creds).await?)),
            Err(e) => Ok(Stored::Unreadable {
                enc,
                why: AcmeError::Unreadable {
                    what: "ACME account".into(),
                    why: e.to_string(),
                },
            }),
        }
    }

    /// The stored account, or a new one (stored encrypted). No lock is held
    /// across the CA exchange: when two gateways create one at once, the
    /// first stored wins and the other's stays unused at the CA. A stored
    /// account no configured key opens is replaced by the new one (only
    /// while it is still the one read); each process creates at most one,
    /// as it keeps its account for its lifetime.
    pub(super) async fn load_or_create_account(&self) -> Result<Account, AcmeError> {
        let dir = &self.cfg.directory_url;
        let aad = format!("account:{dir}");
        let unreadable = match self.stored_account(dir, &aad).await? {
            Stored::Account(account) => return Ok(account),
            Stored::None => None,
            Stored::Unreadable { enc, why } => {
                if self.other_key_live().await? {
                    return Err(other(format!("{} ({why})", left_for_other_key("ACME account"))));
                }
                tracing::warn!(directory = %dir, error = %why, "ACME: the stored account cannot be used (sealed under a key no longer configured, or damaged); creating a new one");
                Some(enc)
            }
        };
        let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
        let eab = match &self.cfg.eab {
            Some(e) => {
                use base64::Engine;
                let raw =
                    std::env::var(&e.hmac_key_env).map_err(|_| other(format!("{} is not set", e.hmac_key_env)))?;
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(raw.trim())
                    .map_err(other)?;
                Some(ExternalAccountKey::new(e.kid.clone(), &key))
            }
            None => None,
        };
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = self
            .account_builder()?
            .create(&new, dir.to_owned(), eab.as_ref())
            .await?;
        let enc = self.seal.seal(&aad, &serde_json::to_vec(&creds).map_err(other)?)?;
        let query = match unreadable {
            None => sqlx::query(
                "INSERT INTO tenant_gateway.acme_accounts (directory, credentials_enc) VALUES ($1, $2)
                 ON CONFLICT (directory) DO NOTHING",
            )
            .bind(dir)
            .bind(enc),
            Some(old) => sqlx::query(
                "UPDATE tenant_gateway.acme_accounts SET credentials_enc = $2
                  WHERE directory = $1 AND credentials_enc = $3",
            )
            .bind(dir)
            .bind(enc)
            .bind(old),
        };
        let stored = bounded("storing the ACME account", query.execute(&self.db)).await?;
        if stored.rows_affected() == 0 {
            if let Stored::Account(theirs) = self.stored_account(dir, &aad).await? {
                tracing::info!(directory = %dir, "ACME: another gateway stored an account first; using it");
                return Ok(theirs);
            }
        }
        tracing::info!(directory = %dir, "ACME: account created");
        Ok(account)
    }

    /// Try each configured challenge type in turn.
    pub(super) async fn order(&self, name: &str) -> Result<(String, String), AcmeError> {
        let result = self.order_each(name).await;
        if let Err(e) = &result {
            // The CA no longer knows our account (e.g. it was wiped): start over next time.
            if e.account_unknown() {
                tracing::warn!(directory = %self.cfg.directory_url, "ACME: account unknown to the CA; a new one will be created");
                *self.account.lock().await = None;
                bounded(
                    "forgetting the ACME account",
                    sqlx::query("DELETE FROM tenant_gateway.acme_accounts WHERE directory = $1")
                        .bind(&self.cfg.directory_url)
                        .execute(&self.db),
                )
                .await?;
            }
        }
        result
    }

    pub(super) async fn order_each(&self, name: &str) -> Result<(String, String), AcmeError> {
        let account = self.account().await?;
        let mut last = AcmeError::Other("no challenge type configured".into());
        for kind in &self.cfg.challenges {
            match self.order_with(&account, name, *kind).await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    tracing::warn!(name, challenge = ?kind, error = %e, "ACME: order failed with this challenge");
                    bounded(
                        "clearing challenges",
                        sqlx::query("DELETE FROM tenant_gateway.acme_challenges WHERE name = $1")
                            .bind(name)
                            .execute(&self.db),
                    )
                    .await?;
                    last = e;
                }
            }
        }
        Err(last)
    }

    pub(super) async fn order_with(
        &self,
        account: &Account,
        name: &str,
        kind: ChallengeKind,
    ) -> Result<(String, String), AcmeError> {
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other_status => return Err(other(format!("authorization is {other_status:?}"))),
                }
                let ctype = match kind {
                    ChallengeKind::Http01 => ChallengeType::Http01,
                    ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
                };
                let mut challenge = authz
                    .challenge(ctype)
                    .ok_or_else(|| other(format!("the CA offers no {kind:?} challenge")))?;
                let ka = challenge.key_authorization();
                let (db_kind, key) = match kind {
                    ChallengeKind::Http01 => ("http-01", challenge.token.clone()),
                    ChallengeKind::TlsAlpn01 => ("tls-alpn-01", name.to_owned()),
                };
                bounded(
                    "publishing the challenge",
                    sqlx::query(
                        "INSERT INTO tenant_gateway.acme_challenges (kind, key, name, key_authorization) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, key) DO UPDATE SET key_authorization = EXCLUDED.key_authorization, created_at = now()",
                    )
                    .bind(db_kind)
                    .bind(&key)
                    .bind(name)
                    .bind(ka.as_str())
                    .execute(&self.db),
                )
                .await?;
                challenge.set_ready().await?;
            }
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .timeout(Duration::from_secs(60));
        let status = order.poll_ready(&policy).await?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .and_then(|p| p.detail.clone())
                .unwrap_or_else(|| format!("{status:?}"));
            return Err(other(format!("order not ready: {detail}")));
        }
        let key = rcgen::KeyPair::generate().map_err(other)?;
        let csr = rcgen::CertificateParams::new(vec![name.to_owned()])
            .and_then(|p| p.serialize_request(&key))
            .map_err(other)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&policy).await?;
        Ok((chain, key.serialize_pem()))
    }
}

/// The end of an order attempt inside its final transaction: the order
/// row's result, and the name's challenges gone.
pub(super) async fn end_order(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
    order_id: i64,
    result: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tenant_gateway.acme_orders SET result = $2 WHERE id = $1")
        .bind(order_id)
        .bind(result)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM tenant_gateway.acme_challenges WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
