//! HTTP API: `/healthz` (no stamp), `/whoami`, JSON CRUD for projects and
//! their tasks, and tenant jobs. Every other route requires a verified stamp
//! through [`TenantTx`]; request logging carries the tenant.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::error::ApiError;
pub use crate::state::AppState;
use crate::tenant_tx::TenantTx;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/whoami", get(whoami))
        .route("/slow/{ms}", get(slow))
        .route("/ws", get(ws_echo))
        .route("/projects", get(list_projects).post(create_project))
        .route(
            "/projects/{id}",
            get(get_project).patch(update_project).delete(delete_project),
        )
        .route("/projects/{id}/tasks", get(list_tasks).post(create_task))
        .route(
            "/projects/{id}/tasks/{task_id}",
            get(get_task).patch(update_task).delete(delete_task),
        )
        .route("/jobs", axum::routing::post(create_job))
        .route("/jobs/{id}", get(get_job))
        .fallback(fallback)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One structured line per request; the span carries the tenant once verified.
async fn log_request(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let span = tracing::info_span!(
        "request",
        tenant = tracing::field::Empty,
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
    );
    let start = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            latency_ms = start.elapsed().as_secs_f64() * 1e3,
            "request"
        );
    });
    resp
}

async fn healthz() -> &'static str {
    "ok"
}

async fn fallback(_t: TenantTx) -> ApiError {
    ApiError::not_found("route")
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let status = if e.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(
            status,
            if e.is_data() { "validation_failed" } else { "bad_json" },
            e.to_string(),
        )
    })
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_id", format!("`{raw}` is not a valid id")))
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let n = value.trim().chars().count();
    if n == 0 || value.chars().count() > max {
        return Err(ApiError::invalid(format!("`{field}` must be 1-{max} characters")));
    }
    Ok(())
}

/// The verified tenant, the schema the database reports, and the forwarding
/// headers this backend received (so tests can see what the gateway sent).
async fn whoami(mut t: TenantTx, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let (schema, search_path): (Option<String>, String) =
        sqlx::query_as("SELECT current_schema()::text, current_setting('search_path')")
            .fetch_one(&mut *t.tx)
            .await?;
    t.tx.commit().await?;
    let all = |name: &str| -> Vec<&str> { headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect() };
    let tenant_headers: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.as_str().replace('_', "-").starts_with("x-tenant"))
        .map(|(n, v)| format!("{}: {}", n, v.to_str().unwrap_or("?")))
        .collect();
    Ok(Json(json!({
        "tenant": t.tenant,
        "schema": schema,
        "search_path": search_path,
        "host": all("host"),
        "x_forwarded_for": all("x-forwarded-for"),
        "x_forwarded_host": all("x-forwarded-host"),
        "x_forwarded_proto": all("x-forwarded-proto"),
        "forwarded": all("forwarded"),
        "request_id": all("x-request-id"),
        "tenant_headers": tenant_headers,
        "header_names": headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
    })))
}

/// Answers after `ms` milliseconds (at most 10 s): for drain and timeout tests.
async fn slow(t: TenantTx, Path(ms): Path<String>) -> Result<Json<Value>, ApiError> {
    let ms: u64 = ms
        .parse()
        .ok()
        .filter(|m| *m <= 10_000)
        .ok_or_else(|| ApiError::invalid("ms must be 0-10000"))?;
    tracing::info!(ms, "slow request started");
    drop(t.tx);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    Ok(Json(json!({ "tenant": t.tenant, "slept_ms": ms })))
}

/// WebSocket echo: every text message comes back prefixed with the tenant.
async fn ws_echo(t: TenantTx, ws: WebSocketUpgrade) -> Response {
    let tenant = t.tenant.clone();
    drop(t);
    ws.on_upgrade(move |mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            match msg {
                Message::Text(text) => {
                    let reply = format!("{tenant}: {}", text.as_str());
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
}

const PROJECT_COLS: &str =
    "id, name, task_count, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
const TASK_COLS: &str = "id, project_id, title, done";

type ProjectRow = (i64, String, i32, String);
type TaskRow = (i64, i64, String, bool);
type JobRow = (i64, String, String, i32, Option<String>, Option<Value>);

fn project_json(r: ProjectRow) -> Value {
    json!({ "id": r.0, "name": r.1, "task_count": r.2, "created_at": r.3 })
}

fn task_json(r: TaskRow) -> Value {
    json!({ "id": r.0, "project_id": r.1, "title": r.2, "done": r.3 })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectInput {
    name: String,
}

async fn list_projects(mut t: TenantTx) -> Result<Json<Value>, ApiError> {
    let rows: Vec<ProjectRow> = sqlx::query_as(&format!("SELECT {PROJECT_COLS} FROM projects ORDER BY id LIMIT 1000"))
        .fetch_all(&mut *t.tx)
        .await?;
    t.tx.commit().await?;
    Ok(Json(Value::Array(rows.into_iter().map(project_json).collect())))
}

async fn create_project(mut t: TenantTx, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let input: ProjectInput = parse_body(&body)?;
    check_len("name", &input.name, 200)?;
    let row: ProjectRow = sqlx::query_as(&format!(
        "INSERT INTO projects (name) VALUES ($1) RETURNING {PROJECT_COLS}"
    ))
    .bind(input.name.trim())
    .fetch_one(&mut *t.tx)
    .await?;
    t.tx.commit().await?;
    Ok((StatusCode::CREATED, Json(project_json(row))))
}

async fn get_project(mut t: TenantTx, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let row: Option<ProjectRow> = sqlx::query_as(&format!("SELECT {PROJECT_COLS} FROM projects WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *t.tx)
        .await?;
    t.tx.commit().await?;
    row.map(|r| Json(project_json(r))).ok_or(ApiError::not_found("project"))
}

async fn update_project(mut t: TenantTx, Path(id): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let input: ProjectInput = parse_body(&body)?;
    check_len("name", &input.name, 200)?;
    let row: Option<ProjectRow> = sqlx::query_as(&format!(
        "UPDATE projects SET name = $2 WHERE id = $1 RETURNING {PROJECT_COLS}"
    ))
    .bind(id)
    .bind(input.name.trim())
    .fetch_optional(&mut *t.tx)
    .await?;
    t.tx.commit().await?;
    row.map(|r| Json(project_json(r))).ok_or(ApiError::not_found("project"))
}

async fn delete_project(mut t: TenantTx, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let n = sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(id)
        .execute(&mut *t.tx)
        .await?;
    t.tx.commit().await?;
    if n.rows_affected() == 0 {
        return Err(ApiError::not_found("project"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskInput {
    title: String,
    #[serde(default)]
    done: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskPatch {
    title: Option<String>,
    done: Option<bool>,
}

async fn project_exists(t: &mut TenantTx, id: i64) -> Result<(), ApiError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM projects WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *t.tx)
        .await?;
    found.map(|_| ()).ok_or(ApiError::not_found("project"))
}

async fn list_tasks(mut t: TenantTx, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    project_exists(&mut t, id).await?;
    let rows: Vec<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLS} FROM tasks WHERE project_id = $1 ORDER BY id LIMIT 1000"
    ))
    .bind(id)
    .fetch_all(&mut *t.tx)
    .await?;
    t.tx.commit().await?;
    Ok(Json(Value::Array(rows.into_iter().map(task_json).collect())))
}

async fn create_task(
    mut t: TenantTx,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    let input: TaskInput = parse_body(&body)?;
    check_len("title", &input.title, 500)?;
    // No existence pre-check: a missing project fails the INSERT with a
    // foreign-key violation inside the transaction, which is rolled back.
    let row: Result<TaskRow, sqlx::Error> = sqlx::query_as(&format!(
        "INSERT INTO tasks (project_id, title, done) VALUES ($1, $2, $3) RETURNING {TASK_COLS}"
    ))
    .bind(id)
    .bind(input.title.trim())
    .bind(input.done)
    .fetch_one(&mut *t.tx)
    .await;
    match row {
        Ok(row) => {
            t.tx.commit().await?;
            Ok((StatusCode::CREATED, Json(task_json(row))))
        }
        Err(e)
            if e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "23503") =>
        {
            Err(ApiError::not_found("project"))
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_ids(raw: &(String, String)) -> Result<(i64, i64), ApiError> {
    Ok((parse_id(&raw.0)?, parse_id(&raw.1)?))
}

async fn get_task(mut t: TenantTx, Path(ids): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    let (pid, tid) = parse_ids(&ids)?;
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLS} FROM tasks WHERE project_id = $1 AND id = $2"
    ))
    .bind(pid)
    .bind(tid)
    .fetch_optional(&mut *t.tx)
    .await?;
    t.tx.commit().await?;
    row.map(|r| Json(task_json(r))).ok_or(ApiError::not_found("task"))
}

async fn update_task(mut t: TenantTx, Path(ids): Path<(String, String)>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let (pid, tid) = parse_ids(&ids)?;
    let patch: TaskPatch = parse_body(&body)?;
    if let Some(title) = &patch.title {
        check_len("title", title, 500)?;
    }
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "UPDATE tasks SET title = coalesce($3, title), done = coalesce($4, done)
          WHERE project_id = $1 AND id = $2 RETURNING {TASK_COLS}"
    ))
    .bind(pid)
    .bind(tid)
    .bind(patch.title.as_deref().map(str::trim))
    .bind(patch.done)
    .fetch_optional(&mut *t.tx)
    .await?;
    t.tx.commit().await?;
    row.map(|r| Json(task_json(r))).ok_or(ApiError::not_found("task"))
}

async fn delete_task(mut t: TenantTx, Path(ids): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    let (pid, tid) = parse_ids(&ids)?;
    let n = sqlx::query("DELETE FROM tasks WHERE project_id = $1 AND id = $2")
        .bind(pid)
        .bind(tid)
        .execute(&mut *t.tx)
        .await?;
    t.tx.commit().await?;
    if n.rows_affected() == 0 {
        return Err(ApiError::not_found("task"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobInput {
    kind: String,
}

async fn create_job(mut t: TenantTx, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let input: JobInput = parse_body(&body)?;
    if !crate::jobs::KINDS.contains(&input.kind.as_str()) {
        return Err(ApiError::invalid(format!(
            "unknown job kind; known: {}",
            crate::jobs::KINDS.join(", ")
        )));
    }
    let id: i64 = sqlx::query_scalar("INSERT INTO public.jobs (tenant_id, kind) VALUES ($1, $2) RETURNING id")
        .bind(t.tenant_id)
        .bind(&input.kind)
        .fetch_one(&mut *t.tx)
        .await?;
    t.tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "kind": input.kind, "status": "queued" })),
    ))
}

async fn get_job(mut t: TenantTx, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    // Filtered by tenant: another tenant's job id is simply not found.
    let row: Option<JobRow> = sqlx::query_as(
        "SELECT id, kind, status, attempts, last_error, result FROM public.jobs WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(t.tenant_id)
    .fetch_optional(&mut *t.tx)
    .await?;
    t.tx.commit().await?;
    let r = row.ok_or(ApiError::not_found("job"))?;
    Ok(Json(
        json!({ "id": r.0, "kind": r.1, "status": r.2, "attempts": r.3, "last_error": r.4, "result": r.5 }),
    ))
}

#[cfg(test)]
mod tests {
    //! The router in-process: the stamp checks that come before any
    //! database work, with a pool that never connects.

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    const SECRET: &str = "in-process-secret-0123456789abcdef";

    fn app() -> Router {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let key = stamp::Key::new("k1", SECRET).expect("key");
        let verifier = std::sync::Arc::new(stamp::Verifier::new(vec![key], 300).expect("verifier"));
        router(AppState { pool, verifier })
    }

    async fn call(req: Request<Body>) -> (StatusCode, Value) {
        let resp = app().oneshot(req).await.expect("router answers");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn get(path: &str, headers: &[(&str, String)]) -> Request<Body> {
        let mut b = Request::get(path).header("host", "acme.myapp.com");
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        b.body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn health_needs_no_stamp() {
        let resp = app().oneshot(get("/healthz", &[])).await.expect("router answers");
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn tenant_routes_refuse_a_missing_or_forged_stamp_before_any_query() {
        let (status, body) = call(get("/whoami", &[])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "stamp_missing");

        let now = crate::tenant_tx::unix_now();
        let req = stamp::Request {
            tenant: "acme",
            method: "GET",
            host: "acme.myapp.com",
            path: "/whoami",
        };
        let forged = stamp::Signer::new(stamp::Key::new("k1", "another-secret-0123456789abcdef").expect("key"));
        let (status, body) = call(get(
            "/whoami",
            &[
                ("x-tenant", "acme".into()),
                ("x-tenant-signature", forged.sign(&req, now)),
            ],
        ))
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "stamp_bad_signature", "{body}");

        // Signed for another tenant than the header names.
        let ours = stamp::Signer::new(stamp::Key::new("k1", SECRET).expect("key"));
        let (status, _) = call(get(
            "/whoami",
            &[
                ("x-tenant", "globex".into()),
                ("x-tenant-signature", ours.sign(&req, now)),
            ],
        ))
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
