//! Versioned migrations: the shared (public) set and the per-tenant set.
//! Each schema records what it has applied in its own
//! `tg_schema_migrations` table, so re-running changes nothing and an edited
//! migration is detected by its checksum.

use std::path::Path;

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// Advisory lock key serialising every migration and tenant creation.
pub const MIGRATION_LOCK: i64 = 0x7467_6d69_6772; // "tgmigr"

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub sql: String,
    pub checksum: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration file `{0}` must be named NNNN_description.sql")]
    BadName(String),
    #[error("migration version {0} appears twice")]
    DuplicateVersion(i64),
    #[error("cannot read migrations from {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("migration {version} ({name}) was changed after it was applied (checksum differs)")]
    Changed { version: i64, name: String },
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i64,
        name: String,
        source: sqlx::Error,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The two migration sets.
#[derive(Debug, Clone)]
pub struct Migrations {
    pub shared: Vec<Migration>,
    pub tenant: Vec<Migration>,
}

impl Migrations {
    /// The migrations compiled into this binary.
    pub fn embedded() -> Migrations {
        let conv = |files: &[(&str, &str)]| {
            build(files.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect())
                .expect("embedded migrations are well-formed (checked by unit test)")
        };
        Migrations {
            shared: conv(embedded::SHARED),
            tenant: conv(embedded::TENANT),
        }
    }

    /// Embedded sets, each optionally replaced by the `.sql` files of a directory.
    pub fn with_overrides(shared: Option<&Path>, tenant: Option<&Path>) -> Result<Migrations, MigrateError> {
        let mut m = Migrations::embedded();
        if let Some(dir) = shared {
            m.shared = from_dir(dir)?;
        }
        if let Some(dir) = tenant {
            m.tenant = from_dir(dir)?;
        }
        Ok(m)
    }
}

fn from_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let read_err = |source| MigrateError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sql = std::fs::read_to_string(&path).map_err(read_err)?;
            files.push((name, sql));
        }
    }
    build(files)
}

fn build(files: Vec<(String, String)>) -> Result<Vec<Migration>, MigrateError> {
    let mut out: Vec<Migration> = Vec::with_capacity(files.len());
    for (name, sql) in files {
        let version = name
            .split_once('_')
            .filter(|(v, rest)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && rest.ends_with(".sql"))
            .and_then(|(v, _)| v.parse::<i64>().ok())
            .ok_or_else(|| MigrateError::BadName(name.clone()))?;
        if out.iter().any(|m| m.version == version) {
            return Err(MigrateError::DuplicateVersion(version));
        }
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        out.push(Migration {
            version,
            name,
            sql,
            checksum,
        });
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// Apply `migrations` to `schema` on a connection that is already inside a
/// transaction. Sets the search_path transaction-locally to that schema only.
/// Returns the names of the migrations applied now.
pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    migrations: &[Migration],
) -> Result<Vec<String>, MigrateError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(tenancy::quote_ident(schema))
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS tg_schema_migrations (
            version bigint PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *conn)
    .await?;
    let applied: Vec<(i64, String)> = sqlx::query_as("SELECT version, checksum FROM tg_schema_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let mut done = Vec::new();
    for m in migrations {
        match applied.iter().find(|(v, _)| *v == m.version) {
            Some((_, sum)) if *sum == m.checksum => continue,
            Some(_) => {
                return Err(MigrateError::Changed {
                    version: m.version,
                    name: m.name.clone(),
                })
            }
            None => {}
        }
        sqlx::raw_sql(&m.sql)
            .execute(&mut *conn)
            .await
            .map_err(|source| MigrateError::Failed {
                version: m.version,
                name: m.name.clone(),
                source,
            })?;
        sqlx::query("INSERT INTO tg_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(&m.name)
            .bind(&m.checksum)
            .execute(&mut *conn)
            .await?;
        done.push(m.name.clone());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sets_parse_and_are_ordered() {
        let m = Migrations::embedded();
        assert!(!m.shared.is_empty() && !m.tenant.is_empty());
        assert!(m.shared.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        assert!(matches!(
            build(vec![("init.sql".into(), String::new())]),
            Err(MigrateError::BadName(_))
        ));
        let dup = vec![
            ("0001_a.sql".into(), String::new()),
            ("0001_b.sql".into(), String::new()),
        ];
        assert!(matches!(build(dup), Err(MigrateError::DuplicateVersion(1))));
    }
}
