//! Issued certificates between PostgreSQL and memory: a served name's stored
//! certificate is loaded at its first handshake (one query, coalesced per
//! name, bounded); a NOTIFY reloads it where it is in memory (or awaited);
//! a name no longer served has its certificate retired fleet-wide and, after
//! `acme.removed_certificate_grace_secs`, deleted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

/// Handshakes waiting for a name's certificate: how many, and how to wake
/// them when it arrives in memory.
pub(super) type Waiters = Mutex<HashMap<String, (usize, Arc<tokio::sync::Notify>)>>;

/// Names being loaded from the database, each with its [`LoadGate`].
pub(super) type Loading = Mutex<HashMap<String, Arc<LoadGate>>>;

/// One name's load: loads take turns on it (of handshakes, the first
/// loads, the others find the certificate in memory).
#[derive(Debug, Default)]
pub(super) struct LoadGate {
    turn: tokio::sync::Mutex<()>,
    /// A certificate NOTIFY for the name came while a load may have been
    /// reading its row: the load reads the row again before it is done.
    /// Otherwise a load that read the row before its retirement (or
    /// renewal) could finish after the NOTIFY was handled, and put the
    /// retired (or old) certificate in memory until evicted.
    changed: AtomicBool,
    /// A NOTIFY's reload waits for its turn: later NOTIFYs need none of
    /// their own (it reads after them).
    reload_queued: AtomicBool,
    /// Its [`Gate`]s (changed under the map's lock): the last one out
    /// removes it from the map.
    holders: AtomicUsize,
}

/// Registers a handshake waiting for a name's certificate while it lives.
pub(super) struct Waiting<'a> {
    map: &'a Waiters,
    name: String,
    notify: Arc<tokio::sync::Notify>,
}

impl<'a> Waiting<'a> {
    pub(super) fn new(map: &'a Waiters, name: &str) -> Waiting<'a> {
        let mut waiters = map.lock();
        let entry = waiters.entry(name.to_owned()).or_default();
        entry.0 += 1;
        Waiting {
            map,
            name: name.to_owned(),
            notify: entry.1.clone(),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if let Some(entry) = map.get_mut(&self.name) {
            entry.0 -= 1;
            if entry.0 == 0 {
                map.remove(&self.name);
            }
        }
    }
}

/// What a handshake's load of a stored certificate came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loaded {
    /// In memory now.
    InMemory,
    /// None stored, or none that can be used: an order may replace it.
    Missing,
    /// The database did not answer in time, or failed.
    Failed,
}

/// Stop presenting the names' stored certificates on every gateway (the
/// row updates NOTIFY them) and start their grace period before deletion.
/// Also the claims' `remove`, inside its transaction. One statement,
/// whether or not any of them is stored.
pub async fn retire_certificates<'e>(db: impl sqlx::PgExecutor<'e>, names: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenant_gateway.certificates SET removed_at = now() WHERE name = ANY($1) AND removed_at IS NULL",
    )
    .bind(names)
    .execute(db)
    .await?;
    Ok(())
}

/// Names served again: their retired certificates (if still stored) serve
/// again, on every gateway that asks for them. One statement.
pub async fn restore_certificates<'e>(db: impl sqlx::PgExecutor<'e>, names: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenant_gateway.certificates SET removed_at = NULL WHERE name = ANY($1) AND removed_at IS NOT NULL",
    )
    .bind(names)
    .execute(db)
    .await?;
    Ok(())
}

impl Acme {
    /// A handshake from `client` for `name` found no certificate in
    /// memory. A name not served (the tenant cache says so, negatively
    /// cached) costs nothing more; a served name's stored certificate is
    /// loaded (one indexed query, coalesced per name, under
    /// `LOAD_DEADLINE`, at most `acme.load_rate` a second per client); an
    /// eligible name without one is ordered, and the handshake waits
    /// (bounded) for it. A load that failed or did not finish in time
    /// (the database is slow or busy) orders nothing: the order's
    /// statements would go to the same connections.
    pub async fn on_demand(&self, name: &str, client: Option<std::net::IpAddr>) {
        if self.store.lookup(name).is_some() || self.served(name).await != Some(true) {
            return;
        }
        if !self.admit_load(client) {
            return;
        }
        match self.load_coalesced(name).await {
            Loaded::InMemory | Loaded::Failed => return,
            Loaded::Missing => {}
        }
        if !self.eligible(name).await {
            return;
        }
        if let Err(why) = self.www_may_order(name).await {
            tracing::debug!(name, reason = %why, "ACME: a www. name served through its stripped name does not point here; no order");
            return;
        }
        let waiting = Waiting::new(&self.waiting, name);
        let _ = self.wanted.send((name.to_owned(), false));
        let deadline = tokio::time::Instant::now() + self.cfg.on_demand_timeout;
        loop {
            // Registered before looking, so an arrival in between still wakes us.
            let arrived = waiting.notify.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.store.issued(name).is_some() {
                return;
            }
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(name, "on-demand certificate not ready in time; handshake falls back");
                    return;
                }
            }
        }
    }

    /// Load `name`'s stored certificate into memory unless a concurrent
    /// handshake already did.
    pub(super) async fn load_coalesced(&self, name: &str) -> Loaded {
        let gate = Gate::new(&self.loading, name);
        // The wait for the turn counts too: another load of the name (an
        // attempt's, a NOTIFY's) may hold it for as long as the database
        // takes, and the handshake then falls back in time.
        let load = async {
            let _turn = gate.gate.turn.lock().await;
            // In memory (another handshake loaded it), unless a NOTIFY came
            // since: then this turn reads it again.
            match self.store.issued(name).is_some() && !gate.gate.changed.load(Ordering::SeqCst) {
                true => None,
                false => Some(self.load_in_turn(name, &gate.gate).await),
            }
        };
        let result = match tokio::time::timeout(LOAD_DEADLINE, load).await {
            Ok(None) => return Loaded::InMemory,
            Ok(Some(Ok(Some(_)))) => "loaded",
            Ok(Some(Ok(None))) => "not_stored",
            Ok(Some(Err(e @ AcmeError::Unreadable { .. }))) => {
                // Replaced by an order, which this handshake asks for next.
                tracing::warn!(name, error = %e, "a stored certificate cannot be used; a new one is ordered");
                "unreadable"
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(name, error = %e, "cannot load a stored certificate");
                "error"
            }
            Err(_) => "timeout",
        };
        self.metrics.certificate_loads.with_label_values(&[result]).inc();
        match result {
            "loaded" => Loaded::InMemory,
            "not_stored" | "unreadable" => Loaded::Missing,
            _ if self.store.issued(name).is_some() => Loaded::InMemory,
            _ => Loaded::Failed,
        }
    }

    /// `name`'s row read and applied (loaded into memory, or dropped from
    /// it if retired or no longer stored), in turn with every other load of
    /// it (a handshake's, a NOTIFY's, a refresh's, an attempt's), so none
    /// applies a reading older than another's. (An attempt storing a new
    /// certificate and a retirement write to memory directly; their own
    /// NOTIFY then reads the row again after them.) The certificate now in
    /// memory.
    pub(super) async fn load_one(&self, name: &str) -> Result<Option<Arc<Cert>>, AcmeError> {
        let gate = Gate::new(&self.loading, name);
        let _turn = gate.gate.turn.lock().await;
        self.load_in_turn(name, &gate.gate).await
    }

    /// [`Self::load_one`] for the holder of `gate`'s turn: a reading during
    /// which a NOTIFY for the name came is not applied but done again.
    async fn load_in_turn(&self, name: &str, gate: &LoadGate) -> Result<Option<Arc<Cert>>, AcmeError> {
        read_settled(
            &self.loading,
            &gate.changed,
            || self.read_one(name),
            |row| self.apply(name, row),
        )
        .await
    }

    /// `name`'s stored certificate as [`Self::apply`] takes it.
    async fn read_one(&self, name: &str) -> Result<StoredCert, AcmeError> {
        let row = bounded(
            "loading a certificate",
            sqlx::query(
                "SELECT chain_pem, key_enc, removed_at IS NOT NULL, extract(epoch FROM renew_after)::bigint \
                   FROM tenant_gateway.certificates WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(&self.db),
        )
        .await?;
        let Some(row) = row else {
            return Ok(StoredCert::Gone);
        };
        if row.try_get::<bool, _>(2)? {
            return Ok(StoredCert::Gone);
        }
        let chain: String = row.try_get(0)?;
        let key_enc: Vec<u8> = row.try_get(1)?;
        let unreadable = |why: String| AcmeError::Unreadable {
            what: format!("certificate for {name}"),
            why,
        };
        let key = self
            .seal
            .open(&format!("cert:{name}"), &key_enc)
            .map_err(|e| unreadable(e.to_string()))?;
        let renew_at: Option<i64> = row.try_get(3)?;
        let cert = Cert::from_pem(chain.as_bytes(), &key, &format!("database:{name}"))
            .map_err(|e| unreadable(e.to_string()))?
            .with_renew_at(renew_at);
        Ok(StoredCert::Serving(cert))
    }

    /// A row read by [`Self::read_one`], into memory.
    fn apply(&self, name: &str, row: StoredCert) -> Option<Arc<Cert>> {
        match row {
            StoredCert::Gone => {
                self.unpresent(name);
                None
            }
            StoredCert::Serving(cert) => {
                self.metrics.cert_expiry.with_label_values(&[name]).set(cert.not_after);
                self.store.add_issued(cert);
                self.arrived(name);
                self.store.issued(name)
            }
        }
    }

    /// A certificate NOTIFY for `name` (stored, renewed or retired): where
    /// it is in memory, awaited by a handshake or being loaded, its row is
    /// read again and applied; otherwise it loads at its first handshake.
    /// A load in flight is told to read again (so it applies no reading
    /// from before the change), and the reload waits its turn in a task of
    /// its own, so the LISTEN loop waits for no load; NOTIFYs that come
    /// while one is queued share it ([`queue_reload`]). A reload that fails
    /// leaves the certificates in memory to be checked before the next scan.
    pub(super) fn certificate_notified(self: &Arc<Self>, name: &str) {
        let wanted = || self.store.issued(name).is_some() || self.waiting.lock().contains_key(name);
        let Some(queued) = queue_reload(&self.loading, name, wanted) else {
            return;
        };
        let (me, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            let gate = Gate::adopt(&me.loading, &name, queued);
            // Never closed: a permit always comes.
            let _slot = me.reload_slots.acquire().await;
            let _turn = gate.gate.turn.lock().await;
            // NOTIFYs from here on are read by this reading or queue another.
            gate.gate.reload_queued.store(false, Ordering::SeqCst);
            if let Err(e) = me.load_in_turn(&name, &gate.gate).await {
                me.refresh_due.store(true, Ordering::Release);
                tracing::error!(name, error = %e, "ACME: cannot load a notified certificate; checked again before the next scan");
            }
        });
    }

    /// A certificate for `name` is in memory now: wake the handshakes waiting for it.
    pub(super) fn arrived(&self, name: &str) {
        if let Some((_, notify)) = self.waiting.lock().get(name) {
            notify.notify_waiters();
        }
    }

    /// Bring the certificates in memory up to date after a LISTEN gap (a
    /// renewal or a retirement may have been missed): one light statement
    /// per `REFRESH_BATCH` names in memory (name, retired, `renew_after`),
    /// then only the names that changed are loaded again (a renewal moves
    /// `renew_after`) and the retired or deleted ones dropped. So a gap
    /// costs `certificate_cache_size / REFRESH_BATCH` statements, not a
    /// load, decryption and parse per name. `Err`: a batch could not be
    /// read (the caller tries again at its next scan).
    pub(super) async fn refresh_loaded(&self) -> Result<(), AcmeError> {
        let names = self.store.issued_names();
        for batch in names.chunks(REFRESH_BATCH) {
            let rows: Vec<(String, bool, Option<i64>)> = bounded(
                "checking the certificates in memory",
                sqlx::query_as(
                    "SELECT name, removed_at IS NOT NULL, extract(epoch FROM renew_after)::bigint \
                       FROM tenant_gateway.certificates WHERE name = ANY($1)",
                )
                .bind(batch)
                .fetch_all(&self.db),
            )
            .await?;
            let stored: HashMap<&str, (bool, Option<i64>)> = rows
                .iter()
                .map(|(n, retired, renew)| (n.as_str(), (*retired, *renew)))
                .collect();
            for name in batch {
                match stored.get(name.as_str()) {
                    None | Some((true, _)) => self.unpresent(name),
                    Some((false, renew_after)) => {
                        let changed = self.store.issued(name).is_some_and(|c| c.renew_at != *renew_after);
                        if changed {
                            if let Err(e) = self.load_one(name).await {
                                tracing::warn!(name, error = %e, "ACME: cannot refresh a certificate in memory");
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// [`Self::refresh_loaded`] if one is owed (a LISTEN gap, a refresh that
    /// failed), before a scan.
    pub(super) async fn refresh_if_due(&self) {
        if self.refresh_due.swap(false, std::sync::atomic::Ordering::AcqRel) {
            if let Err(e) = self.refresh_loaded().await {
                self.refresh_due.store(true, std::sync::atomic::Ordering::Release);
                tracing::warn!(error = %e, "ACME: cannot refresh the certificates in memory; retried at the next scan");
            }
        }
    }

    /// Stop presenting a name's issued certificate in this gateway, and
    /// drop the name's series (its orders' counts go with it: a fleet that
    /// adds and removes names would otherwise keep a series per name it
    /// ever ordered for).
    pub(super) fn unpresent(&self, name: &str) {
        if self.store.remove_issued(name) {
            let _ = self.metrics.cert_expiry.remove_label_values(&[name]);
            tracing::info!(name, "ACME: certificate retired; no longer presented");
        }
        for result in crate::metrics::ACME_ORDER_RESULTS {
            let _ = self.metrics.acme_orders.remove_label_values(&[name, result]);
        }
    }

    /// Whether `name` is still served (routed to a tenant in any state):
    /// `None` when the database cannot tell.
    pub(super) async fn served(&self, name: &str) -> Option<bool> {
        policy::served(&self.guard.resolve(name).await)
    }

    /// Names whose domain rows or claims changed (called after the tenant
    /// cache dropped them): a presented certificate of a name no longer
    /// served is retired fleet-wide; a name that needs one gets an attempt.
    /// A name whose attempt is running is also looked at again when that
    /// attempt ends (`Acme::mark_changed`).
    pub fn names_changed(self: &Arc<Self>, names: Vec<String>) {
        let names: Vec<String> = names.into_iter().filter(|name| self.custom(name)).collect();
        // Marked before anything is looked at: what such an attempt does
        // from here on may rest on the state before the change.
        let running: Vec<bool> = names.iter().map(|name| self.mark_changed(name)).collect();
        let me = self.clone();
        tokio::spawn(async move {
            let (mut www_gone, mut www_back) = (Vec::new(), Vec::new());
            for (name, running) in names.into_iter().zip(running) {
                // Logged once the change is handled here.
                let logged = running.then(|| name.clone());
                let served = me.handle_change(&name, true).await;
                // `www.` of the name is served as the name is: its own
                // certificate follows the name (never ordered from here:
                // only a handshake for it asks for one).
                if me.strip_www && !name.starts_with("www.") {
                    match served {
                        Some(false) => www_gone.push(format!("www.{name}")),
                        Some(true) => www_back.push(format!("www.{name}")),
                        None => {}
                    }
                }
                if served == Some(true) {
                    me.spawn_attempt(name.clone(), false);
                }
                if let Some(name) = logged {
                    tracing::info!(
                        name,
                        "ACME: the name changed during its attempt; looked at again when it ends"
                    );
                }
            }
            let (gone, back): (Vec<&str>, Vec<&str>) = (
                www_gone.iter().map(String::as_str).collect(),
                www_back.iter().map(String::as_str).collect(),
            );
            if let Err(e) = me.retire(&gone).await {
                tracing::error!(error = %e, "ACME: cannot retire the certificates of www. names");
            }
            if let Err(e) = me.welcome_back(&back).await {
                tracing::error!(error = %e, "ACME: cannot restore the certificates of www. names");
            }
        });
    }

    /// The tenant listener is (back) up: a domain row deleted or moved while
    /// it was down was not heard of ([`Acme::names_changed`] never ran for
    /// it), so each name whose certificate is in memory is asked again
    /// whether it is served, and retired if not (fleet-wide, as a heard
    /// change would be). One tenant lookup per name in memory (at most
    /// `acme.certificate_cache_size`), one at a time, in the background; a
    /// gap during the check makes it run once more when it ends.
    pub fn recheck_served(self: &Arc<Self>) {
        // SeqCst throughout: the caller's store-then-swap and the task's
        // store-then-load would otherwise let both see the other's old value
        // and neither run the check.
        self.recheck_again.store(true, Ordering::SeqCst);
        if self.rechecking.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                while me.recheck_again.swap(false, Ordering::SeqCst) {
                    let (mut checked, mut retired, mut unknown) = (0usize, 0usize, 0usize);
                    for name in me.store.issued_names().into_iter().filter(|n| me.custom(n)) {
                        checked += 1;
                        match me.handle_change(&name, false).await {
                            Some(false) => retired += 1,
                            Some(true) => {}
                            None => unknown += 1,
                        }
                    }
                    if checked > 0 {
                        tracing::info!(
                            checked,
                            retired,
                            unknown,
                            "ACME: the names of the certificates in memory looked up again after a tenant LISTEN gap"
                        );
                    }
                }
                me.rechecking.store(false, Ordering::SeqCst);
                // Asked for between the last look and the line above.
                if !me.recheck_again.load(Ordering::SeqCst) || me.rechecking.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    }

    /// A change to `name`, handled: retired if it is no longer served; if it
    /// is and `welcome`, [`Acme::welcome_back`]. Whether it is served
    /// (`None`: the database cannot tell).
    pub(super) async fn handle_change(&self, name: &str, welcome: bool) -> Option<bool> {
        let served = self.served(name).await;
        match served {
            Some(false) => {
                if let Err(e) = self.retire(&[name]).await {
                    tracing::error!(name, error = %e, "ACME: cannot retire the certificate of a removed name");
                }
            }
            Some(true) if welcome => {
                if let Err(e) = self.welcome_back(&[name]).await {
                    tracing::warn!(name, error = %e, "ACME: cannot clear the name's retirement");
                }
            }
            _ => {}
        }
        served
    }

    /// Names served (again): their retired certificates serve again, and a
    /// refusal by the guard no longer holds their next attempts back. Two
    /// statements, for one name or many (none: nothing).
    pub(super) async fn welcome_back(&self, names: &[&str]) -> Result<(), AcmeError> {
        if names.is_empty() {
            return Ok(());
        }
        bounded("clearing a retirement", restore_certificates(&self.db, names)).await?;
        bounded(
            "clearing a refusal",
            sqlx::query(
                "UPDATE tenant_gateway.acme_names SET next_attempt_at = now(), last_error = NULL
                  WHERE name = ANY($1) AND last_error = $2",
            )
            .bind(names)
            .bind(NOT_ELIGIBLE)
            .execute(&self.db),
        )
        .await?;
        Ok(())
    }

    /// Retire names' stored certificates: they leave memory here, the
    /// update NOTIFYs every other gateway, which drop them; their material
    /// is deleted after the grace period. One statement (none: nothing).
    pub(super) async fn retire(&self, names: &[&str]) -> Result<(), AcmeError> {
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            self.unpresent(name);
        }
        bounded("retiring a certificate", retire_certificates(&self.db, names)).await?;
        Ok(())
    }

    /// Delete certificates retired longer than `removed_certificate_grace_secs`.
    pub(super) async fn delete_retired(&self) -> Result<(), AcmeError> {
        let deleted: Vec<String> = bounded(
            "deleting retired certificates",
            sqlx::query_scalar(
                "WITH gone AS (DELETE FROM tenant_gateway.certificates
                                WHERE removed_at < now() - make_interval(secs => $1) RETURNING name)
                 DELETE FROM tenant_gateway.acme_names n USING gone WHERE n.name = gone.name AND n.lease_owner IS NULL
                 RETURNING n.name",
            )
            .bind(self.cfg.removed_certificate_grace.as_secs_f64())
            .fetch_all(&self.db),
        )
        .await?;
        if !deleted.is_empty() {
            tracing::info!(names = ?deleted, "ACME: retired certificates deleted after the grace period");
        }
        Ok(())
    }
}

/// A NOTIFY for `name`: tells a load in flight or waiting for its turn
/// that the row changed (it reads it again) and, if
/// the name is being loaded or `wanted` (in memory, awaited), queues one
/// reload unless one is queued already: the gate for it (held, to be
/// adopted by the reload's task: [`Gate::adopt`]), or `None`.
fn queue_reload(loading: &Loading, name: &str, wanted: impl FnOnce() -> bool) -> Option<Arc<LoadGate>> {
    let mut map = loading.lock();
    if !map.contains_key(name) && !wanted() {
        return None;
    }
    let gate = map.entry(name.to_owned()).or_default();
    gate.changed.store(true, Ordering::SeqCst);
    if gate.reload_queued.swap(true, Ordering::SeqCst) {
        return None;
    }
    gate.holders.fetch_add(1, Ordering::Relaxed);
    Some(gate.clone())
}

/// `read` again until no change was flagged while it read, then `apply`
/// the last reading. The check and `apply` hold `loading`'s lock, which
/// [`queue_reload`] takes too: a flag comes either before the check (read
/// again) or after the reading is applied (the NOTIFY's own reading then
/// follows it). A reading that fails is returned as it is.
async fn read_settled<T, R, E, F: Future<Output = Result<T, E>>>(
    loading: &Loading,
    changed: &AtomicBool,
    mut read: impl FnMut() -> F,
    apply: impl FnOnce(T) -> R,
) -> Result<R, E> {
    loop {
        changed.store(false, Ordering::SeqCst);
        let row = read().await?;
        let held = loading.lock();
        if !changed.load(Ordering::SeqCst) {
            let applied = apply(row);
            drop(held);
            return Ok(applied);
        }
        drop(held);
        tracing::debug!("certificate changed while loading; read again");
    }
}

/// A name's stored certificate as read: to serve, or not (none stored, or
/// retired).
enum StoredCert {
    Serving(Cert),
    Gone,
}

/// One load's hold on a name's load gate; the last one out removes the
/// gate from the map (holders are counted under the map's lock, so two
/// leaving at once cannot both see the other still there).
struct Gate<'a> {
    loading: &'a Loading,
    name: &'a str,
    gate: Arc<LoadGate>,
}

impl<'a> Gate<'a> {
    /// A new hold on `name`'s gate (made if there is none). Leaves the map
    /// however the load ends (a handshake's deadline can drop it while it
    /// waits its turn).
    fn new(loading: &'a Loading, name: &'a str) -> Gate<'a> {
        let mut map = loading.lock();
        let gate = map.entry(name.to_owned()).or_default();
        gate.holders.fetch_add(1, Ordering::Relaxed);
        Gate {
            loading,
            name,
            gate: gate.clone(),
        }
    }

    /// A hold taken already ([`queue_reload`]).
    fn adopt(loading: &'a Loading, name: &'a str, gate: Arc<LoadGate>) -> Gate<'a> {
        Gate { loading, name, gate }
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut loading = self.loading.lock();
        if self.gate.holders.fetch_sub(1, Ordering::Relaxed) == 1 {
            loading.remove(self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_leaves_the_map_with_its_last_holder_even_when_cancelled() {
        let loading: Loading = Mutex::default();
        let hold = |name| Gate::new(&loading, name);
        let first = hold("a.example");
        let turn = first.gate.turn.lock().await;
        // A second handshake waits its turn and is dropped (its deadline).
        let second = hold("a.example");
        let waiting = async move {
            let _turn = second.gate.turn.lock().await;
        };
        assert!(tokio::time::timeout(Duration::from_millis(10), waiting).await.is_err());
        assert!(loading.lock().contains_key("a.example"), "the first still holds it");
        drop(turn);
        drop(first);
        assert!(loading.lock().is_empty());
    }

    /// Holders leaving at once on two threads: the map keeps no gate (a
    /// gate left behind would make every NOTIFY for the name reload it).
    #[test]
    fn the_last_of_many_holders_leaving_at_once_removes_the_gate() {
        let loading: Loading = Mutex::default();
        for _ in 0..200 {
            let holds: Vec<Gate<'_>> = (0..4).map(|_| Gate::new(&loading, "a.example")).collect();
            std::thread::scope(|s| {
                for g in holds {
                    s.spawn(move || drop(g));
                }
            });
            assert!(loading.lock().is_empty());
        }
    }

    /// NOTIFYs for a name: nothing for a name neither loading nor wanted
    /// (no gate made); one reload queued for a wanted one, and NOTIFYs
    /// while it waits share it (each flags the change); once it has its
    /// turn (and says so), the next NOTIFY queues another.
    #[test]
    fn notifies_queue_one_reload_at_a_time() {
        let loading: Loading = Mutex::default();
        assert!(queue_reload(&loading, "a.example", || false).is_none());
        assert!(loading.lock().is_empty(), "no gate for a name nobody needs");
        let queued = queue_reload(&loading, "a.example", || true).expect("queued");
        let reload = Gate::adopt(&loading, "a.example", queued);
        assert!(reload.gate.changed.swap(false, Ordering::SeqCst));
        // Loading now: wanted or not, a NOTIFY flags it and shares the reload.
        assert!(queue_reload(&loading, "a.example", || false).is_none());
        assert!(reload.gate.changed.load(Ordering::SeqCst));
        reload.gate.reload_queued.store(false, Ordering::SeqCst);
        let again = queue_reload(&loading, "a.example", || false).expect("queued again");
        let second = Gate::adopt(&loading, "a.example", again);
        drop(reload);
        assert!(loading.lock().contains_key("a.example"), "the second reload holds it");
        drop(second);
        assert!(loading.lock().is_empty());
    }

    /// A NOTIFY that comes while a load reads the row (here: between the
    /// reading and its answer) makes the load read again, and only the
    /// later reading is applied; one for another name flags nothing, and
    /// one for a name nobody loads says so.
    #[tokio::test]
    async fn a_change_notified_during_a_load_is_read_again() {
        let loading: Loading = Mutex::default();
        let gate = loading.lock().entry(String::from("a.example")).or_default().clone();
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let (notified_tx, notified_rx) = tokio::sync::oneshot::channel::<()>();
        let mut notified_rx = Some(notified_rx);
        let mut applied = Vec::new();
        let load = read_settled(
            &loading,
            &gate.changed,
            || {
                let n = reads.fetch_add(1, Ordering::SeqCst);
                let wait = notified_rx.take();
                async move {
                    // The first reading answers only after the NOTIFY was handled.
                    if let Some(rx) = wait {
                        let _ = rx.await;
                    }
                    Ok::<_, ()>(if n == 0 { "before the retirement" } else { "retired" })
                }
            },
            |row| {
                applied.push(row);
                row
            },
        );
        let notify = async {
            assert!(
                queue_reload(&loading, "b.example", || false).is_none(),
                "nobody loads b.example"
            );
            assert!(
                !gate.changed.load(Ordering::SeqCst),
                "another name's NOTIFY flags nothing"
            );
            let reload = queue_reload(&loading, "a.example", || false).expect("a reload queued");
            let _ = notified_tx.send(());
            reload
        };
        let (row, reload) = tokio::join!(load, notify);
        drop(Gate::adopt(&loading, "a.example", reload));
        assert_eq!(row, Ok("retired"));
        assert_eq!(
            applied,
            ["retired"],
            "the reading from before the change is not applied"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // Nothing flagged: one reading; a failed one is returned, not applied.
        let row = read_settled(&loading, &gate.changed, || async { Ok::<_, ()>("stored") }, |r| r).await;
        assert_eq!(row, Ok("stored"));
        let row = read_settled(
            &loading,
            &gate.changed,
            || async { Err::<&str, _>("down") },
            |_| unreachable!(),
        )
        .await;
        assert_eq!(row, Err("down"));
    }
}
