//! Connection caps: for the public listeners a total per listener and a
//! cap per client address shared by both, so one client cannot take the
//! file descriptors every other tenant's visitors need; the admin listener
//! has caps of its own (`admin.max_connections`, and
//! `admin.max_connections_per_ip` per client address).
//!
//! Written here rather than taken from a crate: this is counting, not rate
//! limiting (rate-limit crates such as `governor` bound events per second,
//! not concurrent holders), and the count must be released by a guard when a
//! connection ends however its task ends.
//!
//! IPv6 clients are counted per /64: a single host usually owns a whole /64,
//! so counting per address would let it open 2^64 "clients".
//!
//! The same count per client bounds the bytes one client's bodies may hold
//! of the gateway's body budgets ([`PerIp::hold`], `crate::body::Budget`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Why a connection was refused (the `reason` label of the refusal metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds `max_connections` already.
    Total,
    /// This client address (or IPv6 /64) holds `max_connections_per_ip`.
    PerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "listener_cap",
            Refusal::PerIp => "per_ip_cap",
        }
    }
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

const SHARDS: usize = 16;

/// What each client holds, up to `max` each: open connections (shared by
/// the public listeners), or bytes of a body budget.
#[derive(Debug)]
pub struct PerIp {
    max: u64,
    shards: [Mutex<HashMap<IpAddr, u64>>; SHARDS],
}

/// `n` units a client holds of a [`PerIp`], given back when dropped.
#[derive(Debug)]
pub struct ClientHold {
    of: Arc<PerIp>,
    key: IpAddr,
    n: u64,
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        self.of.release(self.key, self.n);
    }
}

impl PerIp {
    pub fn new(max: u64) -> Arc<PerIp> {
        Arc::new(PerIp {
            max,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        })
    }

    /// `n` more units for the client of `ip` (its [`client_key`]), if that
    /// keeps it within the maximum.
    pub fn hold(self: &Arc<Self>, ip: IpAddr, n: u64) -> Option<ClientHold> {
        let key = client_key(ip);
        self.acquire(key, n).then(|| ClientHold {
            of: self.clone(),
            key,
            n,
        })
    }

    fn shard(&self, key: &IpAddr) -> parking_lot::MutexGuard<'_, HashMap<IpAddr, u64>> {
        let h = match key {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => (u128::from(*v6) >> 64) as usize,
        };
        self.shards[h.wrapping_mul(0x9E37_79B9) % SHARDS].lock()
    }

    fn acquire(&self, key: IpAddr, n: u64) -> bool {
        let mut shard = self.shard(&key);
        let held = shard.get(&key).copied().unwrap_or(0);
        if held.saturating_add(n) > self.max {
            return false;
        }
        shard.insert(key, held + n);
        true
    }

    fn release(&self, key: IpAddr, n: u64) {
        let mut shard = self.shard(&key);
        if let Some(held) = shard.get_mut(&key) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                shard.remove(&key);
            }
        }
    }

    /// Clients currently counted.
    #[cfg(test)]
    fn clients(&self) -> usize {
        (0..SHARDS).map(|i| self.shards[i].lock().len()).sum()
    }
}

/// One listener's caps.
pub struct ConnLimits {
    max_total: usize,
    open: AtomicUsize,
    per_ip: Arc<PerIp>,
}

impl ConnLimits {
    pub fn new(max_total: usize, per_ip: Arc<PerIp>) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total,
            open: AtomicUsize::new(0),
            per_ip,
        })
    }

    /// Admit a connection from `ip`, or say why not. The permit releases
    /// both counts when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let Some(client) = self.per_ip.hold(ip, 1) else {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        };
        Ok(ConnPermit {
            limits: self.clone(),
            _client: client,
        })
    }

    /// Connections open on this listener.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One admitted connection; dropping it frees its place (its client's with
/// it).
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    _client: ClientHold,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_cap_leaves_room_for_other_clients() {
        let per_ip = PerIp::new(2);
        let l = ConnLimits::new(10, per_ip.clone());
        let a1 = l.admit(ip("10.0.0.1")).unwrap();
        let _a2 = l.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(l.admit(ip("10.0.0.1")).err(), Some(Refusal::PerIp));
        let _b = l.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(l.open(), 3);
        drop(a1);
        let _a3 = l.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(per_ip.clients(), 2);
    }

    #[test]
    fn total_cap_and_release() {
        let l = ConnLimits::new(2, PerIp::new(10));
        let a = l.admit(ip("10.0.0.1")).unwrap();
        let b = l.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(l.admit(ip("10.0.0.3")).err(), Some(Refusal::Total));
        drop((a, b));
        assert_eq!(l.open(), 0);
        assert!(l.admit(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let per_ip = PerIp::new(1);
        let l = ConnLimits::new(10, per_ip.clone());
        let _a = l.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(l.admit(ip("2001:db8:1:2::ffff")).err(), Some(Refusal::PerIp));
        assert!(l.admit(ip("2001:db8:1:3::1")).is_ok());
        let _v4 = l.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(l.admit(ip("::ffff:192.0.2.1")).err(), Some(Refusal::PerIp));
    }

    #[test]
    fn a_client_holds_bytes_up_to_its_maximum_until_it_gives_them_back() {
        let per = PerIp::new(100);
        let a = per.hold(ip("10.0.0.1"), 60).unwrap();
        assert!(per.hold(ip("10.0.0.1"), 41).is_none());
        let b = per.hold(ip("10.0.0.1"), 40).unwrap();
        assert!(per.hold(ip("10.0.0.2"), 100).is_some(), "another client has its own");
        assert!(per.hold(ip("10.0.0.1"), 1).is_none());
        drop(a);
        assert!(per.hold(ip("10.0.0.1"), 60).is_some());
        drop(b);
        assert_eq!(per.clients(), 0);
        // An IPv6 client per /64.
        let _c = per.hold(ip("2001:db8::1"), 100).unwrap();
        assert!(per.hold(ip("2001:db8::2"), 1).is_none());
    }

    #[test]
    fn shared_per_ip_across_listeners() {
        let per_ip = PerIp::new(1);
        let http = ConnLimits::new(10, per_ip.clone());
        let tls = ConnLimits::new(10, per_ip);
        let _a = http.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(tls.admit(ip("10.0.0.1")).err(), Some(Refusal::PerIp));
    }
}
