//! The daemons' side of systemd's service protocol (`sd_notify`): readiness
//! once every portal listens, a reload bracketed by `RELOADING=1` and
//! `READY=1`, `STOPPING=1` when a drain begins, a one-line `STATUS=`, and
//! the watchdog's keep-alive. Outside systemd (`NOTIFY_SOCKET` unset) every
//! call is a no-op, so the daemons run the same under `opie up`, a shell or
//! a test.
//!
//! What the watchdog proves: its keep-alive is sent by a task on the
//! daemon's own runtime, so a runtime that stops scheduling tasks (every
//! worker stuck in a blocking call, a deadlock of the executor) misses it and
//! systemd restarts the daemon (`WatchdogSec=` in the units). A request stuck
//! on a dead disk does not stop it: that is the I/O timeouts' and the
//! head's failover's business, not a reason to restart the whole daemon.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, info};

/// Tells systemd the daemon is ready, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload (SIGHUP) has begun; [`ready`] ends it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    // systemd 253 and later want the time the reload began with it.
    let now = NotifyState::monotonic_usec_now().ok();
    states.extend(now);
    send(&states);
}

/// Tells systemd the daemon is stopping (draining), with a status line.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Starts the watchdog's keep-alive on the current runtime when systemd
/// asked for one (`WATCHDOG_USEC` for this process): `WATCHDOG=1` at a
/// third of the interval, so one late tick is not yet a miss.
pub fn spawn_watchdog() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 3).max(Duration::from_millis(10));
    info!(interval = ?Duration::from_micros(usec), "systemd watchdog armed");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// Sends `states` when `NOTIFY_SOCKET` is set; a failure is logged at
/// debug level only (systemd going away must not disturb the daemon).
fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        debug!("sd_notify: {e}");
    }
}
