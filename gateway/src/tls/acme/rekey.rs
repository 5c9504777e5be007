//! Re-sealing stored secrets with the sealing key after a key rotation
//! (`gateway acme rekey`): every certificate key and ACME account credential
//! that opens only under a key of `acme.decrypt_key_envs` is sealed again
//! with `acme.key_env`'s, in batches, straight against the database.
//!
//! Safe while the fleet serves and renews: a batch changes a row only if it
//! still holds the ciphertext read (a renewal that stored a new one meanwhile
//! sealed it with the sealing key), and a re-sealed row holds the same
//! certificate, so no gateway reloads it (migration 0006: the certificate
//! NOTIFY ignores `key_enc`). A second run finds nothing to do.

use super::*;

/// What a pass found (with `dry_run`, `resealed` counts what it would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    /// Sealed again with the sealing key.
    pub resealed: u64,
    /// Already sealed with the sealing key.
    pub current: u64,
    /// Replaced while the pass ran (by a renewal or a new account, sealed
    /// with the sealing key of the gateway that wrote it).
    pub replaced: u64,
    /// Secrets no configured key opens, as `cert:<name>` or
    /// `account:<directory>`: they stay as they are (a gateway orders a new
    /// certificate when it needs one, and creates a new account).
    pub unreadable: Vec<String>,
}

/// A table of sealed secrets: its id column, secret column and the prefix
/// of the associated data (`seal.rs`).
struct Sealed {
    table: &'static str,
    id: &'static str,
    secret: &'static str,
    aad: &'static str,
}

const SEALED: [Sealed; 2] = [
    Sealed {
        table: "tenant_gateway.certificates",
        id: "name",
        secret: "key_enc",
        aad: "cert:",
    },
    Sealed {
        table: "tenant_gateway.acme_accounts",
        id: "directory",
        secret: "credentials_enc",
        aad: "account:",
    },
];

/// Rows read, decrypted and written per statement: 500 certificate keys are
/// about 1 MB of ciphertext, well inside one query's deadline.
const BATCH: i64 = 500;

/// The sealing keys the fleet ran with lately, as gateways record them at
/// each scan (`tenant_gateway.sealing_keys`, kept live for 10 minutes or
/// three check intervals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FleetKeys {
    /// A gateway seals with this pass's sealing key.
    pub mine: bool,
    /// Until when (Unix seconds) a gateway counts as sealing with another.
    pub others_until: Option<i64>,
}

/// Why a pass (not a dry run) is refused without `--force`: after it, a
/// gateway of the fleet could be unable to open what it re-sealed.
/// `None`: every gateway that ran lately seals with this key.
pub(super) fn refusal(keys: &FleetKeys) -> Option<String> {
    if !keys.mine {
        return Some(
            "no gateway has sealed with acme.key_env's key in the last minutes (tenant_gateway.sealing_keys): \
             what this pass re-seals might open on no running gateway (a mistyped key would lock every stored \
             certificate out). Make it every gateway's sealing key first (step 2 of the rotation), or pass --force"
                .to_owned(),
        );
    }
    keys.others_until.map(|until| {
        format!(
            "a gateway sealed with another key lately (counted as live until Unix time {until}): until every \
             gateway seals with acme.key_env's key (step 2 of the rotation), one without it among its opening \
             keys could not open what this pass re-seals. Run again after that time, or pass --force"
        )
    })
}

/// The fleet's sealing keys as `seal` sees them.
pub(super) async fn fleet_keys(db: &PgPool, seal: &Seal) -> Result<FleetKeys, AcmeError> {
    let (mine, others_until): (bool, Option<i64>) = bounded(
        "reading the fleet's sealing keys",
        sqlx::query_as(
            "SELECT coalesce(bool_or(fingerprint = $1), false),
                    extract(epoch FROM max(live_until) FILTER (WHERE fingerprint <> $1))::bigint
               FROM tenant_gateway.sealing_keys WHERE live_until > now()",
        )
        .bind(seal.fingerprint())
        .fetch_one(db),
    )
    .await?;
    Ok(FleetKeys { mine, others_until })
}

/// `gateway acme rekey [--dry-run] [--force]`: one pass over every sealed
/// secret. A pass that writes is refused (`refusal`: `Err(Other)`)
/// unless `force`.
pub async fn rekey(db: &PgPool, seal: &Seal, dry_run: bool, force: bool) -> Result<RekeyReport, AcmeError> {
    Acme::migrate(db).await?;
    if !dry_run && !force {
        if let Some(why) = refusal(&fleet_keys(db, seal).await?) {
            return Err(AcmeError::Other(why));
        }
    }
    let mut report = RekeyReport::default();
    for t in &SEALED {
        let read = format!(
            "SELECT {id}, {secret} FROM {table} WHERE {id} > $1 ORDER BY {id} LIMIT $2",
            id = t.id,
            secret = t.secret,
            table = t.table
        );
        let write = format!(
            "UPDATE {table} t SET {secret} = v.new
               FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS v(id, old, new)
              WHERE t.{id} = v.id AND t.{secret} = v.old",
            id = t.id,
            secret = t.secret,
            table = t.table
        );
        let mut after = String::new();
        loop {
            let rows: Vec<(String, Vec<u8>)> = bounded(
                "reading sealed secrets",
                sqlx::query_as(&read).bind(&after).bind(BATCH).fetch_all(db),
            )
            .await?;
            let Some((last, _)) = rows.last() else { break };
            after = last.clone();
            let (mut ids, mut olds, mut news) = (Vec::new(), Vec::new(), Vec::new());
            for (id, old) in rows {
                let aad = format!("{}{id}", t.aad);
                match seal.open_with(&aad, &old) {
                    Ok((_, Opener::Sealing)) => report.current += 1,
                    Ok((plain, Opener::OpenOnly(_))) => {
                        news.push(seal.seal(&aad, &plain)?);
                        ids.push(id);
                        olds.push(old);
                    }
                    Err(_) => report.unreadable.push(aad),
                }
            }
            if ids.is_empty() {
                continue;
            }
            let wanted = ids.len() as u64;
            if dry_run {
                report.resealed += wanted;
                continue;
            }
            let written = bounded(
                "re-sealing a batch",
                sqlx::query(&write).bind(&ids).bind(&olds).bind(&news).execute(db),
            )
            .await?
            .rows_affected();
            report.resealed += written;
            report.replaced += wanted.saturating_sub(written);
        }
    }
    Ok(report)
}

impl RekeyReport {
    /// The CLI's summary, one line per finding.
    pub fn lines(&self, dry_run: bool) -> Vec<String> {
        let verb = if dry_run { "to re-seal" } else { "re-sealed" };
        let mut lines = vec![
            format!("{verb} with acme.key_env's key: {}", self.resealed),
            format!("already sealed with it: {}", self.current),
        ];
        if self.replaced > 0 {
            lines.push(format!("replaced meanwhile (sealed by a gateway): {}", self.replaced));
        }
        if !self.unreadable.is_empty() {
            lines.push(format!("opened by no configured key: {}", self.unreadable.len()));
            lines.extend(self.unreadable.iter().map(|s| format!("  {s}")));
        }
        lines
    }

    /// Every secret the pass saw is now sealed with the sealing key (a dry
    /// run: already was), so the keys that only open can go. A row replaced
    /// meanwhile was sealed by whichever key its gateway seals with: another
    /// pass tells.
    pub fn complete(&self, dry_run: bool) -> bool {
        self.unreadable.is_empty() && self.replaced == 0 && (!dry_run || self.resealed == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_is_refused_unless_every_gateway_of_late_seals_with_its_key() {
        let keys = |mine, others_until| FleetKeys { mine, others_until };
        assert_eq!(refusal(&keys(true, None)), None);
        let typo = refusal(&keys(false, None)).unwrap();
        assert!(typo.contains("no gateway has sealed with acme.key_env's key"), "{typo}");
        assert!(refusal(&keys(false, Some(1)))
            .unwrap()
            .contains("no gateway has sealed"));
        let mixed = refusal(&keys(true, Some(1_800_000_000))).unwrap();
        assert!(mixed.contains("another key") && mixed.contains("1800000000"), "{mixed}");
        for why in [typo, mixed] {
            assert!(why.contains("--force"), "{why}");
        }
    }

    #[test]
    fn a_pass_is_complete_when_every_secret_it_saw_opens_with_the_sealing_key() {
        let done = RekeyReport {
            current: 3,
            ..RekeyReport::default()
        };
        assert!(done.complete(true) && done.complete(false));
        let worked = RekeyReport {
            resealed: 2,
            ..done.clone()
        };
        assert!(worked.complete(false), "re-sealed: done");
        assert!(!worked.complete(true), "a dry run found work");
        let raced = RekeyReport {
            replaced: 1,
            ..done.clone()
        };
        assert!(!raced.complete(false), "another pass tells");
        let lost = RekeyReport {
            unreadable: vec!["cert:a.test".into()],
            ..done.clone()
        };
        assert!(!lost.complete(false));
        let lines = lost.lines(false);
        assert!(lines.contains(&"  cert:a.test".to_string()), "{lines:?}");
        assert!(
            worked.lines(true)[0].starts_with("to re-seal"),
            "{:?}",
            worked.lines(true)
        );
    }
}
