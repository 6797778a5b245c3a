//! The two copies of the table on the device: load the current one, commit
//! a new one into the other copy.
//!
//! A commit writes the copy that does not hold the current table, flushes,
//! and reads it back; only then is the new table current. A crash at any
//! point leaves the old copy untouched, and a torn new copy fails its
//! checksum, so a reopen finds the old table or the new one, never a mix.

use blockdev::{BlockDevice, Bytes, BytesMut, WriteFlags};

use crate::error::{CopyFault, Result, VolumeError};
use crate::table::{copy_blocks, copy_lba, Table, COPY_BYTES};

/// The current table and the copy it was read from.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    /// The table.
    pub table: Table,
    /// The copy (0 or 1) holding it.
    pub slot: usize,
}

/// Blocks per request: the device's maximum transfer, or the whole copy.
fn chunk_blocks(dev: &dyn BlockDevice) -> u32 {
    let whole = copy_blocks(dev.geometry().block_size);
    match dev.limits().max_transfer {
        0 => whole,
        max => max.min(whole),
    }
}

/// Reads copy `slot` as stored.
async fn read_copy(dev: &dyn BlockDevice, slot: usize) -> Result<Bytes> {
    let bs = dev.geometry().block_size;
    let (lba, total, step) = (copy_lba(slot, bs), copy_blocks(bs), chunk_blocks(dev));
    let mut buf = BytesMut::with_capacity(COPY_BYTES);
    let mut done = 0;
    while done < total {
        let n = step.min(total - done);
        buf.extend_from_slice(&dev.read(lba + u64::from(done), n).await?);
        done += n;
    }
    Ok(buf.freeze())
}

/// Writes `bytes` (one copy) into copy `slot`.
async fn write_copy(dev: &dyn BlockDevice, slot: usize, bytes: Bytes) -> Result<()> {
    let bs = dev.geometry().block_size;
    let (lba, step) = (copy_lba(slot, bs), chunk_blocks(dev) as usize * bs as usize);
    for (i, piece) in bytes.chunks(step).enumerate() {
        let at = lba + (i * step) as u64 / u64::from(bs);
        dev.write(at, bytes.slice_ref(piece), WriteFlags::NONE)
            .await?;
    }
    Ok(())
}

/// Both copies, decoded.
pub(crate) async fn read_both(
    dev: &dyn BlockDevice,
) -> Result<[std::result::Result<Table, CopyFault>; 2]> {
    let a = read_copy(dev, 0).await?;
    let b = read_copy(dev, 1).await?;
    Ok([Table::decode(&a), Table::decode(&b)])
}

/// Picks the current table of the two copies: the valid one with the
/// higher sequence number. A copy of a newer format version makes it an
/// error (it may be the newer one); both unusable is an error, never a guess.
pub(crate) fn pick(copies: [std::result::Result<Table, CopyFault>; 2]) -> Result<Current> {
    for c in &copies {
        if let Err(CopyFault::Version(v)) = c {
            return Err(VolumeError::UnsupportedVersion(*v));
        }
    }
    match copies {
        [Ok(a), Ok(b)] => Ok(if b.seq > a.seq {
            Current { table: b, slot: 1 }
        } else {
            Current { table: a, slot: 0 }
        }),
        [Ok(a), Err(_)] => Ok(Current { table: a, slot: 0 }),
        [Err(_), Ok(b)] => Ok(Current { table: b, slot: 1 }),
        [Err(CopyFault::NoMagic), Err(CopyFault::NoMagic)] => Err(VolumeError::Unformatted),
        [Err(a), Err(b)] => Err(VolumeError::Corrupt(a, b)),
    }
}

/// Loads the current table from `dev`.
pub(crate) async fn load(dev: &dyn BlockDevice) -> Result<Current> {
    pick(read_both(dev).await?)
}

/// Commits `table` (whose `seq` the caller set one above the current one)
/// into copy `slot`: write, flush, read back. Returns only once the new
/// table is durable and verified.
pub(crate) async fn commit(dev: &dyn BlockDevice, slot: usize, table: &Table) -> Result<()> {
    let bytes = Bytes::from(
        table
            .encode()
            .ok_or(VolumeError::TableFull(table.encoded_len()))?,
    );
    write_copy(dev, slot, bytes.clone()).await?;
    dev.flush().await?;
    if read_copy(dev, slot).await? != bytes {
        return Err(VolumeError::CommitNotVerified);
    }
    Ok(())
}

/// Wipes copy `slot` (zeroes, flushed), so it can never be taken for a table.
pub(crate) async fn erase(dev: &dyn BlockDevice, slot: usize) -> Result<()> {
    write_copy(dev, slot, Bytes::from(vec![0u8; COPY_BYTES])).await?;
    dev.flush().await?;
    Ok(())
}
