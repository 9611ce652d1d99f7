//! Drops a malformed `Host` header before any handler could read it, as GitLab's gateway does
//! (its framework built request URLs from `Host`, and `example.com/x?` made the path it checked
//! differ from the one it served). aigw routes by the request line alone; dropping the header
//! keeps every later reader (logs, a future redirect) on the same footing.

/// Whether `host` is a host name, an IPv4 address or a bracketed IPv6 address, with an optional
/// port: the characters RFC 3986 allows there (the set GitLab's gateway checks).
pub(super) fn is_well_formed(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((address, after)) => {
                let ipv6 =
                    address.contains(':') && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !ipv6 {
                    return false;
                }
                (None, after)
            }
            None => return false,
        },
        None => match host.find(':') {
            Some(colon) => (Some(&host[..colon]), &host[colon..]),
            None => (Some(host), ""),
        },
    };
    let name_ok =
        name.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
}

/// Remove `Host` when it is malformed (the request goes on, as GitLab's does: a 400 would break
/// callers for a header nothing here needs). Returns whether it was removed.
pub(super) fn drop_malformed(headers: &mut http::HeaderMap) -> bool {
    let malformed =
        headers.get(http::header::HOST).is_some_and(|host| host.to_str().map_or(true, |text| !is_well_formed(text)));
    if malformed {
        headers.remove(http::header::HOST);
    }
    malformed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_and_ports_are_well_formed() {
        for host in
            ["gitlab.example.com", "aigw:5052", "127.0.0.1:8080", "[::1]", "[::1]:5052", "[2001:db8::7]", "a-b.c"]
        {
            assert!(is_well_formed(host), "{host}");
        }
    }

    #[test]
    fn paths_queries_and_odd_characters_are_not() {
        for host in [
            "example.com/x?",
            "example.com/v1/prompts",
            "a b",
            "host:",
            "host:80x",
            "[::1",
            "[gitlab]",
            "",
            "h@x",
            "a:1:2",
        ] {
            assert!(!is_well_formed(host), "{host}");
        }
    }

    #[test]
    fn only_a_malformed_host_is_dropped() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, http::HeaderValue::from_static("aigw.internal:5052"));
        assert!(!drop_malformed(&mut headers));
        assert!(headers.contains_key(http::header::HOST));
        headers.insert(http::header::HOST, http::HeaderValue::from_static("aigw.internal/monitoring/healthz?"));
        assert!(drop_malformed(&mut headers));
        assert!(!headers.contains_key(http::header::HOST));
    }
}
