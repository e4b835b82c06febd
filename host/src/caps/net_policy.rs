//! Which network addresses a connector's HTTP requests may connect to.
//!
//! The HTTP gate (`http.rs`) first checks the request's *name*: scheme, host
//! and port must be the connector's configured origin. A name is not an
//! address, though: DNS can send an allowed name anywhere (a rebinding
//! attack, a poisoned resolver, a typo'd `/etc/hosts`). So the host resolves
//! the allowed name itself, before anything is sent, and checks every address
//! it gets:
//!
//! - a **loopback origin** (`localhost`, `127.0.0.1`, `::1`: local simulators
//!   and tests) must resolve to loopback addresses only;
//! - any **other origin** must resolve to public (globally routable) unicast
//!   addresses only: loopback, private (10/8, 172.16/12, 192.168/16,
//!   fc00::/7), shared (100.64/10), link-local (169.254/16, fe80::/10: the
//!   cloud metadata service lives at 169.254.169.254), unspecified,
//!   multicast, broadcast, documentation and reserved ranges are refused.
//!
//! One forbidden address refuses the request, even when others are fine: a
//! name that resolves to a mix is not trusted. The refusal reaches the
//! component as `destination-ip-prohibited`.
//!
//! Plain `http` (loopback only, see `config::parse_host_url`) then connects
//! to the checked address itself (the request's URI is pinned to it; the
//! `Host` header keeps the name), so a second resolution cannot differ.
//! `https` connects by name, so that TLS verifies the certificate for that
//! name: an address that appeared between the check and the connection
//! would have to present a valid certificate for the API's name before it
//! could see a request (and the credential in it).
//!
//! `DPHOST_RESOLVE` (`name=ip[,name=ip...]`, like curl's `--resolve`)
//! overrides the resolver for the names it lists: for tests and diagnostics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Environment variable that maps names to addresses, bypassing DNS.
pub const RESOLVE_ENV: &str = "DPHOST_RESOLVE";

/// Why an address may not be reached from a sandbox.
pub fn refusal(addr: IpAddr, loopback_origin: bool) -> Option<&'static str> {
    let addr = canonical(addr);
    if loopback_origin {
        return (!addr.is_loopback()).then_some(
            "the connector's origin is a loopback host, but this address is not loopback",
        );
    }
    match addr {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn refusal_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    if a.is_loopback() {
        Some("loopback (this machine)")
    } else if a.is_link_local() {
        Some("link-local (169.254.0.0/16, where cloud metadata services live)")
    } else if a.is_private() {
        Some("private network (RFC 1918)")
    } else if a.is_unspecified() || o[0] == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (100.64.0.0/10)")
    } else if a.is_multicast() {
        Some("multicast")
    } else if a.is_broadcast() || o[0] >= 240 {
        Some("reserved or broadcast (240.0.0.0/4)")
    } else if a.is_documentation() {
        Some("documentation range")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking range (198.18.0.0/15)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments (192.0.0.0/24)")
    } else {
        None
    }
}

fn refusal_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if a.is_loopback() {
        Some("loopback (this machine)")
    } else if a.is_unspecified() {
        Some("unspecified (::)")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local (fe80::/10)")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique local (fc00::/7)")
    } else if a.is_multicast() {
        Some("multicast")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("documentation range (2001:db8::/32)")
    } else if s[0] == 0x0064 && s[1] == 0xff9b {
        // NAT64 can reach any IPv4 address, private ones included.
        Some("NAT64 (64:ff9b::/96)")
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        Some("IPv4-compatible (deprecated)")
    } else {
        None
    }
}

/// Overrides from `DPHOST_RESOLVE` for `host`, if any.
fn overrides(host: &str) -> Option<Vec<IpAddr>> {
    let spec = std::env::var(RESOLVE_ENV).ok()?;
    let addrs: Vec<IpAddr> = spec
        .split(',')
        .filter_map(|item| item.trim().split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case(host))
        .filter_map(|(_, ip)| {
            ip.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
        .collect();
    (!addrs.is_empty()).then_some(addrs)
}

/// The addresses `host` stands for: itself if it is an IP literal, else
/// what `DPHOST_RESOLVE` or the system resolver says.
pub async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Some(ips) = overrides(bare) {
        return Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect());
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port)).await?.collect();
    addrs.dedup();
    Ok(addrs)
}

/// Resolves `host` and checks every address. Ok: the addresses, all
/// permitted. Err: an operator-readable reason.
pub async fn check(
    host: &str,
    port: u16,
    loopback_origin: bool,
) -> Result<Vec<SocketAddr>, String> {
    let addrs = resolve(host, port)
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    for addr in &addrs {
        if let Some(why) = refusal(addr.ip(), loopback_origin) {
            return Err(format!(
                "{host} resolves to {}, which a sandbox may not reach: {why}",
                addr.ip()
            ));
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn public_origins_reach_public_addresses_only() {
        for ok in ["8.8.8.8", "52.1.2.3", "2606:4700::1111"] {
            assert_eq!(refusal(ip(ok), false), None, "{ok}");
        }
        for bad in [
            "169.254.169.254",
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(refusal(ip(bad), false).is_some(), "{bad}");
        }
        assert!(refusal(ip("169.254.169.254"), false)
            .unwrap()
            .contains("metadata"));
    }

    #[test]
    fn loopback_origins_reach_loopback_only() {
        assert_eq!(refusal(ip("127.0.0.1"), true), None);
        assert_eq!(refusal(ip("::1"), true), None);
        assert_eq!(refusal(ip("::ffff:127.0.0.1"), true), None);
        for bad in ["169.254.169.254", "10.0.0.1", "8.8.8.8", "fe80::1"] {
            assert!(refusal(ip(bad), true).is_some(), "{bad}");
        }
    }

    #[tokio::test]
    async fn literals_resolve_to_themselves_and_names_are_checked() {
        assert_eq!(
            check("127.0.0.1", 8080, true).await.unwrap(),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            check("[::1]", 443, true).await.unwrap(),
            vec!["[::1]:443".parse().unwrap()]
        );
        let err = check("169.254.169.254", 80, false).await.unwrap_err();
        assert!(err.contains("link-local"), "{err}");
        let err = check("127.0.0.1", 80, false).await.unwrap_err();
        assert!(err.contains("loopback"), "{err}");
    }
}
