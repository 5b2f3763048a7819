//! Which addresses a runner may connect to on a user's behalf. The API checks a camera URL's
//! literal address when it accepts it; the runner checks every address a name resolves to
//! before it connects (and its egress proxy does the same for each HTTP connection FFmpeg makes).
//!
//! Refused unless allowed: loopback, link-local (cloud metadata lives there), unspecified,
//! multicast and broadcast. Private ranges stay allowed: that is where cameras live.
//! An explicit `deny` wins over `allow`, which wins over the built-in refusals.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use ipnet::IpNet;

use serde::{Deserialize, Serialize};

/// Where runners may connect for a scenario (`destinations` in the configuration): CIDRs or addresses.
/// Loopback, link-local, unspecified, multicast and broadcast are refused unless in `allow`;
/// anything in `deny` is refused.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationSettings {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// A `destinations` entry that is not a CIDR or an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct PolicyError {
    pub key: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("{address} is {class}, which this server refuses as a destination")]
    Refused { address: IpAddr, class: &'static str },
    #[error("{host} does not resolve: {reason}")]
    Unresolved { host: String, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl DestinationPolicy {
    pub fn from_settings(s: &DestinationSettings) -> Result<Self, PolicyError> {
        let parse = |key: &'static str, list: &[String]| {
            list.iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| {
                    parse_net(c)
                        .ok_or_else(|| PolicyError { key, reason: format!("'{c}' is not a CIDR or an address") })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self { allow: parse("destinations.allow", &s.allow)?, deny: parse("destinations.deny", &s.deny)? })
    }

    /// Checks one address. An IPv6 address that carries an IPv4 one (mapped, compatible,
    /// NAT64, 6to4, Teredo) is refused when either is: translators deliver to the IPv4 one.
    pub fn check_ip(&self, address: IpAddr) -> Result<(), DestinationError> {
        let address = canonical(address);
        let carried = match address {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let both = || std::iter::once(address).chain(carried);
        if both().any(|a| self.deny.iter().any(|n| n.contains(&a))) {
            return Err(DestinationError::Refused { address, class: "in destinations.deny" });
        }
        if self.allow.iter().any(|n| n.contains(&address)) {
            return Ok(());
        }
        match both().find_map(refused_class) {
            Some(class) => Err(DestinationError::Refused { address, class }),
            None => Ok(()),
        }
    }

    /// Checks a URL host without resolving it: a literal address (in any form the C library
    /// would take, `2130706433` and `0x7f.1` included) or a `localhost` name. Other names pass
    /// here; whoever connects resolves and checks them.
    pub fn check_host(&self, host: &str) -> Result<(), DestinationError> {
        match literal_address(host) {
            Some(address) => self.check_ip(address),
            None => Ok(()),
        }
    }

    /// Resolves `host` (blocking: the C resolver) and checks every address it gives, so a name
    /// with one good and one refused address is refused. Returns the addresses.
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DestinationError> {
        if let Some(address) = literal_address(host) {
            self.check_ip(address)?;
            return Ok(vec![SocketAddr::new(address, port)]);
        }
        let unresolved = |reason: String| DestinationError::Unresolved { host: host.to_string(), reason };
        let addresses: Vec<SocketAddr> =
            (host, port).to_socket_addrs().map_err(|e| unresolved(e.to_string()))?.collect();
        if addresses.is_empty() {
            return Err(unresolved("no addresses".into()));
        }
        for a in &addresses {
            self.check_ip(a.ip())?;
        }
        Ok(addresses)
    }
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it carries.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 one carries for a translator or tunnel: IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`), 6to4 (`2002::/16`) and Teredo
/// (`2001::/32`, the client's address inverted).
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::from(u32::from(s[6]) << 16 | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0, 0, _, _] if !v6.is_unspecified() && !v6.is_loopback() => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 1, ..] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from(u32::from(hi) << 16 | u32::from(lo))),
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!(u32::from(s[6]) << 16 | u32::from(s[7])))),
        _ => None,
    }
}

/// Cloud instance metadata services besides 169.254.169.254 (link-local already): AWS's and
/// Google Cloud's IPv6 ones, Alibaba Cloud's.
const METADATA: [IpAddr; 3] = [
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

fn refused_class(address: IpAddr) -> Option<&'static str> {
    if METADATA.contains(&address) {
        return Some("cloud metadata");
    }
    match address {
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.octets()[0] == 0 => Some("unspecified (0.0.0.0/8)"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        _ => None,
    }
}

/// The address a URL host names without DNS: an IP literal, a numbers-and-dots form the C
/// library accepts (`inet_aton`: 1 to 4 parts, decimal, octal or hex), or a `localhost` name
/// (RFC 6761: always loopback).
pub fn literal_address(host: &str) -> Option<IpAddr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse().ok();
    }
    if let Ok(address) = host.parse::<IpAddr>() {
        return Some(address);
    }
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    inet_aton(host).map(IpAddr::V4)
}

fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u64> = text.split('.').map(aton_part).collect::<Option<_>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|&p| p > 255) || *last >= 1u64 << (8 * (4 - leading.len())) {
        return None;
    }
    let head = leading.iter().enumerate().fold(0u64, |acc, (i, &p)| acc | p << (24 - 8 * i));
    Some(Ipv4Addr::from((head | last) as u32))
}

fn aton_part(part: &str) -> Option<u64> {
    let (digits, radix) = match part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if part.len() > 1 && part.starts_with('0') => (&part[1..], 8),
        None => (part, 10),
    };
    if digits.is_empty() && radix == 16 {
        return Some(0);
    }
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> DestinationPolicy {
        let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        DestinationPolicy::from_settings(&DestinationSettings { allow: strings(allow), deny: strings(deny) }).unwrap()
    }

    fn refused(p: &DestinationPolicy, host: &str) -> Option<&'static str> {
        match p.check_host(host) {
            Ok(()) => None,
            Err(DestinationError::Refused { class, .. }) => Some(class),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn refuses_loopback_link_local_unspecified_and_multicast_but_not_private_ranges() {
        let p = DestinationPolicy::default();
        for (host, class) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("[::1]", "loopback"),
            ("[::ffff:127.0.0.1]", "loopback"),
            ("localhost", "loopback"),
            ("cams.LOCALHOST.", "loopback"),
            ("169.254.169.254", "link-local"),
            ("[fe80::1]", "link-local"),
            ("0.0.0.0", "unspecified (0.0.0.0/8)"),
            ("0", "unspecified (0.0.0.0/8)"),
            ("[::]", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("[ff02::1]", "multicast"),
            ("255.255.255.255", "broadcast"),
            // IPv6 forms that carry a refused IPv4 address.
            ("[::127.0.0.1]", "loopback"),
            ("[64:ff9b::7f00:1]", "loopback"),
            ("[64:ff9b:1::a9fe:a9fe]", "link-local"),
            ("[2002:7f00:1::]", "loopback"),
            ("[2002:a9fe:a9fe::1]", "link-local"),
            ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "loopback"),
            // Metadata services with addresses of their own.
            ("[fd00:ec2::254]", "cloud metadata"),
            ("[fd20:ce::254]", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
        ] {
            assert_eq!(refused(&p, host), Some(class), "{host}");
        }
        for host in ["[64:ff9b::a01:203]", "[2002:a01:203::1]", "[::a01:203]"] {
            assert_eq!(refused(&p, host), None, "{host} carries 10.1.2.3");
        }
        for host in ["10.1.2.3", "192.168.1.64", "172.16.0.9", "[fd00::5]", "8.8.8.8", "cam.example", "camera-7.local"]
        {
            assert_eq!(refused(&p, host), None, "{host}");
        }
    }

    #[test]
    fn numbers_and_dots_forms_are_the_addresses_the_resolver_would_use() {
        for (text, address) in [
            ("2130706433", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("169.254.43518", "169.254.169.254"),
            ("0xA9FEA9FE", "169.254.169.254"),
        ] {
            assert_eq!(literal_address(text), Some(address.parse().unwrap()), "{text}");
        }
        for name in ["cam1", "1.2.3.4.5", "256.1.1.1", "0x1g", "12cam", "099"] {
            assert_eq!(literal_address(name), None, "{name}");
        }
    }

    #[test]
    fn deny_wins_over_allow_which_wins_over_the_built_in_refusals() {
        let p = policy(&["127.0.0.0/8", "::1"], &["127.0.0.2/32", "10.9.0.0/16"]);
        assert_eq!(refused(&p, "127.0.0.1"), None);
        assert_eq!(refused(&p, "[::1]"), None);
        assert_eq!(refused(&p, "127.0.0.2"), Some("in destinations.deny"));
        assert_eq!(refused(&p, "10.9.4.4"), Some("in destinations.deny"));
        assert_eq!(refused(&p, "10.8.4.4"), None);
        assert_eq!(refused(&p, "169.254.169.254"), Some("link-local"));
    }

    #[test]
    fn resolving_a_literal_checks_it_without_the_resolver() {
        assert!(matches!(
            DestinationPolicy::default().resolve("localhost", 554),
            Err(DestinationError::Refused { class: "loopback", .. })
        ));
        let allowed = policy(&["127.0.0.0/8", "::1/128"], &[]);
        assert_eq!(allowed.resolve("2130706433", 554).unwrap(), vec!["127.0.0.1:554".parse().unwrap()]);
    }

    #[test]
    fn bad_lists_name_the_key() {
        let bad = DestinationSettings { allow: vec!["10.0.0.0/33".into()], deny: vec![] };
        let err = DestinationPolicy::from_settings(&bad).unwrap_err().to_string();
        assert!(err.contains("destinations.allow") && err.contains("10.0.0.0/33"), "{err}");
    }
}
