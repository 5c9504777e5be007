//! Fleet-wide cache invalidation: one LISTEN connection per gateway. The
//! database triggers (shared migration 0003) NOTIFY a JSON array of changed
//! host names; we evict them. When the connection drops we mark the whole
//! cache stale, reconnect with capped backoff, and mark it stale again once
//! LISTEN is re-established (anything in between may have been missed).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};

use super::cache::TenantCache;

pub async fn run(url: String, channel: String, cache: Arc<TenantCache>, connect_timeout: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = async {
            // A pool of one so connecting is bounded by our timeout (the
            // listener's own default waits 30 s while the database is down).
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(connect_timeout)
                .connect_lazy(&url)?;
            let mut l = PgListener::connect_with(&pool).await?;
            // Report a lost connection at once instead of reconnecting inside try_recv.
            l.eager_reconnect(false);
            l.listen(&channel).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "tenant invalidation: cannot LISTEN");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        cache.clear();
        cache.metrics().invalidation_connected.set(1);
        tracing::info!(channel = %channel, "tenant invalidation: listening");
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match serde_json::from_str::<Vec<String>>(n.payload()) {
                    Ok(names) => {
                        tracing::debug!(?names, "tenant invalidation");
                        cache.invalidate(names.iter().map(String::as_str));
                    }
                    Err(_) => {
                        tracing::warn!(
                            payload = n.payload(),
                            "tenant invalidation: unexpected payload; clearing cache"
                        );
                        cache.clear();
                    }
                },
                Ok(None) => {
                    cache.metrics().invalidation_connected.set(0);
                    tracing::warn!("tenant invalidation: connection lost; cache marked stale");
                    cache.clear();
                    break;
                }
                Err(e) => {
                    cache.metrics().invalidation_connected.set(0);
                    tracing::warn!(error = %e, "tenant invalidation: connection error; cache marked stale");
                    cache.clear();
                    break;
                }
            }
        }
    }
}
