//! The gateway's own schema (`tenant_gateway`): ACME state and certificates
//! (0001), custom-hostname claims and retired certificates (0002), the
//! indexes that keep certificate scans proportional to what is due (0003),
//! the two behind the stored-certificate health gauges (0004: expiry,
//! names held back), the NOTIFY that tells the claim gauges to count
//! again (0005), the certificate NOTIFY left out of re-sealing a key
//! (0006), the index listing one status of claims walks (0007), and the
//! sealing keys the fleet runs with (0008), and moved claims (0009: the
//! `moved` status, since when a name has pointed elsewhere, and the index
//! of active claims due for a look), and the checkers' fair share (0010:
//! pending and verified claims by tenant, and the leased ones), and the
//! tenant of each ACME order (0011: each tenant's share of the budget).
//! Every gateway (and every CLI command that opens the database) makes sure
//! they are applied: the version recorded in `tenant_gateway.schema_version`
//! is read first, without locks, and only an older schema runs the scripts
//! (idempotent, serialised across the fleet by a transaction-scoped
//! advisory lock, under which the version is read again). So a live fleet
//! never re-runs DDL (whose table locks could deadlock with running
//! gateways' transactions) on a restart or a `gateway hostnames …` command.
//! When the scripts do run beside live transactions (a fresh or older
//! schema, gateways already serving), PostgreSQL may end the migration to
//! break a lock cycle (deadlock, or a serialization failure); it is then
//! run again, a few times, since every script is idempotent.

use sqlx::PgPool;

const MIGRATIONS: [&str; 11] = [
    include_str!("../migrations/0001_acme.sql"),
    include_str!("../migrations/0002_hostnames.sql"),
    include_str!("../migrations/0003_certificate_scale.sql"),
    include_str!("../migrations/0004_certificate_expiry.sql"),
    include_str!("../migrations/0005_claim_counts.sql"),
    include_str!("../migrations/0006_certificate_notify_columns.sql"),
    include_str!("../migrations/0007_claims_by_status.sql"),
    include_str!("../migrations/0008_sealing_keys.sql"),
    include_str!("../migrations/0009_moved_claims.sql"),
    include_str!("../migrations/0010_fair_checks.sql"),
    include_str!("../migrations/0011_acme_orders_by_tenant.sql"),
];
const MIGRATION_LOCK: i64 = 0x7467_6163_6d65; // "tgacme"

/// The schema version these migrations make.
const VERSION: i32 = MIGRATIONS.len() as i32;

/// Whether the database records this version or a newer one.
async fn is_current(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('tenant_gateway.schema_version') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !recorded {
        return Ok(false);
    }
    let version: i32 = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM tenant_gateway.schema_version")
        .fetch_one(&mut *conn)
        .await?;
    Ok(version >= VERSION)
}

/// Create or update the schema. Nothing to do, and no lock taken, when the
/// recorded version is this one's or newer; otherwise, under the advisory
/// lock, the version is read again (another gateway may just have migrated)
/// and the scripts run only if it is still older, in the same transaction
/// that records the new version.
pub async fn migrate(db: &PgPool) -> Result<(), sqlx::Error> {
    let mut attempt = 1;
    loop {
        match migrate_once(db).await {
            Err(e) if attempt < ATTEMPTS && lost_a_lock_race(&e) => {
                tracing::info!(attempt, error = %e, "tenant_gateway schema: migration ended by the database; running it again");
                tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Runs of the migration before a lock race is reported as an error.
const ATTEMPTS: u32 = 5;

/// Whether PostgreSQL ended the transaction to break a cycle with others
/// (SQLSTATE 40P01 deadlock detected, 40001 serialization failure):
/// running it again can succeed.
fn lost_a_lock_race(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if retryable(d.code().as_deref()))
}

fn retryable(sqlstate: Option<&str>) -> bool {
    matches!(sqlstate, Some("40P01" | "40001"))
}

async fn migrate_once(db: &PgPool) -> Result<(), sqlx::Error> {
    if is_current(&mut *db.acquire().await?).await? {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    if is_current(&mut tx).await? {
        return tx.commit().await;
    }
    for script in MIGRATIONS {
        sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(script)).await?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS tenant_gateway.schema_version (version integer NOT NULL)")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM tenant_gateway.schema_version")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO tenant_gateway.schema_version VALUES ($1)")
        .bind(VERSION)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
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

#[cfg(test)]
mod tests {
    use super::retryable;

    #[test]
    fn only_a_broken_lock_cycle_is_run_again() {
        assert!(retryable(Some("40P01")));
        assert!(retryable(Some("40001")));
        for other in [None, Some("42P01"), Some("57014"), Some("23505")] {
            assert!(!retryable(other), "{other:?}");
        }
    }
}
