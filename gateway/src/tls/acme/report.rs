//! The operator's view from the CLI (`gateway acme status|renew`), straight
//! against the database.

use super::*;

/// `gateway acme status`: every custom domain with its certificate state.
pub async fn status_report(db: &PgPool, cfg: &AcmeConfig, base_domains: &[String]) -> Result<Vec<String>, AcmeError> {
    Acme::migrate(db).await?;
    let mut names: Vec<String> = sqlx::query_scalar(cfg.domains_query.as_deref().unwrap_or_default())
        .fetch_all(db)
        .await?;
    names.retain(|n| !base_domains.iter().any(|b| tenancy::is_under(n, b)));
    let known: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM tenant_gateway.acme_names UNION SELECT name FROM tenant_gateway.certificates",
    )
    .fetch_all(db)
    .await?;
    for k in known {
        if !names.contains(&k) {
            names.push(k);
        }
    }
    names.sort();
    let mut lines = vec![format!("{:<40} {:<10} DETAIL", "DOMAIN", "STATUS")];
    for name in names {
        let cert: Option<(String, bool)> = sqlx::query_as(
            "SELECT to_char(not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'),
                    now() >= not_after - (not_after - not_before) / 3
               FROM tenant_gateway.certificates WHERE name = $1",
        )
        .bind(&name)
        .fetch_optional(db)
        .await?;
        let state: Option<(i32, Option<String>, String, bool, bool)> = sqlx::query_as(
            "SELECT failures, last_error, to_char(next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'),
                    coalesce(lease_until > now(), false), force_renew
               FROM tenant_gateway.acme_names WHERE name = $1",
        )
        .bind(&name)
        .fetch_optional(db)
        .await?;
        let (status, detail) = match (&cert, &state) {
            (_, Some((f, err, next, _, _))) if *f > 0 => (
                "failing",
                format!(
                    "{} failures, last error: {}; next retry {next}{}",
                    f,
                    err.as_deref().unwrap_or("?"),
                    cert.as_ref()
                        .map(|(until, _)| format!("; serving the certificate valid until {until}"))
                        .unwrap_or_default()
                ),
            ),
            (_, Some((_, _, _, true, _))) => ("pending", "order in progress".to_owned()),
            (Some((until, due)), Some((_, _, _, _, forced))) => (
                "valid",
                format!(
                    "until {until}{}",
                    if *forced {
                        " (renewal forced)"
                    } else if *due {
                        " (renewal due)"
                    } else {
                        ""
                    }
                ),
            ),
            (Some((until, _)), None) => ("valid", format!("until {until}")),
            (None, _) => ("none", "no certificate yet".to_owned()),
        };
        lines.push(format!("{name:<40} {status:<10} {detail}"));
    }
    Ok(lines)
}

/// `gateway acme renew <name>`: force a renewal (picked up by one gateway).
pub async fn force_renewal(db: &PgPool, name: &str) -> Result<(), AcmeError> {
    Acme::migrate(db).await?;
    sqlx::query(
        "INSERT INTO tenant_gateway.acme_names (name, force_renew, next_attempt_at) VALUES ($1, true, now())
         ON CONFLICT (name) DO UPDATE SET force_renew = true, next_attempt_at = now(), updated_at = now()",
    )
    .bind(name)
    .execute(db)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(RENEW_CHANNEL)
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}
