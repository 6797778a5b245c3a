//! Access control for logins (sans-I/O): who may log in to which target,
//! from where, and how they authenticate.
//!
//! An [`Access`] holds the policy of the whole server: the authentication
//! method of discovery sessions and of each target (`None`, or CHAP, which
//! then refuses `AuthMethod=None`), initiator IQN allow-lists per target,
//! source-address ([`Cidr`]) allow-lists per target and per portal group,
//! and the CHAP credentials ([`chap::SecretsStore`]). The server keeps it
//! behind a lock so a reload replaces it for new logins while established
//! sessions go on untouched.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use chap::{AuthenticatorConfig, CredentialSet, SecretsStore, Step};

use crate::login::{status, AuthStep, Authenticator, NoAuth};
use crate::text::TextList;

/// An address prefix such as `10.0.0.0/8`, `192.0.2.7` (a /32) or `fd00::/8`.
/// IPv4-mapped IPv6 peers match IPv4 prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether `ip` lies in this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDRESS/LENGTH` (the `ipnet` syntax), or a bare address (a host
    /// prefix). The address must be the network's: no bits set beyond the
    /// prefix.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let net = match (s.parse::<IpNet>(), s.parse::<IpAddr>()) {
            (Ok(net), _) => net,
            (Err(_), Ok(addr)) => IpNet::from(addr),
            (Err(_), Err(_)) => return Err(diagnose(s)),
        };
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has bits set beyond the /{} prefix (did you mean {}?)",
                net.prefix_len(),
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }
}

/// Why `s` is neither a prefix nor an address.
fn diagnose(s: &str) -> String {
    let not_an_address = || format!("{s:?} is not an address or prefix (10.0.0.0/8, fd00::/8)");
    let Some((a, _)) = s.split_once('/') else {
        return not_an_address();
    };
    match a.parse::<IpAddr>() {
        Ok(addr) => format!(
            "{s:?}: the prefix length must be 0..={}",
            if addr.is_ipv4() { 32 } else { 128 }
        ),
        Err(_) => not_an_address(),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a session authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// No authentication (`AuthMethod=None`).
    #[default]
    None,
    /// CHAP required: `AuthMethod=None` is refused with 0201.
    Chap,
}

/// The policy of one target.
#[derive(Debug, Clone, Default)]
pub struct TargetAccess {
    /// Authentication method.
    pub auth: AuthMethod,
    /// Initiator names allowed to log in (compared case-insensitively);
    /// `None`: any initiator.
    pub initiators: Option<Vec<String>>,
    /// Source addresses allowed to log in; `None`: any.
    pub sources: Option<Vec<Cidr>>,
}

impl TargetAccess {
    fn admits(&self, initiator: &str, ip: IpAddr) -> bool {
        self.initiators
            .as_ref()
            .is_none_or(|l| l.iter().any(|i| i.eq_ignore_ascii_case(initiator)))
            && self
                .sources
                .as_ref()
                .is_none_or(|l| l.iter().any(|c| c.contains(ip)))
    }
}

/// The access policy of the whole server.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Authentication of discovery sessions.
    pub discovery: AuthMethod,
    /// Per target, keyed by target name (any case); a target not listed is
    /// open to everyone without authentication.
    pub targets: HashMap<String, TargetAccess>,
    /// Source-address allow-lists per portal group tag; a group not listed
    /// accepts every source.
    pub portal_sources: HashMap<u16, Vec<Cidr>>,
    /// CHAP credentials.
    pub secrets: SecretsStore,
    /// CHAP algorithms allowed (in preference order) and challenge length.
    pub chap: AuthenticatorConfig,
}

impl Access {
    fn target(&self, iqn: &str) -> Option<&TargetAccess> {
        self.targets.get(iqn).or_else(|| {
            self.targets
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(iqn))
                .map(|(_, v)| v)
        })
    }

    /// Whether a connection from `ip` is accepted on portal group `tpgt`.
    pub fn portal_admits(&self, tpgt: u16, ip: IpAddr) -> bool {
        self.portal_sources
            .get(&tpgt)
            .is_none_or(|l| l.iter().any(|c| c.contains(ip)))
    }

    /// Authorizes a login by `initiator` from `ip` on `tpgt` to `target`
    /// (`None`: discovery) and returns the authenticator to run, or the
    /// Login Response status to fail with (0202 authorization failure).
    pub fn authorize(
        &self,
        target: Option<&str>,
        initiator: &str,
        ip: IpAddr,
        tpgt: u16,
    ) -> Result<Box<dyn Authenticator>, (u8, u8)> {
        if !self.portal_admits(tpgt, ip) {
            return Err(status::AUTHORIZATION_FAILURE);
        }
        let (method, creds) = match target {
            None => (self.discovery, self.secrets.discovery(initiator)),
            Some(t) => {
                let policy = self.target(t).cloned().unwrap_or_default();
                if !policy.admits(initiator, ip) {
                    return Err(status::AUTHORIZATION_FAILURE);
                }
                (policy.auth, self.secrets.target(t, initiator))
            }
        };
        Ok(match method {
            AuthMethod::None => Box::new(NoAuth),
            AuthMethod::Chap => Box::new(ChapAuth {
                inner: chap::Authenticator::new(self.chap.clone(), creds.unwrap_or_default()),
            }),
        })
    }

    /// Whether discovery should show `target` to `initiator` at `ip`: the
    /// initiator passes the target's ACLs and, for a CHAP target, has
    /// credentials for it.
    pub fn may_discover(&self, target: &str, initiator: &str, ip: IpAddr) -> bool {
        let policy = self.target(target).cloned().unwrap_or_default();
        policy.admits(initiator, ip)
            && (policy.auth == AuthMethod::None
                || self
                    .secrets
                    .target(target, initiator)
                    .is_some_and(|c| c.user_names().next().is_some()))
    }
}

/// `AuthMethod=CHAP` with [`chap::Authenticator`].
struct ChapAuth {
    inner: chap::Authenticator<CredentialSet>,
}

impl Authenticator for ChapAuth {
    fn methods(&self) -> Vec<&'static str> {
        vec!["CHAP"]
    }

    fn step(&mut self, _method: &str, keys: &TextList, reply: &mut TextList) -> AuthStep {
        if !chap::has_chap_keys(keys.0.iter()) {
            // The request that only agreed on AuthMethod=CHAP.
            return AuthStep::Continue;
        }
        match self.inner.step(keys.0.iter()) {
            Ok(Step::Continue(k)) => {
                for (key, v) in k.iter() {
                    reply.push(key, v);
                }
                AuthStep::Continue
            }
            Ok(Step::Done { keys: k, peer }) => {
                for (key, v) in k.iter() {
                    reply.push(key, v);
                }
                tracing::info!(user = peer.as_deref().unwrap_or(""), "CHAP authenticated");
                AuthStep::Done
            }
            Err(e) => {
                tracing::info!(error = %e, "CHAP failed");
                AuthStep::Failed(e.login_status())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let one: Cidr = "127.0.0.2".parse().unwrap();
        assert!(one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let host6: Cidr = "fd00::7".parse().unwrap();
        assert_eq!(host6.to_string(), "fd00::7/128");
        assert!(host6.contains("fd00::7".parse().unwrap()));
        assert!(!host6.contains("fd00::8".parse().unwrap()));
        assert_eq!(one.to_string(), "127.0.0.2/32");
        assert_eq!(c.to_string(), "10.1.0.0/16");
        let err = |s: &str| s.parse::<Cidr>().unwrap_err();
        assert_eq!(
            err("10.1.0.0/33"),
            "\"10.1.0.0/33\": the prefix length must be 0..=32"
        );
        assert_eq!(
            err("fd00::/129"),
            "\"fd00::/129\": the prefix length must be 0..=128"
        );
        assert_eq!(
            err("10.1.0.0/x"),
            "\"10.1.0.0/x\": the prefix length must be 0..=32"
        );
        assert_eq!(
            err("10.1.0.1/16"),
            "\"10.1.0.1/16\" has bits set beyond the /16 prefix (did you mean 10.1.0.0/16?)"
        );
        for bad in ["host/8", "host", "", "10.1.0/8", "/8"] {
            assert_eq!(
                err(bad),
                format!("{bad:?} is not an address or prefix (10.0.0.0/8, fd00::/8)")
            );
        }
    }

    fn store() -> SecretsStore {
        SecretsStore::from_toml_str(
            r#"
            [target."iqn.2026-01.t:a"]
            [[target."iqn.2026-01.t:a".chap]]
            user = "alice"
            secret = "alice-secret-16b"
            initiators = ["iqn.2026-01.i:alice"]
            "#,
        )
        .unwrap()
    }

    /// A login context over an [`Access`] with one target `iqn.2026-01.t:a`.
    struct Ctx(Access);

    impl crate::login::LoginContext for Ctx {
        fn target(&self, name: &str, _tpgt: u16) -> Option<crate::login::TargetInfo> {
            (name == "iqn.2026-01.t:a").then_some(crate::login::TargetInfo {
                index: 0,
                alias: None,
            })
        }
        fn authenticator(
            &self,
            initiator: &str,
            target: Option<usize>,
        ) -> Result<Box<dyn Authenticator>, (u8, u8)> {
            let t = target.map(|_| "iqn.2026-01.t:a");
            self.0
                .authorize(t, initiator, "127.0.0.1".parse().unwrap(), 1)
        }
        fn admit(&self, _: &crate::login::SessionKey, _: u16, _: u16) -> Result<u16, (u8, u8)> {
            Ok(1)
        }
    }

    /// Runs a login as alice with `secret` (None: AuthMethod=None), the
    /// first request asking to transit at once as libiscsi does. Returns the
    /// final status and whether Full Feature Phase was reached.
    fn login(secret: Option<&str>) -> ((u8, u8), bool) {
        use crate::login::{tests::req, Login, LoginOutcome};
        use crate::negotiate::Limits;
        use crate::pdu::Stage;
        let mut a = Access {
            secrets: store(),
            ..Access::default()
        };
        a.targets.insert(
            "iqn.2026-01.t:a".into(),
            TargetAccess {
                auth: AuthMethod::Chap,
                ..TargetAccess::default()
            },
        );
        let ctx = Ctx(a);
        let mut l = Login::new(1, Limits::default());
        let mut keys = TextList::default();
        keys.push("InitiatorName", "iqn.2026-01.i:alice");
        keys.push("TargetName", "iqn.2026-01.t:a");
        keys.push(
            "AuthMethod",
            if secret.is_some() {
                "CHAP,None"
            } else {
                "None"
            },
        );
        let mut responder = secret.map(|s| {
            chap::Responder::new(chap::ResponderConfig {
                algorithms: chap::AlgorithmList::default(),
                credential: chap::Credential::new("alice", s),
                mutual: None,
            })
            .unwrap()
        });
        for _ in 0..6 {
            let r = l.handle(
                &req(Stage::Security, Stage::Operational, true),
                &keys.encode(),
                &ctx,
            );
            let st = (r.bhs.status_class, r.bhs.status_detail);
            match r.outcome {
                LoginOutcome::Failed => return (st, false),
                LoginOutcome::FullFeature(_) => return (st, true),
                LoginOutcome::Continue if r.bhs.transit => return (st, true),
                LoginOutcome::Continue => {}
            }
            let got = TextList::parse(&r.data).unwrap();
            let Some(resp) = responder.as_mut() else {
                return (st, false);
            };
            let next = if got.get("CHAP_C").is_some() {
                resp.step(got.0.iter()).unwrap().keys().clone()
            } else {
                resp.start().unwrap()
            };
            keys = TextList::default();
            for (k, v) in next.iter() {
                keys.push(k, v);
            }
        }
        panic!("login did not finish");
    }

    #[test]
    fn chap_login_through_the_login_state_machine() {
        assert_eq!(login(Some("alice-secret-16b")), ((0, 0), true));
        assert_eq!(
            login(Some("not-alice-secret")),
            (status::AUTH_FAILURE, false)
        );
        assert_eq!(login(None), (status::AUTH_FAILURE, false));
    }

    #[test]
    fn acls_and_discovery_visibility() {
        let mut a = Access {
            secrets: store(),
            ..Access::default()
        };
        a.targets.insert(
            "iqn.2026-01.t:a".into(),
            TargetAccess {
                auth: AuthMethod::Chap,
                initiators: Some(vec![
                    "IQN.2026-01.I:alice".into(),
                    "iqn.2026-01.i:bob".into(),
                ]),
                sources: Some(vec!["127.0.0.0/8".parse().unwrap()]),
            },
        );
        a.portal_sources
            .insert(2, vec!["192.0.2.0/24".parse().unwrap()]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "198.51.100.1".parse().unwrap();
        let t = Some("iqn.2026-01.t:a");
        assert_eq!(
            a.authorize(t, "iqn.2026-01.i:alice", lo, 1)
                .unwrap()
                .methods(),
            vec!["CHAP"]
        );
        assert_eq!(
            a.authorize(t, "iqn.2026-01.i:eve", lo, 1).err(),
            Some(status::AUTHORIZATION_FAILURE)
        );
        assert_eq!(
            a.authorize(t, "iqn.2026-01.i:alice", far, 1).err(),
            Some(status::AUTHORIZATION_FAILURE)
        );
        assert_eq!(
            a.authorize(None, "iqn.2026-01.i:alice", lo, 2).err(),
            Some(status::AUTHORIZATION_FAILURE)
        );
        // Unlisted targets and discovery default to AuthMethod=None.
        assert_eq!(
            a.authorize(Some("iqn.2026-01.t:open"), "iqn.x", far, 1)
                .unwrap()
                .methods(),
            vec!["None"]
        );
        assert!(a.may_discover("iqn.2026-01.t:a", "iqn.2026-01.i:alice", lo));
        // Bob is on the ACL but has no credential: nothing he could log in to.
        assert!(!a.may_discover("iqn.2026-01.t:a", "iqn.2026-01.i:bob", lo));
        assert!(!a.may_discover("iqn.2026-01.t:a", "iqn.2026-01.i:eve", lo));
        assert!(!a.may_discover("iqn.2026-01.t:a", "iqn.2026-01.i:alice", far));
        assert!(a.may_discover("iqn.2026-01.t:open", "iqn.x", far));
        // Discovery with CHAP required offers CHAP only.
        a.discovery = AuthMethod::Chap;
        assert_eq!(
            a.authorize(None, "iqn.x", lo, 1).unwrap().methods(),
            vec!["CHAP"]
        );
    }
}
