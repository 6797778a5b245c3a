//! What a reinstated session checks before anything held is sent again:
//! that each logical unit opened on it is still the same disk (its VPD
//! 80h/83h identity, its block size, no fewer blocks). A name can be moved
//! to another disk between two logins (a swapped ISU, a changed portal);
//! a write meant for the old disk must never reach the new one.

use std::sync::{Mutex, OnceLock};

use blockdev::DeviceIdentity;
use scsi_disk::identification::identity_from_vpd;

use crate::command::{Command, ScsiResult};
use crate::disk_commands as cdb;
use crate::session::Session;
use crate::Error;

/// How many unit attentions in a row a check command may meet (a new
/// nexus starts with some).
const UNIT_ATTENTIONS: usize = 8;

/// What a logical unit was when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Its LUN.
    pub lun: u64,
    /// Its identity (VPD 80h and 83h).
    pub identity: DeviceIdentity,
    /// Its block size.
    pub block_size: u32,
    /// Its size in blocks: it may grow, not shrink.
    pub num_blocks: u64,
}

/// The units a session checks, and why it refused to go on once a check
/// failed: shared by the session's handle and its task.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    expected: Mutex<Vec<Expected>>,
    refused: OnceLock<String>,
}

impl Admission {
    /// From now on, `e.lun` must be `e` after a reinstatement.
    pub(crate) fn expect(&self, e: Expected) {
        let mut all = self.expected.lock().expect("admission lock");
        all.retain(|x| x.lun != e.lun);
        all.push(e);
    }

    /// The units to check.
    pub(crate) fn expected(&self) -> Vec<Expected> {
        self.expected.lock().expect("admission lock").clone()
    }

    /// The session ends for good: `why`.
    pub(crate) fn refuse(&self, why: String) {
        let _ = self.refused.set(why);
    }

    /// The error every command gets once the session refused to go on.
    pub(crate) fn refused(&self) -> Option<Error> {
        self.refused.get().cloned().map(Error::IdentityChanged)
    }
}

/// Runs a check command to an answer, unit attentions taken in.
async fn run(session: &mut Session, cmd: Command) -> Result<ScsiResult, Error> {
    for _ in 0..UNIT_ATTENTIONS {
        let r = session.command(cmd.clone()).await?;
        if !r.is_unit_attention() {
            return Ok(r);
        }
    }
    Err(Error::Protocol(format!(
        "{UNIT_ATTENTIONS} unit attentions in a row"
    )))
}

/// Reads each unit of `expected` again over `session` (just reinstated)
/// and compares: [`Error::IdentityChanged`] when one is another disk now,
/// or cannot say what it is; a transport error as it came.
pub(crate) async fn verify(session: &mut Session, expected: &[Expected]) -> Result<(), Error> {
    for e in expected {
        let changed = |what: String| Error::IdentityChanged(format!("LUN {}: {what}", e.lun));
        let good = |r: ScsiResult, what: &str| match r.is_good() {
            true => Ok(r.data),
            false => Err(changed(format!("{what} failed (status {:#04x})", r.status))),
        };
        let vpd = |page| Command::read(e.lun, &cdb::inquiry_vpd(page, 1024), 1024);
        let vpd80 = good(run(session, vpd(0x80)).await?, "VPD 80h")?;
        let vpd83 = good(run(session, vpd(0x83)).await?, "VPD 83h")?;
        let identity =
            identity_from_vpd(&vpd80, &vpd83).map_err(|x| changed(format!("no identity: {x}")))?;
        if identity != e.identity {
            return Err(changed(format!("disk {identity}, not {}", e.identity)));
        }
        let cap = Command::read(e.lun, &cdb::read_capacity16(), 32);
        let data = good(run(session, cap).await?, "READ CAPACITY(16)")?;
        let c = cdb::parse_capacity(&data).ok_or_else(|| changed("no capacity".into()))?;
        if c.block_size != e.block_size || c.num_blocks < e.num_blocks {
            return Err(changed(format!(
                "{} blocks of {} bytes, not {} of {}",
                c.num_blocks, c.block_size, e.num_blocks, e.block_size
            )));
        }
    }
    Ok(())
}
