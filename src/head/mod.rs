//! `opie head serve`: the head daemon's edge. The head itself (ISUs,
//! arrays, exports) is the `aggregator` crate; here are the command line,
//! the data directory's lock, the signals and the exit status.

use std::path::PathBuf;

use aggregator::config::{ConfigError, HeadConfig};
use aggregator::head::HeadError;
use clap::{Args, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::signals::shutdown_signal;
use crate::state::{DataDir, StateError, HEAD_LOCK_FILE};

/// `opie head ...`.
#[derive(Debug, Subcommand)]
pub enum HeadCommand {
    /// Assemble the arrays of a config file and serve its exports until
    /// SIGTERM or SIGINT.
    Serve(ServeArgs),
}

/// `opie head serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The head config file (TOML).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Data directory; replaces head.data_dir.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Why `opie head serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config file (exit status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory (held by another head, unusable).
    #[error(transparent)]
    State(#[from] StateError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The head itself.
    #[error(transparent)]
    Head(#[from] HeadError),
}

impl ServeArgs {
    /// The config, with the command line's overrides.
    pub fn load(&self) -> Result<HeadConfig, ConfigError> {
        let mut cfg = HeadConfig::load(&self.config)?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg)
    }
}

/// Runs the head until SIGTERM/SIGINT, then drains, flushes and closes.
pub async fn serve(cfg: HeadConfig) -> Result<(), ServeError> {
    let term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let data = DataDir::open_locked_by(&cfg.data_dir, HEAD_LOCK_FILE)?;
    info!(config = %cfg.source.display(), data_dir = %data.root().display(), "opie head starting");
    let state_dir = |e: &aggregator::config::ExportConfig| {
        // One state directory per export, named by its IQN.
        let name: String = e
            .iqn
            .chars()
            .map(|c| if c == ':' { '_' } else { c })
            .collect();
        data.disk_dir(&name).ok()
    };
    aggregator::head::run(
        &cfg,
        state_dir,
        crate::service::ready,
        shutdown_signal(term, int),
    )
    .await?;
    info!("sessions drained, arrays closed clean; exiting");
    Ok(())
}
