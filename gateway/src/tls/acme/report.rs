//! The operator's view from the CLI (`gateway acme status|renew`), straight
//! against the database.

use super::*;

/// `gateway acme status`: every custom domain with its certificate state.
pub async fn status_report(db: &PgPool, cfg: &AcmeConfig, base_domains: &[String]) -> Result<Vec<String>, AcmeError> {
    Acme::migrate(db).await?;
    let domains = cfg.domains_query.as_deref().unwrap_or_default();
    let domains = domains.trim().trim_end_matches(';');
    // One query for every name (100,000 names are one round trip).
    type Row = (
        String,
        Option<String>,
        Option<bool>,
        Option<bool>,
        Option<i32>,
        Option<String>,
        Option<String>,
        Option<bool>,
        Option<bool>,
    );
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "WITH names AS (SELECT name FROM ({domains}) AS d(name)
                        UNION SELECT name FROM tenant_gateway.acme_names
                        UNION SELECT name FROM tenant_gateway.certificates)
         SELECT n.name,
                to_char(c.not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'),
                now() >= coalesce(c.renew_after, c.not_after - (c.not_after - c.not_before) / 3),
                c.removed_at IS NOT NULL,
                a.failures, a.last_error,
                to_char(a.next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'),
                a.lease_until > now(), a.force_renew
           FROM names n
           LEFT JOIN tenant_gateway.certificates c ON c.name = n.name
           LEFT JOIN tenant_gateway.acme_names a ON a.name = n.name
          ORDER BY n.name"
    ))
    .fetch_all(db)
    .await?;
    let mut lines = vec![format!("{:<40} {:<10} DETAIL", "DOMAIN", "STATUS")];
    for (name, until, due, retired, failures, last_error, next, leased, forced) in rows {
        if !crate::hostnames::needs_claim(&name, base_domains) {
            continue;
        }
        if retired == Some(true) {
            lines.push(format!(
                "{name:<40} {:<10} no longer served; deleted after acme.removed_certificate_grace_secs",
                "retired"
            ));
            continue;
        }
        let cert: Option<(String, bool)> = until.zip(Some(due.unwrap_or(false)));
        let state: Option<(i32, Option<String>, String, bool, bool)> = failures.map(|f| {
            (
                f,
                last_error,
                next.unwrap_or_default(),
                leased.unwrap_or(false),
                forced.unwrap_or(false),
            )
        });
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
