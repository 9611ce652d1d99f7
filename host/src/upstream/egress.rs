//! Egress policy: which addresses model endpoints may connect to.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A refused destination. Nothing was sent to it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EgressError {
    /// Link-local and cloud metadata addresses are never reachable, whatever the allowlist says.
    #[error("model endpoint address {0} is link-local or a metadata address and is always refused")]
    Metadata(IpAddr),
    /// The unspecified address (`0.0.0.0`, `::`) is never a model server.
    #[error("model endpoint address {0} is unspecified and is always refused")]
    Unspecified(IpAddr),
    /// Outside the operator's allowlist.
    #[error("model endpoint address {0} is outside the egress allowlist (AIGW_EGRESS__ALLOW)")]
    NotAllowed(IpAddr),
    /// The host name resolved to nothing.
    #[error("model endpoint host {0:?} did not resolve")]
    Unresolved(String),
    /// A numeric host that is no IPv4 address (a part out of range, too many parts).
    #[error("model endpoint host {0:?} is not a valid IPv4 address")]
    BadNumericHost(String),
}

/// The operator's allowlist plus the ranges that are always refused.
#[derive(Debug, Clone)]
pub(crate) struct EgressPolicy {
    allow: Vec<IpNet>,
}

/// The AWS/GCP/Azure IPv6 metadata address.
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

impl EgressPolicy {
    /// A policy allowing exactly `allow`.
    pub(crate) fn new(allow: Vec<IpNet>) -> Self {
        EgressPolicy { allow }
    }

    /// Every address but the ones always refused: for the GitLab instance, whose URL the
    /// operator wrote, so that its address need not be (and is not) open to model endpoints.
    pub(crate) fn any_but_always_refused() -> Self {
        EgressPolicy { allow: vec![IpNet::V4(ipnet::Ipv4Net::default()), IpNet::V6(ipnet::Ipv6Net::default())] }
    }

    /// Check one resolved address. IPv4-mapped and IPv4-compatible IPv6 forms are judged as the
    /// IPv4 address they carry, so `::ffff:169.254.169.254` is the metadata address it is.
    pub(crate) fn check(&self, addr: IpAddr) -> Result<(), EgressError> {
        let addr = canonical(addr);
        if addr.is_unspecified() {
            return Err(EgressError::Unspecified(addr));
        }
        if is_metadata_or_link_local(addr) {
            return Err(EgressError::Metadata(addr));
        }
        if self.allow.iter().any(|net| net.contains(&addr)) { Ok(()) } else { Err(EgressError::NotAllowed(addr)) }
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
pub(crate) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The address a URL's host names without a resolver: an IPv4 or bracketed IPv6 literal, or a
/// legacy IPv4 spelling (see [`legacy_ipv4`]); `None` for a name, which must be resolved.
pub(crate) fn literal_address(host: &str) -> Option<Result<IpAddr, EgressError>> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) => Some(Ok(ip)),
        Err(_) => legacy_ipv4(literal).map(|ipv4| ipv4.map(IpAddr::V4)),
    }
}

/// Read a host written in one of the legacy IPv4 spellings `inet_aton` and browsers accept:
/// one to four parts, each decimal, octal (leading `0`) or hex (`0x`), the last part filling the
/// remaining bytes (`2130706433`, `0x7f.1`, `0177.0.0.1` are all 127.0.0.1). `None` when the host
/// is a name (some part is not a number); `Some(Err)` when it is numeric but no address, which
/// is refused rather than handed to a resolver that might read it differently.
pub(crate) fn legacy_ipv4(host: &str) -> Option<Result<Ipv4Addr, EgressError>> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = trimmed.split('.').collect();
    let looks_numeric = |part: &&str| match part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        Some(hex) => hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()),
    };
    if !parts.iter().all(looks_numeric) {
        return None;
    }
    let bad = || EgressError::BadNumericHost(host.to_string());
    let numbers: Option<Vec<u64>> = parts.iter().map(|part| parse_ipv4_part(part)).collect();
    let Some(numbers) = numbers.filter(|n| (1..=4).contains(&n.len())) else {
        return Some(Err(bad()));
    };
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (4 - leading.len())) {
        return Some(Err(bad()));
    }
    let value = leading.iter().enumerate().fold(*last, |acc, (i, &n)| acc | (n << (8 * (3 - i))));
    Some(u32::try_from(value).map(Ipv4Addr::from).map_err(|_| bad()))
}

fn parse_ipv4_part(part: &str) -> Option<u64> {
    if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        return if hex.is_empty() { Some(0) } else { u64::from_str_radix(hex, 16).ok() };
    }
    if part.len() > 1 && part.starts_with('0') {
        return u64::from_str_radix(&part[1..], 8).ok();
    }
    part.parse().ok()
}

fn is_metadata_or_link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local() || v4 == Ipv4Addr::new(100, 100, 100, 200),
        IpAddr::V6(v6) => v6 == EC2_METADATA_V6 || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(nets: &str) -> EgressPolicy {
        EgressPolicy::new(nets.split(',').map(|net| net.parse().unwrap()).collect())
    }

    #[test]
    fn allowlist_admits_only_its_networks() {
        let p = policy("10.0.0.0/8,::1/128");
        assert_eq!(p.check("10.1.2.3".parse().unwrap()), Ok(()));
        assert_eq!(p.check("::1".parse().unwrap()), Ok(()));
        assert!(matches!(p.check("11.0.0.1".parse().unwrap()), Err(EgressError::NotAllowed(_))));
        assert!(matches!(p.check("127.0.0.1".parse().unwrap()), Err(EgressError::NotAllowed(_))));
    }

    #[test]
    fn metadata_is_refused_even_when_allowed() {
        let p = policy("0.0.0.0/0,::/0");
        for addr in ["169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254", "fe80::1"] {
            assert!(matches!(p.check(addr.parse().unwrap()), Err(EgressError::Metadata(_))), "{addr}");
        }
        for addr in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            assert!(matches!(p.check(addr.parse().unwrap()), Err(EgressError::Unspecified(_))), "{addr}");
        }
    }

    #[test]
    fn legacy_ipv4_spellings_are_normalised() {
        let loopback = Ipv4Addr::new(127, 0, 0, 1);
        for host in
            ["2130706433", "0x7f000001", "017700000001", "0x7f.1", "127.1", "0177.0.0.1", "127.0.0.1.", "0x7F.0.0.0x1"]
        {
            assert_eq!(legacy_ipv4(host), Some(Ok(loopback)), "{host}");
        }
        assert_eq!(legacy_ipv4("0xa9.0xfe.0xa9.0xfe"), Some(Ok(Ipv4Addr::new(169, 254, 169, 254))));
        assert_eq!(legacy_ipv4("0"), Some(Ok(Ipv4Addr::UNSPECIFIED)));
        for host in ["256.0.0.1", "1.2.3.4.5", "4294967296", "08.0.0.1", "1.2.65536"] {
            assert!(matches!(legacy_ipv4(host), Some(Err(EgressError::BadNumericHost(_)))), "{host}");
        }
        for host in ["localhost", "vllm.internal", "0x7f.example", "deadbeef", "a.1"] {
            assert_eq!(legacy_ipv4(host), None, "{host}");
        }
    }

    #[test]
    fn mapped_addresses_are_judged_as_ipv4() {
        let p = policy("10.0.0.0/8");
        assert_eq!(p.check("::ffff:10.0.0.5".parse().unwrap()), Ok(()));
        assert!(p.check("::ffff:127.0.0.1".parse().unwrap()).is_err());
    }
}
