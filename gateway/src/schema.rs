//! The gateway's own schema (`tenant_gateway`): ACME state and certificates
//! (0001), custom-hostname claims and retired certificates (0002), the
//! indexes that keep certificate scans proportional to what is due (0003).
//! Every gateway (and every CLI command that opens the database) makes sure
//! they are applied: the version recorded in `tenant_gateway.schema_version`
//! is read first, without locks, and only an older schema runs the scripts
//! (idempotent, serialised across the fleet by a transaction-scoped
//! advisory lock). So a live fleet never re-runs DDL (whose table locks
//! could deadlock with running gateways' transactions) on a restart or a
//! `gateway hostnames …` command.

use sqlx::PgPool;

const MIGRATIONS: [&str; 3] = [
    include_str!("../migrations/0001_acme.sql"),
    include_str!("../migrations/0002_hostnames.sql"),
    include_str!("../migrations/0003_certificate_scale.sql"),
];
const MIGRATION_LOCK: i64 = 0x7467_6163_6d65; // "tgacme"

/// The schema version these migrations make.
const VERSION: i32 = MIGRATIONS.len() as i32;

/// The version the database records (0: none recorded yet).
async fn recorded_version(db: &PgPool) -> Result<i32, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tenant_gateway.schema_version') IS NOT NULL")
        .fetch_one(db)
        .await?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM tenant_gateway.schema_version")
        .fetch_one(db)
        .await
}

/// Create or update the schema (nothing to do, and no lock taken, when the
/// recorded version is this one's or newer).
pub async fn migrate(db: &PgPool) -> Result<(), sqlx::Error> {
    if recorded_version(db).await? >= VERSION {
        return Ok(());
    }
    // One multi-statement simple query runs as one implicit transaction, so
    // the advisory lock serialises concurrent gateways and the version is
    // recorded with the changes or not at all.
    let script = format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});\n{}\n\
         CREATE TABLE IF NOT EXISTS tenant_gateway.schema_version (version integer NOT NULL);\n\
         DELETE FROM tenant_gateway.schema_version WHERE version < {VERSION};\n\
         INSERT INTO tenant_gateway.schema_version SELECT {VERSION}\n\
          WHERE NOT EXISTS (SELECT 1 FROM tenant_gateway.schema_version WHERE version >= {VERSION});",
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
