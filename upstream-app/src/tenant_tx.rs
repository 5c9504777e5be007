//! The only way a handler reaches tenant data: verify the gateway's stamp,
//! check the tenant is active, then open a transaction whose search_path is
//! set transaction-locally to `"<schema>", public`. When the transaction
//! ends (commit, rollback or drop) the connection's search_path reverts, so a
//! pooled connection never carries one tenant into another's request.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use sqlx::{Postgres, Transaction};

use crate::error::ApiError;
use crate::state::AppState;

pub struct TenantTx {
    pub tenant: String,
    pub tenant_id: i64,
    pub tx: Transaction<'static, Postgres>,
}

/// What the stamp is checked against, as received (docs/stamp.md, "The
/// algorithm"): every value of the two headers (a comma separating two),
/// and the raw `Host` value (empty if absent), all as bytes: a value that is
/// not ASCII is the algorithm's to refuse, never replaced.
fn stamp_inputs(headers: &HeaderMap) -> (Vec<&[u8]>, Vec<&[u8]>, &[u8]) {
    let values = |name| stamp::header_values(headers.get_all(name).iter().map(|v| v.as_bytes()));
    let host = headers.get(header::HOST).map_or(&b""[..], |h| h.as_bytes());
    (values(stamp::TENANT_HEADER), values(stamp::SIGNATURE_HEADER), host)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FromRequestParts<AppState> for TenantTx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (tenants, sigs, host) = stamp_inputs(&parts.headers);
        let tenant = state
            .verifier
            .verify(
                &tenants,
                &sigs,
                parts.method.as_str(),
                host,
                parts.uri.path(),
                unix_now(),
            )
            .inspect_err(|e| tracing::warn!(check = e.code(), "stamp refused"))?
            .into_owned();

        let mut tx = state.pool.begin().await?;
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, status FROM public.tenants WHERE schema_name = $1 FOR SHARE")
                .bind(&tenant)
                .fetch_optional(&mut *tx)
                .await?;
        let forbidden = |code, msg: &str| {
            tracing::warn!(tenant = %tenant, check = code, "tenant refused");
            ApiError::new(StatusCode::FORBIDDEN, code, format!("tenant `{tenant}` {msg}"))
        };
        let tenant_id = match row {
            None => return Err(forbidden("tenant_unknown", "does not exist")),
            Some((_, status)) if status == "suspended" => return Err(forbidden("tenant_suspended", "is suspended")),
            Some((_, status)) if status == "deleted" => return Err(forbidden("tenant_deleted", "is deleted")),
            Some((id, _)) => id,
        };
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(format!("{}, public", tenancy::quote_ident(&tenant)))
            .execute(&mut *tx)
            .await?;
        tracing::Span::current().record("tenant", tracing::field::display(&tenant));
        Ok(TenantTx { tenant, tenant_id, tx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn stamp_inputs_are_the_bytes_received() {
        let mut h = HeaderMap::new();
        let none = stamp_inputs(&h);
        assert!(none.0.is_empty() && none.1.is_empty());
        assert_eq!(none.2, b"");
        h.append("x-tenant", HeaderValue::from_static("ferrari"));
        h.append("x-tenant-signature", HeaderValue::from_static("v2;kid=k1,x"));
        h.append("x-tenant-signature", HeaderValue::from_static("v1"));
        // Not visible ASCII: kept as it is, not read as an empty host.
        h.insert(header::HOST, HeaderValue::from_bytes(b"caf\xe9.example").unwrap());
        let (tenants, sigs, host) = stamp_inputs(&h);
        assert_eq!(tenants, [&b"ferrari"[..]]);
        // A comma separates two values, as a server folding repeated
        // headers would join them (docs/stamp.md check 1).
        assert_eq!(sigs, [&b"v2;kid=k1"[..], b"x", b"v1"]);
        assert_eq!(host, b"caf\xe9.example");
    }
}
