//! The operator's actions on claims, shared by the CLI (`gateway hostnames
//! …`, straight to the database) and the operator API (`/api/v1/hostnames`):
//! argument checks, then the store, answered as JSON a product can show.

use serde_json::{json, Value};

use super::policy::{self, HostnameStatus, Method};
use super::settings::CustomDomainsConfig;
use super::store::{Claim, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("`{name}` is not a host name: {reason}")]
    BadName { name: String, reason: String },
    #[error("`{0}` is under a base domain (tenant.base_domains): it needs no claim")]
    BaseDomain(String),
    #[error("`{0}` is not a tenant schema name")]
    BadTenant(String),
    #[error("method `{0}` is not allowed here (custom_domains.methods)")]
    MethodNotAllowed(&'static str),
    #[error("unknown status `{0}`")]
    BadStatus(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the actions need to know of the config.
pub struct Ops<'a> {
    pub store: &'a Store,
    pub cfg: &'a CustomDomainsConfig,
    pub base_domains: &'a [String],
    pub strip_www: bool,
}

impl Ops<'_> {
    fn name(&self, raw: &str) -> Result<String, OpsError> {
        let name = super::claim_name(raw, self.strip_www).map_err(|e| OpsError::BadName {
            name: raw.to_owned(),
            reason: e.to_string(),
        })?;
        if let Some(reason) = super::not_a_domain(&name) {
            return Err(OpsError::BadName {
                name: raw.to_owned(),
                reason: reason.to_owned(),
            });
        }
        if !super::needs_claim(&name, self.base_domains) {
            return Err(OpsError::BaseDomain(name));
        }
        Ok(name)
    }

    /// Claim a name for a tenant; the answer carries the instructions.
    pub async fn add(
        &self,
        raw: &str,
        tenant: &str,
        method: Option<Method>,
        preverified: bool,
        actor: &str,
    ) -> Result<Value, OpsError> {
        let name = self.name(raw)?;
        if self.strip_www && name.starts_with("www.") {
            // `www.www.x` would be stored as `www.x`, and proven by where
            // `www.x` points: perhaps here as another tenant's `x` claim
            // covers it.
            return Err(OpsError::BadName {
                name: raw.to_owned(),
                reason: "with tenant.strip_www a claim covers its name and www. of it, so a name still \
                         starting with www. once one www. is stripped cannot be claimed"
                    .to_owned(),
            });
        }
        if !stamp::is_valid_tenant_name(tenant) {
            return Err(OpsError::BadTenant(tenant.to_owned()));
        }
        let method = method.unwrap_or_else(|| self.cfg.default_method());
        if !preverified && !self.cfg.methods.contains(&method) {
            return Err(OpsError::MethodNotAllowed(method.as_str()));
        }
        let claim = self
            .store
            .add(&name, tenant, method, self.cfg.verification_window, preverified, actor)
            .await?;
        Ok(self.describe(&claim).await)
    }

    /// A claim, its instructions, its certificate and its history.
    pub async fn status(&self, raw: &str) -> Result<Value, OpsError> {
        let name = self.name(raw)?;
        let claim = self
            .store
            .get(&name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.clone()))?;
        let mut v = self.describe(&claim).await;
        v["certificate"] = self.store.certificate(&name).await?;
        v["events"] = Value::Array(self.store.events(&name).await?);
        Ok(v)
    }

    /// One page of claims: `{"claims": [...], "next": N}`, `next` the
    /// name to pass as `after` for the following page (null on the last);
    /// `failing`: only claims whose names point elsewhere (rechecks).
    pub async fn list(
        &self,
        status: Option<&str>,
        after: Option<&str>,
        limit: i64,
        failing: bool,
    ) -> Result<Value, OpsError> {
        let status = status
            .map(|s| HostnameStatus::parse(s).ok_or_else(|| OpsError::BadStatus(s.to_owned())))
            .transpose()?;
        // One more than asked: whether a next page exists.
        let mut claims = self.store.list(status, after, limit.saturating_add(1), failing).await?;
        let more = usize::try_from(limit).is_ok_and(|l| claims.len() > l);
        if more {
            claims.pop();
        }
        let next = claims.last().filter(|_| more).map(|c| c.name.clone());
        Ok(serde_json::json!({
            "claims": claims
                .iter()
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                .collect::<Vec<_>>(),
            "next": next,
        }))
    }

    pub async fn retry(&self, raw: &str, actor: &str) -> Result<Value, OpsError> {
        let name = self.name(raw)?;
        let claim = self.store.retry(&name, self.cfg.verification_window, actor).await?;
        Ok(self.describe(&claim).await)
    }

    pub async fn remove(&self, raw: &str, actor: &str) -> Result<Value, OpsError> {
        let name = self.name(raw)?;
        let claim = self.store.remove(&name, actor).await?;
        Ok(self.describe(&claim).await)
    }

    /// The claim as JSON, with whether the gateway routes its name now: an
    /// active claim whose name the domain table maps to the claim's tenant
    /// (a row moved to another tenant keeps the name unrouted); with
    /// `custom_domains.verification = "none"`, whether the domain table
    /// maps the name at all (claims are not consulted); `null` when the
    /// database cannot tell (the action itself is done).
    async fn describe(&self, c: &Claim) -> Value {
        let mut v = serde_json::to_value(c).unwrap_or_else(|_| json!({}));
        let required = self.cfg.required();
        v["routed"] = match c.status == HostnameStatus::Active || !required {
            false => json!(false),
            true => match self.store.row_tenant(&c.name).await {
                Ok(row) => json!(match required {
                    true => row.is_some_and(|t| policy::routes(&t, Some((c.status, &c.tenant)))),
                    false => row.is_some(),
                }),
                Err(e) => {
                    tracing::warn!(name = %c.name, error = %e, "custom hostnames: cannot read the domain row");
                    Value::Null
                }
            },
        };
        // What the customer does next: publish the proof, or (moved) point
        // the name here again, and for a `txt` claim publish its record
        // again (`last_error` says which is missing).
        let method = match c.status {
            HostnameStatus::Pending | HostnameStatus::Failed | HostnameStatus::Expired => Some(c.method),
            HostnameStatus::Moved if policy::comeback(c.method) == policy::Comeback::Txt => Some(Method::Txt),
            HostnameStatus::Moved => self.cfg.cname_target.as_ref().map(|_| Method::Cname),
            _ => None,
        };
        if let Some(method) = method {
            let i = policy::instructions(&c.name, method, &c.token, self.cfg.cname_target.as_deref());
            v["instructions"] = serde_json::to_value(i).unwrap_or(Value::Null);
        }
        v
    }
}

impl OpsError {
    /// The operator API's status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            OpsError::BadName { .. }
            | OpsError::BaseDomain(_)
            | OpsError::BadTenant(_)
            | OpsError::MethodNotAllowed(_)
            | OpsError::BadStatus(_) => 400,
            OpsError::Store(StoreError::NotFound(_)) => 404,
            OpsError::Store(
                StoreError::ClaimedByOther { .. } | StoreError::NotRetryable { .. } | StoreError::Contested { .. },
            ) => 409,
            OpsError::Store(StoreError::Database(_) | StoreError::BadRow { .. }) => 503,
        }
    }
}
