//! One ownership check of a claim, or one look at where an active claim's
//! name points (the `cname` method's rule, told apart from no answer at
//! all; with `tenant.strip_www` the claim's name or `www.` of it): DNS
//! through hickory-resolver (the
//! configured server or the system's, no answer cache so a record the
//! customer just published is seen), HTTP through hyper on an address that
//! same resolver gave (a public one, unless `http_private_addresses`).
//! Every check is bounded by `check_timeout_ms`.
//!
//! The HTTP method must reach the customer's own server: the gateway never
//! serves claim tokens itself (a name already pointed at the platform would
//! otherwise prove any tenant's claim), and a name without an active claim
//! gets the gateway's 404 page, not a token.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use http_body_util::{BodyExt, Empty, Limited};

use super::policy::{self, Finding, Method, Pointing};
use super::settings::CustomDomainsConfig;

/// Longest HTTP body read: a token is 32 bytes.
const MAX_BODY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("cannot read the system's DNS configuration: {0}")]
    SystemConfig(#[from] hickory_resolver::ResolveError),
}

pub struct Checker {
    resolver: TokioResolver,
    http_port: u16,
    /// `http_private_addresses`: connect to any address, not only public ones.
    any_address: bool,
    timeout: Duration,
    cname_target: Option<String>,
    cname_addresses: Vec<IpAddr>,
    /// `tenant.strip_www`: a claim covers its name and `www.` of it, which
    /// points here while either does ([`policy::either`]).
    strip_www: bool,
}

impl Checker {
    pub fn new(cfg: &CustomDomainsConfig, strip_www: bool) -> Result<Checker, CheckerError> {
        let timeout = cfg.check_timeout;
        let mut builder = match cfg.resolver {
            Some(addr) => TokioResolver::builder_with_config(
                ResolverConfig::from_parts(
                    None,
                    Vec::new(),
                    NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
                ),
                TokioConnectionProvider::default(),
            ),
            None => TokioResolver::builder_tokio()?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = timeout;
        opts.attempts = 1;
        Ok(Checker {
            resolver: builder.build(),
            http_port: cfg.http_port,
            any_address: cfg.http_private_addresses,
            timeout,
            cname_target: cfg.cname_target.clone(),
            cname_addresses: cfg.cname_addresses.clone(),
            strip_www,
        })
    }

    /// Check `name` for `token` by `method`, within the check timeout.
    pub async fn check(&self, name: &str, method: Method, token: &str) -> Finding {
        let run = async {
            match method {
                Method::Txt => self.txt(name, token).await,
                Method::Http => self.http(name, token).await,
                Method::Cname => match self.claimed_pointing(name).await {
                    Pointing::Here => Finding::Proven,
                    Pointing::Elsewhere { other, detail } => Finding::NotYet {
                        other_proof: other,
                        detail,
                    },
                    Pointing::Unknown(detail) => not_yet(detail),
                },
                Method::Operator => Finding::Proven,
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(found) => found,
            Err(_) => not_yet(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Where `name` points (the `cname` method's rule), within the check
    /// timeout (past it: unknown).
    pub async fn points_here(&self, name: &str) -> Pointing {
        self.within_timeout(self.claimed_pointing(name)).await
    }

    /// Whether `www.` of a served name (served only because lookups strip
    /// `www.`) may have a certificate ordered: it points here by the
    /// `cname` method's rule when `cname_target` or `cname_addresses` is
    /// set, else it has an address at all (no such name, or no address:
    /// elsewhere). Within the check timeout (past it: unknown).
    pub async fn www_points_here(&self, name: &str) -> Pointing {
        self.within_timeout(async {
            if self.cname_target.is_some() || !self.cname_addresses.is_empty() {
                return self.pointing(name).await;
            }
            match self.lookup_addresses(name).await {
                Ok(ips) if !ips.is_empty() => Pointing::Here,
                Ok(_) => no_address(name),
                Err(said) => said,
            }
        })
        .await
    }

    /// A look at where a name points, within the check timeout (past it:
    /// unknown).
    async fn within_timeout(&self, look: impl std::future::Future<Output = Pointing>) -> Pointing {
        match tokio::time::timeout(self.timeout, look).await {
            Ok(found) => found,
            Err(_) => Pointing::Unknown(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn txt(&self, name: &str, token: &str) -> Finding {
        let record = fqdn(&policy::txt_record_name(name));
        match self.resolver.txt_lookup(record.as_str()).await {
            Ok(found) => {
                let values: Vec<String> = found
                    .iter()
                    .map(|txt| {
                        txt.txt_data()
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>()
                    })
                    .collect();
                if values.iter().any(|v| v.trim() == token) {
                    Finding::Proven
                } else {
                    Finding::NotYet {
                        other_proof: !values.is_empty(),
                        detail: format!("TXT {record} holds {} other value(s)", values.len()),
                    }
                }
            }
            Err(e) if answered_none(&e) => not_yet(format!("no TXT record {record}")),
            Err(e) => not_yet(format!("TXT {record}: {}", no_answer(&e))),
        }
    }

    async fn http(&self, name: &str, token: &str) -> Finding {
        let addrs = match self.resolver.lookup_ip(fqdn(name).as_str()).await {
            Ok(found) => found.iter().collect::<Vec<_>>(),
            Err(e) => return not_yet(format!("cannot resolve {name}: {e}")),
        };
        if addrs.is_empty() {
            return not_yet(format!("{name} has no address"));
        }
        let Some(ip) = addrs.iter().find(|ip| self.any_address || policy::is_public(**ip)) else {
            return not_yet(format!(
                "{name} resolves only to addresses that are not public ({}); the http method does not \
                 connect there (custom_domains.http_private_addresses)",
                addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
            ));
        };
        match fetch(SocketAddr::new(*ip, self.http_port), name).await {
            Ok((200, body)) if body.trim() == token => Finding::Proven,
            Ok((200, _)) => Finding::NotYet {
                other_proof: true,
                detail: format!("http://{name}{} serves another value", policy::HTTP_PATH),
            },
            Ok((status, _)) => not_yet(format!("http://{name}{} answered {status}", policy::HTTP_PATH)),
            Err(e) => not_yet(format!("http://{name}{}: {e}", policy::HTTP_PATH)),
        }
    }

    /// Where the names a claim on `name` covers point: `name`, and with
    /// `strip_www` also `www.` of it (looked at together).
    async fn claimed_pointing(&self, name: &str) -> Pointing {
        if !self.strip_www {
            return self.pointing(name).await;
        }
        let www = format!("www.{name}");
        let (name, www) = tokio::join!(self.pointing(name), self.pointing(&www));
        policy::either(name, www)
    }

    /// A CNAME to `cname_target` is here; another CNAME is elsewhere. Without
    /// a CNAME, the name's addresses are here if every one is among
    /// `cname_addresses` (none: elsewhere). An answer of no such name or no
    /// records is elsewhere; an error without an answer is unknown.
    async fn pointing(&self, name: &str) -> Pointing {
        let Some(target) = &self.cname_target else {
            if self.cname_addresses.is_empty() {
                return Pointing::Unknown("no cname_target configured".into());
            }
            return self.addresses(name).await;
        };
        match self.resolver.lookup(fqdn(name).as_str(), RecordType::CNAME).await {
            Ok(found) => {
                let targets: Vec<String> = found
                    .record_iter()
                    .filter_map(|r| match r.data() {
                        RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect();
                if targets.iter().any(|t| t == target) {
                    return Pointing::Here;
                }
                if !targets.is_empty() {
                    return Pointing::Elsewhere {
                        other: true,
                        detail: format!("{name} is a CNAME to {}", targets.join(", ")),
                    };
                }
            }
            Err(e) if answered_none(&e) => {}
            Err(e) => return Pointing::Unknown(format!("CNAME {name}: {}", no_answer(&e))),
        }
        if self.cname_addresses.is_empty() {
            return Pointing::Elsewhere {
                other: false,
                detail: format!("{name} has no CNAME to {target}"),
            };
        }
        self.addresses(name).await
    }

    /// Here if every address of `name` is among `cname_addresses`.
    async fn addresses(&self, name: &str) -> Pointing {
        let ips = match self.lookup_addresses(name).await {
            Ok(ips) => ips,
            Err(said) => return said,
        };
        if !ips.is_empty() && ips.iter().all(|ip| self.cname_addresses.contains(ip)) {
            Pointing::Here
        } else {
            Pointing::Elsewhere {
                other: !ips.is_empty(),
                detail: format!("{name} points at {ips:?}, not only at the platform's addresses"),
            }
        }
    }

    /// `name`'s addresses, or what the DNS said instead: no such name or no
    /// address is elsewhere, no answer is unknown.
    async fn lookup_addresses(&self, name: &str) -> Result<Vec<IpAddr>, Pointing> {
        match self.resolver.lookup_ip(fqdn(name).as_str()).await {
            Ok(found) => Ok(found.iter().collect()),
            Err(e) if answered_none(&e) => Err(no_address(name)),
            Err(e) => Err(Pointing::Unknown(format!("cannot resolve {name}: {}", no_answer(&e)))),
        }
    }
}

/// `name` has no address: elsewhere, with nothing else seen.
fn no_address(name: &str) -> Pointing {
    Pointing::Elsewhere {
        other: false,
        detail: format!("{name} has no address"),
    }
}

/// The response code of an answer without records: hickory reports a
/// refusal to answer (SERVFAIL, REFUSED) as no records found too.
fn no_records_code(e: &ResolveError) -> Option<ResponseCode> {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => Some(*response_code),
        _ => None,
    }
}

/// Whether the DNS answered that there is no such record (NXDOMAIN, or
/// NOERROR without one), as opposed to not answering (SERVFAIL, REFUSED).
fn answered_none(e: &ResolveError) -> bool {
    matches!(no_records_code(e), Some(ResponseCode::NXDomain | ResponseCode::NoError))
}

/// What a failure to answer was: the response code the DNS gave, if it
/// gave one.
fn no_answer(e: &ResolveError) -> String {
    match no_records_code(e) {
        Some(code) => format!("the DNS answered {code}"),
        None => e.to_string(),
    }
}

fn not_yet(detail: String) -> Finding {
    Finding::NotYet {
        other_proof: false,
        detail,
    }
}

/// Absolute, so no search domain is appended.
fn fqdn(name: &str) -> String {
    format!("{name}.")
}

/// GET the well-known path from `addr` with `name` as Host: status and
/// (at most `MAX_BODY` bytes of) body. No redirects are followed.
async fn fetch(addr: SocketAddr, name: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let request = http::Request::get(policy::HTTP_PATH)
        .header(http::header::HOST, name)
        .header(http::header::USER_AGENT, "tenant-gateway-verification")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    driver.abort();
    result
}
