//! Sealing secrets at rest: AES-256-GCM with a random nonce per message and
//! the row's identity as associated data (`cert:<name>`, `account:<dir>`), so
//! a ciphertext moved to another row does not open.
//!
//! One key seals; further keys only open (`acme.decrypt_key_envs`), so the
//! key can be rotated without a new certificate: every gateway first learns
//! the new key as one that opens, then seals with it, `gateway acme rekey`
//! re-seals what is stored, and the old key goes (docs/operations.md). The
//! stored format carries no key id: a message opens under at most one key
//! (GCM's tag authenticates the key as well as the text), so each is tried
//! in turn, the sealing key first.

use super::*;

/// AES-256-GCM with a random nonce per message; the row's identity is the
/// associated data, so a ciphertext cannot be moved to another row.
pub struct Seal {
    seal: LessSafeKey,
    /// Keys that only open, in the configured order.
    open_also: Vec<LessSafeKey>,
    /// The sealing key's fingerprint ([`Seal::fingerprint`]).
    fingerprint: String,
}

/// Which key opened a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// The sealing key: nothing to re-seal.
    Sealing,
    /// The `n`th of the keys that only open.
    OpenOnly(usize),
}

fn aes_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

impl Seal {
    /// Sealing (and opening) with `key` alone.
    pub fn new(key: &[u8; 32]) -> Seal {
        Seal::with_keys(key, &[])
    }

    /// The configured keys ([`crate::config::Config::acme_keys`]).
    pub fn from_keys(keys: &crate::config::AcmeKeys) -> Seal {
        Seal::with_keys(&keys.seal, &keys.open_also)
    }

    /// Sealing with `key`, opening with it or any of `open_also`.
    pub fn with_keys(key: &[u8; 32], open_also: &[[u8; 32]]) -> Seal {
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
            b"tenant-gateway sealing key fingerprint",
        );
        Seal {
            seal: aes_key(key),
            open_also: open_also.iter().map(aes_key).collect(),
            fingerprint: const_hex::encode(&mac.as_ref()[..16]),
        }
    }

    /// What tells the sealing key apart from others without revealing it:
    /// 32 hex digits of an HMAC of a fixed text under it (migration 0008).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, AcmeError> {
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| other("no randomness"))?;
        let mut buf = plain.to_vec();
        self.seal
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| other("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, aad: &str, data: &[u8]) -> Result<Vec<u8>, AcmeError> {
        self.open_with(aad, data).map(|(plain, _)| plain)
    }

    /// The plain text and which key opened it.
    pub fn open_with(&self, aad: &str, data: &[u8]) -> Result<(Vec<u8>, Opener), AcmeError> {
        if data.len() < 12 + 16 {
            return Err(other("ciphertext too short"));
        }
        let (nonce, rest) = data.split_at(12);
        let keys = std::iter::once((&self.seal, Opener::Sealing))
            .chain(self.open_also.iter().enumerate().map(|(i, k)| (k, Opener::OpenOnly(i))));
        for (key, opener) in keys {
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| other("bad nonce"))?;
            let mut buf = rest.to_vec();
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf) {
                return Ok((plain.to_vec(), opener));
            }
        }
        Err(other(match self.open_also.len() {
            0 => "decryption failed (wrong acme.key_env key?)",
            _ => "decryption failed under every key (acme.key_env and acme.decrypt_key_envs)",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_tells_sealing_keys_apart_and_is_not_the_key() {
        let (a, b) = (Seal::new(&[7u8; 32]), Seal::new(&[8u8; 32]));
        assert_eq!(a.fingerprint(), Seal::with_keys(&[7u8; 32], &[[8u8; 32]]).fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32);
        assert!(!a.fingerprint().contains("0707"));
    }

    #[test]
    fn seal_round_trip_and_binding() {
        let s = Seal::new(&[7u8; 32]);
        let c = s.seal("cert:a.test", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!c.windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(s.open("cert:a.test", &c).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        assert!(s.open("cert:b.test", &c).is_err(), "ciphertext moved to another row");
        assert!(Seal::new(&[8u8; 32]).open("cert:a.test", &c).is_err(), "wrong key");
    }

    #[test]
    fn a_rotation_opens_old_secrets_and_seals_new_ones_with_the_new_key() {
        let (old, new, other_key) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let sealed_old = Seal::new(&old).seal("cert:a.test", b"key").unwrap();
        // Step 1: the new key only opens; the old one still seals.
        let step1 = Seal::with_keys(&old, &[new]);
        let sealed_step1 = step1.seal("cert:a.test", b"key").unwrap();
        assert_eq!(
            step1.open_with("cert:a.test", &sealed_old).unwrap(),
            (b"key".to_vec(), Opener::Sealing)
        );
        // Step 2: the new key seals, the old one opens what it sealed.
        let step2 = Seal::with_keys(&new, &[other_key, old]);
        for sealed in [&sealed_old, &sealed_step1] {
            assert_eq!(
                step2.open_with("cert:a.test", sealed).unwrap(),
                (b"key".to_vec(), Opener::OpenOnly(1))
            );
        }
        let resealed = step2.seal("cert:a.test", b"key").unwrap();
        assert_eq!(step2.open_with("cert:a.test", &resealed).unwrap().1, Opener::Sealing);
        // Step 3: the old key gone, only what was re-sealed opens.
        let step3 = Seal::new(&new);
        assert_eq!(step3.open("cert:a.test", &resealed).unwrap(), b"key");
        assert!(step3.open("cert:a.test", &sealed_old).is_err());
        // Every key still binds the row.
        assert!(step2.open("cert:b.test", &sealed_old).is_err());
        assert!(step2.open("cert:a.test", &sealed_old[..20]).is_err());
    }
}
