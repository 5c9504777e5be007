//! The one SQL query that maps a host name to a tenant. Configurable (see
//! `tenant.query` / `tenant.preset`); columns by position: schema name,
//! status, optional backend pool.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Column, Executor, PgPool, Row, Statement};

use super::{Status, Tenant};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("lookup query returned an invalid row for `{host}`: {reason}")]
    BadRow { host: String, reason: String },
}

fn maintenance_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("db-maintenance")
            .enable_all()
            .build()
            .expect("cannot start the database maintenance runtime")
    })
}

/// A pool that connects on first use. sqlx spawns the pool's maintenance
/// task on the current runtime; the pool outlives any one Pingora service
/// runtime, so it gets its own.
pub fn lazy_pool(opts: PgConnectOptions, max_connections: u32, connect_timeout: Duration) -> PgPool {
    let _guard = maintenance_runtime().enter();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(connect_timeout)
        .connect_lazy_with(opts)
}

pub struct Lookup {
    pool: PgPool,
    query: Arc<str>,
}

impl Lookup {
    /// A lazily connecting pool: the gateway starts even while the database is down.
    pub fn new(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
        query_timeout: Duration,
    ) -> Result<Lookup, sqlx::Error> {
        let opts: PgConnectOptions = url.parse()?;
        let opts = opts
            .application_name("tenant-gateway")
            .options([("statement_timeout", query_timeout.as_millis().to_string())]);
        // sqlx spawns the pool's maintenance task on the current runtime; the
        // pool outlives any one Pingora service runtime, so give it its own.
        let _guard = maintenance_runtime().enter();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(connect_timeout)
            .connect_lazy_with(opts);
        Ok(Lookup {
            pool,
            query: Arc::from(""),
        })
    }

    pub fn with_query(mut self, query: &str) -> Lookup {
        self.query = Arc::from(query);
        self
    }

    /// Check the query against the live database: one parameter, 2-3 columns.
    pub async fn check_query(&self) -> Result<(), String> {
        let stmt = self.pool.prepare(&self.query).await.map_err(|e| e.to_string())?;
        let cols = stmt.columns().len();
        if !(2..=3).contains(&cols) {
            return Err(format!("returns {cols} columns; expected schema_name, status[, pool]"));
        }
        let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
        tracing::debug!(?names, "lookup query checked");
        Ok(())
    }

    /// Look one host up. `Ok(None)`: not in the domain table.
    pub async fn find(&self, host: &str) -> Result<Option<Tenant>, LookupError> {
        let row = sqlx::query(&self.query).bind(host).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let bad = |reason: String| LookupError::BadRow {
            host: host.to_owned(),
            reason,
        };
        let schema: String = row.try_get(0).map_err(|e| bad(e.to_string()))?;
        tenancy::validate_schema_name(&schema).map_err(|e| bad(format!("schema `{schema}`: {e}")))?;
        let status: String = row.try_get(1).map_err(|e| bad(e.to_string()))?;
        let status = match status.as_str() {
            "active" => Status::Active,
            "suspended" => Status::Suspended,
            "deleted" => Status::Deleted,
            other => return Err(bad(format!("unknown status `{other}`"))),
        };
        let pool: Option<String> = if row.len() > 2 {
            row.try_get(2).map_err(|e| bad(e.to_string()))?
        } else {
            None
        };
        Ok(Some(Tenant {
            schema: Arc::from(schema),
            status,
            pool: pool.map(Arc::from),
            stats: Default::default(),
        }))
    }
}
