//! The gateway's own schema (`tenant_gateway`): ACME state and certificates
//! (0001), custom-hostname claims and retired certificates (0002), the
//! indexes that keep certificate scans proportional to what is due (0003). Every
//! gateway applies the migrations at start-up; they are idempotent and
//! serialised across the fleet by a transaction-scoped advisory lock.

use sqlx::PgPool;

const MIGRATIONS: [&str; 3] = [
    include_str!("../migrations/0001_acme.sql"),
    include_str!("../migrations/0002_hostnames.sql"),
    include_str!("../migrations/0003_certificate_scale.sql"),
];
const MIGRATION_LOCK: i64 = 0x7467_6163_6d65; // "tgacme"

/// Create or update the schema.
pub async fn migrate(db: &PgPool) -> Result<(), sqlx::Error> {
    // One multi-statement simple query runs as one implicit transaction, so
    // the advisory lock serialises concurrent gateways.
    let script = format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});\n{}",
        MIGRATIONS.join("\n")
    );
    sqlx::raw_sql(&script).execute(db).await?;
    Ok(())
}

/// Migrate, retrying with back-off until the database answers (start-up of
/// a gateway whose database is not up yet).
pub async fn migrate_until_done(db: &PgPool, deadline: std::time::Duration) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match tokio::time::timeout(deadline, migrate(db)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prepare the tenant_gateway schema; retrying"),
            Err(_) => tracing::warn!("preparing the tenant_gateway schema timed out; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}
