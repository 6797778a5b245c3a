//! Whether an export of the head answers: our own initiator logs in to it,
//! runs TEST UNIT READY (until the unit attentions of a new nexus are
//! cleared) and READ CAPACITY, and logs out.

use std::net::SocketAddr;

use initiator_iscsi::disk_commands as cdb;
use initiator_iscsi::{Command, LoginConfig, PipelineConfig, PipelinedSession};

use super::configs::BASE_IQN;

/// What the probe saw of the export's LUN 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Logical blocks.
    pub blocks: u64,
    /// Bytes per block.
    pub block_size: u32,
}

impl Capacity {
    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}

/// Logs in to `target` at `portal` and checks LUN 0 is ready: its capacity,
/// or why not (not listening yet, refused, not ready).
pub async fn probe(portal: SocketAddr, target: &str) -> Result<Capacity, String> {
    let login = LoginConfig::new(&format!("{BASE_IQN}:probe"), Some(target));
    let s = PipelinedSession::connect(portal, login, PipelineConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let r = check(&s).await;
    let _ = s.logout().await;
    r
}

async fn check(s: &PipelinedSession) -> Result<Capacity, String> {
    // A new nexus starts with unit attentions (power on, ...): one each.
    let mut ready = false;
    for _ in 0..8 {
        let r = s
            .command(Command::new(0, &cdb::test_unit_ready()))
            .await
            .map_err(|e| e.to_string())?;
        if r.is_good() {
            ready = true;
            break;
        }
    }
    if !ready {
        return Err("TEST UNIT READY: not ready".into());
    }
    let r = s
        .command(Command::read(0, &cdb::read_capacity16(), 32))
        .await
        .map_err(|e| e.to_string())?;
    if !r.is_good() || r.data.len() < 12 {
        return Err(format!("READ CAPACITY: status {:#x}", r.status));
    }
    let last = u64::from_be_bytes(r.data[0..8].try_into().expect("8 bytes"));
    let block_size = u32::from_be_bytes(r.data[8..12].try_into().expect("4 bytes"));
    Ok(Capacity {
        blocks: last + 1,
        block_size,
    })
}
