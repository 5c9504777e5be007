//! Background jobs with tenant context. Jobs live in `public.jobs` with the
//! tenant they belong to; the worker claims one with `FOR UPDATE SKIP LOCKED`
//! (so several app processes can run workers), sets the search_path
//! transaction-locally to that tenant's schema and runs the job there.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

/// Job kinds the worker knows.
pub const KINDS: &[&str] = &["recount_tasks"];

async fn run_kind(kind: &str, conn: &mut PgConnection) -> Result<Value, sqlx::Error> {
    match kind {
        "recount_tasks" => {
            let n = sqlx::query(
                "UPDATE projects p SET task_count = (SELECT count(*) FROM tasks t WHERE t.project_id = p.id)",
            )
            .execute(&mut *conn)
            .await?;
            Ok(json!({ "projects": n.rows_affected() }))
        }
        other => Err(sqlx::Error::Protocol(format!("unknown job kind `{other}`"))),
    }
}

/// Claim and run one queued job. Returns whether one was found.
pub async fn run_one(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let job: Option<(i64, String, String, String)> = sqlx::query_as(
        "SELECT j.id, j.kind, t.schema_name, t.status
           FROM public.jobs j JOIN public.tenants t ON t.id = j.tenant_id
          WHERE j.status = 'queued'
          ORDER BY j.id LIMIT 1
          FOR UPDATE OF j SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, kind, schema, status)) = job else {
        return Ok(false);
    };
    let span = tracing::info_span!("job", tenant = %schema, job_id = id, kind = %kind);
    async {
        let outcome = if status != "active" {
            Err(format!("tenant is {status}"))
        } else {
            sqlx::query("SELECT set_config('search_path', $1, true)")
                .bind(format!("{}, public", tenancy::quote_ident(&schema)))
                .execute(&mut *tx)
                .await?;
            // A savepoint, so a failing job is rolled back but still recorded.
            let mut sp = sqlx::Connection::begin(&mut *tx).await?;
            match run_kind(&kind, &mut sp).await {
                Ok(v) => {
                    sp.commit().await?;
                    Ok(v)
                }
                Err(e) => {
                    sp.rollback().await?;
                    Err(e.to_string())
                }
            }
        };
        match &outcome {
            Ok(result) => {
                sqlx::query(
                    "UPDATE public.jobs SET status = 'done', attempts = attempts + 1, result = $2, finished_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(result)
                .execute(&mut *tx)
                .await?;
                tracing::info!(result = %result, "job done");
            }
            Err(err) => {
                sqlx::query(
                    "UPDATE public.jobs SET status = 'failed', attempts = attempts + 1, last_error = $2, finished_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(err)
                .execute(&mut *tx)
                .await?;
                tracing::warn!(error = %err, "job failed");
            }
        }
        tx.commit().await?;
        Ok(true)
    }
    .instrument(span)
    .await
}

/// The worker loop: drain the queue, then poll.
pub async fn worker(pool: PgPool, poll: Duration) {
    loop {
        match run_one(&pool).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "job worker: database error"),
        }
        tokio::time::sleep(poll).await;
    }
}
