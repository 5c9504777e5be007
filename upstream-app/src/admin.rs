//! Operator commands: migrate every schema, create/suspend/resume/delete/purge
//! tenants, add/remove domains. Each mutation is one transaction, so a
//! failure leaves nothing half-made.

use std::time::Duration;

use sqlx::{PgPool, Row};

use crate::migrate::{self, MigrateError, Migrations};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid schema name `{name}`: {reason}")]
    SchemaName {
        name: String,
        reason: tenancy::SchemaNameError,
    },
    #[error("invalid domain `{domain}`: {reason}")]
    Domain { domain: String, reason: tenancy::HostError },
    #[error("tenant `{0}` does not exist")]
    NoSuchTenant(String),
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    #[error("domain `{0}` is already mapped to a tenant")]
    DomainTaken(String),
    #[error("domain `{0}` does not exist")]
    NoSuchDomain(String),
    #[error("tenant `{schema}` is {status}; {action} is not possible")]
    BadStatus {
        schema: String,
        status: String,
        action: &'static str,
    },
    #[error("invalid tenant name: must be 1-200 characters")]
    BadName,
    #[error("migrating schema `{schema}` failed: {source}")]
    Migrate { schema: String, source: MigrateError },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}

/// Outcome of migrating one schema.
#[derive(Debug)]
pub struct SchemaReport {
    pub schema: String,
    pub result: Result<Vec<String>, MigrateError>,
}

/// `migrate`: shared schema first, then every tenant schema that is not
/// tombstoned. Every schema is tried; the caller reports failures.
pub async fn migrate_all(pool: &PgPool, migrations: &Migrations) -> Result<Vec<SchemaReport>, AdminError> {
    let mut reports = Vec::new();
    let shared = migrate_one(pool, "public", &migrations.shared).await;
    let shared_failed = shared.is_err();
    reports.push(SchemaReport {
        schema: "public".into(),
        result: shared,
    });
    if shared_failed {
        return Ok(reports);
    }
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT schema_name FROM public.tenants WHERE status <> 'deleted' ORDER BY schema_name")
            .fetch_all(pool)
            .await?;
    for schema in schemas {
        let result = migrate_one(pool, &schema, &migrations.tenant).await;
        reports.push(SchemaReport { schema, result });
    }
    Ok(reports)
}

async fn migrate_one(pool: &PgPool, schema: &str, set: &[migrate::Migration]) -> Result<Vec<String>, MigrateError> {
    let mut tx = pool.begin().await?;
    let applied = migrate::apply(&mut tx, schema, set).await?;
    tx.commit().await?;
    Ok(applied)
}

/// `tenant create`: row, schema, tenant migrations and domains in one transaction.
pub async fn create_tenant(
    pool: &PgPool,
    migrations: &Migrations,
    schema: &str,
    name: &str,
    domains: &[String],
) -> Result<(), AdminError> {
    tenancy::validate_schema_name(schema).map_err(|reason| AdminError::SchemaName {
        name: schema.to_owned(),
        reason,
    })?;
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AdminError::BadName);
    }
    let domains = domains.iter().map(|d| normalize(d)).collect::<Result<Vec<_>, _>>()?;
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar("INSERT INTO public.tenants (schema_name, name) VALUES ($1, $2) RETURNING id")
        .bind(schema)
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                AdminError::TenantExists(schema.into())
            } else {
                e.into()
            }
        })?;
    sqlx::raw_sql(&format!("CREATE SCHEMA {}", tenancy::quote_ident(schema)))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P06")
            {
                AdminError::TenantExists(schema.into())
            } else {
                e.into()
            }
        })?;
    migrate::apply(&mut tx, schema, &migrations.tenant)
        .await
        .map_err(|source| AdminError::Migrate {
            schema: schema.into(),
            source,
        })?;
    for (i, d) in domains.iter().enumerate() {
        insert_domain(&mut tx, d, id, i == 0).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn normalize(domain: &str) -> Result<String, AdminError> {
    tenancy::normalize_domain(domain).map_err(|reason| AdminError::Domain {
        domain: domain.to_owned(),
        reason,
    })
}

async fn insert_domain(
    conn: &mut sqlx::PgConnection,
    domain: &str,
    tenant_id: i64,
    primary: bool,
) -> Result<(), AdminError> {
    if primary {
        sqlx::query("UPDATE public.domains SET is_primary = false WHERE tenant_id = $1 AND is_primary")
            .bind(tenant_id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("INSERT INTO public.domains (domain, tenant_id, is_primary) VALUES ($1, $2, $3)")
        .bind(domain)
        .bind(tenant_id)
        .bind(primary)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                AdminError::DomainTaken(domain.into())
            } else {
                e.into()
            }
        })?;
    Ok(())
}

async fn tenant_row(conn: &mut sqlx::PgConnection, schema: &str) -> Result<(i64, String), AdminError> {
    sqlx::query_as("SELECT id, status FROM public.tenants WHERE schema_name = $1 FOR UPDATE")
        .bind(schema)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| AdminError::NoSuchTenant(schema.into()))
}

/// Tenant status transitions.
#[derive(Debug, Clone, Copy)]
pub enum StatusChange {
    Suspend,
    Resume,
    Delete,
}

pub async fn change_status(pool: &PgPool, schema: &str, change: StatusChange) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let (id, status) = tenant_row(&mut tx, schema).await?;
    let (allowed_from, sql, action): (&[&str], &str, &'static str) = match change {
        StatusChange::Suspend => (
            &["active"],
            "UPDATE public.tenants SET status = 'suspended' WHERE id = $1",
            "suspend",
        ),
        StatusChange::Resume => (
            &["suspended"],
            "UPDATE public.tenants SET status = 'active' WHERE id = $1",
            "resume",
        ),
        StatusChange::Delete => (
            &["active", "suspended"],
            "UPDATE public.tenants SET status = 'deleted', deleted_at = now() WHERE id = $1",
            "delete",
        ),
    };
    if !allowed_from.contains(&status.as_str()) {
        return Err(AdminError::BadStatus {
            schema: schema.into(),
            status,
            action,
        });
    }
    sqlx::query(sql).bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// `tenant pin` / `tenant unpin`: route a tenant to a dedicated backend pool
/// (a pool name from the gateway's config), or back to the default pool.
pub async fn set_backend_pool(pool: &PgPool, schema: &str, backend_pool: Option<&str>) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let (id, _) = tenant_row(&mut tx, schema).await?;
    sqlx::query("UPDATE public.tenants SET backend_pool = $2 WHERE id = $1")
        .bind(id)
        .bind(backend_pool)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Overrides of the gateway's per-tenant limits (None: keep the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantLimits {
    pub rps: Option<u32>,
    pub burst: Option<u32>,
    pub max_concurrent: Option<u32>,
}

/// `tenant limits`: set the given overrides (the others keep their value),
/// or clear all of them (`None`).
pub async fn set_limits(pool: &PgPool, schema: &str, limits: Option<TenantLimits>) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let (id, _) = tenant_row(&mut tx, schema).await?;
    let as_db = |v: Option<u32>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
    match limits {
        None => {
            sqlx::query(
                "UPDATE public.tenants SET rate_limit_rps = NULL, rate_limit_burst = NULL, max_concurrent = NULL \
                  WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
        }
        Some(l) => {
            sqlx::query(
                "UPDATE public.tenants SET rate_limit_rps = coalesce($2, rate_limit_rps), \
                        rate_limit_burst = coalesce($3, rate_limit_burst), \
                        max_concurrent = coalesce($4, max_concurrent) WHERE id = $1",
            )
            .bind(id)
            .bind(as_db(l.rps))
            .bind(as_db(l.burst))
            .bind(as_db(l.max_concurrent))
            .execute(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    Ok(())
}

/// `tenant purge --older-than`: drop schemas (and rows) of tenants tombstoned
/// longer ago than `age`. Returns the purged schema names.
pub async fn purge(pool: &PgPool, age: Duration) -> Result<Vec<String>, AdminError> {
    let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
    let victims: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, schema_name FROM public.tenants
          WHERE status = 'deleted' AND deleted_at <= now() - make_interval(secs => $1::double precision)
          ORDER BY schema_name",
    )
    .bind(secs as f64)
    .fetch_all(pool)
    .await?;
    let mut purged = Vec::new();
    for (id, schema) in victims {
        let mut tx = pool.begin().await?;
        // Still a tombstone old enough, locked until the schema is gone: a
        // tenant restored (by hand, in SQL) since the listing keeps its data.
        let still: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM public.tenants
              WHERE id = $1 AND status = 'deleted'
                AND deleted_at <= now() - make_interval(secs => $2::double precision)
                FOR UPDATE",
        )
        .bind(id)
        .bind(secs as f64)
        .fetch_optional(&mut *tx)
        .await?;
        if still.is_none() {
            continue;
        }
        sqlx::raw_sql(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            tenancy::quote_ident(&schema)
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM public.tenants WHERE id = $1 AND status = 'deleted'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        purged.push(schema);
    }
    Ok(purged)
}

pub async fn add_domain(pool: &PgPool, domain: &str, schema: &str, primary: bool) -> Result<String, AdminError> {
    let domain = normalize(domain)?;
    let mut tx = pool.begin().await?;
    let (id, _) = tenant_row(&mut tx, schema).await?;
    insert_domain(&mut tx, &domain, id, primary).await?;
    tx.commit().await?;
    Ok(domain)
}

pub async fn remove_domain(pool: &PgPool, domain: &str) -> Result<(), AdminError> {
    let domain = normalize(domain)?;
    let n = sqlx::query("DELETE FROM public.domains WHERE domain = $1")
        .bind(&domain)
        .execute(pool)
        .await?;
    if n.rows_affected() == 0 {
        return Err(AdminError::NoSuchDomain(domain));
    }
    Ok(())
}

/// One line per tenant for `tenant list`.
pub async fn list_tenants(pool: &PgPool) -> Result<Vec<String>, AdminError> {
    let rows = sqlx::query(
        "SELECT t.schema_name, t.status, t.name,
                coalesce(string_agg(d.domain, ',' ORDER BY d.is_primary DESC, d.domain), '') AS domains
           FROM public.tenants t LEFT JOIN public.domains d ON d.tenant_id = t.id
          GROUP BY t.id ORDER BY t.schema_name",
    )
    .fetch_all(pool)
    .await?;
    // `try_get`: a column another migration made nullable is an error, not a panic.
    rows.iter()
        .map(|r| {
            let col = |i| r.try_get::<String, _>(i);
            Ok(format!("{}\t{}\t{}\t{}", col(0)?, col(1)?, col(2)?, col(3)?))
        })
        .collect()
}

/// Parse `30d`, `12h`, `45m`, `10s`.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number followed by d, h, m or s"))?;
    let mult = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("`{s}`: unit must be d, h, m or s")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("30").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("3w").is_err());
    }
}
