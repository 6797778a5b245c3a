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

use blockdev::DeviceIdentity;
use chap::{AlgorithmList, Credentials, ResponderConfig, SecretsStore};
use initiator_iscsi::disk_commands as cdb;
use initiator_iscsi::{
    Auth, Command, FailoverConfig, IscsiDevice, IscsiPath, LoginConfig, PipelineConfig,
    PipelinedSession, ReinstateConfig, Session,
};
use multipath::{MultipathDevice, Path};
use scsi_disk::identification::identity_from_vpd;
use tracing::{debug, info};

use crate::config::{HeadConfig, Member, MemberRef};

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

/// How long the logouts from one disk's sessions may take at the stop.
pub const LOGOUT_BOUND: Duration = Duration::from_secs(2);

/// How long the survey waits for one ISU's answers (discovery, and the
/// identity and superblock of each of its LUNs).
pub const SURVEY_BOUND: Duration = Duration::from_secs(5);

/// A disk seen by [`Isus::survey`].
#[derive(Debug, Clone)]
pub struct Seen {
    /// Where it is.
    pub at: MemberRef,
    /// Its identity (VPD pages 80h and 83h).
    pub identity: DeviceIdentity,
    /// What its first blocks hold.
    pub metadata: Metadata,
}

/// What a disk seen by [`Isus::survey`] holds where a RAID superblock
/// would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metadata {
    /// Read, and no valid superblock there: a blank disk.
    Blank,
    /// Its newest valid superblock.
    Superblock(raid::superblock::Superblock),
    /// Not read (why): neither blank nor a member as far as the head knows.
    Unreadable(String),
}

impl Seen {
    /// Its newest valid superblock, if it was read and carries one.
    pub fn superblock(&self) -> Option<&raid::superblock::Superblock> {
        match &self.metadata {
            Metadata::Superblock(sb) => Some(sb),
            _ => None,
        }
    }
}

/// Runs a command built by `cmd` on `s`, again after a unit attention
/// (the first command after a login reports one), and wants GOOD status.
async fn ask(s: &PipelinedSession, cmd: impl Fn() -> Command) -> Result<Vec<u8>, String> {
    for _ in 0..4 {
        let r = s.command(cmd()).await.map_err(|e| e.to_string())?;
        if r.is_good() {
            return Ok(r.data);
        }
        if !r.is_unit_attention() {
            return Err(format!(
                "status {:#04x}, sense {:02x?}",
                r.status,
                &r.sense[..]
            ));
        }
    }
    Err("unit attention after unit attention".into())
}

/// The newest valid superblock of `lun` on `s` (READ CAPACITY for the
/// block size, then both copies), `None` on a disk that carries none.
async fn read_superblock(
    s: &PipelinedSession,
    lun: u64,
) -> Result<Option<raid::superblock::Superblock>, String> {
    let cap = ask(s, || Command::read(lun, &cdb::read_capacity16(), 32)).await?;
    let cap = cdb::parse_capacity(&cap).ok_or("READ CAPACITY: bad answer")?;
    let blocks = 2 * raid::superblock::Superblock::blocks(cap.block_size) as u32;
    let len = blocks * cap.block_size;
    let data = ask(s, || Command::read(lun, &cdb::read16(0, blocks), len)).await?;
    if data.len() < len as usize {
        return Err(format!(
            "READ of the superblocks: {} of {len} bytes",
            data.len()
        ));
    }
    Ok(raid::superblock::newest_in(&data, cap.block_size).ok())
}

/// What [`Isus::survey`] saw of the ISUs.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// Every LUN of the ISUs that answered.
    pub seen: Vec<Seen>,
    /// `isu: why` for each ISU that did not.
    pub unreachable: Vec<String>,
}

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
    /// Its paths, one session each, for the logout at the stop.
    pub paths: Vec<Arc<IscsiPath>>,
}

impl Reached {
    /// Logs out of every session to the member (after the array above it
    /// was closed): the ISU sees orderly logouts, not dropped connections.
    /// Bounded by [`LOGOUT_BOUND`] (the sessions' logouts run side by
    /// side): a session whose ISU does not answer (gone, or still being
    /// logged in again) is dropped instead. Returns the portals whose
    /// session was not logged out cleanly.
    pub async fn log_out(&self) -> Vec<SocketAddr> {
        let deadline = tokio::time::Instant::now() + LOGOUT_BOUND;
        let mut tasks: Vec<_> = self
            .paths
            .iter()
            .map(|p| {
                let p = p.clone();
                tokio::spawn(async move { p.iscsi().session().log_out().await })
            })
            .collect();
        let mut unclean = Vec::new();
        for (t, addr) in tasks.iter_mut().zip(&self.portals) {
            match tokio::time::timeout_at(deadline, &mut *t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    debug!(portal = %addr, error = %e, "logout failed (the session is gone)")
                }
                Ok(Err(e)) => debug!(portal = %addr, error = %e, "logout task ended"),
                Err(_) => {
                    t.abort();
                    unclean.push(*addr);
                }
            }
        }
        unclean
    }
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

    /// How the head authenticates to `target` of `isu` (`None`: its
    /// discovery): CHAP as the first user of the target's (or the
    /// `[discovery]`) entry in the ISU's secrets file, mutual when the entry
    /// has a `mutual` credential; else no authentication.
    fn auth(&self, isu: &str, target: Option<&str>) -> Auth {
        let Some(set) = self.secrets.get(isu).and_then(|s| match target {
            Some(t) => s.target(t, &self.initiator),
            None => s.discovery(&self.initiator),
        }) else {
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

    /// A login of the head to `target` (`None`: discovery) of `isu`, under
    /// a random ISID of its own.
    fn login(&self, isu: &str, target: Option<&str>) -> LoginConfig {
        let mut login = LoginConfig::new(&self.initiator, target);
        // Random qualifier ISID (RFC 7143 10.12.5): sessions side by
        // side never reinstate one another.
        let r: [u8; 5] = rand::random();
        login.isid = [0x80, r[0], r[1], r[2], r[3], r[4]];
        login.auth = self.auth(isu, target);
        login
    }

    /// Reaches member `m`: a LUN given, or the LUN carrying an identity,
    /// looked for first ([`Isus::locate`]).
    pub async fn open_member(&self, m: &Member) -> Result<Reached, ReachError> {
        match m {
            Member::Lun(r) => self.open(r).await,
            Member::Identity(id) => {
                let r = self.locate(id).await?;
                info!(identity = %id, member = %r, "disk found");
                self.open(&r).await
            }
        }
    }

    /// Finds the LUN that carries `id`: SendTargets on each portal of each
    /// ISU, then, on one session per target, REPORT LUNS and the identity
    /// VPD pages (80h, 83h) of each LUN.
    pub async fn locate(&self, id: &DeviceIdentity) -> Result<MemberRef, ReachError> {
        let mut reasons = Vec::new();
        let mut isus: Vec<(&String, &Vec<SocketAddr>)> = self.portals.iter().collect();
        isus.sort();
        for (isu, portals) in isus {
            let mut probed: Vec<String> = Vec::new();
            for &addr in portals {
                let targets = match self.send_targets(isu, addr).await {
                    Ok(t) => t,
                    Err(e) => {
                        reasons.push(format!("{isu} {addr}: discovery: {e}"));
                        continue;
                    }
                };
                for t in targets {
                    if probed.contains(&t) {
                        continue;
                    }
                    match self.lun_with(isu, addr, &t, id).await {
                        Ok(Some(lun)) => {
                            return Ok(MemberRef {
                                isu: isu.clone(),
                                target: t,
                                lun,
                            })
                        }
                        Ok(None) => probed.push(t),
                        Err(e) => reasons.push(format!("{isu} {addr} {t}: {e}")),
                    }
                }
            }
        }
        reasons.insert(0, "no LUN of the ISUs carries it".into());
        Err(ReachError::Unreachable {
            member: format!("identity {id}"),
            reasons,
        })
    }

    /// Every LUN of every ISU it was given with its identity and its newest
    /// RAID superblock, if it carries one: SendTargets on one portal of
    /// each ISU, then on one session per target REPORT LUNS, the identity
    /// VPD pages, READ CAPACITY and a read of the superblock copies. An ISU
    /// that does not answer within [`SURVEY_BOUND`] is listed in
    /// [`Survey::unreachable`] with why.
    pub async fn survey(&self) -> Survey {
        let mut out = Survey::default();
        let mut isus: Vec<(&String, &Vec<SocketAddr>)> = self.portals.iter().collect();
        isus.sort();
        for (isu, portals) in isus {
            match tokio::time::timeout(SURVEY_BOUND, self.survey_isu(isu, portals)).await {
                Ok(Ok(seen)) => out.seen.extend(seen),
                Ok(Err(why)) => out.unreachable.push(format!("{isu}: {why}")),
                Err(_) => out
                    .unreachable
                    .push(format!("{isu}: no answer within {SURVEY_BOUND:?}")),
            }
        }
        out
    }

    /// The disks of `isu`, by the first of `portals` that answers.
    async fn survey_isu(&self, isu: &str, portals: &[SocketAddr]) -> Result<Vec<Seen>, String> {
        let mut reasons = Vec::new();
        for &addr in portals {
            let targets = match self.send_targets(isu, addr).await {
                Ok(t) => t,
                Err(e) => {
                    reasons.push(format!("{addr}: discovery: {e}"));
                    continue;
                }
            };
            let mut seen = Vec::new();
            let mut whole = true;
            for t in targets {
                match self.survey_target(isu, addr, &t).await {
                    Ok(s) => seen.extend(s),
                    Err(e) => {
                        reasons.push(format!("{addr} {t}: {e}"));
                        whole = false;
                        break;
                    }
                }
            }
            if whole {
                return Ok(seen);
            }
        }
        Err(if reasons.is_empty() {
            "no portal".into()
        } else {
            reasons.join("; ")
        })
    }

    /// The LUNs of `target` at `addr`: identity and superblock of each.
    async fn survey_target(
        &self,
        isu: &str,
        addr: SocketAddr,
        target: &str,
    ) -> Result<Vec<Seen>, initiator_iscsi::Error> {
        let (s, luns) = self.probe(isu, addr, target).await?;
        let mut seen = Vec::new();
        for (lun, identity) in luns {
            let metadata = match read_superblock(&s, lun).await {
                Ok(Some(sb)) => Metadata::Superblock(sb),
                Ok(None) => Metadata::Blank,
                Err(why) => Metadata::Unreadable(why),
            };
            seen.push(Seen {
                at: MemberRef {
                    isu: isu.to_string(),
                    target: target.to_string(),
                    lun,
                },
                identity,
                metadata,
            });
        }
        let _ = s.logout().await;
        Ok(seen)
    }

    /// A session of its own to `target` at `addr` (no reinstatement), and
    /// the target's LUNs (REPORT LUNS) with their identities (VPD 80h and
    /// 83h; a LUN without one is left out).
    async fn probe(
        &self,
        isu: &str,
        addr: SocketAddr,
        target: &str,
    ) -> Result<(PipelinedSession, Vec<(u64, DeviceIdentity)>), initiator_iscsi::Error> {
        let reinstate = ReinstateConfig {
            attempts: 0,
            ..ReinstateConfig::default()
        };
        let s = PipelinedSession::connect_with(
            addr,
            self.login(isu, Some(target)),
            PipelineConfig::default(),
            reinstate,
        )
        .await?;
        let report = s
            .command(Command::read(0, &cdb::report_luns(4096), 4096))
            .await?;
        let mut luns = Vec::new();
        for lun in cdb::parse_report_luns(&report.data) {
            let vpd = |page| Command::read(lun, &cdb::inquiry_vpd(page, 1024), 1024);
            let (Ok(p80), Ok(p83)) = (s.command(vpd(0x80)).await, s.command(vpd(0x83)).await)
            else {
                continue;
            };
            if let Ok(identity) = identity_from_vpd(&p80.data, &p83.data) {
                luns.push((lun, identity));
            }
        }
        Ok((s, luns))
    }

    /// The targets `isu` offers this initiator, by SendTargets on each of
    /// its portals until one answers (for the control API's `ISU` and
    /// `ISU/DISK` members).
    pub async fn targets_of(&self, isu: &str) -> Result<Vec<String>, ReachError> {
        let mut reasons = Vec::new();
        for &addr in self.portals.get(isu).into_iter().flatten() {
            match self.send_targets(isu, addr).await {
                Ok(t) => return Ok(t),
                Err(e) => reasons.push(format!("{addr}: discovery: {e}")),
            }
        }
        Err(ReachError::Unreachable {
            member: format!("isu {isu}"),
            reasons,
        })
    }

    /// The targets `addr` of `isu` offers this initiator (SendTargets=All).
    async fn send_targets(
        &self,
        isu: &str,
        addr: SocketAddr,
    ) -> Result<Vec<String>, initiator_iscsi::Error> {
        let mut s = Session::connect(addr, self.login(isu, None)).await?;
        let keys = s.send_targets("All").await?;
        let _ = s.logout().await;
        Ok(keys
            .0
            .into_iter()
            .filter(|(k, _)| k == "TargetName")
            .map(|(_, v)| v)
            .collect())
    }

    /// The LUN of `target` at `addr` whose identity is `id`, if any.
    async fn lun_with(
        &self,
        isu: &str,
        addr: SocketAddr,
        target: &str,
        id: &DeviceIdentity,
    ) -> Result<Option<u64>, initiator_iscsi::Error> {
        let (s, luns) = self.probe(isu, addr, target).await?;
        let _ = s.logout().await;
        Ok(luns.into_iter().find(|(_, i)| i == id).map(|(lun, _)| lun))
    }

    /// Logs in to `m` on every portal of its ISU and opens the LUN on each;
    /// a multipath device over the paths that opened.
    pub async fn open(&self, m: &MemberRef) -> Result<Reached, ReachError> {
        let portals = self.portals.get(&m.isu).cloned().unwrap_or_default();
        let mut paths: Vec<Arc<IscsiPath>> = Vec::new();
        let mut reached = Vec::new();
        let mut reasons = Vec::new();
        for addr in portals {
            let login = self.login(&m.isu, Some(&m.target));
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
        let device = MultipathDevice::new(
            paths.iter().map(|p| p.clone() as Arc<dyn Path>).collect(),
            config,
        )
        .map_err(|source| ReachError::Paths {
            member: m.to_string(),
            source,
        })?;
        Ok(Reached {
            device: Arc::new(device),
            portals: reached,
            paths,
        })
    }
}
