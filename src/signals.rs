//! The daemons' stop signals: SIGTERM or SIGINT starts the drain, a second
//! one exits at once.

use tracing::{info, warn};

/// Resolves when SIGTERM or SIGINT arrives; a second signal exits at once
/// (every write already acknowledged as durable is on stable storage).
pub async fn shutdown_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!("{name}: no new connections; draining sessions and flushing");
    crate::service::stopping(&format!("{name}: draining sessions and flushing"));
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second signal: exiting without waiting for the drain");
        std::process::exit(1);
    });
}
