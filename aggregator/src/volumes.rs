//! What an export serves of an array. Until volumes are carved from arrays
//! (the `volume` crate), a volume is its array whole: one volume per array,
//! its size the array's. The swap to carved volumes happens here alone.

use std::sync::Arc;

use blockdev::{BlockDevice, SharedDevice};

use crate::config::VolumeConfig;
use crate::startup::ArrayUp;

/// Why a volume cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The config asks for what whole-array volumes cannot give: fix it.
    #[error("volume {volume:?}: {message}")]
    Unsupported {
        /// The volume.
        volume: String,
        /// Why.
        message: String,
    },
}

/// The device of volume `v` of the arrays `up`, and the volumes of its
/// array in the config `all` (one per array for now).
pub fn open(
    v: &VolumeConfig,
    all: &[VolumeConfig],
    up: &[ArrayUp],
) -> Result<SharedDevice, VolumeError> {
    let bad = |message: String| VolumeError::Unsupported {
        volume: v.name.clone(),
        message,
    };
    if all.iter().filter(|o| o.array == v.array).count() > 1 {
        return Err(bad(format!(
            "array {:?} has several volumes; a volume is its array whole until volumes are carved",
            v.array
        )));
    }
    let a = up
        .iter()
        .find(|a| a.name == v.array)
        .ok_or_else(|| bad(format!("array {:?} is not up", v.array)))?;
    let g = a.array.geometry();
    let capacity = g.num_blocks * u64::from(g.block_size);
    if let Some(size) = v.size {
        if size != capacity {
            return Err(bad(format!(
                "size {size} bytes: a volume is its array whole ({capacity} bytes) until volumes are carved; leave size out"
            )));
        }
    }
    Ok(Arc::new(a.array.clone()))
}
