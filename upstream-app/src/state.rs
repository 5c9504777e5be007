//! What every handler shares: the database pool and the stamp verifier
//! (its own module so `http` and `tenant_tx` both use it without depending
//! on each other).

use sqlx::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub verifier: std::sync::Arc<stamp::Verifier>,
}
