//! The head's recent events: a bounded ring that `status` returns, each
//! event also written to the log as it is recorded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use control::status::{Event, EventLevel};
use tracing::{error, info, warn};

/// How many events are kept by default.
pub const DEFAULT_EVENTS: usize = 256;

/// The ring of recent events. Cheap to clone: clones share it.
#[derive(Debug, Clone)]
pub struct EventLog {
    ring: Arc<Mutex<VecDeque<Event>>>,
    cap: usize,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(DEFAULT_EVENTS)
    }
}

impl EventLog {
    /// A ring of at most `cap` events (the oldest dropped first).
    pub fn new(cap: usize) -> Self {
        EventLog {
            ring: Arc::new(Mutex::new(VecDeque::with_capacity(cap))),
            cap: cap.max(1),
        }
    }

    /// Records an event about `subject` and logs it.
    pub fn record(&self, level: EventLevel, subject: &str, message: impl Into<String>) {
        let message = message.into();
        match level {
            EventLevel::Info => info!(subject, "{message}"),
            EventLevel::Warn => warn!(subject, "{message}"),
            EventLevel::Error => error!(subject, "{message}"),
        }
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == self.cap {
            ring.pop_front();
        }
        ring.push_back(Event {
            unix_ms,
            level,
            subject: subject.to_owned(),
            message,
        });
    }

    /// The events kept, oldest first.
    pub fn list(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_events_in_order() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.record(EventLevel::Info, "a0", format!("e{i}"));
        }
        let got: Vec<String> = log.list().into_iter().map(|e| e.message).collect();
        assert_eq!(got, ["e2", "e3", "e4"]);
    }
}
