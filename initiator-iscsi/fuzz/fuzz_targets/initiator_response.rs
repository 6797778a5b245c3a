//! A hostile target's PDU stream into the initiator's Full Feature Phase
//! and pipeline (sans-I/O, after a fixed login): SCSI commands of every
//! shape are queued, arbitrary PDUs come back (some addressed to a task in
//! flight, with the StatSN expected and a sane command window, so that
//! they get past the first checks), time moves on. Whatever comes, the
//! initiator answers, completes, aborts or gives the connection up (then
//! the session is reinstated with what was unanswered): it never panics.
//! Digests may be in force (what arrives then mostly fails them).
#![no_main]

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use initiator_iscsi::{Command, FullFeature, LoggedIn, Params, Pipeline, PipelineConfig};
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::Decoder;
use iscsi_proto::login::SessionType;
use iscsi_proto::pdu::BHS_LEN;
use iscsi_proto::text::TextList;
use libfuzzer_sys::fuzz_target;

/// The session a fixed login opened; `mode` picks the data-out rules.
fn logged_in(mode: u8) -> LoggedIn {
    let mut params = Params::default();
    params.immediate_data = mode & 1 != 0;
    params.initial_r2t = mode & 2 != 0;
    params.first_burst_length = 4096 << (mode >> 2 & 3);
    params.max_burst_length = 8192 << (mode >> 4 & 3);
    params.send_data_segment_length = 2048;
    params.recv_data_segment_length = 8192;
    LoggedIn {
        session_type: SessionType::Normal,
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 1,
        cid: 0,
        params,
        cmd_sn: 1,
        exp_stat_sn: 1,
        exp_cmd_sn: 1,
        max_cmd_sn: 8,
        target_keys: TextList::default(),
        target_alias: None,
        tpgt: Some(1),
        authenticated_target: None,
    }
}

/// A command of the shape `kind` picks: a read, a write, or neither.
fn command(kind: u8) -> Command {
    let blocks = u16::from(kind >> 2) + 1;
    let len = u32::from(blocks) * 512;
    let b = blocks.to_be_bytes();
    match kind & 3 {
        0 => Command::read(0, &[0x28, 0, 0, 0, 0, 8, 0, b[0], b[1], 0], len),
        1 => Command::write(
            0,
            &[0x2a, 0, 0, 0, 0, 8, 0, b[0], b[1], 0],
            vec![0xa5; len as usize],
        ),
        _ => Command::new(0, &[0; 6]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut now = Instant::now();
    let cfg = PipelineConfig {
        queue_depth: 4,
        command_timeout: Duration::from_millis(300),
        ..PipelineConfig::default()
    };
    let mut pipe = Pipeline::new(FullFeature::new(&logged_in(mode)), cfg, now);
    for k in 0..4 {
        pipe.queue(command(mode.rotate_left(k)), now);
    }
    // The high bits put digests in force: most arriving wrong.
    let mut decoder = Decoder::new(1 << 16);
    if mode & 0x40 != 0 {
        decoder.data_digest = Digest::Crc32c;
    }
    if mode & 0x80 != 0 {
        decoder.header_digest = Digest::Crc32c;
    }
    let mut stream = BytesMut::new();
    // Records: a control byte, a 48-byte header, a length byte, the data.
    while rest.len() > BHS_LEN + 1 {
        let control = rest[0];
        let mut raw = [0u8; BHS_LEN];
        raw.copy_from_slice(&rest[1..=BHS_LEN]);
        let n = usize::from(rest[BHS_LEN + 1]).min(rest.len() - BHS_LEN - 2);
        let segment = &rest[BHS_LEN + 2..BHS_LEN + 2 + n];
        rest = &rest[BHS_LEN + 2 + n..];
        if control & 1 != 0 {
            // Addressed to a task the initiator may have in flight.
            raw[16..20].copy_from_slice(&u32::from(control >> 5 & 7).to_be_bytes());
        }
        if control & 2 != 0 {
            let f = pipe.full_feature();
            raw[24..28].copy_from_slice(&f.exp_stat_sn().to_be_bytes());
            raw[28..32].copy_from_slice(&f.cmd_sn().to_be_bytes());
            raw[32..36].copy_from_slice(&f.cmd_sn().wrapping_add(8).to_be_bytes());
        }
        if control & 4 != 0 {
            // The data segment length and no AHS: the header frames what follows.
            raw[4] = 0;
            raw[5..8].copy_from_slice(&(n as u32).to_be_bytes()[1..]);
        }
        stream.put_slice(&raw);
        stream.put_slice(segment);
        if control & 4 != 0 {
            stream.put_bytes(0, (4 - n % 4) % 4);
        }
        if control & 8 != 0 {
            now += Duration::from_millis(u64::from(control >> 4) * 40);
            if pipe.tick(now).is_err() {
                pipe = reinstated(pipe, mode, now);
            }
        }
        if control & 16 != 0 {
            pipe.queue(command(control), now);
        }
        loop {
            let pdu = match decoder.decode(&mut stream) {
                Ok(Some(pdu)) => pdu,
                Ok(None) => break,
                Err(_) => {
                    stream.clear();
                    pipe = reinstated(pipe, mode, now);
                    break;
                }
            };
            if pipe.receive(pdu, now).is_err() {
                pipe = reinstated(pipe, mode, now);
            }
            let _ = pipe.take_output();
            while pipe.take_done().is_some() {}
        }
    }
});

/// The connection given up: a new session takes over what was unanswered.
fn reinstated(pipe: Pipeline, mode: u8, now: Instant) -> Pipeline {
    pipe.reinstated(FullFeature::new(&logged_in(mode)), now)
}
