//! The appliance's TCP portals: picking free ones for a new appliance,
//! checking that the configured ones can be listened on before anything
//! starts, and where to connect to reach one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;

use aggregator::portal::PortalSpec;

use super::configs::SECOND_LOOPBACK;
use super::error::UpError;
use super::layout::ISUS;

/// Ports for the ISUs: the first ones above the head's highest port that
/// are free on 127.0.0.1 and the second loopback address (3261, 3262 and
/// 3263 for a head on 3260, below the range the kernel hands out to
/// outgoing connections).
pub fn pick_isu_ports(head: &[PortalSpec]) -> Result<[u16; ISUS], String> {
    let second: IpAddr = SECOND_LOOPBACK.parse().expect("an address");
    let mut ports = [0u16; ISUS];
    let mut next = head.iter().map(|p| p.port).max().unwrap_or(3260);
    for slot in &mut ports {
        *slot = loop {
            next = next
                .checked_add(1)
                .ok_or("no free port above the head's for the ISUs")?;
            if head.iter().any(|p| p.port == next) {
                continue;
            }
            let free = |ip: IpAddr| TcpListener::bind(SocketAddr::new(ip, next)).is_ok();
            if free(IpAddr::V4(Ipv4Addr::LOCALHOST)) && free(second) {
                break next;
            }
        };
    }
    Ok(ports)
}

/// The addresses `spec` binds (a host name resolved).
fn bind_addrs(spec: &PortalSpec, config: &Path) -> Result<Vec<SocketAddr>, UpError> {
    spec.resolve()
        .map(|b| b.into_iter().map(|b| b.listen).collect())
        .map_err(|message| UpError::Portal {
            config: config.to_path_buf(),
            message,
        })
}

/// Checks that every portal of `specs` (named in `config`) can be listened
/// on now (bound for a moment): a port in use fails here, before any daemon
/// starts; its error says `what` the portal is and how to `fix` it.
pub fn check_free(
    specs: &[PortalSpec],
    what: &str,
    config: &Path,
    fix: &str,
) -> Result<(), UpError> {
    for spec in specs {
        for addr in bind_addrs(spec, config)? {
            TcpListener::bind(addr).map_err(|source| UpError::PortInUse {
                addr,
                what: what.to_string(),
                fix: fix.to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Where to connect to reach the portal `spec` from this host: its address,
/// or the loopback address of its family for a wildcard.
pub fn connect_addrs(spec: &PortalSpec, config: &Path) -> Result<Vec<SocketAddr>, UpError> {
    Ok(bind_addrs(spec, config)?
        .into_iter()
        .map(|a| match a.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), a.port())
            }
            _ => a,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isu_ports_skip_taken_ones() {
        // A port taken on 127.0.0.1 is skipped; the head's are never used.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = taken.local_addr().unwrap().port();
        let head = [PortalSpec::parse(&format!("127.0.0.1:{}", p - 1)).unwrap()];
        let ports = pick_isu_ports(&head).unwrap();
        assert!(!ports.contains(&p), "{ports:?} holds the taken {p}");
        assert!(!ports.contains(&(p - 1)));
        assert!(ports.windows(2).all(|w| w[0] < w[1]), "{ports:?}");
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = taken.local_addr().unwrap();
        let spec = PortalSpec::parse(&a.to_string()).unwrap();
        let e = check_free(
            &[spec],
            "the head's portal",
            Path::new("head.toml"),
            "use --port",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&a.to_string()) && e.contains("the head's portal"),
            "{e}"
        );
    }

    #[test]
    fn wildcards_are_reached_on_loopback() {
        let spec = PortalSpec::parse("0.0.0.0:3260").unwrap();
        assert_eq!(
            connect_addrs(&spec, Path::new("x")).unwrap(),
            ["127.0.0.1:3260".parse::<SocketAddr>().unwrap()]
        );
    }
}
