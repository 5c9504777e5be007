//! The claims in PostgreSQL (`tenant_gateway.custom_hostnames`, migration
//! 0002): every statement the CLI, the operator API and the checkers run.
//! A change that affects routing commits together with a NOTIFY of the name
//! on the tenant channel (every gateway's cache drops it) and an event row
//! naming who made it.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::policy::{self, HostnameStatus, Method};
use super::share::Due;
use crate::tls::acme::{restore_certificates, retire_certificates};

/// Wakes the checkers at once (a new claim, a retry).
pub const WAKE_CHANNEL: &str = "tenant_gateway_hostnames";
/// NOTIFYed by triggers (migration 0005) when claims are added or removed
/// or a claim's status changes, on commit: the claim gauges count again.
pub const COUNTS_CHANNEL: &str = "tenant_gateway_hostname_counts";
/// A claim no checker holds: never leased, or its lease ran out (a checker
/// that crashed or gave up).
const FREE: &str = "(lease_owner IS NULL OR lease_until <= now())";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "`{name}` is claimed by tenant `{tenant}` ({status}); remove that claim first (`gateway hostnames remove`)"
    )]
    ClaimedByOther {
        name: String,
        tenant: String,
        status: &'static str,
    },
    #[error("no claim for `{0}`")]
    NotFound(String),
    #[error("`{name}` is {status}: only pending, failed, expired or moved claims can be retried")]
    NotRetryable { name: String, status: &'static str },
    #[error(
        "`{name}` ended unproven after tenant `{contender}` asked for it while it was pending: it is not \
         reopened for its holder; `{contender}`'s add takes it (or remove it and add it again, deliberately)"
    )]
    Contested { name: String, contender: String },
    #[error("the database holds an unknown {what} `{value}` for `{name}`")]
    BadRow {
        name: String,
        what: &'static str,
        value: String,
    },
}

/// What one check (or look) of a claim decided.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub status: HostnameStatus,
    /// What the check saw (None: proven, or pointing here).
    pub detail: Option<&'a str>,
    /// The check found someone else's proof.
    pub other_proof: bool,
    /// When to look again.
    pub next_check: Duration,
    /// An active or moved claim's: since when its name has pointed
    /// elsewhere (unix seconds).
    pub failing_since: Option<i64>,
}

/// One claim, as stored. Times are Unix seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub name: String,
    pub tenant: String,
    pub status: HostnameStatus,
    pub method: Method,
    #[serde(skip)]
    pub token: String,
    pub created_at: i64,
    pub verify_by: i64,
    pub verified_at: Option<i64>,
    pub activated_at: Option<i64>,
    pub removed_at: Option<i64>,
    pub checks: i32,
    pub next_check_at: i64,
    pub last_checked_at: Option<i64>,
    pub last_error: Option<String>,
    pub saw_other_proof: bool,
    /// Active or moved: since when every answer has said its name points
    /// elsewhere (`recheck_interval_secs`).
    pub failing_since: Option<i64>,
    /// Moved: when.
    pub moved_at: Option<i64>,
}

/// A timestamp column as Unix seconds, `infinity` (a hand-edited row) as
/// far in the future (or past): cast as it is, it fails the whole statement,
/// and a batch of due claims with it (`lease`) would fail every round.
macro_rules! epoch {
    ($c:literal) => {
        concat!(
            "(CASE WHEN isfinite(",
            $c,
            ") THEN extract(epoch FROM ",
            $c,
            ") WHEN ",
            $c,
            " > 'epoch' THEN 1e15 WHEN ",
            $c,
            " < 'epoch' THEN -1e15 END)::bigint"
        )
    };
}

const COLUMNS: &str = concat!(
    "name, tenant, status, method, token, ",
    epoch!("created_at"),
    ", ",
    epoch!("verify_by"),
    ", ",
    epoch!("verified_at"),
    ", ",
    epoch!("activated_at"),
    ", ",
    epoch!("removed_at"),
    ", checks, ",
    epoch!("next_check_at"),
    ", ",
    epoch!("last_checked_at"),
    ", last_error, saw_other_proof, ",
    epoch!("failing_since"),
    ", ",
    epoch!("moved_at")
);

fn claim(row: &sqlx::postgres::PgRow) -> Result<Claim, StoreError> {
    let name: String = row.try_get(0)?;
    let status: String = row.try_get(2)?;
    let method: String = row.try_get(3)?;
    let bad = |what, value: String| StoreError::BadRow {
        name: name.clone(),
        what,
        value,
    };
    Ok(Claim {
        status: HostnameStatus::parse(&status).ok_or_else(|| bad("status", status.clone()))?,
        method: Method::parse(&method).ok_or_else(|| bad("method", method.clone()))?,
        tenant: row.try_get(1)?,
        token: row.try_get(4)?,
        created_at: row.try_get(5)?,
        verify_by: row.try_get(6)?,
        verified_at: row.try_get(7)?,
        activated_at: row.try_get(8)?,
        removed_at: row.try_get(9)?,
        checks: row.try_get(10)?,
        next_check_at: row.try_get(11)?,
        last_checked_at: row.try_get(12)?,
        last_error: row.try_get(13)?,
        saw_other_proof: row.try_get(14)?,
        failing_since: row.try_get(15)?,
        moved_at: row.try_get(16)?,
        name,
    })
}

/// Where routing changes are announced (`tenant.notify_channel`).
#[derive(Debug, Clone)]
pub struct Store {
    db: PgPool,
    channel: String,
    /// The lookup query in effect (`Config::lookup_query`): which tenant
    /// the domain table maps a name to.
    lookup_query: String,
}

impl Store {
    pub fn new(db: PgPool, channel: &str, lookup_query: String) -> Store {
        Store {
            db,
            channel: channel.to_owned(),
            lookup_query,
        }
    }

    /// The tenant (schema) the domain table maps `name` to, if any, read on
    /// the primary: a claim routes only if it is this tenant's
    /// ([`super::policy::routes`]).
    pub async fn row_tenant(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(&self.lookup_query)
            .bind(name)
            .fetch_optional(&self.db)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get::<String, _>(0)?),
            None => None,
        })
    }

    pub fn db(&self) -> &PgPool {
        &self.db
    }

    pub async fn get(&self, name: &str) -> Result<Option<Claim>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_gateway.custom_hostnames WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(claim).transpose()
    }

    /// Up to `limit` claims, optionally of one status, by name, starting
    /// after the name `after` (one index walk per page); `failing`: only
    /// claims whose names point elsewhere by the last answers (active ones
    /// about to move, and moved ones: the partial index of migration 0009).
    pub async fn list(
        &self,
        status: Option<HostnameStatus>,
        after: Option<&str>,
        limit: i64,
        failing: bool,
    ) -> Result<Vec<Claim>, StoreError> {
        // A walk of one index from `after` (every name sorts after ''): the
        // primary key, or for one status (status, name) of migration 0007.
        // The status is written into the statement (one of six constants),
        // so each status's prepared statement keeps the plan its rows call
        // for: with the status as a parameter the generic plan PostgreSQL
        // settles on after five runs walks the primary key for every status.
        let of_status = status.map_or(String::new(), |s| format!("status = '{}' AND ", s.as_str()));
        let failing = if failing { "failing_since IS NOT NULL AND " } else { "" };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_gateway.custom_hostnames \
              WHERE {of_status}{failing}name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(after.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(claim).collect()
    }

    /// Claim `name` for `tenant`: a new pending claim with a fresh token
    /// (`preverified`: verified by the operator, no check). Adding the same
    /// claim again returns it unchanged; a name another tenant holds is
    /// refused (moving a name is `remove` + `add`), unless that claim ended
    /// unproven (`expired`, `failed`): then it is replaced, or anyone who
    /// typed a name first (a squatter, a typo) would keep its owner from
    /// claiming it until an operator stepped in.
    pub async fn add(
        &self,
        name: &str,
        tenant: &str,
        method: Method,
        window: Duration,
        preverified: bool,
        actor: &str,
    ) -> Result<Claim, StoreError> {
        let mut tx = self.db.begin().await?;
        if let Some(c) = self.locked(&mut tx, name).await? {
            if c.status != HostnameStatus::Removed {
                if c.tenant == tenant && !preverified {
                    return Ok(c);
                }
                if c.tenant != tenant && !c.status.ended_unproven() {
                    if c.status == HostnameStatus::Pending {
                        // Kept although the add is refused: once the claim
                        // ends unproven its holder cannot reopen it
                        // (`retry`) ahead of this tenant.
                        self.contested(&mut tx, name, tenant, &c.tenant, actor).await?;
                        tx.commit().await?;
                    }
                    return Err(StoreError::ClaimedByOther {
                        name: name.to_owned(),
                        tenant: c.tenant,
                        status: c.status.as_str(),
                    });
                }
                if c.tenant != tenant {
                    tracing::info!(
                        name,
                        tenant,
                        replaced = %c.tenant,
                        status = c.status.as_str(),
                        "custom hostname: another tenant's claim that ended unproven is replaced"
                    );
                }
            }
        }
        let (status, method, event) = match preverified {
            true => (HostnameStatus::Verified, Method::Operator, "preverified"),
            false => (HostnameStatus::Pending, method, "added"),
        };
        // `locked` found no row to lock, or a removed one: a concurrent add of
        // the same name may have inserted its row meanwhile (this insert then
        // waits for it). Its claim is kept unless the sequential rules above
        // would replace it: the update happens only for a removed row, or the
        // same tenant's claim preverified.
        let written = sqlx::query(
            "INSERT INTO tenant_gateway.custom_hostnames (name, tenant, status, method, token, verify_by, verified_at)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), CASE WHEN $7 THEN now() END)
             ON CONFLICT (name) DO UPDATE SET
                 tenant = EXCLUDED.tenant, status = EXCLUDED.status, method = EXCLUDED.method,
                 token = EXCLUDED.token, created_at = now(), updated_at = now(),
                 verify_by = EXCLUDED.verify_by, verified_at = EXCLUDED.verified_at,
                 activated_at = NULL, removed_at = NULL, checks = 0, next_check_at = now(),
                 last_checked_at = NULL, last_error = NULL, saw_other_proof = false,
                 failing_since = NULL, moved_at = NULL, lease_owner = NULL, lease_until = NULL
             WHERE custom_hostnames.status = 'removed'
                OR (custom_hostnames.status IN ('expired', 'failed') AND custom_hostnames.tenant <> EXCLUDED.tenant)
                OR (custom_hostnames.tenant = EXCLUDED.tenant AND $7)",
        )
        .bind(name)
        .bind(tenant)
        .bind(status.as_str())
        .bind(method.as_str())
        .bind(policy::new_token())
        .bind(window.as_secs_f64())
        .bind(preverified)
        .execute(&mut *tx)
        .await?;
        if written.rows_affected() == 0 {
            // The concurrent add won: answer as if it had come first.
            tx.rollback().await?;
            let c = self
                .get(name)
                .await?
                .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
            if c.tenant != tenant {
                return Err(StoreError::ClaimedByOther {
                    name: name.to_owned(),
                    tenant: c.tenant,
                    status: c.status.as_str(),
                });
            }
            return Ok(c);
        }
        self.event(&mut tx, name, tenant, event, actor, Some(method.as_str()))
            .await?;
        self.announce(&mut tx, name).await?;
        wake(&mut tx, name).await?;
        tx.commit().await?;
        tracing::info!(
            name,
            tenant,
            actor,
            event,
            method = method.as_str(),
            "custom hostname claimed"
        );
        self.get(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }

    /// Check again now; a failed, expired or moved claim gets a new window
    /// (same token) and is proven again by its method.
    pub async fn retry(&self, name: &str, window: Duration, actor: &str) -> Result<Claim, StoreError> {
        let mut tx = self.db.begin().await?;
        let Some(c) = self.locked(&mut tx, name).await? else {
            return Err(StoreError::NotFound(name.to_owned()));
        };
        if !c.status.retryable() {
            return Err(StoreError::NotRetryable {
                name: name.to_owned(),
                status: c.status.as_str(),
            });
        }
        // A claim that ended unproven after another tenant asked for the
        // name gives way to that tenant: reopened by its holder, a
        // squatter's claim (retried each time it expires) would keep the
        // owner out for ever.
        if c.status.ended_unproven() {
            let contender: Option<String> = sqlx::query_scalar(
                "SELECT e.tenant FROM tenant_gateway.custom_hostname_events e
                   JOIN tenant_gateway.custom_hostnames h ON h.name = e.name
                  WHERE e.name = $1 AND e.event = 'contested' AND e.tenant <> h.tenant AND e.at >= h.created_at
                  ORDER BY e.id LIMIT 1",
            )
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(contender) = contender {
                return Err(StoreError::Contested {
                    name: name.to_owned(),
                    contender,
                });
            }
        }
        sqlx::query(
            "UPDATE tenant_gateway.custom_hostnames SET status = 'pending', next_check_at = now(), updated_at = now(),
                    verify_by = CASE WHEN status = 'pending' THEN verify_by ELSE now() + make_interval(secs => $2) END,
                    saw_other_proof = CASE WHEN status = 'pending' THEN saw_other_proof ELSE false END,
                    failing_since = NULL, moved_at = NULL
              WHERE name = $1",
        )
        .bind(name)
        .bind(window.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        self.event(&mut tx, name, &c.tenant, "retry", actor, Some(c.status.as_str()))
            .await?;
        wake(&mut tx, name).await?;
        tx.commit().await?;
        tracing::info!(name, tenant = %c.tenant, actor, "custom hostname: check requested");
        self.get(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }

    /// Remove a claim: not routed, its certificate no longer presented by
    /// any gateway (the certificate row's update NOTIFYs them), its stored
    /// material deleted after `acme.removed_certificate_grace_secs`.
    pub async fn remove(&self, name: &str, actor: &str) -> Result<Claim, StoreError> {
        let mut tx = self.db.begin().await?;
        let Some(c) = self.locked(&mut tx, name).await? else {
            return Err(StoreError::NotFound(name.to_owned()));
        };
        if c.status != HostnameStatus::Removed {
            sqlx::query(
                "UPDATE tenant_gateway.custom_hostnames
                    SET status = 'removed', removed_at = now(), updated_at = now(), lease_owner = NULL, lease_until = NULL
                  WHERE name = $1",
            )
            .bind(name)
            .execute(&mut *tx)
            .await?;
            retire_certificates(&mut *tx, &[name]).await?;
            self.event(&mut tx, name, &c.tenant, "removed", actor, Some(c.status.as_str()))
                .await?;
            self.announce(&mut tx, name).await?;
        }
        tx.commit().await?;
        tracing::info!(name, tenant = %c.tenant, actor, "custom hostname removed");
        self.get(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }

    /// The claim's history, oldest first: (event, tenant, actor, detail, unix time).
    pub async fn events(&self, name: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT event, tenant, actor, detail, extract(epoch FROM at)::bigint
               FROM tenant_gateway.custom_hostname_events WHERE name = $1 ORDER BY id",
        )
        .bind(name)
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(event, tenant, actor, detail, at)| {
                serde_json::json!({"event": event, "tenant": tenant, "actor": actor, "detail": detail, "at": at})
            })
            .collect())
    }

    /// The certificate side of a name, separate from its claim: stored or
    /// not, expiry, retired, and the ACME order state.
    pub async fn certificate(&self, name: &str) -> Result<serde_json::Value, StoreError> {
        let cert: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT extract(epoch FROM not_after)::bigint, extract(epoch FROM removed_at)::bigint
               FROM tenant_gateway.certificates WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.db)
        .await?;
        let order: Option<(i32, Option<String>, bool)> = sqlx::query_as(
            "SELECT failures, last_error, coalesce(lease_until > now(), false)
               FROM tenant_gateway.acme_names WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.db)
        .await?;
        let status = match (&cert, &order) {
            (Some((_, Some(_))), _) => "retired",
            (Some(_), _) => "issued",
            (None, Some((_, _, true))) => "ordering",
            (None, Some((f, _, _))) if *f > 0 => "failed",
            _ => "none",
        };
        Ok(serde_json::json!({
            "status": status,
            "not_after": cert.as_ref().map(|c| c.0),
            "retired_at": cert.as_ref().and_then(|c| c.1),
            "order_failures": order.as_ref().map(|o| o.0),
            "order_error": order.and_then(|o| o.1),
        }))
    }

    // ---- the checkers ----

    /// The claims due for a check (pending), a routability look (verified)
    /// or, with `rechecks`, a look at where their names point (active,
    /// moved) that no checker holds, for [`share::pick`](super::share::pick)
    /// to choose from; and how many checks each tenant has running across
    /// the fleet (unexpired leases). Pending and verified claims are read
    /// per tenant: a walk over the tenants that have any (one index seek
    /// each, migration 0010) takes up to `per_tenant` of each one's
    /// earliest due, so a tenant's claims are among the candidates however
    /// many another tenant has overdue. Rechecks are the `rechecks_at_most`
    /// earliest due of all (every tenant has active claims; their looks are
    /// spread over the recheck interval).
    pub async fn due(
        &self,
        per_tenant: i64,
        rechecks_at_most: i64,
        rechecks: bool,
    ) -> Result<(Vec<Due>, HashMap<String, u64>), StoreError> {
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE open_tenants(tenant) AS (
                 (SELECT tenant FROM tenant_gateway.custom_hostnames
                   WHERE status IN ('pending', 'verified') ORDER BY tenant LIMIT 1)
               UNION ALL
                 SELECT (SELECT c.tenant FROM tenant_gateway.custom_hostnames c
                          WHERE c.status IN ('pending', 'verified') AND c.tenant > t.tenant
                          ORDER BY c.tenant LIMIT 1)
                   FROM open_tenants t WHERE t.tenant IS NOT NULL
             ),
             due AS (
                 SELECT d.* FROM open_tenants t CROSS JOIN LATERAL (
                     SELECT name, tenant, next_check_at FROM tenant_gateway.custom_hostnames
                      WHERE tenant = t.tenant AND status IN ('pending', 'verified')
                        AND next_check_at <= now() AND {FREE}
                      ORDER BY next_check_at LIMIT $1) d
                  WHERE t.tenant IS NOT NULL
               UNION ALL
                 (SELECT name, tenant, next_check_at FROM tenant_gateway.custom_hostnames
                   WHERE $3 AND status IN ('active', 'moved') AND next_check_at <= now() AND {FREE}
                   ORDER BY next_check_at LIMIT $2)
             )
             SELECT name, tenant, extract(epoch FROM next_check_at)::float8 AS due_at FROM due"
        ))
        .bind(per_tenant)
        .bind(rechecks_at_most)
        .bind(rechecks)
        .fetch_all(&self.db)
        .await?;
        let due = rows
            .iter()
            .map(|r| {
                Ok(Due {
                    name: r.try_get("name")?,
                    tenant: r.try_get("tenant")?,
                    due_at: r.try_get("due_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let running: Vec<(String, i64)> = sqlx::query_as(
            "SELECT tenant, count(*) FROM tenant_gateway.custom_hostnames
              WHERE lease_owner IS NOT NULL AND lease_until > now() GROUP BY tenant",
        )
        .fetch_all(&self.db)
        .await?;
        let running = running.into_iter().map(|(t, n)| (t, n.max(0) as u64)).collect();
        Ok((due, running))
    }

    /// Lease the claims among `names` that are still due and free (another
    /// checker may have taken some since they were read) to `owner` for
    /// `lease_secs`.
    pub async fn lease(
        &self,
        owner: &str,
        lease_secs: f64,
        names: &[String],
        rechecks: bool,
    ) -> Result<Vec<Claim>, StoreError> {
        let statuses = match rechecks {
            false => "'pending', 'verified'",
            true => "'pending', 'verified', 'active', 'moved'",
        };
        let rows = sqlx::query(&format!(
            "WITH taken AS (
                 SELECT name FROM tenant_gateway.custom_hostnames
                  WHERE name = ANY($3) AND status IN ({statuses}) AND next_check_at <= now() AND {FREE}
                  FOR UPDATE SKIP LOCKED
             )
             UPDATE tenant_gateway.custom_hostnames
                SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
              WHERE name IN (SELECT name FROM taken)
          RETURNING {COLUMNS}"
        ))
        .bind(owner)
        .bind(lease_secs)
        .bind(names)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(claim).collect()
    }

    /// Active claims overdue for a recheck by more than `interval` (rechecks
    /// just turned on, or off for a while) are spread over the next
    /// `interval`, so turning rechecks on at 100,000 claims is no burst of
    /// DNS queries. Claims due within one interval keep their time. How
    /// many were spread.
    pub async fn spread_overdue(&self, interval: Duration) -> Result<u64, StoreError> {
        let spread = sqlx::query(
            "UPDATE tenant_gateway.custom_hostnames
                SET next_check_at = now() + random() * make_interval(secs => $1)
              WHERE status = 'active' AND next_check_at < now() - make_interval(secs => $1)",
        )
        .bind(interval.as_secs_f64())
        .execute(&self.db)
        .await?;
        Ok(spread.rows_affected())
    }

    /// Write a check's outcome and free the lease (only if `owner` still
    /// holds it). A claim that moves has its certificate retired (as a
    /// removal does), one that comes back active has it restored.
    pub async fn record(&self, c: &Claim, owner: &str, outcome: &Outcome<'_>) -> Result<(), StoreError> {
        let Outcome {
            status: next,
            detail,
            other_proof,
            next_check,
            failing_since,
        } = *outcome;
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE tenant_gateway.custom_hostnames
                SET status = $3, checks = checks + CASE WHEN status = 'pending' THEN 1 ELSE 0 END,
                    last_checked_at = now(), last_error = $4, saw_other_proof = saw_other_proof OR $5,
                    next_check_at = now() + make_interval(secs => $6), updated_at = now(),
                    verified_at = CASE WHEN $3 IN ('verified', 'active', 'moved', 'removed')
                                       THEN coalesce(verified_at, now()) END,
                    activated_at = CASE WHEN $3 = 'active' AND status = 'active' THEN activated_at
                                        WHEN $3 = 'active' THEN now()
                                        WHEN $3 IN ('moved', 'removed') THEN activated_at END,
                    removed_at = CASE WHEN $3 = 'removed' THEN coalesce(removed_at, now()) ELSE removed_at END,
                    failing_since = to_timestamp($8),
                    moved_at = CASE WHEN $3 = 'moved' THEN coalesce(moved_at, now())
                                    WHEN $3 = 'removed' THEN moved_at END,
                    lease_owner = NULL, lease_until = NULL
              WHERE name = $1 AND lease_owner = $2 AND status = $7",
        )
        .bind(&c.name)
        .bind(owner)
        .bind(next.as_str())
        .bind(detail)
        .bind(other_proof)
        .bind(next_check.as_secs_f64())
        .bind(c.status.as_str())
        .bind(failing_since.map(|s| s as f64))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 && next != c.status {
            self.event(&mut tx, &c.name, &c.tenant, next.as_str(), "checker", detail)
                .await?;
            match next {
                // A certificate retired while the name was away serves again.
                HostnameStatus::Active => restore_certificates(&mut *tx, &[c.name.as_str()]).await?,
                // Not presented, not renewed: the name points elsewhere.
                HostnameStatus::Moved | HostnameStatus::Removed => {
                    retire_certificates(&mut *tx, &[c.name.as_str()]).await?
                }
                _ => {}
            }
            self.announce(&mut tx, &c.name).await?;
        }
        tx.commit().await?;
        if updated == 1 && next != c.status {
            tracing::info!(name = %c.name, tenant = %c.tenant, from = c.status.as_str(), to = next.as_str(), detail, "custom hostname status changed");
        }
        Ok(())
    }

    /// Claims by status, and when the oldest pending claim was made (unix
    /// seconds; `None`: none pending). Reads every claim: run when they
    /// changed ([`COUNTS_CHANNEL`]), not on a timer.
    pub async fn counts(&self) -> Result<(Vec<(HostnameStatus, i64)>, Option<i64>), StoreError> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT status, count(*), extract(epoch FROM min(created_at))::bigint
               FROM tenant_gateway.custom_hostnames GROUP BY status",
        )
        .fetch_all(&self.db)
        .await?;
        let mut oldest_pending = None;
        let mut counts = Vec::new();
        for (status, n, oldest) in rows {
            if let Some(st) = HostnameStatus::parse(&status) {
                if st == HostnameStatus::Pending {
                    oldest_pending = oldest;
                }
                counts.push((st, n));
            }
        }
        Ok((counts, oldest_pending))
    }

    async fn locked(&self, tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<Option<Claim>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_gateway.custom_hostnames WHERE name = $1 FOR UPDATE"
        ))
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(claim).transpose()
    }

    async fn event(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        name: &str,
        tenant: &str,
        event: &str,
        actor: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_gateway.custom_hostname_events (name, tenant, event, actor, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(tenant)
        .bind(event)
        .bind(actor)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Another tenant (`contender`) asked for `name` while `holder`'s claim
    /// on it was pending: an event, once per contender and claim.
    async fn contested(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        name: &str,
        contender: &str,
        holder: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_gateway.custom_hostname_events (name, tenant, event, actor, detail)
             SELECT $1, $2, 'contested', $3, $4
              WHERE NOT EXISTS (
                    SELECT 1 FROM tenant_gateway.custom_hostname_events e
                      JOIN tenant_gateway.custom_hostnames h ON h.name = e.name
                     WHERE e.name = $1 AND e.tenant = $2 AND e.event = 'contested' AND e.at >= h.created_at)",
        )
        .bind(name)
        .bind(contender)
        .bind(actor)
        .bind(holder)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every gateway's cache drops `name` when the transaction commits.
    async fn announce(&self, tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<(), StoreError> {
        notify(tx, &self.channel, &serde_json::json!([name]).to_string()).await
    }
}

/// The fleet's checkers look at `name` when the transaction commits.
async fn wake(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<(), StoreError> {
    notify(tx, WAKE_CHANNEL, name).await
}

async fn notify(tx: &mut Transaction<'_, Postgres>, channel: &str, payload: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
