//! Backups of block devices into a content-addressed chunk store, over a
//! local directory or an S3-compatible object store, and their restore,
//! verify, prune and garbage collection.
//!
//! A backup reads any [`blockdev::BlockDevice`] in fixed-size chunks named by
//! the SHA-256 of their content ([`format`](mod@format)), uploads the chunks the store
//! lacks ([`run()`]), and writes an index and, last, a manifest: a backup
//! exists exactly when its manifest does. Every backup is logically full: a
//! restore reads one index. An incremental backup ([`run()`] with a parent
//! and a [`ChangedMap`]) reads only the regions that may have changed and
//! takes the rest from the parent's index. See the README's "Backups" section
//! for the format and the GC rule.

#![warn(missing_docs)]

mod calendar;
pub mod catalog;
mod error;
pub mod format;
pub mod gc;
pub mod rate_limit;
pub mod restore;
pub mod retention;
pub mod run;
pub mod store;

pub use catalog::{list, prune};
pub use error::{BackupError, ChunkProblem, Result};
pub use format::{ChunkDigest, ChunkRef, Index, Manifest};
pub use gc::{gc, GcReport};
pub use rate_limit::RateLimiter;
pub use restore::{restore, verify, BadChunk, OnBadChunk, RestoreReport, VerifyReport};
pub use retention::{select, Retention};
pub use run::{load, run, ChangedMap, Progress, Report, RunOptions};
pub use store::{RetryPolicy, S3Credentials, Store, StoreConfig};
