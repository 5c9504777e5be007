//! The ACME worker: scans (a fixed number of statements returning only due
//! names), NOTIFY handling, and one attempt per name: guard, order slot,
//! fleet lease, rate limits, the order, and its record (issued or failed)
//! written whatever happened.

use super::protocol::end_order;
use super::*;

impl Acme {
    /// Runs for the life of the gateway.
    pub async fn run(self: Arc<Self>) {
        let mut delay = Duration::from_millis(200);
        loop {
            match bounded("preparing the schema", Acme::migrate(&self.db)).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: cannot prepare the tenant_gateway schema; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Nothing is loaded up front: stored certificates come into memory
        // at their first handshake (`on_demand`), so start-up does not grow
        // with the number of names.
        tracing::info!(
            cache_size = self.cfg.certificate_cache_size,
            sealing_key = self.seal.fingerprint(),
            "ACME: ready; stored certificates load at their first handshake"
        );
        tokio::spawn(self.clone().listen());
        let Some(mut rx) = self.wanted_rx.lock().take() else {
            return;
        };
        let mut tick = tokio::time::interval(self.cfg.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A scan runs beside this loop, one at a time: run inline, a slow
        // one (each of its steps may take its whole deadline when the
        // database is busy) held back the orders handshakes ask for here,
        // and their wait ended first.
        let mut scanning: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                Some((name, force)) = rx.recv() => self.spawn_attempt(name, force),
                _ = tick.tick() => {
                    if scanning.as_ref().is_none_or(|s| s.is_finished()) {
                        let me = self.clone();
                        scanning = Some(tokio::spawn(async move {
                            if let Err(e) = me.scan().await {
                                tracing::warn!(error = %e, "ACME: scan failed");
                            }
                        }));
                    }
                }
            }
        }
    }

    /// NOTIFY: new or retired certificates (load or drop) and forced
    /// renewals. Domain changes arrive through [`Acme::names_changed`].
    pub(super) async fn listen(self: Arc<Self>) {
        loop {
            let mut l = match bounded("connecting the ACME listener", self.listener()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: cannot LISTEN; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Anything missed while not listening: refresh what is in memory
            // (the scan does it first), rescan.
            self.refresh_due.store(true, std::sync::atomic::Ordering::Release);
            let _ = self.scan().await;
            while let Some(n) = crate::tenant::invalidate::next_notification(&mut l, QUERY_DEADLINE).await {
                match n.channel() {
                    CERTS_CHANNEL => self.certificate_notified(n.payload()),
                    RENEW_CHANNEL => self.spawn_attempt(n.payload().to_owned(), true),
                    _ => {}
                }
            }
            tracing::warn!("ACME: LISTEN connection lost; reconnecting");
        }
    }

    /// The listener holds the LISTEN pool's one connection, nobody else's.
    pub(super) async fn listener(&self) -> Result<PgListener, sqlx::Error> {
        let mut l = PgListener::connect_with(&self.listen_db).await?;
        l.eager_reconnect(false);
        l.listen_all([CERTS_CHANNEL, RENEW_CHANNEL]).await?;
        Ok(l)
    }

    /// Names that lack a certificate, need renewal or were forced.
    pub(super) async fn scan(self: &Arc<Self>) -> Result<(), AcmeError> {
        self.metrics.acme_scans.inc();
        self.refresh_if_due().await;
        self.key_seen().await?;
        self.delete_retired().await?;
        // A fixed number of queries whatever the number of names: each
        // returns only what is due (indexes of migration 0003), in batches.
        let nth = self.scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if nth.is_multiple_of(MISSING_EVERY) {
            let suffixes: Vec<String> = self.base_domains.iter().map(|b| format!(".{b}")).collect();
            let missing: Vec<String> = bounded(
                "listing names without a certificate",
                sqlx::query_scalar(&self.missing_sql())
                    .bind(&self.base_domains)
                    .bind(&suffixes)
                    .bind(SCAN_BATCH)
                    .fetch_all(&self.db),
            )
            .await?;
            for name in missing {
                self.spawn_attempt(name, false);
            }
        }
        let due: Vec<String> = bounded(
            "listing renewals due",
            sqlx::query_scalar(
                "SELECT c.name FROM tenant_gateway.certificates c
                  WHERE c.removed_at IS NULL AND c.renew_after <= now()
                    AND NOT EXISTS (SELECT 1 FROM tenant_gateway.acme_names n
                                     WHERE n.name = c.name AND n.next_attempt_at > now())
                  ORDER BY c.renew_after LIMIT $1",
            )
            .bind(SCAN_BATCH)
            .fetch_all(&self.db),
        )
        .await?;
        for name in due {
            self.spawn_attempt(name, false);
        }
        let retries: Vec<String> = bounded(
            "listing retries due",
            sqlx::query_scalar(
                "SELECT name FROM tenant_gateway.acme_names
                  WHERE next_attempt_at <= now() AND failures > 0 AND NOT force_renew
                  ORDER BY next_attempt_at LIMIT $1",
            )
            .bind(SCAN_BATCH)
            .fetch_all(&self.db),
        )
        .await?;
        for name in retries {
            self.spawn_attempt(name, false);
        }
        // Due ones only, in batches: a forced name that cannot be renewed
        // (refused by the guard, failing) waits its turn like any other.
        let forced: Vec<String> = bounded(
            "listing forced renewals",
            sqlx::query_scalar(
                "SELECT name FROM tenant_gateway.acme_names
                  WHERE force_renew AND next_attempt_at <= now()
                  ORDER BY next_attempt_at LIMIT $1",
            )
            .bind(SCAN_BATCH)
            .fetch_all(&self.db),
        )
        .await?;
        for name in forced {
            self.spawn_attempt(name, true);
        }
        self.refresh_health().await
    }

    /// The two fleet-wide gauges of stored certificates, in memory or not:
    /// the first to expire and how many renewals are overdue. Names held
    /// back as not eligible (tenant suspended, claim not active) are left
    /// out: nothing is meant to renew them. One statement, index walks only
    /// (0004's expiry index from its first entry, 0003's renewal index over
    /// the overdue ones, 0004's index of held-back names), so its cost does
    /// not grow with the number of names (0.08 ms at 100,000 names). The
    /// held-back test is written out, not bound: a bound value could not
    /// match the partial index's predicate in a generic plan.
    pub(super) async fn refresh_health(&self) -> Result<(), AcmeError> {
        let (earliest, overdue): (Option<i64>, i64) = bounded(
            "reading the stored certificates' health",
            sqlx::query_as(&format!(
                "SELECT (SELECT extract(epoch FROM c.not_after)::bigint FROM tenant_gateway.certificates c
                          WHERE c.removed_at IS NULL AND NOT EXISTS ({HELD_BACK})
                          ORDER BY c.not_after LIMIT 1),
                        (SELECT count(*) FROM tenant_gateway.certificates c
                          WHERE c.removed_at IS NULL AND c.renew_after <= now() - interval '{RENEWAL_OVERDUE_AFTER}'
                            AND NOT EXISTS ({HELD_BACK}))"
            ))
            .fetch_one(&self.db),
        )
        .await?;
        self.metrics
            .stored_certificates_earliest_expiry
            .set(earliest.unwrap_or(0));
        self.metrics.stored_certificates_renewal_overdue.set(overdue);
        Ok(())
    }

    /// The scan's query for names that need a first certificate: listed
    /// by the domains query, not under a base domain ($1 names, $2
    /// suffixes), no live certificate, not held back, and (with claims)
    /// an active claim; at most $3.
    pub(super) fn missing_sql(&self) -> String {
        let domains = self.cfg.domains_query.as_deref().unwrap_or_default();
        let domains = domains.trim().trim_end_matches(';');
        let claimed = match self.claims_required {
            true => {
                " AND EXISTS (SELECT 1 FROM tenant_gateway.custom_hostnames h \
                              WHERE h.name = d.name AND h.status = 'active')"
            }
            false => "",
        };
        format!(
            "SELECT d.name FROM ({domains}) AS d(name) \
              WHERE NOT (d.name = ANY($1::text[]) \
                         OR EXISTS (SELECT 1 FROM unnest($2::text[]) AS s(suffix) \
                                     WHERE right(d.name, length(s.suffix)) = s.suffix)) \
                AND NOT EXISTS (SELECT 1 FROM tenant_gateway.certificates c \
                                 WHERE c.name = d.name AND c.removed_at IS NULL) \
                AND NOT EXISTS (SELECT 1 FROM tenant_gateway.acme_names n \
                                 WHERE n.name = d.name AND n.next_attempt_at > now()){claimed} \
              LIMIT $3"
        )
    }

    /// An attempt for `name` unless one is running (which covers a change
    /// to the name meanwhile: [`Acme::mark_changed`]; a forced renewal asked
    /// for meanwhile is taken by the next scan).
    pub(super) fn spawn_attempt(self: &Arc<Self>, name: String, force: bool) {
        if self.attempts.is_closed() || !self.in_progress.start(&name) {
            return;
        }
        let me = self.clone();
        self.attempts.spawn(async move {
            // Released however the attempt ends, a panic included (one in
            // the ACME client on a CA's odd answer must not leave the name
            // never attempted again by this process).
            let mut running = me.in_progress.running(&name);
            let mut force = force;
            loop {
                tokio::select! {
                    biased;
                    _ = me.stopping.cancelled() => {
                        tracing::info!(name, "ACME: attempt stopped (shutting down)");
                        return;
                    }
                    result = me.attempt(&name, force) => {
                        if let Err(e) = result {
                            tracing::warn!(name, error = %e, "ACME: attempt failed");
                        }
                    }
                }
                // The name changed while the attempt ran: what the attempt
                // did may rest on the state before the change, so the change
                // is handled again, as often as changes keep arriving.
                loop {
                    if running.finish_unless_changed() {
                        return;
                    }
                    if me.after_change(&name).await {
                        break;
                    }
                }
                force = false;
            }
        });
    }

    /// Marks `name`'s running attempt, if any, as started on what was
    /// known before a change to the name (its domain row, tenant or
    /// claim): when it ends, the change is looked at again
    /// ([`Acme::after_change`]). Whether one was running.
    pub(super) fn mark_changed(&self, name: &str) -> bool {
        self.in_progress.mark_changed(name)
    }

    /// A change to `name` heard during its attempt, handled after it: the
    /// attempt may have refused the name on a cache entry the NOTIFY had
    /// not yet dropped, or stored a certificate for a name removed
    /// meanwhile (storing makes it live again). A name no longer served is
    /// retired (at shutdown too: a certificate stored in the last moments
    /// is not left live); a served one is cleared of its refusal and
    /// attempted once more (`true`), unless the gateway is stopping.
    async fn after_change(&self, name: &str) -> bool {
        let stopping = self.attempts.is_closed();
        self.handle_change(name, !stopping).await == Some(true) && !self.attempts.is_closed()
    }

    /// At shutdown, within `budget` (the listeners' grace period, after
    /// which the process ends whatever runs): no new attempts; the running
    /// ones get a quarter of it (at most `STOP_WAIT`) to end by themselves
    /// (an issued certificate being stored), then are stopped at their
    /// next wait; then one statement frees every order lease this process
    /// held, records its unfinished orders as `stopped` and drops their
    /// challenges. So the fleet (the new process of an upgrade first) can
    /// order those names at once instead of when the leases expire
    /// (`LEASE`, 7 minutes, during which an on-demand handshake for such a
    /// name waits in vain). How many leases were freed.
    pub async fn stop(&self, budget: Duration) -> Result<u64, AcmeError> {
        self.attempts.close();
        let natural = (budget / 4).min(STOP_WAIT);
        if tokio::time::timeout(natural, self.attempts.wait()).await.is_err() {
            self.stopping.cancel();
            let _ = tokio::time::timeout(natural, self.attempts.wait()).await;
        }
        tracing::info!("ACME: stopping; freeing this gateway's order leases");
        let freed: i64 = bounded_by(
            (budget / 2).min(QUERY_DEADLINE),
            "freeing this gateway's order leases",
            sqlx::query_scalar(&format!(
                "WITH freed AS (
                      UPDATE tenant_gateway.acme_names SET {FREE_LEASE} WHERE lease_owner = $1 RETURNING name),
                  stopped AS (
                      UPDATE tenant_gateway.acme_orders SET result = 'stopped'
                       WHERE gateway = $1 AND result IS NULL AND started_at > now() - interval '1 hour'
                   RETURNING name),
                  cleared AS (
                      DELETE FROM tenant_gateway.acme_challenges c USING stopped s WHERE c.name = s.name)
                 SELECT count(*) FROM freed"
            ))
            .bind(&self.gateway_id)
            .fetch_one(&self.db),
        )
        .await?;
        Ok(u64::try_from(freed).unwrap_or(0))
    }

    pub(super) async fn attempt(&self, name: &str, force_hint: bool) -> Result<(), AcmeError> {
        let eligible = match self.eligible_for(name).await {
            Some(tenant) => match self.www_may_order(name).await {
                Ok(()) => Some(tenant),
                Err(why) => {
                    tracing::info!(name, reason = %why, "ACME: a www. name served through its stripped name does not point here; no order");
                    None
                }
            },
            None => None,
        };
        let Some(tenant) = eligible else {
            tracing::debug!(name, "ACME: not eligible; no order");
            // The scan leaves it alone for a while (a change to the name
            // clears this at once: `welcome_back`), a forced renewal too:
            // it stays forced, and goes ahead once the name is eligible.
            bounded(
                "holding back a refused name",
                sqlx::query(&format!(
                    "INSERT INTO tenant_gateway.acme_names (name, next_attempt_at, last_error)
                     VALUES ($1, now() + interval '{NOT_ELIGIBLE_RETRY}', $2)
                     ON CONFLICT (name) DO UPDATE SET next_attempt_at = EXCLUDED.next_attempt_at,
                         last_error = EXCLUDED.last_error, updated_at = now()
                      WHERE acme_names.lease_owner IS NULL"
                ))
                .bind(name)
                .bind(NOT_ELIGIBLE)
                .execute(&self.db),
            )
            .await?;
            return Ok(());
        };
        bounded(
            "registering the name",
            sqlx::query("INSERT INTO tenant_gateway.acme_names (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .execute(&self.db),
        )
        .await?;
        let (due, forced): (bool, bool) = bounded(
            "reading the name's state",
            sqlx::query_as(
                "SELECT next_attempt_at <= now(), force_renew FROM tenant_gateway.acme_names WHERE name = $1",
            )
            .bind(name)
            .fetch_one(&self.db),
        )
        .await?;
        let now = unix_now();
        if !forced && self.store.issued(name).is_some_and(|c| !c.renewal_due(now)) {
            return Ok(());
        }
        if !due {
            tracing::debug!(name, force_hint, "ACME: backing off");
            return Ok(());
        }
        // Wait for one of this gateway's order slots within the tenant's
        // share, holding no connection.
        let _slot = self.slots.acquire(&tenant).await?;
        // One order per name across the fleet.
        let Some(forced) = self.claim(name).await? else {
            tracing::debug!(
                name,
                "ACME: another gateway holds the order lease (or the name is not due)"
            );
            return Ok(());
        };
        match self.prepare(name, &tenant, forced).await {
            Ok(Prepared::Order(order_id)) => self.run_order(name, order_id).await,
            Ok(Prepared::NotNeeded) => self.release(name, None).await,
            Ok(Prepared::RateLimited(why)) => {
                tracing::warn!(name, tenant, reason = %why, "ACME: rate limit holds back the order for {name}: {why}");
                self.metrics
                    .acme_orders
                    .with_label_values(&[name, "rate_limited"])
                    .inc();
                self.release(name, Some((&format!("rate limited: {why}"), RATE_LIMITED_RETRY)))
                    .await
            }
            Ok(Prepared::KeyConflict(why)) => {
                tracing::error!(name, reason = %why, "ACME: {why}");
                self.release(name, Some((&why, self.cfg.retry_base))).await
            }
            Err(e) => {
                if let Err(e) = self.release(name, None).await {
                    tracing::error!(name, error = %e, "ACME: cannot free the order lease; it expires on its own");
                }
                Err(e)
            }
        }
    }

    /// Take the name's order lease if it is due and the lease is free,
    /// expired, or left by this process (which runs one attempt per name at
    /// a time). `Some(force_renew)` when taken.
    pub(super) async fn claim(&self, name: &str) -> Result<Option<bool>, AcmeError> {
        bounded(
            "claiming the order lease",
            sqlx::query_scalar(
                "UPDATE tenant_gateway.acme_names
                    SET lease_owner = $2, lease_until = now() + make_interval(secs => $3),
                        ordering_since = now(), updated_at = now()
                  WHERE name = $1 AND next_attempt_at <= now()
                    AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until <= now())
              RETURNING force_renew",
            )
            .bind(name)
            .bind(&self.gateway_id)
            .bind(LEASE.as_secs_f64())
            .fetch_optional(&self.db),
        )
        .await
    }

    /// Free the lease without an order; `held_back`: why the name waits,
    /// and how long, before its next attempt.
    pub(super) async fn release(&self, name: &str, held_back: Option<(&str, Duration)>) -> Result<(), AcmeError> {
        let sql = match held_back {
            None => format!("UPDATE tenant_gateway.acme_names SET {FREE_LEASE} WHERE name = $1 AND lease_owner = $2"),
            Some(_) => format!(
                "UPDATE tenant_gateway.acme_names SET {FREE_LEASE}, next_attempt_at = now() + make_interval(secs => $4),
                     last_error = $3 WHERE name = $1 AND lease_owner = $2"
            ),
        };
        let (last_error, wait) = held_back.map_or((None, 0.0), |(why, wait)| (Some(why), wait.as_secs_f64()));
        let sql = &sql;
        retry_once(QUERY_DEADLINE, "freeing the order lease", || async move {
            let query = sqlx::query(sql).bind(name).bind(&self.gateway_id);
            let query = match last_error {
                Some(why) => query.bind(why).bind(wait),
                None => query,
            };
            query.execute(&self.db).await?;
            Ok(())
        })
        .await
    }

    /// Say that this gateway seals with its key (migration 0008): at start
    /// and every scan.
    pub(super) async fn key_seen(&self) -> Result<(), AcmeError> {
        bounded(
            "recording the sealing key",
            sqlx::query(
                "INSERT INTO tenant_gateway.sealing_keys (fingerprint, live_until)
                 VALUES ($1, now() + make_interval(secs => $2))
                 ON CONFLICT (fingerprint) DO UPDATE
                     SET live_until = greatest(sealing_keys.live_until, EXCLUDED.live_until)",
            )
            .bind(self.seal.fingerprint())
            .bind(KEY_LIVE_FOR.max(self.cfg.check_interval * 3).as_secs_f64())
            .execute(&self.db),
        )
        .await?;
        Ok(())
    }

    /// Whether another gateway sealed with another key lately: a secret
    /// this gateway cannot open is then someone else's to open, not to be
    /// replaced.
    pub(super) async fn other_key_live(&self) -> Result<bool, AcmeError> {
        bounded(
            "looking for other sealing keys",
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM tenant_gateway.sealing_keys
                                 WHERE fingerprint <> $1 AND live_until > now())",
            )
            .bind(self.seal.fingerprint())
            .fetch_one(&self.db),
        )
        .await
    }

    /// Under a fresh lease: re-check (another gateway may have just
    /// finished), apply the rate limits, log the order (counted against
    /// `tenant`).
    pub(super) async fn prepare(&self, name: &str, tenant: &str, forced: bool) -> Result<Prepared, AcmeError> {
        let stored = match self.load_one(name).await {
            Err(AcmeError::Unreadable { what, why }) => {
                if self.other_key_live().await? {
                    return Ok(Prepared::KeyConflict(format!("{} ({why})", left_for_other_key(&what))));
                }
                tracing::warn!(name, error = %why, "ACME: the stored {what} cannot be used (sealed under a key no longer configured, or damaged); ordering a new one");
                None
            }
            loaded => loaded?,
        };
        if !forced && stored.is_some_and(|c| !c.renewal_due(unix_now())) {
            return Ok(Prepared::NotNeeded);
        }
        if let Some(why) = self.account_conflict().await? {
            return Ok(Prepared::KeyConflict(why));
        }
        match bounded("logging the order", self.log_order(name, tenant)).await? {
            Ok(order_id) => Ok(Prepared::Order(order_id)),
            Err(why) => Ok(Prepared::RateLimited(why)),
        }
    }

    /// Log an order for `name` (of `tenant`) if every budget has room
    /// ([`policy::over_budget`]): its `acme_orders` row, or why not. The
    /// count and the row are one transaction under an advisory lock, so
    /// attempts running at once on any gateway of the fleet never pass a
    /// budget together (orders are rare: the lock is never contended for
    /// long).
    async fn log_order(&self, name: &str, tenant: &str) -> Result<Result<i64, String>, sqlx::Error> {
        let domain = registered_domain(name);
        let mut tx = self.db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ORDER_BUDGET_LOCK)
            .execute(&mut *tx)
            .await?;
        let (hour, tenant_hour, domain_week): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE started_at > now() - interval '1 hour'),
                    count(*) FILTER (WHERE tenant = $2 AND started_at > now() - interval '1 hour'),
                    count(*) FILTER (WHERE registered_domain = $1 AND started_at > now() - interval '7 days')
               FROM tenant_gateway.acme_orders WHERE started_at > now() - interval '7 days'",
        )
        .bind(&domain)
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
        let recent = policy::RecentOrders {
            hour,
            tenant_hour,
            domain_week,
        };
        let budgets = policy::Budgets {
            per_hour: self.cfg.orders_per_hour,
            per_tenant_per_hour: self.cfg.orders_per_tenant_per_hour,
            per_domain_per_week: self.cfg.orders_per_domain_per_week,
        };
        if let Some(why) = policy::over_budget(recent, budgets, tenant, &domain) {
            return Ok(Err(why));
        }
        let order_id = sqlx::query_scalar(
            "INSERT INTO tenant_gateway.acme_orders (name, registered_domain, gateway, tenant)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(&domain)
        .bind(&self.gateway_id)
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(order_id))
    }

    /// The order under `ORDER_DEADLINE`, then its record, whatever happened.
    pub(super) async fn run_order(&self, name: &str, order_id: i64) -> Result<(), AcmeError> {
        tracing::info!(name, gateway = %self.gateway_id, "ACME: ordering a certificate");
        let issued = match bounded_by(ORDER_DEADLINE, "the order", self.order(name)).await {
            Ok((chain, key_pem)) => self.store_issued(name, order_id, &chain, &key_pem).await,
            Err(e) => Err(e),
        };
        let Err(e) = issued else { return Ok(()) };
        self.metrics.acme_orders.with_label_values(&[name, "failed"]).inc();
        let (failures, wait) = self.record_failure(name, order_id, &e.to_string()).await.map_err(|write| {
            tracing::error!(name, error = %write, order_error = %e, "ACME: cannot record the failed order; its lease expires on its own");
            write
        })?;
        tracing::warn!(name, failures, retry_in_secs = wait.as_secs_f64(), error = %e, "ACME: order failed; keeping the current certificate");
        Ok(())
    }

    /// Store a new certificate and end the attempt as issued (one transaction).
    pub(super) async fn store_issued(
        &self,
        name: &str,
        order_id: i64,
        chain: &str,
        key_pem: &str,
    ) -> Result<(), AcmeError> {
        let cert = Cert::from_pem(chain.as_bytes(), key_pem.as_bytes(), name).map_err(other)?;
        let key_enc = self.seal.seal(&format!("cert:{name}"), key_pem.as_bytes())?;
        let (not_before, not_after) = (cert.not_before as f64, cert.not_after as f64);
        // Renewal between 60 % and 66.7 % of the lifetime, spread so that
        // names issued together do not renew together.
        let renew_at = renewal_point(cert.not_before, cert.not_after, rand::random::<f64>());
        let cert = cert.with_renew_at(Some(renew_at));
        let key_enc = &key_enc;
        retry_once(QUERY_DEADLINE, "storing the certificate", || async move {
            let mut tx = self.db.begin().await?;
            sqlx::query(
                "INSERT INTO tenant_gateway.certificates
                     (name, chain_pem, key_enc, not_before, not_after, issued_at, renew_after)
                 VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5), now(), to_timestamp($6))
                 ON CONFLICT (name) DO UPDATE SET chain_pem = EXCLUDED.chain_pem, key_enc = EXCLUDED.key_enc,
                     not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after, issued_at = now(),
                     renew_after = EXCLUDED.renew_after, removed_at = NULL",
            )
            .bind(name)
            .bind(chain)
            .bind(key_enc)
            .bind(not_before)
            .bind(not_after)
            .bind(renew_at as f64)
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "UPDATE tenant_gateway.acme_names SET failures = 0, last_error = NULL, force_renew = false,
                     next_attempt_at = now(), {FREE_LEASE} WHERE name = $1 AND lease_owner = $2"
            ))
            .bind(name)
            .bind(&self.gateway_id)
            .execute(&mut *tx)
            .await?;
            end_order(&mut tx, name, order_id, "issued").await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
        // Counted and logged before it is presented: whoever sees the
        // certificate served also finds the order's record.
        self.metrics.acme_orders.with_label_values(&[name, "issued"]).inc();
        tracing::info!(name, "ACME: certificate issued and stored");
        self.metrics.cert_expiry.with_label_values(&[name]).set(cert.not_after);
        self.store.add_issued(cert);
        self.arrived(name);
        Ok(())
    }

    /// End the attempt as failed (one transaction): failures + 1, the error,
    /// the back-off, the lease freed. Returns the failures and the back-off
    /// (none when another gateway has taken over the expired lease).
    pub(super) async fn record_failure(
        &self,
        name: &str,
        order_id: i64,
        error: &str,
    ) -> Result<(i32, Duration), AcmeError> {
        let jitter = 0.5 + f64::from(rand::random::<u32>()) / f64::from(u32::MAX);
        retry_once(QUERY_DEADLINE, "recording the failed order", || async move {
            let mut tx = self.db.begin().await?;
            let failures: Option<i32> = sqlx::query_scalar(&format!(
                "UPDATE tenant_gateway.acme_names SET failures = failures + 1, last_error = $3, {FREE_LEASE}
                  WHERE name = $1 AND lease_owner = $2 RETURNING failures"
            ))
            .bind(name)
            .bind(&self.gateway_id)
            .bind(error)
            .fetch_optional(&mut *tx)
            .await?;
            let mut wait = Duration::ZERO;
            if let Some(failures) = failures {
                wait = backoff(
                    self.cfg.retry_base,
                    self.cfg.retry_max,
                    u32::try_from(failures).unwrap_or(1),
                    jitter,
                );
                sqlx::query("UPDATE tenant_gateway.acme_names SET next_attempt_at = now() + make_interval(secs => $2) WHERE name = $1")
                    .bind(name)
                    .bind(wait.as_secs_f64())
                    .execute(&mut *tx)
                    .await?;
            }
            end_order(&mut tx, name, order_id, "failed").await?;
            tx.commit().await?;
            Ok((failures.unwrap_or(0), wait))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_outlives_every_bounded_step_of_an_attempt() {
        // Before the order: claim, certificate load, rate limit, order row;
        // after it: the final record, tried twice.
        assert!(LEASE >= ORDER_DEADLINE + QUERY_DEADLINE * 6);
    }
}
