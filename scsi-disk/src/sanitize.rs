//! SANITIZE (SBC-4 5.30): OVERWRITE writes the initialization pattern over
//! every block (OWCOUNT passes, INVERT between passes); BLOCK ERASE and
//! CRYPTOGRAPHIC ERASE deallocate every block of a thin device (there is no
//! key to destroy, so both make the old data unreachable by discarding it).
//! A fully provisioned device (LBPME = 0) is zeroed by CRYPTOGRAPHIC ERASE
//! and has no BLOCK ERASE: SBC-4 states its outcome in mapped and unmapped
//! LBAs, which only logical block provisioning has, so the command table
//! neither reports nor accepts it there (and WABEREQ is 00b). EXIT FAILURE
//! MODE clears a failed sanitize. The operation runs as its own task:
//! aborting or resetting the command does not stop it, and until it ends
//! every medium access command gets NOT READY, SANITIZE IN PROGRESS with a
//! progress indication.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use blockdev::WriteFlags;

use super::cdb::{be16, byte};
use super::dispatch::{CmdResult, Ctx, Reply};
use super::lu::{LogicalUnit, SanitizeStatus};
use super::opcodes::sa;
use super::sense::{key, Asc, Sense};

/// Bytes written per device call by OVERWRITE.
const CHUNK_BYTES: usize = 1 << 20;

/// OVERWRITE is paced to this many bytes per second so that a sanitize of
/// one LU does not starve the other LUs sharing the ISU's disks.
const OVERWRITE_BYTES_PER_SEC: u64 = 256 << 20;

/// What to do.
#[derive(Debug, Clone)]
enum Job {
    Overwrite {
        pattern: Bytes,
        passes: u8,
        invert: bool,
    },
    Erase,
}

fn parse_overwrite(ctx: &Ctx<'_>, len: usize) -> Result<Job, Sense> {
    let bs = ctx.lu.geometry().block_size as usize;
    if len < 5 || len > bs + 4 {
        return Err(Sense::invalid_cdb(7, None));
    }
    if ctx.data.len() < len {
        return Err(Sense::param_list_length());
    }
    let p = &ctx.data[..len];
    let passes = p[0] & 0x1f;
    if passes == 0 {
        return Err(Sense::invalid_param(0, Some(4)));
    }
    if p[0] & 0x60 != 0 {
        return Err(Sense::invalid_param(0, Some(6))); // TEST
    }
    let plen = usize::from(be16(p, 2));
    if plen == 0 || plen > bs || plen + 4 != len {
        return Err(Sense::invalid_param(2, None));
    }
    // The pattern repeated to fill one block.
    let mut block = BytesMut::with_capacity(bs);
    while block.len() < bs {
        let n = plen.min(bs - block.len());
        block.extend_from_slice(&p[4..4 + n]);
    }
    Ok(Job::Overwrite {
        pattern: block.freeze(),
        passes,
        invert: p[0] & 0x80 != 0,
    })
}

/// SANITIZE.
pub(crate) async fn sanitize(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    let action = cdb[1] & 0x1f;
    let immed = cdb[1] & 0x80 != 0;
    let len = usize::from(be16(cdb, 7));
    if cdb[1] & 0x40 != 0 {
        return Err(Sense::invalid_cdb(1, Some(6)).into()); // ZNR: not a zoned device
    }
    for i in 2..7 {
        if byte(cdb, i) != 0 {
            return Err(Sense::invalid_cdb(i as u16, None).into());
        }
    }
    let job = match action {
        sa::SANITIZE_OVERWRITE => parse_overwrite(ctx, len)?,
        sa::SANITIZE_BLOCK_ERASE | sa::SANITIZE_CRYPTO_ERASE => {
            if len != 0 {
                return Err(Sense::invalid_cdb(7, None).into());
            }
            Job::Erase
        }
        sa::SANITIZE_EXIT_FAILURE => {
            if len != 0 {
                return Err(Sense::invalid_cdb(7, None).into());
            }
            let mut st = ctx.lu.state();
            if st.sanitize == SanitizeStatus::Failed {
                st.sanitize = SanitizeStatus::Idle;
            }
            return Ok(Reply::good());
        }
        _ => return Err(Sense::invalid_cdb(1, Some(4)).into()),
    };
    {
        let mut st = ctx.lu.state();
        if let SanitizeStatus::Running { done } = st.sanitize {
            return Err(super::dispatch::sanitize_in_progress(done).into());
        }
        st.sanitize = SanitizeStatus::Running { done: 0 };
    }
    let lu = Arc::clone(ctx.lu);
    let task = tokio::spawn(async move {
        let ok = run(&lu, job).await;
        lu.state().sanitize = if ok {
            SanitizeStatus::Idle
        } else {
            SanitizeStatus::Failed
        };
        ok
    });
    if immed {
        return Ok(Reply::good());
    }
    match task.await {
        Ok(true) => Ok(Reply::good()),
        _ => Err(Sense::new(key::MEDIUM_ERROR, Asc::SANITIZE_FAILED).into()),
    }
}

fn set_progress(lu: &LogicalUnit, done: u64, total: u64) {
    let frac = (done.saturating_mul(65536) / total.max(1)).min(65535) as u16;
    lu.state().sanitize = SanitizeStatus::Running { done: frac };
}

async fn run(lu: &LogicalUnit, job: Job) -> bool {
    let g = lu.geometry();
    let _all = lu.ranges.lock(0, g.num_blocks).await;
    let dev = &lu.device;
    let result = match job {
        Job::Erase => {
            let f = dev.features();
            if f.thin {
                dev.unmap(0, g.num_blocks).await
            } else {
                dev.write_zeroes(0, g.num_blocks, false).await
            }
        }
        Job::Overwrite {
            pattern,
            passes,
            invert,
        } => {
            let bs = g.block_size as usize;
            let per = (CHUNK_BYTES / bs).max(1) as u64;
            let total = g.num_blocks * u64::from(passes);
            let mut result = Ok(());
            let started = tokio::time::Instant::now();
            let mut written = 0u64;
            'passes: for pass in 0..passes {
                // With INVERT, the pattern is inverted between passes; the last pass writes it as given.
                let flip = invert && (passes - 1 - pass) % 2 == 1;
                let block: Vec<u8> = pattern.iter().map(|b| if flip { !b } else { *b }).collect();
                let n0 = per.min(g.num_blocks.max(1)) as usize;
                let buf = Bytes::from(block.repeat(n0));
                let mut lba = 0;
                while lba < g.num_blocks {
                    let n = per.min(g.num_blocks - lba);
                    let chunk = buf.slice(..n as usize * bs);
                    if let Err(e) = dev.write(lba, chunk, WriteFlags::NONE).await {
                        result = Err(e);
                        break 'passes;
                    }
                    lba += n;
                    set_progress(lu, u64::from(pass) * g.num_blocks + lba, total);
                    written += n * bs as u64;
                    let due = std::time::Duration::from_secs_f64(
                        written as f64 / OVERWRITE_BYTES_PER_SEC as f64,
                    );
                    tokio::time::sleep_until(started + due).await;
                }
            }
            result
        }
    };
    match result {
        Ok(()) => match dev.flush().await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(lun = lu.lun, "sanitize flush failed: {e}");
                false
            }
        },
        Err(e) => {
            tracing::error!(lun = lu.lun, "sanitize failed: {e}");
            false
        }
    }
}
