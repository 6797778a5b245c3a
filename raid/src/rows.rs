//! Row locks: one async mutex per row, hashed into a fixed table, so rows
//! are updated atomically with respect to each other while different rows
//! proceed concurrently.

use tokio::sync::{Mutex as AsyncMutex, MutexGuard};

/// Size of the lock table.
const ROW_LOCKS: usize = 256;

/// The row lock table.
#[derive(Debug)]
pub(crate) struct RowLocks {
    locks: Vec<AsyncMutex<()>>,
}

impl RowLocks {
    pub(crate) fn new() -> Self {
        RowLocks {
            locks: (0..ROW_LOCKS).map(|_| AsyncMutex::new(())).collect(),
        }
    }

    /// Locks `row` (and the rows that share its lock).
    pub(crate) async fn lock(&self, row: u64) -> MutexGuard<'_, ()> {
        self.locks[(row % ROW_LOCKS as u64) as usize].lock().await
    }
}
