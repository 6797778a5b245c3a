//! What the head's tasks share: following a RAID operation the monitor
//! drives (a rebuild or resync) to its end, reporting its progress.

use std::time::Duration;

use control::{ControlError, TaskHandle};
use raid::{MemberStatus, RaidArray};

/// How often a task looks at the array it follows.
pub const EVERY: Duration = Duration::from_millis(250);

/// Follows the rebuild of `slot` to its end, reporting its progress.
pub async fn rebuild(array: &RaidArray, slot: u32, h: &TaskHandle) -> Result<(), ControlError> {
    loop {
        let st = array.states();
        match st.members[slot as usize].status {
            MemberStatus::Active => return Ok(()),
            MemberStatus::Rebuilding { .. } => {
                if let Some(r) = st.rebuild.filter(|r| r.slot == slot) {
                    h.progress(r.done_rows as f64 / r.total_rows.max(1) as f64);
                }
            }
            ref other => {
                return Err(ControlError::Conflict(format!(
                    "slot {slot} stopped resyncing: {other:?}"
                )))
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}
