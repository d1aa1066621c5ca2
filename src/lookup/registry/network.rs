//! The network guard: archway connects where pod authors' image strings
//! point, so it must not become a way into the cluster's own network.
//!
//! Three checks, each on what the connection really uses:
//! - before a request, its URL as the client parses it (`check_url`): IP
//!   hosts in any spelling the `url` crate accepts, with their port;
//! - every name resolves through `GuardedResolver`, which refuses
//!   loopback, link-local (cloud metadata at 169.254.169.254), private,
//!   shared and unique-local addresses unless the configuration allows the
//!   host or the range;
//! - every connection, in the connector, by the peer address it reached
//!   (`ConnectionGuard`).
//!
//! Token realms and redirects may go to another host only when it is
//! trusted.

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
    /// Registry hosts that may resolve to internal addresses: the ones the
    /// configuration names (insecure hosts, mirrors) and `allowPrivate`
    /// host entries. An entry with a port (`registry.internal:5000`)
    /// allows that port only; without one, every port.
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

/// A host as the HTTP client reads it. The `url` crate (which reqwest
/// parses every request's URL with) reads `2130706433`, `0x7f.1`,
/// `0177.0.0.1` and `127.1` all as 127.0.0.1; std's `IpAddr` parser rejects
/// them. The guard must read hosts the way the connection will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, lowercased.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// `host[:port]` as written in a reference or the configuration, read with
/// the client's URL parser. `None` when it is not a host at all.
pub fn parse_authority(authority: &str) -> Option<(Host, Option<u16>)> {
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', '\\']) {
        return None;
    }
    // The parser forgets a port equal to its scheme's default; reading the
    // authority under two schemes with different defaults keeps it.
    let https = reqwest::Url::parse(&format!("https://{authority}/")).ok()?;
    let port = https.port().or_else(|| {
        reqwest::Url::parse(&format!("http://{authority}/"))
            .ok()
            .and_then(|u| u.port())
    });
    Some((host_of(&https)?, port))
}

/// The host of a parsed URL.
pub fn host_of(url: &reqwest::Url) -> Option<Host> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(Host::Ip(IpAddr::V4(v4))),
        url::Host::Ipv6(v6) => Some(Host::Ip(IpAddr::V6(v6))),
        url::Host::Domain(name) => Some(Host::Name(name.to_ascii_lowercase())),
    }
}

impl NetworkGuard {
    /// The ports an allowed-host entry grants `host`: `Some(None)` for
    /// every port, `Some(Some(ports))` for those only, `None` when no
    /// entry names the host.
    fn allowed_ports(&self, host: &Host) -> Option<Option<Vec<u16>>> {
        let mut ports = Vec::new();
        let mut named = false;
        for (entry, port) in self.allowed_hosts.iter().filter_map(|e| parse_authority(e)) {
            if entry != *host {
                continue;
            }
            named = true;
            match port {
                None => return Some(None),
                Some(port) => ports.push(port),
            }
        }
        named.then_some(Some(ports))
    }

    fn refusal(&self, target: &str, ip: IpAddr, range: &str) -> Refusal {
        // A name says what it resolved to; an address is said once.
        let what = match target.parse::<SocketAddr>() {
            Ok(_) => format!("{target} is"),
            Err(_) if target.starts_with(&ip.to_string()) => format!("{target} is"),
            Err(_) => format!("{target} resolves to {ip},"),
        };
        Refusal(format!(
            "{what} a {range} address; archway does not connect there unless \
             registry.allowPrivate names the host (and port) or range (for a \
             plain-HTTP registry such as a local one: registry.insecure, or \
             --insecure-registry HOST:PORT)"
        ))
    }

    /// Whether `ip` may be connected to for the name `host` on some port:
    /// the resolver's check, which does not know the port. The port is
    /// checked before connecting (`check_url`) and on the connection
    /// itself (`check_connected`).
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let Some(range) = internal_range(ip) else {
            return Ok(());
        };
        let named = parse_authority(host)
            .and_then(|(host, _)| self.allowed_ports(&host))
            .is_some();
        if named || self.allowed_networks.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        Err(self.refusal(host, ip, range))
    }

    /// Whether `ip` may be connected to on `port` for `host`.
    pub fn check_target(&self, host: &Host, port: u16, ip: IpAddr) -> Result<(), Refusal> {
        let Some(range) = internal_range(ip) else {
            return Ok(());
        };
        if self.allowed_networks.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        match self.allowed_ports(host) {
            Some(None) => Ok(()),
            Some(Some(ports)) if ports.contains(&port) => Ok(()),
            _ => Err(self.refusal(&format!("{host}:{port}"), ip, range)),
        }
    }

    /// Checks a URL before any connection is made to it: an IP host
    /// (however spelled) against the ranges, with its port; a name that
    /// the configuration allows on other ports only is resolved here and
    /// refused if it leads inside, so that a closed port and an open one
    /// answer alike.
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), Refusal> {
        let host = host_of(url).ok_or_else(|| Refusal(format!("{url} has no host")))?;
        let port = url.port_or_known_default().unwrap_or(443);
        match &host {
            Host::Ip(ip) => self.check_target(&host, port, *ip),
            Host::Name(name) => match self.allowed_ports(&host) {
                Some(Some(ports)) if !ports.contains(&port) => {
                    let addresses = tokio::net::lookup_host((name.as_str(), port))
                        .await
                        .map_err(|e| Refusal(format!("{name}: {e}")))?;
                    for address in addresses {
                        self.check_target(&host, port, address.ip())?;
                    }
                    Ok(())
                }
                _ => Ok(()),
            },
        }
    }

    /// Checks the address a connection actually reached, whatever path
    /// led there (resolver, literal, redirect). The request's host is not
    /// known here, so an internal peer passes only when an allowed range
    /// holds it, or an allowed entry could have named it: that IP on that
    /// port, or any allowed name on that port.
    pub fn check_connected(&self, peer: SocketAddr) -> Result<(), Refusal> {
        let ip = peer.ip().to_canonical();
        let Some(range) = internal_range(ip) else {
            return Ok(());
        };
        if self.allowed_networks.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        let entry_allows = |(host, port): (Host, Option<u16>)| {
            let host_fits = match host {
                Host::Ip(allowed) => allowed.to_canonical() == ip,
                Host::Name(_) => true,
            };
            host_fits && port.is_none_or(|p| p == peer.port())
        };
        if self
            .allowed_hosts
            .iter()
            .filter_map(|e| parse_authority(e))
            .any(entry_allows)
        {
            return Ok(());
        }
        Err(self.refusal(&peer.to_string(), ip, range))
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

/// The connector layer: every connection the registry client opens is
/// checked against the address it reached before a request is sent on it.
/// A backstop: URLs are checked before connecting (`check_url`), so a
/// refused address is never reached and a closed port cannot be told from
/// an open one; this catches any path that check missed.
#[derive(Clone)]
pub struct ConnectionGuard {
    pub guard: Arc<NetworkGuard>,
}

impl<S> tower::Layer<S> for ConnectionGuard {
    type Service = GuardedConnector<S>;
    fn layer(&self, inner: S) -> GuardedConnector<S> {
        GuardedConnector {
            inner,
            guard: self.guard.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GuardedConnector<S> {
    inner: S,
    guard: Arc<NetworkGuard>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, Request> tower::Service<Request> for GuardedConnector<S>
where
    S: tower::Service<Request, Error = BoxError>,
    S::Response: hyper_util::client::legacy::connect::Connection + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let guard = self.guard.clone();
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let connection = connecting.await?;
            use hyper_util::client::legacy::connect::Connection;
            let mut extras = axum::http::Extensions::new();
            connection.connected().get_extras(&mut extras);
            let info = extras.get::<hyper_util::client::legacy::connect::HttpInfo>();
            match info {
                Some(info) => guard.check_connected(info.remote_addr())?,
                // Every TCP connection reports its peer; one that does not
                // cannot be checked, so it is not used.
                None => return Err(Refusal("connection without a peer address".into()).into()),
            }
            Ok(connection)
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
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    fn check_now(guard: &NetworkGuard, u: &str) -> Result<(), Refusal> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(guard.check_url(&url(u)))
    }

    #[test]
    fn every_spelling_of_an_internal_address_is_refused() {
        let guard = NetworkGuard::default();
        for host in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "127.1",
            "0177.0.0.1",
            "0",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
        ] {
            let refused = check_now(&guard, &format!("https://{host}:9612/v2/")).unwrap_err();
            // One answer whatever the port: nothing is connected to.
            assert!(
                refused.0.contains("address; archway does not connect"),
                "{host}: {refused}"
            );
            let (parsed, port) = parse_authority(&format!("{host}:9612")).unwrap();
            assert!(
                matches!(parsed, Host::Ip(ip) if internal_range(ip).is_some()),
                "{host}"
            );
            assert_eq!(port, Some(9612));
        }
        assert!(check_now(&guard, "https://8.8.8.8/v2/").is_ok());
        assert!(
            check_now(&guard, "https://134744072/v2/").is_ok(),
            "8.8.8.8"
        );
    }

    #[test]
    fn an_entry_with_a_port_allows_that_port_only() {
        let guard = NetworkGuard {
            allowed_hosts: vec!["127.0.0.1:5000".into(), "localhost:5001".into()],
            ..NetworkGuard::default()
        };
        assert!(check_now(&guard, "http://127.0.0.1:5000/v2/").is_ok());
        assert!(check_now(&guard, "http://2130706433:5000/v2/").is_ok());
        assert!(check_now(&guard, "http://127.0.0.1:5001/v2/").is_err());
        assert!(check_now(&guard, "http://0x7f.1:9612/v2/").is_err());
        assert!(check_now(&guard, "https://127.0.0.1/v2/").is_err());
        // A name allowed on another port is resolved first and refused.
        assert!(check_now(&guard, "http://localhost:5001/v2/").is_ok());
        assert!(check_now(&guard, "http://localhost:9612/v2/").is_err());
        // The connection check: the peer and its port.
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(guard.check_connected(peer("127.0.0.1:5000")).is_ok());
        assert!(
            guard.check_connected(peer("127.0.0.1:5001")).is_ok(),
            "localhost:5001"
        );
        assert!(guard.check_connected(peer("127.0.0.1:9612")).is_err());
        assert!(guard.check_connected(peer("169.254.169.254:80")).is_err());
        assert!(
            guard
                .check_connected(peer("[::ffff:127.0.0.1]:9612"))
                .is_err()
        );
        assert!(guard.check_connected(peer("8.8.8.8:443")).is_ok());
        let any_port = NetworkGuard {
            allowed_hosts: vec!["0x7f000001".into()],
            ..NetworkGuard::default()
        };
        assert!(check_now(&any_port, "http://127.0.0.1:9612/v2/").is_ok());
        assert!(any_port.check_connected(peer("127.0.0.1:9612")).is_ok());
        // A port equal to the scheme's default is still a port.
        assert_eq!(
            parse_authority("registry.internal:443"),
            Some((Host::Name("registry.internal".into()), Some(443)))
        );
        assert_eq!(
            parse_authority("Registry.Internal:80"),
            Some((Host::Name("registry.internal".into()), Some(80)))
        );
        assert_eq!(parse_authority("a/b"), None);
    }

    /// Registries at IPv6 addresses (`[::1]:5000/app` in a reference)
    /// are allowed as written there, on that port only; ranges allow them
    /// whatever the port.
    #[test]
    fn ipv6_hosts_are_allowed_as_references_write_them() {
        let guard = NetworkGuard {
            allowed_hosts: vec!["[::1]:5000".into()],
            allowed_networks: vec!["fd00::/8".parse().unwrap()],
            ..NetworkGuard::default()
        };
        assert!(check_now(&guard, "http://[::1]:5000/v2/").is_ok());
        assert!(
            check_now(&guard, "http://[0:0::1]:5000/v2/").is_ok(),
            "another spelling"
        );
        assert!(check_now(&guard, "http://[::1]:5001/v2/").is_err());
        assert!(check_now(&guard, "https://[fd12::1]/v2/").is_ok());
        let refused = check_now(&guard, "https://[fe80::1]:5000/v2/").unwrap_err();
        assert!(refused.0.contains("link-local"), "{refused}");
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(guard.check_connected(peer("[::1]:5000")).is_ok());
        assert!(guard.check_connected(peer("[::1]:5001")).is_err());
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
