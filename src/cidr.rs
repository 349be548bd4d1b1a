//! Source networks: CIDR blocks (`35.90.102.128/25`, `2001:db8::/32`) and a list of them, for
//! `http.callback_allow_networks`. Pure: parsing and matching only.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::IpAddr;

/// One network: an address and a prefix length. The host bits of the address are cleared, so
/// `10.1.2.3/8` is `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `addr/prefix`, or a bare address (a network of one host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an IP network (expected e.g. 35.90.102.128/25)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a
    /// dual-stack listener reports IPv4 peers) matches as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

/// A list of networks; empty means "no restriction" to whoever uses it as an allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkList(pub Vec<Cidr>);

impl NetworkList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any network of the list contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

impl<'de> Deserialize<'de> for NetworkList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items: Vec<String> = Vec::deserialize(d)?;
        items
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map(NetworkList)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn twilios_event_streams_range_holds_its_128_addresses_only() {
        let twilio = Cidr::parse("35.90.102.128/25").unwrap();
        assert!(twilio.contains(ip("35.90.102.128")));
        assert!(twilio.contains(ip("35.90.102.255")));
        assert!(!twilio.contains(ip("35.90.102.127")));
        assert!(!twilio.contains(ip("35.90.103.128")));
        assert!(twilio.contains(ip("::ffff:35.90.102.200")), "IPv4-mapped");
        assert!(!twilio.contains(ip("2001:db8::1")));
        assert_eq!(twilio.to_string(), "35.90.102.128/25");
    }

    #[test]
    fn host_bits_are_cleared_and_bare_addresses_are_single_hosts() {
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        let one = Cidr::parse(" 127.0.0.1 ").unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn junk_is_refused_with_a_message_naming_it() {
        for bad in [
            "",
            "35.90.102.128/33",
            "::/129",
            "host.example/24",
            "1.2.3.4/-1",
            "1.2.3/24",
        ] {
            let err = Cidr::parse(bad).unwrap_err();
            assert!(err.contains(bad.trim()), "{err}");
        }
    }

    #[test]
    fn a_list_matches_any_of_its_networks() {
        let list = NetworkList(vec![
            Cidr::parse("35.90.102.128/25").unwrap(),
            Cidr::parse("127.0.0.0/8").unwrap(),
        ]);
        assert!(list.contains(ip("127.0.0.1")));
        assert!(list.contains(ip("35.90.102.130")));
        assert!(!list.contains(ip("192.0.2.1")));
        assert!(!NetworkList::default().contains(ip("127.0.0.1")));
    }
}
