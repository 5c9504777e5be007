//! Host normalisation (`tenancy::normalize_host`), the connection's memo
//! of it (`HostMemo`) and the stamp's own normalisation of the `Host` a
//! backend receives (`stamp::normalize_host_bytes`).

use arbitrary::Arbitrary;
use gateway::tenant::host::{lookup_name, HostMemo};

use crate::Choice;

/// One connection's `Host` values, in order; realistic ones are picked by
/// index so the memo sees repeats.
#[derive(Debug, Arbitrary)]
pub struct Input {
    pub hosts: Vec<Choice>,
}

/// Hosts a real client sends, in the spellings that normalise alike.
pub const KNOWN: [&str; 12] = [
    "ferrari.myapp.localhost",
    "Ferrari.MyApp.Localhost:8443",
    "ferrari.myapp.localhost.",
    "mclaren.myapp.localhost",
    "www.mclaren.myapp.localhost",
    "bücher.example",
    "xn--bcher-kva.example",
    "BÜCHER.example:443",
    "[::1]:8080",
    "[0:0::1]",
    "127.0.0.1",
    "shop.example.com:80",
];

pub fn run(data: &[u8]) {
    crate::run::<Input>(data, check);
}

pub fn check(input: &Input) {
    let memo = HostMemo::default();
    for pick in input.hosts.iter().take(16) {
        let raw = pick.pick(&KNOWN);
        let fresh = tenancy::normalize_host(raw);
        // The memo answers exactly as normalising would, whatever came before.
        let kept = memo.normalize(raw).map(|h| String::from(&*h));
        assert_eq!(kept, fresh, "the connection's memo answered {raw:?} differently");
        let Ok(host) = fresh else { continue };
        // Normalised is final: again gives the same.
        assert_eq!(
            tenancy::normalize_host(&host).as_deref(),
            Ok(host.as_str()),
            "{raw:?} normalised to {host:?}, which normalises differently"
        );
        // What the gateway signs is what a backend's verifier computes from
        // the `Host` it is sent (the gateway sends this host, or the
        // client's value when it already is this host).
        assert_eq!(
            stamp::normalize_host_bytes(host.as_bytes()),
            host.as_bytes(),
            "{raw:?}: the stamp's normalisation changes the routed host {host:?}"
        );
        assert!(
            host.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()),
            "{raw:?} normalised to {host:?}, not lower-case visible ASCII"
        );
        assert!(
            host.len() <= tenancy::MAX_HOST_LEN + 2,
            "{host:?} is longer than a host"
        );
        // A domain is a host without a port.
        if !raw.contains(':') || raw.starts_with('[') {
            if let Ok(domain) = tenancy::normalize_domain(raw) {
                assert_eq!(domain, host, "{raw:?} as a domain and as a host differ");
            }
        }
        let name = lookup_name(&host, true);
        assert!(
            !name.is_empty() && host.ends_with(name),
            "lookup name {name:?} of {host:?}"
        );
    }
}
