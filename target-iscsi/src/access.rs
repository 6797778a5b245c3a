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

use iscsi_proto::login::{status, AuthStep, Authenticator, NoAuth};
use iscsi_proto::text::TextList;

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
    fn admits_initiator(&self, initiator: &str) -> bool {
        self.initiators
            .as_ref()
            .is_none_or(|l| l.iter().any(|i| i.eq_ignore_ascii_case(initiator)))
    }

    fn admits_source(&self, ip: IpAddr) -> bool {
        self.sources
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

    /// Why `initiator` at `ip` on `tpgt` may not log in to `target`
    /// (`None`: discovery), if it may not.
    pub fn denial(
        &self,
        target: Option<&str>,
        initiator: &str,
        ip: IpAddr,
        tpgt: u16,
    ) -> Option<Denial> {
        if !self.portal_admits(tpgt, ip) {
            return Some(Denial::Portal);
        }
        let policy = self.target(target?)?;
        if !policy.admits_source(ip) {
            Some(Denial::Source)
        } else if !policy.admits_initiator(initiator) {
            Some(Denial::Initiator)
        } else {
            None
        }
    }

    /// Authorizes a login by `initiator` from `ip` on `tpgt` to `target`
    /// (`None`: discovery) and returns the authenticator to run, or why the
    /// login is refused (answered 0202, authorization failure).
    ///
    /// Where CHAP is required, a login the ACLs refuse is not told so before
    /// it authenticates: it gets a CHAP exchange like any other and fails it
    /// with 0201, so an unauthenticated stranger cannot probe which initiator
    /// names or addresses are allowed. The exchange costs the same digest
    /// either way, and the denial is logged when it ends.
    pub fn authorize(
        &self,
        target: Option<&str>,
        initiator: &str,
        ip: IpAddr,
        tpgt: u16,
    ) -> Result<Box<dyn Authenticator>, Denial> {
        let denial = self.denial(target, initiator, ip, tpgt);
        let (method, creds) = match target {
            None => (self.discovery, self.secrets.discovery(initiator)),
            Some(t) => (
                self.target(t).map(|p| p.auth).unwrap_or_default(),
                self.secrets.target(t, initiator),
            ),
        };
        let chap = || chap::Authenticator::new(self.chap.clone(), creds.unwrap_or_default());
        match (method, denial) {
            (AuthMethod::None, None) => Ok(Box::new(NoAuth)),
            (AuthMethod::None, Some(d)) => Err(d),
            (AuthMethod::Chap, None) => Ok(Box::new(ChapAuth {
                inner: chap(),
                denial: None,
            })),
            (AuthMethod::Chap, Some(d)) => Ok(Box::new(ChapAuth {
                inner: chap(),
                denial: Some(d),
            })),
        }
    }

    /// Whether discovery should show `target` to `initiator` at `ip`.
    ///
    /// The target's and portal's `sources` must admit `ip`. For a target
    /// without CHAP the initiator must be on its `initiators`. For a CHAP
    /// target, when discovery itself requires CHAP, the initiator must be on
    /// its `initiators` and have a credential for it; when discovery is open
    /// the initiator name is unproven, so the answer does not depend on it
    /// (anything else would let a stranger probe the ACL with made-up
    /// names): the target is shown to every address its `sources` admit.
    pub fn may_discover(&self, target: &str, initiator: &str, ip: IpAddr) -> bool {
        let Some(policy) = self.target(target) else {
            return true;
        };
        if !policy.admits_source(ip) {
            return false;
        }
        match (policy.auth, self.discovery) {
            (AuthMethod::None, _) => policy.admits_initiator(initiator),
            (AuthMethod::Chap, AuthMethod::None) => true,
            (AuthMethod::Chap, AuthMethod::Chap) => {
                policy.admits_initiator(initiator)
                    && self
                        .secrets
                        .target(target, initiator)
                        .is_some_and(|c| c.user_names().next().is_some())
            }
        }
    }
}

/// Why the access policy refuses a login. Logged, never sent: the initiator
/// sees 0202, or 0201 where CHAP is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The portal group's `sources` do not admit the address.
    Portal,
    /// The target's `sources` do not admit the address.
    Source,
    /// The initiator name is not on the target's `initiators`.
    Initiator,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Denial::Portal => "source address not allowed on this portal group",
            Denial::Source => "source address not on the target's sources list",
            Denial::Initiator => "initiator not on the target's initiators list",
        })
    }
}

/// `AuthMethod=CHAP` with [`chap::Authenticator`]. With a `denial`, the
/// exchange runs all the same (same keys, same digest) but ends in a failure
/// whatever the initiator answers.
struct ChapAuth {
    inner: chap::Authenticator<CredentialSet>,
    denial: Option<Denial>,
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
        match (self.inner.step(keys.0.iter()), self.denial) {
            (Ok(Step::Continue(k)), _) => {
                for (key, v) in k.iter() {
                    reply.push(key, v);
                }
                AuthStep::Continue
            }
            (Ok(Step::Done { keys: k, peer }), None) => {
                for (key, v) in k.iter() {
                    reply.push(key, v);
                }
                tracing::info!(user = peer.as_deref().unwrap_or(""), "CHAP authenticated");
                AuthStep::Done
            }
            (Ok(Step::Done { peer, .. }), Some(denial)) => {
                // Not even a mutual CHAP answer goes back.
                tracing::info!(
                    user = peer.as_deref().unwrap_or(""),
                    reason = %denial,
                    "login not authorized (the CHAP secret was right); answered as an authentication failure"
                );
                AuthStep::Failed(status::AUTH_FAILURE)
            }
            (Err(e), None) => {
                tracing::info!(error = %e, "CHAP failed");
                AuthStep::Failed(e.login_status())
            }
            (Err(e), Some(denial)) => {
                tracing::info!(
                    error = %e,
                    reason = %denial,
                    "CHAP failed; the login was not authorized anyway"
                );
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

    /// A login context over an [`Access`] with one target `iqn.2026-01.t:a`,
    /// for a connection from an address on portal group 1.
    struct Ctx(Access, IpAddr);

    impl iscsi_proto::login::LoginContext for Ctx {
        fn target(&self, name: &str, _tpgt: u16) -> Option<iscsi_proto::login::TargetInfo> {
            (name == "iqn.2026-01.t:a").then_some(iscsi_proto::login::TargetInfo {
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
                .authorize(t, initiator, self.1, 1)
                .map_err(|_| status::AUTHORIZATION_FAILURE)
        }
        fn admit(
            &self,
            _: &iscsi_proto::login::SessionKey,
            _: u16,
            _: u16,
        ) -> Result<u16, (u8, u8)> {
            Ok(1)
        }
    }

    /// How a login ended, and the key names of every response it got.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        status: (u8, u8),
        full_feature: bool,
        replies: Vec<Vec<String>>,
    }

    /// Runs a login to `iqn.2026-01.t:a` as `initiator` from `ip`, with CHAP
    /// as `user` with `secret` (None: AuthMethod=None), the first request
    /// asking to transit at once as libiscsi does.
    fn login_as(
        access: Access,
        initiator: &str,
        ip: &str,
        user: &str,
        secret: Option<&str>,
    ) -> Outcome {
        use iscsi_proto::login::{Login, LoginOutcome};
        use iscsi_proto::negotiate::Limits;
        use iscsi_proto::pdu::{LoginRequest, Stage};
        let req = |csg, nsg, transit| LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 7,
            cid: 0,
            cmd_sn: 10,
            exp_stat_sn: 0,
        };
        let ctx = Ctx(access, ip.parse().unwrap());
        let mut l = Login::new(1, Limits::default());
        let mut keys = TextList::default();
        keys.push("InitiatorName", initiator);
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
                credential: chap::Credential::new(user, s),
                mutual: None,
            })
            .unwrap()
        });
        let mut replies = Vec::new();
        for _ in 0..6 {
            let r = l.handle(
                &req(Stage::Security, Stage::Operational, true),
                &keys.encode(),
                &ctx,
            );
            let status = (r.bhs.status_class, r.bhs.status_detail);
            let got = TextList::parse(&r.data).unwrap();
            replies.push(got.0.iter().map(|(k, _)| k.clone()).collect());
            let full_feature = match r.outcome {
                LoginOutcome::Failed => false,
                LoginOutcome::FullFeature(_) => true,
                LoginOutcome::Continue if r.bhs.transit => true,
                LoginOutcome::Continue => match responder.as_mut() {
                    None => false,
                    Some(resp) => {
                        let next = if got.get("CHAP_C").is_some() {
                            resp.step(got.0.iter()).unwrap().keys().clone()
                        } else {
                            resp.start().unwrap()
                        };
                        keys = TextList::default();
                        for (k, v) in next.iter() {
                            keys.push(k, v);
                        }
                        continue;
                    }
                },
            };
            return Outcome {
                status,
                full_feature,
                replies,
            };
        }
        panic!("login did not finish");
    }

    /// `iqn.2026-01.t:a` requiring CHAP, with alice's credential.
    fn chap_target() -> Access {
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
        a
    }

    fn login(secret: Option<&str>) -> ((u8, u8), bool) {
        let o = login_as(chap_target(), ALICE, "127.0.0.1", "alice", secret);
        (o.status, o.full_feature)
    }

    const ALICE: &str = "iqn.2026-01.i:alice";

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
    fn a_chap_target_answers_strangers_alike_whatever_the_acls_say() {
        // A credential any initiator may use, an initiator ACL of alice and
        // a source ACL of 127.0.0.0/8.
        let mut a = chap_target();
        a.secrets = SecretsStore::from_toml_str(
            r#"
            [[target."iqn.2026-01.t:a".chap]]
            user = "shared"
            secret = "shared-secret-16"
            "#,
        )
        .unwrap();
        let policy = a.targets.get_mut("iqn.2026-01.t:a").unwrap();
        policy.initiators = Some(vec![ALICE.into()]);
        policy.sources = Some(vec!["127.0.0.0/8".parse().unwrap()]);
        let run = |a: &Access, initiator: &str, ip: &str, secret: &str| {
            login_as(a.clone(), initiator, ip, "shared", Some(secret))
        };
        let allowed = run(&a, ALICE, "127.0.0.1", "shared-secret-16");
        assert_eq!((allowed.status, allowed.full_feature), ((0, 0), true));
        // Whoever does not know the secret sees the same exchange: a
        // challenge, then 0201, on the ACLs or not.
        let stranger = run(&a, ALICE, "127.0.0.1", "guessed-secret-1");
        assert_eq!(stranger.status, status::AUTH_FAILURE);
        assert_eq!(
            stranger.replies[1],
            ["CHAP_A", "CHAP_I", "CHAP_C"],
            "{stranger:?}"
        );
        for (initiator, ip) in [
            ("iqn.2026-01.i:eve", "127.0.0.1"),
            (ALICE, "192.0.2.1"),
            ("iqn.2026-01.i:eve", "::ffff:192.0.2.1"),
        ] {
            assert_eq!(
                run(&a, initiator, ip, "guessed-secret-1"),
                stranger,
                "{initiator} at {ip}"
            );
            // Even the right secret does not tell it that it was right.
            assert_eq!(
                run(&a, initiator, ip, "shared-secret-16"),
                stranger,
                "{initiator} at {ip} with the secret"
            );
        }
        // A portal group's source ACL is hidden the same way.
        a.portal_sources
            .insert(1, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(run(&a, ALICE, "127.0.0.1", "shared-secret-16"), stranger);
        // Without CHAP there is nothing to hide behind: 0202 at once.
        a.targets.get_mut("iqn.2026-01.t:a").unwrap().auth = AuthMethod::None;
        let o = login_as(a.clone(), "iqn.2026-01.i:eve", "127.0.0.1", "", None);
        assert_eq!(o.status, status::AUTHORIZATION_FAILURE);
        assert_eq!(o.replies.len(), 1);
    }

    #[test]
    fn acls_and_discovery_visibility() {
        let mut a = chap_target();
        let policy = a.targets.get_mut("iqn.2026-01.t:a").unwrap();
        policy.initiators = Some(vec![
            "IQN.2026-01.I:alice".into(),
            "iqn.2026-01.i:bob".into(),
        ]);
        policy.sources = Some(vec!["127.0.0.0/8".parse().unwrap()]);
        a.targets.insert(
            "iqn.2026-01.t:acl".into(),
            TargetAccess {
                auth: AuthMethod::None,
                initiators: Some(vec![ALICE.into()]),
                sources: None,
            },
        );
        a.portal_sources
            .insert(2, vec!["192.0.2.0/24".parse().unwrap()]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "198.51.100.1".parse().unwrap();
        let t = Some("iqn.2026-01.t:a");
        assert_eq!(a.denial(t, ALICE, lo, 1), None);
        assert_eq!(
            a.denial(t, "iqn.2026-01.i:eve", lo, 1),
            Some(Denial::Initiator)
        );
        assert_eq!(a.denial(t, ALICE, far, 1), Some(Denial::Source));
        assert_eq!(a.denial(None, ALICE, lo, 2), Some(Denial::Portal));
        assert_eq!(a.denial(None, ALICE, lo, 1), None);
        // CHAP targets run CHAP for everyone; the others refuse at once.
        for ip in [lo, far] {
            assert_eq!(
                a.authorize(t, "iqn.2026-01.i:eve", ip, 1)
                    .unwrap()
                    .methods(),
                vec!["CHAP"]
            );
        }
        let acl = Some("iqn.2026-01.t:acl");
        assert!(a.authorize(acl, ALICE, far, 1).is_ok());
        assert_eq!(
            a.authorize(acl, "iqn.2026-01.i:eve", lo, 1).err(),
            Some(Denial::Initiator)
        );
        assert_eq!(a.authorize(None, ALICE, lo, 2).err(), Some(Denial::Portal));
        // Unlisted targets and discovery default to AuthMethod=None.
        assert_eq!(
            a.authorize(Some("iqn.2026-01.t:open"), "iqn.x", far, 1)
                .unwrap()
                .methods(),
            vec!["None"]
        );
        // Open discovery: a CHAP target shows to every address its sources
        // admit, whatever the (unproven) name; a target without CHAP only
        // to the names on its ACL.
        for who in [ALICE, "iqn.2026-01.i:bob", "iqn.2026-01.i:eve"] {
            assert!(a.may_discover("iqn.2026-01.t:a", who, lo), "{who}");
            assert!(!a.may_discover("iqn.2026-01.t:a", who, far), "{who}");
        }
        assert!(a.may_discover("iqn.2026-01.t:acl", ALICE, far));
        assert!(!a.may_discover("iqn.2026-01.t:acl", "iqn.2026-01.i:eve", far));
        assert!(a.may_discover("iqn.2026-01.t:open", "iqn.x", far));
        // Discovery with CHAP required offers CHAP only, and its sessions
        // see a CHAP target only with a name on its ACL and a credential.
        a.discovery = AuthMethod::Chap;
        assert_eq!(
            a.authorize(None, "iqn.x", lo, 1).unwrap().methods(),
            vec!["CHAP"]
        );
        assert!(a.may_discover("iqn.2026-01.t:a", ALICE, lo));
        // Bob is on the ACL but has no credential: nothing he could log in to.
        assert!(!a.may_discover("iqn.2026-01.t:a", "iqn.2026-01.i:bob", lo));
        assert!(!a.may_discover("iqn.2026-01.t:a", "iqn.2026-01.i:eve", lo));
        assert!(!a.may_discover("iqn.2026-01.t:a", ALICE, far));
    }
}
