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

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Result<Vec<&'a str>, ApiError> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| stamp::StampError::Malformed("stamp headers must be ASCII").into())
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
        let tenants = header_values(&parts.headers, stamp::TENANT_HEADER)?;
        let sigs = header_values(&parts.headers, stamp::SIGNATURE_HEADER)?;
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
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
