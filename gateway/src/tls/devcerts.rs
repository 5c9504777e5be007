//! Development certificates (`gateway certs …`): a local CA and certificates
//! it signs, e.g. the wildcard for the dev base domain, so the demo runs over
//! HTTPS with `curl --cacert`. Keys are generated here, never committed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), DevCertError> {
    let io = |source| DevCertError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(path, contents).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, DevCertError> {
    std::fs::read_to_string(path).map_err(|source| DevCertError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Create `ca.pem`/`ca.key` in `dir` unless they exist; return their paths.
pub fn ensure_ca(dir: &Path) -> Result<(PathBuf, PathBuf), DevCertError> {
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Tenant Gateway development CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let kp = KeyPair::generate()?;
    let ca = params.self_signed(&kp)?;
    write(&cert, &ca.pem(), false)?;
    write(&key, &kp.serialize_pem(), true)?;
    Ok((cert, key))
}

/// Issue a server certificate for `names` signed by the CA in `ca_dir`,
/// written to `<out>.pem` and `<out>.key`.
pub fn issue(ca_dir: &Path, names: &[String], out: &Path) -> Result<(PathBuf, PathBuf), DevCertError> {
    let (ca_cert, ca_key) = ensure_ca(ca_dir)?;
    let ca_kp = KeyPair::from_pem(&read(&ca_key)?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_cert)?, ca_kp)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let kp = KeyPair::generate()?;
    let cert = params.signed_by(&kp, &issuer)?;
    let (cert_path, key_path) = (out.with_extension("pem"), out.with_extension("key"));
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &kp.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_signed_by_dev_ca_loads_into_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["*.myapp.localhost".to_string(), "myapp.localhost".to_string()];
        let (cert, key) = issue(dir.path(), &names, &dir.path().join("wildcard")).unwrap();
        let files = crate::config::CertFiles {
            cert_file: cert,
            key_file: key,
        };
        let loaded = crate::tls::store::Cert::load(&files).unwrap();
        assert_eq!(loaded.names, names);
        // The CA is reused, not regenerated.
        let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        issue(dir.path(), &["shop.test".to_string()], &dir.path().join("shop")).unwrap();
        assert_eq!(before, std::fs::read(dir.path().join("ca.pem")).unwrap());
    }
}
