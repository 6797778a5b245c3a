//! The volumes the exports serve: each array holds a `volume::Pool` (its
//! mapping table on the array itself, allocation in full stripes). At
//! start the head opens each array's pool, formatting it only when the
//! array holds no table at all (a new array: one this start created is
//! known to read zeroes, so its volumes are not zeroed), creates the configured
//! volumes it does not hold yet and grows those configured larger; a
//! volume is never shrunk or deleted here.

use std::sync::Arc;

use blockdev::{BlockDevice, SharedDevice};
use tracing::{info, warn};
use volume::{Pool, Volume};

use crate::config::VolumeConfig;
use crate::startup::ArrayUp;

/// Why the volumes could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The array's volume table is damaged or foreign, or a volume could
    /// not be created or grown (no space): see the message; fix the config
    /// or the array.
    #[error("array {array:?}: {source}")]
    Pool {
        /// The array.
        array: String,
        /// What the volume layer refused.
        source: volume::VolumeError,
    },
}

/// The volume pools of the arrays, one per array.
#[derive(Debug)]
pub struct Volumes {
    pools: Vec<(String, Pool)>,
}

impl Volumes {
    /// Opens (formatting a new array's) the pool of every array in `up`
    /// and brings its volumes to what `configured` asks.
    pub async fn open(up: &[ArrayUp], configured: &[VolumeConfig]) -> Result<Volumes, VolumeError> {
        let mut pools = Vec::new();
        for a in up {
            let err = |source| VolumeError::Pool {
                array: a.name.clone(),
                source,
            };
            let dev: SharedDevice = Arc::new(a.array.clone());
            let pool = match Pool::open(dev.clone()).await {
                Ok(p) => p,
                Err(volume::VolumeError::Unformatted) => {
                    let l = a.array.layout().await;
                    let stripe = u64::from(l.members - 1) * u64::from(l.chunk_blocks);
                    info!(array = %a.name, unit_blocks = stripe, new_array = a.created, "no volume table: formatting the array's volume table");
                    if a.created {
                        // Just created, nothing written: it reads zeroes.
                        Pool::format_zeroed(dev, stripe).await.map_err(err)?
                    } else {
                        Pool::format(dev, stripe, false).await.map_err(err)?
                    }
                }
                Err(e) => return Err(err(e)),
            };
            // A backup snapshot does not outlive the head that took it.
            if !a.array.read_only() {
                let stale = pool.drop_stale_reserves().await.map_err(err)?;
                if stale > 0 {
                    info!(array = %a.name, reserves = stale, "deleted the snapshot reserves of backups a stop cut short");
                }
            }
            let bs = u64::from(a.array.geometry().block_size);
            for v in configured.iter().filter(|v| v.array == a.name) {
                match pool.info(&v.name) {
                    Ok(info) => {
                        let have = info.size_blocks * bs;
                        match v.size {
                            Some(want) if want > have => {
                                info!(volume = %v.name, from = have, to = want, "growing the volume to its configured size");
                                pool.grow(&v.name, want).await.map_err(err)?;
                            }
                            Some(want) if want < have => warn!(
                                volume = %v.name, configured = want, size = have,
                                "the volume is larger than configured; volumes never shrink"
                            ),
                            _ => {}
                        }
                    }
                    Err(volume::VolumeError::NotFound(_)) => {
                        let size = match v.size {
                            Some(s) => s,
                            None => pool.space().largest_free_blocks * bs,
                        };
                        let info = pool.create(&v.name, size).await.map_err(err)?;
                        info!(volume = %v.name, array = %a.name, blocks = info.size_blocks, identity = %info.identity, "volume created");
                    }
                    Err(e) => return Err(err(e)),
                }
            }
            pools.push((a.name.clone(), pool));
        }
        Ok(Volumes { pools })
    }

    /// Each array's pool, by array name (for the control API's volume
    /// operations and status).
    pub fn pools(&self) -> Vec<(String, Pool)> {
        self.pools.clone()
    }

    /// Volume `v`, opened (a handle that keeps it from deletion).
    pub fn device(&self, v: &VolumeConfig) -> Result<Arc<Volume>, VolumeError> {
        let (_, pool) = self
            .pools
            .iter()
            .find(|(a, _)| *a == v.array)
            .expect("every configured array is up");
        pool.open_volume(&v.name)
            .map_err(|source| VolumeError::Pool {
                array: v.array.clone(),
                source,
            })
    }
}
