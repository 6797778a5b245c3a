//! What the initiator does about the target's asynchronous messages
//! (RFC 7143 §11.9.1), sans-I/O: event 1 asks for a logout within
//! Parameter3 seconds, which the initiator does cleanly (no new commands,
//! the running ones given time to finish, then a Logout Request; the
//! session is then reinstated and what had no answer sent again); events 2
//! and 3 announce that the target drops the connection or the session,
//! which the initiator drops at once, logging in again after the
//! Time2Wait (Parameter2) the target asks for.

use std::time::{Duration, Instant};

use iscsi_proto::pdu::AsyncMessage;

/// The longest Time2Wait taken from the target (RFC 7143 allows up to
/// 3600 s; a head would rather try again and be refused).
pub const MAX_TIME2WAIT: Duration = Duration::from_secs(60);

/// What to do about an asynchronous message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Event 1: send no new commands, let the running ones finish, and
    /// send a Logout Request once none runs or at `by` at the latest
    /// (half of Parameter3, leaving the other half for the logout to
    /// arrive and be answered).
    LogOut {
        /// When the logout goes out at the latest.
        by: Instant,
    },
    /// Events 2 and 3: the target is dropping the connection (or every
    /// connection of the session): drop it now, and log in again `after`
    /// its Time2Wait.
    Reconnect {
        /// How long to wait before logging in again.
        after: Duration,
    },
    /// Any other event (SCSI async events, parameter negotiation, vendor):
    /// nothing to do here.
    Ignore,
}

/// The reaction to `message`, received at `now`.
pub fn react(message: &AsyncMessage, now: Instant) -> Reaction {
    let [_, time2wait, param3] = message.params;
    match message.event {
        1 => Reaction::LogOut {
            by: now + Duration::from_secs(u64::from(param3)) / 2,
        },
        2 | 3 => Reaction::Reconnect {
            after: Duration::from_secs(u64::from(time2wait)).min(MAX_TIME2WAIT),
        },
        _ => Reaction::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(event: u8, params: [u16; 3]) -> AsyncMessage {
        AsyncMessage {
            event,
            params,
            ..Default::default()
        }
    }

    #[test]
    fn each_event_has_its_reaction() {
        let t0 = Instant::now();
        assert_eq!(
            react(&message(1, [0, 0, 10]), t0),
            Reaction::LogOut {
                by: t0 + Duration::from_secs(5)
            }
        );
        assert_eq!(
            react(&message(2, [0, 2, 20]), t0),
            Reaction::Reconnect {
                after: Duration::from_secs(2)
            }
        );
        assert_eq!(
            react(&message(3, [0, 3600, 0]), t0),
            Reaction::Reconnect {
                after: MAX_TIME2WAIT
            }
        );
        assert_eq!(react(&message(0, [0; 3]), t0), Reaction::Ignore);
        assert_eq!(react(&message(4, [0; 3]), t0), Reaction::Ignore);
    }
}
