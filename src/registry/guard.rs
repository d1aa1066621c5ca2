//! The network guard: archway connects where pod authors' image strings
//! point, so it must not become a way into the cluster's own network.
//!
//! Every connection resolves through `GuardedResolver`, which refuses
//! loopback, link-local (cloud metadata at 169.254.169.254), private,
//! shared and unique-local addresses unless the configuration allows the
//! host or the range. IP literals, which skip the resolver, are checked the
//! same way before each request and on every redirect. Token realms and
//! redirects may go to another host only when it is trusted.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// Hosts that registries commonly send token requests and blob downloads
/// to: Docker Hub's auth and CDN, GitHub's, and the clouds' object stores.
pub const DEFAULT_TRUSTED_HOSTS: &[&str] = &[
    "auth.docker.io",
    "*.docker.io",
    "*.docker.com",
    "*.cloudflare.docker.com",
    "*.githubusercontent.com",
    "storage.googleapis.com",
    "*.storage.googleapis.com",
    "*.pkg.dev",
    "*.gcr.io",
    "*.amazonaws.com",
    "*.blob.core.windows.net",
    "*.azurecr.io",
    "*.quay.io",
    "*.k8s.io",
];

/// An address range, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What the guard lets archway connect to.
#[derive(Debug, Clone, Default)]
pub struct NetworkGuard {
    /// Registry hosts (without port) that may resolve to internal
    /// addresses: the ones the configuration names (insecure hosts,
    /// mirrors) and `allowPrivate` host entries.
    pub allowed_hosts: Vec<String>,
    /// Internal ranges that may be reached whatever the host.
    pub allowed_networks: Vec<Cidr>,
    /// Hosts a registry may send token requests and redirects to
    /// (`*.domain` globs).
    pub trusted_hosts: Vec<String>,
}

/// Why a connection was refused. Reported to the user as the reason the
/// image could not be inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl NetworkGuard {
    /// Whether `ip` may be connected to for `host`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let Some(range) = internal_range(ip) else {
            return Ok(());
        };
        let host = host_without_port(host);
        if self
            .allowed_hosts
            .iter()
            .any(|h| host_without_port(h).eq_ignore_ascii_case(host))
            || self.allowed_networks.iter().any(|n| n.contains(ip))
        {
            return Ok(());
        }
        Err(Refusal(format!(
            "{host} resolves to {ip}, a {range} address; archway does not connect there unless \
             registry.allowPrivate names the host or range"
        )))
    }

    /// Checks a host that is an IP literal (those never reach the resolver).
    pub fn check_literal(&self, host: &str) -> Result<(), Refusal> {
        match host_without_port(host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self.check(host, ip),
            Err(_) => Ok(()),
        }
    }

    /// Whether a registry on `from` may send archway (a token request or a
    /// redirect, with or without credentials) to `to`.
    /// Hosts compare with their ports: another port is another service.
    pub fn may_follow(&self, from: &str, to: &str) -> bool {
        from.eq_ignore_ascii_case(to)
            || self
                .trusted_hosts
                .iter()
                .any(|pattern| host_matches(pattern, to))
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// `*.example.com` matches any subdomain (not the apex), on any port; a
/// pattern with a port matches that port only.
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = if host_without_port(pattern) == pattern {
        host_without_port(host)
    } else {
        host
    };
    let host = host.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}

/// The kind of internal range `ip` is in, or `None` for a public address.
pub fn internal_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if is_nat64_of_internal(v6) {
                Some("NAT64 of an internal")
            } else {
                None
            }
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (CGNAT)")
    } else if a == 0 || ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

/// 64:ff9b::/96 embeds an IPv4 address; an internal one stays internal.
fn is_nat64_of_internal(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if s[..6] != [0x64, 0xff9b, 0, 0, 0, 0] {
        return false;
    }
    let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    internal_v4(v4).is_some()
}

/// The DNS resolver every registry connection goes through.
#[derive(Clone)]
pub struct GuardedResolver {
    pub guard: Arc<NetworkGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = addresses
                .into_iter()
                .filter(|addr| match guard.check(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refusal.get_or_insert(r);
                        false
                    }
                })
                .collect();
            // All or nothing would also do; dropping only the internal
            // addresses keeps a dual-homed public registry reachable.
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = match refusal {
                    Some(refusal) => Box::new(refusal),
                    None => format!("{host} has no address").into(),
                };
                return Err(error);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(internal_range(ip(internal)).is_some(), "{internal}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1",
            "64:ff9b::808:808",
        ] {
            assert_eq!(internal_range(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn allowed_hosts_and_ranges_pass() {
        let guard = NetworkGuard {
            allowed_hosts: vec!["registry.internal:5000".into()],
            allowed_networks: vec!["10.20.0.0/16".parse().unwrap()],
            trusted_hosts: vec![],
        };
        assert!(guard.check("registry.internal", ip("10.0.0.1")).is_ok());
        assert!(guard.check("other", ip("10.20.3.4")).is_ok());
        let refused = guard
            .check("evil.example", ip("169.254.169.254"))
            .unwrap_err();
        assert!(refused.0.contains("link-local"), "{refused}");
        assert!(guard.check("public.example", ip("1.1.1.1")).is_ok());
        assert!(guard.check_literal("127.0.0.1:5000").is_err());
        assert!(guard.check_literal("[::1]:5000").is_err());
        assert!(guard.check_literal("registry.example:443").is_ok());
    }

    #[test]
    fn realms_and_redirects_follow_only_to_trusted_hosts() {
        let guard = NetworkGuard {
            trusted_hosts: DEFAULT_TRUSTED_HOSTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..NetworkGuard::default()
        };
        assert!(guard.may_follow("registry-1.docker.io", "auth.docker.io"));
        assert!(guard.may_follow("ghcr.io", "GHCR.io"));
        assert!(
            !guard.may_follow("127.0.0.1:5000", "127.0.0.1:6000"),
            "another port"
        );
        let with_port = NetworkGuard {
            trusted_hosts: vec!["127.0.0.1:6000".into()],
            ..NetworkGuard::default()
        };
        assert!(with_port.may_follow("127.0.0.1:5000", "127.0.0.1:6000"));
        assert!(!with_port.may_follow("127.0.0.1:5000", "127.0.0.1:7000"));
        assert!(guard.may_follow("ghcr.io", "pkg-containers.githubusercontent.com"));
        assert!(!guard.may_follow("registry.example", "metadata.google.internal"));
        assert!(!guard.may_follow("registry.example", "evilamazonaws.com"));
        assert!(!guard.may_follow("registry.example", "amazonaws.com.evil.net"));
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "192.168.0.0/16".parse().unwrap();
        assert!(net.contains(ip("192.168.200.1")));
        assert!(!net.contains(ip("192.169.0.1")));
        let single: Cidr = "10.0.0.5".parse().unwrap();
        assert!(single.contains(ip("10.0.0.5")) && !single.contains(ip("10.0.0.6")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("127.0.0.1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "nope", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
