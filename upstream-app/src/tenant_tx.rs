//! The only way a handler reaches tenant data: verify the gateway's stamp,
//! check the tenant is active, then open a transaction whose search_path is
//! set transaction-locally to `"<schema>", public`. When the transaction
//! ends (commit, rollback or drop) the connection's search_path reverts, so a
//! pooled connection never carries one tenant into another's request.

use std::borrow::Cow;
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
/// and the raw `Host` value (empty if absent; sent more than once, its
/// values joined by `,` as WSGI servers fold them, which no signature
/// matches), all as bytes: a value that is not ASCII is the algorithm's to
/// refuse, never replaced.
fn stamp_inputs(headers: &HeaderMap) -> StampInputs<'_> {
    let values = |name| stamp::header_values(headers.get_all(name).iter().map(|v| v.as_bytes()));
    let mut hosts = headers.get_all(header::HOST).iter().map(|h| h.as_bytes());
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => Cow::Borrowed(&b""[..]),
        (Some(one), None) => Cow::Borrowed(one),
        (Some(first), Some(second)) => {
            let all: Vec<&[u8]> = [first, second].into_iter().chain(hosts).collect();
            Cow::Owned(all.join(&b","[..]))
        }
    };
    StampInputs {
        tenants: values(stamp::TENANT_HEADER),
        signatures: values(stamp::SIGNATURE_HEADER),
        host,
    }
}

/// [`stamp_inputs`]: the stamp headers' values and the host, as received.
struct StampInputs<'a> {
    tenants: Vec<&'a [u8]>,
    signatures: Vec<&'a [u8]>,
    host: Cow<'a, [u8]>,
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
        let StampInputs {
            tenants,
            signatures,
            host,
        } = stamp_inputs(&parts.headers);
        let tenant = state
            .verifier
            .verify(
                &tenants,
                &signatures,
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
        assert!(none.tenants.is_empty() && none.signatures.is_empty());
        assert_eq!(&*none.host, b"");
        h.append("x-tenant", HeaderValue::from_static("ferrari"));
        h.append("x-tenant-signature", HeaderValue::from_static("v2;kid=k1,x"));
        h.append("x-tenant-signature", HeaderValue::from_static("v1"));
        // Not visible ASCII: kept as it is, not read as an empty host.
        h.insert(header::HOST, HeaderValue::from_bytes(b"caf\xe9.example").unwrap());
        let StampInputs {
            tenants,
            signatures: sigs,
            host,
        } = stamp_inputs(&h);
        assert_eq!(tenants, [&b"ferrari"[..]]);
        // A comma separates two values, as a server folding repeated
        // headers would join them (docs/stamp.md check 1).
        assert_eq!(sigs, [&b"v2;kid=k1"[..], b"x", b"v1"]);
        assert_eq!(&*host, b"caf\xe9.example");
        // Host twice: both, as a WSGI server folds them (no signature
        // matches that), not the first alone.
        h.append(header::HOST, HeaderValue::from_static("mclaren.example"));
        assert_eq!(&*stamp_inputs(&h).host, b"caf\xe9.example,mclaren.example");
    }
}
