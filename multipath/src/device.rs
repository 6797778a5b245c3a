//! [`MultipathDevice`]: a [`BlockDevice`] over the paths to one disk, the
//! tokio edge around the sans-I/O [`PathSet`].

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use blockdev::{
    BlockDevice, BlockError, Bytes, DeviceIdentity, DeviceStatus, ErrorClass, Extent, Features,
    Geometry, Limits, Result, SharedDevice, StatusPublisher, WriteFlags,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checker;
use crate::config::Config;
use crate::error::MultipathError;
use crate::events::PathEvent;
use crate::fenced::FencedRanges;
use crate::health::PathState;
use crate::path::Path;
use crate::path_set::{PathReport, PathSet, Route};

/// One attempt of an I/O on a path's device.
type Attempt<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

/// What an I/O does to the medium, for ordering: an attempt of a write with
/// an unknown outcome must be fenced before the write is reported, and its
/// blocks stay held until then; a later write of any of them waits, and a
/// flush waits for every held block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Read,
    Write(Range<u64>),
    Flush,
}

/// What the I/O path and the checker share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) paths: Vec<Arc<dyn Path>>,
    pub(crate) core: Mutex<PathSet>,
    /// Bumped when a path may have become usable; I/O waiting for a path
    /// watches it.
    pub(crate) usable: watch::Sender<u64>,
    pub(crate) config: Config,
    /// Blocks of writes whose first attempts are being fenced.
    fenced: Arc<FencedRanges>,
    /// Present while some path is usable.
    status: StatusPublisher,
    /// Each path's state, in path order.
    states: watch::Sender<Vec<PathState>>,
}

/// A block device over several paths to one disk. I/O goes through the
/// best usable path (ALUA, then the selector); an attempt that fails with
/// path down or times out is retried on another path and the caller never
/// sees it; a write whose attempt had an unknown outcome is reported only
/// once that path is fenced ([`Path::fence`]); while no path is usable I/O
/// waits up to [`Config::no_path_bound`], then fails with
/// [`BlockError::PathDown`] ([`BlockError::Failed`] once every path failed
/// for good). A checker task checks every path each
/// [`Config::check_interval`] while the device lives.
///
/// Changes are published: on [`BlockDevice::status`] the device is absent
/// while no path is usable (I/O queues meanwhile, up to the bound) and
/// present again when one is; [`MultipathDevice::path_states`] carries
/// each path's state; every change is also logged (`tracing`, target
/// `multipath`).
#[derive(Debug)]
pub struct MultipathDevice {
    shared: Arc<Shared>,
    geometry: Geometry,
    identity: DeviceIdentity,
    checker: JoinHandle<()>,
}

impl MultipathDevice {
    /// A device over `paths`, which must all reach the same disk with the
    /// same geometry. Starts the checker on the current tokio runtime.
    pub fn new(
        paths: Vec<Arc<dyn Path>>,
        config: Config,
    ) -> std::result::Result<MultipathDevice, MultipathError> {
        let first = paths.first().ok_or(MultipathError::NoPaths)?.device();
        let (identity, geometry) = (first.identity().clone(), first.geometry());
        for (index, p) in paths.iter().enumerate() {
            let d = p.device();
            if d.identity() != &identity {
                return Err(MultipathError::IdentityMismatch {
                    index,
                    expected: identity,
                    found: d.identity().clone(),
                });
            }
            if d.geometry() != geometry {
                return Err(MultipathError::GeometryMismatch {
                    index,
                    expected: geometry,
                    found: d.geometry(),
                });
            }
        }
        let shared = Arc::new(Shared {
            core: Mutex::new(PathSet::new(paths.len(), &config)),
            states: watch::Sender::new(vec![PathState::Up; paths.len()]),
            paths,
            usable: watch::Sender::new(0),
            config,
            fenced: FencedRanges::new(),
            status: StatusPublisher::new(geometry),
        });
        let checker = tokio::spawn(checker::run(Arc::downgrade(&shared)));
        Ok(MultipathDevice {
            shared,
            geometry,
            identity,
            checker,
        })
    }

    /// What is known of each path now (state, ALUA state, statistics), in
    /// the order given.
    pub fn paths(&self) -> Vec<PathReport> {
        self.shared.core().report()
    }

    /// Each path's state (up, failed, marginal, dead), in the order given,
    /// as a watch channel: the latest is always there, bursts are not
    /// queued.
    pub fn path_states(&self) -> watch::Receiver<Vec<PathState>> {
        self.shared.states.subscribe()
    }

    fn first(&self) -> &SharedDevice {
        self.shared.paths[0].device()
    }

    /// Runs one I/O of `bytes` bytes: routes each attempt, retries it on
    /// another path when the class of its error allows, fences the paths
    /// where a write's outcome is unknown before reporting it, and waits
    /// while no path is usable: up to the bound from when the last path
    /// went, and at most the bound in all for this I/O.
    async fn submit<T>(
        &self,
        kind: Kind,
        bytes: u64,
        attempt: impl Fn(SharedDevice) -> Attempt<T>,
    ) -> Result<T> {
        let shared = &self.shared;
        // Blocks a fenced write may still land on, even one whose caller
        // went away, come first.
        match &kind {
            Kind::Read => {}
            Kind::Write(blocks) => shared.fenced.wait_clear(Some(blocks.clone())).await,
            Kind::Flush => shared.fenced.wait_clear(None).await,
        }
        let mut fences: Vec<JoinHandle<()>> = Vec::new();
        let mut busy = 0;
        // When this I/O first found no usable path: it waits for one at most
        // the bound in all, even if paths come and go meanwhile.
        let mut first_wait: Option<Instant> = None;
        let bound = shared.config.no_path_bound;
        let result = loop {
            let mut usable = shared.usable.subscribe();
            let at = now();
            let route = shared.update(|core| core.route(bytes, at));
            let path = match route {
                Route::Path(p) => p,
                Route::Wait { until } => {
                    let since = *first_wait.get_or_insert(at);
                    if at >= since + bound {
                        let waited = at - since;
                        break Err(MultipathError::NoPath { waited, bound }.into());
                    }
                    let until = until.min(since + bound);
                    tokio::select! {
                        _ = usable.changed() => {}
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
                    }
                    continue;
                }
                Route::Fail(e) => break Err(e.into()),
            };
            let started = now();
            let fut = attempt(shared.paths[path].device().clone());
            let r = match shared.config.io_timeout {
                Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
                    Err(BlockError::TimedOut(format!(
                        "no answer on path {path} in {t:?}"
                    )))
                }),
                None => fut.await,
            };
            let class = r.as_ref().err().map(BlockError::class);
            let end = now();
            shared.update(|core| {
                core.ended(path, bytes, end - started, class.map_or(Ok(()), Err), end)
            });
            let Some(class) = class else { break r };
            match class {
                ErrorClass::RetryElsewhere => {}
                ErrorClass::OutcomeUnknown | ErrorClass::Failed => {
                    if let Kind::Write(blocks) = &kind {
                        // The hold goes with the fence, not with this call:
                        // it outlives a caller that drops its future.
                        let hold = shared.fenced.hold(blocks.clone());
                        let p = Arc::clone(&shared.paths[path]);
                        fences.push(tokio::spawn(async move {
                            let since = now();
                            p.fence().await;
                            tracing::debug!(path, took = ?(now() - since), "multipath: path fenced");
                            drop(hold);
                        }));
                    }
                }
                ErrorClass::RetryLater if busy < shared.config.busy_retries => {
                    busy += 1;
                    tokio::time::sleep(shared.config.busy_delay).await;
                }
                _ => break r,
            }
            tracing::debug!(path, ?class, "multipath: retrying on another path");
        };
        for f in fences {
            // A fence task only ends by resolving (or with the runtime).
            let _ = f.await;
        }
        result
    }
}

impl Shared {
    pub(crate) fn core(&self) -> std::sync::MutexGuard<'_, PathSet> {
        self.core.lock().expect("multipath core lock")
    }

    /// Runs `f` on the core, then publishes and logs what changed.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut PathSet) -> R) -> R {
        let (r, events) = {
            let mut core = self.core();
            let r = f(&mut core);
            (r, core.take_events())
        };
        for e in events {
            match e {
                PathEvent::Path { path, state } => {
                    match state {
                        PathState::Up => tracing::info!(target: "multipath", path, "path up"),
                        PathState::Failed { .. } => {
                            tracing::warn!(target: "multipath", path, "path down")
                        }
                        PathState::Marginal { .. } => tracing::warn!(
                            target: "multipath",
                            path,
                            "path marginal: held out until it stays good"
                        ),
                        PathState::Dead => {
                            tracing::error!(target: "multipath", path, "path failed for good")
                        }
                    }
                    self.states.send_modify(|s| s[path] = state);
                }
                PathEvent::AllPathsDown => {
                    tracing::error!(
                        target: "multipath",
                        bound = ?self.config.no_path_bound,
                        "all paths down: I/O queued up to the bound"
                    );
                    self.status.gone();
                }
                PathEvent::Resumed => {
                    tracing::info!(target: "multipath", "a path is back: I/O resumed");
                    self.status.back();
                }
            }
        }
        r
    }
}

impl Drop for MultipathDevice {
    fn drop(&mut self) {
        self.checker.abort();
    }
}

/// The time now, on tokio's clock (so paused test time applies).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[async_trait]
impl BlockDevice for MultipathDevice {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_only(&self) -> bool {
        self.first().read_only()
    }

    fn features(&self) -> Features {
        self.first().features()
    }

    /// Absent while no path is usable, present again when one is.
    fn status(&self) -> watch::Receiver<DeviceStatus> {
        self.shared.status.subscribe()
    }

    /// What every path can carry: the smallest transfer and atomic-write
    /// limits of the paths (their transports may differ), the first path's
    /// granularity, and the queue depths added up.
    fn limits(&self) -> Limits {
        let all: Vec<Limits> = self
            .shared
            .paths
            .iter()
            .map(|p| p.device().limits())
            .collect();
        let smallest =
            |f: fn(&Limits) -> u32| all.iter().map(f).filter(|&v| v > 0).min().unwrap_or(0);
        Limits {
            max_transfer: smallest(|l| l.max_transfer),
            optimal_granularity: all[0].optimal_granularity,
            // An atomic write is promised only if every path promises one.
            atomic_write: if all.iter().any(|l| l.atomic_write == 0) {
                0
            } else {
                smallest(|l| l.atomic_write)
            },
            queue_depth: all.iter().map(|l| l.queue_depth).sum(),
        }
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes> {
        let bytes = u64::from(blocks) * u64::from(self.geometry.block_size);
        self.submit(Kind::Read, bytes, |d| {
            Box::pin(async move { d.read(lba, blocks).await })
        })
        .await
    }

    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> Result<()> {
        let bytes = data.len() as u64;
        let bs = u64::from(self.geometry.block_size);
        let blocks = lba..lba.saturating_add(bytes.div_ceil(bs));
        self.submit(Kind::Write(blocks), bytes, |d| {
            let data = data.clone();
            Box::pin(async move { d.write(lba, data, flags).await })
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        self.submit(Kind::Flush, 0, |d| Box::pin(async move { d.flush().await }))
            .await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<()> {
        self.submit(Kind::Write(lba..lba.saturating_add(blocks)), 0, |d| {
            Box::pin(async move { d.write_zeroes(lba, blocks, unmap).await })
        })
        .await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        self.submit(Kind::Write(lba..lba.saturating_add(blocks)), 0, |d| {
            Box::pin(async move { d.unmap(lba, blocks).await })
        })
        .await
    }

    async fn block_status(&self, lba: u64, max_blocks: u64) -> Result<Extent> {
        self.submit(Kind::Read, 0, |d| {
            Box::pin(async move { d.block_status(lba, max_blocks).await })
        })
        .await
    }
}
