//! Server-wide state: the configuration, the exported targets, open
//! sessions (for reinstatement, target removal and TSIH allocation) and the
//! answers the login machine asks for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chap::LoginBackoff;

use tokio::sync::Notify;

use iscsi_proto::login::{status, Authenticator, LoginContext, SessionKey, TargetInfo};

use super::pending::{Caps, PendingLogins};
use super::targets::Targets;
use super::{ServerConfig, ServerError};
use crate::access::Access;
use crate::discovery::{DiscoveryTarget, PortalAddress};

/// Initiator name, ISID and target index: what identifies a session for reinstatement.
type SessionId = (String, [u8; 6], Option<usize>);

struct Open {
    tsih: u16,
    kill: Arc<Notify>,
}

/// Shared server state.
pub(super) struct Registry {
    /// The configuration (its `targets` moved to [`Registry::targets`]).
    pub cfg: ServerConfig,
    /// The targets exported now.
    pub targets: Targets,
    sessions: Mutex<HashMap<SessionId, Open>>,
    /// Notified whenever a session leaves `sessions`.
    detached: Notify,
    next_tsih: Mutex<u16>,
    next_nexus: AtomicU64,
    /// The access policy for new logins; replaced on reload.
    access: RwLock<Arc<Access>>,
    /// Failed logins per source, shared by every connection.
    pub backoff: Mutex<LoginBackoff>,
    /// Connections not logged in yet, capped.
    pub pending: Arc<PendingLogins>,
}

impl Registry {
    pub fn new(mut cfg: ServerConfig, caps: Caps) -> Result<Registry, ServerError> {
        let targets = Targets::new(std::mem::take(&mut cfg.targets))?;
        Ok(Registry {
            pending: Arc::new(PendingLogins::new(caps)),
            access: RwLock::new(Arc::new(cfg.access.clone())),
            backoff: Mutex::new(LoginBackoff::new(cfg.backoff.clone())),
            cfg,
            targets,
            sessions: Mutex::new(HashMap::new()),
            detached: Notify::new(),
            next_tsih: Mutex::new(1),
            next_nexus: AtomicU64::new(1),
        })
    }

    /// The access policy in force for new logins.
    pub fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the access policy; sessions already logged in are not affected.
    pub fn set_access(&self, access: Access) {
        *self.access.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(access);
    }

    pub fn nexus_id(&self) -> u64 {
        self.next_nexus.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers an admitted session's kill switch (after [`LoginContext::admit`]).
    pub fn attach(&self, key: &SessionKey, tsih: u16, kill: Arc<Notify>) {
        if key.target.is_none() {
            return;
        }
        let k = (key.initiator.clone(), key.isid, key.target);
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = s.insert(k, Open { tsih, kill }) {
            if old.tsih != tsih {
                old.kill.notify_one();
            }
        }
    }

    /// Forgets a session when its connection ends.
    pub fn detach(&self, key: &SessionKey, tsih: u16) {
        let k = (key.initiator.clone(), key.isid, key.target);
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if s.get(&k).is_some_and(|o| o.tsih == tsih) {
            s.remove(&k);
        }
        drop(s);
        self.detached.notify_waiters();
    }

    /// Ends every session of target `id` (it was removed); returns how many.
    pub fn end_sessions_of(&self, id: usize) -> usize {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for ((_, _, target), open) in s.iter() {
            if *target == Some(id) {
                open.kill.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Waits until no session of target `id` is left, each having ended
    /// its commands.
    pub async fn sessions_gone(&self, id: usize) {
        loop {
            let detached = self.detached.notified();
            tokio::pin!(detached);
            detached.as_mut().enable();
            let left = {
                let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                s.keys().any(|(_, _, target)| *target == Some(id))
            };
            if !left {
                return;
            }
            detached.await;
        }
    }

    /// Every target `initiator` at `peer` may log in to, with the portals it
    /// may use to reach it.
    pub fn discovery(
        &self,
        local: SocketAddr,
        initiator: &str,
        peer: IpAddr,
    ) -> Vec<DiscoveryTarget> {
        let access = self.access();
        self.targets
            .snapshot()
            .iter()
            .map(|e| &e.cfg)
            .filter(|t| access.may_discover(&t.iqn, initiator, peer))
            .map(|t| DiscoveryTarget {
                name: t.iqn.clone(),
                portals: self
                    .cfg
                    .portals
                    .iter()
                    .filter(|p| t.portals.as_ref().is_none_or(|g| g.contains(&p.tpgt)))
                    .filter(|p| access.portal_admits(p.tpgt, peer))
                    .map(|p| match &p.advertise {
                        Some(a) => PortalAddress {
                            address: a.clone(),
                            tpgt: p.tpgt,
                        },
                        None if p.listen.ip().is_unspecified() => PortalAddress::from_socket(
                            SocketAddr::new(local.ip(), p.listen.port()),
                            p.tpgt,
                        ),
                        None => PortalAddress::from_socket(p.listen, p.tpgt),
                    })
                    .collect(),
            })
            .filter(|t| !t.portals.is_empty())
            .collect()
    }
}

/// The login context of one connection.
pub(super) struct ConnContext<'a> {
    pub reg: &'a Registry,
    /// The policy taken when the connection's login began.
    pub access: Arc<Access>,
    pub peer: IpAddr,
    pub tpgt: u16,
}

impl LoginContext for ConnContext<'_> {
    fn target(&self, name: &str, tpgt: u16) -> Option<TargetInfo> {
        let t = self.reg.targets.by_name(name)?;
        if !t.cfg.portals.as_ref().is_none_or(|p| p.contains(&tpgt)) {
            return None;
        }
        Some(TargetInfo {
            index: t.id,
            alias: t.cfg.alias,
        })
    }

    fn authenticator(
        &self,
        initiator: &str,
        target: Option<usize>,
    ) -> Result<Box<dyn Authenticator>, (u8, u8)> {
        let iqn = match target {
            None => None,
            Some(i) => Some(
                self.reg
                    .targets
                    .by_id(i)
                    .map(|t| t.cfg.iqn)
                    .ok_or(status::NOT_FOUND)?,
            ),
        };
        let iqn = iqn.as_deref();
        let target = iqn.unwrap_or("(discovery)");
        match self.access.authorize(iqn, initiator, self.peer, self.tpgt) {
            Ok(auth) => {
                if let Some(reason) = self.access.denial(iqn, initiator, self.peer, self.tpgt) {
                    tracing::info!(%initiator, target, %reason, "login not authorized; CHAP runs and fails (0201), as for any stranger");
                }
                Ok(auth)
            }
            Err(reason) => {
                tracing::info!(%initiator, target, %reason, "login not authorized");
                Err(status::AUTHORIZATION_FAILURE)
            }
        }
    }

    fn admit(&self, key: &SessionKey, tsih: u16, _cid: u16) -> Result<u16, (u8, u8)> {
        let s = self.reg.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if tsih != 0 {
            // One connection per session (MaxConnections=1): a second
            // connection to a live session is refused.
            let exists = s.iter().any(|((i, isid, _), o)| {
                o.tsih == tsih && *i == key.initiator && *isid == key.isid
            });
            return Err(if exists {
                status::TOO_MANY_CONNECTIONS
            } else {
                status::SESSION_DOES_NOT_EXIST
            });
        }
        drop(s);
        let mut n = self.reg.next_tsih.lock().unwrap_or_else(|e| e.into_inner());
        let t = *n;
        *n = n.checked_add(1).unwrap_or(1);
        if *n == 0 {
            *n = 1;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::FutureExt;
    use iscsi_proto::login::{LoginContext, SessionKey};
    use tokio::sync::Notify;

    use super::super::targets::tests::target;
    use super::super::ServerConfig;
    use super::{Caps, ConnContext, Registry};

    #[tokio::test]
    async fn a_removed_target_ends_its_sessions_only_and_takes_no_login() {
        let cfg = ServerConfig {
            targets: vec![target("iqn.2026-01.t:a"), target("iqn.2026-01.t:b")],
            ..ServerConfig::default()
        };
        let caps = Caps {
            total: 8,
            per_source: 8,
        };
        let reg = Arc::new(Registry::new(cfg, caps).expect("registry"));
        let id = |n: &str| reg.targets.by_name(n).expect("target").id;
        let (a, b) = (id("iqn.2026-01.t:a"), id("iqn.2026-01.t:b"));
        let key = |target| SessionKey {
            initiator: "iqn.2026-01.t:init".into(),
            isid: [0x80, 0, 0, 0, 0, target as u8],
            target: Some(target),
        };
        let (kill_a, kill_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        reg.attach(&key(a), 1, kill_a.clone());
        reg.attach(&key(b), 2, kill_b.clone());

        assert!(reg.targets.remove("iqn.2026-01.t:a").is_some());
        assert_eq!(reg.end_sessions_of(a), 1);
        kill_a.notified().await;
        assert!(
            kill_b.notified().now_or_never().is_none(),
            "b's session stays"
        );
        let ctx = ConnContext {
            reg: &reg,
            access: reg.access(),
            peer: "127.0.0.1".parse().expect("ip"),
            tpgt: 1,
        };
        assert!(ctx.target("iqn.2026-01.t:a", 1).is_none());
        assert!(ctx.target("iqn.2026-01.t:b", 1).is_some());

        // The removal is over once the session has detached.
        let r2 = reg.clone();
        let mut gone = tokio::spawn(async move { r2.sessions_gone(a).await });
        tokio::task::yield_now().await;
        assert!(!gone.is_finished());
        reg.detach(&key(a), 1);
        (&mut gone).await.expect("gone");
        assert!(reg.sessions_gone(b).now_or_never().is_none());
    }
}
