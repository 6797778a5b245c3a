//! SendTargets (RFC 7143 §6.4, appendix C): which targets an initiator may
//! reach and through which portals, as `TargetName`/`TargetAddress` pairs.

use std::net::SocketAddr;

use iscsi_proto::text::TextList;

/// One portal a target is reachable on, as SendTargets shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalAddress {
    /// `host:port`, `a.b.c.d:port` or `[v6]:port`.
    pub address: String,
    /// Target portal group tag.
    pub tpgt: u16,
}

impl PortalAddress {
    /// The address of a socket in TargetAddress form (IPv6 in brackets).
    pub fn from_socket(addr: SocketAddr, tpgt: u16) -> PortalAddress {
        let address = match addr {
            SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(v4) => format!("{}:{}", v4, a.port()),
                None => format!("[{}]:{}", a.ip(), a.port()),
            },
        };
        PortalAddress { address, tpgt }
    }

    /// The TargetAddress value: `address,tpgt`.
    pub fn value(&self) -> String {
        format!("{},{}", self.address, self.tpgt)
    }
}

/// A target and its portals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryTarget {
    /// Target IQN.
    pub name: String,
    /// Portals it is reachable on.
    pub portals: Vec<PortalAddress>,
}

/// Answers `SendTargets=<value>`: `All` lists every target (discovery
/// sessions only), an empty value the session's own target (normal
/// sessions), a target name that target if it exists.
pub fn send_targets(
    value: &str,
    targets: &[DiscoveryTarget],
    discovery: bool,
    own: Option<&str>,
) -> TextList {
    let mut out = TextList::default();
    let pick: Vec<&DiscoveryTarget> = match value {
        "All" if discovery => targets.iter().collect(),
        "All" => targets
            .iter()
            .filter(|t| Some(t.name.as_str()) == own)
            .collect(),
        "" => targets
            .iter()
            .filter(|t| !discovery && Some(t.name.as_str()) == own)
            .collect(),
        name => targets
            .iter()
            .filter(|t| t.name == name && (discovery || Some(name) == own))
            .collect(),
    };
    for t in pick {
        out.push("TargetName", t.name.clone());
        for p in &t.portals {
            out.push("TargetAddress", p.value());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<DiscoveryTarget> {
        vec![
            DiscoveryTarget {
                name: "iqn.a".into(),
                portals: vec![
                    PortalAddress::from_socket("127.0.0.1:3260".parse().unwrap(), 1),
                    PortalAddress::from_socket("[::1]:3260".parse().unwrap(), 1),
                    PortalAddress {
                        address: "isu1.example:3261".into(),
                        tpgt: 2,
                    },
                ],
            },
            DiscoveryTarget {
                name: "iqn.b".into(),
                portals: vec![PortalAddress::from_socket(
                    "10.0.0.1:3260".parse().unwrap(),
                    1,
                )],
            },
        ]
    }

    #[test]
    fn all_lists_every_portal_of_every_target() {
        let t = send_targets("All", &targets(), true, None);
        let enc = String::from_utf8(t.encode()).unwrap();
        assert_eq!(
            enc,
            "TargetName=iqn.a\0TargetAddress=127.0.0.1:3260,1\0TargetAddress=[::1]:3260,1\0TargetAddress=isu1.example:3261,2\0\
             TargetName=iqn.b\0TargetAddress=10.0.0.1:3260,1\0"
        );
    }

    #[test]
    fn normal_sessions_see_only_their_target() {
        let t = send_targets("", &targets(), false, Some("iqn.b"));
        assert_eq!(t.0.len(), 2);
        assert_eq!(t.get("TargetName"), Some("iqn.b"));
        assert!(send_targets("iqn.a", &targets(), false, Some("iqn.b")).is_empty());
        assert_eq!(send_targets("iqn.a", &targets(), true, None).0.len(), 4);
        assert!(send_targets("iqn.none", &targets(), true, None).is_empty());
    }

    #[test]
    fn v4_mapped_addresses_print_as_v4() {
        let p = PortalAddress::from_socket("[::ffff:10.1.2.3]:3260".parse().unwrap(), 3);
        assert_eq!(p.value(), "10.1.2.3:3260,3");
    }
}
