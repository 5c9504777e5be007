//! TLS helpers: dev certificates via `gateway certs`, a probing client that
//! reports which certificate a handshake presented, and HTTPS clients.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Dev CA + `*.myapp.localhost` wildcard in `dir` (via `gateway certs dev`); returns the CA path.
pub fn dev_certs(dir: &Path) -> PathBuf {
    let out = std::process::Command::new(super::bin("gateway"))
        .args(["certs", "dev", "--domain", "myapp.localhost", "--dir"])
        .arg(dir)
        .output()
        .expect("gateway certs dev");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("ca.pem")
}

/// A certificate for `names` signed by the dev CA in `ca_dir`, written to `out`.pem/.key.
pub fn issue(ca_dir: &Path, names: &[&str], out: &Path) {
    let mut c = std::process::Command::new(super::bin("gateway"));
    c.args(["certs", "issue", "--dir"]).arg(ca_dir).arg("--out").arg(out);
    for n in names {
        c.args(["--name", n]);
    }
    let out = c.output().expect("gateway certs issue");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let pem = std::fs::read(ca).expect("CA file");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.expect("CA PEM")).expect("CA cert");
    }
    roots
}

/// Client config trusting `ca`, offering `alpn`, without session resumption.
pub fn client_config(ca: &Path, alpn: &[&str]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg
}

/// An HTTP/2 connection over TLS (SNI `sni`, trusting `ca`) to
/// 127.0.0.1:`port`, driven by a task on the current runtime.
pub async fn h2_connect(ca: &Path, port: u16, sni: &str) -> h2::client::SendRequest<bytes::Bytes> {
    h2_connect_with(ca, port, sni, &h2::client::Builder::new()).await
}

/// [`h2_connect`] with the h2 settings of `builder` (windows, limits).
pub async fn h2_connect_with(
    ca: &Path,
    port: u16,
    sni: &str,
    builder: &h2::client::Builder,
) -> h2::client::SendRequest<bytes::Bytes> {
    h2_connect_from(ca, port, sni, builder, "127.0.0.1").await
}

/// [`h2_connect_with`] from the loopback address `from` (another client,
/// as the gateway counts clients: 127.0.0.2, 127.0.0.3, ...).
pub async fn h2_connect_from(
    ca: &Path,
    port: u16,
    sni: &str,
    builder: &h2::client::Builder,
    from: &str,
) -> h2::client::SendRequest<bytes::Bytes> {
    let cfg = client_config(ca, &["h2"]);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::new(from.parse().expect("an IPv4 address"), 0))
        .expect("bind the client's address");
    let tcp = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (client, conn) = builder.handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    client
}

/// HTTPS client resolving `hosts` to the gateway's TLS port.
pub fn https_client(ca: &Path, port: u16, hosts: &[&str], alpn: &[&str]) -> super::http::Client {
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(client_config(ca, alpn))
        .https_only(true);
    for h in hosts {
        b = b.resolve(h, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    super::http::client_with(b)
}

/// Accepts any certificate and records the chain it saw.
#[derive(Debug)]
struct Recorder(Mutex<Vec<CertificateDer<'static>>>, Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// What a handshake presented.
#[derive(Debug)]
pub struct Presented {
    /// DNS SANs of the leaf certificate.
    pub names: Vec<String>,
    pub alpn: Option<String>,
    pub version: String,
}

/// Handshake with SNI `sni` (None: no SNI, by connecting to an IP name)
/// and report the certificate presented, without verifying it.
pub fn probe(port: u16, sni: Option<&str>, alpn: &[&str]) -> Result<Presented> {
    probe_from("127.0.0.1", port, sni, alpn)
}

/// [`probe`] from the source address `from` (a loopback address).
pub fn probe_from(from: &str, port: u16, sni: Option<&str>, alpn: &[&str]) -> Result<Presented> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new()), provider()));
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        cfg.resumption = rustls::client::Resumption::disabled();
        let name: ServerName<'static> = match sni {
            Some(s) => ServerName::try_from(s.to_owned())?,
            None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{from}:0").parse()?)?;
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            socket.connect(([127, 0, 0, 1], port).into()),
        )
        .await
        .context("connect timed out")??;
        let tls = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
        )
        .await
        .context("handshake timed out")??;
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned());
        let version = format!("{:?}", conn.protocol_version());
        let leaf = recorder.0.lock().unwrap().first().cloned().context("no certificate")?;
        Ok(Presented {
            names: san_names(&leaf),
            alpn,
            version,
        })
    })
}

pub fn san_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("X.509");
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let GeneralName::DNSName(n) = gn {
                names.push(n.to_string());
            }
        }
    }
    names
}
