//! The address guard: webhook endpoints may not point into the cluster's own
//! networks (loopback, link-local such as the 169.254.169.254 metadata
//! service, private ranges) unless the operator is started with
//! `--allow-private-webhook-addresses`. It is applied to the addresses a name
//! resolves to at the moment of connecting, so a name that resolved to a
//! public address when the Webhook was checked cannot be re-pointed at an
//! internal one later (DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, or `None` when it may be used.
pub fn forbidden_reason(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [first, second, ..] = a.octets();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_link_local() {
        Some("link-local")
    } else if a.is_private() {
        Some("private")
    } else if first == 0 {
        Some("this-network")
    } else if first == 100 && (64..128).contains(&second) {
        Some("shared address space (carrier-grade NAT)")
    } else if a.is_broadcast() || a.is_multicast() || first >= 240 {
        Some("not unicast")
    } else {
        None
    }
}

fn forbidden_v6(a: Ipv6Addr) -> Option<&'static str> {
    // IPv4 addresses carried inside IPv6 are judged as what they carry.
    if let Some(v4) = a.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let segments = a.segments();
    if segments[..6] == [0, 0, 0, 0, 0, 0] && !a.is_unspecified() && !a.is_loopback() {
        // IPv4-compatible ::a.b.c.d (deprecated, but still routable by some stacks).
        return forbidden_v4(Ipv4Addr::from(
            (u32::from(segments[6]) << 16) | u32::from(segments[7]),
        ));
    }
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
        // NAT64: 64:ff9b::a.b.c.d reaches a.b.c.d.
        return forbidden_v4(Ipv4Addr::from(
            (u32::from(segments[6]) << 16) | u32::from(segments[7]),
        ));
    }
    if segments[0] == 0x2002 {
        // 6to4: 2002:AABB:CCDD:: tunnels to AA.BB.CC.DD.
        return forbidden_v4(Ipv4Addr::from(
            (u32::from(segments[1]) << 16) | u32::from(segments[2]),
        ));
    }
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() {
        Some("unspecified")
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        Some("private (unique local)")
    } else if a.is_multicast() {
        Some("not unicast")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(address: &str) -> Option<&'static str> {
        forbidden_reason(address.parse().unwrap())
    }

    #[test]
    fn ipv4_internal_ranges_are_refused() {
        for (address, reason) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.0.0.7", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("0.0.0.0", "this-network"),
            ("100.64.0.1", "shared address space (carrier-grade NAT)"),
            ("224.0.0.1", "not unicast"),
            ("255.255.255.255", "not unicast"),
        ] {
            assert_eq!(check(address), Some(reason), "{address}");
        }
    }

    #[test]
    fn ipv4_public_addresses_are_allowed() {
        for address in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "1.1.1.1",
        ] {
            assert_eq!(check(address), None, "{address}");
        }
    }

    #[test]
    fn ipv6_internal_ranges_are_refused() {
        for (address, reason) in [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private (unique local)"),
            ("fc12:3456::1", "private (unique local)"),
            ("ff02::1", "not unicast"),
        ] {
            assert_eq!(check(address), Some(reason), "{address}");
        }
        assert_eq!(check("2001:4860:4860::8888"), None);
    }

    #[test]
    fn ipv4_inside_ipv6_is_judged_as_ipv4() {
        assert_eq!(check("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(check("::ffff:169.254.169.254"), Some("link-local"));
        assert_eq!(check("::ffff:10.1.2.3"), Some("private"));
        assert_eq!(check("::ffff:8.8.8.8"), None);
        assert_eq!(check("::127.0.0.1"), Some("loopback"));
        assert_eq!(check("64:ff9b::a9fe:a9fe"), Some("link-local"));
        assert_eq!(check("2002:c0a8:0101::1"), Some("private"));
        assert_eq!(check("2002:0808:0808::1"), None);
    }
}
