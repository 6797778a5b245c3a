//! A Full Feature Phase session fed an arbitrary PDU stream, with commands
//! completing as they are handed out and time moving: never panics.
#![no_main]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use iscsi_proto::frame::Decoder;
use iscsi_proto::login::{Established, SessionKey, SessionType};
use iscsi_proto::negotiate::Params;
use libfuzzer_sys::fuzz_target;
use scsi_disk::Response;
use target_iscsi::session::{Action, Session, SessionConfig};
use target_iscsi::tmf::TmfOutcome;

fuzz_target!(|data: &[u8]| {
    let t = Instant::now();
    let est = Established {
        session_type: SessionType::Normal,
        key: SessionKey { initiator: "iqn.i".into(), isid: [0; 6], target: Some(0) },
        tsih: 1,
        cid: 0,
        params: Params { initial_r2t: false, max_outstanding_r2t: 4, max_burst_length: 4096, first_burst_length: 1024, send_data_segment_length: 512, ..Params::default() },
        exp_cmd_sn: 0,
        stat_sn: 0,
    };
    let cfg = SessionConfig { queue_depth: 16, nop_interval: Duration::from_secs(1), nop_timeout: Duration::from_secs(1) };
    let mut s = Session::new(&est, cfg, vec![], Some("iqn.t".into()), t);
    let dec = Decoder::new(8192);
    let mut buf = BytesMut::from(data);
    let mut step = 0u64;
    while let Ok(Some(p)) = dec.decode(&mut buf) {
        step += 1;
        let now = t + Duration::from_millis(step * 300);
        s.handle_pdu(p, now);
        s.handle_timeout(now);
        while let Some(a) = s.poll_action() {
            match a {
                Action::Execute { itt, cmd } => {
                    let n = (cmd.cdb.len() * 97) % 3000;
                    s.complete(itt, Response { status: 0, data_in: Bytes::from(vec![0u8; n]), ..Response::default() }, Some(512));
                }
                Action::TaskManagement { itt, .. } => s.tmf_done(itt, TmfOutcome::Complete),
                _ => {}
            }
        }
    }
});
