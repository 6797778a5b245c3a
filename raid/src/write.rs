//! Volume writes: a request is cut into rows; whole rows go straight to the
//! members as full-stripe writes (consecutive whole rows together, as one
//! member write per member, [`crate::batch`]; several runs as parallel tasks),
//! partial rows wait in the stripe cache ([`crate::cache`]) until their row
//! is complete, the cache overflows, a flush comes, or at once for FUA. Each
//! row's update on the members is [`crate::row_update`]'s, done under the
//! row's lock as work that runs to its end ([`crate::rows`]).

use blockdev::{Bytes, Geometry};

use crate::array::RaidArray;
use crate::cache::pieces_of;
use crate::error::{RaidError, Result};
use crate::geometry::{Geo, Piece, RowSpan};

impl RaidArray {
    /// Volume write. Whole rows go straight to the members as full-stripe
    /// writes; partial rows wait in the stripe cache, which writes a row out
    /// as soon as it is complete, when it overflows, on flush, or at once for FUA.
    ///
    /// Consecutive whole rows are written together, one member write per
    /// member for the run ([`crate::batch`]), in runs of at most a few MiB
    /// per member. When a request holds several runs (or whole rows that
    /// cannot be batched), each is its own task, so their parity, checksums
    /// and member transfers run on as many cores as the runtime has. Each
    /// row's lock is taken here, in order, and handed to its task. Whatever a row does under its lock runs to its end even
    /// if the caller goes away (the `rows` module): a dropped request's rows
    /// land before any later request's on them, and before a later flush
    /// returns; the rows it had not locked yet are not written.
    pub async fn write_blocks(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        let bs = self.inner.block_size as usize;
        let geo = self.inner.geo.read().await;
        let g = Geometry {
            block_size: self.inner.block_size,
            num_blocks: geo.capacity(),
        };
        let n = g.blocks_in(data.len()).map_err(RaidError::Request)?;
        g.check_range(lba, n).map_err(RaidError::Request)?;
        // Each row of the request, with whether the request covers all of it.
        let spans: Vec<(RowSpan, bool)> = geo
            .split(lba, n)
            .into_iter()
            .map(|span| {
                let range = geo.row_range(&span.0, span.1);
                let whole = span.2.iter().map(|p| p.1).sum::<u64>() == range.end - range.start;
                (span, whole)
            })
            .collect();
        // Consecutive whole rows of one layout go to the members together
        // ([`crate::batch`]), in runs the members take in one write each;
        // not while a reshape runs. Every other row goes alone.
        let max_run = if geo.reshape.is_none() {
            self.batch_rows(&geo.cur)
        } else {
            1
        };
        let mut groups: Vec<Vec<(RowSpan, bool)>> = Vec::new();
        for (span, whole) in spans {
            match groups.last_mut() {
                Some(g)
                    if whole
                        && (g.len() as u64) < max_run
                        && g.last().is_some_and(|((lay, row, _), w)| {
                            *w && *lay == span.0 && *row + 1 == span.1
                        }) =>
                {
                    g.push((span, whole))
                }
                _ => groups.push(vec![(span, whole)]),
            }
        }
        let whole_units = groups.iter().filter(|g| g[0].1).count();
        let slices_of = |pieces: &[(u64, u64)]| -> Vec<Piece> {
            pieces
                .iter()
                .map(|&(l, cnt)| {
                    let off = (l - lba) as usize * bs;
                    (l, data.slice(off..off + cnt as usize * bs))
                })
                .collect()
        };
        let mut tasks = Vec::new();
        let mut first_err = None;
        for group in groups {
            if group.len() > 1 {
                let lay = group[0].0 .0;
                let first = group[0].0 .1;
                let mut guards = Vec::with_capacity(group.len());
                let mut ranges = Vec::with_capacity(group.len());
                let mut rows = Vec::with_capacity(group.len());
                for ((_, row, pieces), _) in &group {
                    guards.push(self.row_lock(*row).await);
                    ranges.push(geo.row_range(&lay, *row));
                    rows.push(slices_of(pieces));
                }
                let a = self.clone();
                let work = self.inner.rows.run(async move {
                    let _locked = guards;
                    // The cache's older blocks of the rows are overwritten.
                    for range in ranges {
                        a.inner.cache.take(range);
                    }
                    a.write_rows(&lay, first, &rows, fua).await
                });
                if whole_units > 1 {
                    tasks.push(self.inner.rows.spawn(work));
                    continue;
                }
                if let Err(e) = work.await {
                    first_err = Some(e);
                    break;
                }
                continue;
            }
            let Some(((lay, row, pieces), whole)) = group.into_iter().next() else {
                continue;
            };
            let slices = slices_of(&pieces);
            let range = geo.row_range(&lay, row);
            let guard = self.row_lock(row).await;
            let r = if whole {
                let work = self.run_locked(guard, move |a| async move {
                    // The cache's older blocks of the row are overwritten.
                    a.inner.cache.take(range);
                    a.write_row(&lay, row, &slices, fua).await
                });
                if whole_units > 1 {
                    tasks.push(self.inner.rows.spawn(work));
                    continue;
                }
                work.await
            } else {
                self.run_locked(guard, move |a| async move {
                    // The row is written once the cache holds all of it;
                    // with no cache (a limit of 0) at once, before the
                    // write is answered.
                    let complete = a.inner.cache.insert(&slices, bs, range.clone());
                    if !(fua || complete || a.inner.cache.write_through()) {
                        return Ok(());
                    }
                    let pieces = pieces_of(&lay, a.inner.cache.take(range));
                    a.write_row(&lay, row, &pieces, fua).await
                })
                .await
            };
            if let Err(e) = r {
                first_err = Some(e);
                break;
            }
        }
        // The request ends when its rows do, failed or not.
        for t in tasks {
            if let Err(e) = join_row_task(t.await) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.settle_journal().await?;
        self.evict(&geo).await
    }

    /// Writes out every cached row.
    pub(crate) async fn destage_all(&self, geo: &Geo) -> Result<()> {
        while self.destage_first(geo).await? {}
        Ok(())
    }

    /// Writes out cached rows, lowest first, until the cache fits its limit.
    async fn evict(&self, geo: &Geo) -> Result<()> {
        while self.inner.cache.over_limit() {
            if !self.destage_first(geo).await? {
                break;
            }
        }
        Ok(())
    }

    /// Writes out the row of the lowest cached block; false if the cache is empty.
    async fn destage_first(&self, geo: &Geo) -> Result<bool> {
        let Some(lba) = self.inner.cache.first() else {
            return Ok(false);
        };
        let (lay, _) = geo.layout_for(lba);
        let (row, ..) = lay.locate(lba);
        let range = geo.row_range(&lay, row);
        self.on_row(row, move |a| async move {
            let blocks = a.inner.cache.take(range);
            if !blocks.is_empty() {
                let pieces = pieces_of(&lay, blocks);
                a.write_row(&lay, row, &pieces, false).await?;
            }
            Ok(())
        })
        .await?;
        Ok(true)
    }
}

/// The outcome of a row task of a volume write: its panic goes on
/// unwinding in the request, a runtime shutting down fails it.
fn join_row_task(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(RaidError::Failed(
            "row task cancelled: the runtime is shutting down".into(),
        )),
    }
}
