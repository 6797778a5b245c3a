//! Reaching the ISUs' disks: for a member (an ISU's target and LUN), a
//! login on every portal of the ISU (CHAP from the ISU's secrets file), one
//! [`IscsiDevice`] per portal, and a [`MultipathDevice`] of [`IscsiPath`]s
//! over them. Each session fails fast ([`FailoverConfig::multipath`]) and
//! keeps logging in again while its portal is down: multipath, not the
//! session, decides when I/O gives up, and RAID above decides when a member
//! has failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chap::{AlgorithmList, Credentials, ResponderConfig, SecretsStore};
use initiator_iscsi::{
    Auth, FailoverConfig, IscsiDevice, IscsiPath, LoginConfig, PipelineConfig, PipelinedSession,
    ReinstateConfig,
};
use multipath::{MultipathDevice, Path};
use tracing::{debug, info};

use crate::config::{HeadConfig, MemberRef};

/// A lost connection is replaced for as long as it takes, every 500 ms.
const REINSTATE: ReinstateConfig = ReinstateConfig {
    attempts: u32::MAX,
    delay: Duration::from_millis(500),
};

/// How long I/O to a member waits while none of its paths is usable
/// before multipath reports the path down: short, since RAID above retries
/// a member's path-down errors until its own `member_timeout` and decides
/// when the member has failed.
const NO_PATH_BOUND: Duration = Duration::from_secs(1);

/// Why a member could not be reached, or the ISUs' secrets not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// An ISU's secrets file is unreadable or malformed: fix it.
    #[error("isu {isu:?}: secrets: {source}")]
    Secrets {
        /// The ISU.
        isu: String,
        /// Why.
        source: chap::ChapError,
    },
    /// No portal of the ISU gave a path to the LUN (yet): wait and try
    /// again; each portal's reason is listed.
    #[error("{member}: no path ({})", .reasons.join("; "))]
    Unreachable {
        /// The member.
        member: String,
        /// `portal: reason`, one per portal.
        reasons: Vec<String>,
    },
    /// The portals reach different disks (or geometries): fix the ISU.
    #[error("{member}: {source}")]
    Paths {
        /// The member.
        member: String,
        /// What multipath refused.
        source: multipath::MultipathError,
    },
}

/// The ISUs as the head reaches them: their portals and credentials.
#[derive(Debug)]
pub struct Isus {
    initiator: String,
    portals: HashMap<String, Vec<SocketAddr>>,
    horizons: HashMap<String, Duration>,
    secrets: HashMap<String, SecretsStore>,
}

/// A member reached: its device and which portals gave a path.
#[derive(Debug, Clone)]
pub struct Reached {
    /// The disk, over every path found.
    pub device: Arc<MultipathDevice>,
    /// The portals of its paths.
    pub portals: Vec<SocketAddr>,
}

impl Isus {
    /// The ISUs of `cfg`, their secrets files read.
    pub fn new(cfg: &HeadConfig) -> Result<Isus, ReachError> {
        let mut secrets = HashMap::new();
        for i in &cfg.isus {
            if let Some(p) = &i.secrets {
                let store = SecretsStore::load(p, cfg.strict_secrets).map_err(|source| {
                    ReachError::Secrets {
                        isu: i.name.clone(),
                        source,
                    }
                })?;
                secrets.insert(i.name.clone(), store);
            }
        }
        Ok(Isus {
            initiator: cfg.initiator.clone(),
            portals: cfg
                .isus
                .iter()
                .map(|i| (i.name.clone(), i.portals.clone()))
                .collect(),
            horizons: cfg
                .isus
                .iter()
                .map(|i| (i.name.clone(), i.session_horizon))
                .collect(),
            secrets,
        })
    }

    /// How the head authenticates to `target` of `isu`: CHAP as the first
    /// user of the target's entry in the ISU's secrets file (mutual when the
    /// entry has a `mutual` credential), else no authentication.
    fn auth(&self, isu: &str, target: &str) -> Auth {
        let Some(set) = self
            .secrets
            .get(isu)
            .and_then(|s| s.target(target, &self.initiator))
        else {
            return Auth::None;
        };
        let Some(user) = set.user_names().next().map(str::to_string) else {
            return Auth::None;
        };
        let Some(secret) = set.initiator_secret(&user) else {
            return Auth::None;
        };
        Auth::Chap(ResponderConfig {
            algorithms: AlgorithmList::default(),
            credential: chap::Credential::new(user, secret),
            mutual: set.target_credential(),
        })
    }

    /// Logs in to `m` on every portal of its ISU and opens the LUN on each;
    /// a multipath device over the paths that opened.
    pub async fn open(&self, m: &MemberRef) -> Result<Reached, ReachError> {
        let portals = self.portals.get(&m.isu).cloned().unwrap_or_default();
        let auth = self.auth(&m.isu, &m.target);
        let mut paths: Vec<Arc<dyn Path>> = Vec::new();
        let mut reached = Vec::new();
        let mut reasons = Vec::new();
        for addr in portals {
            let mut login = LoginConfig::new(&self.initiator, Some(&m.target));
            // Random qualifier ISID (RFC 7143 10.12.5): sessions side by
            // side never reinstate one another.
            let r: [u8; 5] = rand::random();
            login.isid = [0x80, r[0], r[1], r[2], r[3], r[4]];
            login.auth = auth.clone();
            let session = match PipelinedSession::connect_failover(
                addr,
                login,
                PipelineConfig::default(),
                REINSTATE,
                FailoverConfig {
                    session_horizon: self
                        .horizons
                        .get(&m.isu)
                        .copied()
                        .unwrap_or(initiator_iscsi::DEFAULT_SESSION_HORIZON),
                    ..FailoverConfig::multipath()
                },
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    debug!(member = %m, portal = %addr, error = %e, "no session");
                    reasons.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            match IscsiDevice::open(session, m.lun).await {
                Ok(d) => {
                    paths.push(Arc::new(IscsiPath::new(d)));
                    reached.push(addr);
                }
                Err(e) => reasons.push(format!("{addr}: LUN {}: {e}", m.lun)),
            }
        }
        if paths.is_empty() {
            return Err(ReachError::Unreachable {
                member: m.to_string(),
                reasons,
            });
        }
        for r in &reasons {
            info!(member = %m, "a path is missing: {r}");
        }
        let config = multipath::Config {
            no_path_bound: NO_PATH_BOUND,
            ..multipath::Config::default()
        };
        let device = MultipathDevice::new(paths, config).map_err(|source| ReachError::Paths {
            member: m.to_string(),
            source,
        })?;
        Ok(Reached {
            device: Arc::new(device),
            portals: reached,
        })
    }
}
