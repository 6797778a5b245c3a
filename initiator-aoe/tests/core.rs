//! The per-target core frame by frame: replies made by hand, time passed in.

use std::time::{Duration, Instant};

use aoe_proto::ata::{STATUS_DF, STATUS_DRDY, STATUS_ERR};
use aoe_proto::frame::{
    encode_headers, AoeErrorCode, AtaArg, ConfigArg, ConfigCommand, Frame, Mac,
};
use blockdev::{BlockError, Bytes, ErrorClass};
use initiator_aoe::{Completion, Interface, Request, Settings, TargetState, Transmit};

const SHELF: u16 = 1;
const SLOT: u8 = 2;

fn local(id: usize) -> Interface {
    Interface {
        id,
        mac: Mac([2, 0, 0, 0, 1, id as u8]),
        mtu: 1500,
    }
}

fn remote(i: u8) -> Mac {
    Mac([2, 0, 0, 0, 2, i])
}

/// A core with `paths` paths (interface i to target MAC i), buffer count `bc`.
fn core(paths: usize, bc: u16) -> TargetState {
    let mut c = TargetState::new(SHELF, SLOT, Settings::default());
    for i in 0..paths {
        c.learn(
            local(i),
            remote(i as u8),
            &ConfigArg {
                buffer_count: bc,
                firmware: 1,
                max_sectors: 2,
                aoe_version: 1,
                ccmd: ConfigCommand::Read,
                config: Vec::new(),
            },
        );
    }
    c
}

fn drain(c: &mut TargetState, now: Instant) -> Vec<Transmit> {
    std::iter::from_fn(|| c.poll_transmit(now)).collect()
}

fn completions(c: &mut TargetState) -> Vec<Completion> {
    std::iter::from_fn(|| c.poll_completion()).collect()
}

/// The target's reply to request `req`: `status`, or AoE error `err`, with `data`.
fn reply(req: &[u8], status: u8, err: Option<AoeErrorCode>, data: &[u8]) -> Vec<u8> {
    let f = Frame::decode(req).unwrap();
    let h = match err {
        Some(code) => f.header.error_response(code),
        None => f.header.response(),
    };
    let mut out = Vec::new();
    encode_headers(&mut out, f.src, f.dst, &h);
    let (mut arg, _) = AtaArg::decode(f.payload).unwrap();
    arg.cmd_status = status;
    arg.encode(&mut out);
    out.extend_from_slice(data);
    out
}

fn ok(req: &[u8], data: &[u8]) -> Vec<u8> {
    reply(req, STATUS_DRDY, None, data)
}

fn deliver(c: &mut TargetState, now: Instant, iface: usize, bytes: &[u8]) {
    assert!(c.handle_frame(now, local(iface), &Frame::decode(bytes).unwrap()));
}

fn arg_of(t: &Transmit) -> AtaArg {
    AtaArg::decode(Frame::decode(&t.frame).unwrap().payload)
        .unwrap()
        .0
}

fn write(lba: u64, sectors: usize, fill: u8) -> Request {
    Request::Write {
        lba,
        data: Bytes::from(vec![fill; sectors * 512]),
    }
}

#[test]
fn a_read_is_split_to_the_sectors_per_frame_and_reassembled() {
    let t0 = Instant::now();
    let mut c = core(1, 16);
    let id = c.submit(
        t0,
        Request::Read {
            lba: 10,
            sectors: 5,
        },
    );
    let tx = drain(&mut c, t0);
    let parts: Vec<_> = tx
        .iter()
        .map(|t| (arg_of(t).lba(), arg_of(t).sector_count))
        .collect();
    assert_eq!(parts, [(10, 2), (12, 2), (14, 1)]);
    // Answered out of order.
    for t in tx.iter().rev() {
        let a = arg_of(t);
        let data = vec![a.lba() as u8; usize::from(a.sector_count) * 512];
        deliver(&mut c, t0, 0, &ok(&t.frame, &data));
    }
    let done = completions(&mut c);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, id);
    let data = done[0].result.as_ref().unwrap();
    assert_eq!(data.len(), 5 * 512);
    assert_eq!((data[0], data[1024], data[2048]), (10, 12, 14));
}

#[test]
fn the_window_is_the_buffer_count() {
    let t0 = Instant::now();
    let mut c = core(1, 3);
    for i in 0..6 {
        c.submit(t0, write(i * 2, 2, 1));
    }
    let tx = drain(&mut c, t0);
    assert_eq!(tx.len(), 3);
    deliver(&mut c, t0, 0, &ok(&tx[0].frame, &[]));
    assert_eq!(drain(&mut c, t0).len(), 1, "one answered, one more may go");
}

#[test]
fn duplicate_and_unknown_replies_are_ignored() {
    let t0 = Instant::now();
    let mut c = core(1, 16);
    c.submit(t0, write(0, 1, 7));
    let tx = drain(&mut c, t0);
    let r = ok(&tx[0].frame, &[]);
    deliver(&mut c, t0, 0, &r);
    deliver(&mut c, t0, 0, &r);
    assert_eq!(completions(&mut c).len(), 1);
    assert_eq!(c.stats().unknown, 1);
    // A reply from a MAC that is not the path's is not taken.
    c.submit(t0, write(0, 1, 8));
    let tx = drain(&mut c, t0);
    let mut forged = ok(&tx[0].frame, &[]);
    forged[6..12].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    deliver(&mut c, t0, 0, &forged);
    assert!(completions(&mut c).is_empty());
    assert_eq!(c.stats().bad, 1);
}

#[test]
fn error_replies_keep_their_class() {
    let t0 = Instant::now();
    let mut c = core(1, 16);
    c.submit(t0, write(0, 1, 1));
    c.submit(t0, write(4, 1, 1));
    let tx = drain(&mut c, t0);
    deliver(
        &mut c,
        t0,
        0,
        &reply(&tx[0].frame, 0, Some(AoeErrorCode::TargetReserved), &[]),
    );
    deliver(
        &mut c,
        t0,
        0,
        &reply(
            &tx[1].frame,
            STATUS_DRDY | STATUS_DF | STATUS_ERR,
            None,
            &[],
        ),
    );
    let classes: Vec<_> = completions(&mut c)
        .into_iter()
        .map(|d| d.result.unwrap_err().class())
        .collect();
    assert_eq!(
        classes,
        [ErrorClass::ReservationConflict, ErrorClass::Failed]
    );
}

#[test]
fn a_lost_frame_is_retransmitted_on_the_other_path_with_a_new_tag() {
    let t0 = Instant::now();
    let mut c = core(2, 16);
    c.submit(t0, Request::Read { lba: 0, sectors: 1 });
    let first = drain(&mut c, t0);
    assert_eq!(first.len(), 1);
    let at = c.poll_timeout().unwrap();
    assert_eq!(at - t0, Settings::default().initial_rto);
    c.handle_timeout(at);
    let again = drain(&mut c, at);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].iface, first[0].iface);
    let tag = |t: &Transmit| Frame::decode(&t.frame).unwrap().header.tag;
    assert_ne!(tag(&again[0]), tag(&first[0]));
    // The late reply to the first copy finishes the frame as well as any.
    deliver(&mut c, at, first[0].iface, &ok(&first[0].frame, &[9; 512]));
    assert_eq!(completions(&mut c)[0].result.as_ref().unwrap()[0], 9);
    assert_eq!(c.stats().retransmits, 1);
}

#[test]
fn a_retransmitted_write_fences_its_blocks_until_its_stale_copy_answers() {
    let t0 = Instant::now();
    let s = Settings::default();
    let mut c = core(2, 16);
    c.submit(t0, write(8, 2, 1));
    let first = drain(&mut c, t0).remove(0);
    let t1 = c.poll_timeout().unwrap();
    c.handle_timeout(t1);
    let second = drain(&mut c, t1).remove(0);
    // The retransmission is answered; the first copy is still somewhere.
    deliver(&mut c, t1, second.iface, &ok(&second.frame, &[]));
    assert!(completions(&mut c)[0].result.is_ok());
    // A newer write of an overlapping block waits; one elsewhere and a read
    // of the same blocks go.
    c.submit(t1, write(9, 1, 2));
    c.submit(t1, write(20, 1, 2));
    c.submit(t1, Request::Read { lba: 8, sectors: 1 });
    let tx = drain(&mut c, t1);
    let lbas: Vec<_> = tx.iter().map(|t| arg_of(t).lba()).collect();
    assert_eq!(lbas, [20, 8]);
    // The stale copy lands and is answered: the held write goes.
    deliver(&mut c, t1, first.iface, &ok(&first.frame, &[]));
    assert_eq!(c.stats().late, 1);
    let tx = drain(&mut c, t1);
    assert_eq!(tx.iter().map(|t| arg_of(t).lba()).collect::<Vec<_>>(), [9]);

    // Again, but the stale copy is never answered: the horizon frees it.
    let mut c = core(2, 16);
    c.submit(t0, write(8, 1, 1));
    drain(&mut c, t0);
    let t1 = c.poll_timeout().unwrap();
    c.handle_timeout(t1);
    let second = drain(&mut c, t1).remove(0);
    deliver(&mut c, t1, second.iface, &ok(&second.frame, &[]));
    c.submit(t1, write(8, 1, 2));
    assert!(drain(&mut c, t1).is_empty());
    let horizon = t0 + s.stale_horizon;
    c.handle_timeout(horizon - Duration::from_millis(1));
    assert!(drain(&mut c, horizon - Duration::from_millis(1)).is_empty());
    assert!(c.poll_timeout().unwrap() <= horizon);
    c.handle_timeout(horizon);
    assert_eq!(drain(&mut c, horizon).len(), 1);
}

#[test]
fn overlapping_frames_wait_for_an_earlier_write_and_reads_share() {
    let t0 = Instant::now();
    let mut c = core(1, 16);
    c.submit(t0, Request::Read { lba: 0, sectors: 2 });
    c.submit(t0, Request::Read { lba: 1, sectors: 1 });
    c.submit(t0, write(1, 1, 3));
    c.submit(t0, Request::Read { lba: 1, sectors: 1 });
    let tx = drain(&mut c, t0);
    assert_eq!(
        tx.len(),
        2,
        "the reads go together, the write waits for them"
    );
    for t in &tx {
        deliver(
            &mut c,
            t0,
            0,
            &ok(
                &t.frame,
                &vec![0; usize::from(arg_of(t).sector_count) * 512],
            ),
        );
    }
    let tx = drain(&mut c, t0);
    assert_eq!(tx.len(), 1, "the write goes, the read after it waits");
    assert!(arg_of(&tx[0]).aflags & aoe_proto::frame::AFLAG_WRITE != 0);
}

#[test]
fn unanswered_requests_end_by_what_the_caller_may_do() {
    let t0 = Instant::now();
    let s = Settings::default();
    let mut c = core(1, 16);
    c.submit(t0, Request::Read { lba: 0, sectors: 1 });
    c.submit(t0, write(4, 1, 1));
    let mut now = t0;
    while now < t0 + s.give_up {
        drain(&mut c, now);
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
    }
    let r: Vec<_> = completions(&mut c)
        .into_iter()
        .map(|d| d.result.unwrap_err())
        .collect();
    assert!(matches!(r[0], BlockError::PathDown(_)), "{:?}", r[0]);
    assert!(matches!(r[1], BlockError::TimedOut(_)), "{:?}", r[1]);
    // With no path at all, at once.
    let mut c = TargetState::new(SHELF, SLOT, s);
    c.submit(t0, Request::Flush);
    assert_eq!(
        completions(&mut c)[0].result.as_ref().unwrap_err().class(),
        ErrorClass::RetryElsewhere
    );
}

/// The target's busy reply (retry later) to request `req`, as `aoe-proto`
/// encodes it.
fn busy(req: &[u8]) -> Vec<u8> {
    use aoe_proto::outcome::AtaOutcome;
    let AtaOutcome::Registers(st) = AtaOutcome::of_error(&BlockError::Busy("full".into())) else {
        panic!("busy is a register reply");
    };
    let f = Frame::decode(req).unwrap();
    let mut out = Vec::new();
    encode_headers(&mut out, f.src, f.dst, &f.header.response());
    let (mut arg, _) = AtaArg::decode(f.payload).unwrap();
    arg.cmd_status = st.status;
    arg.err_feature = st.error;
    arg.set_lba(st.lba.unwrap());
    arg.encode(&mut out);
    out
}

#[test]
fn a_busy_reply_is_retried_after_a_backoff_and_never_reaches_the_caller() {
    let t0 = Instant::now();
    let mut c = core(1, 16);
    let id = c.submit(t0, write(0, 1, 5));
    let first = drain(&mut c, t0).remove(0);
    deliver(&mut c, t0, 0, &busy(&first.frame));
    assert!(completions(&mut c).is_empty(), "busy is not an answer");
    assert!(drain(&mut c, t0).is_empty(), "not at once");
    let at = c.poll_timeout().unwrap();
    assert!(at > t0);
    c.handle_timeout(at);
    let again = drain(&mut c, at);
    assert_eq!(again.len(), 1, "sent again after the backoff");
    assert_eq!(c.stats().retransmits, 0, "not counted as a loss");
    deliver(&mut c, at, 0, &busy(&again[0].frame));
    let at2 = c.poll_timeout().unwrap();
    assert!(at2 - at > at - t0, "the backoff doubles");
    c.handle_timeout(at2);
    let third = drain(&mut c, at2);
    deliver(&mut c, at2, 0, &ok(&third[0].frame, &[]));
    let done = completions(&mut c);
    assert_eq!(done[0].id, id);
    assert!(done[0].result.is_ok());
    assert_eq!(c.stats().busy, 2);
    // The busy copies were answered: no fence holds the next write.
    c.submit(at2, write(0, 1, 6));
    assert_eq!(drain(&mut c, at2).len(), 1);
}

#[test]
fn a_target_busy_until_the_deadline_ends_the_request_as_busy() {
    let t0 = Instant::now();
    let s = Settings::default();
    let mut c = core(1, 16);
    c.submit(t0, write(0, 1, 5));
    let mut now = t0;
    loop {
        for t in drain(&mut c, now) {
            deliver(&mut c, now, 0, &busy(&t.frame));
        }
        if let Some(d) = completions(&mut c).pop() {
            assert_eq!(d.result.unwrap_err().class(), ErrorClass::RetryLater);
            break;
        }
        now = c.poll_timeout().unwrap();
        assert!(now <= t0 + s.give_up);
        c.handle_timeout(now);
    }
}

#[test]
fn settled_once_no_write_is_out_and_the_horizon_passed_since_the_last_copy() {
    let t0 = Instant::now();
    let s = Settings::default();
    let mut c = core(1, 16);
    assert!(c.is_settled(t0), "nothing was ever sent");
    c.submit(t0, Request::Read { lba: 0, sectors: 1 });
    drain(&mut c, t0);
    assert!(c.is_settled(t0), "a read changes nothing");
    c.submit(t0, write(4, 1, 1));
    let w = drain(&mut c, t0).remove(0);
    assert!(!c.is_settled(t0 + s.stale_horizon * 2), "a write is out");
    let t1 = t0 + Duration::from_millis(10);
    deliver(&mut c, t1, 0, &ok(&w.frame, &[]));
    assert!(!c.is_settled(t1));
    assert_eq!(c.settles_at(), Some(t0 + s.stale_horizon));
    assert!(c.is_settled(t0 + s.stale_horizon));
}

#[test]
fn an_abandoned_write_is_sent_no_more_and_fences_its_blocks_until_the_horizon() {
    let t0 = Instant::now();
    let s = Settings::default();
    let mut c = core(1, 16);
    let id = c.submit(t0, write(0, 2, 1));
    assert_eq!(drain(&mut c, t0).len(), 1);
    let t1 = c.poll_timeout().unwrap();
    c.handle_timeout(t1);
    assert_eq!(drain(&mut c, t1).len(), 1, "retransmitted");
    c.cancel(id);
    let done = completions(&mut c);
    assert_eq!(done[0].id, id);
    assert_eq!(
        done[0].result.as_ref().unwrap_err().class(),
        ErrorClass::OutcomeUnknown
    );
    // Nothing is sent again; a later write of the blocks waits for the
    // horizon after the last copy, and the core is settled then.
    c.submit(t1, write(1, 1, 2));
    let mut now = t1;
    while let Some(t) = c.poll_timeout() {
        assert!(drain(&mut c, now).is_empty());
        assert!(!c.is_settled(now));
        now = t;
        c.handle_timeout(now);
        if now >= t1 + s.stale_horizon {
            break;
        }
    }
    assert_eq!(now, t1 + s.stale_horizon);
    assert_eq!(drain(&mut c, now).len(), 1, "the held write goes");
}
