//! Server-wide state: the configuration, open sessions (for reinstatement
//! and TSIH allocation) and the answers the login machine asks for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chap::LoginBackoff;

use tokio::sync::Notify;

use iscsi_proto::login::{status, Authenticator, LoginContext, SessionKey, TargetInfo};

use super::pending::{Caps, PendingLogins};
use super::ServerConfig;
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
    pub cfg: ServerConfig,
    sessions: Mutex<HashMap<SessionId, Open>>,
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
    pub fn new(cfg: ServerConfig, caps: Caps) -> Registry {
        Registry {
            pending: Arc::new(PendingLogins::new(caps)),
            access: RwLock::new(Arc::new(cfg.access.clone())),
            backoff: Mutex::new(LoginBackoff::new(cfg.backoff.clone())),
            cfg,
            sessions: Mutex::new(HashMap::new()),
            next_tsih: Mutex::new(1),
            next_nexus: AtomicU64::new(1),
        }
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

    fn reachable(&self, target: usize, tpgt: u16) -> bool {
        self.cfg
            .targets
            .get(target)
            .is_some_and(|t| t.portals.as_ref().is_none_or(|p| p.contains(&tpgt)))
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
        self.cfg
            .targets
            .iter()
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
        let index = self
            .reg
            .cfg
            .targets
            .iter()
            .position(|t| t.iqn.eq_ignore_ascii_case(name))?;
        if !self.reg.reachable(index, tpgt) {
            return None;
        }
        Some(TargetInfo {
            index,
            alias: self.reg.cfg.targets[index].alias.clone(),
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
                    .cfg
                    .targets
                    .get(i)
                    .map(|t| t.iqn.as_str())
                    .ok_or(status::NOT_FOUND)?,
            ),
        };
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
