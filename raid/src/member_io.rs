//! A member device as the array uses it: transient errors are waited out.
//!
//! A member's error says by its class ([`blockdev::ErrorClass`]) what the
//! array may do. The transient ones (its path is down, it is busy, it timed
//! out with the outcome unknown) do not fail the member: the request is
//! retried, after a back-off on the injected clock, until it succeeds or the
//! member has answered nothing but transient errors for the array's
//! [`Config::member_timeout`](crate::Config). Then the error is reported as
//! [`BlockError::Failed`], and the array fails the member as it does on
//! every other error but a medium error (which is repaired from
//! redundancy). A call that returned has no I/O left running (the
//! [`BlockDevice`] contract), so retrying a timed-out write cannot race the
//! first attempt. While a member waits, so does every request that needs
//! it: the rows it holds cannot be updated without it and stay consistent.
//!
//! It is also where the [`TagCache`] learns of writes: every write, zeroing
//! and unmap invalidates the member range it covers when it starts and when
//! it has returned, so the cache holds what the member holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blockdev::{
    BlockDevice, BlockError, Bytes, DeviceIdentity, DeviceStatus, Extent, Features, FileSlice,
    Geometry, Limits, Result, SharedDevice, WriteFlags,
};

use crate::clock::Clock;
use crate::tag_cache::{MemberKey, TagCache};

/// First wait before a retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A member device whose transient errors are retried within a bound.
#[derive(Debug)]
pub(crate) struct MemberDevice {
    dev: SharedDevice,
    clock: Arc<dyn Clock>,
    /// How long the member may answer only with transient errors.
    timeout: Duration,
    /// Since when it has answered nothing but transient errors.
    down_since: Mutex<Option<Duration>>,
    /// The array's tag-block cache, told of every write.
    tags: Arc<TagCache>,
}

impl MemberDevice {
    /// `dev` as a member: its transient errors are retried for up to
    /// `timeout`; its reads may be cached in `tags`, which learns of its
    /// writes.
    pub(crate) fn wrap(
        dev: SharedDevice,
        timeout: Duration,
        clock: Arc<dyn Clock>,
        tags: Arc<TagCache>,
    ) -> SharedDevice {
        let member = Arc::new(MemberDevice {
            dev,
            clock,
            timeout,
            down_since: Mutex::new(None),
            tags,
        });
        member.tags.register(member.key());
        member
    }

    /// This member's key in the tag cache (its address while it lives).
    fn key(&self) -> MemberKey {
        self as *const Self as *const () as usize
    }

    /// Runs a write of `blocks` at `lba`, invalidating the cached range
    /// before and after (after also when the write is dropped midway: it
    /// may still land).
    async fn writing<F>(&self, lba: u64, blocks: u64, op: F) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        self.tags.invalidate(self.key(), lba, blocks);
        let _after = Invalidate {
            tags: &self.tags,
            key: self.key(),
            lba,
            blocks,
        };
        op.await
    }

    /// Runs `op` until it returns anything but a transient error, or the
    /// member has been down for the timeout.
    async fn retry<T, F>(&self, mut op: impl FnMut() -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let e = match op().await {
                Err(e) if e.is_transient() => e,
                r => {
                    // The member answered: whatever it said, its path works.
                    *self.down_since.lock().expect("member lock") = None;
                    return r;
                }
            };
            let now = self.clock.now();
            let since = *self
                .down_since
                .lock()
                .expect("member lock")
                .get_or_insert(now);
            let left = (since + self.timeout).saturating_sub(now);
            if left.is_zero() {
                return Err(BlockError::Failed(format!(
                    "no answer but transient errors for {:?}: {e}",
                    now - since
                )));
            }
            self.clock.sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[async_trait]
impl BlockDevice for MemberDevice {
    fn geometry(&self) -> Geometry {
        self.dev.geometry()
    }

    fn identity(&self) -> &DeviceIdentity {
        self.dev.identity()
    }

    fn read_only(&self) -> bool {
        self.dev.read_only()
    }

    fn features(&self) -> Features {
        self.dev.features()
    }

    fn limits(&self) -> Limits {
        self.dev.limits()
    }

    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        self.dev.status()
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes> {
        self.retry(|| self.dev.read(lba, blocks)).await
    }

    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> Result<()> {
        let blocks = (data.len() as u64).div_ceil(u64::from(self.geometry().block_size.max(1)));
        self.writing(
            lba,
            blocks,
            self.retry(|| self.dev.write(lba, data.clone(), flags)),
        )
        .await
    }

    async fn flush(&self) -> Result<()> {
        self.retry(|| self.dev.flush()).await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<()> {
        self.writing(
            lba,
            blocks,
            self.retry(|| self.dev.write_zeroes(lba, blocks, unmap)),
        )
        .await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        self.writing(lba, blocks, self.retry(|| self.dev.unmap(lba, blocks)))
            .await
    }

    fn cached_slice(&self, lba: u64, blocks: u32) -> Option<FileSlice> {
        self.dev.cached_slice(lba, blocks)
    }

    async fn block_status(&self, lba: u64, max_blocks: u64) -> Result<Extent> {
        self.retry(|| self.dev.block_status(lba, max_blocks)).await
    }
}

/// Invalidates a written range when dropped (the write returned or was
/// abandoned).
struct Invalidate<'a> {
    tags: &'a TagCache,
    key: MemberKey,
    lba: u64,
    blocks: u64,
}

impl Drop for Invalidate<'_> {
    fn drop(&mut self) {
        self.tags.invalidate(self.key, self.lba, self.blocks);
    }
}

impl Drop for MemberDevice {
    fn drop(&mut self) {
        self.tags.unregister(self.key());
    }
}

/// The tag-cache key of `dev` if it is a member the cache knows: the
/// address its `Arc` points at, the same as [`MemberDevice`]'s own.
pub(crate) fn member_key(dev: &SharedDevice) -> MemberKey {
    Arc::as_ptr(dev) as *const () as usize
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use blockdev::{BlockDevice, Bytes, MemDevice, Result, SharedDevice, WriteFlags};
    use tokio::sync::Notify;

    use super::*;
    use crate::clock::ManualClock;
    use crate::integrity::{ChunkTags, TagPlace};
    use crate::tag_cache::{cached_tags, TagCache};

    /// A device whose read of `held` has read the old content and then
    /// waits for `release` before it answers.
    #[derive(Debug)]
    struct HeldRead {
        inner: MemDevice,
        held: u64,
        reached: Notify,
        release: Notify,
    }

    #[async_trait]
    impl BlockDevice for HeldRead {
        fn geometry(&self) -> Geometry {
            self.inner.geometry()
        }
        fn identity(&self) -> &DeviceIdentity {
            self.inner.identity()
        }
        async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes> {
            let r = self.inner.read(lba, blocks).await;
            if lba == self.held {
                self.reached.notify_one();
                self.release.notified().await;
            }
            r
        }
        async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> Result<()> {
            self.inner.write(lba, data, flags).await
        }
        async fn flush(&self) -> Result<()> {
            self.inner.flush().await
        }
        async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<()> {
            self.inner.write_zeroes(lba, blocks, unmap).await
        }
    }

    fn block(b: u8) -> Bytes {
        Bytes::from(vec![b; 512])
    }

    const PLACE: TagPlace = TagPlace {
        array: [0; 8],
        row: 0,
        slot: 0,
    };

    /// Stands in for decoding: one entry whose checksum is the block's
    /// first byte.
    fn decode(buf: &[u8]) -> ChunkTags {
        let mut t = ChunkTags::unwritten(1);
        t.overwrite_crc(0, 0, 0, u32::from(buf[0]), true);
        t
    }

    /// Reads the tags at LBA 10 through the cache: their "content" and
    /// whether they came from it.
    async fn read_through(cache: &TagCache, member: &SharedDevice) -> Result<(u32, bool)> {
        let (t, hit) = cached_tags(cache, member, 10, 1, PLACE, decode).await?;
        Ok((t.entries[0].expect("an entry").crc, hit))
    }

    #[tokio::test]
    async fn a_tag_read_overtaken_by_a_write_is_not_cached() {
        let cache = Arc::new(TagCache::new(1 << 20));
        let held = Arc::new(HeldRead {
            inner: MemDevice::with_name("held", 64 * 512),
            held: 10,
            reached: Notify::new(),
            release: Notify::new(),
        });
        let dev: SharedDevice = held.clone();
        let member = MemberDevice::wrap(
            dev,
            Duration::from_secs(1),
            Arc::new(ManualClock::new()),
            cache.clone(),
        );
        member.write(10, block(1), WriteFlags::NONE).await.unwrap();

        let reading = {
            let (cache, member) = (cache.clone(), member.clone());
            tokio::spawn(async move { read_through(&cache, &member).await })
        };
        held.reached.notified().await;
        // The row is rewritten while the old tags are on their way back.
        member.write(10, block(2), WriteFlags::NONE).await.unwrap();
        held.release.notify_one();
        let (old, from_cache) = reading.await.unwrap().unwrap();
        assert_eq!((old, from_cache), (1, false));
        assert_eq!(cache.stats().entries, 0, "the stale tags were cached");

        // Undisturbed, a read is cached and then answered from the cache.
        let again = {
            let (cache, member) = (cache.clone(), member.clone());
            tokio::spawn(async move { read_through(&cache, &member).await })
        };
        held.reached.notified().await;
        held.release.notify_one();
        assert_eq!(again.await.unwrap().unwrap(), (2, false));
        let hit = read_through(&cache, &member).await.unwrap();
        assert_eq!(hit, (2, true));

        // Dropping the member drops its entries.
        drop(member);
        assert_eq!(cache.stats().entries, 0);
    }
}
