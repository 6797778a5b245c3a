//! Network portals: `HOST:PORT[,TPGT]` as written in the config and on the
//! command line, and their resolution to bind addresses.
//!
//! HOST is an IPv4 address, a bracketed IPv6 address (`[::1]`) or a host
//! name. A host name is resolved to every address it has; the target binds
//! each and SendTargets advertises the name itself, so initiators see what the
//! administrator wrote. Literal addresses (including the wildcards `0.0.0.0`
//! and `[::]`) are advertised as the address the initiator connected to.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The iSCSI well-known port.
pub const DEFAULT_PORT: u16 = 3260;

/// Where a portal listens, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS (or /etc/hosts) name.
    Name(String),
}

/// One portal as configured: host, port and target portal group tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSpec {
    /// Address or name to listen on.
    pub host: Host,
    /// TCP port.
    pub port: u16,
    /// Target portal group tag (1..=65535); also the SCSI relative target port.
    pub tpgt: u16,
}

/// A portal resolved to one bind address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPortal {
    /// Address to bind.
    pub listen: SocketAddr,
    /// `host:port` that SendTargets reports, for portals given by name.
    pub advertise: Option<String>,
    /// Target portal group tag.
    pub tpgt: u16,
}

impl fmt::Display for PortalSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port)?,
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port)?,
            Host::Name(n) => write!(f, "{n}:{}", self.port)?,
        }
        write!(f, ",{}", self.tpgt)
    }
}

fn valid_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl PortalSpec {
    /// Parses `HOST[:PORT][,TPGT]` (port defaults to 3260, TPGT to 1).
    pub fn parse(s: &str) -> Result<PortalSpec, String> {
        let s = s.trim();
        let (addr, tpgt) = match s.rsplit_once(',') {
            Some((a, t)) => {
                let tpgt = t
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|&t| t != 0)
                    .ok_or_else(|| {
                        format!("{s:?}: portal group tag {t:?} is not a number in 1..=65535")
                    })?;
                (a.trim(), tpgt)
            }
            None => (s, 1),
        };
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: missing ']' after the IPv6 address"))?;
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| format!("{s:?}: {ip:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{s:?}: expected ':PORT' after the IPv6 address"))?,
                ),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else if addr.matches(':').count() > 1 {
            return Err(format!(
                "{s:?}: write IPv6 addresses in brackets, e.g. \"[::1]:3260\""
            ));
        } else {
            let (h, p) = match addr.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (addr, None),
            };
            let host = match h.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) if valid_host_name(h) => Host::Name(h.to_string()),
                Err(_) => {
                    return Err(format!(
                        "{s:?}: {h:?} is neither an IP address nor a valid host name"
                    ))
                }
            };
            (host, p)
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: port {p:?} is not a number in 0..=65535"))?,
        };
        Ok(PortalSpec { host, port, tpgt })
    }

    /// Resolves to bind addresses: a literal address gives itself, a host name
    /// every address it resolves to (each advertised as `name:port`).
    pub fn resolve(&self) -> Result<Vec<BoundPortal>, String> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![BoundPortal {
                listen: SocketAddr::new(*ip, self.port),
                advertise: None,
                tpgt: self.tpgt,
            }]),
            Host::Name(name) => {
                let mut addrs: Vec<SocketAddr> = (name.as_str(), self.port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve host name {name:?}: {e}"))?
                    .collect();
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    return Err(format!("host name {name:?} has no addresses"));
                }
                Ok(addrs
                    .into_iter()
                    .map(|listen| BoundPortal {
                        listen,
                        advertise: Some(format!("{name}:{}", self.port)),
                        tpgt: self.tpgt,
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let p = PortalSpec::parse("127.0.0.1:3261").unwrap();
        assert_eq!(p.host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!((p.port, p.tpgt), (3261, 1));
        let p = PortalSpec::parse("[::1]:3262,7").unwrap();
        assert_eq!(p.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!((p.port, p.tpgt), (3262, 7));
        assert_eq!(p.to_string(), "[::1]:3262,7");
        let p = PortalSpec::parse("isu1.example.com").unwrap();
        assert_eq!(p.host, Host::Name("isu1.example.com".into()));
        assert_eq!(p.port, 3260);
        assert_eq!(PortalSpec::parse("[::]").unwrap().port, 3260);
    }

    #[test]
    fn rejects_bad_portals() {
        for (bad, why) in [
            ("::1:3260", "brackets"),
            ("[::1", "missing ']'"),
            ("[zz]:1", "not an IPv6"),
            ("1.2.3.4:99999", "port"),
            ("1.2.3.4:3260,0", "portal group tag"),
            ("bad_host:3260", "neither"),
            ("[::1]3260", "expected ':PORT'"),
        ] {
            let e = PortalSpec::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn resolves_localhost_with_name_advertised() {
        let b = PortalSpec::parse("localhost:3260,2")
            .unwrap()
            .resolve()
            .unwrap();
        assert!(!b.is_empty());
        assert!(b.iter().all(|p| p.listen.ip().is_loopback()
            && p.advertise.as_deref() == Some("localhost:3260")
            && p.tpgt == 2));
        let b = PortalSpec::parse("[::1]:5").unwrap().resolve().unwrap();
        assert_eq!(b[0].listen, "[::1]:5".parse().unwrap());
        assert_eq!(b[0].advertise, None);
    }
}
