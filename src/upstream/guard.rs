//! The SSRF guard: which addresses and hosts a fetch may reach. Loopback, private, link-local,
//! CGNAT, multicast, unspecified, documentation and IPv4-mapped/embedded addresses are refused
//! unless `upstream.allow_private`; host names are checked on the addresses they resolve to
//! (reqwest connects only to the addresses this resolver returns, so there is no rebinding
//! window); IP literals, which never reach a resolver, are checked before the request and on
//! every redirect hop; `allow_hosts` / `deny_hosts` globs on every hop. [`Lookup`] is the seam
//! tests answer names through, without DNS.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::HostGlob;

/// A guard refusal, carried through reqwest's error chain so it can be told apart from I/O errors.
#[derive(Debug)]
pub(super) struct Blocked(pub(super) String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Blocked {}

/// The resolver found no address for a host: found in the error's source chain, it makes the
/// fetch [`FetchError::Unreachable`].
#[derive(Debug)]
pub(super) struct DoesNotResolve(pub(super) String);

impl std::fmt::Display for DoesNotResolve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for DoesNotResolve {}

/// Address and host policy, shared by the resolver, the redirect policy and literal checks.
pub(super) struct Policy {
    pub(super) allow_private: bool,
    pub(super) allow_hosts: Vec<HostGlob>,
    pub(super) deny_hosts: Vec<HostGlob>,
}

impl Policy {
    /// Checks a URL's scheme and host (and, for IP literals, the address).
    pub(super) fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("scheme {:?} is not http or https", url.scheme()));
        }
        let host = url.host().ok_or("URL has no host")?;
        let name = match &host {
            url::Host::Domain(d) => d.to_ascii_lowercase(),
            url::Host::Ipv4(a) => a.to_string(),
            url::Host::Ipv6(a) => a.to_string(),
        };
        if self.deny_hosts.iter().any(|g| g.matches(&name)) {
            return Err(format!("host {name} is in upstream.deny_hosts"));
        }
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|g| g.matches(&name)) {
            return Err(format!("host {name} is not in upstream.allow_hosts"));
        }
        let ip = match host {
            url::Host::Ipv4(a) => IpAddr::V4(a),
            url::Host::Ipv6(a) => IpAddr::V6(a),
            url::Host::Domain(_) => return Ok(()),
        };
        self.check_ip(ip)
    }

    pub(super) fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(format!(
                "address {ip} is not public (set upstream.allow_private to allow)"
            ))
        }
    }
}

/// True for globally routable unicast addresses: everything but loopback, private, link-local,
/// CGNAT, benchmarking, documentation, multicast, broadcast, reserved and unspecified ranges, and
/// IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4), which are judged by it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_documentation()
        || o[0] == 0                                  // 0.0.0.0/8
        || (o[0] == 100 && (o[1] & 0xC0) == 64)       // 100.64.0.0/10 CGNAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)    // 192.0.0.0/24 protocol assignments
        || (o[0] == 198 && (o[1] & 0xFE) == 18)       // 198.18.0.0/15 benchmarking
        || o[0] >= 240) // 240.0.0.0/4 reserved
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = a.segments();
    // IPv4-compatible ::a.b.c.d (deprecated) and NAT64 64:ff9b::/96 embed an IPv4 address.
    if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return !(a.is_unspecified() || a.is_loopback()) && is_public_v4(v4);
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo (2001::/32) tunnels to an obfuscated IPv4 address: never a plain public origin.
        return false;
    }
    if s[5] == 0x5efe && (s[4] == 0 || s[4] == 0x0200) {
        // ISATAP interface identifiers embed the IPv4 address in the last 32 bits.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    if s[0] == 0x2002 {
        // 6to4 embeds the IPv4 address in bits 16..48.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_public_v4(v4);
    }
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only 100::/64
}

/// Name resolution, the seam between the guard and the system resolver (tests give their own,
/// so "a name that resolves to a private address" is proven without DNS or traffic).
pub trait Lookup: Send + Sync {
    /// The addresses of `host`.
    fn lookup(
        &self,
        host: &str,
    ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<IpAddr>>>;
}

/// The system resolver (getaddrinfo, through tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: &str,
    ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Resolves names through a [`Lookup`], then refuses the lot if any address is not allowed.
pub(super) struct GuardedResolver {
    pub(super) policy: Arc<Policy>,
    pub(super) lookup: Arc<dyn Lookup>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        let lookup = self.lookup.lookup(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup
                .await
                .map_err(|e| {
                    Box::new(DoesNotResolve(format!("{host} does not resolve: {e}")))
                        as Box<dyn StdError + Send + Sync>
                })?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(DoesNotResolve(format!("{host} has no address")))
                    as Box<dyn StdError + Send + Sync>);
            }
            for a in &addrs {
                if let Err(why) = policy.check_ip(a.ip()) {
                    return Err(
                        Box::new(Blocked(format!("{host} resolves to {}: {why}", a.ip())))
                            as Box<dyn StdError + Send + Sync>,
                    );
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "2001:db8::1",
            "ff02::1",
            "ff0e::1",
            "fd12:3456::1",
            "100.100.100.100",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "239.255.255.250",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "fe80::5efe:10.0.0.1",                  // ISATAP, link-local prefix
            "2001:db9::5efe:192.168.1.1",           // ISATAP embedding a private address
            "2002:a00:1::",                         // 6to4 of 10.0.0.1
            "64:ff9b::a9fe:a9fe",                   // NAT64 of 169.254.169.254
            "::a00:1",                              // IPv4-compatible 10.0.0.1
            "::ffff:0:0",
        ] {
            assert!(!is_public(s.parse().unwrap()), "{s}");
        }
        for s in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::",         // 6to4 of 8.8.8.8
            "2001:db9::5efe:8.8.8.8", // ISATAP embedding a public address
        ] {
            assert!(is_public(s.parse().unwrap()), "{s}");
        }
    }
}
