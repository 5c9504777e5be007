//! The checkers: every gateway runs one; claims due for a check (pending),
//! a routability look (verified) or, with `recheck_interval_secs`, a look
//! at where their names point (active, moved) are leased
//! to one gateway at a time (`Store::lease`: `FOR UPDATE SKIP LOCKED` plus
//! a lease that outlives a crashed checker by a bounded time), checked at
//! most `max_concurrent_checks` at once, and written back with their next
//! check time (back-off capped at `check_interval_secs`). A free slot goes
//! to the tenant with the fewest checks running (`share`), so one tenant's
//! many slow or unanswering claims do not hold back another's. A new claim or a
//! retry wakes the checkers through NOTIFY; otherwise they poll the indexed
//! `next_check_at` every few seconds (one query, whatever the number of
//! claims). Also keeps the claim gauges: counted again only when claims
//! changed (the trigger of migration 0005 NOTIFYs [`COUNTS_CHANNEL`]), when
//! a notification could have been missed (no LISTEN connection), and at
//! least every `RECOUNT_AT_LEAST_EVERY`; the oldest pending claim's age
//! moves with the clock in between.
//!
//! Every wait is bounded: each database step by `STEP` (and the pool's
//! `statement_timeout`), each claim's whole handling by its check's timeout
//! plus three steps (its reads and record, and a second look when its name
//! changed during the check), the LISTEN connection by a probe; a stalled database or
//! resolver delays this gateway's checks, never stops them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::check::Checker;
use super::policy::{self, Finding, HostnameStatus, Pointing};
use super::settings::CustomDomainsConfig;
use super::share;
use super::store::{Claim, Outcome, Store, StoreError, COUNTS_CHANNEL, WAKE_CHANNEL};
use crate::clock::unix_now;
use crate::metrics::Metrics;

/// Longest wait between two looks for due claims.
const POLL_MAX: Duration = Duration::from_secs(5);
/// Deadline of one database step (leasing due claims, counting them).
const STEP: Duration = Duration::from_secs(10);
/// Active and moved claims due for a look read per free slot, for
/// [`share::pick`] to choose among (the earliest due of all tenants).
const RECHECK_CANDIDATES_PER_SLOT: usize = 16;
/// How often the claim gauges are looked at (counted only if due, see
/// [`must_count`]).
const GAUGES_EVERY: Duration = Duration::from_secs(15);
/// Counted at least this often even without a notification (a change
/// nothing announced: a trigger disabled by hand, a notification dropped).
const RECOUNT_AT_LEAST_EVERY: Duration = Duration::from_secs(300);

/// Whether the claim gauges must count the claims again: they changed
/// (`stale`), a change could have gone unheard (`!listening`), or the last
/// count (`since`; `None`: none yet) is older than [`RECOUNT_AT_LEAST_EVERY`].
fn must_count(stale: bool, listening: bool, since: Option<Duration>) -> bool {
    stale || !listening || since.is_none_or(|d| d >= RECOUNT_AT_LEAST_EVERY)
}

/// The last count of the claims: when, and the oldest pending claim's
/// creation (unix seconds), from which its age is kept current.
struct Counted {
    at: Instant,
    oldest_pending: Option<i64>,
}

pub struct Worker {
    store: Store,
    listen_db: PgPool,
    checker: Checker,
    cfg: CustomDomainsConfig,
    owner: String,
    metrics: Arc<Metrics>,
    /// Claims changed since they were last counted ([`COUNTS_CHANNEL`]).
    /// Starts set: the first look counts.
    counts_stale: AtomicBool,
    /// The LISTEN connection is up: a change would be heard.
    listening: AtomicBool,
    /// The schema is prepared and the checkers run ([`Worker::run`]).
    running: AtomicBool,
    /// A [`Worker::resumed`] came before [`Worker::run`]: `run` looks then.
    resumed_early: AtomicBool,
    /// Names this gateway is checking, marked when their domain row or
    /// tenant changes during the check ([`Worker::names_changed`]): what
    /// the check read may predate the change, so the claim is looked at
    /// again once its outcome is written.
    checking: crate::inflight::InFlight,
}

impl Worker {
    pub fn new(
        store: Store,
        listen_db: PgPool,
        checker: Checker,
        cfg: CustomDomainsConfig,
        metrics: Arc<Metrics>,
    ) -> Worker {
        let owner = format!(
            "{}:{}:{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        Worker {
            store,
            listen_db,
            checker,
            cfg,
            owner,
            metrics,
            counts_stale: AtomicBool::new(true),
            listening: AtomicBool::new(false),
            running: AtomicBool::new(false),
            resumed_early: AtomicBool::new(false),
            checking: crate::inflight::InFlight::default(),
        }
    }

    /// Runs for the life of the gateway (the schema is prepared by the caller).
    pub async fn run(self: Arc<Self>) {
        // A gap heard before the schema was ready (the first LISTEN at
        // start is one: what changed while this gateway was down went
        // unheard) is looked at now; one heard from here on looks itself.
        // SeqCst: `resumed` stores its flag before it reads `running`.
        self.running.store(true, Ordering::SeqCst);
        if self.resumed_early.swap(false, Ordering::SeqCst) {
            self.look_at_verified().await;
        }
        if self.cfg.rechecks() {
            self.spread_overdue().await;
        }
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(self.clone().listen(wake_tx));
        let poll = POLL_MAX.min(self.cfg.check_interval);
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(GAUGES_EVERY);
        let mut counted = None;
        let mut running = tokio::task::JoinSet::new();
        // Slots are refilled as checks end, once half of them are free (or
        // all, below two), so a busy checker reads the due claims once per
        // few checks, not once per check.
        let refill_at = (self.cfg.max_concurrent_checks as usize / 2).max(1);
        loop {
            tokio::select! {
                _ = tick.tick() => self.fill(&mut running).await,
                Some(()) = wake.recv() => self.fill(&mut running).await,
                Some(_) = running.join_next(), if !running.is_empty() => {
                    if running.len() < refill_at {
                        self.fill(&mut running).await;
                    }
                }
                _ = gauges.tick() => self.refresh_gauges(&mut counted).await,
            }
        }
    }

    async fn listen(self: Arc<Self>, wake: tokio::sync::mpsc::Sender<()>) {
        loop {
            let mut l = match PgListener::connect_with(&self.listen_db).await {
                Ok(mut l) => {
                    l.eager_reconnect(false);
                    match l.listen_all([WAKE_CHANNEL, COUNTS_CHANNEL]).await {
                        Ok(()) => l,
                        Err(e) => {
                            tracing::warn!(error = %e, "custom hostnames: cannot LISTEN; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "custom hostnames: cannot LISTEN; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Changes while no connection listened went unheard.
            self.counts_stale.store(true, Ordering::Release);
            self.listening.store(true, Ordering::Release);
            while let Some(n) = crate::tenant::invalidate::next_notification(&mut l, STEP).await {
                if n.channel() == COUNTS_CHANNEL {
                    self.counts_stale.store(true, Ordering::Release);
                } else {
                    // A full channel already holds a wake-up: nothing lost.
                    let _ = wake.try_send(());
                }
            }
            self.listening.store(false, Ordering::Release);
            tracing::warn!("custom hostnames: LISTEN connection lost; reconnecting");
        }
    }

    /// Fill the free check slots (`max_concurrent_checks` less the checks
    /// in `running`): read the due claims, let [`share::pick`] choose
    /// which take the slots (the tenants with fewest checks running across
    /// the fleet first), lease those and start their checks. A claim is
    /// leased only when its check can start, so it is checked well inside
    /// its lease, and a slow check holds one slot, not a whole batch. When
    /// another gateway leased some of the chosen claims first, the choice
    /// is made once more.
    async fn fill(self: &Arc<Self>, running: &mut tokio::task::JoinSet<()>) {
        let cap = self.cfg.max_concurrent_checks as usize;
        // Well inside the lease: a claim given up on here is checked again
        // once its lease ends.
        let each = self.cfg.check_timeout + STEP * 3;
        let lease = self.cfg.check_timeout * 2 + Duration::from_secs(30);
        for _ in 0..2 {
            let free = cap.saturating_sub(running.len());
            if free == 0 {
                return;
            }
            let leased = tokio::time::timeout(STEP, self.take(free, lease)).await;
            let (claims, chosen) = match leased {
                Ok(Ok(leased)) => leased,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "custom hostnames: cannot lease due claims");
                    return;
                }
                Err(_) => {
                    tracing::warn!("custom hostnames: no due claims leased within {STEP:?}");
                    return;
                }
            };
            let all_taken = claims.len() == chosen;
            for claim in claims {
                let me = self.clone();
                running.spawn(async move {
                    let name = claim.name.clone();
                    if tokio::time::timeout(each, me.handle(claim)).await.is_err() {
                        tracing::warn!(
                            name,
                            "custom hostnames: check not finished within {each:?}; retried after its lease"
                        );
                    }
                });
            }
            if all_taken {
                return;
            }
        }
    }

    /// Up to `free` due claims, chosen by [`share::pick`] and leased for
    /// `lease`; and how many were chosen (more than were leased when
    /// another checker took some first).
    async fn take(&self, free: usize, lease: Duration) -> Result<(Vec<Claim>, usize), StoreError> {
        let rechecks = self.cfg.rechecks();
        let (due, busy) = self
            .store
            .due(free as i64, (free * RECHECK_CANDIDATES_PER_SLOT) as i64, rechecks)
            .await?;
        let chosen: Vec<String> = share::pick(due, &busy, free).into_iter().map(|d| d.name).collect();
        if chosen.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let claims = self
            .store
            .lease(&self.owner, lease.as_secs_f64(), &chosen, rechecks)
            .await?;
        Ok((claims, chosen.len()))
    }

    async fn handle(&self, c: Claim) {
        // Left however the handling ends (its deadline included: the
        // claim's lease then runs out and it is checked afresh). Checks of
        // one name never overlap here (it is not leased again before its
        // lease runs out, and its handling ends before that), so the
        // registration is this check's.
        self.checking.start(&c.name);
        let mut checking = self.checking.running(&c.name);
        let now = unix_now();
        let interval = self.cfg.check_interval;
        let jitter = f64::from(rand::random::<u32>()) / f64::from(u32::MAX);
        let mut failing_since = c.failing_since;
        let (next, detail, other, delay) = match c.status {
            HostnameStatus::Pending => {
                let finding = self.checker.check(&c.name, c.method, &c.token).await;
                let result = match &finding {
                    Finding::Proven => "proven",
                    Finding::NotYet { other_proof: true, .. } => "other_proof",
                    Finding::NotYet { .. } => "not_yet",
                };
                self.metrics
                    .hostname_checks
                    .with_label_values(&[c.method.as_str(), result])
                    .inc();
                let routable = finding == Finding::Proven && self.routable(&c).await;
                let next = policy::after_check(&finding, routable, now, c.verify_by, c.saw_other_proof);
                let delay = match next {
                    HostnameStatus::Pending => policy::next_check_delay(c.checks.max(0) as u32, interval, jitter),
                    _ => interval,
                };
                match finding {
                    Finding::Proven if next == HostnameStatus::Verified => (next, Some(unroutable(&c)), false, delay),
                    Finding::Proven => (next, None, false, delay),
                    Finding::NotYet { other_proof, detail } => (next, Some(detail), other_proof, delay),
                }
            }
            HostnameStatus::Verified => {
                let routable = self.routable(&c).await;
                let window = self.cfg.verification_window_secs();
                match policy::after_look(routable, c.method, c.verified_at, now, window) {
                    HostnameStatus::Active => (HostnameStatus::Active, None, false, interval),
                    HostnameStatus::Expired => (HostnameStatus::Expired, Some(stale_proof(&c)), false, interval),
                    _ => (HostnameStatus::Verified, Some(unroutable(&c)), false, interval),
                }
            }
            HostnameStatus::Active | HostnameStatus::Moved if self.cfg.rechecks() => {
                let pointing = self.checker.points_here(&c.name).await;
                let (result, detail) = match &pointing {
                    Pointing::Here => ("here", None),
                    Pointing::Elsewhere { detail, .. } => ("elsewhere", Some(detail.clone())),
                    Pointing::Unknown(detail) => ("unknown", Some(detail.clone())),
                };
                self.metrics
                    .hostname_checks
                    .with_label_values(&["recheck", result])
                    .inc();
                let (reproven, detail) = match (c.status, &pointing) {
                    (HostnameStatus::Moved, Pointing::Here) => self.reproven(&c).await,
                    _ => (false, detail),
                };
                let after = policy::after_recheck(
                    c.status,
                    &pointing,
                    c.failing_since,
                    c.moved_at,
                    now,
                    self.cfg.move_rules(),
                    reproven,
                );
                failing_since = after.failing_since;
                let delay = policy::next_recheck_delay(&after, self.cfg.recheck_interval, interval, jitter);
                (after.status, detail, false, delay)
            }
            // Leased in another state only if it changed in between: free it.
            other => (other, c.last_error.clone(), false, interval),
        };
        let outcome = Outcome {
            status: next,
            detail: detail.as_deref(),
            other_proof: other,
            next_check: delay,
            failing_since,
        };
        if let Err(e) = self.store.record(&c, &self.owner, &outcome).await {
            tracing::warn!(name = %c.name, error = %e, "custom hostnames: cannot record a check; its lease expires on its own");
        }
        // A change heard during the check found nothing to move (the claim
        // not yet `verified`, or already due while it was being checked):
        // its look is taken now that the outcome is written. (A change
        // heard from here on finds the written claim itself.)
        if !checking.finish_unless_changed() {
            self.look_now(std::slice::from_ref(&c.name)).await;
        }
    }

    /// Domain rows or tenants changed (NOTIFY): verified claims among these
    /// names are looked at now, not at their next check, so a name whose
    /// row appears after its proof routes within a second. The first gateway
    /// to move a claim forward wakes the fleet's checkers.
    ///
    /// Claims being checked here are marked: their check may have read the
    /// state before the change, and is followed by a look of its own.
    pub fn names_changed(self: &Arc<Self>, names: Vec<String>) {
        let marked: Vec<String> = names
            .iter()
            .filter(|name| self.checking.mark_changed(name))
            .cloned()
            .collect();
        let me = self.clone();
        tokio::spawn(async move {
            me.look_now(&names).await;
            // Logged once this look is taken.
            for name in marked {
                tracing::info!(
                    name,
                    "custom hostnames: the name changed during its check; looked at again once the check is written"
                );
            }
        });
    }

    /// After a tenant LISTEN gap (or a NOTIFY whose names were unreadable):
    /// a domain row may have appeared unheard, so every `verified` claim is
    /// looked at now rather than at its next check, and every check in
    /// flight looks again once written (what it read may predate the gap's
    /// changes). Verified claims are the ones proven and waiting for their
    /// row; each check is one read on the primary.
    pub fn resumed(self: &Arc<Self>) {
        self.checking.mark_all_changed();
        self.resumed_early.store(true, Ordering::SeqCst);
        if !self.running.load(Ordering::SeqCst) {
            return;
        }
        self.resumed_early.store(false, Ordering::SeqCst);
        let me = self.clone();
        tokio::spawn(async move { me.look_at_verified().await });
    }

    /// Every verified claim due now, and the fleet's checkers woken once.
    /// Gateways reconnecting together (a database restart) skip the rows
    /// another is moving rather than wait on its locks.
    async fn look_at_verified(&self) {
        let due = sqlx::query(
            "WITH due AS (UPDATE tenant_gateway.custom_hostnames SET next_check_at = now()
                           WHERE name IN (SELECT name FROM tenant_gateway.custom_hostnames
                                          WHERE status = 'verified' AND next_check_at > now()
                                          ORDER BY name FOR UPDATE SKIP LOCKED)
                       RETURNING 1)
             SELECT pg_notify($1, '') FROM (SELECT 1 FROM due LIMIT 1) AS any_due",
        )
        .bind(WAKE_CHANNEL)
        .execute(self.store.db());
        match tokio::time::timeout(STEP, due).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "custom hostnames: cannot look at verified claims after a gap"),
            Err(_) => tracing::warn!("custom hostnames: looking at verified claims after a gap timed out"),
        }
    }

    /// Before the first round: active claims long overdue for a recheck
    /// are spread over the next interval ([`Store::spread_overdue`]).
    async fn spread_overdue(&self) {
        match tokio::time::timeout(STEP, self.store.spread_overdue(self.cfg.recheck_interval)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                claims = n,
                "custom hostnames: active claims overdue for a recheck spread over the next recheck interval"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "custom hostnames: cannot spread overdue rechecks"),
            Err(_) => tracing::warn!("custom hostnames: spreading overdue rechecks timed out"),
        }
    }

    /// Verified claims among `names` due now, and the fleet's checkers woken.
    async fn look_now(&self, names: &[String]) {
        let due = sqlx::query(
            "WITH due AS (UPDATE tenant_gateway.custom_hostnames SET next_check_at = now()
                           WHERE name = ANY($1) AND status = 'verified' AND next_check_at > now()
                       RETURNING name)
             SELECT pg_notify($2, name) FROM due",
        )
        .bind(names)
        .bind(WAKE_CHANNEL)
        .execute(self.store.db());
        match tokio::time::timeout(STEP, due).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "custom hostnames: cannot look at changed names now"),
            Err(_) => tracing::debug!("custom hostnames: looking at changed names timed out"),
        }
    }

    /// Whether a moved claim whose name points here again is proven again
    /// by what it comes back by ([`policy::comeback`]), and if not, why
    /// (its `last_error`).
    async fn reproven(&self, c: &Claim) -> (bool, Option<String>) {
        let why = match policy::comeback(c.method) {
            policy::Comeback::Pointing => return (true, None),
            policy::Comeback::Txt => match self.checker.check(&c.name, policy::Method::Txt, &c.token).await {
                Finding::Proven => return (true, None),
                Finding::NotYet { detail, .. } => format!(
                    "points here again, but the name may have changed hands while it pointed elsewhere: \
                     it comes back once its TXT record holds the claim's token again ({detail})"
                ),
            },
            policy::Comeback::Operator => format!(
                "points here again, but the name may have changed hands while it pointed elsewhere, and its {} \
                 proof cannot be made again while it points here: add it again with preverified once its owner \
                 is known, or it is removed when its window ends",
                c.method.as_str()
            ),
        };
        (false, Some(why))
    }

    /// Whether the lookup query maps the claim's name to the claim's tenant
    /// (read on the primary, right after the proof).
    async fn routable(&self, c: &Claim) -> bool {
        match self.store.row_tenant(&c.name).await {
            Ok(row) => row.is_some_and(|schema| schema == c.tenant),
            Err(e) => {
                tracing::warn!(name = %c.name, error = %e, "custom hostnames: lookup query failed");
                false
            }
        }
    }

    /// Count the claims if [`must_count`] says so; the oldest pending
    /// claim's age either way.
    async fn refresh_gauges(&self, counted: &mut Option<Counted>) {
        let listening = self.listening.load(Ordering::Acquire);
        // Cleared before counting: a change committed during the count
        // marks it again, and the next look counts once more.
        let stale = self.counts_stale.swap(false, Ordering::AcqRel);
        if must_count(stale, listening, counted.as_ref().map(|c| c.at.elapsed())) {
            let counts = match tokio::time::timeout(STEP, self.store.counts()).await {
                Ok(counted) => counted.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no count within {STEP:?}")),
            };
            match counts {
                Ok((counts, oldest_pending)) => {
                    for st in HostnameStatus::ALL {
                        let n = counts.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n);
                        self.metrics.hostnames.with_label_values(&[st.as_str()]).set(n);
                    }
                    *counted = Some(Counted {
                        at: Instant::now(),
                        oldest_pending,
                    });
                }
                Err(e) => {
                    self.counts_stale.store(true, Ordering::Release);
                    tracing::debug!(error = %e, "custom hostnames: cannot count claims");
                }
            }
        }
        let age = counted
            .as_ref()
            .and_then(|c| c.oldest_pending)
            .map_or(0, |created| (unix_now() - created).max(0));
        self.metrics.hostnames_oldest_pending_seconds.set(age);
    }
}

fn stale_proof(c: &Claim) -> String {
    format!(
        "ownership proven, but the domain table did not map {} to tenant {} within \
         verification_window_secs of the proof; a retry proves it again",
        c.name, c.tenant
    )
}

fn unroutable(c: &Claim) -> String {
    format!(
        "ownership proven; the domain table does not map {} to tenant {} yet",
        c.name, c.tenant
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_counted_again_only_when_they_may_have_changed() {
        let recent = Some(Duration::from_secs(20));
        // Nothing changed, a listener would have heard: the last count stands.
        assert!(!must_count(false, true, recent));
        // A change was announced.
        assert!(must_count(true, true, recent));
        // No listener: a change could have gone unheard.
        assert!(must_count(false, false, recent));
        // Never counted, or not for a long while.
        assert!(must_count(false, true, None));
        assert!(must_count(false, true, Some(RECOUNT_AT_LEAST_EVERY)));
        assert!(!must_count(
            false,
            true,
            Some(RECOUNT_AT_LEAST_EVERY - Duration::from_secs(1))
        ));
    }
}
