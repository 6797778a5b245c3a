//! The path checker: every [`Config::check_interval`](crate::Config) each
//! path is checked ([`Path::check`](crate::path::Path::check)), within the
//! I/O timeout, and the results go into the core.

use std::sync::Weak;

use blockdev::{BlockError, ErrorClass};
use tokio::task::JoinSet;

use crate::device::{now, Shared};

/// Checks the paths of `shared` on its interval until the device is gone.
pub(crate) async fn run(shared: Weak<Shared>) {
    let interval = match shared.upgrade() {
        Some(s) => s.config.check_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        round(&s).await;
    }
}

/// Checks every path once, all at the same time.
async fn round(s: &Shared) {
    let mut checks = JoinSet::new();
    for (i, p) in s.paths.iter().enumerate() {
        let (p, timeout) = (p.clone(), s.config.io_timeout);
        let served = s.update(|core| core.served(i));
        checks.spawn(async move {
            let r = match timeout {
                Some(t) => tokio::time::timeout(t, p.check())
                    .await
                    .unwrap_or_else(|_| Err(BlockError::TimedOut("check".into()))),
                None => p.check().await,
            };
            (i, served, r.map_err(|e| e.class()))
        });
    }
    while let Some(done) = checks.join_next().await {
        let Ok((i, served, r)): Result<(usize, u64, Result<_, ErrorClass>), _> = done else {
            continue;
        };
        let (taken, usable) =
            s.update(|core| (core.check_ended(i, served, r, now()), core.has_usable()));
        match r {
            Err(class) if taken => tracing::debug!(path = i, ?class, "multipath: check failed"),
            Err(_) => tracing::debug!(
                path = i,
                "multipath: check timed out behind completing I/O: busy, not down"
            ),
            Ok(_) => {}
        }
        if usable {
            s.usable.send_modify(|g| *g += 1);
        }
    }
}
