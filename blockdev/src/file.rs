//! File backend: sparse regular files and real block devices.
//!
//! Reads and writes are positioned (`pread`/`pwrite`) on tokio's blocking
//! pool, so many requests proceed in parallel. FUA writes go through a second
//! descriptor opened with `O_DSYNC`; `flush` is `fdatasync`. On regular files
//! UNMAP punches holes (`fallocate`), WRITE ZEROES uses `FALLOC_FL_ZERO_RANGE`,
//! and block status comes from `SEEK_DATA`/`SEEK_HOLE`. On block devices the
//! kernel's `BLKDISCARD`/`BLKZEROOUT` are used.
//!
//! A write on the blocking pool cannot be recalled: when its future is
//! dropped the system call goes on. Such writes are tracked (`orphans`) and
//! later overlapping writes and flushes wait for them, so a dropped write
//! never lands over newer data.

mod orphans;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::{
    BlockDevice, BlockError, DeviceIdentity, DeviceStatus, Extent, Features, Geometry, Limits,
    Result, StatusPublisher, WriteFlags,
};

/// How to open a [`FileDevice`].
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Logical block size exposed to initiators.
    pub block_size: u32,
    /// Refuse writes and open the file read-only.
    pub read_only: bool,
    /// Create a sparse file of this many bytes if the path does not exist.
    pub create_size: Option<u64>,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            block_size: 512,
            read_only: false,
            create_size: None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    /// Same file opened with O_DSYNC, for FUA writes (None when read-only).
    dsync: Option<File>,
    is_blockdev: bool,
    /// Keeps other users off the file while it is served (`file` holds the lock).
    _claim: crate::claim::Claim,
    /// Writes whose futures were dropped while they ran.
    orphans: orphans::Orphans,
    /// Capacity in blocks, as last read from the backing store.
    num_blocks: AtomicU64,
    /// Publishes resizes found by [`FileDevice::rescan`].
    status: StatusPublisher,
}

/// A block device backed by a regular file or a host block device.
#[derive(Debug, Clone)]
pub struct FileDevice {
    inner: Arc<Inner>,
    block_size: u32,
    identity: DeviceIdentity,
    read_only: bool,
}

/// Largest I/O done on the calling task when it cannot block for long
/// (page-cache hits); larger ones go to the blocking pool, where copies of
/// several requests proceed in parallel.
const INLINE_IO_MAX: usize = 256 * 1024;

/// Smallest read [`FileDevice::cached_slice`] offers: below it, copying
/// into a buffer that goes out with other PDUs in one `writev` costs less
/// than a page-cache probe plus a `sendfile` of its own.
const SLICE_MIN: usize = 64 * 1024;

/// `cachestat(2)` (Linux 6.5+), the same number on every architecture.
const SYS_CACHESTAT: libc::c_long = 451;

// ioctl numbers from <linux/fs.h>.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

impl FileDevice {
    /// Opens (and if asked, creates) the backing file at `path`.
    pub fn open(
        path: impl AsRef<Path>,
        opts: &FileOptions,
        identity: DeviceIdentity,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !opts.block_size.is_power_of_two() || !(512..=65536).contains(&opts.block_size) {
            return Err(BlockError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "block size {} is not a power of two in 512..=65536",
                    opts.block_size
                ),
            )));
        }
        if let Some(size) = opts.create_size {
            if !path.exists() {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                f.set_len(size)?;
                f.sync_all()?;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(&path)?;
        let claim = crate::claim::Claim::take(&file, &path, !opts.read_only)?;
        let meta = file.metadata()?;
        let is_blockdev = meta.file_type().is_block_device();
        if !is_blockdev && !meta.is_file() {
            return Err(BlockError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is neither a regular file nor a block device",
                    path.display()
                ),
            )));
        }
        let bytes = backing_size(&file, is_blockdev)?;
        let dsync = if opts.read_only {
            None
        } else {
            Some(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DSYNC)
                    .open(&path)?,
            )
        };
        let geometry = Geometry {
            block_size: opts.block_size,
            num_blocks: bytes / u64::from(opts.block_size),
        };
        Ok(FileDevice {
            block_size: opts.block_size,
            identity,
            read_only: opts.read_only,
            inner: Arc::new(Inner {
                path,
                file,
                dsync,
                is_blockdev,
                _claim: claim,
                orphans: Default::default(),
                num_blocks: AtomicU64::new(geometry.num_blocks),
                status: StatusPublisher::new(geometry),
            }),
        })
    }

    /// Reads the size of the backing file or block device again and, when
    /// it changed, adopts it and publishes the new capacity on
    /// [`BlockDevice::status`] (every clone of this device sees it). A file
    /// grown with `truncate` or a logical volume extended is found this way,
    /// when the owner asks (the ISU daemon rescans its disks on SIGHUP):
    /// nothing watches the file meanwhile. A partial last block is not
    /// counted. Returns the capacity in blocks now.
    pub fn rescan(&self) -> Result<u64> {
        let bytes = backing_size(&self.inner.file, self.inner.is_blockdev)?;
        let blocks = bytes / u64::from(self.block_size);
        let old = self.inner.num_blocks.swap(blocks, Ordering::AcqRel);
        if old != blocks {
            tracing::info!(
                path = %self.inner.path.display(),
                from = old,
                to = blocks,
                "backing store resized"
            );
            self.inner.status.resized(blocks);
        }
        Ok(blocks)
    }

    /// Path of the backing file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| BlockError::Io(io::Error::other(e)))?
            .map_err(BlockError::Io)
    }

    /// Runs a write of bytes `off..off + len` on the blocking pool, after
    /// any dropped write it overlaps has landed; if this future is dropped
    /// in turn, the write is tracked until it lands.
    async fn blocking_write(
        &self,
        off: u64,
        len: u64,
        f: impl FnOnce(&Inner) -> io::Result<()> + Send + 'static,
    ) -> Result<()> {
        let end = off.saturating_add(len);
        self.inner.orphans.settle(off, end).await;
        let (_started, running) = orphans::start(&self.inner, off, end);
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _running = running;
            f(&inner)
        })
        .await
        .map_err(|e| BlockError::Io(io::Error::other(e)))?
        .map_err(BlockError::Io)
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(BlockError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

/// Size in bytes of an open regular file or block device.
fn backing_size(file: &File, is_blockdev: bool) -> io::Result<u64> {
    if !is_blockdev {
        return Ok(file.metadata()?.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for writes.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// A byte range of an open file, handed out by
/// [`BlockDevice::cached_slice`](crate::BlockDevice::cached_slice) so a
/// transport can send it with `sendfile(2)` instead of reading it into
/// memory first. Keeps the file open while it lives. The bytes are those in
/// the page cache when the kernel sends them.
#[derive(Clone)]
pub struct FileSlice {
    inner: Arc<Inner>,
    offset: u64,
    len: usize,
    /// Held until the last clone or sub-range is dropped (see [`FileSlice::hold`]).
    guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for FileSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSlice")
            .field("path", &self.inner.path)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl FileSlice {
    /// The file to send from.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inner.file.as_fd()
    }

    /// Byte offset of the range in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the range in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-range `start..start + len` (relative to this one).
    ///
    /// # Panics
    /// If it does not lie inside this range.
    pub fn slice(&self, start: usize, len: usize) -> FileSlice {
        assert!(
            start.checked_add(len).is_some_and(|e| e <= self.len),
            "FileSlice::slice out of range"
        );
        FileSlice {
            inner: self.inner.clone(),
            offset: self.offset + start as u64,
            len,
            guard: self.guard.clone(),
        }
    }

    /// Keeps `guard` alive until this slice, its clones and sub-ranges are all
    /// dropped, i.e. until the bytes have been sent. A SCSI target hangs the
    /// command's task-set place on it, so a later ORDERED write cannot change
    /// the blocks before they have left.
    pub fn hold(mut self, guard: Arc<dyn std::any::Any + Send + Sync>) -> FileSlice {
        self.guard = Some(guard);
        self
    }

    /// Reads the bytes (a blocking `pread`; for digests and tests).
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        self.inner
            .pread_uninit(self.offset, self.len, 0)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
}

impl Inner {
    /// Whether every page of `len` bytes at `offset` is in the page cache
    /// (`cachestat(2)`; false where it is not available).
    fn cached(&self, offset: u64, len: usize) -> bool {
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        if len == 0 {
            return true;
        }
        // SAFETY: sysconf has no memory effects.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as u64,
            _ => return false,
        };
        let first = offset / page;
        let last = (offset + len as u64 - 1) / page;
        let range = Range {
            off: first * page,
            len: (last - first + 1) * page,
        };
        let mut stat = Stat::default();
        // SAFETY: cachestat reads `range` and writes one `Stat` (its
        // struct cachestat layout), both valid for the call; flags are 0.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                self.file.as_raw_fd(),
                &range as *const Range,
                &mut stat as *mut Stat,
                0u32,
            )
        };
        rc == 0 && stat.nr_cache == last - first + 1
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: plain syscall on an open descriptor; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn blk_range_ioctl(&self, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: these ioctls read two u64 (start, length) through the pointer, valid for reads.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req, range.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zero = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zero.len() as u64) as usize;
            self.file.write_all_at(&zero[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Reads from the page cache without blocking (`preadv2(RWF_NOWAIT)`).
    /// `None` when the data is not cached (or only partly): the caller then
    /// reads on a blocking thread. Saves two thread hand-offs per cached read.
    fn read_nowait(&self, offset: u64, len: usize) -> Option<io::Result<Bytes>> {
        match self.pread_uninit(offset, len, libc::RWF_NOWAIT) {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => None,
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN)
                | Some(libc::EOPNOTSUPP)
                | Some(libc::EINVAL)
                | Some(libc::ENOSYS) => None,
                _ => Some(Err(e)),
            },
        }
    }

    /// Reads `len` bytes at `offset` into a fresh buffer that is never
    /// zero-filled first (the kernel writes it). `Ok(None)` on a short read.
    fn pread_uninit(
        &self,
        offset: u64,
        len: usize,
        flags: libc::c_int,
    ) -> io::Result<Option<Bytes>> {
        let mut buf = BytesMut::with_capacity(len);
        let mut done = 0usize;
        while done < len {
            let spare = buf.spare_capacity_mut();
            let iov = libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: len - done,
            };
            // SAFETY: the iovec covers the buffer's spare capacity (at least
            // `len - done` bytes, valid for writes) for the duration of the call.
            let n = unsafe {
                libc::preadv2(
                    self.file.as_raw_fd(),
                    &iov,
                    1,
                    (offset + done as u64) as libc::off_t,
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Ok(None);
            }
            // SAFETY: the kernel initialized the next `n` bytes of spare capacity.
            unsafe { buf.set_len(done + n as usize) };
            done += n as usize;
            if flags & libc::RWF_NOWAIT != 0 && done < len {
                return Ok(None);
            }
        }
        Ok(Some(buf.freeze()))
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        // SAFETY: plain syscall on an open descriptor.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r >= 0 {
            Ok(Some(r as u64))
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

#[async_trait]
impl BlockDevice for FileDevice {
    fn geometry(&self) -> Geometry {
        Geometry {
            block_size: self.block_size,
            num_blocks: self.inner.num_blocks.load(Ordering::Acquire),
        }
    }

    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        self.inner.status.subscribe()
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    /// No write is atomic: a `pwrite` goes through the page cache and out
    /// in pages and sectors, so a crash can land any part of it (not even a
    /// single block is promised when it spans pages or the device's
    /// sectors). No maximum transfer, granularity or queue depth is known.
    fn limits(&self) -> Limits {
        Limits::default()
    }

    fn features(&self) -> Features {
        Features {
            thin: !self.inner.is_blockdev,
            unmap_reads_zero: !self.inner.is_blockdev,
            volatile_cache: true,
        }
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes> {
        let g = self.geometry();
        g.check_range(lba, u64::from(blocks))?;
        let bs = u64::from(g.block_size);
        let len = blocks as usize * g.block_size as usize;
        if len <= INLINE_IO_MAX {
            if let Some(r) = self.inner.read_nowait(lba * bs, len) {
                return r.map_err(BlockError::Io);
            }
        }
        self.blocking(move |i| {
            i.pread_uninit(lba * bs, len, 0)?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        })
        .await
    }

    fn cached_slice(&self, lba: u64, blocks: u32) -> Option<FileSlice> {
        let g = self.geometry();
        g.check_range(lba, u64::from(blocks)).ok()?;
        let len = blocks as usize * g.block_size as usize;
        let offset = lba * u64::from(g.block_size);
        (len >= SLICE_MIN && self.inner.cached(offset, len)).then(|| FileSlice {
            guard: None,
            inner: self.inner.clone(),
            offset,
            len,
        })
    }

    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> Result<()> {
        self.check_writable()?;
        let g = self.geometry();
        let blocks = g.blocks_in(data.len())?;
        g.check_range(lba, blocks)?;
        let off = lba * u64::from(g.block_size);
        if !flags.fua && data.len() <= INLINE_IO_MAX && !self.inner.is_blockdev {
            // A small buffered write only copies into the page cache: doing
            // it here costs less than two thread hand-offs.
            self.inner
                .orphans
                .settle(off, off + data.len() as u64)
                .await;
            return self
                .inner
                .file
                .write_all_at(&data, off)
                .map_err(BlockError::Io);
        }
        let len = data.len() as u64;
        self.blocking_write(off, len, move |i| match (&i.dsync, flags.fua) {
            (Some(d), true) => d.write_all_at(&data, off),
            _ => i.file.write_all_at(&data, off),
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // Dropped writes still running land before the flush begins.
        self.inner.orphans.settle(0, u64::MAX).await;
        self.blocking(|i| i.file.sync_data()).await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<()> {
        self.check_writable()?;
        let g = self.geometry();
        g.check_range(lba, blocks)?;
        let bs = u64::from(g.block_size);
        let (off, len) = (lba * bs, blocks * bs);
        self.blocking_write(off, len, move |i| {
            if i.is_blockdev {
                return i
                    .blk_range_ioctl(BLKZEROOUT, off, len)
                    .or_else(|_| i.write_zero_bytes(off, len));
            }
            let mode = if unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            i.fallocate(mode, off, len)
                .or_else(|_| {
                    i.fallocate(
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off,
                        len,
                    )
                })
                .or_else(|_| i.write_zero_bytes(off, len))
        })
        .await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        self.check_writable()?;
        let g = self.geometry();
        g.check_range(lba, blocks)?;
        let bs = u64::from(g.block_size);
        let (off, len) = (lba * bs, blocks * bs);
        self.blocking_write(off, len, move |i| {
            if i.is_blockdev {
                // Discard is advisory: a device that cannot discard keeps its data.
                let _ = i.blk_range_ioctl(BLKDISCARD, off, len);
                return Ok(());
            }
            i.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
            .or_else(|_| i.write_zero_bytes(off, len))
        })
        .await
    }

    async fn block_status(&self, lba: u64, max_blocks: u64) -> Result<Extent> {
        let g = self.geometry();
        g.check_range(lba, 1)?;
        let limit = max_blocks.max(1).min(g.num_blocks - lba);
        if self.inner.is_blockdev {
            return Ok(Extent {
                mapped: true,
                blocks: limit,
            });
        }
        let bs = u64::from(g.block_size);
        let off = lba * bs;
        let end = (lba + limit) * bs;
        self.blocking(move |i| {
            let data = i.seek(off, libc::SEEK_DATA)?;
            let (mapped, until) = match data {
                Some(d) if d <= off => (true, i.seek(off, libc::SEEK_HOLE)?.unwrap_or(end)),
                Some(d) => (false, d),
                None => (false, end),
            };
            // Partially mapped blocks count as mapped: round a hole's start up, a data run's end up.
            let until = until.min(end);
            let blocks = if mapped {
                until.div_ceil(bs)
            } else {
                until / bs
            }
            .saturating_sub(lba);
            Ok(Extent {
                mapped,
                blocks: blocks.clamp(1, limit),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sparse_file_round_trip_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let opts = FileOptions {
            create_size: Some(8 << 20),
            ..Default::default()
        };
        let d = FileDevice::open(&p, &opts, DeviceIdentity::from_name("f")).unwrap();
        assert_eq!(d.geometry().num_blocks, 16384);
        let st = d.block_status(0, 16384).await.unwrap();
        assert!(!st.mapped, "new file is a hole");
        let data = Bytes::from(vec![0xabu8; 1 << 20]);
        d.write(2048, data.clone(), WriteFlags::FUA).await.unwrap();
        d.flush().await.unwrap();
        assert_eq!(d.read(2048, 2048).await.unwrap(), data);
        let st = d.block_status(2048, 16384).await.unwrap();
        assert!(st.mapped && st.blocks >= 2048, "{st:?}");
        d.unmap(2048, 2048).await.unwrap();
        assert!(d.read(2048, 2048).await.unwrap().iter().all(|&b| b == 0));
        let st = d.block_status(2048, 2048).await.unwrap();
        assert!(!st.mapped, "{st:?}");
        // Reopen read-only (once the writer is gone: it holds the file's
        // claim): data survives and writes are refused.
        drop(d);
        let ro = FileDevice::open(
            &p,
            &FileOptions {
                read_only: true,
                ..Default::default()
            },
            DeviceIdentity::from_name("f"),
        )
        .unwrap();
        assert!(matches!(
            ro.write(0, Bytes::from(vec![0; 512]), WriteFlags::NONE)
                .await,
            Err(BlockError::ReadOnly)
        ));
        assert!(ro.read(16383, 2).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_write_never_lands_over_a_later_overlapping_one() {
        use std::task::{Context, Waker};

        let dir = tempfile::tempdir().unwrap();
        let opts = FileOptions {
            create_size: Some(32 << 20),
            ..Default::default()
        };
        let d = FileDevice::open(
            dir.path().join("o.img"),
            &opts,
            DeviceIdentity::from_name("o"),
        )
        .unwrap();
        let long = 16usize << 20;
        let tail = ((long - 4096) / 512) as u64;
        let mut raced = 0;
        for round in 0..8u8 {
            // A 16 MiB write goes to the blocking pool at its first poll;
            // then its future is dropped, as an aborted command's would be.
            let mut old = d.write(0, Bytes::from(vec![round + 1; long]), WriteFlags::NONE);
            let poll = old.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            drop(old);
            if poll.is_ready() {
                continue; // this thread was preempted for as long as the write took
            }
            raced += 1;
            // Newer data over the end of its range, then a flush.
            let newer = Bytes::from(vec![0xf0 - round; 4096]);
            d.write(tail, newer.clone(), WriteFlags::NONE)
                .await
                .unwrap();
            d.flush().await.unwrap();
            // Whatever the dropped write still does is over by now.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                d.read(tail, 8).await.unwrap(),
                newer,
                "round {round}: the dropped write landed over newer data"
            );
        }
        assert!(raced > 0, "no write was still running when dropped");
    }

    #[tokio::test]
    async fn cached_slices_cover_exactly_the_blocks_read() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FileOptions {
            create_size: Some(4 << 20),
            ..Default::default()
        };
        let d = FileDevice::open(
            dir.path().join("c.img"),
            &opts,
            DeviceIdentity::from_name("c"),
        )
        .unwrap();
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        d.write(1000, Bytes::from(data.clone()), WriteFlags::NONE)
            .await
            .unwrap();
        // Just written through the page cache: cached.
        let s = d.cached_slice(1000, 512).expect("cached range");
        assert_eq!((s.offset(), s.len()), (1000 * 512, 256 * 1024));
        assert_eq!(&s.to_bytes().unwrap()[..], &data[..]);
        let sub = s.slice(4096, 8192);
        assert_eq!(&sub.to_bytes().unwrap()[..], &data[4096..4096 + 8192]);
        assert!(d.cached_slice(1000, 8).is_none(), "small reads are copied");
        assert!(d.cached_slice(8190, 512).is_none(), "out of range");
        // Written back and dropped from the page cache: not offered (sendfile
        // would then read the disk on the caller's thread).
        d.flush().await.unwrap();
        let f = File::open(d.path()).unwrap();
        // SAFETY: plain syscall on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        assert!(d.cached_slice(1000, 512).is_none(), "evicted range offered");
        assert_eq!(&d.read(1000, 512).await.unwrap()[..], &data[..]);
        assert!(
            d.cached_slice(1000, 512).is_some(),
            "read back into the cache"
        );
    }

    #[tokio::test]
    async fn a_rescan_adopts_and_publishes_a_grown_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.img");
        let opts = FileOptions {
            create_size: Some(1 << 20),
            ..Default::default()
        };
        let d = FileDevice::open(&p, &opts, DeviceIdentity::from_name("g")).unwrap();
        let clone = d.clone();
        let mut events = d.status();
        assert_eq!(d.rescan().unwrap(), 2048);
        assert!(!events.has_changed().unwrap(), "no change, no event");
        assert!(d.read(2048, 1).await.is_err(), "beyond the end");
        // Grown from outside, by a whole number of blocks and a partial one.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len((3 << 20) + 100)
            .unwrap();
        assert_eq!(d.geometry().num_blocks, 2048, "nothing watches the file");
        assert_eq!(d.rescan().unwrap(), 6144);
        events.changed().await.unwrap();
        assert_eq!(events.borrow_and_update().geometry.num_blocks, 6144);
        assert_eq!(clone.geometry().num_blocks, 6144, "every clone sees it");
        let data = Bytes::from(vec![0x3c; 512]);
        d.write(6143, data.clone(), WriteFlags::FUA).await.unwrap();
        assert_eq!(clone.read(6143, 1).await.unwrap(), data);
    }
}
