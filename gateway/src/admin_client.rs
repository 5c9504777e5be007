//! The operator API's command line (`gateway explain HOST`, `gateway purge`,
//! `gateway reload`): one HTTP/1.1 request to the admin listener named by the
//! config, with the token from `admin.token_env`; prints the JSON answer.
//! A plain blocking socket: the admin listener is local and the exchange
//! is one request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Config;

/// Percent-encode a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `METHOD path?query` against the admin listener; the body of a 2xx answer.
pub fn call(cfg: &Config, method: &str, path: &str, params: &[(&str, &str)]) -> anyhow::Result<String> {
    let token = cfg
        .admin_token()?
        .context("the operator API is off: set admin.token_env in the config (and the variable it names)")?;
    let mut addr = cfg.listen.admin;
    if addr.ip().is_unspecified() {
        addr = SocketAddr::new([127, 0, 0, 1].into(), addr.port());
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the admin listener at {addr} (config key `listen.admin`)"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP answer from the admin listener")?;
    if !(200..300).contains(&status) {
        bail!("{status}: {}", body.trim());
    }
    Ok(body.trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_encoded() {
        assert_eq!(super::encode("Shop.Example.com:443"), "Shop.Example.com%3A443");
        assert_eq!(super::encode("a b&c"), "a%20b%26c");
    }
}
