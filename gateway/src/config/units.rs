//! Serde adapters from the file's plain values to the model's types: a
//! `Duration` is written as whole milliseconds or seconds (the key's `_ms`
//! or `_secs` suffix says which), a trusted proxy as an address or a CIDR.
//! Runtime code only ever sees the typed value.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// `Duration` ⇄ whole milliseconds.
pub(crate) mod ms {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `Duration` ⇄ whole seconds.
pub(crate) mod secs {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Networks written as CIDRs or bare addresses (a bare address is its own
/// /32 or /128).
pub(crate) mod nets {
    use super::*;
    use ipnet::IpNet;
    use serde::ser::SerializeSeq;
    use std::net::IpAddr;

    pub(crate) fn parse(s: &str) -> Option<IpNet> {
        s.parse::<IpNet>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
    }

    pub(crate) fn serialize<S: Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for n in v {
            seq.serialize_element(&n.to_string())?;
        }
        seq.end()
    }

    /// One element, read on its own so an error names its index.
    struct Net(IpNet);

    impl<'de> Deserialize<'de> for Net {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Net, D::Error> {
            let s = String::deserialize(d)?;
            parse(&s)
                .map(Net)
                .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not an IP or CIDR")))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Ok(Vec::<Net>::deserialize(d)?.into_iter().map(|n| n.0).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nets_take_addresses_and_cidrs() {
        assert_eq!(super::nets::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(super::nets::parse("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(super::nets::parse("::1").unwrap().to_string(), "::1/128");
        assert!(super::nets::parse("10.0.0.0/99").is_none());
        assert!(super::nets::parse("proxy.example").is_none());
    }
}
