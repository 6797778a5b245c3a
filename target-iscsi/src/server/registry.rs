//! Server-wide state: the configuration, open sessions (for reinstatement
//! and TSIH allocation) and the answers the login machine asks for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::ServerConfig;
use crate::discovery::{DiscoveryTarget, PortalAddress};
use crate::login::{status, Authenticator, LoginContext, NoAuth, SessionKey, TargetInfo};

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
}

impl Registry {
    pub fn new(cfg: ServerConfig) -> Registry {
        Registry {
            cfg,
            sessions: Mutex::new(HashMap::new()),
            next_tsih: Mutex::new(1),
            next_nexus: AtomicU64::new(1),
        }
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

    /// Every target reachable from a connection on `tpgt`, with all its portals.
    pub fn discovery(&self, local: SocketAddr) -> Vec<DiscoveryTarget> {
        self.cfg
            .targets
            .iter()
            .map(|t| DiscoveryTarget {
                name: t.iqn.clone(),
                portals: self
                    .cfg
                    .portals
                    .iter()
                    .filter(|p| t.portals.as_ref().is_none_or(|g| g.contains(&p.tpgt)))
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
            .collect()
    }
}

/// The login context of one connection.
pub(super) struct ConnContext<'a> {
    pub reg: &'a Registry,
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

    fn authenticator(&self, _initiator: &str, _target: Option<usize>) -> Box<dyn Authenticator> {
        // CHAP plugs in here (per target secrets); until then AuthMethod=None.
        Box::new(NoAuth)
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
