//! Sealing secrets at rest: AES-256-GCM with a random nonce per message and
//! the row's identity as associated data (`cert:<name>`, `account:<dir>`), so
//! a ciphertext moved to another row does not open.

use super::*;

/// AES-256-GCM with a random nonce per message; the row's identity is the
/// associated data, so a ciphertext cannot be moved to another row.
pub struct Seal(LessSafeKey);

impl Seal {
    pub fn new(key: &[u8; 32]) -> Seal {
        Seal(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"),
        ))
    }

    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, AcmeError> {
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| other("no randomness"))?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| other("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, aad: &str, data: &[u8]) -> Result<Vec<u8>, AcmeError> {
        if data.len() < 12 + 16 {
            return Err(other("ciphertext too short"));
        }
        let (nonce, rest) = data.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| other("bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| other("decryption failed (wrong acme.key_env key?)"))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let s = Seal::new(&[7u8; 32]);
        let c = s.seal("cert:a.test", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!c.windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(s.open("cert:a.test", &c).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        assert!(s.open("cert:b.test", &c).is_err(), "ciphertext moved to another row");
        assert!(Seal::new(&[8u8; 32]).open("cert:a.test", &c).is_err(), "wrong key");
    }
}
